"""Top-1 accuracy of a model on in-memory tensors (used by training, ``pemn eval`` and the scripts), and on a
dataset's test split (:func:`evaluate_test_split`, ``pemn eval``); what ``pemn eval`` is asked
(:class:`EvalRequest`) and what it reports (:class:`EvalReport`), the types every kind of model file's evaluation
(:mod:`pemn.training.measure`) takes and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pemn.training.augment import BatchTransform, build_eval_transform
from pemn.training.data import load_dataset
from pemn.training.dist import autocast
from pemn.training.progress import Progress

if TYPE_CHECKING:
    from pemn.training.artifacts import ArtifactKind
    from pemn.training.data import DatasetInfo

__all__ = ["DEFAULT_EVAL_BATCH", "EvalReport", "EvalRequest", "autocast", "count_correct", "evaluate",
           "evaluate_test_split"]

#: The evaluation batch size of training, ``pemn eval`` and :func:`evaluate`: on a CPU small batches keep the
#: activations in cache (one thread: ConvMixer-256/8 evaluates 2.7x faster at 32 than at 128 and 2.9x faster than
#: at 512; ResNet-20 is fastest at 64, 32 within 7 %; LeNet-5 is cheap at any size): benchmarks/bench_eval_batch.py.
DEFAULT_EVAL_BATCH = 32


def count_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                  transform: BatchTransform | Callable[[torch.Tensor], torch.Tensor] | None, batch_size: int,
                  device: torch.device, amp: bool = False,
                  progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """``(correct, total)`` top-1 counts in ``eval()`` mode under ``no_grad`` (the mode is restored);
    ``progress`` is called with each batch's size once it is done."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                xb = images[i:i + batch_size].to(device, non_blocking=True)
                yb = labels[i:i + batch_size].to(device, non_blocking=True)
                x = transform(xb) if transform is not None else xb
                with autocast(device, amp):
                    out = model(x)
                correct += (out.argmax(1) == yb).sum()
                if progress is not None:
                    progress(int(yb.shape[0]))
    finally:
        model.train(was_training)
    return int(correct), int(images.shape[0])


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             transform: BatchTransform | Callable[[torch.Tensor], torch.Tensor] | None = None,
             batch_size: int = DEFAULT_EVAL_BATCH, device: str | torch.device | None = None, amp: bool = False,
             progress: Callable[[int], None] | None = None) -> float:
    """Top-1 accuracy (%) of ``model`` on ``images``/``labels``, in ``eval()`` mode under ``no_grad``.

    ``transform`` maps a raw batch (e.g. uint8) to the model's input
    (:func:`pemn.training.augment.build_eval_transform`);
    ``device`` defaults to the model's. The model's train/eval mode is restored afterwards.
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    correct, total = count_correct(model, images, labels, transform=transform, batch_size=batch_size,
                                   device=torch.device(device), amp=amp, progress=progress)
    return 100.0 * correct / total if total else 0.0


def evaluate_test_split(model: nn.Module, dataset: str, info: DatasetInfo, *, data_dir: str | None = None,
                        download: bool = False, eval_subset: int | None = None,
                        batch_size: int = DEFAULT_EVAL_BATCH, device: str | torch.device | None = None,
                        desc: str = "eval", log: Callable[[str], None] = print) -> tuple[float, int]:
    """``(top-1 %, examples)`` of ``model`` (moved to ``device``) on the test split of ``dataset`` (the first
    ``eval_subset`` examples), with ``info``'s eval transform (the model's normalisation); a progress bar named
    ``desc`` writes to ``log``."""
    images, labels = load_dataset(dataset, data_dir, split="test", download=download)
    if eval_subset is not None:
        images, labels = images[:eval_subset], labels[:eval_subset]
    model.to(device)
    bar = Progress(True, int(labels.numel()), desc, log)
    try:
        acc = evaluate(model, images, labels, transform=build_eval_transform(info), batch_size=batch_size,
                       device=device, progress=bar.update)
    finally:
        bar.close()
    return float(acc), int(labels.numel())


@dataclass(frozen=True)
class EvalRequest:
    """What ``pemn eval`` is asked to measure: the model file as given (``artifact``, echoed as is), its kind and
    app metadata (:func:`pemn.training.artifacts.file_kind_and_app`) and the options. None means the default:
    the registry model and the dataset the file records, the data folder its run used, the evaluation batch
    (:data:`DEFAULT_EVAL_BATCH`; 128 for task inference), the whole split. ``tasks``/``all_tasks``/``infer_task``/
    ``infer_method``/``infer_objective`` are a multi-task file's (:mod:`pemn.training.tasks`); ``log`` gets the
    progress display."""

    artifact: str
    kind: ArtifactKind
    app: dict[str, Any] | None
    model: str | None = None
    dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    batch_size: int | None = None
    eval_subset: int | None = None
    device: str = "auto"
    threads: int = 1
    tasks: tuple[str, ...] = ()
    all_tasks: bool = False
    infer_task: bool = False
    infer_method: str = "one-shot"
    infer_objective: str = "information"
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class EvalReport:
    """What ``pemn eval`` reports: ``record``, the JSON object of ``--json``, and ``lines``, the text."""

    record: dict[str, Any]
    lines: list[str]
