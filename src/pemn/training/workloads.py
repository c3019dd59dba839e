"""What a run learns, its *workload*: image classification or a character-level language model.

A workload is the one place that knows its kind of data (:class:`Workload`): it loads the splits, counts the steps
of an epoch, draws each step's batch, shapes the model's outputs for the loss, evaluates a model into metrics
(``test_acc`` plus its own), writes the app metadata that makes a model file self-describing, gives the run's
result its own metrics (:attr:`Workload.result_keys`, ``TrainResult.metrics``), words the lines a run reports
(each epoch, the end, ``pemn train``'s closing report) and measures a model file of its kind (``pemn eval``:
:meth:`Workload.evaluate_file`). The training loop (:mod:`pemn.training.engine`), the run's outputs
(:mod:`pemn.training.outputs`) and the commands (:mod:`pemn.training.measure`, ``export``, ``ptq_file``) ask it and
never which kind it is.

:data:`WORKLOADS` is keyed by the app kind a model file records (``app["kind"]``): ``image-classifier``
(:class:`ImageClassification`) and ``char-lm`` (:class:`CharLM`). A dataset (``DatasetEntry.serves``) and a model
(``register_model(..., serves=)``) each say which workload they serve; :func:`workload_of_dataset`,
:func:`workload_of_app` and :func:`workload_of_file` look a workload up. A new kind of data is a new entry here,
not new branches in the loop or the commands.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from pemn.training.artifacts import IMAGE_APP_KIND, image_app, load_model, open_model_file, recorded_data_dir
from pemn.training.augment import BatchTransform, build_eval_transform, build_train_transform
from pemn.training.data import DatasetInfo, dataset_info, dataset_serves, load_dataset
from pemn.training.dist import Accelerator, Dist, device_option
from pemn.training.errors import OptionError
from pemn.training.evaluation import (
    DEFAULT_EVAL_BATCH,
    EvalReport,
    EvalRequest,
    count_correct,
    evaluate_test_split,
)
from pemn.training.evaluation import evaluate as evaluate_model
from pemn.training.models import create_model
from pemn.training.progress import fmt_time, plural
from pemn.training.sample import APP_KIND as CHAR_LM_APP_KIND
from pemn.training.sample import evaluate_lm_file, lm_app
from pemn.training.text import TextCorpus, lm_metrics, lm_window_losses, load_text, random_windows

if TYPE_CHECKING:
    from pemn.training.config import TrainConfig
    from pemn.training.outputs import TrainResult

__all__ = ["RESULT_KEYS", "WORKLOADS", "CharLM", "ImageClassification", "Workload", "derive_seed", "workload_of_app",
           "workload_of_dataset", "workload_of_file"]

#: ``progress(n)``: ``n`` more examples of an evaluation are done (over all ranks).
Progress = Callable[[int], None]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs, platforms and Python hash seeds)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{float(x):.2f} %"


def _per_rank_batch(batch_size: int, world: int) -> int:
    per_rank_batch = batch_size // world
    if per_rank_batch < 1:
        raise ValueError(f"batch_size {batch_size} is smaller than the world size {world}")
    return per_rank_batch


@dataclass
class PTQData:
    """What post-training quantization of a dense model file reads beside the file (:meth:`Workload.ptq_data`)."""

    #: the file's dense model
    model: nn.Module
    #: raw training images to re-estimate BatchNorm statistics on (None: none read)
    calibration: torch.Tensor | None = None
    #: what makes raw images the model's inputs (the file's normalisation)
    transform: BatchTransform | None = None
    #: the test split's images and labels (None: nothing is measured)
    test: tuple[torch.Tensor, torch.Tensor] | None = None

    def accuracy(self, model: nn.Module) -> float | None:
        """``model``'s top-1 test accuracy (%) on :attr:`test`, on the CPU (None without a test split)."""
        if self.test is None:
            return None
        return evaluate_model(model, *self.test, transform=self.transform, device=torch.device("cpu"))


