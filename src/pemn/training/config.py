"""What a training run is: :class:`TrainConfig`, the named :data:`RECIPES` and :func:`resolve_config`.

Settings resolve as dataclass defaults < named recipe < JSON file < explicit values. Every field is a plain
JSON value; :meth:`TrainConfig.validate` coerces and checks them all and raises ValueError naming the problem.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pemn.artifact import CODINGS, EXTRAS_DTYPES, PROTOTYPE_STORAGE
from pemn.config import INITS, KEEP_RULES, PEMNConfig, pemn_option
from pemn.options import Needs, check_needs, check_option, either, field_types, option, option_help
from pemn.registry import type_names
from pemn.strategies import STRATEGY_TABLE as CORE_STRATEGIES
from pemn.training.augment import list_recipes
from pemn.training.data import canonical_name, dataset_serves, list_datasets
from pemn.training.dist import parse_device
from pemn.training.evaluation import DEFAULT_EVAL_BATCH
from pemn.training.models import get_model_spec
from pemn.training.prune import PRUNE_METHODS, PRUNE_SCOPES
from pemn.training.quantize import PRUNED_METHODS, QUANTIZE_METHODS
from pemn.training.sample import APP_KIND as CHAR_LM

__all__ = [
    "ARTIFACT_FIELDS",
    "AUTO_PEMN_FIELDS",
    "DEFAULT_COMPRESSION",
    "FIELD_SECTIONS",
    "GRID_FREE_FIELDS",
    "OPTIMIZERS",
    "PEMN_FIELDS",
    "PEMN_STRATEGIES",
    "PRUNE_FIELDS",
    "RECIPES",
    "RECIPE_FIELDS",
    "RESUME_FREE_FIELDS",
    "SCHEDULES",
    "STRATEGY_TABLE",
    "TRAIN_STRATEGIES",
    "Strategy",
    "TrainConfig",
    "field_sections",
    "field_type",
    "parse_setting",
    "parse_settings",
    "recorded_config",
    "resolve_config",
    "setting_text",
]


@dataclass(frozen=True)
class Strategy:
    """A value of :attr:`TrainConfig.strategy`: its name, its label in figures and tables, whether it is a PEMN
    strategy (the model is converted by :func:`pemn.convert_`; else its own weights are trained), whether it
    takes ``ratio`` (the prototype's length) and whether it tiles a prototype (``fill`` applies)."""

    name: str
    label: str
    pemn: bool
    takes_ratio: bool = False
    takes_fill: bool = False


#: Every training strategy: ``dense`` (the model's own weights), then the PEMN ones, as the core's
#: :data:`pemn.strategies.STRATEGY_TABLE` says them (label, ratio, fill: written there once).
STRATEGY_TABLE: dict[str, Strategy] = {
    "dense": Strategy("dense", "Dense", pemn=False),
    **{s.name: Strategy(s.name, s.label, pemn=True, takes_ratio=s.takes_ratio, takes_fill=s.takes_fill)
       for s in CORE_STRATEGIES.values()},
}
TRAIN_STRATEGIES = tuple(STRATEGY_TABLE)
PEMN_STRATEGIES = tuple(name for name, s in STRATEGY_TABLE.items() if s.pemn)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("paper", "cosine", "constant")
DEFAULT_COMPRESSION = 0.96
#: Fields a named recipe sets.
RECIPE_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule", "augment",
                 "amp", "clip_norm", "label_smoothing")
