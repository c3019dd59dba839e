"""Split tasks on one prototype against separately trained PEMN models (issue 22, RESULTS.md "Many tasks").

    python benchmarks/bench_split_tasks.py --dataset mnist --model mlp-300-100 [--tasks split:5] [training flags]

Runs, in this process, with the same settings and data:

- ``shared``: what ``pemn train --tasks split:N`` does (:func:`pemn.training.tasks.train_tasks`): one model, its
  prototype converted once, every task in sequence with fresh scores and extras and its own head, all tasks written
  into one file and re-evaluated from it;
- ``separate``: for each task a fresh model built with the task's class count, converted with the same config (so
  the same seed and keep) and trained with the same optimizer, schedule, steps and batches, saved alone.
  ``--separate-init fresh`` (default) gives it the converted model's own initial scores and biases (an independent
  draw: the pairs then differ by initialisation noise); ``matched`` gives it the shared task's initial state (a
  fresh model converted like the shared one, the task added with the same seed: same scores, biases and head), so
  any difference left would come from sharing the prototype with the other tasks (there is none: the control).

Prints one JSON document: each task's accuracy both ways (each from its file), the difference, and the
bytes (one shared file against the sum of the separate files).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pemn
from _common import emit, machine
from pemn.training.config import resolve_config
from pemn.training.models import create_model
from pemn.training.tasks import (
    _derive,
    evaluate_spec,
    load_split,
    parse_tasks,
    task_data,
    tasks_config,
    train_one,
    train_tasks,
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="split:5")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="training options as pemn train takes them (dataset=mnist model=mlp-300-100 keep=0.1 ...)")
    parser.add_argument("--separate-init", choices=("fresh", "matched"), default="fresh",
                        help="the separate models' initial scores and biases: their own (fresh) or the shared task's")
    parser.add_argument("--quick", action="store_true", help="a few steps on digits (smoke test)")
    args = parser.parse_args(argv)
    from pemn.training.config import parse_setting

    overrides = {}
    for pair in args.set:
        key, _, value = pair.partition("=")
        overrides[key.replace("-", "_")] = parse_setting(key.replace("-", "_"), value)
    if args.quick:
        overrides = {"dataset": "digits", "model": "tiny-mlp", "steps": 20, "strategy": "mask", "keep": 0.2,
                     "lr": 0.03, "schedule": "cosine", **overrides}
    cfg = tasks_config(resolve_config({"threads": 1, **overrides}))  # uniform keep, no gains: what tasks share
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shared_cfg = resolve_config({**cfg.to_dict(), "out": str(Path(tmp) / "shared")})
        shared = train_tasks(shared_cfg, tasks=args.tasks, log=lambda _: None)
        shared_seconds = time.perf_counter() - t0
        split = load_split(cfg.dataset, cfg.data_dir, train_subset=cfg.train_subset, eval_subset=cfg.eval_subset)
        specs = parse_tasks(args.tasks, cfg.dataset, split.info.num_classes, cfg.seed)
        separate, separate_bytes = {}, 0
        t0 = time.perf_counter()
        for index, spec in enumerate(specs):
            torch.manual_seed(cfg.seed)
            matched = args.separate_init == "matched"
            classes = split.info.num_classes if matched else spec.num_classes or split.info.num_classes
            model = create_model(cfg.model, num_classes=classes, in_channels=split.info.in_channels,
                                 image_size=split.info.image_size)
            pemn.convert_(model, cfg.pemn_config(model))
            if matched:  # the shared run's task init (pemn.training.tasks._train_into): same seed, same head
                pemn.add_task(model, spec.name, num_classes=spec.num_classes, seed=_derive(cfg.seed, 1_000_003, index),
                              activate=True)
                pemn.delete_task(model, "default")
            x, y = task_data(spec, split.train_x, split.train_y)
            train_one(model, cfg, x, y, split.info, _derive(cfg.seed, 7, index))  # the shared run's batches
            pemn.freeze_masks(model)
            path = pemn.save(model, Path(tmp) / f"{spec.name}.pemn", coding=cfg.coding, prototype=cfg.prototype,
                             extras_dtype=cfg.extras_dtype, fold_norms=cfg.fold_norms)
            separate_bytes += path.stat().st_size
            fresh = create_model(cfg.model, num_classes=classes, in_channels=split.info.in_channels,
                                 image_size=split.info.image_size)
            reloaded = pemn.load(path, fresh).eval()  # from its file, as the shared tasks are (stored extras)
            separate[spec.name] = evaluate_spec(reloaded, spec, split, cfg.eval_batch_size)
        separate_seconds = time.perf_counter() - t0
    rows = [{"task": n, "classes": list(s.classes or ()), "shared_from_file": shared["accuracy_from_file"][n],
             "separate": separate[n], "difference": shared["accuracy_from_file"][n] - separate[n]}
            for n, s in zip(separate, specs, strict=True)]
    diffs = torch.tensor([r["difference"] for r in rows], dtype=torch.float64)
    return {"benchmark": "bench_split_tasks", "machine": machine(), "tasks": args.tasks, "config": cfg.to_dict(),
            "separate_init": args.separate_init,
            "results": rows, "every_shared_task_at_least_separate": all(r["difference"] >= 0 for r in rows),
            "mean_shared": sum(r["shared_from_file"] for r in rows) / len(rows),
            "mean_separate": sum(r["separate"] for r in rows) / len(rows),
            "mean_difference": float(diffs.mean()), "std_difference": float(diffs.std()) if len(rows) > 1 else 0.0,
            "shared_file_bytes": shared["file_bytes"], "separate_files_bytes": separate_bytes,
            "ratio_separate_bytes_over_shared": separate_bytes / shared["file_bytes"],
            "shared_reloaded_equal_after_training": shared["reloaded_equal_after_training"],
            "shared_seconds": shared_seconds, "separate_seconds": separate_seconds}


if __name__ == "__main__":
    emit(main())
