"""Progress lines without a terminal: the per-epoch test and ``pemn eval`` of image runs, characters of text runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_run import run
from conftest import quick_text_config
from pemn.training.engine import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_evaluation_shows_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain progress lines (no terminal) appear for the per-epoch test and for `pemn eval`."""
    import pemn.training.progress as progress

    monkeypatch.setattr(progress, "PLAIN_PROGRESS_EVERY", 0.0)
    out = tmp_path / "r"
    code, stdout, err = run(["train", "--epochs", "1", "--train-subset", "256", "--device", "cpu", "--threads", "1",
                             "--out", str(out)])
    assert code == 0, err
    assert re.search(r"test after epoch 1/1: [\d,]+/359 images", stdout), stdout
    code, stdout, err = run(["eval", str(out / "model.pemn"), "--batch-size", "100", "--threads", "1"])
    assert code == 0, err
    assert re.search(r"eval \(1 CPU thread\): 100/359 images", err) and "300/359" in err, err


def test_text_progress_counts_characters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    import pemn.training.progress as progress

    monkeypatch.setattr(progress, "PLAIN_PROGRESS_EVERY", 0.0)
    lines: list[str] = []
    train(quick_text_config(tmp_path, strategy="rp", ratio=0.1, progress=True), log=lines.append)
    shown = [m.groups() for line in lines if (m := re.search(r"epoch \d/2: ([\d,]+)/([\d,]+) (\w+)", line))]
    # 9 steps of 4 windows of 8 characters in epoch 1, then 3 steps: characters against characters
    assert shown[0] == ("32", "288", "characters") and shown[8] == ("288", "288", "characters"), lines
    assert shown[-1] == ("96", "96", "characters")
    assert all(int(done.replace(",", "")) <= int(total.replace(",", "")) for done, total, _ in shown)
    assert not any("images" in line for line in lines), lines
