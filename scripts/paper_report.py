"""The report of scripts/reproduce_paper.sh: every setting of a `pemn sweep` folder beside the PEMN paper's number
(ConvMixer-256/8, CIFAR-10), as a Markdown table and a figure.

    python scripts/paper_report.py OUT        # writes OUT/paper_table.md and OUT/paper_figure.png

The paper's values are those plotted in its figures (read from the vector files, exact to 0.01; see the project's
paper notes): `plot_convmixer_d8` (representational capacity) and `_plot_cifar10_convmixer` depth 8 (compression).
Accuracies are the best test epoch, as the paper reports them; the final epoch is listed too.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

#: ConvMixer-256/8 on CIFAR-10, test accuracy (%) as plotted in the paper.
PAPER_CAPACITY = {"dense": 94.61, "mask": 90.50, "one_layer": 90.46, "mp": 90.65, "rp 0.1": 90.64, "rp 0.01": 90.72,
                  "rp 0.001": 90.19, "rp 0.0001": 87.73, "rp 1e-05": 82.06}
PAPER_PRUNING = {("random", 0.9): 86.89, ("random", 0.92): 85.43, ("random", 0.94): 83.42, ("random", 0.96): 79.76,
                 ("magnitude", 0.9): 86.42, ("magnitude", 0.92): 85.06, ("magnitude", 0.94): 83.68,
                 ("magnitude", 0.96): 79.62}
#: The size compression ratio (%) at which the paper plots RP 1e-1 / 1e-2 / 1e-3 (depth 8).
PAPER_CR = {"rp 0.1": 95.75, "rp 0.01": 96.76, "rp 0.001": 96.86}
LABELS = {"dense": "Dense", "mask": "Mask", "one_layer": "One-layer", "mp": "MP"}
TABLE_NAME, FIGURE_NAME = "paper_table.md", "paper_figure.png"


def _f(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def key_of(row: dict[str, str]) -> str | tuple[str, float]:
    """``"dense"``, ``"mask"``, ``"rp 0.001"``... or ``("random", 0.9)`` for a pruning baseline."""
    if row["strategy"] == "dense":
        return (row["prune"], round(float(row["compression"]), 6)) if row.get("prune") else "dense"
    if row["strategy"] == "rp":
        return f"rp {float(row['ratio']):g}"
    return row["strategy"]


def label(key: str | tuple[str, float]) -> str:
    if isinstance(key, tuple):
        return f"{'Random' if key[0] == 'random' else 'Minimum (magnitude)'} pruning {key[1] * 100:g} %"
    if key.startswith("rp "):
        return "RP " + f"{float(key[3:]):.0e}".replace("e-0", "e-")
    return LABELS.get(key, key)


def paper_value(key: str | tuple[str, float]) -> float | None:
    return PAPER_PRUNING.get(key) if isinstance(key, tuple) else PAPER_CAPACITY.get(key)


def read(folder: Path) -> dict[str | tuple[str, float], dict[str, str]]:
    csv_path = folder / "sweep.csv"
    if not csv_path.is_file():
        raise SystemExit(f"paper_report: error: {csv_path} not found; run scripts/reproduce_paper.sh first")
    with csv_path.open(newline="") as f:
        return {key_of(row): row for row in csv.DictReader(f)}


ORDER: list[str | tuple[str, float]] = [*PAPER_CAPACITY, *PAPER_PRUNING]


def table(rows: dict[str | tuple[str, float], dict[str, str]], folder: Path) -> str:
    out = [f"ConvMixer-256/8, CIFAR-10: `{folder}` beside the paper (test accuracy %, best epoch).", "",
           "| setting | paper | this run (best) | this run (final) | best − paper | paper's CR % | CR % | minutes |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    seconds = 0.0
    for key in ORDER + [k for k in rows if k not in ORDER]:
        row, paper = rows.get(key), paper_value(key)
        best, final = (_f(row["best_acc"]), _f(row["final_acc"])) if row else (None, None)
        cr = _f(row.get("paper_ratio")) if row else None
        if isinstance(key, tuple):
            cr = key[1]
        secs = _f(row.get("seconds")) if row else None
        seconds += secs or 0.0
        paper_x = (f"{PAPER_CR[key]:.2f}" if key in PAPER_CR
                   else f"{key[1] * 100:g}" if isinstance(key, tuple) else "–")
        cells = [label(key), f"{paper:.2f}" if paper is not None else "–",
                 f"{best:.2f}" if best is not None else "not run", f"{final:.2f}" if final is not None else "–",
                 f"{best - paper:+.2f}" if best is not None and paper is not None else "–",
                 paper_x,
                 f"{cr * 100:.2f}" if cr is not None else "–", f"{secs / 60:.1f}" if secs is not None else "–"]
        out.append("| " + " | ".join(cells) + " |")
    done = sum(1 for k in ORDER if k in rows)
    out += ["", f"{done} of {len(ORDER)} paper settings finished; training time of the finished runs: "
            f"{seconds / 3600:.2f} device-hours (the runs' own timings).",
            "Pruning baselines are plotted at their pruned fraction (the paper's x), PEMN at its size compression "
            "ratio 1 − (N + 32 P) / (32 N)."]
    if rows:
        out += ["", "Command (one run):", "", f"    {next(iter(rows.values()))['command']}"]
    return "\n".join(out) + "\n"


def figure(rows: dict[str | tuple[str, float], dict[str, str]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    keys = list(PAPER_CAPACITY)
    xs = range(len(keys))
    ax1.plot(xs, [PAPER_CAPACITY[k] for k in keys], "s--", color="gray", label="paper")
    ours = [(i, _f(rows[k]["best_acc"])) for i, k in enumerate(keys) if k in rows]
    if ours:
        ax1.plot([i for i, _ in ours], [a for _, a in ours], "o-", color="C0", label="this run")
    ax1.set_xticks(list(xs), [label(k) for k in keys], rotation=45, ha="right", fontsize=8)
    ax1.set_ylabel("Test accuracy (%), best epoch")
    ax1.set_title("Representational capacity (ConvMixer-256/8)")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    for method, marker, color in (("random", "x", "C1"), ("magnitude", "D", "C2")):
        comps = sorted(c for m, c in PAPER_PRUNING if m == method)
        name = label((method, 0.0)).rsplit(" pruning", 1)[0]
        ax2.plot([c * 100 for c in comps], [PAPER_PRUNING[(method, c)] for c in comps], linestyle=":",
                 marker=marker, color=color, alpha=0.5, label=f"{name} (paper)")
        run = [(c * 100, _f(rows[(method, c)]["best_acc"])) for c in comps if (method, c) in rows]
        if run:
            ax2.plot(*zip(*run, strict=True), linestyle="-", marker=marker, color=color, label=f"{name} (this run)")
    rp = list(PAPER_CR)
    ax2.plot([PAPER_CR[k] for k in rp], [PAPER_CAPACITY[k] for k in rp], "o:", color="C0", alpha=0.5,
             label="PEMN RP (paper)")
    run = [(100 * _f(rows[k]["paper_ratio"]), _f(rows[k]["best_acc"])) for k in rp
           if k in rows and _f(rows[k].get("paper_ratio")) is not None]
    if run:
        ax2.plot(*zip(*run, strict=True), "o-", color="C0", label="PEMN RP (this run)")
    ax2.axhline(PAPER_CAPACITY["dense"], color="gray", linestyle=":", label="Dense (paper)")
    if "dense" in rows:
        ax2.axhline(float(rows["dense"]["best_acc"]), color="black", linestyle="-", linewidth=1,
                    label="Dense (this run)")
    ax2.set_xlabel("Size compression ratio (%)")
    ax2.set_title("Compression (CIFAR-10)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    folder = Path(args[0])
    rows = read(folder)
    text = table(rows, folder)
    (folder / TABLE_NAME).write_text(text)
    print(text)
    try:
        print(f"paper_report: wrote {folder / TABLE_NAME} and {figure(rows, folder / FIGURE_NAME)}")
    except ImportError as e:
        print(f"paper_report: wrote {folder / TABLE_NAME}; no figure (matplotlib is not installed: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
