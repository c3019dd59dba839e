"""Sweeps: the grid, the resumable CSV, the figure, and one real (tiny) sweep through the CLI."""

from __future__ import annotations

import csv
import json
import re
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import pemn.training.sweep as sweep_module
from cli_run import run
from conftest import load_script
from pemn.training.config import TrainConfig
from pemn.training.sweep import (
    CSV_COLUMNS,
    OLD_COLUMNS,
    SweepPoint,
    annotate_rows,
    build_grid,
    fill_from_run_folders,
    front_metric,
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
    ax = sweep_figure(rows, title="tiny-cnn on digits", x="ratio").axes[0]
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
    png = plot_sweep(rows, tmp_path / "f.png", x="ratio").read_bytes()
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
        assert int(r["bytes"]) == (out / name / file).stat().st_size
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
    assert by["dense"].init == "auto" and by["dense"].prune_scope == "layer"
    assert by["denserandom"].prune_scope == "global" and by["denserandom"].init == "auto"
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
    ax = sweep_figure(rows, chance=10.0, x="ratio").axes[0]
    texts = sorted(ax.texts, key=lambda t: t.xy)
    assert [t.get_text() for t in texts] == ["RP 1e-1, RP 1e-2", "MP"]  # one label per place
    assert [t.xyann[1] > 0 for t in texts] == [True, False]  # alternating above / below
    lines = {line.get_label(): line for line in ax.get_lines()}
    magnitude, random_ = lines["Minimum (magnitude) pruning"], lines["Random pruning"]
    assert magnitude.get_fillstyle() == "none" and magnitude.get_markersize() > random_.get_markersize()
    chance = lines["Chance (10 %)"]
    assert list(map(float, chance.get_ydata())) == [10.0, 10.0]
    assert "Chance (10 %)" not in {line.get_label() for line in sweep_figure(rows, x="ratio").axes[0].get_lines()}



# ------------------------------------------------------------------------------ equal bytes (issue 20)


@pytest.mark.parametrize(("grid", "names"), [
    ({"quantize": ["binary", "ptq-int8"]}, ["quant-binary", "quant-ptq-int8"]),
    ({"dense": True, "widths": [0.25, 1]}, ["dense-w0.25", "dense"]),
    ({"quantize": ["int4"], "widths": [0.5], "seeds": [0, 1]}, ["quant-int4-w0.5-s0", "quant-int4-w0.5-s1"]),
    ({"prune": ["magnitude"], "compressions": [0.9], "prune_quantize": ["ternary"]},
     ["prune-magnitude-c0.9", "prune-magnitude-c0.9-ternary"]),
    ({"strategies": ["rp"], "ratios": [0.01], "widths": [2]}, ["rp-r0.01-k0.5-w2"]),
])
def test_grid_quantize_and_width_axes(grid: dict[str, Any], names: list[str]) -> None:
    settings = {"strategies": [], "dense": False, "prune": [], **grid}
    points = build_grid(**settings)
    assert [p.name for p in points] == names
    for p in points:
        assert p.overrides().get("quantize") == p.quantize and "model" not in p.overrides()
        assert p.key() == SweepPoint(p.strategy, ratio=p.ratio, keep=p.keep, prune=p.prune, compression=p.compression,
                                     seed=p.seed, quantize=p.quantize, width=p.width).key()


@pytest.mark.parametrize(("grid", "match"), [
    ({"quantize": ["int3"]}, "unknown quantization 'int3'"),
    ({"prune": ["magnitude"], "prune_quantize": ["binary"]}, "survivors with ternary"),
    ({"prune_quantize": ["ternary"]}, "give the pruning methods"),
    ({"dense": True, "widths": []}, "at least one width"),
    ({"dense": True, "widths": [0]}, "positive number"),
    ({"dense": True, "widths": [float("nan")]}, "positive number"),
])
def test_grid_refuses_bad_quantize_and_widths(grid: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_grid(**{"strategies": [], "dense": False, "prune": [], **grid})


@pytest.mark.parametrize(("methods", "expected"), [
    ([("rp", 0.1, 0.5), ("quant-binary", None, None), ("prune-magnitude", None, None), ("dense", None, None)],
     ["RP", "binary QAT", "Magnitude pruning", "Dense"]),
])
def test_method_families(methods: list[Any], expected: list[str]) -> None:
    points = [SweepPoint("rp", ratio=0.1, keep=0.5), SweepPoint("dense", quantize="binary"),
              SweepPoint("dense", prune="magnitude", compression=0.9), SweepPoint("dense", width=0.5)]
    assert [p.method for p in points] == expected
    assert SweepPoint("dense", quantize="ptq-int4").method == "PTQ int4"
    assert SweepPoint("dense", prune="magnitude", compression=0.9, quantize="int4").method == \
        "Deep Compression (magnitude, int4)"
    assert SweepPoint("dense", width=0.25).label() == "Dense ×0.25"


def _row(name: str, nbytes: float | None, acc: float | None, val_loss: float | None = None) -> dict[str, Any]:
    """A sweep row of the run folder ``name`` (``rp``, ``dense``, ``dense-w0.5``, ``quant-binary``, ``prune``);
    ``val_loss``: a language model's row."""
    point = {"rp": SweepPoint("rp", ratio=0.01, keep=0.5), "rp-k0.1": SweepPoint("rp", ratio=0.01, keep=0.1),
             "dense": SweepPoint("dense"), "dense-w0.5": SweepPoint("dense", width=0.5),
             "quant-binary": SweepPoint("dense", quantize="binary"),
             "prune": SweepPoint("dense", prune="magnitude", compression=0.96)}[name]
    return {"strategy": point.strategy, "ratio": point.ratio, "keep": point.keep, "prune": point.prune,
            "compression": point.compression, "quantize": point.quantize, "width": point.width,
            "best_acc": acc, "final_acc": acc, "val_loss": val_loss, "bytes": nbytes}


# each case: rows (run, bytes, accuracy) -> on_front per row, and per PEMN row (baseline, bytes, acc, difference)
ANNOTATE_CASES = {
    "pemn wins its budget": (
        [("rp", 9_000, 98.0), ("quant-binary", 8_500, 97.0), ("dense", 250_000, 99.3), ("prune", 20_000, 96.0)],
        [True, True, True, False],
        {0: ("quant-binary", 8_500, 97.0, 1.0)}),
    "a baseline beats pemn with fewer bytes": (
        [("rp", 9_000, 97.0), ("quant-binary", 8_000, 98.5), ("dense", 250_000, 99.3)],
        [False, True, True],
        {0: ("quant-binary", 8_000, 98.5, -1.5)}),
    "no baseline is that small": (
        [("rp-k0.1", 5_000, 95.0), ("rp", 9_000, 97.0), ("dense-w0.5", 60_000, 99.0)],
        [True, True, True],
        {0: None, 1: None}),
    "a bigger baseline never counts, the smaller file wins a tie": (
        [("rp", 9_000, 97.0), ("dense-w0.5", 9_001, 99.0), ("quant-binary", 7_000, 96.0), ("prune", 8_000, 96.0)],
        [True, True, True, False],
        {0: ("quant-binary", 7_000, 96.0, 1.0)}),
    "identical rows are both on the front; rows without bytes are left out": (
        [("rp", 9_000, 97.0), ("rp", 9_000, 97.0), ("quant-binary", None, 99.9), ("dense", 9_000, None)],
        [True, True, None, None],
        {0: None, 1: None}),
}


@pytest.mark.parametrize("case", list(ANNOTATE_CASES))
def test_annotate_rows_front_and_best_baseline(case: str) -> None:
    spec, on_front, baselines = ANNOTATE_CASES[case]
    rows = annotate_rows([_row(*r) for r in spec])
    assert [r["on_front"] for r in rows] == on_front
    for i, r in enumerate(rows):
        got = (r["baseline"], r["baseline_bytes"], r["baseline_acc"], r["acc_vs_baseline"])
        want = baselines.get(i, None) if i in baselines else None
        assert got == (want or (None, None, None, None)), (i, got)


# language models (rows with a validation loss): the front and the best baseline go by the loss, lower is better,
# whatever the next-character accuracy says; each case: rows (run, bytes, acc, loss) -> on_front per row, and per
# PEMN row (baseline, its bytes, its acc, its loss, acc difference, loss difference)
LOSS_CASES = {
    "the baseline with the lower loss, not the higher accuracy": (
        [("rp", 49_000, 28.5, 2.588), ("quant-binary", 48_000, 27.3, 2.582), ("dense-w0.5", 30_000, 28.0, 2.70)],
        [False, True, True],
        {0: ("quant-binary", 48_000, 27.3, 2.582, 1.2, 0.006)}),
    "pemn lower in loss and in accuracy is on the front": (
        [("rp", 49_000, 25.0, 2.50), ("quant-binary", 40_000, 29.0, 2.60), ("dense", 900_000, 40.0, 1.90)],
        [True, True, True],
        {0: ("quant-binary", 40_000, 29.0, 2.60, -4.0, -0.1)}),
    "a row without a loss is left out of the loss front": (
        [("rp", 49_000, 25.0, 2.50), ("quant-binary", 40_000, 99.0, None)],
        [True, None],
        {0: None}),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_language_model_front_and_baseline_by_validation_loss(case: str) -> None:
    spec, on_front, baselines = LOSS_CASES[case]
    rows = [_row(*r) for r in spec]
    assert front_metric(rows) == "val_loss"
    for metric in (None, "val_loss"):
        out = annotate_rows(rows, metric=metric)
        assert [r["on_front"] for r in out] == on_front
        for i, r in enumerate(out):
            got = (r["baseline"], r["baseline_bytes"], r["baseline_acc"], r["baseline_val_loss"],
                   r["acc_vs_baseline"], r["val_loss_vs_baseline"])
            want = baselines.get(i)
            assert got == (want or (None,) * 6), (i, got)


def test_front_metric_of_image_rows_is_accuracy_and_unknown_metrics_are_refused() -> None:
    rows = [_row("rp", 9_000, 97.0), _row("quant-binary", 8_000, 98.5)]
    assert front_metric(rows) == "final_acc" and front_metric([]) == "final_acc"
    assert annotate_rows(rows)[0]["baseline"] == "quant-binary"
    # forced to the loss, image rows (no loss) have no front at all
    assert [r["on_front"] for r in annotate_rows(rows, metric="val_loss")] == [None, None]
    with pytest.raises(ValueError, match="front's metric is one of final_acc, val_loss, not 'best_acc'"):
        annotate_rows(rows, metric="best_acc")


def test_language_model_sweep_records_the_loss_and_draws_it(tmp_path: Path) -> None:
    """A text sweep's rows carry the saved file's validation loss, its front and seed summary go by it, and
    sweep.png plots it; an earlier version's text sweep (no val_loss column) gets it from each run's result.json."""
    def train(cfg: Any) -> SimpleNamespace:
        loss, acc = {"rp": (2.50, 25.0), "dense": (2.60, 29.0)}[cfg.strategy if not cfg.quantize else "dense"]
        return SimpleNamespace(best_acc=acc, final_acc=acc, val_loss=loss + 0.01 * cfg.seed,
                               artifact_bytes=40_000 if cfg.quantize else 49_000, seconds=0.5, summary={})
    grid = build_grid(strategies=["rp"], ratios=[0.001], keeps=[0.1], dense=False, prune=[], quantize=["binary"],
                      seeds=[0, 1])
    report = run_sweep(grid, tmp_path, {"model": "gpt-16-4", "dataset": "text"}, log=None, plot=True,
                       train_fn=train)
    rows = read_rows(tmp_path / "sweep.csv")
    assert [float(r["val_loss"]) for r in rows] == [2.50, 2.51, 2.60, 2.61]
    # seed 1 of each is 0.01 nats worse at the same bytes: off the front
    assert [r["on_front"] for r in rows] == ["True", "False", "True", "False"]
    assert rows[0]["baseline"] == "quant-binary-s0" and float(rows[0]["val_loss_vs_baseline"]) == pytest.approx(-0.1)
    assert float(rows[0]["acc_vs_baseline"]) == -4.0
    with (tmp_path / "sweep_seeds.csv").open() as f:
        seeds = list(csv.DictReader(f))
    assert float(seeds[0]["val_loss_mean"]) == pytest.approx(2.505) and float(seeds[1]["val_loss_std"]) > 0
    assert report.png is not None
    ax = sweep_figure(rows).axes[0]
    assert "loss" in ax.get_ylabel() and "loss" in ax.get_title()
    front = {line.get_label(): line.get_data() for line in ax.get_lines()}["Pareto front"]
    assert [float(v) for v in front[0]] == [40_000, 49_000] and [float(v) for v in front[1]] == [2.60, 2.50]
    # an earlier version's text sweep: no val_loss column; result.json of each run folder still has it
    for r in rows:
        (tmp_path / sweep_module._point_of(r).name).mkdir(exist_ok=True)
        (tmp_path / sweep_module._point_of(r).name / "result.json").write_text(json.dumps({"val_loss": float(
            r["val_loss"])}))
        r["val_loss"] = ""
    assert front_metric(rows) == "final_acc"
    filled = fill_from_run_folders(rows, tmp_path)
    assert front_metric(filled) == "val_loss" and [r["on_front"] for r in annotate_rows(filled)] == [
        True, False, True, False]


@pytest.mark.parametrize("text", [True, False], ids=["language-model", "images"])
def test_equal_bytes_table_goes_by_the_primary_metric(tmp_path: Path, text: bool) -> None:
    """scripts/results_tables.py --equal-bytes: a language model's table shows the loss and picks the front and the
    best baseline by it; an image sweep's by accuracy."""
    script = load_script("scripts/results_tables.py")
    rows = [_row("rp", 49_162, 28.52, 2.588 if text else None), _row("quant-binary", 48_106, 27.29,
                                                                      2.582 if text else None)]
    for r in rows:
        r.update(seed="0", model="gpt-128-4", bits_per_weight="1.0", command="pemn train")
    sweep_module._write_rows(tmp_path / "sweep.csv", rows)
    table = script.equal_bytes_table([tmp_path]).splitlines()
    pemn_line = next(line for line in table if line.startswith("| RP"))
    if text:
        assert "val loss" in table[0] and "on front (loss)" in table[0]
        assert "| 2.5880 |" in pemn_line and "| no |" in pemn_line and "+0.0060 | +1.23 |" in pemn_line
    else:
        assert "val loss" not in table[0] and "| **yes** |" in pemn_line and pemn_line.endswith("| +1.23 |")


def test_equal_bytes_seeds_table_pools_the_seeds_of_each_setting(tmp_path: Path) -> None:
    """scripts/results_tables.py --equal-bytes-seeds: one row per setting, mean ± std of its seeds, mean bytes with
    their range, and the front / best baseline of the means (one pemn seed beats the baseline, the mean does not)."""
    script = load_script("scripts/results_tables.py")
    spec = [("rp", 9_000, 99.0, 0), ("rp", 9_400, 97.0, 1), ("quant-binary", 8_000, 98.5, 0),
            ("quant-binary", 8_000, 98.3, 1)]
    rows = []
    for name, nbytes, acc, seed in spec:
        r = _row(name, nbytes, acc)
        r.update(seed=str(seed), model="lenet5", bits_per_weight="1.0", command="pemn train")
        rows.append(r)
    sweep_module._write_rows(tmp_path / "sweep.csv", rows)
    table = script.equal_bytes_seeds_table([tmp_path]).splitlines()
    assert len(table) == 4 and "mean ± std" in table[0]
    binary, pemn_row = table[2], table[3]
    assert binary.startswith("| binary") and "| 2 | 98.40 ± 0.14 | 8,000 |" in binary and "**yes**" in binary
    assert pemn_row.startswith("| RP 1e-2") and "| 2 | 98.00 ± 1.41 | 9,200 (9,000–9,400) |" in pemn_row
    assert "| no | quant-binary (8,000 B, 98.40) | -0.40 |" in pemn_row


def test_equal_bytes_labels_keep_a_narrower_pemn_models_keep_and_settings() -> None:
    """scripts/results_tables.py: a pemn row at a width other than 1 is labelled with its keep and its file
    settings as well as its width and model (two keeps at one width were two identical "RP 1e-3 ×0.25" rows)."""
    script = load_script("scripts/results_tables.py")
    rows = []
    for keep in (0.1, 0.2):
        r = _row("rp-k0.1", 4_000, 20.0)
        r.update(keep=str(keep), ratio="0.001", width="0.25", model="gpt-32-4", compression="", prune="",
                 quantize="", command="pemn train --strategy rp --keep 0.1 --coding entropy --prototype seed")
        rows.append(r)
    labels = [script.label(r) for r in rows]
    assert labels == ["RP 1e-3 (keep 0.1, coding=entropy, prototype=seed) ×0.25 (gpt-32-4)",
                      "RP 1e-3 (keep 0.2, coding=entropy, prototype=seed) ×0.25 (gpt-32-4)"]
    rows[0]["command"] = "pemn train --strategy rp --keep 0.1 --coding context --prototype seed"
    assert script.label(rows[0]) == "RP 1e-3 (keep 0.1, coding=context, prototype=seed) ×0.25 (gpt-32-4)"
    dense = _row("dense-w0.5", 4_000, 20.0)
    dense.update(model="gpt-64-4", ratio="", keep="", compression="", prune="", quantize="", command="pemn train")
    assert script.label(dense) == "Dense ×0.5 (gpt-64-4)"


@pytest.mark.parametrize("header", [OLD_COLUMNS[0], OLD_COLUMNS[3]], ids=["with-budget", "before-budget"])
def test_previous_version_csv_reads_without_a_loss(tmp_path: Path, header: tuple[str, ...]) -> None:
    """A sweep.csv written just before the val_loss columns reads with them empty (its rows keep their values)."""
    assert "val_loss" not in header and "on_front" in header
    with (tmp_path / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerow({"strategy": "rp", "ratio": "0.01", "keep": "0.5", "seed": "0", "model": "lenet5",
                    "best_acc": "98.9", "final_acc": "98.9", "bytes": "9405", "bits_per_weight": "1.224",
                    "on_front": "True", "seconds": "1", "command": "pemn train"})
    (row,) = read_rows(tmp_path / "sweep.csv")
    assert (row["bytes"], row["bits_per_weight"], row["val_loss"], row["val_loss_vs_baseline"]) == (
        "9405", "1.224", "", "")


def test_old_sweep_csv_is_read_and_rewritten_with_the_new_columns(tmp_path: Path) -> None:
    """A sweep.csv of an earlier version (artifact_bytes, no quantize/width) keeps its rows: the next run in the
    folder rewrites it with every column, its rows skipped, not retrained."""
    old = OLD_COLUMNS[1]
    with (tmp_path / "sweep.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(old)
        w.writerow(["rp", "0.1", "0.5", "", "", "90", "89", "9000", "0.9", "3", "1", "pemn train ...", ""])
    grid = build_grid(strategies=["rp"], ratios=[0.1], dense=False, prune=[], quantize=["binary"])
    calls: list[Any] = []
    report = run_sweep(grid, tmp_path, {"epochs": 1}, log=None, plot=False, train_fn=_fake_train(calls))
    assert len(calls) == 1 and calls[0].quantize == "binary" and len(report.skipped) == 1
    with (tmp_path / "sweep.csv").open() as f:
        assert tuple(next(csv.reader(f))) == CSV_COLUMNS
    rows = read_rows(tmp_path / "sweep.csv")
    assert [(r["quantize"], r["bytes"], r["final_acc"]) for r in rows] == [
        ("", "9000", "89"), ("binary", "1234", "49.0")]
    # the binary file (1,234 B, 49 %) is the best baseline of at most 9,000 B for the rp row
    assert (rows[0]["baseline"], rows[0]["acc_vs_baseline"]) == ("quant-binary", "40.0")
    assert rows[0]["on_front"] == rows[1]["on_front"] == "True"


def test_width_points_train_the_narrow_model(tmp_path: Path) -> None:
    calls: list[Any] = []
    grid = build_grid(strategies=[], dense=True, prune=[], quantize=["int4"], widths=[0.5, 1])
    report = run_sweep(grid, tmp_path, {"model": "lenet5", "dataset": "mnist", "epochs": 1}, log=None, plot=False,
                       train_fn=_fake_train(calls))
    assert [(c.model, c.quantize, Path(c.out).name) for c in calls] == [
        ("lenet5-w50", None, "dense-w0.5"), ("lenet5-w50", "int4", "quant-int4-w0.5"),
        ("lenet5", None, "dense"), ("lenet5", "int4", "quant-int4")]
    assert "--model lenet5-w50" in report.rows[0]["command"] and "--quantize int4" in report.rows[1]["command"]
    assert [r["model"] for r in read_rows(tmp_path / "sweep.csv")] == ["lenet5-w50"] * 2 + ["lenet5"] * 2
    with pytest.raises(ValueError, match=r"sweep point dense-w0\.5: model 'tiny-cnn' has no width"):
        resolve_points(build_grid(strategies=[], prune=[], widths=[0.5]), {"model": "tiny-cnn"}, tmp_path)


def test_bytes_figure_draws_each_method_and_the_front(tmp_path: Path) -> None:
    rows = annotate_rows([_row(*r) for r in [("rp", 9_000, 97.0), ("rp-k0.1", 5_000, 95.0),
                                             ("quant-binary", 8_000, 98.5), ("dense", 250_000, 99.3),
                                             ("dense-w0.5", 60_000, 99.0), ("prune", 20_000, 96.0)]])
    ax = sweep_figure(rows, title="lenet5 on mnist", chance=10.0).axes[0]
    assert ax.get_xscale() == "log" and "bytes" in ax.get_xlabel() and "saved file" in ax.get_ylabel()
    lines = {line.get_label(): [list(map(float, d)) for d in line.get_data()] for line in ax.get_lines()}
    assert lines["PEMN RP"] == [[5_000.0, 9_000.0], [95.0, 97.0]]
    assert lines["binary QAT"] == [[8_000.0], [98.5]] and lines["Magnitude pruning"] == [[20_000.0], [96.0]]
    assert lines["Dense"] == [[60_000.0, 250_000.0], [99.0, 99.3]]
    # the front: rp k0.1 (5 KB), binary (8 KB), narrow dense (60 KB), dense (250 KB); rp keep 0.5 is beaten
    assert lines["Pareto front"] == [[5_000.0, 8_000.0, 60_000.0, 250_000.0], [95.0, 98.5, 99.0, 99.3]]
    assert sorted(t.get_text() for t in ax.texts) == ["Dense", "Dense ×0.5", "RP 1e-2 k0.1", "binary"]
    markers = {line.get_label(): (line.get_marker(), line.get_fillstyle()) for line in ax.get_lines()}
    assert markers["PEMN RP"] == ("o", "full") and markers["binary QAT"][1] == "none"
    assert plot_sweep(rows, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="x axis"):
        sweep_figure(rows, x="paper")


@pytest.mark.slow
def test_sweep_cli_quantized_and_narrow_runs_end_to_end(tmp_path: Path) -> None:
    """Real tiny runs: rp, a binary-quantized and a half-width dense LeNet-5 on digits; bytes are the files',
    bits per weight = 8 x bytes / the model's weights, and the front / baseline columns are filled."""
    out = tmp_path / "sweep"
    code, _, err = run(["sweep", "--model", "lenet5", "--dataset", "digits", "--strategies", "rp", "--ratios", "0.1",
                        "--no-dense", "--prune", "--quantize", "binary", "--epochs", "1",
                        "--set", "train_subset=200", "progress=false", "device=cpu", "threads=1", "--out", str(out)])
    assert code == 0, err
    # a row of an earlier version's sweep (no bits per weight, no model) gets both from its run folder's file
    rows = read_rows(out / "sweep.csv")
    for r in rows:
        if r["quantize"] == "binary":
            r["bits_per_weight"] = r["model"] = ""
    sweep_module._write_rows(out / "sweep.csv", rows)
    code, _, err = run(["sweep", "--model", "lenet5", "--dataset", "digits", "--strategies", "--dense", "--prune",
                        "--widths", "0.5", "--epochs", "1", "--figure-x", "ratio",
                        "--set", "train_subset=200", "progress=false", "device=cpu", "threads=1", "--out", str(out)])
    assert code == 0, err
    rows = {r["command"].split("--out ")[-1].rsplit("/", 1)[-1]: r for r in read_rows(out / "sweep.csv")}
    # LeNet-5 on 8x8 digits: 21,150 Conv/Linear weights; at half width 5,535
    files = {"rp-r0.1-k0.5": ("model.pemn", 21_150), "quant-binary": ("model.quant.safetensors", 21_150),
             "dense-w0.5": ("model.safetensors", 5_535)}
    assert set(rows) == set(files)
    for name, (file, weights) in files.items():
        r = rows[name]
        nbytes = (out / name / file).stat().st_size
        assert int(r["bytes"]) == nbytes
        assert abs(float(r["bits_per_weight"]) - 8 * nbytes / weights) < 1e-3
        assert r["on_front"] in ("True", "False")
    assert rows["dense-w0.5"]["model"] == "lenet5-w50" and rows["rp-r0.1-k0.5"]["model"] == "lenet5"
    assert rows["quant-binary"]["model"] == "lenet5"
    assert float(rows["quant-binary"]["bits_per_weight"]) < 2 < float(rows["dense-w0.5"]["bits_per_weight"])
    rp = rows["rp-r0.1-k0.5"]
    if rp["baseline"]:
        assert int(rp["baseline_bytes"]) <= int(rp["bytes"])
        assert abs(float(rp["acc_vs_baseline"]) - (float(rp["final_acc"]) - float(rp["baseline_acc"]))) < 1e-6
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("pairs", "expected"), [
    (["lr=0.05", "--train-subset=200", "progress=false"], {"lr": 0.05, "train_subset": 200, "progress": False}),
    (["teacher=none"], {"teacher": None}),
    (["lr"], "expects key=value, got 'lr'"),
    (["=1"], "expects key=value, got '=1'"),
    (["no_such_option=1"], "no_such_option: not a training option; valid: "),
    (["epochs=many"], "epochs"),
])
def test_set_pairs_parse_in_the_application(pairs: list[str], expected: dict[str, object] | str) -> None:
    """`pemn sweep --set KEY=VALUE ...` is parsed by pemn.training.config.parse_settings (the CLI only prefixes
    --set to its ValueError): each value as its option's type, or one message naming what is wrong."""
    from pemn.training.cli import main
    from pemn.training.config import parse_settings

    if isinstance(expected, dict):
        assert parse_settings(pairs) == expected
        return
    with pytest.raises(ValueError, match=re.escape(expected)):
        parse_settings(pairs)
    assert main(["sweep", "--out", "unused", "--set", *pairs]) == 2


# ------------------------------------------------------------------------------------- the byte budget


# each case: rows (run, bytes, accuracy), the budget -> the best file (bytes, acc) or None, the best per method
# ({method: (bytes, acc) or None}), the budget column per row
BUDGET_CASES = {
    "the most accurate file that fits, and each method's best": (
        [("rp", 9_000, 97.0), ("rp-k0.1", 5_000, 95.0), ("quant-binary", 8_500, 97.5), ("dense", 250_000, 99.3),
         ("prune", 20_000, 96.0)], 10_000,
        (8_500, 97.5),
        {"RP": (9_000, 97.0), "binary QAT": (8_500, 97.5), "Dense": None, "Magnitude pruning": None},
        ["method best", "fits", "best", "over", "over"]),
    "a pemn file is the best; a narrow dense model is its method's best": (
        [("dense-w0.5", 6_000, 96.0), ("rp-k0.1", 5_000, 97.0), ("dense", 250_000, 99.3)], 7_000,
        (5_000, 97.0), {"Dense": (6_000, 96.0), "RP": (5_000, 97.0)},
        ["method best", "best", "over"]),
    "a tie goes to the smaller file": (
        [("rp", 9_000, 97.0), ("rp-k0.1", 5_000, 97.0)], 9_000,
        (5_000, 97.0), {"RP": (5_000, 97.0)}, ["fits", "best"]),
    "a file of exactly the budget fits": (
        [("quant-binary", 9_000, 97.0), ("dense", 9_001, 99.0)], 9_000,
        (9_000, 97.0), {"binary QAT": (9_000, 97.0), "Dense": None}, ["best", "over"]),
    "nothing fits": (
        [("rp", 9_000, 97.0), ("dense", 250_000, 99.3)], 8_999,
        None, {"RP": None, "Dense": None}, ["over", "over"]),
    "rows without bytes or accuracy are left out": (
        [("rp", 9_000, 97.0), ("quant-binary", None, 99.9), ("dense", 5_000, None)], 10_000,
        (9_000, 97.0), {"RP": (9_000, 97.0)}, ["best", None, None]),
}


@pytest.mark.parametrize("case", list(BUDGET_CASES))
def test_budget_report_and_column(case: str) -> None:
    spec, max_bytes, best, methods, marks = BUDGET_CASES[case]
    rows = [_row(*r) for r in spec]
    report = sweep_module.budget_report(rows, max_bytes)
    assert report["max_bytes"] == max_bytes
    got_best = report["best"] and (report["best"]["bytes"], report["best"]["final_acc"])
    assert got_best == best
    assert {m: e and (e["bytes"], e["final_acc"]) for m, e in report["methods"].items()} == methods
    assert list(report["methods"]) == list(methods)  # every method of the measured rows, first seen first
    assert report["fits"] == sum(1 for _n, b, a in spec if b is not None and a is not None and b <= max_bytes)
    assert [r["budget"] for r in annotate_rows(rows, max_bytes)] == marks
    assert all(r["budget"] is None for r in annotate_rows(rows))  # no budget: an empty column
    lines = sweep_module.budget_lines(report)
    if best is None:
        assert lines[0].startswith(f"sweep: no file of at most {max_bytes:,} B (the smallest: ")
    else:
        assert lines[0].startswith(f"sweep: the best file of at most {max_bytes:,} B")
        assert f"{best[1]:.2f} % in {best[0]:,} B" in lines[0]
        assert len(lines) == 2 + len(methods)


def test_language_model_budget_goes_by_the_validation_loss() -> None:
    """Under a byte budget a language model's best file is the lowest loss that fits, not the most accurate."""
    rows = [_row("rp", 49_000, 28.5, 2.588), _row("quant-binary", 48_000, 27.3, 2.582),
            _row("dense", 900_000, 40.0, 1.90)]
    report = sweep_module.budget_report(rows, 50_000)
    assert report["accuracy"] == "val_loss" and report["best"]["run"] == "quant-binary"
    assert report["best"]["val_loss"] == 2.582 and report["methods"]["RP"]["val_loss"] == 2.588
    assert [r["budget"] for r in annotate_rows(rows, 50_000)] == ["method best", "best", "over"]
    assert "27.30 %, val loss 2.5820 in 48,000 B" in sweep_module.budget_lines(report)[0]


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100", None])
def test_budget_must_be_a_positive_number_of_bytes(bad: Any) -> None:
    with pytest.raises(ValueError, match="positive whole number of bytes"):
        sweep_module.check_max_bytes(bad)
    with pytest.raises(ValueError, match="positive whole number of bytes"):
        sweep_module.budget_report([_row("rp", 9_000, 97.0)], bad)


def _sized_train(calls: list[Any]):
    """A fake run whose file has 1,000 + 100,000 × ratio bytes (dense: 50,000) and 50 + 100 × ratio % (dense 60)."""
    def train(cfg: Any) -> SimpleNamespace:
        calls.append(cfg)
        ratio = getattr(cfg, "ratio", None)
        nbytes, acc = (1_000 + int(100_000 * ratio), 50.0 + 100 * ratio) if ratio else (50_000, 60.0)
        return SimpleNamespace(best_acc=acc, final_acc=acc, artifact_bytes=nbytes, seconds=0.5,
                               summary={"paper_ratio": 0.9, "honest_ratio": 3.0})
    return train


def test_sweep_budget_is_written_and_kept_for_later_runs(tmp_path: Path) -> None:
    grid = build_grid(strategies=["rp"], ratios=[0.1, 0.01], dense=True, prune=[])
    calls: list[Any] = []
    report = run_sweep(grid[:2], tmp_path, {"epochs": 1}, log=None, plot=False, train_fn=_sized_train(calls),
                       max_bytes=12_000)
    # dense: 50,000 B, 60 %; rp 1e-1: 11,000 B, 60 %  -> rp 1e-1 is the best file of at most 12,000 B
    assert report.budget is not None and report.budget["best"]["run"] == "rp-r0.1-k0.5"
    saved = json.loads((tmp_path / "sweep_budget.json").read_text())
    assert saved == report.budget and saved["methods"] == {"Dense": None, "RP": saved["best"]}
    assert [r["budget"] for r in read_rows(tmp_path / "sweep.csv")] == ["over", "best"]
    # a later run in the folder without --max-bytes keeps the budget: the new row is annotated too
    report = run_sweep(grid, tmp_path, {"epochs": 1}, log=None, plot=False, train_fn=_sized_train(calls))
    assert [(r["strategy"], r["ratio"], r["budget"]) for r in read_rows(tmp_path / "sweep.csv")] == [
        ("dense", "", "over"), ("rp", "0.1", "best"), ("rp", "0.01", "fits")]
    assert report.budget is not None and report.budget["fits"] == 2
    assert json.loads((tmp_path / "sweep_budget.json").read_text())["fits"] == 2
    # a new budget replaces it
    report = run_sweep(grid, tmp_path, {"epochs": 1}, log=None, plot=False, train_fn=_sized_train(calls),
                       max_bytes=5_000)
    assert len(calls) == 3 and report.budget is not None and report.budget["best"]["bytes"] == 2_000
    assert [r["budget"] for r in read_rows(tmp_path / "sweep.csv")] == ["over", "over", "best"]


def test_sweep_cli_max_bytes_over_the_finished_runs(tmp_path: Path) -> None:
    """`pemn sweep --out DIR --strategies --no-dense --prune --max-bytes N` trains nothing and reports the budget."""
    run_sweep(build_grid(strategies=["rp"], ratios=[0.1, 0.01], dense=True, prune=[]), tmp_path, {"epochs": 1},
              log=None, plot=False, train_fn=_sized_train([]))
    query = ["sweep", "--out", str(tmp_path), "--strategies", "--no-dense", "--prune"]
    code, stdout, err = run([*query, "--max-bytes", "12000"])
    assert code == 0, err
    assert "sweep: the best file of at most 12,000 B (2 of 3 fit): rp-r0.1-k0.5 (RP 1e-1): 60.00 % in 11,000 B" \
        in stdout
    assert "  Dense: none that small" in stdout and "sweep_budget.json" in stdout
    assert json.loads((tmp_path / "sweep_budget.json").read_text())["max_bytes"] == 12_000
    code, stdout, err = run([*query, "--max-bytes", "1000"])
    assert code == 0, err
    assert "sweep: no file of at most 1,000 B (the smallest: rp-r0.01-k0.5 (RP 1e-2): 51.00 % in 2,000 B" in stdout
    for argv, match in [([*query, "--max-bytes", "0"], "--max-bytes 0: give the byte budget as a positive number"),
                        (["sweep", "--out", str(tmp_path / "none"), "--strategies", "--no-dense", "--prune",
                          "--max-bytes", "10"], "holds no sweep.csv: run the sweep first")]:
        code, stdout, err = run(argv)
        assert code == 2 and match in err, (code, err)
    (tmp_path / "sweep_budget.json").write_text("{}")
    code, stdout, err = run(["sweep", "--out", str(tmp_path), "--strategies", "rp", "--ratios", "0.1",
                             "--no-dense", "--prune", "--epochs", "1", "--no-plot"])
    assert code == 2 and "is not a pemn sweep budget" in err, err


def test_sweep_data_dir_reaches_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict] = []

    def fake(points: object, out: object, base: dict, **_: object) -> object:
        seen.append(base)
        raise SystemExit(0)

    monkeypatch.setattr(sweep_module, "run_sweep", fake)
    with pytest.raises(SystemExit):
        run(["sweep", "--strategies", "rp", "--ratios", "0.1", "--no-dense", "--prune", "--data-dir", "D",
             "--out", str(tmp_path / "s")])
    assert seen[0]["data_dir"] == "D"
    code, _, err = run(["sweep", "--data-dir", "D", "--set", "data_dir=E", "--out", str(tmp_path / "s")])
    assert code == 2 and "--data-dir and --set data_dir=... disagree" in err


@pytest.mark.parametrize(("options", "message"), [
    ({"settings": ["lr"]}, "--set "),
    ({"settings": ["strategy=rp"]}, "--set strategy: set by the sweep grid for every run"),
    ({"settings": ["epochs=2"], "flags": {"epochs": 3}}, r"--epochs and --set epochs=\.\.\. disagree"),
    ({"settings": ["seed=1"], "grid": {"seeds": [0, 1]}}, r"--seeds and --set seed=\.\.\. disagree"),
    ({"grid": {"strategies": ["nope"]}}, "nope"),
    ({"config_file": "missing.json"}, r"no config file at 'missing\.json'"),
    ({"settings": ["lr=-1"]}, "lr"),  # a point whose config does not resolve
])
def test_plan_sweep_refuses_before_anything_runs(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    """pemn sweep's plan: every refusal is an OptionError (the command line's exit code 2) and nothing is written."""
    from pemn.training.errors import OptionError
    from pemn.training.sweep_plan import plan_sweep

    out = tmp_path / "sweep"
    with pytest.raises(OptionError, match=message):
        plan_sweep(out, **{"grid": {"strategies": ["rp"], "dense": False, "prune": []}, **options})
    assert not out.exists()


def test_plan_sweep_and_its_report_lines(tmp_path: Path) -> None:
    from pemn.training.sweep import SweepReport
    from pemn.training.sweep_plan import plan_sweep, sweep_lines

    points, base = plan_sweep(tmp_path, settings=["lr=0.05"], flags={"model": "tiny-mlp", "epochs": None},
                              grid={"strategies": ["rp"], "ratios": [0.1], "keeps": [0.5], "dense": True,
                                    "prune": [], "seeds": [0, 1]})
    assert base == {"lr": 0.05, "model": "tiny-mlp"} and len(points) == 4
    report = SweepReport(csv=tmp_path / "sweep.csv", png=None, failed=[(points[0], "boom")])
    assert sweep_lines(report, tmp_path) == [f"sweep: 0 runs done, 0 already in {tmp_path / 'sweep.csv'}, 1 failed"]


def _write_run_config(folder: Path, cfg: Any, drop: tuple[str, ...] = ()) -> None:
    """A finished run's config.json as a build that lacked the fields ``drop`` wrote it."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in cfg.to_dict().items() if k not in drop}
    (folder / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize("drop, given, refused", [
    # an earlier build without keep_rule trained keep 0.1 uniform; this build's default (auto) is ERK there
    (("keep_rule",), {}, "keep_rule"),
    # the sweep asked for what the earlier build did by default: comparable
    (("keep_rule",), {"keep_rule": "uniform"}, None),
    # the same build: nothing differs
    ((), {}, None),
    # an earlier build without gains: this build's auto turns them on for a network without norm layers
    (("keep_rule", "gain"), {"keep_rule": "uniform"}, "gain"),
])
def test_a_new_seed_is_refused_where_an_earlier_build_trained_the_same_point_otherwise(
        tmp_path: Path, drop: tuple[str, ...], given: dict[str, Any], refused: str | None) -> None:
    from pemn.training.config import resolve_config
    from pemn.training.sweep import SweepPoint

    base = {"model": "mlp", "dataset": "digits", "epochs": 1, **given}  # an MLP: no norm layers (auto gains)
    first = [SweepPoint("rp", ratio=0.01, keep=0.1, seed=0)]
    calls: list[Any] = []
    run_sweep(first, tmp_path, base, log=None, plot=False, train_fn=_fake_train(calls))
    # what the earlier build recorded for that run (the fake trainer writes no folder)
    old = resolve_config({**base, **first[0].overrides(), "out": str(tmp_path / first[0].name)})
    _write_run_config(tmp_path / first[0].name, old, drop)
    more = [SweepPoint("rp", ratio=0.01, keep=0.1, seed=1), SweepPoint("rp", ratio=0.01, keep=0.5, seed=0)]
    calls.clear()
    if refused is None:
        run_sweep(more, tmp_path, base, log=None, plot=False, train_fn=_fake_train(calls))
        assert len(calls) == 2
        return
    was, now = {"keep_rule": ("uniform", "erk"), "gain": ("false", "true")}[refused]
    with pytest.raises(ValueError, match=rf"rp-r0.01-k0.1-s0 trained with {refused}={was}.*{refused}={now}.*"
                                         rf"another --out \(with --set {refused}={was}"):
        run_sweep(more, tmp_path, base, log=None, plot=False, train_fn=_fake_train(calls))
    assert calls == []  # refused before training anything


def test_equal_bytes_seeds_table_of_a_language_model_gives_the_loss_difference(tmp_path: Path) -> None:
    """scripts/results_tables.py --equal-bytes-seeds on a text sweep: the best baseline and the difference go by
    the mean validation loss (the front's metric), with the accuracy difference beside it."""
    script = load_script("scripts/results_tables.py")
    spec = [("rp", 48_828, 28.5, 2.50, 0), ("rp", 48_830, 28.9, 2.48, 1), ("quant-binary", 48_100, 27.7, 2.58, 0),
            ("quant-binary", 48_110, 27.9, 2.57, 1)]
    rows = []
    for name, nbytes, acc, loss, seed in spec:
        r = _row(name, nbytes, acc, loss)
        r.update(seed=str(seed), model="gpt-128-4", bits_per_weight="1.0", command="pemn train")
        rows.append(r)
    sweep_module._write_rows(tmp_path / "sweep.csv", rows)
    table = script.equal_bytes_seeds_table([tmp_path]).splitlines()
    assert "| best baseline ≤ bytes (by loss) | Δ loss | Δ points |" in table[0]
    assert table[1].count("|---") == table[0].count("|") - 1
    pemn_row = next(line for line in table if line.startswith("| RP"))
    assert "| 2.4900 ± 0.0141 |" in pemn_row
    assert pemn_row.endswith("| **yes** | quant-binary (48,105 B, 2.5750, 27.80) | -0.0850 | +0.90 |")
