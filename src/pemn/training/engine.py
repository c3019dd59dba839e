"""The training loop behind ``pemn train``: one function, :func:`train`, driven by a
:class:`~pemn.training.config.TrainConfig`.

It trains a model from :mod:`pemn.training.models` on a dataset from :mod:`pemn.training.data` (in-memory
tensors, batched augmentation from :mod:`pemn.training.augment`) with one of the paper's methods:

- ``strategy="dense"``: the ordinary model (optionally pruned at init with ``prune="random"|"magnitude"``,
  the paper's "Random"/"Minimum" baselines, see :mod:`pemn.training.prune`; optionally quantized with
  ``quantize``: trained with quantized weights, or quantized after training, see :mod:`pemn.training.quantize`);
- ``"mask"``, ``"one_layer"``, ``"mp"``, ``"rp"``: the model is converted by :func:`pemn.convert_` and only
  its scores (plus biases / norms) are trained, as in the paper (weight decay applies to the scores too).

What the run learns (image classification, a character-level language model) is its workload
(:mod:`pemn.training.workloads`, chosen by the dataset): the loop asks it for the data, each step's batch, the loss
inputs, the evaluation's metrics, the file's app metadata and the lines it reports, and never which kind it is.
Precision (AMP, GradScaler), the DDP wrapper and the optimizer step are the
:class:`~pemn.training.dist.Accelerator`'s.

Settings come from :func:`~pemn.training.config.resolve_config`. Every epoch evaluates on the test split and
appends to ``metrics.jsonl``; the paper reports the best epoch's test accuracy (``best_acc``), which selects on
the test set, so the final epoch's (``final_acc``, the accuracy of the saved model) is reported beside it.

Outputs in ``cfg.out`` (or ``runs/<timestamp>-<model>-<dataset>-<strategy>``), see
:mod:`pemn.training.outputs`: ``config.json``, ``metrics.jsonl``, ``checkpoint.safetensors`` (every epoch, and
on SIGINT/SIGTERM; :mod:`pemn.training.checkpoint`), and at the end the model file of its kind
(``model.pemn``, ``model.safetensors`` or ``model.sparse.safetensors``) plus ``result.json``.

Reproducibility: the model is built after ``torch.manual_seed(cfg.seed)``; each epoch's order is a
``randperm`` from a generator seeded by ``(seed, epoch)``; each batch's augmentation is seeded by
``(seed, epoch, step, rank)``. On the CPU a run interrupted (even mid-epoch) and resumed ends bit-identical
to an uninterrupted one.

Distributed (:mod:`pemn.training.dist`): under ``torchrun`` (``WORLD_SIZE > 1``) the process group is
initialised (gloo on CPU, NCCL on CUDA) unless the caller already did, the model is wrapped in DDP, each
epoch's permutation is split across ranks (DistributedSampler-style, padded to equal shards), ``batch_size``
is the global batch (``batch_size // world_size`` per rank), metrics are all-reduced and only rank 0 writes
files or logs.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import shlex
import signal
import threading
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemn.convert import convert_, masked_weights, set_keep_
from pemn.summary import honest_ratio_text, paper_ratio_text
from pemn.training.artifacts import kind_of, load_model
from pemn.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from pemn.training.config import RESUME_FREE_FIELDS, SCHEDULES, TrainConfig
from pemn.training.data import DatasetInfo
from pemn.training.dist import Accelerator, Dist, set_threads
from pemn.training.distill import distill_loss, load_teacher
from pemn.training.evaluation import evaluate
from pemn.training.outputs import (
    CONFIG_NAME,
    RESULT_NAME,
    TrainResult,
    prepare_out_dir,
    state_digest,
    write_json,
    write_metrics,
)
from pemn.training.progress import Progress, plural
from pemn.training.prune import prune_, remove_pruning_
from pemn.training.quantize import PTQ_CALIBRATION_IMAGES, QAT_METHODS, post_training_quantize_, quantize_
from pemn.training.runlock import RunLock
from pemn.training.workloads import RESULT_KEYS, Workload, workload_of_dataset

__all__ = ["NonFiniteLossError", "RunWriteError", "TrainingInterrupted", "resume_command", "schedule_lr", "train"]


# --------------------------------------------------------------------------------------------- schedule


def schedule_lr(schedule: str, lr: float, epochs: int, t: float, *, whole_epoch_knots: bool = False) -> float:
    """The learning rate after ``t`` epochs (fractional) of an ``epochs``-long run.

    ``"paper"``: ``np.interp(t, [0, 2E/5, 4E/5, E], [0, lr, lr/20, 0])`` with ``t = epoch + (step + 1) /
    steps_per_epoch`` per iteration (same float ops as ``np.interp``): the knots fall at 0.4 E and 0.8 E, between
    optimizer steps when E is not a multiple of 5, so a 1- or 2-epoch run still warms up to ``lr``.
    ``whole_epoch_knots`` (``--paper``) puts them at the official code's whole epochs ``E*2//5`` and ``E*4//5``;
    the two rules are identical whenever E is a multiple of 5 (every paper run).
    ``"cosine"``: ``lr * (1 + cos(pi * t / E)) / 2``. ``"constant"``: ``lr``.
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return 0.5 * lr * (1.0 + math.cos(math.pi * min(max(t / epochs, 0.0), 1.0)))
    if schedule != "paper":
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if whole_epoch_knots:
        xs = (0.0, float(epochs * 2 // 5), float(epochs * 4 // 5), float(epochs))
    else:  # 2E/5 and 4E/5 of exact integers: the same floats as E*2//5 and E*4//5 when 5 divides E
        xs = (0.0, epochs * 2 / 5, epochs * 4 / 5, float(epochs))
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




# -------------------------------------------------------------------------------------------- errors


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def resume_command(out: str | Path, world: int = 1) -> str:
    """The shell command that continues the run in ``out`` (its settings come from ``out/config.json``)."""
    launcher = f"torchrun --nproc_per_node={world} -m pemn" if world > 1 else "pemn"
    return f"{launcher} train --resume --out {shlex.quote(str(out))}"


class RunWriteError(OSError):
    """The run folder could not be written during training (the message says what is intact, how to resume)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # the failed write's (ENOSPC, EROFS, EIO ...), as on the OSError it replaces
        self.message = message

    def __str__(self) -> str:
        return self.message


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
        #: whether the message has been printed already (by train's default log)
        self.logged = False

    def __str__(self) -> str:
        return str(self.args[0])




# ----------------------------------------------------------------------------------------- helpers


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



@dataclass
class _Totals:
    """Running sums of one epoch's training batches (global sums on rank 0)."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    train_seconds: float = 0.0

    def add(self, loss_sum: float, correct: float, seen: float, seconds: float) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.seen += seen
        self.train_seconds += seconds


@dataclass
class _History:
    """Where the run stands: the next epoch/step, the per-epoch metrics and the best epoch so far."""

    epoch: int = 0
    step: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = 0.0
    best_epoch: int = 0
    prior_seconds: float = 0.0  # of earlier sessions of a resumed run
    totals: _Totals = field(default_factory=_Totals)


def _default_log(message: str) -> None:
    print(message, flush=True)


def _fresh_model(cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
    return workload_of_dataset(info.name).build_model(cfg, info)


def _build_model(cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
    torch.manual_seed(cfg.seed)
    model = _fresh_model(cfg, info)
    if cfg.strategy != "dense":
        convert_(model, cfg.pemn_config(model))
    elif cfg.prune is not None:
        compression = cfg.effective_compression
        assert compression is not None
        prune_(model, cfg.prune, compression, seed=cfg.seed, scope=cfg.prune_scope)
    if cfg.quantize in QAT_METHODS:  # trained quantized; the survivors of a pruned model only
        quantize_(model, cfg.quantize, remove_pruning_(model) if cfg.prune is not None else None)
    return model


def _optimizer(cfg: TrainConfig, module: nn.Module, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """One parameter group (the paper: the scores are decayed like any weight), or, when
    :meth:`TrainConfig.score_settings` gives the scores their own, two: the dense extras (norms, biases) and the
    mask scores. Each group's ``lr_scale`` multiplies the scheduled learning rate."""
    groups: list[dict[str, Any]] | list[nn.Parameter] = params
    settings = cfg.score_settings()
    if settings is not None:
        score_ids = {id(mw.scores) for mw in masked_weights(module).values() if not mw.frozen}
        scores = [p for p in params if id(p) in score_ids]
        extras = [p for p in params if id(p) not in score_ids]
        slr, swd = settings
        groups = [g for g in ({"params": extras, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
                              {"params": scores, "weight_decay": swd, "lr_scale": slr / cfg.lr}) if g["params"]]
    if cfg.optimizer == "adamw":
        # momentum is AdamW's beta1 (the gradient's running average); 0.9 is torch's default
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False)


def keep_at(cfg: TrainConfig, t: float) -> float:
    """The kept fraction after a fraction ``t`` (0..1) of the training steps: ``keep`` without annealing; with
    ``keep_start``, the cubic schedule of gradual magnitude pruning (Zhu & Gupta 2017)
    ``keep + (keep_start - keep) * (1 - t / keep_anneal) ** 3`` until ``t = keep_anneal``, then ``keep``."""
    if cfg.keep_start is None or t >= cfg.keep_anneal:
        return cfg.keep
    return cfg.keep + (cfg.keep_start - cfg.keep) * (1.0 - max(t, 0.0) / cfg.keep_anneal) ** 3


# ----------------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig, *, log: Callable[[str], None] | None = None, stop_after_epoch: int | None = None,
          stop_after_step: int | None = None) -> TrainResult:
    """Train ``cfg``'s model and write its outputs; see the module doc.

    Args:
        cfg: the run's settings (use :func:`pemn.training.config.resolve_config` for recipe defaults).
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
    if cfg.resume:
        _check_resumable(Path(str(cfg.out)))
    if cfg.data_dir is not None:  # config.json must find the data from any working directory (pemn eval)
        cfg.data_dir = str(Path(cfg.data_dir).expanduser().absolute())
    group = Dist()
    run: _Run | None = None
    try:
        run = _Run(cfg, group, log or _default_log, stop_after_epoch, stop_after_step)
        return run.run()
    finally:
        if run is not None:
            run.close()
        group.close()


def _check_resumable(out: Path) -> None:
    """FileNotFoundError (before anything is loaded or written) unless ``out`` holds a run to continue: its
    checkpoint, or its ``config.json`` (a run stopped before its first checkpoint starts again with its settings)."""
    if (out / CHECKPOINT_NAME).is_file() or (out / CONFIG_NAME).is_file():
        return
    why = "no such folder" if not out.exists() else f"it holds no {CHECKPOINT_NAME} or {CONFIG_NAME}"
    raise FileNotFoundError(f"--resume: nothing to resume in {str(out)!r} ({why}); check the --out folder, or "
                            "leave out --resume to start a new run there")


class _Run:
    """One training run: everything is set up in ``__init__`` (device, data, output folder, model, optimizer,
    resumed state); :meth:`run` trains the remaining epochs and writes the outputs."""

    def __init__(self, cfg: TrainConfig, group: Dist, log: Callable[[str], None], stop_after_epoch: int | None,
                 stop_after_step: int | None) -> None:
        self.t0 = time.perf_counter()
        self.cfg = cfg
        self.dist = group
        self._log = log
        self.stop_after_epoch = stop_after_epoch
        self.stop_after_step = stop_after_step
        self.stop = _StopFlag()
        self.progress: Progress | None = None
        self.session_epochs: list[float] = []
        self.lock: RunLock | None = None
        self.saved_at: tuple[int, int] | None = None  # (epoch, step) of the checkpoint in the folder
        self.threads, self._previous_threads = set_threads(cfg.threads)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        cfg, group = self.cfg, self.dist
        self.device = group.setup(cfg.device)
        self.accel = Accelerator(group, cfg.amp, self.log)
        self.amp = self.accel.amp
        self.workload: Workload = workload_of_dataset(cfg.dataset).load(cfg, group, self.accel)
        self.per_rank_batch, self.shard, self.steps = self.workload.steps_per_epoch(cfg.batch_size)
        # --steps: that many optimizer steps in all, in whole epochs and a last partial one
        self.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * self.steps
        self.epochs = -(-self.total_steps // self.steps)
        self.evaluation: dict[str, float] = {}  # the metrics of the last evaluation
        self.kind = kind_of(cfg)
        self.out, self.lock = prepare_out_dir(cfg, group, self.log)
        with warnings.catch_warnings(record=True) as caught:  # convert_'s warnings as one plain line each
            warnings.simplefilter("always")
            self.module = _build_model(cfg, self.workload.info).to(self.device)
        for w in caught:
            self.log(f"warning: {str(w.message).removeprefix('pemn: ')}")
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = _optimizer(cfg, self.module, self.params)
        self.keep_now = cfg.keep
        self.teacher: nn.Module | None = None
        self.teacher_acc: float | None = None
        if cfg.teacher is not None:
            w = self.workload
            info = w.info
            self.teacher, self.teacher_name = load_teacher(
                cfg.teacher, num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size,
                device=self.device)
            self.teacher_acc = evaluate(self.teacher, w.test_x, w.test_y, transform=w.eval_tf,
                                        batch_size=cfg.eval_batch_size, device=self.device, amp=self.amp)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.history = self._resume() if cfg.resume else _History()
        self.model: nn.Module = self.accel.wrap(self.module)

    def log(self, message: str) -> None:
        if self.dist.main:
            self._log(message)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.stop.restore()
        torch.set_num_threads(self._previous_threads)
        if self.lock is not None:
            self.lock.release()
        if self.dist.enabled:
            # Drop the DDP wrapper (its reducer holds the process group and gloo work) now, not at interpreter
            # exit: a late collection after destroy_process_group can abort the process.
            self.__dict__.pop("model", None)
            self.__dict__.pop("optimizer", None)
            gc.collect()

    def elapsed(self) -> float:
        return self.history.prior_seconds + time.perf_counter() - self.t0

    # ------------------------------------------------------------------------------------------- setup

    def _resume(self) -> _History:
        path = self.out / CHECKPOINT_NAME
        if not path.exists():
            self.log(f"resume: no checkpoint in {str(self.out)!r} yet (the run stopped before its first one); "
                     "starting it again from scratch with its settings")
            return _History()
        state = load_checkpoint(path, model=self.module, optimizer=self.optimizer, scaler=self.accel.scaler,
                                device=self.device, config=self.cfg.to_dict(), free_fields=RESUME_FREE_FIELDS)
        if state["step"] and state["steps_per_epoch"] != self.steps:
            raise ValueError(f"the checkpoint stopped mid-epoch with {state['steps_per_epoch']} steps per epoch, "
                             f"this run has {self.steps} (different world size?); it cannot continue that epoch")
        totals = _Totals(**state["accum"])
        if not self.dist.main:  # rank 0 holds the global sums of an interrupted epoch
            totals.loss_sum = totals.correct = totals.seen = 0.0
        history = _History(epoch=int(state["epoch"]), step=int(state["step"]), metrics=list(state["history"]),
                           best_acc=float(state["best_acc"]), best_epoch=int(state["best_epoch"]),
                           prior_seconds=float(state["elapsed"]), totals=totals)
        self.saved_at = (history.epoch, history.step)
        if history.epoch >= self.cfg.epochs:
            self.log(f"resume: {str(path)!r} is of a finished run ({history.epoch}/{plural(self.cfg.epochs, 'epoch')}"
                     "); nothing left to train, writing its outputs again")
        elif history.step:
            self.log(f"resuming {str(path)!r} {self._where(history.epoch, history.step)}")
        else:
            self.log(f"resuming {str(path)!r} at epoch {history.epoch + 1}/{self.cfg.epochs}")
        return history

    # -------------------------------------------------------------------------------------------- run

    def run(self) -> TrainResult:
        """Train the remaining epochs and write the outputs; a failed write (read-only folder, full disk) is
        one :class:`RunWriteError` saying which checkpoint is intact and how to resume."""
        try:
            return self._run()
        except RunWriteError:
            raise
        except OSError as e:
            raise RunWriteError(self._write_failure(e), e.errno) from None

    def _where(self, epoch: int, step: int) -> str:
        """Where a checkpoint stands: ``after epoch 2``, or ``in epoch 3/10 after step 6 of 1,307``."""
        if step == 0:
            return f"after epoch {epoch}"
        return f"in epoch {epoch + 1}/{self.cfg.epochs} after step {step:,} of {self.steps:,}"

    def _write_failure(self, e: OSError) -> str:
        what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
        if self.saved_at is None:
            return (f"cannot write into the run folder {str(self.out)!r} ({what}); no checkpoint was written yet, so "
                    "make it writable (or choose another --out) and start the run again")
        return (f"cannot write into the run folder {str(self.out)!r} ({what}); the last checkpoint "
                f"({self._where(*self.saved_at)}) is intact: once the folder is writable again, continue with: "
                f"{resume_command(self.out, self.dist.world)}")

    def _run(self) -> TrainResult:
        cfg, h = self.cfg, self.history
        if self.dist.main:
            write_json(self.out / CONFIG_NAME, cfg.to_dict())
            if h.metrics:  # a kill between the last checkpoint and its metrics write left them an epoch behind
                write_metrics(self.out, h.metrics)
        self._describe()
        self.stop.install()
        first_epoch, first_step = h.epoch, h.step
        for epoch in range(first_epoch, self.epochs):
            self._epoch(epoch, first_step if epoch == first_epoch else 0)
        return self._finish()

    def _describe(self) -> None:
        cfg = self.cfg
        if cfg.strategy == "dense":
            n = sum(p.numel() for p in self.module.parameters())
            what = f"dense, {n:,} parameters"
            if cfg.prune:
                what += f", {cfg.prune} pruning ({cfg.prune_scope}) of {cfg.effective_compression:.2%} at init"
            if cfg.quantize in QAT_METHODS:
                what += f", weights trained quantized ({cfg.quantize}, per output channel, straight-through)"
            elif cfg.quantize:
                what += f", weights quantized after training ({cfg.quantize}, per output channel)"
        else:
            mws = masked_weights(self.module)
            masked = sum(mw.numel for mw in mws.values())
            bank = next(iter(mws.values())).bank
            extra = sum(p.numel() for p in self.params) - sum(mw.numel for mw in mws.values() if not mw.frozen)
            c = bank.config
            variance = {(False, False): "paper", (True, False): "fan-in", (True, True): "fan-in-keep",
                        (False, True): "keep"}[(c.rescale, c.keep_scale)]
            what = (f"{cfg.strategy}, {masked:,} masked weights from {plural(bank.unique_values, 'prototype value')}, "
                    f"keep {cfg.keep:g}{' shared by ' + c.keep_rule if c.keep_rule != 'uniform' else ''}, "
                    f"{'' if c.init == 'kaiming_normal' else c.init.replace('_', '-') + ' prototype, '}"
                    f"variance {variance}, {extra:,} trained extras")
            if c.gain:
                what += " (per-channel gains included)"
            if c.mask_sampling != "topk":
                what += f"; {c.mask_sampling} masks"
            if cfg.keep_start is not None:
                what += f"; keep annealed from {cfg.keep_start:g} over the first {cfg.keep_anneal:.0%} of steps"
            if cfg.score_settings() is not None:
                g = self.optimizer.param_groups[-1]
                what += f"; scores: lr {g['lr_scale'] * cfg.lr:g}, wd {g['weight_decay']:g}"
        if self.teacher_acc is not None:
            what += (f"; distilling from {cfg.teacher} ({self.teacher_name}, test {self.teacher_acc:.2f}%, "
                     f"T {cfg.distill_temperature:g}, weight {cfg.distill_weight:g})")
        self.log(f"pemn train: {cfg.model} on {cfg.dataset} ({self.workload.sizes()}); {what}")
        length = (f"{plural(self.total_steps, 'step')} ({self.steps:,} per epoch)" if cfg.steps is not None
                  else f"{plural(self.epochs, 'epoch')} x {plural(self.steps, 'step')}")
        self.log(f"recipe {cfg.recipe}: {cfg.optimizer} lr {cfg.lr:g} wd {cfg.weight_decay:g}, schedule "
                 f"{cfg.schedule}, augment {cfg.augment}, batch {cfg.batch_size}, {length}; "
                 f"device {self.device}{' (amp)' if self.amp else ''}, "
                 f"{plural(self.threads, 'CPU thread')}, world size {self.dist.world}; out {self.out}")
        if cfg.eval_subset is not None or cfg.eval_every > 1:
            self.log(f"evaluation: {self.workload.eval_scope()}"
                     + (f" (--eval-subset {cfg.eval_subset})" if cfg.eval_subset is not None else "")
                     + (f", every {plural(cfg.eval_every, 'epoch')} and after the last" if cfg.eval_every > 1
                        else ""))

    def _epoch(self, epoch: int, start_step: int) -> None:
        cfg, w, h = self.cfg, self.workload, self.history
        E, steps, B = self.epochs, self.steps, self.per_rank_batch
        last = min(steps, self.total_steps - epoch * steps)  # steps of this epoch (fewer in a --steps run's last)
        order = w.epoch_order(epoch, self.shard)
        if start_step == 0:
            h.totals = _Totals()
        # what the loop counts: images, or a language model's predicted characters (block_size per window)
        epoch_total = min(self.shard, last * B) * self.dist.world * w.rows_counted()
        self.progress = Progress(cfg.progress and self.dist.main, epoch_total, f"epoch {epoch + 1}/{E}", self._log,
                                 unit=w.unit)
        self.progress.done = int(h.totals.seen)
        t_epoch = time.perf_counter()
        self.model.train()
        for step in range(start_step, last):
            t_step = time.perf_counter()
            x, yb = w.batch(order, epoch, step, B)
            lr = self._lr(epoch, step + 1)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if cfg.keep_start is not None:
                self._set_keep(keep_at(cfg, (epoch * steps + step + 1) / self.total_steps))
            self.optimizer.zero_grad(set_to_none=True)
            with self.accel.autocast():
                out, yb = w.loss_inputs(self.model(x), yb)
                loss = self.criterion(out, yb)
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_out = self.teacher(x)
                    loss = distill_loss(out, teacher_out, loss, cfg.distill_temperature, cfg.distill_weight)
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
            self.accel.step(loss, self.optimizer, self.params, cfg.clip_norm)
            h.totals.add(loss_sum, correct, seen, time.perf_counter() - t_step)
            self.progress.update(int(seen), loss_sum / max(seen, 1.0))
            global_step = epoch * steps + step + 1
            if stop or (self.stop_after_step is not None and global_step >= self.stop_after_step):
                self._interrupt(epoch, step + 1, int(self.stop.signum or 0) or None)
        self.progress.close()
        self._end_epoch(epoch, time.perf_counter() - t_epoch)

    def _set_keep(self, keep: float) -> None:
        if keep != self.keep_now:
            set_keep_(self.module, keep)
            self.keep_now = keep

    def _lr(self, epoch: int, step: int) -> float:
        """The learning rate after ``step`` steps of epoch ``epoch`` (over steps in a --steps run)."""
        cfg = self.cfg
        if cfg.steps is not None:
            return schedule_lr(cfg.schedule, cfg.lr, cfg.steps, float(epoch * self.steps + step),
                               whole_epoch_knots=cfg.paper)
        return schedule_lr(cfg.schedule, cfg.lr, cfg.epochs, epoch + step / self.steps, whole_epoch_knots=cfg.paper)

    def _evaluate(self, model: nn.Module, desc: str, *, shard: bool = True) -> dict[str, float]:
        """The workload's metrics of ``model`` on the test split, with a progress display where it has one
        (``shard``: every rank evaluates its share; else the calling rank evaluates all of it)."""
        total = self.workload.eval_size()
        if total is None:
            return self.workload.evaluate(model, shard=shard)
        self.progress = Progress(self.cfg.progress and self.dist.main, total, desc, self._log)
        try:
            return self.workload.evaluate(model, shard=shard, progress=self.progress.update)
        finally:
            self.progress.close()

    def _test_accuracy(self, desc: str = "test") -> float:
        self.evaluation = self._evaluate(self.module, desc)
        return self.evaluation["test_acc"]

    def _end_epoch(self, epoch: int, epoch_seconds: float) -> None:
        cfg, h = self.cfg, self.history
        self.accel.sync_buffers(self.module)
        evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == self.epochs
        test_acc = self._test_accuracy(f"test after epoch {epoch + 1}/{self.epochs}") if evaluated else None
        a = h.totals
        metrics = {
            "epoch": epoch + 1,
            "lr": self._lr(epoch, min(self.steps, self.total_steps - epoch * self.steps)),
            "train_loss": a.loss_sum / max(a.seen, 1.0),
            "train_acc": 100.0 * a.correct / max(a.seen, 1.0),
            "test_acc": test_acc,
            "seconds": epoch_seconds,
            "images_per_s": a.seen / max(a.train_seconds, 1e-9),
        }
        if cfg.keep_start is not None:
            metrics["keep"] = self.keep_now
        if cfg.steps is not None or self.workload.records_step:
            metrics["step"] = min(self.total_steps, (epoch + 1) * self.steps)
        metrics = self.workload.epoch_metrics(metrics, self.evaluation if evaluated else None)
        h.metrics.append(metrics)
        if self.keep_now != cfg.keep or test_acc is None:  # still annealing (a larger mask than the run's), or
            pass                                                # not evaluated: not a candidate best
        elif h.best_epoch == 0 or test_acc > h.best_acc:
            h.best_acc, h.best_epoch = test_acc, epoch + 1
        h.totals = _Totals()
        self._save_checkpoint(epoch + 1, 0)
        if self.dist.main:
            write_metrics(self.out, h.metrics)
        self.session_epochs.append(epoch_seconds)
        eta = (self.epochs - epoch - 1) * sum(self.session_epochs) / len(self.session_epochs)
        self.log(self.workload.epoch_line(metrics, self.epochs, (h.best_acc, h.best_epoch), eta))
        stop = torch.tensor([float(self.stop.signum is not None)], device=self.device)
        hook = self.stop_after_epoch is not None and epoch + 1 >= self.stop_after_epoch and epoch + 1 < self.epochs
        if self.dist.all_reduce_(stop).item() or hook:
            self._interrupt(epoch + 1, 0, self.stop.signum, written=True)

    def _post_training_quantize(self) -> float | None:
        """``quantize ptq-*``: quantize the trained model's weights, re-estimate its BatchNorm statistics on training
        images (:func:`~pemn.training.quantize.post_training_quantize_`), evaluate it; returns the dense model's
        final accuracy (None for every other run). Runs on every rank (the same images, so the same result)."""
        cfg = self.cfg
        if cfg.quantize is None or cfg.quantize in QAT_METHODS:
            return None
        dense_acc = float(self.history.metrics[-1]["test_acc"])
        images = self.workload.calibration_images()
        n = post_training_quantize_(self.module, cfg.quantize, images, self.workload.eval_tf, cfg.batch_size)
        self.quantized_acc = self._test_accuracy(f"test of the {cfg.quantize} model")
        used = 0 if images is None else min(len(images), PTQ_CALIBRATION_IMAGES)
        what = (f"BatchNorm statistics of {plural(n, 'layer')} re-estimated on {used:,} training images" if n
                else "no BatchNorm to calibrate")
        self.log(f"{cfg.quantize}: weights quantized per output channel ({what}): test accuracy "
                 f"{self.quantized_acc:.2f}% (dense {dense_acc:.2f}%)")
        return dense_acc

    def _save_checkpoint(self, epoch: int, step: int) -> Path:
        path = self.out / CHECKPOINT_NAME
        if not self.dist.main:
            return path
        h = self.history
        state = {"epoch": epoch, "step": step, "steps_per_epoch": self.steps, "world_size": self.dist.world,
                 "accum": dataclasses.asdict(h.totals), "history": h.metrics, "best_acc": h.best_acc,
                 "best_epoch": h.best_epoch, "elapsed": self.elapsed()}
        save_checkpoint(path, model=self.module, optimizer=self.optimizer, scaler=self.accel.scaler,
                        device=self.device, config=self.cfg.to_dict(), state=state)
        self.saved_at = (epoch, step)
        return path

    def _interrupt(self, epoch: int, step: int, signum: int | None, *, written: bool = False) -> None:
        path = self.out / CHECKPOINT_NAME if written else self._save_checkpoint(epoch, step)
        self.dist.barrier()  # rank 0 has written the checkpoint before anyone exits
        if self.progress is not None:
            self.progress.close()
        why = signal.Signals(signum).name if signum else "requested stop"
        message = (f"training interrupted ({why}) {self._where(epoch, step)}; checkpoint saved to {str(path)!r}. "
                   f"Continue with: {resume_command(self.out, self.dist.world)}")
        self.log(message)
        stop = TrainingInterrupted(message, checkpoint=path, epoch=epoch, step=step, signum=signum)
        stop.logged = self._log is _default_log  # printed on rank 0: the pemn command says nothing more
        raise stop

    # ----------------------------------------------------------------------------------------- outputs

    def _finish(self) -> TrainResult:
        cfg, h = self.cfg, self.history
        if cfg.keep_start is not None:
            self._set_keep(cfg.keep)  # the schedule ends at keep; this makes the saved counts exact regardless
        self.accel.sync_buffers(self.module)
        dense_acc = self._post_training_quantize()
        digest = state_digest(self.module)
        if not self.dist.all_equal(digest):
            raise RuntimeError("the ranks ended with different masks/weights; DDP should have kept them in sync")
        final_acc = h.metrics[-1]["test_acc"] if h.metrics else 0.0
        best_acc, best_epoch = h.best_acc, h.best_epoch
        if not self.evaluation and h.metrics:  # a finished run resumed: its last evaluation is in the history
            self.evaluation = dict(h.metrics[-1])
        if dense_acc is not None:  # the saved model is the quantized one, the only one: its accuracy is the run's
            final_acc = best_acc = self.quantized_acc
            best_epoch = len(h.metrics)
        path = self.out / self.kind.filename
        files: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        artifact_acc = saved = None
        if self.dist.main:
            summary = self.kind.save(self.module, path, cfg, app=self.workload.app())
            if dense_acc is not None:
                summary["dense_acc"] = dense_acc
            nbytes = path.stat().st_size
            files = {self.kind.path_field: path, **dict.fromkeys(self.kind.bytes_fields, nbytes)}
            with torch.random.fork_rng(devices=[]):  # the file alone rebuilds the model (its app metadata)
                loaded = load_model(path)[0].to(self.device)
            saved = self._evaluate(loaded, f"test of the saved {path.name}", shard=False)
            artifact_acc = saved["test_acc"]
            warning = self.workload.check_saved(saved, self.evaluation, final_acc)
            if warning is not None:
                self.log(warning)
        result = TrainResult(
            out_dir=self.out, artifact=files.get("artifact"), artifact_bytes=files.get("artifact_bytes"),
            best_acc=best_acc, best_epoch=best_epoch, final_acc=final_acc, epochs_run=len(h.metrics),
            seconds=self.elapsed(), summary=summary, weights=files.get("weights"),
            weights_bytes=files.get("weights_bytes"), sparse_bytes=files.get("sparse_bytes"),
            artifact_acc=artifact_acc, world_size=self.dist.world, rank=self.dist.rank, state_sha256=digest.hex(),
            model=self.module, teacher_acc=self.teacher_acc,
            metrics={**dict.fromkeys(RESULT_KEYS), **self.workload.result_fields(self.evaluation, saved)},
            steps_run=min(self.total_steps, len(h.metrics) * self.steps))
        if self.dist.main:
            write_json(self.out / RESULT_NAME, result.to_dict())
            ratio = honest_ratio_text(summary["honest_ratio"])
            if self.kind.name == "pemn":
                ratio += f", {paper_ratio_text(summary['paper_ratio'])}"
            self.log(self.workload.done_line(result, f"Saved {path} ({path.stat().st_size:,} bytes; {ratio})"))
            if self.teacher_acc is not None:
                self.log(f"teacher {cfg.teacher} ({self.teacher_name}): test accuracy {self.teacher_acc:.2f}%")
        self.dist.barrier()
        return result
