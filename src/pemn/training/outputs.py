"""What a training run writes besides its checkpoint: the output folder, ``config.json``, ``metrics.jsonl``,
``result.json`` (:class:`TrainResult`); the trained model's file is :mod:`pemn.training.artifacts`'.

Every file is written atomically (:func:`pemn.fileio.atomic_write_bytes`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemn.convert import masked_weights, unwrap
from pemn.fileio import atomic_write_bytes, remove_stale_temp_files
from pemn.summary import honest_ratio_text, paper_ratio_text
from pemn.training.artifacts import KINDS
from pemn.training.checkpoint import CHECKPOINT_NAME, cpu_copy
from pemn.training.config import RUN_CONFIG_NAME, TrainConfig
from pemn.training.dist import Dist
from pemn.training.progress import plural
from pemn.training.runlock import RunBusyError, RunLock
from pemn.training.workloads import workload_of_dataset

__all__ = ["TrainResult", "prepare_out_dir", "report_lines", "state_digest", "write_json", "write_metrics"]

CONFIG_NAME = RUN_CONFIG_NAME
METRICS_NAME = "metrics.jsonl"
RESULT_NAME = "result.json"
METRIC_NOTE = ("best_acc is the highest per-epoch test accuracy (the paper's reported metric; it selects on the "
               "test set); final_acc is the last epoch's test accuracy, the accuracy of the saved model")


# ----------------------------------------------------------------------------------------- run folder


_PROBLEMS: dict[str, type[Exception]] = {"exists": FileExistsError, "busy": RunBusyError,
                                          "permission": PermissionError, "os": OSError}


def prepare_out_dir(cfg: TrainConfig, group: Dist, log: Callable[[str], None] | None = None
                    ) -> tuple[Path, RunLock | None]:
    """The run's output folder (``cfg.out`` or a new ``runs/<timestamp>-...``), the same on every rank, and the
    :class:`~pemn.training.runlock.RunLock` rank 0 holds on it (None on the other ranks) until the run ends.

    Raised on every rank, with one line saying what to do: FileExistsError if it holds a run and ``cfg.resume``
    is off, or if it is a file; :class:`~pemn.training.runlock.RunBusyError` if another live process writes into
    it (``cfg.wait``: wait for it instead); PermissionError if it cannot be written. Stale temporary files of a
    killed write are removed.
    """
    if cfg.out:
        out = Path(cfg.out)
    else:
        base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{cfg.dataset}-{cfg.strategy}"
        out, n = base, 1
        while out.exists():
            n += 1
            out = base.with_name(f"{base.name}-{n}")
    out = Path(group.broadcast_str(str(out)))
    problem, lock = "", None
    if group.main:  # rank 0 decides, so every rank raises (or none does)
        problem, lock = _claim_out_dir(out, cfg, log)
    problem = group.broadcast_str(problem)
    if problem:
        kind, _, message = problem.partition(":")
        raise _PROBLEMS[kind](message)
    return out, lock


def _claim_out_dir(out: Path, cfg: TrainConfig, log: Callable[[str], None] | None) -> tuple[str, RunLock | None]:
    """``("", lock)`` once ``out`` exists, is locked by this process and may be written; else ``("kind:message",
    None)``."""
    if out.exists() and not out.is_dir():
        return f"exists:--out {str(out)!r} is a file, not a folder; choose a folder for the run", None
    lock = RunLock(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire(wait=cfg.wait, log=log)
        existing = [p.name for p in (out / CHECKPOINT_NAME, out / RESULT_NAME) if p.exists()]
        if existing and not cfg.resume:
            lock.release()
            return (f"exists:{str(out)!r} already holds a run ({', '.join(existing)}); pass resume=True (--resume) "
                    "to continue it, or choose another out folder"), None
        remove_stale_temp_files(out, [CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, RESULT_NAME,
                                      *(k.filename for k in KINDS.values())])
    except RunBusyError as e:
        return f"busy:{e}", None
    except OSError as e:
        lock.release()
        kind = "permission" if isinstance(e, PermissionError) else "os"
        return (f"{kind}:cannot write the run folder {str(out)!r} ({e.strerror or e}); choose a writable --out"
                + (" (a --resume needs the folder writable again; its checkpoint is untouched)" if cfg.resume else "")
                ), None
    return "", lock


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """``out/metrics.jsonl``: one JSON line per epoch."""
    atomic_write_bytes(out / METRICS_NAME, "".join(json.dumps(m) + "\n" for m in history).encode())


def state_digest(model: nn.Module) -> bytes:
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
            h.update(cpu_copy(t).reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


# ----------------------------------------------------------------------------------------- result


@dataclass
class TrainResult:
    """What :func:`train` produced. Accuracies are top-1 % on the test split; epochs are 1-based.

    ``best_acc``/``best_epoch``: the highest per-epoch test accuracy (the paper's metric).
    ``final_acc``: the last epoch's, i.e. the saved model's (``artifact_acc`` re-measures it from the file).
    ``artifact``: ``model.pemn`` (None for dense runs); ``weights``: ``model.safetensors`` (dense) or
    ``model.sparse.safetensors`` (pruned); ``sparse_bytes``: the pruned file's honest size.
    ``state_sha256``: a hash of the final masks (PEMN) or weights (dense), equal on every rank.
    ``metrics``: the run's workload's own result metrics (:meth:`~pemn.training.workloads.Workload.result_fields`,
    e.g. a language model's ``val_loss``, ``bits_per_char`` and ``artifact_val_loss``), each also an attribute
    (``result.val_loss``); ``result.json`` writes them in its place among the fields, every workload's keys
    (:data:`~pemn.training.workloads.RESULT_KEYS`) on every run, null where the run's workload has none, so every
    result.json has the same keys. For a language model the accuracies are next-character top-1 accuracies on the
    validation split.
    ``steps_run``: optimizer steps done in all (every run).
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
    #: the dense teacher's test accuracy (``teacher`` runs only)
    teacher_acc: float | None = None
    world_size: int = 1
    rank: int = 0
    state_sha256: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)
    steps_run: int | None = None
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str) -> float | None:
        """A workload metric as an attribute (``result.val_loss``); AttributeError for a name none holds."""
        metrics = self.__dict__.get("metrics") or {}
        if name in metrics:
            return metrics[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute or metric {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """``result.json``'s object: the fields in order, ``metrics`` spread in its place, then ``note``."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "model":
                continue
            v = getattr(self, f.name)
            if f.name == "metrics":
                d.update(v)
            else:
                d[f.name] = str(v) if isinstance(v, Path) else v
        d["note"] = METRIC_NOTE
        return d


def report_lines(cfg: TrainConfig, result: TrainResult) -> list[str]:
    """What ``pemn train`` prints when a run ends: what was trained and for how long, the files, what the workload
    measured (:meth:`~pemn.training.workloads.Workload.report_lines`: the accuracy, a language model's validation
    loss) and the size ratios."""
    what = f"strategy {cfg.strategy}"
    if cfg.strategy != "dense":
        pemn_cfg = cfg.pemn_config()
        ratio = "" if pemn_cfg.ratio is None else f"ratio {pemn_cfg.ratio:g}, "
        what += f" ({ratio}keep {pemn_cfg.keep:g})"
    if cfg.prune:
        what += f", {cfg.prune} pruning of {100 * float(cfg.effective_compression or 0):g} % of the weights"
    if cfg.quantize:
        what += f", weights {cfg.quantize}"
    artifact = result.artifact or result.weights
    nbytes = result.artifact_bytes or result.weights_bytes
    epochs = plural(result.epochs_run, "epoch")
    lines = ["", f"trained {cfg.model} on {cfg.dataset}, {what}: {epochs} in {float(result.seconds or 0):.1f} s",
             f"  artifact   {artifact}" + (f"  ({nbytes:,} bytes)" if isinstance(nbytes, int) else "")]
    out_dir = Path(result.out_dir)
    files = (sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.name.startswith("."))
             if out_dir.is_dir() else [])
    lines.append(f"  results    {out_dir}" + (f"  ({', '.join(files)})" if files else ""))
    lines += workload_of_dataset(cfg.dataset).report_lines(cfg, result)
    summary = result.summary or {}
    paper, honest = summary.get("paper_ratio"), summary.get("honest_ratio")
    parts = []
    if paper is not None:
        parts.append(paper_ratio_text(float(paper)) if cfg.strategy != "dense" else
                     f"pruned fraction {100 * float(paper):.2f} % (the paper's x for baselines)")
    if honest is not None:
        parts.append(f"{honest_ratio_text(float(honest))} (dense fp32 bytes / file bytes)")
    if parts:
        lines.append("  size       " + "  |  ".join(parts))
    return lines