#: Fields that configure the conversion: :class:`~pemn.PEMNConfig`'s own (strategy and seed also mean something
#: to dense runs).
PEMN_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(PEMNConfig) if f.name not in ("strategy", "seed"))
#: Fields that say how ``model.pemn`` is encoded (the arguments of :func:`pemn.save`).
ARTIFACT_FIELDS = ("coding", "prototype", "extras_dtype", "fold_norms")
#: Training fields that only mean something for the PEMN strategies (mask scores, the variance correction).
PEMN_TRAIN_FIELDS = ("variance", "keep_start", "score_lr", "score_weight_decay")
#: Fields that only mean something for the PEMN strategies (an error with strategy "dense").
PEMN_FIELDS = PEMN_CONFIG_FIELDS + ARTIFACT_FIELDS + PEMN_TRAIN_FIELDS
#: ``variance`` presets: (rescale, keep_scale).
VARIANCES = {"paper": (False, False), "fan-in": (True, False), "fan-in-keep": (True, True)}
#: ``variance="auto"`` by model family (RESULTS.md section 5 has the measurements that chose them): "plain" = no
#: normalization layer (LeNet-5, MLPs), "bn" = BatchNorm (ConvMixer, ResNets), "ln" = LayerNorm only (ViT, GPT).
VARIANCE_DEFAULTS = {"plain": "fan-in-keep", "bn": "paper", "ln": "paper"}
#: With SGD (and neither score_lr nor score_weight_decay set, nor ``paper``) the scores train at this multiple of
#: ``lr`` without weight decay: at the paper's lr their masks barely leave the initial top-k (RESULTS.md section 5).
SGD_SCORE_LR_SCALE = 10.0
#: ``keep_rule="auto"`` is ``"erk"`` below this keep (with scope "layer" and not ``paper``), else ``"uniform"``: ERK
#: was more accurate with fewer mask bits in every sub-bit run measured (RESULTS.md "Below one bit": LeNet-5 keep 0.1
#: +1.0 points over 3 seeds, ConvMixer-64/4 +5.7); at keep 0.5, the paper's setting, runs stay as in sections 1-5.
KEEP_RULE_AUTO_BELOW = 0.5
#: ``init="auto"`` is ``"signed_constant"`` below :data:`KEEP_RULE_AUTO_BELOW` (not ``paper``), else
#: ``"kaiming_normal"``: at keep 0.1 the sign-and-scale prototype was more accurate in every network measured
#: (RESULTS.md "Signed-constant prototypes below one bit": ConvMixer-64/4 +4.0 points over 3 seeds, LeNet-5 +0.6,
#: gpt-128-4); at keep 0.5, the paper's setting, runs stay as in sections 1-5.
INIT_AUTO_SUB_BIT = "signed_constant"
#: ``gain`` unset is on for these model families (:func:`model_family`) below :data:`KEEP_RULE_AUTO_BELOW` (not
#: ``paper``): without a normalization layer nothing else sets a layer's output scale (RESULTS.md "Below one bit").
GAIN_AUTO_FAMILIES = ("plain",)
#: What a run's ``config.json`` written before ``keep_rule`` and ``gain`` existed trained with (``--resume``).
FIELDS_BEFORE_AUTO = {"keep_rule": "uniform", "gain": False}
#: TrainConfig fields whose default ``"auto"`` is resolved by the application (so it differs from PEMNConfig's).
AUTO_PEMN_FIELDS = ("keep_rule", "init")
#: Fields that only mean something for the pruning baselines (an error without ``prune``).
PRUNE_FIELDS = ("compression", "prune_scope")
#: Fields that do not change a run's results: they may differ between a sweep and its re-run in the same folder.
GRID_FREE_FIELDS = frozenset({"progress", "device", "data_dir", "download", "eval_batch_size", "threads", "wait"})
#: Fields that may differ between an interrupted run and its resumption: those, the resume switch and folder, and
#: how often / on how much of the test split it evaluates.
RESUME_FREE_FIELDS = (*sorted(GRID_FREE_FIELDS), "resume", "out", "eval_subset", "eval_every")


#: The file a run writes its settings to (pemn.training.outputs writes it; --resume reads it back).
RUN_CONFIG_NAME = "config.json"


def _variance_auto_text() -> str:
    """What ``variance="auto"`` picks, by family (from :data:`VARIANCE_DEFAULTS`), for the help text."""
    families = {"plain": "no norm layers (MLP, LeNet-5)", "bn": "BatchNorm (ConvMixer, ResNet)",
                "ln": "LayerNorm (ViT, GPT)"}
    return ", ".join(f"{VARIANCE_DEFAULTS[k]} with {families.get(k, k)}" for k in VARIANCE_DEFAULTS)


