"""Accuracy against file bytes from a JSON list of points (runs that are not one sweep folder): the Pareto fronts.

    python scripts/pareto_points.py OUT.png POINTS.json

POINTS.json: ``[{"series": "paper setting", "label": "RP 1e-2", "bytes": 13783, "acc": 49.35}, ...]``; each
series is drawn in its own colour with its Pareto front (the points no other point of the series beats in both).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def front(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    out, best = [], float("-inf")
    for x, y in sorted(points):
        if y > best:
            out.append((x, y))
            best = y
    return out


def main(out: str, points_file: str) -> None:
    points = json.loads(Path(points_file).read_text())
    fig, ax = plt.subplots(figsize=(8, 5))
    for series in dict.fromkeys(p["series"] for p in points):
        pts = [p for p in points if p["series"] == series]
        sc = ax.scatter([p["bytes"] for p in pts], [p["acc"] for p in pts], label=series)
        f = front([(p["bytes"], p["acc"]) for p in pts])
        ax.step([x for x, _ in f], [y for _, y in f], where="post", color=sc.get_facecolor()[0], alpha=0.6)
        for p in pts:
            ax.annotate(p["label"], (p["bytes"], p["acc"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("file bytes (model.pemn / sparse safetensors)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
