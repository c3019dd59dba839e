"""The training engine behind ``pemn train``: one function, :func:`train`, driven by a :class:`TrainConfig`.

It trains a model from :mod:`pemn.training.models` on a dataset from :mod:`pemn.training.data` (in-memory
tensors, batched augmentation from :mod:`pemn.training.augment`) with one of the paper's methods:

- ``strategy="dense"``: the ordinary model (optionally pruned at init with ``prune="random"|"magnitude"``,
  the paper's "Random"/"Minimum" baselines, see :mod:`pemn.training.prune`);
- ``"mask"``, ``"one_layer"``, ``"mp"``, ``"rp"``: the model is converted by :func:`pemn.convert_` and only
  its scores (plus biases / norms) are trained, as in the paper (weight decay applies to the scores too).

Settings come from :func:`resolve_config` (dataclass defaults < named recipe < JSON file < explicit values).
Every epoch evaluates on the test split and appends to ``metrics.jsonl``; the paper reports the best
epoch's test accuracy (``best_acc``), which selects on the test set, so the final epoch's (``final_acc``,
the accuracy of the saved model) is reported beside it.

Outputs in ``cfg.out`` (or ``runs/<timestamp>-<model>-<dataset>-<strategy>``): ``config.json``,
``metrics.jsonl``, ``checkpoint.safetensors`` (every epoch, and on SIGINT/SIGTERM), and at the end
``model.pemn`` (PEMN strategies), ``model.safetensors`` (dense) or ``model.sparse.safetensors`` (pruned),
plus ``result.json``. Every file is written atomically (temporary file + ``os.replace``); the checkpoint is a
safetensors file with JSON metadata (optimizer state flattened to tensors), never a pickle.

Reproducibility: the model is built after ``torch.manual_seed(cfg.seed)``; each epoch's order is a
``randperm`` from a generator seeded by ``(seed, epoch)``; each batch's augmentation is seeded by
``(seed, epoch, step, rank)``. On the CPU a run interrupted (even mid-epoch) and resumed ends bit-identical
to an uninterrupted one.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised (gloo on CPU, NCCL on
CUDA) unless the caller already did, the model is wrapped in DDP, each epoch's permutation is split across
ranks (DistributedSampler-style, padded to equal shards), ``batch_size`` is the global batch
(``batch_size // world_size`` per rank), metrics are all-reduced and only rank 0 writes files or logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

from pemn.artifact import CODINGS, PROTOTYPE_STORAGE
from pemn.artifact import load as pemn_load
from pemn.artifact import save as pemn_save
from pemn.config import FILLS, INITS, SCOPES, STRATEGIES, PEMNConfig
from pemn.convert import convert_, masked_weights, unwrap
from pemn.errors import DatasetError
from pemn.fileio import atomic_write_bytes as _atomic_write
from pemn.fileio import remove_stale_temp_files
from pemn.summary import summary as pemn_summary
from pemn.training.augment import BatchTransform, build_eval_transform, build_train_transform, list_recipes
from pemn.training.data import dataset_info, load_dataset
from pemn.training.models import create_model, get_model_spec
from pemn.training.prune import PRUNE_METHODS, PRUNE_SCOPES, load_sparse, prune_, pruning_masks, save_sparse

__all__ = [
    "RECIPES",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "evaluate",
    "read_checkpoint",
    "resolve_config",
    "schedule_lr",
    "train",
]

TRAIN_STRATEGIES = ("dense", *STRATEGIES)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("paper", "cosine", "constant")
DEFAULT_COMPRESSION = 0.96
CHECKPOINT_NAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "pemn-checkpoint"
CHECKPOINT_VERSION = 1
#: Fields a named recipe sets.
RECIPE_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule", "augment",
                 "amp", "clip_norm", "label_smoothing")
#: Fields that only mean something for the PEMN strategies (checked against strategy "dense").
PEMN_FIELDS = ("ratio", "keep", "fill", "init", "rescale", "scope", "targets", "exclude", "extras_dtype")
#: Fields that may differ between an interrupted run and its resumption.
RESUME_FREE_FIELDS = ("resume", "progress", "device", "data_dir", "download", "out", "eval_batch_size")
#: Seconds between plain progress lines inside an epoch (when there is no tqdm bar).
PLAIN_PROGRESS_EVERY = 60.0
_METRIC_NOTE = ("best_acc is the highest per-epoch test accuracy (the paper's reported metric; it selects on the "
                "test set); final_acc is the last epoch's test accuracy, the accuracy of the saved model")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a plain JSON value with a default.

    Build it with :func:`resolve_config` to get recipe defaults; constructing it directly validates too.
    """

    # what
    model: str = _f("mlp", "model name from the registry (pemn models), e.g. mlp, lenet5, resnet20, convmixer-256-8")
    dataset: str = _f("digits", "dataset: digits, mnist, fashion-mnist, cifar10, cifar100 or imagefolder")
    data_dir: str | None = _f(None, "folder with the dataset files (default: $PEMN_DATA_DIR or ./data)")
    download: bool = _f(False, "download missing official dataset files into data_dir")
    train_subset: int | None = _f(None, "train on the first N training images only (quick runs)")
    # method
    strategy: str = _f("rp", "dense, or a PEMN strategy: mask, one_layer, mp, rp")
    ratio: float | None = _f(None, "rp only: prototype length as a fraction of the largest layer (default 1e-3)")
    keep: float = _f(0.5, "fraction of each masked layer's weights that its mask keeps")
    fill: str = _f("copy", "mp/rp: copy (plain tiling) or rand (tiled, then shuffled)")
    init: str = _f("kaiming_normal", "prototype values: kaiming_normal, kaiming_uniform or signed_constant")
    rescale: bool = _f(False, "scale each layer's prototype slice to its own fan-in")
    scope: str = _f("layer", "mask top-k per layer (the paper) or global (one threshold over all masked layers)")
    targets: list[str] | None = field(
        default=None, metadata={"help": "layer types or name regexes to mask (default: every Conv/Linear/MHA)"})
    exclude: list[str] | None = field(default=None, metadata={"help": "layer types or name regexes to leave dense"})
    prune: str | None = _f(None, "prune the dense model at init: random or magnitude (needs strategy dense)")
    compression: float | None = _f(None, "fraction of Conv/Linear weights pruned (default 0.96; needs prune)")
    prune_scope: str = _f("layer", "pruning scope: layer (same fraction per layer) or global (needs prune)")
    # recipe
    recipe: str = _f("adamw", "named recipe for the training fields you leave unset: adamw, convmixer, "
                              "resnet-sgd, mnist")
    epochs: int = _f(10, "number of training epochs")
    batch_size: int = _f(128, "global batch size (split across ranks under torchrun)")
    optimizer: str = _f("adamw", "adamw or sgd (momentum, no nesterov)")
    lr: float = _f(0.01, "peak learning rate")
    weight_decay: float = _f(0.0, "weight decay (applies to the scores too, as in the paper)")
    momentum: float = _f(0.9, "SGD momentum")
    schedule: str = _f("paper", "lr schedule: paper (0 -> lr -> lr/20 -> 0 at 0, .4E, .8E, E), cosine, constant")
    augment: str = _f("none", "training augmentation: none, flip-crop or convmixer")
    amp: bool | None = _f(None, "mixed precision (CUDA only; default: on for CUDA)")
    clip_norm: float | None = _f(None, "clip the gradient norm to this value (default: off)")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing")
    # output
    coding: str = _f("packed", "mask coding in model.pemn: packed (1 bit/weight) or entropy")
    prototype: str = _f("values", "prototype storage in model.pemn: values or seed")
    extras_dtype: str | None = _f(None, "store norm/bias extras in model.pemn as float16 or bfloat16 "
                                  "(default: as trained)")
    out: str | None = _f(None, "output folder (default: runs/<timestamp>-<model>-<dataset>-<strategy>)")
    resume: bool = _f(False, "continue from <out>/checkpoint.safetensors (same settings)")
    seed: int = _f(0, "seed of the model init, prototype, scores, data order and augmentation")
    device: str = _f("auto", "auto (cuda if available), cpu, cuda or cuda:N")
    progress: bool = _f(True, "show a progress bar (tqdm on a terminal) and progress lines")
    eval_batch_size: int = _f(256, "batch size for test evaluation (CPU caches favour a few hundred)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check (and normalise: int -> float, tuple -> list) every field; ValueError naming the problem."""
        hints = _type_hints()
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        _choice("strategy", self.strategy, TRAIN_STRATEGIES)
        _choice("recipe", self.recipe, tuple(RECIPES))
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("augment", self.augment, tuple(list_recipes()))
        _choice("coding", self.coding, CODINGS)
        _choice("prototype", self.prototype, PROTOTYPE_STORAGE)
        _choice("fill", self.fill, FILLS)
        _choice("init", self.init, INITS)
        _choice("prune_scope", self.prune_scope, PRUNE_SCOPES)
        _choice("scope", self.scope, SCOPES)
        if self.extras_dtype is not None:
            _choice("extras_dtype", self.extras_dtype, ("float32", "float16", "bfloat16"))
        if self.prune is not None:
            _choice("prune", self.prune, PRUNE_METHODS)
        get_model_spec(self.model)  # ModelError (a ValueError) listing the valid names
        try:
            dataset_info(self.dataset, self.data_dir)
        except DatasetError as e:
            if str(e).startswith("unknown dataset"):
                raise
        # contradictions
        if self.ratio is not None and self.strategy != "rp":
            raise ValueError(f"ratio applies only to strategy 'rp' (got strategy {self.strategy!r}); leave it unset")
        if self.prune is not None and self.strategy != "dense":
            raise ValueError(f"prune is a baseline for dense models: it needs strategy 'dense', got {self.strategy!r}")
        if self.compression is not None and self.prune is None:
            raise ValueError("compression is the pruned fraction: it needs prune ('random' or 'magnitude')")
        if self.prune_scope != "layer" and self.prune is None:
            raise ValueError("prune_scope needs prune ('random' or 'magnitude')")
        if self.strategy == "dense":
            defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
            set_ = [n for n in PEMN_FIELDS if getattr(self, n) != defaults[n]]
            if set_:
                raise ValueError(f"strategy 'dense' trains the model's own weights; the PEMN option(s) {set_} do not "
                                 f"apply (choose a PEMN strategy: {', '.join(STRATEGIES)})")
        else:
            self.pemn_config()  # PEMNConfig's own checks (keep range, fill 'rand' strategies, target regexes)
        # ranges
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("eval_batch_size", self.eval_batch_size)
        if self.train_subset is not None:
            _positive("train_subset", self.train_subset)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be > 0 (or unset), got {self.clip_norm!r}")
        if self.compression is not None and not 0 < self.compression < 1:
            raise ValueError(f"compression must be in (0, 1), got {self.compression!r}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from None
        if self.resume and not self.out:
            raise ValueError("resume needs out: the folder holding checkpoint.safetensors")

    def pemn_config(self) -> PEMNConfig:
        """The :class:`~pemn.PEMNConfig` of a PEMN strategy (ValueError for strategy 'dense')."""
        if self.strategy == "dense":
            raise ValueError("strategy 'dense' has no PEMN config")
        return PEMNConfig(strategy=self.strategy, ratio=self.ratio, fill=self.fill, keep=self.keep, seed=self.seed,
                          init=self.init, rescale=self.rescale, scope=self.scope, targets=self.targets,
                          exclude=tuple(self.exclude or ()))

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


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


_HINTS: dict[str, Any] = {}


def _type_hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(get_type_hints(TrainConfig))
    return _HINTS


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value)
    else:  # pragma: no cover - every field has one of the types above
        raise TypeError(f"unsupported field type {hint!r}")
    want = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{name} must be {want}{' or null' if value is None else ''}, got {value!r}")


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def _normalise_keys(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a dict of settings, got {type(data).__name__}")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(out) - set(_field_names()))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; valid: {', '.join(_field_names())}")
    return out


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
}


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
    if name is None:
        name = from_file.get("recipe", TrainConfig.recipe)
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **from_file, **explicit, "recipe": name})


