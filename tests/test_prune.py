"""The paper's pruning baselines (Random / Minimum = magnitude) and the honest sparse file."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import nn

import pemn
from pemn.errors import ArchitectureMismatchError, FormatError
from pemn.training.models import create_model
from pemn.training.prune import (
    load_sparse,
    prunable_weights,
    prune_,
    pruned_count,
    pruning_masks,
    read_sparse,
    remove_pruning_,
    save_sparse,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("lenet5", num_classes=10, in_channels=1, image_size=28)


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("tiny-cnn", num_classes=10, in_channels=1, image_size=8)


def zero_fraction(model: nn.Module) -> float:
    ws = [m.weight for m in prunable_weights(model).values()]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("method", ["random", "magnitude"])
@pytest.mark.parametrize("compression", [0.9, 0.96, 0.5])
@pytest.mark.parametrize("factory", [lenet, tiny_cnn])
def test_exact_zero_fraction(factory, method, scope, compression):
    model = factory()
    masks = prune_(model, method, compression, seed=3, scope=scope)
    total = sum(m.numel() for m in masks.values())
    assert set(masks) == set(prunable_weights(model))
    assert sum(int((~m).sum()) for m in masks.values()) == pruned_count(compression, total)
    assert zero_fraction(model) == pruned_count(compression, total) / total
    assert abs(zero_fraction(model) - compression) <= 1 / total
    for name, module in prunable_weights(model).items():
        assert masks[name].dtype == torch.bool and masks[name].shape == module.weight.shape
        assert torch.all(module.weight[~masks[name]] == 0)
        assert torch.all(module.weight[masks[name]] != 0)  # random init has no exact zeros
        if scope == "layer":  # the same fraction in every layer (up to one weight)
            frac = float((~masks[name]).float().mean())
            assert abs(frac - compression) <= 1 / masks[name].numel() + 1e-12


def test_magnitude_removes_the_smallest():
    model = lenet()
    before = {n: m.weight.detach().clone() for n, m in prunable_weights(model).items()}
    masks = prune_(model, "magnitude", 0.9, scope="layer")
    for name, w in before.items():
        assert w[~masks[name]].abs().max() <= w[masks[name]].abs().min()
    model = lenet()
    masks = prune_(model, "magnitude", 0.9, scope="global")
    pruned = torch.cat([before[n][~m] for n, m in masks.items()]).abs()
    kept = torch.cat([before[n][m] for n, m in masks.items()]).abs()
    assert pruned.max() <= kept.min()


def test_global_magnitude_at_init_collapses_a_layer_which_is_why_layer_is_the_default():
    masks = prune_(lenet(), "magnitude", 0.96, scope="global")
    assert min(int(m.sum()) for m in masks.values()) == 0
    masks = prune_(lenet(), "magnitude", 0.96)
    assert min(int(m.sum()) for m in masks.values()) > 0


def test_random_is_seeded():
    a = prune_(lenet(), "random", 0.9, seed=1)
    b = prune_(lenet(), "random", 0.9, seed=1)
    c = prune_(lenet(), "random", 0.9, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_pruned_weights_stay_zero_while_training(opt):
    model = tiny_cnn()
    masks = prune_(model, "random", 0.8, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    if opt == "adamw":
        optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
    else:
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(16, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (16,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for name, module in prunable_weights(model).items():
            assert torch.all(module.weight.grad[~masks[name]] == 0)
        optimizer.step()
    for name, module in prunable_weights(model).items():
        assert torch.all(module.weight[~masks[name]] == 0)
        assert not torch.equal(module.weight[masks[name]], torch.zeros_like(module.weight[masks[name]]))


def test_forward_reapplies_the_mask():
    model = tiny_cnn()
    masks = prune_(model, "magnitude", 0.5)
    name, module = next(iter(prunable_weights(model).items()))
    with torch.no_grad():
        module.weight.fill_(1.0)
    model(torch.zeros(2, 1, 8, 8))
    assert torch.equal(module.weight != 0, masks[name])


def test_masks_are_buffers_that_do_not_touch_the_state_dict():
    model = tiny_cnn()
    keys = set(model.state_dict())
    prune_(model, "random", 0.9)
    assert set(model.state_dict()) == keys
    assert set(pruning_masks(model)) == set(prunable_weights(model))
    masks = remove_pruning_(model)
    assert pruning_masks(model) == {}
    assert len(masks) == len(prunable_weights(model))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    model(torch.zeros(2, 1, 8, 8))
    assert torch.all(model[0].weight == 1.0)  # no hook any more


def test_errors():
    with pytest.raises(ValueError, match="random, magnitude"):
        prune_(lenet(), "minimum", 0.9)
    with pytest.raises(ValueError, match="layer, global"):
        prune_(lenet(), "random", 0.9, scope="per-layer")
    for bad in (1.0, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match="compression"):
            prune_(lenet(), "random", bad)
    model = lenet()
    prune_(model, "random", 0.9)
    with pytest.raises(ValueError, match="already pruned"):
        prune_(model, "random", 0.9)
    converted = pemn.convert_(lenet(), pemn.PEMNConfig(strategy="mask"))
    with pytest.raises(ValueError, match="dense"):
        prune_(converted, "magnitude", 0.9)
    with pytest.raises(ValueError, match="no Conv/Linear"):
        prune_(nn.Sequential(nn.ReLU()), "random", 0.5)


# ------------------------------------------------------------------------------------------ sparse file


def payload_bytes(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """What the file must hold: 4 B per survivor + the cheaper of int32 indices and a bitmask, + extras."""
    total = 0
    for m in masks.values():
        kept, n = int(m.sum()), m.numel()
        total += 4 * kept + min(4 * kept, (n + 7) // 8)
    for k, v in model.state_dict().items():
        if k not in masks:
            total += v.numel() * (4 if v.is_floating_point() else v.element_size())
    return total


@pytest.mark.parametrize("compression", [0.5, 0.9, 0.96, 0.99])
@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_sparse_round_trip_and_honest_bytes(tmp_path, method, compression):
    model = lenet()
    masks = prune_(model, method, compression, seed=0)
    path = tmp_path / "m.sparse.safetensors"
    size = save_sparse(model, masks, path)
    data = path.read_bytes()
    assert size == len(data)
    header_len = struct.unpack("<Q", data[:8])[0]
    assert data[8:9] == b"{"  # a safetensors header, not a pickle
    assert size == 8 + header_len + payload_bytes(model, masks)
    assert header_len < 2048
    n = sum(m.numel() for m in masks.values())
    extras = sum(v.numel() for k, v in model.state_dict().items() if k not in masks)
    # roughly (1 - c) * N * (4 + index bytes) + extras, index bytes <= 4
    assert size <= (1 - compression) * n * 8 + 4 * extras + 8 + header_len + 1 + len(masks)
    dense = 4 * (n + extras)
    assert size < dense * (1 - compression) * 2 + 4 * extras + 4096
    meta = json.loads(data[8:8 + header_len])["__metadata__"]
    encodings = {e["encoding"] for e in json.loads(meta["manifest"])}
    if compression == 0.99:
        assert "index" in encodings  # 4 B per survivor beats 1 bit per weight below 1/32 kept
    if compression <= 0.9:
        assert encodings == {"bitmask"}
    # round trip into a fresh model of another seed
    fresh = lenet(seed=123)
    assert load_sparse(path, fresh) is fresh
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))
    _state, read_masks = read_sparse(path)
    assert all(torch.equal(read_masks[k], masks[k]) for k in masks)
    assert set(load_file(str(path))) >= {f"values/{k}" for k in masks}


def test_sparse_file_errors(tmp_path):
    model = lenet()
    masks = prune_(model, "random", 0.9)
    path = tmp_path / "m.safetensors"
    save_sparse(model, masks, path)
    with pytest.raises(ArchitectureMismatchError, match="does not fit the model: missing"):
        load_sparse(path, tiny_cnn())
    wrong = create_model("lenet5", num_classes=7, in_channels=1, image_size=28)
    with pytest.raises(ArchitectureMismatchError, match="shape"):
        load_sparse(path, wrong)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(FormatError, match="never unpickles"):
        read_sparse(bad)
    with pytest.raises(KeyError):
        save_sparse(model, {"nope.weight": masks["features.0.weight"]}, tmp_path / "x.safetensors")
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def _edit_sparse(path: Path, out: Path, edit: Any) -> Path:
    """A copy of the sparse file ``path`` with ``edit(metadata, tensors)`` applied."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    edit(metadata, tensors)
    out.write_bytes(st_save(tensors, metadata=metadata))
    return out