class Workload(ABC):
    """One run's data and how it is learned (see the module doc). Built by :meth:`load` on every rank; the split
    tensors ``train_x``/``train_y``/``test_x``/``test_y``, the dataset's ``info`` and the batch transforms
    ``train_tf``/``eval_tf`` (None where the data needs none) are its public state."""

    #: the ``app["kind"]`` of the model files it writes (its key in :data:`WORKLOADS`)
    app_kind: ClassVar[str]
    #: what a training step counts (the progress bar's unit, ``images_per_s``/``chars_per_s``)
    unit: ClassVar[str]
    #: whether every epoch's metrics record the global step (not only under ``--steps``)
    records_step: ClassVar[bool] = False
    #: what its model files hold, in words (``pemn export``'s refusal names it)
    holds: ClassVar[str]
    #: whether ``pemn export`` writes its models (NCHW float input: ONNX, a dense state_dict)
    exportable: ClassVar[bool] = True
    #: the keys of :meth:`result_fields` (``TrainResult.metrics``, ``result.json``), in order
    result_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: TrainConfig, group: Dist, accel: Accelerator, info: DatasetInfo,
                 train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 train_tf: BatchTransform | None = None, eval_tf: BatchTransform | None = None) -> None:
        self.cfg, self.dist, self.accel, self.info = cfg, group, accel, info
        self.train_x, self.train_y = train
        self.test_x, self.test_y = test
        self.train_tf, self.eval_tf = train_tf, eval_tf

    @classmethod
    @abstractmethod
    def load(cls, cfg: TrainConfig, group: Dist, accel: Accelerator) -> Workload:
        """The run's data, on the training device (rank 0 downloads first where ``cfg.download``)."""

    @classmethod
    @abstractmethod
    def build_model(cls, cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
        """A freshly initialised ``cfg.model`` for this data (the caller seeds torch)."""

    @abstractmethod
    def steps_per_epoch(self, batch_size: int) -> tuple[int, int, int]:
        """``(per-rank batch, per-rank shard of an epoch, optimizer steps per epoch)``."""

    def rows_counted(self) -> int:
        """How many counted examples (``unit``) one batch row holds."""
        return 1

    def epoch_order(self, epoch: int, shard: int) -> torch.Tensor | None:
        """This rank's order of the training examples in ``epoch`` (None where batches are drawn at random)."""
        return None

    @abstractmethod
    def batch(self, order: torch.Tensor | None, epoch: int, step: int, per_rank_batch: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's inputs and targets of the step."""

    def loss_inputs(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's outputs and the targets as the loss takes them: ``(N, classes)`` and ``(N,)``."""
        return out, target

    def eval_size(self) -> int | None:
        """How many examples an evaluation counts on its progress display (None: it shows none)."""
        return None

    @abstractmethod
    def evaluate(self, model: nn.Module, *, shard: bool = True, progress: Progress | None = None
                 ) -> dict[str, float]:
        """The metrics of ``model`` on the test split: ``test_acc`` (top-1 %) and the workload's own; ``shard``:
        each rank evaluates its share and the sums are all-reduced (every rank must call it)."""

    def calibration_images(self) -> torch.Tensor | None:
        """The training images post-training quantization re-estimates BatchNorm statistics on (None: none)."""
        return None

    @abstractmethod
    def app(self) -> dict[str, Any]:
        """The app metadata of the model file: what rebuilds the model and its inputs from the file alone."""

    @abstractmethod
    def sizes(self) -> str:
        """The splits' sizes, for the run's first line."""

    @abstractmethod
    def eval_scope(self) -> str:
        """What each evaluation covers, in words."""

    def epoch_metrics(self, metrics: dict[str, Any], evaluation: dict[str, float] | None) -> dict[str, Any]:
        """An epoch's ``metrics.jsonl`` line with this workload's entries renamed / added (``evaluation``: the
        epoch's evaluation, None when it was not evaluated)."""
        return metrics

    @abstractmethod
    def epoch_line(self, metrics: dict[str, Any], epochs: int, best: tuple[float, int], eta: float) -> str:
        """The line logged after an epoch."""

    def result_fields(self, last: dict[str, float], saved: dict[str, float] | None) -> dict[str, float | None]:
        """The workload's own metrics of :class:`~pemn.training.outputs.TrainResult` (its ``metrics``, keys
        :attr:`result_keys`, and ``result.json``) from the last evaluation and the saved file's (``saved``: None on
        the ranks that do not re-measure it)."""
        return {}

    def check_saved(self, saved: dict[str, float], last: dict[str, float], final_acc: float) -> str | None:
        """A warning when the saved file's metrics (``saved``) differ from the last epoch's (``last``)."""
        return None

    @abstractmethod
    def done_line(self, result: TrainResult, saved: str) -> str:
        """The run's last line (``saved``: the file, its bytes and ratios)."""

    @classmethod
    @abstractmethod
    def report_lines(cls, cfg: TrainConfig, result: TrainResult) -> list[str]:
        """What ``pemn train``'s closing report (:func:`pemn.training.outputs.report_lines`) says the run measured."""

    @classmethod
    @abstractmethod
    def evaluate_file(cls, request: EvalRequest) -> EvalReport:
        """``pemn eval`` of a model file of this workload: its metrics on its data (:mod:`pemn.training.measure`)."""

    @classmethod
    def ptq_data(cls, artifact: str | os.PathLike[str], app: dict[str, Any] | None, *, model: str | None = None,
                 dataset: str | None = None, data_dir: str | None = None, download: bool = False,
                 evaluate: bool = True) -> PTQData:
        """What post-training quantization of a dense model file of this workload reads (``pemn quantize``,
        :mod:`pemn.training.ptq_file`): here the file alone (no statistics to re-estimate, nothing measured)."""
        return PTQData(load_model(artifact)[0])


class ImageClassification(Workload):
    """Images and labels held as tensors on the training device; each epoch a seeded permutation, split across
    ranks (DistributedSampler-style, padded to equal shards); batched augmentation seeded by
    ``(seed, epoch, step, rank)``; top-1 accuracy on the test split."""

    app_kind = IMAGE_APP_KIND
    unit = "image"
    holds = "an image classifier"

    @classmethod
    def load(cls, cfg: TrainConfig, group: Dist, accel: Accelerator) -> Workload:
        info = dataset_info(cfg.dataset, cfg.data_dir)
        if cfg.download and group.enabled and not group.main:
            group.barrier()  # rank 0 downloads first
        x, y = load_dataset(cfg.dataset, cfg.data_dir, split="train", download=cfg.download)
        tx, ty = load_dataset(cfg.dataset, cfg.data_dir, split="test", download=cfg.download)
        if cfg.download and group.enabled and group.main:
            group.barrier()
        if cfg.train_subset is not None:
            x, y = x[:cfg.train_subset], y[:cfg.train_subset]
        if cfg.eval_subset is not None:
            tx, ty = tx[:cfg.eval_subset], ty[:cfg.eval_subset]
        device = accel.device
        return cls(cfg, group, accel, info, (x.to(device), y.to(device)), (tx.to(device), ty.to(device)),
                   build_train_transform(cfg.augment, info), build_eval_transform(info))

    @classmethod
    def build_model(cls, cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
        return create_model(cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
                            image_size=info.image_size)

    def steps_per_epoch(self, batch_size: int) -> tuple[int, int, int]:
        """A last batch of one image is dropped (BatchNorm)."""
        n, world = self.train_x.shape[0], self.dist.world
        per_rank_batch = _per_rank_batch(batch_size, world)
        shard = -(-n // world)
        full, rest = divmod(shard, per_rank_batch)
        steps = full + (1 if rest > 1 else 0)
        if steps == 0:
            raise ValueError(f"the training set ({n} images) is too small for {world} rank(s)")
        return per_rank_batch, shard, steps

    def epoch_order(self, epoch: int, shard: int) -> torch.Tensor:
        """This rank's share of the epoch's permutation (the same permutation on every rank)."""
        n = self.train_x.shape[0]
        g = torch.Generator(device="cpu")
        g.manual_seed(derive_seed(self.cfg.seed, 0, epoch))
        perm = torch.randperm(n, generator=g)
        world = self.dist.world
        if world > 1:
            total = shard * world
            if total > n:
                perm = torch.cat([perm, perm[:total - n]])
            perm = perm[self.dist.rank:total:world]
        return perm.to(self.train_x.device)

    def batch(self, order: torch.Tensor | None, epoch: int, step: int, per_rank_batch: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        assert order is not None and self.train_tf is not None
        idx = order[step * per_rank_batch:(step + 1) * per_rank_batch]
        xb, yb = self.train_x[idx], self.train_y[idx]
        if self.train_tf.is_random:
            return self.train_tf(xb, generator=derive_seed(self.cfg.seed, 1, epoch, step, self.dist.rank)), yb
        return self.train_tf(xb), yb

    def eval_size(self) -> int:
        return int(self.test_x.shape[0])

    def evaluate(self, model: nn.Module, *, shard: bool = True, progress: Progress | None = None
                 ) -> dict[str, float]:
        world, rank = (self.dist.world, self.dist.rank) if shard else (1, 0)
        x, y = self.test_x[rank::world], self.test_y[rank::world]
        report = None if progress is None else (lambda n: progress(n * world))
        correct, total = count_correct(model, x, y, transform=self.eval_tf, batch_size=self.cfg.eval_batch_size,
                                       device=self.accel.device, amp=self.accel.amp, progress=report)
        if shard:
            counts = torch.tensor([correct, total], dtype=torch.float64, device=self.accel.device)
            c, t = self.dist.all_reduce_(counts).tolist()
        else:
            c, t = correct, total
        return {"test_acc": 100.0 * c / t if t else 0.0}

    def calibration_images(self) -> torch.Tensor:
        return self.train_x

    def app(self) -> dict[str, Any]:
        return image_app(self.cfg.model, self.info, self.cfg.data_dir)

    def sizes(self) -> str:
        return f"{self.train_x.shape[0]:,} train / {self.test_x.shape[0]:,} test images"

    def eval_scope(self) -> str:
        return plural(self.test_x.shape[0], "test image")

    def epoch_line(self, metrics: dict[str, Any], epochs: int, best: tuple[float, int], eta: float) -> str:
        test_acc = metrics["test_acc"]
        return (f"epoch {metrics['epoch']}/{epochs}  lr {metrics['lr']:.4g}  loss {metrics['train_loss']:.4f}  "
                f"train {metrics['train_acc']:.2f}%  test {'-' if test_acc is None else f'{test_acc:.2f}%'}  "
                f"(best {best[0]:.2f}% @ "
                f"{best[1]})  {metrics['seconds']:.1f}s  {metrics['images_per_s']:,.0f} img/s  "
                f"ETA {fmt_time(eta)}")

    def check_saved(self, saved: dict[str, float], last: dict[str, float], final_acc: float) -> str | None:
        if saved["test_acc"] != final_acc:
            return (f"warning: the saved model scores {saved['test_acc']:.2f}% on the test set, the last epoch "
                    f"measured {final_acc:.2f}%")
        return None

    def done_line(self, result: TrainResult, saved: str) -> str:
        return (f"done in {fmt_time(result.seconds)}: best test accuracy {result.best_acc:.2f}% at epoch "
                f"{result.best_epoch} (max over epochs, the paper's metric); final-epoch accuracy "
                f"{result.final_acc:.2f}% (the saved model). {saved}")

    @classmethod
    def report_lines(cls, cfg: TrainConfig, result: TrainResult) -> list[str]:
        """The best and final epochs' test accuracy (and a distilled run's teacher's)."""
        lines = [f"  accuracy   best epoch ({result.best_epoch}): {_pct(result.best_acc)}   final epoch "
                 f"({result.epochs_run}): {_pct(result.final_acc)}",
                 "             (top-1 on the test split; best = max over epochs, the paper's metric; final = the "
                 "saved model's)"]
        if result.teacher_acc is not None:
            lines.append(f"  teacher    {cfg.teacher}: {_pct(result.teacher_acc)} (the dense model distilled from)")
        return lines

    @classmethod
    def evaluate_file(cls, request: EvalRequest) -> EvalReport:
        """Top-1 accuracy on the test split of the dataset the file records (or ``request.dataset``), with the
        file's normalisation."""
        device = device_option(request.device)
        opened = open_model_file(request.artifact, request.app, model=request.model, dataset=request.dataset,
                                 data_dir=request.data_dir)
        info = opened.info
        if info is None or opened.dataset is None:
            raise OptionError("give --dataset NAME (the artifact does not say which data it was trained on)")
        acc, examples = evaluate_test_split(
            opened.model, opened.dataset, info, data_dir=opened.data_dir, download=request.download,
            eval_subset=request.eval_subset, batch_size=request.batch_size or DEFAULT_EVAL_BATCH, device=device,
            desc=f"eval ({plural(request.threads, 'CPU thread')})", log=request.log)
        record = {"artifact": request.artifact, "kind": request.kind.name, "model": opened.name,
                  "dataset": info.name, "split": "test", "examples": examples, "accuracy": acc}
        return EvalReport(record, [f"{request.artifact}: test accuracy {acc:.2f} % (top-1, {examples:,} {info.name} "
                                   f"test images, {opened.name}, {request.kind.name} weights)"])

    @classmethod
    def ptq_data(cls, artifact: str | os.PathLike[str], app: dict[str, Any] | None, *, model: str | None = None,
                 dataset: str | None = None, data_dir: str | None = None, download: bool = False,
                 evaluate: bool = True) -> PTQData:
        """The file's model, the training images its BatchNorm statistics are re-estimated on, and (``evaluate``)
        the test split, all with the file's normalisation; the dataset the file records, or ``dataset``."""
        opened = open_model_file(artifact, app, model=model, dataset=dataset, data_dir=data_dir)
        info = opened.info
        if info is None:
            raise OptionError("give --dataset NAME (the model file does not say which data it was trained on)")
        images, _ = load_dataset(info.name, opened.data_dir, split="train", download=download)
        test = load_dataset(info.name, opened.data_dir, split="test", download=download) if evaluate else None
        return PTQData(opened.model, images, build_eval_transform(info), test)


class CharLM(Workload):
    """Character-level language modelling on one text (:mod:`pemn.training.text`): ``train_x``/``test_x`` are the
    splits' character ids; each step's global batch is random windows seeded by ``(seed, epoch, step)`` only (each
    rank takes its rows); the evaluation covers the validation split once (``test_acc`` is the next-character
    accuracy, with ``val_loss`` and ``bits_per_char``)."""

    app_kind = CHAR_LM_APP_KIND
    unit = "character"
    records_step = True
    holds = "a language model"
    result_keys = ("val_loss", "bits_per_char", "artifact_val_loss")
    exportable = False

    def __init__(self, *args: Any, corpus: TextCorpus, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.corpus = corpus

    @classmethod
    def load(cls, cfg: TrainConfig, group: Dist, accel: Accelerator) -> Workload:
        info = dataset_info(cfg.dataset, cfg.data_dir)
        corpus = load_text(cfg.data_dir, cfg.block_size)
        train = corpus.train if cfg.train_subset is None else corpus.train[:cfg.train_subset]
        if train.numel() <= cfg.block_size:
            raise ValueError(f"train_subset {cfg.train_subset} leaves no full context of {cfg.block_size} "
                             "characters to train on")
        empty = torch.zeros(0, dtype=torch.int64)
        # eval_subset N: the first N validation characters are predicted (from the N + 1 first ones)
        val = corpus.val if cfg.eval_subset is None else corpus.val[:cfg.eval_subset + 1]
        return cls(cfg, group, accel, info, (train, empty), (val, empty), corpus=corpus)

    @classmethod
    def build_model(cls, cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
        """A language model over the file's characters."""
        return create_model(cfg.model, num_classes=info.num_classes, block_size=cfg.block_size)

    def steps_per_epoch(self, batch_size: int) -> tuple[int, int, int]:
        """Random windows: an epoch is as many steps as it takes to draw the training text's length in windows."""
        per_rank_batch = _per_rank_batch(batch_size, self.dist.world)
        steps = max(1, self.train_x.numel() // (batch_size * self.cfg.block_size))
        return per_rank_batch, steps * per_rank_batch, steps

    def rows_counted(self) -> int:
        return self.cfg.block_size  # a window's predicted characters

    def batch(self, order: torch.Tensor | None, epoch: int, step: int, per_rank_batch: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the step's global batch of random windows (seeded by seed, epoch and step only)."""
        g = torch.Generator(device="cpu")
        g.manual_seed(derive_seed(self.cfg.seed, 0, epoch, step))
        x, y = random_windows(self.train_x, self.cfg.block_size, per_rank_batch * self.dist.world, g)
        rows = slice(self.dist.rank * per_rank_batch, (self.dist.rank + 1) * per_rank_batch)
        return x[rows].to(self.accel.device), y[rows].to(self.accel.device)

    def loss_inputs(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return out.flatten(0, -2), target.flatten()  # (B, T, vocab) logits, one target per position

    def evaluate(self, model: nn.Module, *, shard: bool = True, progress: Progress | None = None
                 ) -> dict[str, float]:
        """Validation metrics over the whole split (sharded across ranks, all-reduced)."""
        world, rank = (self.dist.world, self.dist.rank) if shard else (1, 0)
        device = self.accel.device
        nats, correct, count = lm_window_losses(
            model, self.test_x, self.cfg.block_size, batch_size=self.cfg.eval_batch_size, device=device,
            rank=rank, world=world, autocast=self.accel.autocast)
        sums = torch.tensor([nats, correct, count], dtype=torch.float64, device=device)
        if shard:
            self.dist.all_reduce_(sums)
        metrics = lm_metrics(*sums.tolist())
        return {"test_acc": metrics["val_acc"], **metrics}

    def app(self) -> dict[str, Any]:
        return lm_app(self.cfg.model, self.corpus.vocab, self.cfg.block_size)

    def sizes(self) -> str:
        return (f"{self.train_x.numel():,} train / {self.test_x.numel():,} validation characters, "
                f"vocabulary {self.corpus.vocab_size}, context {self.cfg.block_size}")

    def eval_scope(self) -> str:
        """``the whole validation split`` or (under eval_subset) ``the first 20 of 33 validation characters``."""
        predicted, whole = self.test_x.numel() - 1, self.corpus.val.numel() - 1
        if predicted == whole:
            return "the whole validation split"
        return f"the first {predicted:,} of {whole:,} validation characters"

    def epoch_metrics(self, metrics: dict[str, Any], evaluation: dict[str, float] | None) -> dict[str, Any]:
        metrics["chars_per_s"] = metrics.pop("images_per_s")
        metrics.update(val_loss=evaluation["val_loss"] if evaluation is not None else None,
                       bits_per_char=evaluation["bits_per_char"] if evaluation is not None else None)
        return metrics

    def epoch_line(self, metrics: dict[str, Any], epochs: int, best: tuple[float, int], eta: float) -> str:
        test_acc = metrics["test_acc"]
        val = (f"val loss {metrics['val_loss']:.4f} ({metrics['bits_per_char']:.4f} bits/char)  val acc "
               f"{test_acc:.2f}%" if test_acc is not None else "val -")
        return (f"epoch {metrics['epoch']}/{epochs} (step {metrics['step']})  lr {metrics['lr']:.4g}  loss "
                f"{metrics['train_loss']:.4f}  {val}  {metrics['seconds']:.1f}s  {metrics['chars_per_s']:,.0f} "
                f"char/s  ETA {fmt_time(eta)}")

    def result_fields(self, last: dict[str, float], saved: dict[str, float] | None) -> dict[str, float | None]:
        """``val_loss``/``bits_per_char`` of the last evaluation, ``artifact_val_loss`` of the saved file."""
        return {"val_loss": last.get("val_loss"), "bits_per_char": last.get("bits_per_char"),
                "artifact_val_loss": None if saved is None else saved["val_loss"]}

    def check_saved(self, saved: dict[str, float], last: dict[str, float], final_acc: float) -> str | None:
        if abs(saved["val_loss"] - last["val_loss"]) > 1e-6:
            return (f"warning: the saved model's validation loss is {saved['val_loss']:.6f}, the last "
                    f"epoch measured {last['val_loss']:.6f}")
        return None

    def done_line(self, result: TrainResult, saved: str) -> str:
        m = result.metrics
        return (f"done in {fmt_time(result.seconds)}: validation loss {m['val_loss']:.4f} nats/char "
                f"({m['bits_per_char']:.4f} bits/char, {self.eval_scope()}, the saved model) after "
                f"{result.steps_run} steps. {saved}")

    @classmethod
    def report_lines(cls, cfg: TrainConfig, result: TrainResult) -> list[str]:
        """The saved model's validation loss and next-character accuracy."""
        val_loss, bits, steps = result.metrics.get("val_loss"), result.metrics.get("bits_per_char"), result.steps_run
        return [f"  val loss   {float(val_loss or 0.0):.4f} nats/char = {float(bits or 0.0):.4f} bits/char after "
                f"{'?' if steps is None else steps} steps (the saved model, "
                + ("whole validation split)" if cfg.eval_subset is None else
                   f"first {cfg.eval_subset:,} validation characters: --eval-subset)"),
                f"  accuracy   next character, final: {_pct(result.final_acc)}"]

    @classmethod
    def evaluate_file(cls, request: EvalRequest) -> EvalReport:
        """Validation loss and next-character accuracy on the text at ``request.data_dir`` (else the folder its
        run used); everything but the text comes from the file."""
        data_dir = recorded_data_dir(request.artifact, "text", request.data_dir)
        m, app, text = evaluate_lm_file(request.artifact, data_dir, eval_subset=request.eval_subset,
                                        batch_size=request.batch_size or DEFAULT_EVAL_BATCH,
                                        device=device_option(request.device))
        record = {"artifact": request.artifact, "model": app["model"], "dataset": "text", "split": "validation", **m}
        return EvalReport(record, [
            f"{request.artifact}: validation loss {m['val_loss']:.4f} nats/char ({m['bits_per_char']:.4f} "
            f"bits/char), next-character accuracy {m['val_acc']:.2f} % ({m['characters']:,} characters of {text}, "
            f"{app['model']}, context {app['block_size']})"])


#: The workloads, by the app kind of the model files they write.
WORKLOADS: dict[str, type[Workload]] = {w.app_kind: w for w in (ImageClassification, CharLM)}
#: Every workload's result keys, in order: each run's ``result.json`` has them all (null where its workload has
#: none), so every result.json has the same keys.
RESULT_KEYS: tuple[str, ...] = tuple(dict.fromkeys(k for w in WORKLOADS.values() for k in w.result_keys))


def workload_of_dataset(name: str) -> type[Workload]:
    """The workload a dataset serves (its catalog entry says; an unknown name: image classification, whose
    loader then names the valid datasets)."""
    return WORKLOADS[dataset_serves(name) or IMAGE_APP_KIND]


def workload_of_app(app: dict[str, Any] | None) -> type[Workload] | None:
    """The workload of a model file's app metadata (None: no app, or one no workload writes, e.g. transformers)."""
    return WORKLOADS.get((app or {}).get("kind", ""))


def workload_of_file(app: dict[str, Any] | None, dataset: str | None = None) -> type[Workload] | None:
    """The workload that measures a model file: the one the ``kind`` of its app metadata names; for a file that
    records no kind the one of ``dataset`` (the data it is measured on, as given), else image classification (files
    written before the app kind were image classifiers). None for a kind no workload writes (e.g. transformers)."""
    if (app or {}).get("kind") is not None:
        return workload_of_app(app)
    return workload_of_dataset(dataset) if dataset is not None else ImageClassification
