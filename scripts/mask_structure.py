"""Do trained masks have structure a better coder could use? Bits per weight of a file's masks under three models.

    python scripts/mask_structure.py RUN_DIR/model.pemn [MORE.pemn ...]

For every masked weight of each artifact, the ideal code length (bits, the entropy bound an arithmetic coder
reaches within a few bytes) of its mask under:

- ``layer``: one keep probability per layer, what ``coding="entropy"`` stores (``n * H(kept / n)``);
- ``row``: one probability per output channel (row of ``shape[0]``), each row's count stored too
  (``log2(row length + 1)`` bits per row);
- ``column``: one probability per input position (the other dimensions flattened), counts stored likewise;
- ``context``: not an ideal but the real thing: the bytes ``coding="context"`` writes
  (:func:`pemn.coding.encode_context`, which picks per layer among order 0, per-row counts, and per-row counts
  with the column's share in the rows before it), with the model it picked per layer.

Prints one JSON document: per file, per layer and in total, mask bits per weight for each model
(``mask_bits_per_weight``: the masks only, not the whole file) and the gain of the better one over ``layer``. A
structured mask (whole channels kept or dropped) shows as ``row`` or ``column`` well below ``layer``; a mask with no
such structure shows them at or above it (the stored counts cost more than they save).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from pemn import coding as mask_coding
from pemn.artifact import _masks, read


def entropy_bits(kept: np.ndarray, n: np.ndarray) -> float:
    """Sum over groups of ``n * H(kept / n)`` in bits."""
    kept = kept.astype(np.float64)
    n = n.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, kept / n, 0.0)
        h = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0))
    return float((n * h).sum())


def layer_report(mask: np.ndarray) -> dict[str, float]:
    rows = mask.reshape(mask.shape[0], -1)
    n = rows.size
    layer = entropy_bits(np.array([rows.sum()]), np.array([n]))
    per_row = entropy_bits(rows.sum(1), np.full(rows.shape[0], rows.shape[1]))
    per_row += rows.shape[0] * math.log2(rows.shape[1] + 1)
    per_col = entropy_bits(rows.sum(0), np.full(rows.shape[1], rows.shape[0]))
    per_col += rows.shape[1] * math.log2(rows.shape[0] + 1)
    return {"weights": n, "keep": float(rows.mean()), "layer": layer / n, "row": per_row / n, "column": per_col / n}


def file_report(path: str) -> dict[str, object]:
    art = read(path)
    packed = _masks(art, f"{path}: ")
    layers = {}
    totals = {"layer": 0.0, "row": 0.0, "column": 0.0, "context": 0.0}
    weights = 0
    for entry in art.manifest:
        shape = tuple(entry["shape"])
        mask = mask_coding.unpack_bits(packed[entry["name"]], math.prod(shape)).reshape(shape)
        rep = layer_report(mask)
        payload, model = mask_coding.encode_context(mask.reshape(-1), entry["kept"], shape[0])
        rep["context"] = 8 * payload.size / rep["weights"]
        layers[entry["name"]] = {k: round(v, 4) if isinstance(v, float) else v for k, v in rep.items()}
        layers[entry["name"]]["context_model"] = model
        for k in totals:
            totals[k] += rep[k] * rep["weights"]
        weights += rep["weights"]
    bits = {k: round(v / weights, 4) for k, v in totals.items()}
    best = min(("row", "column"), key=lambda k: bits[k])
    return {"file": path, "coding": art.coding, "weights": weights, "mask_bits_per_weight": bits,
            "best_structured": best, "saving_vs_layer": round(1 - bits[best] / bits["layer"], 4), "layers": layers}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    reports = [file_report(str(Path(p))) for p in argv]
    print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
