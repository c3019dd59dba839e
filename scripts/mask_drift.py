"""How far trained masks moved from their initial top-k: the test of "the scores move too slowly".

    python scripts/mask_drift.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a `pemn train` output folder of a PEMN strategy (config.json + model.pemn). The run's model is
rebuilt exactly as training built it (same seed, same conversion, so the same initial scores), and its initial
masks (the top-k of the initial scores) are compared with the saved ones. Prints one JSON document: per run and
per layer, ``moved`` = the fraction of the kept weights that are not in the initial mask (0: the mask never left
its initialisation; about 1 - keep: as different as a fresh random mask).

A ``pemn train --tasks`` run (result.json names its ``tasks``) is measured per task: each task's initial scores are
those ``add_task`` gave it (seeded by the run's seed and the task's position), so ``tasks`` holds each task's
``moved`` and ``moved`` their mean (one-shot task inference needs masks that stayed near their initialisation:
RESULTS.md "Many tasks").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pemn
from pemn.training.config import TrainConfig
from pemn.training.data import dataset_info
from pemn.training.engine import _build_model, _fresh_model


def _moved(initial: dict, final: dict) -> tuple[dict[str, float], int, int]:
    layers = {}
    kept = moved = 0
    for name, m0 in initial.items():
        m1 = final[name]
        k, stay = int(m1.sum()), int((m0 & m1).sum())
        layers[name] = round(1 - stay / k, 4)
        kept, moved = kept + k, moved + k - stay
    return layers, kept, moved


def task_drift(run: Path, cfg: TrainConfig, spec: str) -> dict:
    """Each task of a ``--tasks`` run against the initial masks ``add_task`` gave it."""
    from pemn.artifact import read
    from pemn.training.artifacts import load_model
    from pemn.training.tasks import _derive, parse_tasks

    path = run / "model.pemn"
    model, _, _ = load_model(path)
    entries = read(path).tasks
    classes = dataset_info(cfg.dataset, cfg.data_dir).num_classes
    order = {s.name: i for i, s in enumerate(parse_tasks(spec, cfg.dataset, classes, cfg.seed))}
    tasks, kept, moved = {}, 0, 0
    for entry in entries:
        pemn.set_task(model, entry.name)
        final = {n: mw.current_mask() for n, mw in pemn.masked_weights(model).items()}
        index = order.get(entry.name)
        pemn.add_task(model, f"{entry.name}.initial", num_classes=entry.num_classes, activate=True,
                      seed=None if index is None else _derive(cfg.seed, 1_000_003, index))
        initial = {n: mw.current_mask() for n, mw in pemn.masked_weights(model).items()}
        pemn.set_task(model, entry.name)
        pemn.delete_task(model, f"{entry.name}.initial")
        layers, k, m = _moved(initial, final)
        tasks[entry.name] = {"moved": round(m / k, 4), "layers": layers}
        kept, moved = kept + k, moved + m
    return {"run": str(run), "keep": cfg.keep, "moved": round(moved / kept, 4), "chance": round(1 - cfg.keep, 4),
            "tasks": tasks}


def drift(run: Path) -> dict:
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    result = run / "result.json"
    spec = json.loads(result.read_text()).get("tasks") if result.exists() else None
    if isinstance(spec, str):
        return task_drift(run, cfg, spec)
    info = dataset_info(cfg.dataset, cfg.data_dir)
    initial = {n: mw.current_mask() for n, mw in pemn.masked_weights(_build_model(cfg, info)).items()}
    final = {n: mw.current_mask() for n, mw in pemn.masked_weights(pemn.load(run / "model.pemn",
                                                                            _fresh_model(cfg, info))).items()}
    layers, kept, moved = _moved(initial, final)
    return {"run": str(run), "keep": cfg.keep, "moved": round(moved / kept, 4), "chance": round(1 - cfg.keep, 4),
            "layers": layers}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(json.dumps([drift(Path(p)) for p in sys.argv[1:]], indent=2))
