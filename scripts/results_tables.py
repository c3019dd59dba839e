"""Markdown tables for RESULTS.md from `pemn sweep` folders (their sweep.csv), in the paper's layout, or with
``--equal-bytes`` the equal-bytes layout (accuracy of the saved file, bytes, bits per weight of the whole file,
Pareto front, best baseline of at most the bytes of each PEMN row; for a language model by validation loss).

    python scripts/results_tables.py [--equal-bytes] sweeps/mnist_lenet5 [sweeps/... ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from pemn.training.sweep import SweepPoint, annotate_rows, fill_from_run_folders, front_metric, read_rows


def label(row: dict[str, str]) -> str:
    if row.get("quantize") or row.get("width"):
        return SweepPoint(row["strategy"], ratio=float(row["ratio"]) if row["ratio"] else None,
                          prune=row["prune"] or None,
                          compression=float(row["compression"]) if row["compression"] else None,
                          quantize=row.get("quantize") or None,
                          width=float(row["width"]) if row.get("width") else None).label() + (
            f" ({row['model']})" if row.get("model") else "")
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
    for flag in ("--scope global", "--rescale", "--init signed_constant", "--coding entropy", "--extras-dtype float16",
                 "--extras-dtype int8", "--fold-norms", "--prototype seed"):
        if flag in row["command"]:
            extras.append(flag.removeprefix("--").replace(" ", "="))
    return name + (f" ({', '.join(extras)})" if extras else "")


def fmt_ratio(value: str, pct: bool) -> str:
    if not value:
        return "–"
    v = float(value)
    return f"{v * 100:.2f} %" if pct else f"{v:.1f}×"


def table(folder: Path) -> str:
    rows = read_rows(folder / "sweep.csv")
    out = [f"`{folder}`", "",
           "| setting | best-epoch acc | final-epoch acc | file bytes | paper ratio | honest ratio | seconds |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {label(r)} | {float(r['best_acc']):.2f} | {float(r['final_acc']):.2f} | "
                   f"{int(r['bytes']):,} | {fmt_ratio(r['paper_ratio'], True)} | "
                   f"{fmt_ratio(r['honest_ratio'], False)} | {float(r['seconds']):.0f} |")
    return "\n".join(out)


def equal_bytes_table(folders: list[Path]) -> str:
    """One table over the rows of all ``folders`` (their front and baselines recomputed over the union by the
    workload's primary metric: the saved file's accuracy, or a language model's validation loss), sorted by bytes.
    A language model's table has a validation loss column and the baseline's loss and the loss difference."""
    rows = annotate_rows([r for f in folders for r in fill_from_run_folders(read_rows(f / "sweep.csv"), f)])
    lm = front_metric(rows) == "val_loss"
    if lm:
        out = ["| setting | seed | next-char acc | val loss | file bytes | bits/weight | on front (loss) "
               "| best baseline ≤ bytes (by loss) | Δ loss | Δ points |",
               "|---|---|---|---|---|---|---|---|---|---|"]
    else:
        out = ["| setting | seed | accuracy (file) | file bytes | bits/weight | on front | best baseline ≤ bytes "
               "| Δ points |",
               "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (float(r["bytes"] or 0), r["seed"] or "")):
        if r.get("baseline"):
            what = (f"{float(r['baseline_val_loss']):.4f}, {float(r['baseline_acc']):.2f}" if lm
                    else f"{float(r['baseline_acc']):.2f}")
            base = f"{r['baseline']} ({int(r['baseline_bytes']):,} B, {what})"
        else:
            base = "–" if SweepPoint(r["strategy"]).kind == "pemn" and not r["prune"] and not r.get("quantize") else ""
        delta = f"{float(r['acc_vs_baseline']):+.2f}" if r.get("acc_vs_baseline") not in (None, "") else ""
        bits = f"{float(r['bits_per_weight']):.2f}" if r.get("bits_per_weight") else ""
        front = "**yes**" if r["on_front"] else "no"
        if lm:
            loss = f"{float(r['val_loss']):.4f}" if r.get("val_loss") not in (None, "") else ""
            dloss = (f"{float(r['val_loss_vs_baseline']):+.4f}" if r.get("val_loss_vs_baseline") not in (None, "")
                     else "")
            out.append(f"| {label(r)} | {r['seed']} | {float(r['final_acc']):.2f} | {loss} | "
                       f"{int(float(r['bytes'])):,} | {bits} | {front} | {base} | {dloss} | {delta} |")
        else:
            out.append(f"| {label(r)} | {r['seed']} | {float(r['final_acc']):.2f} | {int(float(r['bytes'])):,} | "
                       f"{bits} | {front} | {base} | {delta} |")
    return "\n".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--equal-bytes":
        print(equal_bytes_table([Path(p) for p in args[1:]]))
    else:
        print("\n\n".join(table(Path(p)) for p in args))