_COMMON = {"amp": None, "clip_norm": None, "label_smoothing": 0.0}
#: Named recipes: each sets every field of :data:`RECIPE_FIELDS`.
RECIPES: dict[str, dict[str, Any]] = {
    # The quick default (the dataclass defaults equal it): fine for digits-sized runs.
    "adamw": {"epochs": 10, "batch_size": 128, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0,
              "momentum": 0.9, "schedule": "paper", "augment": "none", **_COMMON},
    # The official PEMN ConvMixer command (README): AdamW, lr-max 0.05, wd 0.005, batch 512, 100 epochs,
    # RandAugment(2, 12) + jitter 0.2 + erasing 0.2, mixed precision on CUDA, no clipping.
    "convmixer": {"epochs": 100, "batch_size": 512, "optimizer": "adamw", "lr": 0.05, "weight_decay": 0.005,
                  "momentum": 0.9, "schedule": "paper", "augment": "convmixer", **_COMMON},
    # The usual CIFAR ResNet recipe (the supplement's momentum 0.9 / wd 5e-4 / 200 epochs).
    "resnet-sgd": {"epochs": 200, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4,
                   "momentum": 0.9, "schedule": "cosine", "augment": "flip-crop", **_COMMON},
    # MNIST in under a minute on 2 CPU cores: lenet5 (or mlp) with RP 1e-3 *and rescale=True* reaches 98.8 %
    # (97.2 %) test accuracy. Without rescale these BatchNorm-free nets plateau near 95-96 %: every layer then
    # draws the largest layer's N(0, 2/fan_in) values, so the logits stay too small for a confident softmax.
    "mnist": {"epochs": 8, "batch_size": 128, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0,
              "momentum": 0.9, "schedule": "paper", "augment": "none", **_COMMON},
    # nanoGPT's shakespeare_char CPU setting (lr 1e-3, weight decay 0.1, gradient clip 1, batch 12; give
    # --steps 2000 --block-size 64), with a plain cosine to 0 instead of its 100-step warmup and floor of 1e-4.
    "nanogpt": {"epochs": 1, "batch_size": 12, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1,
                "momentum": 0.9, "schedule": "cosine", "augment": "none", "amp": None, "clip_norm": 1.0,
                "label_smoothing": 0.0},
}


_PEMN_HELP = {f.name: option_help(f) for f in dataclasses.fields(PEMNConfig)}


def _trains_text(config: TrainConfig) -> bool:
    """Whether the run trains on text (the workload its dataset serves, pemn.training.workloads)."""
    return dataset_serves(config.dataset) == CHAR_LM


def _needs_prune(name: str) -> Needs:
    return Needs(lambda c: c.prune is not None, f"{name} needs prune ('random' or 'magnitude')")


def _needs_dense(name: str) -> Needs:
    """What the baselines of dense models (prune, quantize) need."""
    return Needs(lambda c: c.strategy == "dense", lambda c: f"{name} is a baseline for dense models: it needs "
                 f"strategy 'dense', got {c.strategy!r}")


def _ratio_message(config: TrainConfig) -> str:
    takes = [n for n, s in STRATEGY_TABLE.items() if s.takes_ratio]
    return (f"ratio applies only to strategy {' or '.join(map(repr, takes))} (got strategy {config.strategy!r}); "
            "leave it unset")


