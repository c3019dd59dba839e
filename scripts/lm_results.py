"""Language-model runs (``pemn train --dataset text``): a Markdown table and validation loss against file bytes.

    python scripts/lm_results.py OUT.png RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a ``--out`` folder of a finished run (``result.json`` and ``config.json``; ``RUN_DIR.cmd``, when
present, holds its exact command and is printed below the table). The table gives the
validation loss (nats/char over the whole validation split), bits/char, the saved file's bytes and the dense fp32
model's bytes divided by them; the dense fp32 reference is the dense run among the folders of the same model with
the most steps (or, without one, the summary's own ``dense_bytes``). The plot marks the dense, pruned and PEMN runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _load(folder: Path) -> dict:
    result = json.loads((folder / "result.json").read_text())
    cfg = json.loads((folder / "config.json").read_text())
    nbytes = result.get("artifact_bytes") or result.get("weights_bytes")
    label = cfg["strategy"]
    if cfg["strategy"] == "rp":
        ratio = cfg["ratio"] if cfg.get("ratio") is not None else 1e-3
        label += " " + f"{ratio:.0e}".replace("e-0", "e-")
    if cfg.get("prune"):
        label = f"{cfg['prune']} prune {cfg['compression']:g}"
    if cfg["strategy"] != "dense" and cfg.get("keep", 0.5) != 0.5:
        label += f" keep {cfg['keep']:g}"
    if cfg.get("coding") == "entropy":
        label += " entropy"
    return {"folder": folder, "label": label, "steps": result.get("steps_run"), "val_loss": result["val_loss"],
            "bpc": result["bits_per_char"], "bytes": nbytes, "dense_bytes": result["summary"].get("dense_bytes"),
            "strategy": cfg["strategy"], "prune": cfg.get("prune"), "model": cfg["model"]}


def table(rows: list[dict]) -> str:
    dense = {}
    for r in rows:
        if r["strategy"] == "dense" and not r["prune"] and (
                r["model"] not in dense or r["steps"] > dense[r["model"]]["steps"]):
            dense[r["model"]] = r
    lines = ["| run | folder | steps | val loss (nats/char) | bits/char | file bytes | dense fp32 / file |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = dense[r["model"]]["bytes"] if r["model"] in dense else r["dense_bytes"]
        lines.append(f"| {r['label']} | `{r['folder'].name}` | {r['steps']:,} | {r['val_loss']:.4f} | {r['bpc']:.4f} | "
                     f"{r['bytes']:,} | "
                     f"{ref / r['bytes']:.1f}× |")
    return "\n".join(lines)


def plot(rows: list[dict], out: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for steps, color in ((2000, "tab:blue"), (1000, "tab:orange")):
        for r in (r for r in rows if r["steps"] == steps):
            marker = "s" if r["strategy"] == "dense" and not r["prune"] else ("x" if r["prune"] else "o")
            ax.scatter(r["bytes"], r["val_loss"], marker=marker, color=color)
            ax.annotate(r["label"], (r["bytes"], r["val_loss"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        ax.scatter([], [], color=color, label=f"{steps:,} steps")
    ax.axhline(1.88, color="gray", lw=0.8, ls="--", label="nanoGPT dense, 2,000 steps (1.88)")
    ax.set_xscale("log")
    ax.set_xlabel("model file bytes (log scale)")
    ax.set_ylabel("validation loss (nats/char, lower is better)")
    ax.set_title("gpt-128-4 on Tiny Shakespeare: square dense, x pruned, o PEMN")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(out: str, folders: list[str]) -> None:
    rows = [_load(Path(f)) for f in folders if (Path(f) / "result.json").is_file()]
    print(table(rows))
    print("\n```bash")
    for r in rows:  # the exact command of each row, written next to its folder by the grid script
        cmd = r["folder"].with_name(r["folder"].name + ".cmd")
        if cmd.is_file():
            print(cmd.read_text().strip())
    print("```")
    plot(rows, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
