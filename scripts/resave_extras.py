"""Re-save trained PEMN runs with every extras option and measure what each costs: bytes and test accuracy.

    python scripts/resave_extras.py sweeps/c10_convmixer/rp-r0.001-k0.5 [RUN_DIR ...]
    python scripts/resave_extras.py --slim RUN_DIR [RUN_DIR ...]   # only the slim file, app metadata kept

Each RUN_DIR is a `pemn train` output folder (config.json + model.pemn). Every option of ``pemn.save`` that
changes the stored values -- ``fold_norms`` and ``extras_dtype`` (float16, bfloat16, int8), alone and
combined -- is applied to the trained model (no retraining), the file is loaded into a fresh model and its
test accuracy re-measured (a language model: next-character accuracy and ``val_loss`` on the validation split);
``cost`` is the accuracy of the as-trained file minus that (points). The mask coding
is the run's own (it does not change the model); ``file_bytes_seed`` is the same file with a seed-only
prototype; ``stored_dtypes`` counts the dense entries by the dtype they were stored in (with int8, the
error-bounded rule of :mod:`pemn.extras` stores some tensors as float16 or as trained). Prints one JSON document.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import nn

import pemn
from pemn.training.augment import build_eval_transform
from pemn.training.data import dataset_info, load_dataset
from pemn.training.evaluation import evaluate
from pemn.training.models import create_model
from pemn.training.text import evaluate_lm, load_text

#: (fold_norms, extras_dtype): the as-trained file first (the reference of ``cost``)
OPTIONS = [(False, None), (True, None), (False, "float16"), (False, "bfloat16"), (True, "float16"),
           (True, "bfloat16"), (False, "int8"), (True, "int8")]


def label(fold_norms: bool, extras_dtype: str | None) -> str:
    return ("fold+" if fold_norms else "") + (extras_dtype or "float32")


def _task(cfg: dict) -> tuple[Callable[[], nn.Module], Callable[[nn.Module], dict]]:
    """A fresh model of the run and its metrics (``test_acc``: test accuracy, or for a language model the
    next-character accuracy on the validation split, with ``val_loss``)."""
    if cfg["dataset"] == "text":
        corpus = load_text(cfg["data_dir"], cfg["block_size"])
        return (lambda: create_model(cfg["model"], num_classes=corpus.vocab_size, block_size=cfg["block_size"]),
                lambda m: (lambda r: {"test_acc": r["val_acc"], "val_loss": r["val_loss"]})(
                    evaluate_lm(m, corpus.val, cfg["block_size"])))
    info = dataset_info(cfg["dataset"], cfg["data_dir"])
    images, labels = load_dataset(cfg["dataset"], cfg["data_dir"], split="test")
    transform = build_eval_transform(info)
    return (lambda: create_model(cfg["model"], num_classes=info.num_classes, in_channels=info.in_channels,
                                 image_size=info.image_size),
            lambda m: {"test_acc": evaluate(m, images, labels, transform=transform, batch_size=250)})


def measure(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    fresh, metrics = _task(cfg)
    coding = cfg.get("coding", "packed")
    row: dict = {"run": str(run), "model": cfg["model"], "coding": coding}
    reference = None
    with tempfile.TemporaryDirectory() as d:
        for fold_norms, dtype in OPTIONS:
            model = pemn.load(run / "model.pemn", fresh())
            path = pemn.save(model, Path(d) / "m.pemn", coding=coding, extras_dtype=dtype, fold_norms=fold_norms)
            s = pemn.summary(path, verbose=False)
            seed = pemn.summary(model, coding=coding, prototype="seed", extras_dtype=dtype, fold_norms=fold_norms,
                                verbose=False)
            got = metrics(pemn.load(path, fresh()))
            acc = got["test_acc"]
            stored = [e[2] for e in pemn.artifact.read(path).dense]
            reference = acc if reference is None else reference
            row[label(fold_norms, dtype)] = {
                "file_bytes": s.file_bytes, "file_bytes_seed": seed.file_bytes, "honest_ratio": s.honest_ratio,
                **got, "cost": round(reference - acc, 4),
                "extras_share": (s.bytes["extras"] + s.bytes["norm_stats"] + s.bytes["scales"]) / s.file_bytes,
                "header_share": s.bytes["header"] / s.file_bytes,
                "stored_dtypes": {d: stored.count(d) for d in sorted(set(stored))}}
            print(run.name, label(fold_norms, dtype), s.file_bytes, acc, file=sys.stderr, flush=True)
    return row


def measure_slim(run: Path) -> dict:
    """The run's slim file: the bytes and test accuracy of ``model.pemn`` re-saved as ``pemn train --prototype
    seed --extras-dtype int8 --fold-norms`` would have written it (same masks and coding, app metadata kept), next
    to the as-trained file's."""
    cfg = json.loads((run / "config.json").read_text())
    fresh, metrics = _task(cfg)
    art = pemn.artifact.read(run / "model.pemn")
    with tempfile.TemporaryDirectory() as d:
        model = pemn.load(run / "model.pemn", fresh())
        path = Path(d) / "m.pemn"
        pemn.artifact.save(model, path, coding=art.coding, prototype="seed", extras_dtype="int8", fold_norms=True,
                           app=art.app or None)
        return {"run": str(run), "file_bytes": (run / "model.pemn").stat().st_size,
                "test_acc": metrics(model)["test_acc"], "slim_file_bytes": path.stat().st_size,
                "slim_test_acc": metrics(pemn.load(path, fresh()))["test_acc"]}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--slim"]:  # python scripts/resave_extras.py --slim RUN_DIR [RUN_DIR ...]
        print(json.dumps([measure_slim(Path(p)) for p in sys.argv[2:]], indent=2))
    else:
        print(json.dumps([measure(Path(p)) for p in sys.argv[1:]], indent=2))
