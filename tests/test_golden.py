"""Golden artifacts written by an earlier pemn (tests/make_golden.py) must load to the same outputs forever."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cases
import pemn
from make_golden import FIRST_DICTIONARY, GOLDEN, build, dense_state
from pemn import artifact

HERE = Path(__file__).parent


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_artifact_loads_exactly(name: str) -> None:
    model_name, strategy, coding, storage, options = GOLDEN[name]
    path = HERE / "data" / f"{name}.pemn"
    expected = load_file(HERE / "data" / f"{name}.expected.safetensors")
    torch.manual_seed(2024)
    model = pemn.load(path, build(model_name, seed=5)).eval()
    masks = {n: mw.current_mask() for n, mw in pemn.masked_weights(model).items()}
    assert {f"mask.{n}" for n in masks} == {k for k in expected if k.startswith("mask.")}
    for n, mask in masks.items():  # the decoded masks: exactly
        assert torch.equal(mask.to(torch.uint8), expected[f"mask.{n}"]), n
    dense = {k.removeprefix("dense."): v for k, v in expected.items() if k.startswith("dense.")}
    assert bool(dense) == bool(options)  # lossy options: the dense state as decoded then, exactly
    state = dense_state(model)
    for k, v in dense.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    with torch.no_grad():  # the outputs: to float rounding (matmul sums in another order on other thread counts)
        assert torch.allclose(model(expected["input"]), expected["output"], rtol=1e-5, atol=1e-6)
    s = pemn.summary(path, verbose=False)
    assert (s.strategy, s.coding, s.prototype_storage) == (cases.config(strategy).strategy, coding, storage)
    art = pemn.artifact.read(path)
    assert art.format_version == int(name.split("_")[1].removeprefix("v"))
    assert bool(art.folded) == (options.get("fold_norms", False) and model_name.startswith("conv2d"))
    if art.format_version == 3:  # the preset dictionary its index names: the first one, or the core's
        expected_dictionary = artifact.FIRST_INDEX_DICTIONARY if name in FIRST_DICTIONARY else artifact.INDEX_DICTIONARY
        assert artifact.index_dictionary(art.tensors["index"].numpy().tobytes()) is expected_dictionary
    if coding == "context":  # the row models these files pin (order 0 is the entropy coding's payload)
        assert {e.get("model") for e in art.manifest} >= {"rows", "rows-cols"}, art.manifest
    if name.endswith("_fold_rows"):  # the row-wise fold these files pin
        assert [(e[1], e[2]) for e in art.dense if e[1].startswith("fold")] == [("fold.scale", "float16"),
                                                                                ("fold.shift", "int8")]
