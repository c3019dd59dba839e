"""Re-save trained PEMN runs with half-precision extras and measure what it costs: bytes and test accuracy.

    python scripts/resave_extras.py sweeps/c10_convmixer/rp-r0.001-k0.5 [RUN_DIR ...]

Each RUN_DIR is a `pemn train` output folder (config.json + model.pemn). Prints one JSON document.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pemn
from pemn.training.augment import build_eval_transform
from pemn.training.data import dataset_info, load_dataset
from pemn.training.evaluation import evaluate
from pemn.training.models import create_model


def measure(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    info = dataset_info(cfg["dataset"], cfg["data_dir"])
    images, labels = load_dataset(cfg["dataset"], cfg["data_dir"], split="test")

    def fresh():
        return create_model(cfg["model"], num_classes=info.num_classes, in_channels=info.in_channels,
                            image_size=info.image_size)

    transform = build_eval_transform(info)
    row = {"run": str(run)}
    with tempfile.TemporaryDirectory() as d:
        for dtype in (None, "float16", "bfloat16"):
            for coding in ("packed", "entropy"):
                model = pemn.load(run / "model.pemn", fresh())
                path = pemn.save(model, Path(d) / "m.pemn", coding=coding, extras_dtype=dtype)
                s = pemn.summary(path, verbose=False)
                acc = evaluate(pemn.load(path, fresh()), images, labels, transform=transform, batch_size=256)
                row[f"{dtype or 'float32'}/{coding}"] = {"file_bytes": s.file_bytes, "test_acc": acc,
                                                         "extras_share": (s.bytes["extras"] + s.bytes["norm_stats"])
                                                         / s.file_bytes}
    return row


if __name__ == "__main__":
    print(json.dumps([measure(Path(p)) for p in sys.argv[1:]], indent=2))
