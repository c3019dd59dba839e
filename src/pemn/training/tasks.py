"""Many tasks on one prototype from the command line: ``pemn train --tasks permuted:N | split:N`` and
``pemn train --base FILE.pemn --task NAME``, and the per-task data of ``pemn eval --task`` / ``--all-tasks``.

A task is a view of an image dataset, recorded in the file with the task (its ``app``), so the file alone says
how to rebuild each task's inputs:

- ``permuted:N``: N tasks ``permuted-0`` ... on the whole dataset, task ``i``'s images with their pixel positions
  shuffled by a fixed permutation (the same for every channel) seeded by ``(seed, i)`` (Permuted MNIST);
- ``split:N``: the classes cut into N contiguous groups (``numpy.array_split`` of ``0 .. C-1``), task ``i`` the images
  of group ``i`` with labels renumbered ``0 .. k-1`` and its own head of k outputs (Split MNIST 5x2);
- ``--base FILE --task NAME``: one task on ``--dataset`` (any data of the file's input shape) added to ``FILE``.

Tasks are trained one after another, each with fresh scores and extras on the shared prototype (nothing shared
is trained, so nothing is forgotten), each written into ``OUT/model.pemn`` (format version 4) as soon as it is
trained (:func:`pemn.save_task`: atomic, the other tasks' bytes untouched). ``OUT/tasks.jsonl`` gets one line per
task (accuracy right after its training, its bytes, seconds); at the end every task is evaluated again from the
saved file into a fresh model and ``OUT/result.json`` says whether each equals its accuracy after training.
``--resume`` continues a run whose file already holds some of its tasks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import pemn
from pemn.artifact import read
from pemn.taskset import task_seed
from pemn.training.artifacts import image_app, load_model
from pemn.training.augment import build_eval_transform, build_train_transform
from pemn.training.config import TrainConfig
from pemn.training.data import DatasetInfo, dataset_info, load_dataset
from pemn.training.dist import set_threads
from pemn.training.evaluation import DEFAULT_EVAL_BATCH, EvalReport, EvalRequest, evaluate
from pemn.training.outputs import write_json

__all__ = ["TaskSpec", "evaluate_task_file", "evaluate_tasks", "holds_tasks", "infer_tasks", "load_split",
           "parse_tasks", "task_data", "train_tasks"]

#: ``pemn eval --infer-task``'s batch size when none is given (SupSup's rule needs batches of one task)
INFER_BATCH = 128

_SPEC = re.compile(r"(permuted|split):([1-9][0-9]{0,5})")


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, dataset, pixel permutation seed (or None) and original classes (or None: all)."""

    name: str
    dataset: str
    permutation: int | None = None
    classes: tuple[int, ...] | None = None

    @property
    def app(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset}
        if self.permutation is not None:
            out["permutation"] = self.permutation
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_app(cls, name: str, app: dict[str, Any], default_dataset: str | None) -> TaskSpec:
        dataset = app.get("dataset", default_dataset)
        if not isinstance(dataset, str):
            raise ValueError(f"task {name!r} does not say which dataset it was trained on; give --dataset")
        perm = app.get("permutation")
        classes = app.get("classes")
        if perm is not None and (isinstance(perm, bool) or not isinstance(perm, int) or perm < 0):
            raise ValueError(f"task {name!r} has a bad permutation seed {perm!r}")
        if classes is not None and (not isinstance(classes, list) or not classes
                                    or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                               for c in classes)):
            raise ValueError(f"task {name!r} has a bad class list {classes!r}")
        return cls(name, dataset, perm, None if classes is None else tuple(classes))

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)


def _derive(*parts: int) -> int:
    import hashlib

    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**62 - 1)


def parse_tasks(spec: str, dataset: str, num_classes: int, seed: int) -> list[TaskSpec]:
    """The tasks of ``--tasks permuted:N`` or ``--tasks split:N`` on ``dataset`` (ValueError otherwise)."""
    m = _SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise ValueError(f"--tasks must be permuted:N or split:N (N >= 1), got {spec!r}")
    kind, n = m.group(1), int(m.group(2))
    if kind == "permuted":
        return [TaskSpec(f"permuted-{i}", dataset, permutation=_derive(seed, i)) for i in range(n)]
    if num_classes // n < 2:
        raise ValueError(f"split:{n} needs at least 2 classes per task; {dataset} has {num_classes}")
    groups = np.array_split(np.arange(num_classes), n)
    return [TaskSpec(f"split-{i}", dataset, classes=tuple(int(c) for c in g)) for i, g in enumerate(groups)]


