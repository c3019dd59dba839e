"""scripts/reproduce_paper.sh (the one-command reproduction of the paper's ConvMixer-256/8 CIFAR-10 figures) and
scripts/paper_report.py: the plan, the report beside the paper's numbers, and an end-to-end toy-size run on CPU."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "reproduce_paper.sh"
paper_report = load_script("scripts/paper_report.py")

GRID = {"dense", "mask", "one_layer", "mp", "rp 0.1", "rp 0.01", "rp 0.001", "rp 0.0001", "rp 1e-05",
        *((m, c) for m in ("random", "magnitude") for c in (0.9, 0.92, 0.94, 0.96))}


def _run(env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env={**os.environ, "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_plan_is_the_papers_grid() -> None:
    out = _run({"DRY_RUN": "1"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "17 runs of convmixer-256-8 on cifar10, 100 epochs" in text and "GPU-hours" in text
    command = text.splitlines()[-1]
    for part in ("sweep", "--recipe convmixer", "--strategies mask one_layer mp rp",
                 "--ratios 1e-1 1e-2 1e-3 1e-4 1e-5", "--keeps 0.5", "--dense", "--prune random magnitude",
                 "--compressions 0.9 0.92 0.94 0.96", "amp=true", "download=true"):
        assert part in command, part
    assert "amp=false" in _run({"DRY_RUN": "1", "DEVICE": "cpu"}).stdout


def test_report_beside_the_papers_numbers(tmp_path: Path) -> None:
    rows = [{"strategy": "rp", "ratio": "0.001", "keep": "0.5", "prune": "", "compression": "", "best_acc": "90.0",
             "final_acc": "89.5", "paper_ratio": "0.96859", "seconds": "600", "command": "pemn train ..."},
            {"strategy": "dense", "ratio": "", "keep": "", "prune": "random", "compression": "0.96",
             "best_acc": "80.00", "final_acc": "79.0", "paper_ratio": "", "seconds": "1200", "command": "x"}]
    with (tmp_path / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert paper_report.main([str(tmp_path)]) == 0
    table = (tmp_path / "paper_table.md").read_text()
    assert "| RP 1e-3 | 90.19 | 90.00 | 89.50 | -0.19 | 96.86 | 96.86 | 10.0 |" in table
    assert "| Random pruning 96 % | 79.76 | 80.00 | 79.00 | +0.24 | 96 | 96.00 | 20.0 |" in table
    assert "| Dense | 94.61 | not run |" in table and "2 of 17 paper settings finished" in table
    assert "0.50 device-hours" in table
    assert (tmp_path / "paper_figure.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="not found"):
        paper_report.main([str(tmp_path / "missing")])


@pytest.mark.slow
def test_toy_size_end_to_end(tmp_path: Path) -> None:
    """The whole command at toy size on CPU (ConvMixer-16/1 on digits, 1 epoch of 64 images, the convmixer
    recipe): all 17 runs, sweep.csv/sweep.png, the report's table and figure."""
    out = tmp_path / "paper"
    res = _run({"OUT": str(out), "DEVICE": "cpu", "EPOCHS": "1", "MODEL": "convmixer-16-1", "DATASET": "digits",
                "EXTRA": "train_subset=64 batch_size=32", "DATA_DIR": str(tmp_path / "data")})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = paper_report.read(out)
    assert set(rows) == GRID
    assert all(float(r["best_acc"]) >= 0 for r in rows.values())
    assert all("--recipe convmixer" in r["command"] and "--no-amp" in r["command"] for r in rows.values())
    for name in ("sweep.csv", "sweep.png", "paper_table.md", "paper_figure.png"):
        assert (out / name).is_file(), name
    assert "17 of 17 paper settings finished" in (out / "paper_table.md").read_text()
    again = _run({"OUT": str(out), "DEVICE": "cpu", "EPOCHS": "1", "MODEL": "convmixer-16-1", "DATASET": "digits",
                  "EXTRA": "train_subset=64 batch_size=32", "DATA_DIR": str(tmp_path / "data")})
    assert again.returncode == 0 and "17 of 17 runs already in" in again.stdout  # a re-run continues
