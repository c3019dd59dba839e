"""Evaluation during and after training: ``--eval-subset`` / ``--eval-every`` of image and text runs, one
evaluation batch default everywhere, and ``pemn eval`` finding the data folder the run recorded."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from cli_run import run
from conftest import QUICK_ARGV, quick_text_config
from pemn.training.engine import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_eval_subset_and_eval_every(tmp_path: Path) -> None:
    out = tmp_path / "r"
    code, stdout, err = run(["train", *QUICK_ARGV[:-4], "--epochs", "3", "--device", "cpu", "--threads", "1",
                             "--eval-subset", "50", "--eval-every", "2", "--out", str(out)])
    assert code == 0, err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["test_acc"] is None for m in metrics] == [True, False, False]  # epochs 2 and 3 (the last)
    # accuracies on 50 images are multiples of 2 %
    assert all(abs(m["test_acc"] / 2 - round(m["test_acc"] / 2)) < 1e-9 for m in metrics if m["test_acc"] is not None)
    assert "50 test images" in stdout and "test -" in stdout
    result = json.loads((out / "result.json").read_text())
    assert result["best_epoch"] in (2, 3) and result["artifact_acc"] == result["final_acc"]


def test_one_eval_batch_default_everywhere() -> None:
    from pemn.training.cli import build_parser
    from pemn.training.config import TrainConfig
    from pemn.training.evaluation import DEFAULT_EVAL_BATCH, evaluate

    assert TrainConfig().eval_batch_size == DEFAULT_EVAL_BATCH
    assert inspect.signature(evaluate).parameters["batch_size"].default == DEFAULT_EVAL_BATCH
    helptext = build_parser()._subparsers._group_actions[0].choices["eval"].format_help()  # type: ignore[union-attr]
    assert f"default: {DEFAULT_EVAL_BATCH}" in " ".join(helptext.split())


def test_text_eval_subset_is_honoured(tmp_path: Path) -> None:
    """--eval-subset N: the first N validation characters are predicted, every epoch and for the saved model;
    pemn eval --eval-subset does the same."""
    from pemn.training.sample import build_lm
    from pemn.training.text import evaluate_lm, load_text

    lines: list[str] = []
    result = train(quick_text_config(tmp_path, strategy="rp", ratio=0.1, eval_subset=20), log=lines.append)
    corpus = load_text(tmp_path / "data", 8)
    assert corpus.val.numel() > 21
    model, _ = build_lm(tmp_path / "run" / "model.pemn")
    sub = evaluate_lm(model, corpus.val[:21], 8)
    assert sub["characters"] == 20 and result.val_loss == sub["val_loss"] != evaluate_lm(model, corpus.val, 8)[
        "val_loss"]
    assert any("evaluation: the first 20 of 32 validation characters" in line for line in lines), lines
    assert not any("test images" in line for line in lines), lines
    done = [line for line in lines if line.startswith("done")]
    assert "the first 20 of 32 validation characters" in done[0] and "whole validation split" not in done[0]
    code, out, err = run(["eval", str(tmp_path / "run" / "model.pemn"), "--eval-subset", "20", "--json"])
    assert code == 0, err
    got = json.loads(out)
    assert got["characters"] == 20 and got["val_loss"] == result.val_loss


def _image_folder(root: Path) -> Path:
    PIL = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 100, size=(64, 64, 3), dtype=np.uint8) + 120 * c  # the classes differ
                PIL.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.parametrize(("kind", "extra", "filename"), [
    ("pemn", ["--strategy", "mask"], "model.pemn"),
    ("dense", ["--strategy", "dense"], "model.safetensors"),
    ("sparse", ["--strategy", "dense", "--prune", "magnitude"], "model.sparse.safetensors"),
])
def test_eval_finds_the_data_folder_the_run_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
                                                     extra: list[str], filename: str) -> None:
    """Every kind of run: --data-dir, else the folder the run recorded (config.json beside the file), else
    $PEMN_DATA_DIR or ./data: the rule text runs already followed."""
    data = _image_folder(tmp_path / "pictures")
    out = tmp_path / "run"
    code, _, err = run(["train", "--model", "tiny-mlp", "--dataset", "imagefolder", "--data-dir", str(data),
                        "--epochs", "2", "--no-progress", "--device", "cpu", "--threads", "1", "--out", str(out),
                        *extra])
    assert code == 0, err
    final = json.loads((out / "result.json").read_text())["final_acc"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("PEMN_DATA_DIR", raising=False)
    code, stdout, err = run(["eval", str(out / filename), "--json", "--threads", "1"])
    assert code == 0, err
    assert json.loads(stdout)["accuracy"] == final and json.loads(stdout)["examples"] == 12
    code, _, err = run(["eval", str(out / filename), "--data-dir", str(elsewhere), "--threads", "1"])
    assert code == 4 and str(elsewhere) in err  # an explicit --data-dir wins (and has no data: exit code 4)