def permutation(seed: int, pixels: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(pixels, generator=g)


def task_data(spec: TaskSpec, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Task ``spec``'s images and labels from a dataset split (NCHW images)."""
    if spec.classes is not None:
        keep = torch.isin(labels, torch.tensor(spec.classes, dtype=labels.dtype))
        images, labels = images[keep], labels[keep]
        lookup = torch.full((int(max(spec.classes)) + 1,), -1, dtype=labels.dtype)
        lookup[torch.tensor(spec.classes)] = torch.arange(len(spec.classes), dtype=labels.dtype)
        labels = lookup[labels]
    if spec.permutation is not None:
        n, c = images.shape[:2]
        perm = permutation(spec.permutation, math.prod(images.shape[2:])).to(images.device)
        images = images.reshape(n, c, -1)[:, :, perm].reshape(images.shape)
    return images, labels


@dataclass
class _Split:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DatasetInfo


@dataclass
class TaskResult:
    name: str
    accuracy: float
    bytes_added: int
    seconds: float
    steps: int
    kept_fraction: float


def load_split(dataset: str, data_dir: str | None, *, download: bool = False, train: bool = True,
               train_subset: int | None = None, eval_subset: int | None = None) -> _Split:
    """A dataset's test split (and train split, with ``train``), first-N subsets applied."""
    info = dataset_info(dataset, data_dir)
    empty = torch.zeros(0)
    x, y = load_dataset(dataset, data_dir, split="train", download=download) if train else (empty, empty)
    tx, ty = load_dataset(dataset, data_dir, split="test", download=download)
    if train_subset is not None:
        x, y = x[:train_subset], y[:train_subset]
    if eval_subset is not None:
        tx, ty = tx[:eval_subset], ty[:eval_subset]
    return _Split(x, y, tx, ty, info)


def _load_split(cfg: TrainConfig, dataset: str) -> _Split:
    return load_split(dataset, cfg.data_dir, download=cfg.download, train_subset=cfg.train_subset,
                      eval_subset=cfg.eval_subset)


def train_one(model: nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo,
              seed: int) -> int:
    """Train the active task of ``model`` on ``(x, y)`` with ``cfg``'s optimizer, schedule, batch size and
    epochs (or steps); returns the number of optimizer steps."""
    from pemn.training.engine import _optimizer, schedule_lr

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(cfg, model, params)
    scale = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    transform = build_train_transform(cfg.augment, info)
    n = x.shape[0]
    per_epoch = max(1, n // cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    epochs = -(-total // per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.train()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_derive(seed, epoch)))
        for i in range(per_epoch):
            if step >= total:
                break
            lr = schedule_lr(cfg.schedule, cfg.lr, epochs, epoch + (i + 1) / per_epoch)
            for g, s in zip(optimizer.param_groups, scale, strict=True):
                g["lr"] = lr * s
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb = transform(x[idx], _derive(seed, epoch, i))
            loss = criterion(model(xb), y[idx])
            if not torch.isfinite(loss):
                raise RuntimeError(f"the loss became {loss.item()} at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_norm is not None:
                nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            optimizer.step()
            step += 1
    model.eval()
    return step


def evaluate_spec(model: nn.Module, spec: TaskSpec, split: _Split, batch_size: int) -> float:
    tx, ty = task_data(spec, split.test_x, split.test_y)
    return float(evaluate(model, tx, ty, transform=build_eval_transform(split.info), batch_size=batch_size,
                          device=torch.device("cpu")))


def _run_dir(cfg: TrainConfig, label: str) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{cfg.dataset}-{label}"


def _save_options(cfg: TrainConfig) -> dict[str, Any]:
    return {"coding": cfg.coding, "prototype": cfg.prototype, "extras_dtype": cfg.extras_dtype,
            "fold_norms": cfg.fold_norms}


def _train_into(model: nn.Module, specs: list[tuple[int | None, TaskSpec]], cfg: TrainConfig, path: Path,
                splits: dict[str, _Split], base_classes: int, log: Callable[[str], None], jsonl: Path | None,
                app: dict[str, Any] | None, default_classes: int | None = None) -> list[TaskResult]:
    """Train each ``(index, spec)`` as a new task and append it to ``path``. ``index`` (the task's position in a
    ``--tasks`` run, so a resumed run trains each task as an uninterrupted one would) seeds its scores and batch
    order; None (``--base``): both come from the config's seed and the task's name. A task of all the dataset's
    classes has ``default_classes`` outputs (default: the dataset's count); a task whose count differs from
    ``base_classes`` gets its own head."""
    results = []
    for index, spec in specs:
        t0 = time.perf_counter()
        split = splits[spec.dataset]
        classes = spec.num_classes if spec.num_classes is not None else (default_classes or split.info.num_classes)
        score_seed = None if index is None else _derive(cfg.seed, 1_000_003, index)
        pemn.add_task(model, spec.name, num_classes=None if classes == base_classes else classes, app=spec.app,
                      seed=score_seed, activate=True)
        if "default" in pemn.tasks(model) and spec.name != "default":
            pemn.delete_task(model, "default")  # the conversion's own task: only its prototype is used
        x, y = task_data(spec, split.train_x, split.train_y)
        order = _derive(cfg.seed, 7, index) if index is not None else task_seed(cfg.seed, spec.name)
        steps = train_one(model, cfg, x, y, split.info, order)
        pemn.freeze_masks(model)
        before = path.stat().st_size if path.exists() else 0
        pemn.save_task(model, path, app=app, **_save_options(cfg))
        added = path.stat().st_size - before
        _take_stored_extras(model, path, spec.name)  # float16 / int8 / folded extras: the model as the file has it
        acc = evaluate_spec(model, spec, split, cfg.eval_batch_size)
        kept = sum(int(mw.current_mask().sum()) for mw in pemn.masked_weights(model).values())
        total = sum(mw.numel for mw in pemn.masked_weights(model).values())
        r = TaskResult(spec.name, acc, added, time.perf_counter() - t0, steps, kept / total)
        results.append(r)
        log(f"task {spec.name}: {acc:.2f} % test accuracy after {steps} steps, {added:,} bytes added to "
            f"{path.name} ({path.stat().st_size:,} bytes), {r.seconds:.1f} s")
        if jsonl is not None:
            with jsonl.open("a") as f:
                f.write(json.dumps({"task": r.name, "accuracy": r.accuracy, "bytes_added": r.bytes_added,
                                    "file_bytes": path.stat().st_size, "seconds": r.seconds, "steps": r.steps,
                                    "kept_fraction": r.kept_fraction, **spec.app}) + "\n")
    return results


def _take_stored_extras(model: nn.Module, path: Path, name: str) -> None:
    """Put task ``name``'s extras as the file at ``path`` stores them (cast to float16, int8-coded, folded) into the
    model's active task, so the accuracy measured right after training is the saved model's."""
    from pemn.artifact import _dense_tensors, _unfold

    entry = next(t for t in read(path).tasks if t.name == name)
    theirs = _dense_tensors(entry.artifact, "")
    _unfold(theirs, model, "")
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for kind in ("param", "buffer"):
            for k, t in theirs[kind].items():
                state[k].copy_(t)


def _specs(art: Any, names: list[str] | None, dataset: str | None) -> list[TaskSpec]:
    entries = art.tasks if names is None else [t for t in art.tasks if t.name in names]
    if names is not None and len(entries) != len(set(names)):
        have = [t.name for t in art.tasks]
        missing = [n for n in names if n not in have]
        raise ValueError(f"the file has no task {missing[0]!r}; its tasks: {', '.join(have[:20])}"
                         + (" ..." if len(have) > 20 else ""))
    return [TaskSpec.from_app(t.name, t.app, dataset) for t in entries]


def _open_tasks(path: str | Path, names: list[str] | None, dataset: str | None) -> tuple[list[TaskSpec], nn.Module]:
    """The specs of the tasks ``names`` (default all) of a multi-task file and the model holding them all."""
    path = Path(path)
    art = read(path)
    if not art.tasks:
        raise ValueError(f"{path} holds a single model, not tasks; use pemn eval without --task / --all-tasks / "
                         "--infer-task")
    specs = _specs(art, names, dataset)
    model, _, _ = load_model(path)
    return specs, model


def evaluate_tasks(path: str | Path, *, names: list[str] | None = None, dataset: str | None = None,
                   data_dir: str | None = None, download: bool = False, eval_subset: int | None = None,
                   batch_size: int = 256, splits: dict[str, _Split] | None = None) -> dict[str, float]:
    """Test accuracy (%) of every task (or ``names``) of the multi-task file at ``path``, each on its own data
    (rebuilt from the task's record: dataset, permutation, classes), loaded from the file into a fresh model."""
    specs, model = _open_tasks(path, names, dataset)
    splits = {} if splits is None else splits
    out = {}
    for spec in specs:
        if spec.dataset not in splits:
            splits[spec.dataset] = load_split(spec.dataset, data_dir, download=download, train=False,
                                              eval_subset=eval_subset)
        pemn.set_task(model, spec.name)
        out[spec.name] = evaluate_spec(model, spec, splits[spec.dataset], batch_size)
    return out


def infer_tasks(path: str | Path, *, names: list[str] | None = None, dataset: str | None = None,
                data_dir: str | None = None, download: bool = False, eval_subset: int | None = None,
                batch_size: int = 128, method: str = "one-shot", objective: str = "information") -> dict[str, Any]:
    """Task inference without ids: every test batch (``batch_size`` images of one task) is given to the one-shot
    rule (:mod:`pemn.superpose`, differentiating ``objective``; or ``method="min-entropy"``) over the tasks
    ``names`` (default all); reports how often it names the batch's task (identification accuracy, by batch) and
    the accuracy of the model of the task it names (without ids), beside the accuracy with ids."""
    from pemn.superpose import Superposition

    specs, model = _open_tasks(path, names, dataset)
    sp = Superposition(model, [s.name for s in specs])
    splits: dict[str, _Split] = {}
    batches = identified = correct_ids = correct_free = seen = 0
    per_task = {}
    for spec in specs:
        if spec.dataset not in splits:
            splits[spec.dataset] = load_split(spec.dataset, data_dir, download=download, train=False,
                                              eval_subset=eval_subset)
        split = splits[spec.dataset]
        tf = build_eval_transform(split.info)
        x, y = task_data(spec, split.test_x, split.test_y)
        hits = 0
        n_batches = 0
        for i in range(0, x.shape[0], batch_size):
            xb, yb = tf(x[i:i + batch_size]), y[i:i + batch_size]
            guess = sp.infer(xb, method, objective)
            hits += guess == spec.name
            n_batches += 1
            with torch.no_grad():
                with pemn.using_task(model, guess):
                    correct_free += int((model(xb).argmax(-1) == yb).sum())
                with pemn.using_task(model, spec.name):
                    correct_ids += int((model(xb).argmax(-1) == yb).sum())
            seen += yb.numel()
        per_task[spec.name] = 100.0 * hits / max(1, n_batches)
        batches += n_batches
        identified += hits
    return {"tasks": len(specs), "method": method, "objective": objective if method == "one-shot" else None,
            "batch_size": batch_size, "batches": batches,
            "identification_accuracy": 100.0 * identified / max(1, batches),
            "accuracy_with_ids": 100.0 * correct_ids / max(1, seen),
            "accuracy_without_ids": 100.0 * correct_free / max(1, seen), "examples": seen,
            "identification_by_task": per_task}


def tasks_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` for a run of many tasks: ``keep_rule`` "auto" resolves to "uniform" and an unset ``gain`` to off (the
    tasks of one prototype share one set of per-layer kept counts and carry no per-channel gains), and ``init``
    "auto" to the core's "kaiming_normal" (the task runs of RESULTS.md "Many tasks" chose their prototype
    explicitly; the sub-bit default was measured on single models); what the user set explicitly stays (and
    :func:`pemn.add_task` refuses what it cannot share)."""
    updates = {}
    if cfg.keep_rule == "auto":
        updates["keep_rule"] = "uniform"
    if cfg.init == "auto":
        updates["init"] = pemn.PEMNConfig.init
    if cfg.gain is None:
        updates["gain"] = False
    return TrainConfig.from_dict({**cfg.to_dict(), **updates}) if updates else cfg


def train_tasks(cfg: TrainConfig, *, tasks: str | None = None, base: str | None = None, task: str | None = None,
                outputs: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``--tasks`` into ``OUT/model.pemn``, or one task ``task`` on ``cfg.dataset`` into the file ``base``;
    returns (and, for ``--tasks``, writes to ``OUT/result.json``) what was trained and measured.

    ``outputs`` (``--task-outputs K``, ``--tasks`` only): the model gets K outputs, more than the dataset's classes;
    the outputs past the classes are SupSup's superfluous neurons: the cross-entropy over all K pushes their
    probability to zero on the task's own data. On 10 Permuted-MNIST tasks they did not help one-shot task inference
    (:mod:`pemn.superpose`; RESULTS.md "Many tasks": what it needs is keep ~0.5 and a small learning rate)."""
    if (tasks is None) == (base is None):
        raise ValueError("give either --tasks permuted:N|split:N or --base FILE.pemn --task NAME")
    if cfg.strategy == "dense":
        raise ValueError("tasks share a prototype: give a PEMN strategy (mask, one_layer, mp, rp), not dense")
    cfg = tasks_config(cfg)
    threads, _ = set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if base is not None:
        if task is None:
            raise ValueError("--base needs --task NAME (the name of the task to add)")
        path = Path(base)
        model, _, app = load_model(path)
        if task in pemn.tasks(model):
            raise ValueError(f"{path} already has a task {task!r}; choose another --task name")
        split = _load_split(cfg, cfg.dataset)
        base_classes = _base_classes(path)
        spec = TaskSpec(task, cfg.dataset)
        shape = app.get("model_args", {}) if app else {}
        if shape and (shape.get("in_channels"), shape.get("image_size")) != (split.info.in_channels,
                                                                          split.info.image_size):
            raise ValueError(f"{cfg.dataset} images are {split.info.in_channels}x{split.info.image_size}x"
                             f"{split.info.image_size}, the file's model takes {shape.get('in_channels')}x"
                             f"{shape.get('image_size')}x{shape.get('image_size')}")
        results = _train_into(model, [(None, spec)], cfg, path, {cfg.dataset: split}, base_classes, log, None, None)
        again = evaluate_tasks(path, names=[task], batch_size=cfg.eval_batch_size, splits={cfg.dataset: split})
        return {"file": str(path), "file_bytes": path.stat().st_size, "threads": threads,
                "tasks": [dict(vars(r), reloaded_accuracy=again[r.name]) for r in results]}
    split = _load_split(cfg, cfg.dataset)
    specs = parse_tasks(tasks, cfg.dataset, split.info.num_classes, cfg.seed)  # type: ignore[arg-type]
    out = _run_dir(cfg, tasks.replace(":", ""))  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.pemn"
    jsonl = out / "tasks.jsonl"
    done: list[str] = []
    if path.exists():
        if not cfg.resume:
            raise FileExistsError(f"{out} already holds a run (model.pemn); pass --resume to continue it or choose "
                                  "another --out")
        done = [t.name for t in read(path).tasks]
    write_json(out / "config.json", cfg.to_dict())  # the training settings (--resume reads them); the tasks: result
    info = split.info
    if outputs is not None:
        if outputs < info.num_classes:
            raise ValueError(f"--task-outputs {outputs} is fewer than {cfg.dataset}'s {info.num_classes} classes")
        info = dataclasses.replace(info, num_classes=outputs)
    app = image_app(cfg.model, info, cfg.data_dir)
    if done:
        model, _, _ = load_model(path)
        log(f"resume: {path} holds {len(done)} of {len(specs)} tasks; training the rest")
    else:
        from pemn.training.engine import _build_model

        model = _build_model(cfg, info)
    todo = [(i, s) for i, s in enumerate(specs) if s.name not in done]
    t0 = time.perf_counter()
    results = _train_into(model, todo, cfg, path, {cfg.dataset: split}, info.num_classes, log, jsonl, app,
                          default_classes=info.num_classes)
    seconds = time.perf_counter() - t0
    log(f"re-evaluating every task from {path} (a fresh model) ...")
    after = {}
    for line in jsonl.read_text().splitlines():
        row = json.loads(line)
        after[row["task"]] = row["accuracy"]
    again = evaluate_tasks(path, batch_size=cfg.eval_batch_size, splits={cfg.dataset: split})
    equal = all(again[n] == after.get(n) for n in again)
    art = read(path)
    result = {
        "tasks": tasks, "model": cfg.model, "dataset": cfg.dataset, "strategy": cfg.strategy, "keep": cfg.keep,
        "seed": cfg.seed, "threads": threads, "file": str(path), "file_bytes": path.stat().st_size,
        "task_count": len(art.tasks), "trained_now": len(results), "seconds": seconds,
        "mean_accuracy": float(np.mean(list(again.values()))),
        "min_accuracy": float(np.min(list(again.values()))),
        "reloaded_equal_after_training": equal,
        "accuracy_after_training": after, "accuracy_from_file": again,
        "task_data_bytes": {t.name: t.data_bytes for t in art.tasks},
    }
    write_json(out / "result.json", result)
    log(f"{len(art.tasks)} tasks in {path} ({result['file_bytes']:,} bytes): mean {result['mean_accuracy']:.2f} % "
        f"(min {result['min_accuracy']:.2f} %) from the file; equal to after training: {equal}")
    return result


def holds_tasks(path: str | Path) -> bool:
    """Whether the ``.pemn`` file at ``path`` holds tasks (a multi-task file, format version 4)."""
    return bool(read(path).tasks)


def evaluate_task_file(request: EvalRequest) -> EvalReport:
    """``pemn eval`` of a multi-task file: each task (``request.tasks``, default all) on its own data, or
    (``request.infer_task``) task inference without ids (:func:`infer_tasks`)."""
    names = list(request.tasks) or None
    common: dict[str, Any] = {"names": names, "dataset": request.dataset, "data_dir": request.data_dir,
                              "download": request.download, "eval_subset": request.eval_subset}
    if request.infer_task:
        batch = request.batch_size or INFER_BATCH
        r = infer_tasks(request.artifact, batch_size=batch, method=request.infer_method,
                        objective=request.infer_objective, **common)
        rule = r["method"] + (f", {r['objective']}" if r["objective"] else "")
        return EvalReport({"artifact": request.artifact, **r}, [
            f"{request.artifact}: task inference ({rule}, {r['tasks']} tasks, batches of {batch}): "
            f"{r['identification_accuracy']:.2f} % of {r['batches']:,} batches identified; accuracy "
            f"{r['accuracy_without_ids']:.2f} % without task ids, {r['accuracy_with_ids']:.2f} % with "
            f"({r['examples']:,} test images)"])
    accs = evaluate_tasks(request.artifact, batch_size=request.batch_size or DEFAULT_EVAL_BATCH, **common)
    mean = sum(accs.values()) / len(accs)
    threads = request.threads
    lines = [f"{name}: test accuracy {acc:.2f} %" for name, acc in accs.items()]
    lines.append(f"{request.artifact}: {len(accs)} task{'s' if len(accs) != 1 else ''}, mean test accuracy "
                 f"{mean:.2f} % ({threads} CPU thread{'s' if threads != 1 else ''})")
    return EvalReport({"artifact": request.artifact, "tasks": accs, "mean_accuracy": mean}, lines)


def _base_classes(path: Path) -> int:
    art = read(path)
    base = art.base if art.tasks else [[e["name"], e["shape"]] for e in art.manifest]
    head = art.head
    if head is not None:
        return int(dict((n, s) for n, s in base)[f"{head}.weight"][0])
    return int(base[-1][1][0])