# --------------------------------------------------------------------------------------------- schedule


def schedule_lr(schedule: str, lr: float, epochs: int, t: float) -> float:
    """The learning rate after ``t`` epochs (fractional) of an ``epochs``-long run.

    ``"paper"``: the official PEMN code's ``np.interp(t, [0, E*2//5, E*4//5, E], [0, lr, lr/20, 0])`` with
    ``t = epoch + (step + 1) / steps_per_epoch`` per iteration (same float ops as ``np.interp``).
    ``"cosine"``: ``lr * (1 + cos(pi * t / E)) / 2``. ``"constant"``: ``lr``.
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return 0.5 * lr * (1.0 + math.cos(math.pi * min(max(t / epochs, 0.0), 1.0)))
    if schedule != "paper":
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    xs = (0.0, float(epochs * 2 // 5), float(epochs * 4 // 5), float(epochs))
    ys = (0.0, lr, lr / 20.0, 0.0)
    if t < xs[0]:
        return ys[0]
    if t >= xs[-1]:
        return ys[-1]
    j = max(i for i in range(len(xs)) if xs[i] <= t)
    if xs[j] == t:
        return ys[j]
    slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j])
    return slope * (t - xs[j]) + ys[j]


# -------------------------------------------------------------------------------------------- results


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped early (SIGINT/SIGTERM, or a test hook) after saving a checkpoint.

    ``exit_code`` is ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM; 130 for a test hook).
    """

    def __init__(self, message: str, *, checkpoint: Path | None, epoch: int, step: int, signum: int | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step
        self.signum = signum
        self.exit_code = 128 + (signum if signum is not None else int(signal.SIGINT))

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class TrainResult:
    """What :func:`train` produced. Accuracies are top-1 % on the test split; epochs are 1-based.

    ``best_acc``/``best_epoch``: the highest per-epoch test accuracy (the paper's metric).
    ``final_acc``: the last epoch's, i.e. the saved model's (``artifact_acc`` re-measures it from the file).
    ``artifact``: ``model.pemn`` (None for dense runs); ``weights``: ``model.safetensors`` (dense) or
    ``model.sparse.safetensors`` (pruned); ``sparse_bytes``: the pruned file's honest size.
    ``state_sha256``: a hash of the final masks (PEMN) or weights (dense), equal on every rank.
    """

    out_dir: Path
    artifact: Path | None
    artifact_bytes: int | None
    best_acc: float
    best_epoch: int
    final_acc: float
    epochs_run: int
    seconds: float
    summary: dict[str, Any]
    weights: Path | None = None
    weights_bytes: int | None = None
    sparse_bytes: int | None = None
    artifact_acc: float | None = None
    world_size: int = 1
    rank: int = 0
    state_sha256: str = ""
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "model":
                continue
            v = getattr(self, f.name)
            d[f.name] = str(v) if isinstance(v, Path) else v
        d["note"] = _METRIC_NOTE
        return d


# ----------------------------------------------------------------------------------------- evaluation


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _count_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                   transform: BatchTransform | Callable[[torch.Tensor], torch.Tensor] | None, batch_size: int,
                   device: torch.device, amp: bool = False) -> tuple[int, int]:
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                xb = images[i:i + batch_size].to(device, non_blocking=True)
                yb = labels[i:i + batch_size].to(device, non_blocking=True)
                x = transform(xb) if transform is not None else xb
                with _autocast(device, amp):
                    out = model(x)
                correct += (out.argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    return int(correct), int(images.shape[0])


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             transform: BatchTransform | Callable[[torch.Tensor], torch.Tensor] | None = None,
             batch_size: int = 1000, device: str | torch.device | None = None, amp: bool = False) -> float:
    """Top-1 accuracy (%) of ``model`` on ``images``/``labels``, in ``eval()`` mode under ``no_grad``.

    ``transform`` maps a raw batch (e.g. uint8) to the model's input
    (:func:`pemn.training.augment.build_eval_transform`);
    ``device`` defaults to the model's. The model's train/eval mode is restored afterwards.
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    correct, total = _count_correct(model, images, labels, transform=transform, batch_size=batch_size,
                                    device=torch.device(device), amp=amp)
    return 100.0 * correct / total if total else 0.0


# ----------------------------------------------------------------------------------------- checkpoint


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` as tensors ``optim/<param index>/<key>`` plus a JSON-ready rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        scalars[str(index)] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = _cpu(value)
            else:
                json.dumps(value)  # TypeError for anything that is not plain JSON
                scalars[str(index)][key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                         optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, t in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = t
    fresh = optimizer.state_dict()["param_groups"]
    if len(fresh) != len(meta["param_groups"]):
        raise ValueError("the checkpoint's optimizer has a different number of parameter groups")
    groups = []
    for saved, now in zip(meta["param_groups"], fresh, strict=True):
        g = dict(saved)
        for k, v in now.items():  # JSON turned tuples (Adam's betas) into lists
            if isinstance(v, tuple) and isinstance(g.get(k), list):
                g[k] = tuple(g[k])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse a training checkpoint: ``(tensors, {"config": dict, "state": dict, ...})``. Never unpickles."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors checkpoint ({e}); pemn never unpickles "
                         "(torch.save checkpoints are not supported)") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a pemn training checkpoint (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(CHECKPOINT_VERSION):
        raise ValueError(f"{str(path)!r}: unsupported checkpoint version {metadata.get('format_version')!r}")
    meta = {k: v for k, v in metadata.items() if k not in ("config", "state")}
    try:
        meta["config"] = json.loads(metadata["config"])
        meta["state"] = json.loads(metadata["state"])
    except (KeyError, ValueError, RecursionError) as e:
        raise ValueError(f"{str(path)!r} is a corrupt pemn training checkpoint (bad or missing {e}); "
                         "start the run again without --resume") from None
    return tensors, meta


# ----------------------------------------------------------------------------------------- helpers


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs, platforms and Python hash seeds)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _fmt_time(seconds: float) -> str:
    seconds = round(max(seconds, 0.0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _write_json(path: Path, data: Any) -> None:
    _atomic_write(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def _resolve_device(spec: str, local_rank: int, world: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    return device


class _Dist:
    """The process group view of this run (world 1 when not distributed)."""

    def __init__(self) -> None:
        self.world, self.rank, self.local_rank, self.owns_group = 1, 0, 0, False
        self.device = torch.device("cpu")

    def setup(self, device_spec: str) -> torch.device:
        if dist.is_available() and dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        else:
            world = int(os.environ.get("WORLD_SIZE", "1") or 1)
            if world > 1:
                self.world, self.rank = world, int(os.environ.get("RANK", "0"))
                self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = _resolve_device(device_spec, self.local_rank, self.world)
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True
        elif self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        return self.device

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.enabled:
            self.all_reduce_(torch.zeros(1, device=self.device))

    def broadcast_str(self, text: str) -> str:
        if not self.enabled:
            return text
        data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=self.device)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        dist.broadcast(size, 0)
        if not self.main:
            data = torch.empty(int(size), dtype=torch.uint8, device=self.device)
        dist.broadcast(data, 0)
        return bytes(data.cpu().tolist()).decode()

    def all_equal(self, digest: bytes) -> bool:
        if not self.enabled:
            return True
        mine = torch.tensor(list(digest), dtype=torch.uint8, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop acts on (checkpoint, then stop); a second signal aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting without a new checkpoint")
        self.signum = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class _Progress:
    """A tqdm bar (on a terminal, when tqdm is installed) or a plain line every minute."""

    def __init__(self, enabled: bool, total: int, desc: str, log: Callable[[str], None]) -> None:
        self.bar = None
        self.enabled = enabled
        self.log = log
        self.desc = desc
        self.total = total
        self.done = 0
        self.start = self.last = time.perf_counter()
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False, dynamic_ncols=True)

    def update(self, images: int, loss: float) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.enabled:
            now = time.perf_counter()
            if now - self.last >= PLAIN_PROGRESS_EVERY:
                self.last = now
                rate = self.done / max(now - self.start, 1e-9)
                eta = (self.total - self.done) / max(rate, 1e-9)
                self.log(f"  {self.desc}: {self.done:,}/{self.total:,} images  loss {loss:.4f}  "
                         f"{rate:,.0f} img/s  epoch ETA {_fmt_time(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _state_digest(model: nn.Module) -> bytes:
    """SHA-256 of the masks (PEMN) or of every state tensor (dense)."""
    h = hashlib.sha256()
    mws = masked_weights(model)
    if mws:
        for name in sorted(mws):
            h.update(name.encode() + b"\0")
            h.update(mws[name].current_mask().detach().cpu().numpy().tobytes())
    else:
        for name, t in sorted(unwrap(model).state_dict().items()):
            h.update(name.encode() + b"\0")
            h.update(_cpu(t).reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def _default_log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig, *, log: Callable[[str], None] | None = None, stop_after_epoch: int | None = None,
          stop_after_step: int | None = None) -> TrainResult:
    """Train ``cfg``'s model and write its outputs; see the module doc.

    Args:
        cfg: the run's settings (use :func:`resolve_config` for recipe defaults).
        log: receives every progress / result line (default: print); only rank 0 logs.
        stop_after_epoch, stop_after_step: testing hooks that simulate an interruption once that many epochs
            (or optimizer steps in total) are done: a checkpoint is written and :class:`TrainingInterrupted`
            raised, exactly as for SIGINT/SIGTERM.

    Raises:
        TrainingInterrupted: (a ``KeyboardInterrupt``) after SIGINT/SIGTERM, once the checkpoint is saved.
        NonFiniteLossError: (a ``RuntimeError``) if the loss becomes NaN/inf; nothing more is written.
        ValueError: bad settings, or a resume that does not match its checkpoint.
        FileExistsError: ``out`` already holds a run and ``resume`` is off.
    """
    cfg = TrainConfig.from_dict(cfg.to_dict())  # a validated private copy
    run = _Run(cfg, log or _default_log, stop_after_epoch, stop_after_step)
    try:
        return run.run()
    finally:
        run.close()


class _Run:
    def __init__(self, cfg: TrainConfig, log: Callable[[str], None], stop_after_epoch: int | None,
                 stop_after_step: int | None) -> None:
        self.cfg = cfg
        self.dist = _Dist()
        self._log = log
        self.stop_after_epoch = stop_after_epoch
        self.stop_after_step = stop_after_step
        self.stop = _StopFlag()
        self.progress: _Progress | None = None

    def log(self, message: str) -> None:
        if self.dist.main:
            self._log(message)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.stop.restore()
        if self.dist.enabled:
            # Drop the DDP wrapper (its reducer holds the process group and gloo work) now, not at interpreter
            # exit: a late collection after destroy_process_group can abort the process.
            self.__dict__.pop("model", None)
            self.__dict__.pop("optimizer", None)
            gc.collect()
        self.dist.close()

    # ------------------------------------------------------------------------------------------- setup

    def _data(self) -> None:
        cfg = self.cfg
        self.info = dataset_info(cfg.dataset, cfg.data_dir)
        if cfg.download and self.dist.enabled and not self.dist.main:
            self.dist.barrier()  # rank 0 downloads first
        x, y = load_dataset(cfg.dataset, cfg.data_dir, split="train", download=cfg.download)
        tx, ty = load_dataset(cfg.dataset, cfg.data_dir, split="test", download=cfg.download)
        if cfg.download and self.dist.enabled and self.dist.main:
            self.dist.barrier()
        if cfg.train_subset is not None:
            x, y = x[:cfg.train_subset], y[:cfg.train_subset]
        dev = self.device
        self.train_x, self.train_y = x.to(dev), y.to(dev)
        self.test_x, self.test_y = tx.to(dev), ty.to(dev)
        self.train_tf = build_train_transform(cfg.augment, self.info)
        self.eval_tf = build_eval_transform(self.info)

    def _build_model(self) -> nn.Module:
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
                             image_size=info.image_size)
        if cfg.strategy != "dense":
            convert_(model, cfg.pemn_config())
        elif cfg.prune is not None:
            compression = cfg.effective_compression
            assert compression is not None
            prune_(model, cfg.prune, compression, seed=cfg.seed, scope=cfg.prune_scope)
        return model.to(self.device)

    def _out_dir(self) -> Path:
        cfg = self.cfg
        if cfg.out:
            out = Path(cfg.out)
        else:
            base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{cfg.dataset}-{cfg.strategy}"
            out, n = base, 1
            while out.exists():
                n += 1
                out = base.with_name(f"{base.name}-{n}")
        out = Path(self.dist.broadcast_str(str(out)))
        problem = ""
        if self.dist.main:  # rank 0 decides, so every rank raises (or none does)
            existing = [p.name for p in (out / CHECKPOINT_NAME, out / "result.json") if p.exists()]
            if existing and not cfg.resume:
                problem = (f"{str(out)!r} already holds a run ({', '.join(existing)}); pass resume=True (--resume) "
                           "to continue it, or choose another out folder")
            else:
                out.mkdir(parents=True, exist_ok=True)
                remove_stale_temp_files(out, [CHECKPOINT_NAME, "config.json", "metrics.jsonl", "result.json",
                                              "model.pemn", "model.safetensors", "model.sparse.safetensors"])
        problem = self.dist.broadcast_str(problem)
        if problem:
            raise FileExistsError(problem)
        return out

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=False)

    # -------------------------------------------------------------------------------------- checkpoint

    def _save_checkpoint(self, epoch: int, step: int) -> Path:
        path = self.out / CHECKPOINT_NAME
        if not self.dist.main:
            return path
        tensors = {f"model/{k}": _cpu(v) for k, v in self.module.state_dict().items()}
        opt_tensors, opt_meta = _flatten_optimizer(self.optimizer)
        tensors.update(opt_tensors)
        tensors["rng/cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "epoch": epoch, "step": step, "steps_per_epoch": self.steps, "world_size": self.dist.world,
            "accum": self.accum, "history": self.history, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
            "elapsed": self.elapsed(), "optimizer": opt_meta,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        from pemn import __version__

        metadata = {"format": CHECKPOINT_FORMAT, "format_version": str(CHECKPOINT_VERSION),
                    "pemn_version": __version__, "torch_version": torch.__version__,
                    "config": json.dumps(self.cfg.to_dict()), "state": json.dumps(state)}
        _atomic_write(path, st_save(tensors, metadata=metadata))
        return path

    def _load_checkpoint(self, path: Path) -> None:
        tensors, meta = read_checkpoint(path)
        saved, now = meta["config"], self.cfg.to_dict()
        differ = sorted(k for k in now if k not in RESUME_FREE_FIELDS and saved.get(k) != now[k])
        if differ:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in differ)
            raise ValueError(f"cannot resume {str(path)!r} with different settings ({detail}); resume with the "
                             "settings of the interrupted run (its config.json)")
        state = meta["state"]
        if state["step"] and state["steps_per_epoch"] != self.steps:
            raise ValueError(f"the checkpoint stopped mid-epoch with {state['steps_per_epoch']} steps per epoch, "
                             f"this run has {self.steps} (different world size?); it cannot continue that epoch")
        model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        self.module.load_state_dict(model_state, strict=True)
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"], self.optimizer))
        torch.set_rng_state(tensors["rng/cpu"])
        if "rng/cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.start_step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        self.best_acc, self.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        self.prior_elapsed = float(state["elapsed"])
        self.accum = dict(state["accum"])
        if not self.dist.main:  # rank 0 holds the global sums of an interrupted epoch
            self.accum.update(loss_sum=0.0, correct=0.0, seen=0.0)

    def _write_metrics(self) -> None:
        _atomic_write(self.out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.history).encode())

    def elapsed(self) -> float:
        return self.prior_elapsed + time.perf_counter() - self.t0

    # -------------------------------------------------------------------------------------------- run

    def run(self) -> TrainResult:
        cfg = self.cfg
        self.t0 = time.perf_counter()
        self.prior_elapsed = 0.0
        self.device = self.dist.setup(cfg.device)
        self.amp = bool(cfg.amp if cfg.amp is not None else self.device.type == "cuda")
        if self.amp and self.device.type != "cuda":
            self.log(f"note: amp needs CUDA; training in float32 on {self.device}")
            self.amp = False
        self._data()
        world = self.dist.world
        self.per_rank_batch = cfg.batch_size // world
        if self.per_rank_batch < 1:
            raise ValueError(f"batch_size {cfg.batch_size} is smaller than the world size {world}")
        n = self.train_x.shape[0]
        self.shard = -(-n // world)
        full, rest = divmod(self.shard, self.per_rank_batch)
        self.steps = full + (1 if rest > 1 else 0)  # a last batch of one image is dropped (BatchNorm)
        if self.steps == 0:
            raise ValueError(f"the training set ({n} images) is too small for {world} rank(s)")
        self.out = self._out_dir()
        model = self._build_model()
        self.module = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = self._optimizer(params)
        self.params = params
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.start_epoch, self.start_step = 0, 0
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = 0.0, 0
        self.accum: dict[str, float] = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "train_seconds": 0.0}
        ckpt = self.out / CHECKPOINT_NAME
        if cfg.resume:
            if ckpt.exists():
                self._load_checkpoint(ckpt)
                self.log(f"resuming {str(ckpt)!r} at epoch {self.start_epoch + 1}, step {self.start_step}")
            else:
                self.log(f"resume: no checkpoint in {str(self.out)!r}; starting from scratch")
        if self.dist.main:
            _write_json(self.out / "config.json", cfg.to_dict())
            if self.history:  # a kill between the last checkpoint and its metrics write left them an epoch behind
                self._write_metrics()
        if self.dist.enabled:
            ignore = [f"{m}.{b}" if m else b for m, mod in model.named_modules()
                      for b in mod._non_persistent_buffers_set]  # the shared prototype: identical, never synced
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            self.model = model
        self._describe(n)
        self.stop.install()
        self.session_epochs: list[float] = []
        for epoch in range(self.start_epoch, cfg.epochs):
            self._epoch(epoch, self.start_step if epoch == self.start_epoch else 0)
        return self._finish()

    def _describe(self, n_train: int) -> None:
        cfg = self.cfg
        if cfg.strategy == "dense":
            n = sum(p.numel() for p in self.module.parameters())
            what = f"dense, {n:,} parameters"
            if cfg.prune:
                what += f", {cfg.prune} pruning ({cfg.prune_scope}) of {cfg.effective_compression:.2%} at init"
        else:
            mws = masked_weights(self.module)
            masked = sum(mw.numel for mw in mws.values())
            bank = next(iter(mws.values())).bank
            extra = sum(p.numel() for p in self.params) - sum(mw.numel for mw in mws.values() if not mw.frozen)
            what = (f"{cfg.strategy}, {masked:,} masked weights from {bank.unique_values:,} prototype values, "
                    f"keep {cfg.keep:g}, {extra:,} trained extras")
        self.log(f"pemn train: {cfg.model} on {cfg.dataset} ({n_train:,} train / {self.test_x.shape[0]:,} test "
                 f"images); {what}")
        self.log(f"recipe {cfg.recipe}: {cfg.optimizer} lr {cfg.lr:g} wd {cfg.weight_decay:g}, schedule "
                 f"{cfg.schedule}, augment {cfg.augment}, batch {cfg.batch_size}, {cfg.epochs} epochs x "
                 f"{self.steps} steps; "
                 f"device {self.device}{' (amp)' if self.amp else ''}, world size {self.dist.world}; out {self.out}")

    def _batches(self, epoch: int) -> torch.Tensor:
        """This rank's share of the epoch's permutation (the same permutation on every rank)."""
        n = self.train_x.shape[0]
        g = torch.Generator(device="cpu")
        g.manual_seed(_derive_seed(self.cfg.seed, 0, epoch))
        perm = torch.randperm(n, generator=g)
        world = self.dist.world
        if world > 1:
            total = self.shard * world
            if total > n:
                perm = torch.cat([perm, perm[:total - n]])
            perm = perm[self.dist.rank:total:world]
        return perm.to(self.train_x.device)

    def _epoch(self, epoch: int, start_step: int) -> None:
        cfg = self.cfg
        E, steps, B = cfg.epochs, self.steps, self.per_rank_batch
        perm = self._batches(epoch)
        if start_step == 0:
            self.accum = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "train_seconds": 0.0}
        epoch_images = min(self.shard, steps * B) * self.dist.world
        self.progress = _Progress(cfg.progress and self.dist.main, epoch_images, f"epoch {epoch + 1}/{E}", self._log)
        self.progress.done = int(self.accum["seen"])
        t_epoch = time.perf_counter()
        self.model.train()
        for step in range(start_step, steps):
            t_step = time.perf_counter()
            idx = perm[step * B:(step + 1) * B]
            xb, yb = self.train_x[idx], self.train_y[idx]
            if self.train_tf.is_random:
                x = self.train_tf(xb, generator=_derive_seed(cfg.seed, 1, epoch, step, self.dist.rank))
            else:
                x = self.train_tf(xb)
            lr = schedule_lr(cfg.schedule, cfg.lr, E, epoch + (step + 1) / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            with _autocast(self.device, self.amp):
                out = self.model(x)
                loss = self.criterion(out, yb)
            flags = torch.stack([
                (~torch.isfinite(loss.detach())).float(),
                torch.tensor(float(self.stop.signum is not None), device=self.device),
                loss.detach().float() * yb.shape[0],
                (out.detach().argmax(1) == yb).sum().float(),
                torch.tensor(float(yb.shape[0]), device=self.device),
            ])
            nonfinite, stop, loss_sum, correct, seen = self.dist.all_reduce_(flags).tolist()
            if nonfinite:
                raise NonFiniteLossError(
                    f"the training loss became {loss.item()} at epoch {epoch + 1}/{E}, step {step + 1}/{steps} "
                    f"(lr {lr:.4g}); training stopped and nothing was written for this epoch (the last checkpoint, "
                    f"if any, is intact). Lower the learning rate (e.g. --lr {cfg.lr / 10:g}) or clip gradients "
                    "(--clip-norm 1.0).")
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                if cfg.clip_norm is not None:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.params, cfg.clip_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                if cfg.clip_norm is not None:
                    nn.utils.clip_grad_norm_(self.params, cfg.clip_norm)
                self.optimizer.step()
            self.accum["loss_sum"] += loss_sum
            self.accum["correct"] += correct
            self.accum["seen"] += seen
            self.accum["train_seconds"] += time.perf_counter() - t_step
            self.progress.update(int(seen), loss_sum / max(seen, 1.0))
            global_step = epoch * steps + step + 1
            if stop or (self.stop_after_step is not None and global_step >= self.stop_after_step):
                self._interrupt(epoch, step + 1, int(self.stop.signum or 0) or None)
        self.progress.close()
        self._end_epoch(epoch, time.perf_counter() - t_epoch)

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm statistics (DDP only syncs them at the next forward)."""
        if not self.dist.enabled:
            return
        for mod in self.module.modules():
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent_buffers_set:
                    dist.broadcast(b, 0)

    def _test_accuracy(self) -> float:
        world, rank = self.dist.world, self.dist.rank
        x, y = self.test_x[rank::world], self.test_y[rank::world]
        correct, total = _count_correct(self.module, x, y, transform=self.eval_tf,
                                        batch_size=self.cfg.eval_batch_size, device=self.device, amp=self.amp)
        counts = self.dist.all_reduce_(torch.tensor([correct, total], dtype=torch.float64, device=self.device))
        c, t = counts.tolist()
        return 100.0 * c / t if t else 0.0

    def _end_epoch(self, epoch: int, epoch_seconds: float) -> None:
        cfg = self.cfg
        self._sync_buffers()
        test_acc = self._test_accuracy()
        a = self.accum
        metrics = {
            "epoch": epoch + 1,
            "lr": schedule_lr(cfg.schedule, cfg.lr, cfg.epochs, epoch + 1.0),
            "train_loss": a["loss_sum"] / max(a["seen"], 1.0),
            "train_acc": 100.0 * a["correct"] / max(a["seen"], 1.0),
            "test_acc": test_acc,
            "seconds": epoch_seconds,
            "images_per_s": a["seen"] / max(a["train_seconds"], 1e-9),
        }
        self.history.append(metrics)
        if self.best_epoch == 0 or test_acc > self.best_acc:
            self.best_acc, self.best_epoch = test_acc, epoch + 1
        self.accum = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "train_seconds": 0.0}
        self._save_checkpoint(epoch + 1, 0)
        if self.dist.main:
            self._write_metrics()
        self.session_epochs.append(epoch_seconds)
        eta = (cfg.epochs - epoch - 1) * sum(self.session_epochs) / len(self.session_epochs)
        self.log(f"epoch {epoch + 1}/{cfg.epochs}  lr {metrics['lr']:.4g}  loss {metrics['train_loss']:.4f}  "
                 f"train {metrics['train_acc']:.2f}%  test {test_acc:.2f}%  (best {self.best_acc:.2f}% @ "
                 f"{self.best_epoch})  {epoch_seconds:.1f}s  {metrics['images_per_s']:,.0f} img/s  "
                 f"ETA {_fmt_time(eta)}")
        stop = torch.tensor([float(self.stop.signum is not None)], device=self.device)
        hook = self.stop_after_epoch is not None and epoch + 1 >= self.stop_after_epoch and epoch + 1 < cfg.epochs
        if self.dist.all_reduce_(stop).item() or hook:
            self._interrupt(epoch + 1, 0, self.stop.signum, written=True)

    def _interrupt(self, epoch: int, step: int, signum: int | None, *, written: bool = False) -> None:
        path = self.out / CHECKPOINT_NAME if written else self._save_checkpoint(epoch, step)
        self.dist.barrier()  # rank 0 has written the checkpoint before anyone exits
        if self.progress is not None:
            self.progress.close()
        why = signal.Signals(signum).name if signum else "requested stop"
        where = f"after epoch {epoch}" if step == 0 else f"in epoch {epoch + 1} after step {step}/{self.steps}"
        message = (f"training interrupted ({why}) {where}; checkpoint saved to {str(path)!r}. Continue with the "
                   f"same settings plus resume=True (--resume --out {self.out}).")
        self.log(message)
        raise TrainingInterrupted(message, checkpoint=path, epoch=epoch, step=step, signum=signum)

    # ----------------------------------------------------------------------------------------- outputs

    def _fresh_model(self) -> nn.Module:
        info = self.info
        with torch.random.fork_rng(devices=[]):
            return create_model(self.cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
                                image_size=info.image_size)

    def _verify(self, model: nn.Module) -> float:
        model.to(self.device)
        return evaluate(model, self.test_x, self.test_y, transform=self.eval_tf,
                        batch_size=self.cfg.eval_batch_size, device=self.device, amp=self.amp)

    def _finish(self) -> TrainResult:
        cfg = self.cfg
        self._sync_buffers()
        digest = _state_digest(self.module)
        if not self.dist.all_equal(digest):
            raise RuntimeError("the ranks ended with different masks/weights; DDP should have kept them in sync")
        final_acc = self.history[-1]["test_acc"] if self.history else 0.0
        artifact = artifact_bytes = weights = weights_bytes = sparse_bytes = artifact_acc = None
        summary: dict[str, Any] = {}
        if self.dist.main:
            if cfg.strategy != "dense":
                artifact = pemn_save(self.module, self.out / "model.pemn", coding=cfg.coding,
                                     prototype=cfg.prototype, extras_dtype=cfg.extras_dtype)
                artifact_bytes = artifact.stat().st_size
                summary = pemn_summary(artifact, verbose=False).to_dict()
                artifact_acc = self._verify(pemn_load(artifact, self._fresh_model()))
                ratio = f"honest ratio {summary['honest_ratio']:.1f}x, paper ratio {summary['paper_ratio']:.5f}"
                saved = f"{artifact} ({artifact_bytes:,} bytes; {ratio})"
            else:
                dense_numel = sum(t.numel() for t in self.module.state_dict().values() if t.is_floating_point())
                summary = {"strategy": "dense", "parameters": sum(p.numel() for p in self.module.parameters()),
                           "dense_bytes": 4 * dense_numel}
                if cfg.prune is None:
                    weights = self.out / "model.safetensors"
                    state = {k: (_cpu(v).float() if v.is_floating_point() else _cpu(v))
                             for k, v in self.module.state_dict().items()}
                    _atomic_write(weights, st_save(state, metadata={"format": "pt", "model": cfg.model}))
                    weights_bytes = weights.stat().st_size
                    fresh = self._fresh_model()
                    fresh.load_state_dict(state, strict=True)
                    artifact_acc = self._verify(fresh)
                else:
                    weights = self.out / "model.sparse.safetensors"
                    masks = pruning_masks(self.module)
                    sparse_bytes = weights_bytes = save_sparse(self.module, masks, weights)
                    artifact_acc = self._verify(load_sparse(weights, self._fresh_model()))
                    prunable = sum(m.numel() for m in masks.values())
                    kept = sum(int(m.sum()) for m in masks.values())
                    summary.update(prune=cfg.prune, prune_scope=cfg.prune_scope,
                                   compression=cfg.effective_compression, prunable_weights=prunable,
                                   kept_weights=kept, paper_ratio=1.0 - kept / prunable)
                summary.update(file_bytes=weights_bytes, honest_ratio=summary["dense_bytes"] / weights_bytes)
                saved = f"{weights} ({weights_bytes:,} bytes; honest ratio {summary['honest_ratio']:.1f}x)"
            if artifact_acc != final_acc:
                self.log(f"warning: the saved model scores {artifact_acc:.2f}% on the test set, the last epoch "
                         f"measured {final_acc:.2f}%")
        result = TrainResult(
            out_dir=self.out, artifact=artifact, artifact_bytes=artifact_bytes, best_acc=self.best_acc,
            best_epoch=self.best_epoch, final_acc=final_acc, epochs_run=len(self.history), seconds=self.elapsed(),
            summary=summary, weights=weights, weights_bytes=weights_bytes, sparse_bytes=sparse_bytes,
            artifact_acc=artifact_acc, world_size=self.dist.world, rank=self.dist.rank, state_sha256=digest.hex(),
            model=self.module)
        if self.dist.main:
            _write_json(self.out / "result.json", result.to_dict())
            self.log(f"done in {_fmt_time(result.seconds)}: best test accuracy {self.best_acc:.2f}% at epoch "
                     f"{self.best_epoch} (max over epochs, the paper's metric); final-epoch accuracy {final_acc:.2f}% "
                     f"(the saved model). Saved {saved}")
        self.dist.barrier()
        return result
