"""The warning when a prototype has only a handful of values: from ``pemn.convert_`` and as one line in the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_run import run
from conftest import QUICK_ARGV

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize(("ratio", "warns"), [(1e-3, True), (1e-2, True), (0.05, False)])
def test_convert_warns_when_the_prototype_has_a_handful_of_values(ratio: float, warns: bool) -> None:
    import warnings

    import pemn
    from pemn.training.models import create_model

    model = create_model("tiny-cnn", num_classes=10, in_channels=1, image_size=8)  # largest layer: 288 weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pemn.convert_(model, pemn.PEMNConfig(strategy="rp", ratio=ratio, keep=0.5, seed=0))
    found = [str(w.message) for w in caught if "prototype has only" in str(w.message)]
    assert bool(found) == warns, found
    if warns:
        n = int(ratio * 288) + 1
        assert f"only {n} value" in found[0] and "ratio >= 0.024" in found[0] and "ratio=0.1: 29 values" in found[0]


def test_cli_prints_the_tiny_prototype_warning_as_one_line(tmp_path: Path) -> None:
    code, stdout, err = run(["train", *QUICK_ARGV, "--model", "tiny-cnn", "--out", str(tmp_path / "r")])
    assert code == 0, err
    assert stdout.splitlines()[0].startswith("warning: the rp prototype has only 1 value (ratio 0.001")
    assert "1 prototype value," in stdout and "Warning" not in err
