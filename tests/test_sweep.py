"""Sweeps: the grid, the resumable CSV, the figure, and one real (tiny) sweep through the CLI."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cli_run import run
from pemn.training.config import TrainConfig
from pemn.training.sweep import (
    CSV_COLUMNS,
    SweepPoint,
    build_grid,
    plot_sweep,
    read_rows,
    resolve_points,
    run_sweep,
    sweep_figure,
    train_command,
)


def test_grid_combinations() -> None:
    grid = build_grid()
    names = [p.name for p in grid]
    assert names[0] == "dense"
    # mask, one_layer, mp at keep 0.5; rp at 3 ratios; 2 pruning methods x 4 compressions
    assert len(grid) == 1 + 3 + 3 + 8
    assert "rp-r0.01-k0.5" in names and "one-layer-k0.5" in names and "prune-magnitude-c0.92" in names
    assert len(set(names)) == len(names)
    grid = build_grid(strategies=["mp", "rp"], ratios=[0.1], keeps=[0.3, 0.5], dense=False, prune=[])
    assert [p.overrides() for p in grid] == [
        {"strategy": "mp", "keep": 0.3}, {"strategy": "mp", "keep": 0.5},
        {"strategy": "rp", "ratio": 0.1, "keep": 0.3}, {"strategy": "rp", "ratio": 0.1, "keep": 0.5},
    ]
    assert SweepPoint("rp", ratio=0.01).label() == "RP 1e-2"
    with pytest.raises(ValueError, match="unknown sweep strategy"):
        build_grid(strategies=["dense"])
    with pytest.raises(ValueError, match="empty"):
        build_grid(strategies=[], dense=False, prune=[])


def test_train_command_reproduces_the_run() -> None:
    cmd = train_command({"model": "tiny-cnn", "strategy": "rp", "ratio": 0.01, "progress": False,
                         "targets": ["Conv2d", "Linear"], "out": "runs/a b"}, recipe="fast")
    assert cmd == ("pemn train --recipe fast --model tiny-cnn --strategy rp --ratio 0.01 --no-progress "
                   "--targets Conv2d Linear --out 'runs/a b'")


def _fake_train(calls: list[Any]):
    def train(cfg: Any) -> SimpleNamespace:
        calls.append(cfg)
        ratio = getattr(cfg, "ratio", None) or 0.0
        return SimpleNamespace(best_acc=50.0 + 100 * ratio, final_acc=49.0, artifact_bytes=1234, seconds=0.5,
                               summary={"paper_ratio": 0.9 - ratio, "honest_ratio": 3.0})
    return train


def test_csv_is_appended_per_run_and_resumed(tmp_path: Path) -> None:
    grid = build_grid(strategies=["rp"], ratios=[0.1, 0.01], dense=True, prune=["random"], compressions=[0.9])
    base = {"model": "tiny-cnn", "dataset": "digits", "epochs": 1}
    calls: list[Any] = []
    report = run_sweep(grid[:2], tmp_path, base, log=None, plot=False, train_fn=_fake_train(calls))
    assert len(calls) == 2 and len(report.rows) == 2
    rows = read_rows(tmp_path / "sweep.csv")
    assert [r["strategy"] for r in rows] == ["dense", "rp"]
    assert rows[1]["command"].startswith("pemn train ") and "--ratio 0.1" in rows[1]["command"]
    # simulate a writer killed mid-line: the torn line is ignored and the next row starts on a fresh line
    with (tmp_path / "sweep.csv").open("a") as f:
        f.write("rp,0.01,0.5,,,7")
    calls.clear()
    report = run_sweep(grid, tmp_path, base, log=None, plot=True, train_fn=_fake_train(calls))
    assert len(report.skipped) == 2 and len(calls) == 2  # rp 0.01 and the pruning baseline
    rows = read_rows(tmp_path / "sweep.csv")
    assert len(rows) == 4
    with (tmp_path / "sweep.csv").open() as f:
        assert tuple(next(csv.reader(f))) == CSV_COLUMNS
    assert report.png is not None and report.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    calls.clear()
    report = run_sweep(grid, tmp_path, base, log=None, plot=False, train_fn=_fake_train(calls))
    assert calls == [] and len(report.skipped) == 4


def test_contradictory_grid_fails_before_training(tmp_path: Path) -> None:
    calls: list[Any] = []
    with pytest.raises(ValueError, match="mp"):
        run_sweep([SweepPoint("dense"), SweepPoint("mp", ratio=0.1)], tmp_path, {}, log=None,
                  train_fn=_fake_train(calls))
    assert calls == [] and not (tmp_path / "sweep.csv").exists()


def test_plot_from_rows(tmp_path: Path) -> None:
    rows = [
        {"strategy": "dense", "best_acc": "95"},
        {"strategy": "rp", "ratio": "0.1", "keep": "0.5", "best_acc": "90", "paper_ratio": "0.95"},
        {"strategy": "mp", "keep": "0.5", "best_acc": "92", "paper_ratio": "0.8"},
        {"strategy": "dense", "prune": "magnitude", "compression": "0.9", "best_acc": "85"},
        {"strategy": "dense", "prune": "random", "compression": "0.9", "best_acc": "80"},
    ]
    ax = sweep_figure(rows, title="tiny-cnn on digits").axes[0]
    plotted = {line.get_label(): [list(map(float, d)) for d in line.get_data()] for line in ax.get_lines()}
    assert plotted == {
        "PEMN (ours)": [[80.0, 95.0], [92.0, 90.0]],  # MP and RP on one line, sorted by paper ratio (%)
        "Minimum (magnitude) pruning": [[90.0], [85.0]],
        "Random pruning": [[90.0], [80.0]],
        "Dense": [[0.0, 1.0], [95.0, 95.0]],  # a horizontal line across the axes
    }
    assert sorted(t.get_text() for t in ax.texts) == ["MP", "RP 1e-1"] and "tiny-cnn on digits" in ax.get_title()
    xlabel = ax.get_xlabel()  # the axis says what it measures, for PEMN points and for pruning baselines
    assert "1 − (N + 32·P) / (32·N)" in xlabel and "pruning: share of weights removed" in xlabel
    png = plot_sweep(rows, tmp_path / "f.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (900, 600)  # 7.5 x 5 in at 120 dpi


def test_sweep_cli_end_to_end(tmp_path: Path) -> None:
    """A 2x1 grid (rp at two ratios, one keep) + dense on digits, 1 epoch: CSV rows, PNG, resume."""
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "tiny-cnn", "--dataset", "digits", "--strategies", "rp", "--ratios", "0.1", "0.01",
            "--keeps", "0.5", "--dense", "--prune", "--epochs", "1",
            "--set", "train_subset=200", "progress=false", "device=cpu", "--out", str(out)]
    code, stdout, err = run(argv)
    assert code == 0, err
    rows = read_rows(out / "sweep.csv")
    assert [(r["strategy"], r["ratio"]) for r in rows] == [("dense", ""), ("rp", "0.1"), ("rp", "0.01")]
    for r, (name, file) in zip(rows, [("dense", "model.safetensors"), ("rp-r0.1-k0.5", "model.pemn"),
                                      ("rp-r0.01-k0.5", "model.pemn")], strict=True):
        result = json.loads((out / name / "result.json").read_text())  # each row is its run's result, exactly
        assert (float(r["best_acc"]), float(r["final_acc"])) == (result["best_acc"], result["final_acc"])
        assert int(r["artifact_bytes"]) == (out / name / file).stat().st_size
        assert r["command"].startswith("pemn train ")
    assert 0 < float(rows[1]["paper_ratio"]) < float(rows[2]["paper_ratio"]) < 1
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"dense", "rp-r0.1-k0.5", "rp-r0.01-k0.5"}
    code, stdout, err = run(argv)
    assert code == 0, err
    assert "3 of 3 runs already" in stdout
    assert len(read_rows(out / "sweep.csv")) == 3


def test_sweep_of_one_run_says_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pemn.training.engine

    monkeypatch.setattr(pemn.training.engine, "train", _fake_train([]))
    code, stdout, err = run(["sweep", "--strategies", "rp", "--ratios", "0.1", "--no-dense", "--prune", "--no-plot",
                             "--epochs", "1", "--out", str(tmp_path)])
    assert code == 0, err
    assert "sweep: 1 run -> " in stdout and "sweep: 1 run done, 0 already in" in stdout


def test_killed_run_resumes_and_other_settings_are_refused(tmp_path: Path) -> None:
    from pemn.training.engine import TrainingInterrupted, train

    grid = build_grid(strategies=["rp"], ratios=[0.1], dense=False, prune=[])
    base = {"epochs": 2, "train_subset": 200, "progress": False, "device": "cpu"}

    def killed(cfg: Any) -> Any:
        return train(cfg, log=lambda _m: None, stop_after_epoch=1)

    with pytest.raises(TrainingInterrupted):
        run_sweep(grid, tmp_path, base, log=None, plot=False, train_fn=killed)
    assert read_rows(tmp_path / "sweep.csv") == []
    assert (tmp_path / grid[0].name / "checkpoint.safetensors").exists()
    report = run_sweep(grid, tmp_path, base, log=None, plot=False,
                       train_fn=lambda cfg: train(cfg, log=lambda _m: None))
    assert len(report.rows) == 1 and len(read_rows(tmp_path / "sweep.csv")) == 1
    assert "--resume" not in report.rows[0]["command"]
    # the same folder with other common settings would mix incomparable rows
    with pytest.raises(ValueError, match="other common settings"):
        run_sweep(grid, tmp_path, {**base, "epochs": 3}, log=None, plot=False, train_fn=_fake_train([]))
    code, _, err = run(["sweep", "--strategies", "rp", "--ratios", "0.1", "--no-dense", "--prune", "--epochs", "3",
                        "--set", "train_subset=200", "--out", str(tmp_path)])
    assert code == 2 and "other common settings" in err


def test_common_options_go_to_the_points_they_apply_to(tmp_path: Path) -> None:
    calls: list[Any] = []
    grid = build_grid(strategies=["mask", "rp"], ratios=[0.1], prune=["random"], compressions=[0.9])
    base = {"fill": "rand", "init": "signed_constant", "prune_scope": "global", "epochs": 1}
    run_sweep(grid, tmp_path, base, log=None, plot=False, train_fn=_fake_train(calls))
    by = {c.strategy + (c.prune or ""): c for c in calls}
    assert set(by) == {"dense", "mask", "rp", "denserandom"}
    assert by["dense"].init == "kaiming_normal" and by["dense"].prune_scope == "layer"
    assert by["denserandom"].prune_scope == "global" and by["denserandom"].init == "kaiming_normal"
    assert by["mask"].fill == "copy" and by["mask"].init == "signed_constant"
    assert by["rp"].fill == "rand" and by["rp"].init == "signed_constant" and by["rp"].ratio == 0.1
    assert all(c.epochs == 1 for c in calls)


@pytest.mark.parametrize(("key", "value"), [
    ("scope", "global"), ("extras_dtype", "float16"), ("rescale", True), ("exclude", ["Conv2d"]),
])
def test_every_pemn_option_skips_the_dense_baselines(tmp_path: Path, key: str, value: Any) -> None:
    """`pemn sweep --set scope=global` (or extras_dtype=...) once failed before training with the dense
    baseline in the grid: the sweep's list of PEMN-only options lacked them."""
    grid = build_grid(strategies=["rp"], ratios=[0.1], prune=["random"], compressions=[0.9])
    configs = resolve_points(grid, {key: value, "epochs": 1}, tmp_path)
    by = {c.strategy + (c.prune or ""): c for c in configs}
    assert set(by) == {"dense", "rp", "denserandom"}
    assert getattr(by["rp"], key) == value
    default = getattr(TrainConfig(), key)
    assert getattr(by["dense"], key) == default and getattr(by["denserandom"], key) == default