def _quantize_help() -> str:
    trained = [m for m in QUANTIZE_METHODS if not m.startswith("ptq-")]
    after = [m for m in QUANTIZE_METHODS if m.startswith("ptq-")]
    return (f"quantize the dense model's weights (every Conv/Linear/Embedding, per output channel): {either(trained)} "
            f"trained quantized (QAT), or {either(after)} after training; with prune: {either(PRUNED_METHODS)} (Deep "
            "Compression). Needs strategy dense; writes model.quant.safetensors")


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a plain JSON value with a default.

    One line per option (:func:`pemn.options.option`: default, help, choices, bounds): :meth:`validate`, the
    ``pemn train`` flags and ``docs/options.md`` are generated from them; the PEMN options are
    :class:`~pemn.PEMNConfig`'s own (:func:`pemn.config.pemn_option`). Build it with :func:`resolve_config` to get
    recipe defaults; constructing it directly validates too.
    """

    # what
    model: str = option("mlp", "model name from the registry (pemn models), e.g. mlp, lenet5, resnet20, "
                        "convmixer-256-8", check=get_model_spec)
    dataset: str = option("digits", f"dataset: {either(list_datasets())}", check=canonical_name)
    data_dir: str | None = option(None, "folder with the dataset files (default: $PEMN_DATA_DIR or ./data)")
    download: bool = option(False, "download missing official dataset files into data_dir")
    train_subset: int | None = option(None, "train on the first N training images only (quick runs); text: the "
                                      "first N characters", bounds=">= 1")
    block_size: int = option(64, "text only: context length in characters (the GPT's position embedding size)",
                             bounds=">= 1", needs=Needs(_trains_text, "block_size is the context of a language "
                                                        "model: it applies only to dataset 'text'"))
    # method
    strategy: str = pemn_option("strategy", help=f"dense, or a PEMN strategy: {', '.join(PEMN_STRATEGIES)}",
                                choices=TRAIN_STRATEGIES)
    ratio: float | None = pemn_option("ratio", needs=Needs(lambda c: STRATEGY_TABLE[c.strategy].takes_ratio,
                                                           _ratio_message))
    keep: float = pemn_option("keep")
    keep_rounding: str = pemn_option("keep_rounding")
    mask_sampling: str = pemn_option("mask_sampling")
    keep_rule: str = pemn_option("keep_rule", default="auto", choices=("auto", *KEEP_RULES),
                                 help=f"{_PEMN_HELP['keep_rule']}; auto: erk below keep 0.5 with scope layer, else "
                                 "uniform (uniform with --paper: see KEEP_RULE_AUTO_BELOW)")
    gain: bool | None = pemn_option("gain", default=None, help=f"{_PEMN_HELP['gain']} (default: on for networks "
                                    "without normalization layers below keep 0.5, off otherwise and with --paper: see "
                                    "GAIN_AUTO_FAMILIES)")
    fill: str = pemn_option("fill")
    init: str = pemn_option("init", default="auto", choices=("auto", *INITS),
                            help=f"{_PEMN_HELP['init']}; auto: signed_constant below keep 0.5, else kaiming_normal "
                            "(kaiming_normal with --paper: see INIT_AUTO_SUB_BIT)")
    paper: bool = option(False, "the paper's exact method: variance 'paper' when variance is auto, the scores "
                         "trained at lr and weight_decay like any weight also under SGD (see score_settings), and the "
                         "paper schedule's knots at the official code's whole epochs E*2//5, E*4//5")
    variance: str = option("auto", "variance correction of the prototype slices: auto (the measured best for the "
                           f"model's family: {_variance_auto_text()}), paper (none: the official code), fan-in (= "
                           "rescale) or fan-in-keep (fan-in and 1/sqrt(keep))", choices=("auto", *VARIANCES))
    rescale: bool | None = pemn_option("rescale", default=None, help=f"{_PEMN_HELP['rescale']} (default: from "
                                       "variance)")
    keep_scale: bool | None = pemn_option("keep_scale", default=None, help=f"{_PEMN_HELP['keep_scale']} (default: "
                                          "from variance)")
    keep_start: float | None = option(None, "keep annealing: the kept fraction at the first step, annealed to keep "
                                      "(cubic, as in gradual magnitude pruning) over the first keep_anneal of "
                                      "training", bounds="(0, 1]")
    keep_anneal: float = option(0.5, "keep annealing: fraction of the training steps over which keep_start reaches "
                                "keep", bounds="(0, 1]")
    score_lr: float | None = option(None, "peak learning rate of the mask scores (default: lr; extras use lr)",
                                    bounds="> 0")
    score_weight_decay: float | None = option(None, "weight decay of the mask scores (default: weight_decay, as in "
                                              "the paper; extras use weight_decay)", bounds=">= 0")
    teacher: str | None = option(None, "distill from a dense teacher: a model.safetensors of `pemn train --strategy "
                                 "dense` (its metadata names the model)",
                                 needs=Needs(lambda c: not _trains_text(c), "teacher: distillation applies to image "
                                             "classifiers (the teacher is rebuilt for the images' shape); train the "
                                             "language model without --teacher"))
    distill_temperature: float = option(4.0, "distillation: softmax temperature of teacher and student",
                                        bounds="> 0")
    distill_weight: float = option(0.5, "distillation: loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || "
                                   "student)", bounds="[0, 1]")
    scope: str = pemn_option("scope")
    targets: list[str] | None = pemn_option("targets", help="layer types or name regexes to mask (default: every "
                                            f"type in pemn's layer table: {', '.join(type_names())}; embeddings "
                                            "included, --exclude Embedding keeps them dense)")
    exclude: list[str] | None = pemn_option("exclude", default=None)
    prune: str | None = option(None, f"prune the dense model at init: {either(PRUNE_METHODS)} (needs strategy dense)",
                               choices=PRUNE_METHODS, needs=_needs_dense("prune"))
    compression: float | None = option(None, f"fraction of Conv/Linear weights pruned (default {DEFAULT_COMPRESSION}; "
                                       "needs prune)", bounds="(0, 1)",
                                       needs=_needs_prune("compression is the pruned fraction: it"))
    prune_scope: str = option("layer", "pruning scope: layer (same fraction per layer) or global (needs prune)",
                              choices=PRUNE_SCOPES, needs=_needs_prune("prune_scope"))
    quantize: str | None = option(None, _quantize_help(), choices=QUANTIZE_METHODS, needs=_needs_dense("quantize"))
    # recipe
    recipe: str = option("adamw", f"named recipe for the training fields you leave unset: {', '.join(RECIPES)}",
                         choices=tuple(RECIPES))
    epochs: int = option(10, "number of training epochs", bounds=">= 1")
    steps: int | None = option(None, "total optimizer steps, overriding epochs (the last epoch may be partial; the "
                               "lr schedule then runs over steps)", bounds=">= 1")
    batch_size: int = option(128, "global batch size (split across ranks under torchrun)", bounds=">= 1")
    optimizer: str = option("adamw", "adamw or sgd (with momentum, no nesterov)", choices=OPTIMIZERS)
    lr: float = option(0.01, "peak learning rate", bounds="> 0")
    weight_decay: float = option(0.0, "weight decay (applies to the scores too, as in the paper)", bounds=">= 0")
    momentum: float = option(0.9, "SGD momentum, or AdamW's beta1 (the gradient's running-average coefficient)",
                             bounds="[0, 1)")
    schedule: str = option("paper", "lr schedule: paper (0 -> lr -> lr/20 -> 0 at 0, .4E, .8E, E, in steps; "
                           "--paper: at whole epochs), cosine, constant", choices=SCHEDULES)
    augment: str = option("none", "training augmentation: none, flip-crop (pad 4), flip-crop8 (pad 8: "
                          "Tiny-ImageNet), convmixer (torchvision's RandAugment per image) or convmixer-kornia "
                          "(kornia's)", choices=lambda: tuple(list_recipes()))
    amp: bool | None = option(None, "mixed precision (CUDA only; default: on for CUDA)")
    clip_norm: float | None = option(None, "clip the gradient norm to this value (default: off)", bounds="> 0")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", bounds="[0, 1)")
    # output
    coding: str = option("packed", "mask coding in model.pemn: packed (1 bit/weight), entropy (about H(keep) "
                         "bits/weight) or context (entropy with per-row and per-column statistics where they "
                         "pay; its masks never larger than entropy's)", choices=CODINGS)
    prototype: str = option("values", f"prototype storage in model.pemn: {either(PROTOTYPE_STORAGE)}",
                            choices=PROTOTYPE_STORAGE)
    extras_dtype: str | None = option(None, "store norm/bias extras in model.pemn as float16, bfloat16 or int8 "
                                      "(affine per tensor, scales in the file, error-bounded: a tensor int8 cannot "
                                      "store within 1 % of its effect falls back to float16: pemn.extras) "
                                      "(default: as trained)", choices=tuple(d for d in EXTRAS_DTYPES if d))
    fold_norms: bool = option(False, "store each BatchNorm in model.pemn as its eval-mode scale and shift (2 numbers "
                              "per channel instead of 4): an inference artifact, outputs equal to float rounding")
    out: str | None = option(None, "output folder (default: runs/<timestamp>-<model>-<dataset>-<strategy>)")
    resume: bool = option(False, "continue from <out>/checkpoint.safetensors (same settings)")
    seed: int = pemn_option("seed", help="seed of the model init, prototype, scores, data order and augmentation")
    device: str = option("auto", "auto (cuda if available), cpu, cuda or cuda:N", check=parse_device)
    progress: bool = option(True, "show a progress bar (tqdm on a terminal) and progress lines")
    eval_batch_size: int = option(DEFAULT_EVAL_BATCH, "batch size for test evaluation (small batches are the "
                                  "fastest on a CPU: they keep the activations in cache, BENCHMARKS.md section 11)",
                                  bounds=">= 1")
    eval_subset: int | None = option(None, "evaluate on the first N test images only (text: the first N validation "
                                     "characters) every epoch and for the saved model (quick runs)", bounds=">= 1")
    eval_every: int = option(1, "evaluate the test split every K epochs (and always after the last one)",
                             bounds=">= 1")
    threads: int | None = option(None, "CPU threads of torch (default: 1 when the CPUs are busy with other "
                                 "processes, else up to 4; see BENCHMARKS.md)", bounds=">= 1")
    wait: bool = option(False, "if another run is writing into the out folder, wait for it to end instead of "
                        "stopping")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Coerce (int -> float, tuple -> list) and check every field against its declaration (type, choices,
        bounds, check; the PEMN ones by :class:`~pemn.PEMNConfig`), then the rules across fields (those an option
        declares it :class:`~pemn.options.Needs` first); ValueError naming the problem."""
        fields = dataclasses.fields(self)
        for f in fields:
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name)))
        for f in fields:  # PEMNConfig checks its own options (an "auto" one, only TrainConfig has: here)
            if f.name not in PEMN_CONFIG_FIELDS or f.name in AUTO_PEMN_FIELDS:
                check_option(f, getattr(self, f.name), field_type(f.name)[0])
        # rules across fields
        # the workload each serves (pemn.training.workloads): a character LM trains only on text, and only it does
        text, language_model = _trains_text(self), get_model_spec(self.model).serves == CHAR_LM
        if text and not language_model:
            raise ValueError(f"dataset 'text' trains a language model: choose a gpt-<dim>-<depth> model (e.g. "
                             f"gpt-128-4), not {self.model!r}")
        if language_model and not text:
            raise ValueError(f"{self.model!r} is a language model: it trains on dataset 'text' (--dataset text "
                             f"--data-dir DIR with DIR/input.txt), not {self.dataset!r}")
        check_needs(self)  # block_size, ratio, teacher, prune, compression, prune_scope, quantize
        if self.quantize is not None and self.prune is not None and self.quantize not in PRUNED_METHODS:
            raise ValueError(f"a pruned model's survivors are quantized by {', '.join(PRUNED_METHODS)} (Deep "
                             f"Compression), not {self.quantize!r}")
        if self.strategy == "dense":
            set_ = [f.name for f in fields if f.name in PEMN_FIELDS and getattr(self, f.name) != f.default]
            if set_:
                raise ValueError(f"strategy 'dense' trains the model's own weights; the PEMN option(s) {set_} do not "
                                 f"apply (choose a PEMN strategy: {', '.join(PEMN_STRATEGIES)})")
        else:
            self.pemn_config()  # PEMNConfig checks its own fields (names, keep range, fill 'rand', target regexes)
        if self.keep_start is not None and not self.keep <= self.keep_start <= 1:
            raise ValueError(f"keep_start anneals down to keep: it must be in [keep, 1] = [{self.keep:g}, 1], got "
                             f"{self.keep_start!r}")
        if self.resume and not self.out:
            raise ValueError("resume needs out: the folder holding checkpoint.safetensors")

    def pemn_config(self, model: nn.Module | None = None) -> PEMNConfig:
        """The :class:`~pemn.PEMNConfig` of a PEMN strategy (ValueError for strategy 'dense'); ``model`` (the
        unconverted network) decides ``variance="auto"`` (:func:`variance_for`; without it, "paper")."""
        if not STRATEGY_TABLE[self.strategy].pemn:
            raise ValueError(f"strategy {self.strategy!r} has no PEMN config")
        # every PEMNConfig field TrainConfig carries (tests check it carries them all; one it lacks keeps the
        # core's default)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(PEMNConfig) if hasattr(self, f.name)}
        rescale, keep_scale = VARIANCES[self.resolved_variance(model)]
        fields["rescale"] = rescale if self.rescale is None else self.rescale
        fields["keep_scale"] = keep_scale if self.keep_scale is None else self.keep_scale
        fields["keep_rule"] = self.resolved_keep_rule()
        fields["gain"] = self.resolved_gain(model)
        fields["init"] = self.resolved_init()
        return PEMNConfig(**{**fields, "exclude": tuple(self.exclude or ())})

    def score_settings(self) -> tuple[float, float] | None:
        """``(lr, weight_decay)`` of the mask scores' own parameter group, or None for one group with the extras
        (the paper). Explicit ``score_lr`` / ``score_weight_decay`` win; else SGD runs (not ``paper``) get
        :data:`SGD_SCORE_LR_SCALE` x ``lr`` and no weight decay; AdamW's normalised steps need no such change."""
        if self.score_lr is not None or self.score_weight_decay is not None:
            return (self.lr if self.score_lr is None else self.score_lr,
                    self.weight_decay if self.score_weight_decay is None else self.score_weight_decay)
        if self.optimizer == "sgd" and not self.paper and STRATEGY_TABLE[self.strategy].pemn:
            return SGD_SCORE_LR_SCALE * self.lr, 0.0
        return None

    def resolved_keep_rule(self) -> str:
        """``keep_rule``, with "auto" replaced by "erk" below :data:`KEEP_RULE_AUTO_BELOW` (scope "layer", not
        ``paper``) and by "uniform" otherwise."""
        if self.keep_rule != "auto":
            return self.keep_rule
        return "erk" if self._sub_bit_auto and self.scope == "layer" else "uniform"

    def resolved_init(self) -> str:
        """``init``, with "auto" replaced by :data:`INIT_AUTO_SUB_BIT` below :data:`KEEP_RULE_AUTO_BELOW` (not
        ``paper``) and by the core's default (PEMNConfig's, "kaiming_normal") otherwise."""
        if self.init != "auto":
            return self.init
        return INIT_AUTO_SUB_BIT if self._sub_bit_auto else PEMNConfig.init

    @property
    def _sub_bit_auto(self) -> bool:
        """Whether the "auto" options take their below-one-bit settings: keep below :data:`KEEP_RULE_AUTO_BELOW`
        and not ``paper``."""
        return self.keep < KEEP_RULE_AUTO_BELOW and not self.paper

    def resolved_gain(self, model: nn.Module | None = None) -> bool:
        """``gain``, or when unset: on for a model of a :data:`GAIN_AUTO_FAMILIES` family below
        :data:`KEEP_RULE_AUTO_BELOW` (not ``paper``; without ``model``, off)."""
        if self.gain is not None:
            return self.gain
        return model is not None and self._sub_bit_auto and model_family(model) in GAIN_AUTO_FAMILIES

    def resolved_variance(self, model: nn.Module | None = None) -> str:
        """``variance``, with "auto" replaced by the model family's default (:data:`VARIANCE_DEFAULTS`)."""
        if self.variance != "auto":
            return self.variance
        if self.paper:
            return "paper"
        return "paper" if model is None else VARIANCE_DEFAULTS[model_family(model)]

    @property
    def effective_compression(self) -> float | None:
        """The pruned fraction used (``compression`` or 0.96), or None without pruning."""
        if self.prune is None:
            return None
        return DEFAULT_COMPRESSION if self.compression is None else self.compression

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), list) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict of fields (``-`` in keys is read as ``_``); unknown keys are a ValueError."""
        return cls(**_normalise_keys(data, "TrainConfig.from_dict"))


def model_family(model: nn.Module) -> str:
    """The family that picks ``variance="auto"``: "bn" (has BatchNorm), "ln" (LayerNorm/GroupNorm, no BatchNorm)
    or "plain" (no normalization layer)."""
    mods = list(model.modules())
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods):
        return "bn"
    if any(isinstance(m, nn.LayerNorm | nn.GroupNorm) for m in mods):
        return "ln"
    return "plain"


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


#: The sections of ``pemn train --help``: (title, the section's first field), in field order. A section runs up to
#: the next one's first field, so a new field joins the section it is declared in.
FIELD_SECTIONS = (
    ("model and data", "model"),
    ("method: strategy, prototype and masks", "strategy"),
    ("distillation from a dense teacher", "teacher"),
    ("what is masked; pruning baselines", "scope"),
    ("optimization (a recipe sets these; the flags you type override it)", "recipe"),
    ("the model file (model.pemn)", "coding"),
    ("the run: folder, resume, seed, device, evaluation", "out"),
)


def field_sections() -> list[tuple[str, list[str]]]:
    """``[(title, [field, ...]), ...]``: every :class:`TrainConfig` field once, in order, under its
    :data:`FIELD_SECTIONS` title."""
    starts = {first: title for title, first in FIELD_SECTIONS}
    sections: list[tuple[str, list[str]]] = []
    for name in _field_names():
        if name in starts or not sections:
            sections.append((starts.get(name, "options"), []))
        sections[-1][1].append(name)
    return sections


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def field_type(name: str) -> tuple[type, bool]:
    """``(type, optional)`` of a :class:`TrainConfig` field: type is bool, int, float, str or list (of str);
    optional says whether None is allowed."""
    return field_types(TrainConfig)[name]


def _coerce(name: str, value: Any) -> Any:
    """``value`` as field ``name``'s type (int -> float, a str or tuple -> list of str); ValueError if it is not."""
    base, optional = field_type(name)
    if value is None and optional:
        return None
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    else:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value)
    raise ValueError(f"{name} must be {base.__name__}{' or null' if value is None else ''}, got {value!r}")


