"""Accuracy against artifact bytes (not against keep) for several `pemn sweep` folders: the Pareto front.

    python scripts/pareto_plot.py OUT.png SWEEP_DIR [SWEEP_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from results_tables import label

from pemn.training.sweep import read_rows


def main(out: str, folders: list[str]) -> None:
    rows = [r for f in folders for r in read_rows(Path(f) / "sweep.csv")]
    fig, ax = plt.subplots(figsize=(8, 5))
    points = []
    for r in rows:
        x, y = int(r["bytes"]), float(r["best_acc"])
        marker = "x" if r["prune"] else ("s" if r["strategy"] == "dense" else "o")
        ax.scatter(x, y, marker=marker, color="tab:orange" if r["prune"] else "tab:blue")
        ax.annotate(label(r), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        points.append((x, y))
    front, best = [], -1.0
    for x, y in sorted(points):
        if y > best:
            front.append((x, y))
            best = y
    ax.plot(*zip(*front, strict=True), color="tab:green", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("artifact file bytes (log scale)")
    ax.set_ylabel("test accuracy (%), best epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
