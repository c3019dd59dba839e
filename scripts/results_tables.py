"""Markdown tables for RESULTS.md from `pemn sweep` folders (their sweep.csv), in the paper's layout.

    python scripts/results_tables.py sweeps/mnist_lenet5 [sweeps/... ...]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def label(row: dict[str, str]) -> str:
    if row["strategy"] == "dense":
        if row["prune"]:
            return f"{row['prune']} pruning {float(row['compression']) * 100:.0f} %"
        return "dense"
    name = {"mask": "mask", "one_layer": "one-layer", "mp": "MP", "rp": "RP"}[row["strategy"]]
    if row["strategy"] == "rp":
        name += f" {float(row['ratio']):.0e}".replace("e-0", "e-")
    extras = []
    if row["keep"] and float(row["keep"]) != 0.5:
        extras.append(f"keep {float(row['keep']):g}")
    for flag in ("--scope global", "--rescale", "--init signed_constant", "--coding entropy", "--extras-dtype float16"):
        if flag in row["command"]:
            extras.append(flag.removeprefix("--").replace(" ", "="))
    return name + (f" ({', '.join(extras)})" if extras else "")


def fmt_ratio(value: str, pct: bool) -> str:
    if not value:
        return "–"
    v = float(value)
    return f"{v * 100:.2f} %" if pct else f"{v:.1f}×"


def table(folder: Path) -> str:
    rows = list(csv.DictReader((folder / "sweep.csv").open()))
    out = [f"`{folder}`", "",
           "| setting | best-epoch acc | final-epoch acc | file bytes | paper ratio | honest ratio | seconds |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {label(r)} | {float(r['best_acc']):.2f} | {float(r['final_acc']):.2f} | "
                   f"{int(r['artifact_bytes']):,} | {fmt_ratio(r['paper_ratio'], True)} | "
                   f"{fmt_ratio(r['honest_ratio'], False)} | {float(r['seconds']):.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    print("\n\n".join(table(Path(p)) for p in sys.argv[1:]))
