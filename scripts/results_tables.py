"""Markdown tables for RESULTS.md from `pemn sweep` folders (their sweep.csv), in the paper's layout, or with
``--equal-bytes`` the equal-bytes layout (accuracy of the saved file, bytes, bits per weight of the whole file,
Pareto front, best baseline of at most the bytes of each PEMN row; for a language model by validation loss), or with
``--equal-bytes-seeds`` the same over seeds: one row per setting with the mean ± standard deviation of its seeds,
its mean bytes (and range), and the front and best baselines of those means.

    python scripts/results_tables.py [--equal-bytes | --equal-bytes-seeds] sweeps/mnist_lenet5 [sweeps/... ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from pemn.training.sweep import (
    KEY_COLUMNS,
    SweepPoint,
    annotate_rows,
    fill_from_run_folders,
    front_metric,
    read_rows,
    summarize_seeds,
)


def label(row: dict[str, str]) -> str:
    if row.get("quantize") or (row.get("width") and row["strategy"] == "dense"):
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
    for flag in ("--scope global", "--rescale", "--init signed_constant", "--coding entropy", "--coding context",
                 "--extras-dtype float16", "--extras-dtype int8", "--fold-norms", "--prototype seed"):
        if flag in row["command"]:
            extras.append(flag.removeprefix("--").replace(" ", "="))
    width = ""
    if row.get("width"):
        width = f" ×{float(row['width']):g}" + (f" ({row['model']})" if row.get("model") else "")
    return name + (f" ({', '.join(extras)})" if extras else "") + width


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


def _setting(row: dict[str, str]) -> tuple[str, ...]:
    return tuple(str(row.get(k) or "") for k in KEY_COLUMNS if k != "seed")


def equal_bytes_seeds_table(folders: list[Path]) -> str:
    """One row per setting of all ``folders`` (its seeds pooled): mean ± sample standard deviation of the saved
    files' accuracy (a language model: also of the validation loss), the mean file bytes with their range, the
    mean bits per weight, and the front and best baseline of at most its bytes computed over the settings' means
    (:func:`annotate_rows` of one row per setting), sorted by mean bytes."""
    raw = [r for f in folders for r in fill_from_run_folders(read_rows(f / "sweep.csv"), f)]
    sizes: dict[tuple[str, ...], list[float]] = {}
    for r in raw:
        if r.get("bytes"):
            sizes.setdefault(_setting(r), []).append(float(r["bytes"]))
    means = []
    for s in summarize_seeds(raw):
        row = {k: ("" if s.get(k) is None else str(s[k])) for k in KEY_COLUMNS if k != "seed"}
        row.update(seed="", model=s.get("model") or "", command=s.get("command") or "", final_acc=s["final_acc_mean"],
                   val_loss=s.get("val_loss_mean"),
                   bytes=None if s["bytes"] is None else round(s["bytes"]), bits_per_weight=s["bits_per_weight"],
                   acc_std=s["final_acc_std"], loss_std=s.get("val_loss_std"), seeds=s["seeds"])
        means.append(row)
    rows = annotate_rows(means)
    lm = front_metric(rows) == "val_loss"
    head = "| setting | seeds | accuracy (file), mean ± std |" + (" val loss |" if lm else "")
    tail = " best baseline ≤ bytes (by loss) | Δ loss | Δ points |" if lm else " best baseline ≤ bytes | Δ points |"
    out = [head + " file bytes, mean (range) | bits/weight | on front |" + tail, "|---" * (8 + 2 * lm) + "|"]
    for r in sorted(rows, key=lambda r: float(r["bytes"] or 0)):
        sz = sizes.get(_setting(r), [])
        span = f" ({int(min(sz)):,}–{int(max(sz)):,})" if sz and min(sz) != max(sz) else ""
        what = (f"{float(r['baseline_val_loss']):.4f}, {float(r['baseline_acc']):.2f}" if lm and r.get("baseline")
                else f"{float(r['baseline_acc']):.2f}" if r.get("baseline") else "")
        base = (f"{r['baseline']} ({int(r['baseline_bytes']):,} B, {what})"
                if r.get("baseline") else ("–" if SweepPoint(r["strategy"]).kind == "pemn" and not r["prune"]
                                           and not r.get("quantize") else ""))
        delta = f"{float(r['acc_vs_baseline']):+.2f}" if r.get("acc_vs_baseline") is not None else ""
        bits = f"{float(r['bits_per_weight']):.2f}" if r.get("bits_per_weight") is not None else ""
        loss = dloss = ""
        if lm:
            loss = (f" {float(r['val_loss']):.4f} ± {float(r['loss_std']):.4f} |" if r.get("val_loss") is not None
                    else " |")
            dloss = (f" {float(r['val_loss_vs_baseline']):+.4f} |" if r.get("val_loss_vs_baseline") is not None
                     else " |")
        acc = f"{float(r['final_acc']):.2f} ± {float(r['acc_std']):.2f}"
        out.append(f"| {label(r)} | {len(r['seeds'].split())} | {acc} |{loss} {round(float(r['bytes'])):,}{span} | "
                   f"{bits} | "
                   f"{'**yes**' if r['on_front'] else 'no'} | {base} |{dloss} {delta} |")
    return "\n".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--equal-bytes":
        print(equal_bytes_table([Path(p) for p in args[1:]]))
    elif args and args[0] == "--equal-bytes-seeds":
        print(equal_bytes_seeds_table([Path(p) for p in args[1:]]))
    else:
        print("\n\n".join(table(Path(p)) for p in args))
