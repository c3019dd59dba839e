"""Golden artifacts written by an earlier pemn (tests/make_golden.py) must load to the same outputs forever."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pemn

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import cases  # noqa: E402
from make_golden import GOLDEN  # noqa: E402


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_artifact_loads_exactly(name: str) -> None:
    model_name, strategy, coding, storage = GOLDEN[name]
    path = HERE / "data" / f"{name}.pemn"
    expected = load_file(HERE / "data" / f"{name}.expected.safetensors")
    torch.manual_seed(2024)
    model = pemn.load(path, cases.build(model_name, seed=5)).eval()
    with torch.no_grad():
        assert torch.equal(model(expected["input"]), expected["output"])
    s = pemn.summary(path, verbose=False)
    assert (s.strategy, s.coding, s.prototype_storage) == (cases.config(strategy).strategy, coding, storage)