def parse_setting(name: str, text: str) -> Any:
    """A ``key=value`` text (``pemn sweep --set``) as field ``name``'s value: ``none``/``null`` for an optional
    field, true/false/yes/no/on/off/1/0 for a bool, a JSON list or comma/space separated words for a list.
    ValueError naming the field if the text does not parse."""
    base, optional = field_type(name)
    word = text.strip()
    if optional and word.lower() in ("none", "null"):
        return None
    try:
        if base is bool:
            if word.lower() in _TRUE:
                return True
            if word.lower() in _FALSE:
                return False
            raise ValueError("expected true or false")
        if base in (int, float):
            return base(word)
        if base is list:
            if word.startswith("["):
                value = json.loads(word)
                if not isinstance(value, list):
                    raise ValueError("expected a JSON list")
                return value
            return [p for p in re.split(r"[,\s]+", word) if p]
    except ValueError as e:
        raise ValueError(f"{name}={text!r}: {e}") from None
    return text


def _normalise_keys(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a dict of settings, got {type(data).__name__}")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(out) - set(_field_names()))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; valid: {', '.join(_field_names())}")
    return out


def resolve_config(overrides: dict[str, Any] | None = None, *, recipe: str | None = None,
                   config_file: str | os.PathLike[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` for a run: dataclass defaults < recipe < JSON ``config_file`` < ``overrides``.

    The recipe is ``overrides["recipe"]`` or ``recipe`` (they must agree), else the file's, else ``"adamw"``;
    it fills the training fields (:data:`RECIPE_FIELDS`) that neither the file nor ``overrides`` set.
    Unknown keys or names and contradictory settings raise ValueError naming the valid choices.
    """
    explicit = _normalise_keys(dict(overrides or {}), "overrides")
    from_file: dict[str, Any] = {}
    if config_file is not None:
        try:
            text = Path(config_file).read_text()
        except OSError as e:
            raise ValueError(f"cannot read config file {str(config_file)!r}: {e.strerror or e}") from None
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {str(config_file)!r} is not valid JSON: {e}") from None
        from_file = _normalise_keys(loaded, f"config file {str(config_file)!r}")
    name = explicit.get("recipe")
    if recipe is not None:
        if name is not None and name != recipe:
            raise ValueError(f"two recipes given: {recipe!r} and {name!r}")
        name = recipe
    if explicit.get("resume") and explicit.get("out") and (Path(explicit["out"]) / RUN_CONFIG_NAME).is_file():
        given = {**from_file, **explicit, **({"recipe": name} if name is not None else {})}
        return _resume_config(Path(explicit["out"]) / RUN_CONFIG_NAME, given)
    if name is None:
        name = from_file.get("recipe", TrainConfig.recipe)
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **from_file, **explicit, "recipe": name})


def recorded_config(path: str | os.PathLike[str]) -> TrainConfig:
    """The settings a run trained with, from the ``config.json`` it wrote (``path``). A pemn run written before
    a field of :data:`FIELDS_BEFORE_AUTO` existed trained with what that field is now "auto" about, so the field
    gets that value (a dense / quantized / pruned run has no PEMN options to fill in). OSError or ValueError
    where the file cannot be read or holds no valid settings."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and data.get("strategy") != "dense":
        for key, before in FIELDS_BEFORE_AUTO.items():
            data.setdefault(key, before)
    return TrainConfig.from_dict(data)


def _resume_config(path: Path, given: dict[str, Any]) -> TrainConfig:
    """The settings of the run that wrote ``path`` (its ``config.json``), with the :data:`RESUME_FREE_FIELDS`
    of ``given`` applied; any other setting in ``given`` must equal the run's (ValueError naming each one)."""
    try:
        saved = recorded_config(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume takes the run's settings from {str(path)!r}, which cannot be read: "
                         f"{e or type(e).__name__}") from None
    base = saved.to_dict()
    merged = TrainConfig.from_dict({**base, **given})
    asked = merged.to_dict()
    differ = [k for k in given if k not in RESUME_FREE_FIELDS and asked[k] != base[k]]
    if differ:
        detail = ", ".join(f"--{k.replace('_', '-')} {setting_text(asked[k])} (the run has {setting_text(base[k])})"
                           for k in differ)
        raise ValueError(f"--resume continues the run in {str(path.parent)!r} with its own settings ({path.name}); "
                         f"these differ: {detail}. Drop them to resume, or start a new run in another --out")
    return merged


def setting_text(value: Any, list_sep: str = " ") -> str:
    """A setting's value as the command line writes it: a list's items joined by ``list_sep`` (" " after a flag,
    "," in ``--set key=value``), a bool or None in lower case."""
    if isinstance(value, list | tuple):
        return list_sep.join(map(str, value))
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` texts (``pemn sweep --set``; ``-`` or ``_`` in a key, leading dashes ignored) as training
    options, each value by :func:`parse_setting`. ValueError for a text that is not ``key=value``, a key that is no
    option, or a value that does not parse."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ValueError(f"expects key=value, got {pair!r}")
        if key not in names:
            raise ValueError(f"{key}: not a training option; valid: {', '.join(sorted(names))}")
        out[key] = parse_setting(key, raw)
    return out
