"""How far trained masks moved from their initial top-k: the test of "the scores move too slowly".

    python scripts/mask_drift.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a `pemn train` output folder of a PEMN strategy (config.json + model.pemn). The run's model is
rebuilt exactly as training built it (same seed, same conversion, so the same initial scores), and its initial
masks (the top-k of the initial scores) are compared with the saved ones. Prints one JSON document: per run and
per layer, ``moved`` = the fraction of the kept weights that are not in the initial mask (0: the mask never left
its initialisation; about 1 - keep: as different as a fresh random mask).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pemn
from pemn.training.config import TrainConfig
from pemn.training.data import dataset_info
from pemn.training.engine import _build_model, _fresh_model


def drift(run: Path) -> dict:
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    info = dataset_info(cfg.dataset, cfg.data_dir)
    initial = {n: mw.current_mask() for n, mw in pemn.masked_weights(_build_model(cfg, info)).items()}
    final = {n: mw.current_mask() for n, mw in pemn.masked_weights(pemn.load(run / "model.pemn",
                                                                            _fresh_model(cfg, info))).items()}
    layers = {}
    kept = moved = 0
    for name, m0 in initial.items():
        m1 = final[name]
        k, stay = int(m1.sum()), int((m0 & m1).sum())
        layers[name] = round(1 - stay / k, 4)
        kept, moved = kept + k, moved + k - stay
    return {"run": str(run), "keep": cfg.keep, "moved": round(moved / kept, 4), "chance": round(1 - cfg.keep, 4),
            "layers": layers}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(json.dumps([drift(Path(p)) for p in sys.argv[1:]], indent=2))