def _set_manifest(field: str, value: Any) -> Any:
    def edit(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
        manifest = json.loads(metadata["manifest"])
        manifest[0][field] = value
        metadata["manifest"] = json.dumps(manifest)
    return edit


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m, t: m.update(format="pt"), "not a pemn sparse file"),
    (lambda m, t: m.update(format_version="9"), "unsupported sparse format version"),
    (lambda m, t: m.update(manifest="{not json"), "corrupt pemn sparse file"),
    (lambda m, t: m.pop("manifest"), r"corrupt pemn sparse file \(missing 'manifest'\)"),
    (lambda m, t: m.update(manifest='[{"name": 3}]'), "corrupt pemn sparse file"),
    (lambda m, t: [t.pop(k) for k in list(t) if k.startswith("values/")], "corrupt pemn sparse file"),
    (_set_manifest("kept", 1), "survivors"),
    (_set_manifest("shape", [2, "x"]), "corrupt pemn sparse file"),
    (_set_manifest("shape", [1]), "corrupt pemn sparse file|index out of range|survivors"),
])
def test_corrupt_sparse_files_are_format_errors(tmp_path: Path, edit: Any, match: str) -> None:
    """Every way a sparse file can be broken is one FormatError naming the file (the CLI prints it as is)."""
    model = lenet()
    path = tmp_path / "m.safetensors"
    save_sparse(model, prune_(model, "magnitude", 0.9), path)
    bad = _edit_sparse(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(FormatError, match=match):
        load_sparse(bad, lenet())


def test_pruned_count_is_exact():
    assert pruned_count(0.9, 10) == 9
    assert pruned_count(0.96, 61470) == round(0.96 * 61470)
    assert pruned_count(0.1, 70) == 7
    assert math.isclose(pruned_count(0.5, 1000) / 1000, 0.5)