def test_plot_keeps_identical_points_visible_and_draws_chance() -> None:
    """Issue 15: points at one place share one label, neighbouring labels alternate above/below, identical
    pruning results stay visible (hollow diamond larger than the x), and a chance line is drawn."""
    rows = [
        {"strategy": "rp", "ratio": "0.1", "keep": "0.5", "best_acc": "90", "paper_ratio": "0.95"},
        {"strategy": "rp", "ratio": "0.01", "keep": "0.5", "best_acc": "90", "paper_ratio": "0.95"},  # same place
        {"strategy": "mp", "keep": "0.5", "best_acc": "91", "paper_ratio": "0.96"},
        {"strategy": "dense", "prune": "magnitude", "compression": "0.9", "best_acc": "80"},
        {"strategy": "dense", "prune": "random", "compression": "0.9", "best_acc": "80"},  # identical result
    ]
    ax = sweep_figure(rows, chance=10.0).axes[0]
    texts = sorted(ax.texts, key=lambda t: t.xy)
    assert [t.get_text() for t in texts] == ["RP 1e-1, RP 1e-2", "MP"]  # one label per place
    assert [t.xyann[1] > 0 for t in texts] == [True, False]  # alternating above / below
    lines = {line.get_label(): line for line in ax.get_lines()}
    magnitude, random_ = lines["Minimum (magnitude) pruning"], lines["Random pruning"]
    assert magnitude.get_fillstyle() == "none" and magnitude.get_markersize() > random_.get_markersize()
    chance = lines["Chance (10 %)"]
    assert list(map(float, chance.get_ydata())) == [10.0, 10.0]
    assert "Chance (10 %)" not in {line.get_label() for line in sweep_figure(rows).axes[0].get_lines()}
