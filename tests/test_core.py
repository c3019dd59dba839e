"""Masked layers, conversion, prototypes and save/load: table-driven over strategies × layer types."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import cases
import pemn
from pemn import PEMNConfig, kept_count
from pemn.coding import entropy_bits
from pemn.convert import find_bank, masked_weights
from pemn.layers import MaskedLayer
from pemn.masking import _MaskedProduct, kth_smallest, masked_product, ste_mask, topk_mask

MODEL_NAMES = list(cases.MODELS)
STRATEGY_NAMES = list(cases.STRATEGIES)
GRID = list(itertools.product(MODEL_NAMES, STRATEGY_NAMES))


def converted(model_name: str, strategy: str, seed: int = 0) -> nn.Module:
    return pemn.convert_(cases.build(model_name, seed), cases.config(strategy))


@pytest.mark.parametrize(("model_name", "strategy"), GRID)
def test_kept_counts_exact(model_name: str, strategy: str) -> None:
    model = converted(model_name, strategy)
    cfg = cases.config(strategy)
    mws = masked_weights(model)
    assert mws, "nothing was masked"

    def check() -> None:
        counts = [int(mw.current_mask().sum()) for mw in masked_weights(model).values()]
        numels = [mw.numel for mw in masked_weights(model).values()]
        if cfg.scope == "layer":
            assert counts == [kept_count(cfg.keep, n) for n in numels]
        else:  # one budget over all layers; no layer left empty
            budget = kept_count(cfg.keep, sum(numels))
            assert min(counts) >= 1 and budget <= sum(counts) <= budget + len(counts)

    check()
    cases.train_steps(model, cases.make_input(model_name))
    check()
    pemn.freeze_masks(model)
    check()
    for mw in masked_weights(model).values():
        assert mw.frozen and "scores" not in dict(mw.named_parameters())
        assert int(mw.current_mask().sum()) == mw.kept


@pytest.mark.parametrize(("model_name", "strategy"), GRID)
def test_only_scores_and_extras_train(model_name: str, strategy: str) -> None:
    model = converted(model_name, strategy)
    x = cases.make_input(model_name)
    model(x).square().sum().backward()
    names = [n for n, p in model.named_parameters()]
    masked = masked_weights(model)
    for wname in masked:
        assert wname not in names, f"dense copy of {wname} survived conversion"
    for name, p in model.named_parameters():
        assert p.requires_grad
        if name.endswith("scores"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(not b.requires_grad for b in find_bank(model).buffers())
    assert not list(find_bank(model).parameters())


@pytest.mark.parametrize(("model_name", "strategy"), GRID)
def test_storage_shared(model_name: str, strategy: str) -> None:
    model = converted(model_name, strategy)
    banks = {id(mw.bank) for mw in masked_weights(model).values()}
    assert len(banks) == 1
    model.to(torch.float64)
    bank = find_bank(model)
    ptrs = {name: buf.untyped_storage().data_ptr() for name, buf in bank.named_buffers()}
    for mw in masked_weights(model).values():
        assert mw.bank is bank
        view = bank.view(mw.source, mw.numel)
        assert view.untyped_storage().data_ptr() == ptrs[mw.source]
        assert view.dtype == torch.float64
    # the memory held by the bank is the prototype's, not one copy per layer
    held = sum(b.numel() for b in bank.buffers())
    n = sum(mw.numel for mw in masked_weights(model).values())
    if strategy.startswith(("mp", "rp")):
        assert held == max(mw.numel for mw in masked_weights(model).values()) < n or len(masked_weights(model)) == 1


@pytest.mark.parametrize(("model_name", "strategy"), GRID)
def test_materialize_and_freeze_same_outputs(model_name: str, strategy: str) -> None:
    model = converted(model_name, strategy)
    x = cases.make_input(model_name)
    cases.train_steps(model, x)
    model.eval()
    with torch.no_grad():
        before = model(x)
        dense = pemn.materialize(model)
        assert not any(isinstance(m, MaskedLayer) for m in dense.modules())
        assert torch.equal(dense(x), before)
        assert masked_weights(model), "materialize must not change its input"
        pemn.freeze_masks(model)
        assert torch.equal(model(x), before)
    assert not any(p.requires_grad for n, p in dense.named_parameters() if n in masked_weights(model))
    dense.requires_grad_(True).train()
    dense(x).sum().backward()  # a plain trainable model


@pytest.mark.parametrize("coding", ["packed", "entropy", "context"])
@pytest.mark.parametrize(("model_name", "strategy"), GRID)
def test_save_load_roundtrip(tmp_path: Path, model_name: str, strategy: str, coding: str) -> None:
    model = converted(model_name, strategy)
    x = cases.make_input(model_name)
    cases.train_steps(model, x)
    path = pemn.save(model, tmp_path / "m.pemn", coding=coding)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    fresh = cases.build(model_name, seed=99)
    assert pemn.load(path, fresh) is fresh
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    for (n1, a), (n2, b) in zip(masked_weights(model).items(), masked_weights(fresh).items(), strict=True):
        assert n1 == n2 and torch.equal(a.current_mask(), b.current_mask())


SUBPROCESS = r"""
import sys, torch
import cases, pemn  # cases from the working directory, tests/
torch.manual_seed(12345)  # another global seed than the saving process
for model_name, path, out in zip(*[iter(sys.argv[1:])] * 3):  # one (model, file, output) triple per case
    model = cases.build(model_name, seed=777)
    pemn.load(path, model).eval()
    with torch.no_grad():
        torch.save(model(cases.make_input(model_name)), out)
"""

NEW_PROCESS_CASES = [
    ("conv2d", "rp", "packed", "values"),
    ("mha", "mp_rescale_rand", "entropy", "seed"),
    ("depthwise_conv2d", "one_layer", "entropy", "values"),
    ("conv3d", "mask", "packed", "seed"),
]


@pytest.fixture(scope="module")
def loaded_in_new_process(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """Each case of :data:`NEW_PROCESS_CASES` trained and saved here, and loaded into a model built with other seeds
    in one fresh process (one process start for all): case -> (output here, output there)."""
    folder = tmp_path_factory.mktemp("new_process")
    expected, argv = {}, []
    for i, (model_name, strategy, coding, prototype) in enumerate(NEW_PROCESS_CASES):
        model = converted(model_name, strategy)
        x = cases.make_input(model_name)
        cases.train_steps(model, x)
        path = pemn.save(model, folder / f"m{i}.pemn", coding=coding, prototype=prototype)
        model.eval()
        with torch.no_grad():
            expected[i] = model(x)
        argv += [model_name, str(path), str(folder / f"out{i}.pt")]
    subprocess.run([sys.executable, "-c", SUBPROCESS, *argv], cwd=Path(__file__).parent, check=True, timeout=120)
    return {case: (expected[i], torch.load(folder / f"out{i}.pt")) for i, case in enumerate(NEW_PROCESS_CASES)}


@pytest.mark.parametrize(("model_name", "strategy", "coding", "prototype"), NEW_PROCESS_CASES)
def test_load_in_new_process_exact(loaded_in_new_process: dict[tuple[str, ...], tuple[torch.Tensor, ...]],
                                   model_name: str, strategy: str, coding: str, prototype: str) -> None:
    expected, got = loaded_in_new_process[model_name, strategy, coding, prototype]
    assert torch.equal(got, expected)


def test_convert_returns_same_object_and_spares_global_rng() -> None:
    model = cases.build("conv2d")
    state = torch.random.get_rng_state()
    assert pemn.convert_(model, PEMNConfig()) is model
    assert torch.equal(torch.random.get_rng_state(), state)


def test_conversion_independent_of_global_seed() -> None:
    a = converted("mha", "rp", seed=1)
    b = converted("mha", "rp", seed=2)
    for ma, mb in zip(masked_weights(a).values(), masked_weights(b).values(), strict=True):
        assert torch.equal(ma.scores, mb.scores) and torch.equal(ma.base(), mb.base())


def test_ste_gradient_is_straight_through() -> None:
    model = converted("linear_nobias", "rp")
    mw = next(iter(masked_weights(model).values()))
    g = torch.randn(mw.shape, generator=torch.Generator().manual_seed(0))
    (mw() * g).sum().backward()
    expected = g * mw.base() * torch.sign(mw.scores.detach())
    assert torch.allclose(mw.scores.grad, expected)


def test_ste_mask_gradient_passes_unchanged() -> None:
    s = torch.randn(10, requires_grad=True)
    m = ste_mask(s, 4)
    assert m.sum() == 4
    g = torch.arange(10.0)
    m.backward(g)
    assert torch.equal(s.grad, g * torch.sign(s.detach()))


def test_topk_ties_go_to_lowest_index() -> None:
    a = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5, 2.0])
    assert topk_mask(a, 3).tolist() == [False, True, True, True, False, False]
    assert topk_mask(torch.zeros(2, 3), 4).flatten().tolist() == [True] * 4 + [False] * 2
    assert topk_mask(a, 6).all() and not topk_mask(a, 0).any()


def _reference_topk(magnitudes: torch.Tensor, kept: int) -> torch.Tensor:
    """The mask as pemn first computed it: torch.kthvalue, then ties at the threshold to the lowest index."""
    flat = magnitudes.reshape(-1)
    threshold = torch.kthvalue(flat, flat.numel() - kept + 1).values
    above, at = flat > threshold, flat == threshold
    return (above | (at & (torch.cumsum(at, 0) <= kept - above.sum()))).view_as(magnitudes)


def _magnitudes(case: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(37, 29, generator=g, dtype=torch.float64)
    if case == "ties":  # many equal values, some of them at the threshold
        x = (x * 8).floor()
    elif case == "zeros":
        x[::3] = 0
    elif case in ("nan", "ties_nan"):  # broken scores: NaN orders last, never compares as kept; half of them
        if case == "ties_nan":        # with the sign bit
            x = (x * 8).floor()
        x[::7] = float("nan")
        x[::14] = -x[::14]
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["random", "ties", "zeros"])
@pytest.mark.parametrize("keep", [1 / 1073, 0.1, 0.5, 0.97])
def test_topk_mask_equals_kthvalue_reference(dtype: torch.dtype, case: str, keep: float) -> None:
    """The fast selection (numpy's introselect on the CPU, one comparison when nothing ties) gives exactly the
    mask of the kthvalue algorithm, as bool and as 0/1 floats."""
    mags = _magnitudes(case, dtype)
    kept = kept_count(keep, mags.numel())
    expected = _reference_topk(mags, kept)
    assert torch.equal(topk_mask(mags, kept), expected)
    as_float = topk_mask(mags, kept, torch.float32)
    assert as_float.dtype == torch.float32 and torch.equal(as_float, expected.to(torch.float32))
    rank = mags.numel() - kept + 1
    assert torch.equal(kth_smallest(mags.reshape(-1), rank), torch.kthvalue(mags.reshape(-1), rank).values)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_topk_mask_counts_exactly_in_a_narrow_float_dtype(dtype: torch.dtype) -> None:
    """A 0/1 mask asked for in float16 keeps exactly ``kept`` entries when one more ties at the threshold: the
    count that detects the tie must not be rounded (float16 cannot tell 3,000 from 3,001)."""
    mags = torch.arange(4096, dtype=torch.float32)
    kept = 3000
    at = mags.numel() - kept  # the threshold's index; the entry before it ties with it and wins (lower index)
    mags[at - 1] = mags[at]
    expected = _reference_topk(mags, kept)
    mask = topk_mask(mags, kept, dtype)
    assert mask.dtype == dtype and torch.equal(mask.bool(), expected)
    assert int(mask.sum(dtype=torch.int64)) == kept


@pytest.mark.parametrize(("base_dtype", "scores_dtype"), [(torch.float32, torch.float32),
                                                          (torch.float64, torch.float64),
                                                          (torch.float16, torch.float32),
                                                          (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("case", ["random", "ties", "zeros", "nan", "ties_nan"])
@pytest.mark.parametrize("keep", [1 / 1073, 0.3, 0.9, 1.0])
def test_masked_product_bit_identical_to_three_nodes(base_dtype: torch.dtype, scores_dtype: torch.dtype,
                                                     case: str, keep: float) -> None:
    """A training MaskedWeight's one autograd node gives the forward values and score gradients of the
    composition it replaced (abs, straight-through top-k, mul), bit for bit, zero and NaN scores and ties included;
    the same values when no graph is recorded, and the same gradient for a base that trains."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(37, 29, generator=g, dtype=torch.float64).to(base_dtype)
    signs = torch.where(torch.rand(37, 29, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    raw = (_magnitudes(case, torch.float64) * signs).to(scores_dtype)
    grad = torch.randn(37, 29, generator=g, dtype=torch.float64).to(base_dtype)
    kept = kept_count(keep, raw.numel())
    assert "nan" not in case or bool(torch.signbit(raw[torch.isnan(raw)]).any())
    fused_scores, ref_scores = raw.clone().requires_grad_(), raw.clone().requires_grad_()
    fused = masked_product(base, fused_scores, kept)
    reference = base * ste_mask(ref_scores, kept).to(base.dtype)
    fused.backward(grad)
    reference.backward(grad)
    assert fused.dtype == reference.dtype == base_dtype
    assert torch.equal(fused, reference)
    assert torch.equal(torch.signbit(fused), torch.signbit(reference))  # -0.0 where a negative value is masked
    assert torch.equal(fused_scores.grad, ref_scores.grad)
    assert torch.equal(torch.signbit(fused_scores.grad), torch.signbit(ref_scores.grad))
    with torch.no_grad():
        assert torch.equal(masked_product(base, fused_scores, kept), reference)
    strided = raw.t().contiguous().t().requires_grad_()  # the same scores in column-major memory
    assert torch.equal(masked_product(base, strided, kept), reference)
    # the backward that takes the sign itself (other devices than the CPU)
    late_scores = raw.clone().requires_grad_()
    _MaskedProduct.apply(base, late_scores, kept, False).backward(grad)
    assert torch.equal(late_scores.grad, ref_scores.grad)
    assert torch.equal(torch.signbit(late_scores.grad), torch.signbit(ref_scores.grad))
    trained_base, ref_base = base.clone().requires_grad_(), base.clone().requires_grad_()
    masked_product(trained_base, raw.clone().requires_grad_(), kept).backward(grad)
    (ref_base * ste_mask(raw.clone().requires_grad_(), kept).to(base.dtype)).backward(grad)
    assert torch.equal(trained_base.grad, ref_base.grad)


@pytest.mark.parametrize(("keep", "numel", "expected"), [
    (0.5, 25, 13), (0.1, 70, 7), (0.3, 7, 3), (1.0, 9, 9), (1e-6, 10, 1), (0.7, 10, 7), (0.9, 10, 9),
])
def test_kept_count(keep: float, numel: int, expected: int) -> None:
    assert kept_count(keep, numel) == expected
    # the paper's formula, in exact arithmetic
    assert expected == max(1, numel - math.floor(round((1 - keep) * numel, 9)))


def test_global_scope_one_threshold() -> None:
    """scope='global': one threshold over all layers; layers keep different fractions; empty layers are guarded."""
    model = pemn.convert_(nn.Sequential(nn.Linear(20, 30, bias=False), nn.Linear(30, 2, bias=False)),
                          PEMNConfig(strategy="mp", keep=0.1, scope="global"))
    a, b = masked_weights(model).values()
    with torch.no_grad():
        a.scores.mul_(100)  # layer a's scores dwarf b's: a global top-k takes nearly all from a
    ma, mb = a.current_mask(), b.current_mask()
    assert int(mb.sum()) == 1 and int(ma.sum()) == kept_count(0.1, 660)  # b keeps only its guard weight
    threshold = a.scores.detach().abs()[ma].min()
    assert (a.scores.detach().abs()[~ma] <= threshold).all()
    x = torch.randn(3, 20)
    model(x).sum().backward()
    assert a.scores.grad is not None and b.scores.grad is not None


def test_global_scope_does_not_starve_wide_layers_at_init() -> None:
    """Raw |scores| start at U(±1/sqrt(fan_in)): a raw global top-k kept 0 of 4096 pointwise weights in a
    ConvMixer (a dead network). Normalised by that scale, every layer starts near the global fraction."""
    from pemn.training.models import create_model

    model = pemn.convert_(create_model("convmixer-64-4"), PEMNConfig(keep=0.1, scope="global"))
    fractions = [float(mw.current_mask().float().mean()) for mw in masked_weights(model).values()]
    assert min(fractions) > 0.05 and max(fractions) < 0.2, fractions


def test_eval_and_train_modes_both_run() -> None:
    model = converted("mha", "rp")
    x = cases.make_input("mha")
    model.train()
    y_train = model(x)
    model.eval()
    with torch.no_grad():
        y_eval = model(x)  # MultiheadAttention's fast path reads the masked in_proj_weight
    assert torch.allclose(y_train, y_eval, atol=1e-5)


# --- prototypes ---------------------------------------------------------------------------------------

GOLDEN_VALUES = {
    "kaiming_normal": "13c7ecac8295bde6666bc64d0f7af773bc403346c7dd1f471c89c9bcf3c96812",
    "kaiming_uniform": "acc6caedfb66466d07c151a2906b80ae6fd78864c656926d55afc2ec397a28a3",
    "signed_constant": "4e4c65413a497ed4179542e7e97eff1345df8bd8a44414939bcdf12128391a10",
}


def _sha(values) -> str:
    import hashlib

    return hashlib.sha256(values.astype("<f4").tobytes()).hexdigest()


@pytest.mark.parametrize("init", sorted(GOLDEN_VALUES))
def test_golden_prototype_values(init: str) -> None:
    """Pinned: changing these hashes breaks every seed-only artifact ever saved."""
    from pemn.prototype import random_values

    values = random_values(seed=0, stream=3, count=100_000, fan_in=256, init=init)
    assert _sha(values) == GOLDEN_VALUES[init]


def test_prototype_statistics() -> None:
    from pemn.prototype import random_values

    v = random_values(seed=5, stream=0, count=200_000, fan_in=50, init="kaiming_normal").astype("f8")
    std = math.sqrt(2 / 50)
    assert abs(v.mean()) < 0.01 * std and abs(v.std() / std - 1) < 0.01
    assert abs((abs(v) > 3 * std).mean() - 0.0027) < 0.0005  # the tails are normal too
    u = random_values(seed=5, stream=1, count=200_000, fan_in=50, init="kaiming_uniform")
    assert abs(u.max() - math.sqrt(6 / 50)) < 1e-3 and abs(u.min() + math.sqrt(6 / 50)) < 1e-3
    s = random_values(seed=5, stream=2, count=1000, fan_in=50, init="signed_constant")
    assert sorted(set(s.tolist())) == pytest.approx([-std, std], rel=1e-6)


def test_prototype_independent_of_global_state() -> None:
    import numpy as np

    from pemn.prototype import random_values

    a = random_values(1, 2, 1000, 64, "kaiming_normal")
    torch.manual_seed(5)
    np.random.seed(5)
    assert np.array_equal(a, random_values(1, 2, 1000, 64, "kaiming_normal"))
    assert not np.array_equal(a, random_values(2, 2, 1000, 64, "kaiming_normal"))
    assert not np.array_equal(a, random_values(1, 3, 1000, 64, "kaiming_normal"))


GOLDEN_BANKS = [
    ("convmixer-256-8", {"strategy": "rp", "ratio": 1e-3}, 66,
     "2301df8da5506f4c51a6d1477d5edd000d5278b328be47b952654b7472cb8160"),
    ("convmixer-256-8", {"strategy": "mp", "fill": "rand"}, 65536,
     "5f70e40c575b2a16bf647509e101d911bc360479f817f7ec77b73288dafb73ee"),
    ("resnet20", {"strategy": "one_layer", "init": "signed_constant", "seed": 3}, 75056,
     "c552c32899e12c4d140fc05e6b7669265748ff463fef4e4af80669725e91e522"),
]


@pytest.mark.parametrize(("model_name", "kwargs", "unique", "sha"), GOLDEN_BANKS)
def test_golden_banks(model_name: str, kwargs: dict, unique: int, sha: str) -> None:
    from pemn.training.models import create_model

    bank = find_bank(pemn.convert_(create_model(model_name), PEMNConfig(**kwargs)))
    assert bank.unique_values == unique
    assert bank.sha256 == sha


def test_golden_rand_fill_layout() -> None:
    """The seeded shuffle of fill='rand' is part of the format too."""
    from pemn.training.models import create_model

    bank = find_bank(pemn.convert_(create_model("convmixer-256-8"), PEMNConfig(ratio=1e-2, fill="rand")))
    (buf,) = list(bank.buffers())
    assert _sha(buf.numpy()) == "f90e415cfee151e9c619cc581871697d24af5ef61b27a844d82cca41fe8d8452"


def test_paper_strategies_structure() -> None:
    """The paper's constructions: rp tiles a prefix of mp's vector, mp's vector is the mask strategy's
    largest layer, one_layer shares by shape, and every layer reads the prefix of its source."""
    from pemn.training.models import create_model

    def bank_of(strategy: str, **kw):
        m = pemn.convert_(create_model("convmixer-64-2"), PEMNConfig(strategy=strategy, **kw))
        return m, find_bank(m)

    m_mask, b_mask = bank_of("mask")
    _, b_mp = bank_of("mp")
    m_rp, b_rp = bank_of("rp", ratio=0.01)
    mws = list(masked_weights(m_mask).values())
    largest = max(range(len(mws)), key=lambda i: (mws[i].numel, -i))
    mp_vec = b_mp.view(f"s{largest}", mws[largest].numel)
    assert torch.equal(mp_vec, b_mask.view(f"s{largest}", mws[largest].numel))
    length = int(0.01 * mws[largest].numel) + 1
    assert b_rp.unique_values == length
    tiled = b_rp.view(f"s{largest}", mws[largest].numel)
    assert torch.equal(tiled[:length], mp_vec[:length])
    assert torch.equal(tiled[length:2 * length], mp_vec[:length])
    for mw in masked_weights(m_rp).values():
        assert torch.equal(mw.base().flatten(), tiled[:mw.numel])
    _, b_one = bank_of("one_layer")
    shapes = {mw.shape for mw in mws}
    assert len(b_one.sources) == len(shapes)


def test_convmixer_256_8_summary_matches_paper() -> None:
    from pemn.training.models import create_model

    model = pemn.convert_(create_model("convmixer-256-8"), PEMNConfig(strategy="rp", ratio=1e-3))
    s = pemn.summary(model, verbose=False)
    assert s.masked_weights == 581_120
    assert s.unique_values == 66
    assert round(s.paper_ratio, 5) == 0.96864
    assert s.bytes["masks"] == sum(math.ceil(lay.masked_weights / 8) for lay in s.layers)
    assert s.bytes["prototype"] == 66 * 4
    d = s.to_dict()
    json.dumps(d)
    assert d["paper_ratio"] == s.paper_ratio and len(d["layers"]) == 18
    assert {lay.unique_values for lay in s.layers} == {66}  # every layer tiles the same 66 values


def test_entropy_coding_below_one_bit() -> None:
    model = pemn.convert_(nn.Sequential(nn.Linear(300, 400, bias=False), nn.Linear(400, 200, bias=False)),
                          PEMNConfig(strategy="rp", keep=0.1))
    s = pemn.summary(model, coding="entropy", verbose=False)
    ideal = sum(entropy_bits(lay.masked_weights, lay.kept) for lay in s.layers)
    assert s.bytes["masks"] * 8 <= 1.02 * ideal
    assert s.bytes["masks"] * 8 / s.masked_weights < 0.48  # H(0.1) = 0.469 bits per weight


def test_extras_in_half_precision(tmp_path: Path) -> None:
    model = converted("conv2d", "rp")
    x = cases.make_input("conv2d")
    cases.train_steps(model, x)
    full = pemn.summary(model, verbose=False)
    half = pemn.summary(model, extras_dtype="float16", verbose=False)
    assert half.bytes["extras"] * 2 == full.bytes["extras"]
    assert half.bytes["norm_stats"] < full.bytes["norm_stats"]  # the integer batch counter stays int64
    path = pemn.save(model, tmp_path / "h.pemn", extras_dtype="float16")
    fresh = pemn.load(path, cases.build("conv2d"))
    for name, p in fresh.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p, dict(model.named_parameters())[name].detach().half().float())
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x), atol=1e-2)
    with pytest.raises(ValueError, match="extras_dtype"):
        pemn.save(model, tmp_path / "bad.pemn", extras_dtype="int4")


def test_summary_of_file_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = converted("conv2d", "rp")
    path = pemn.save(model, tmp_path / "m.pemn")
    s = pemn.summary(path)
    assert "paper ratio" in capsys.readouterr().out
    assert s.file_bytes == path.stat().st_size == sum(s.bytes.values())
    assert s.honest_ratio == pytest.approx(s.dense_bytes / s.file_bytes)
    n = sum(p.numel() for p in cases.build("conv2d").parameters())
    bn = 6 * 2  # BatchNorm2d(6) running mean and var (num_batches_tracked is an integer)
    assert s.dense_bytes == 4 * (n + bn)


# --- conversion options ------------------------------------------------------------------------------

def test_targets_and_exclude() -> None:
    m = pemn.convert_(cases.build("conv2d"), PEMNConfig(targets=["Conv2d"]))
    assert set(masked_weights(m)) == {"0.weight", "3.weight"}
    m = pemn.convert_(cases.build("conv2d"), PEMNConfig(exclude=["5"]))
    assert set(masked_weights(m)) == {"0.weight", "3.weight"}
    m = pemn.convert_(cases.build("conv2d"), PEMNConfig(targets=[r"\d"], exclude=["Linear", "1"]))
    assert set(masked_weights(m)) == {"0.weight", "3.weight"}
    m = pemn.convert_(cases.build("mha"), PEMNConfig(targets=["MultiheadAttention"]))
    assert set(masked_weights(m)) == {"attn.in_proj_weight", "attn.out_proj.weight"}
    m = pemn.convert_(cases.build("conv2d"), PEMNConfig(), filter_fn=lambda mod, fqn: fqn != "0")
    assert set(masked_weights(m)) == {"3.weight", "5.weight"}


def test_conversion_errors() -> None:
    with pytest.raises(pemn.ConversionError, match="cannot mask"):
        pemn.convert_(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), PEMNConfig(targets=["1"]))
    with pytest.raises(pemn.ConversionError, match="no module matched"):
        pemn.convert_(nn.Sequential(nn.ReLU()), PEMNConfig())
    m = pemn.convert_(nn.Sequential(nn.Linear(2, 2)), PEMNConfig())
    with pytest.raises(pemn.ConversionError, match="already converted"):
        pemn.convert_(m, PEMNConfig())

    class OwnForward(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(pemn.ConversionError, match="overrides"):
        pemn.convert_(nn.Sequential(OwnForward(2, 2)), PEMNConfig())
    with pytest.raises(TypeError):
        pemn.convert_(nn.Linear(2, 2), {"strategy": "rp"})
    with pytest.raises(pemn.ConversionError):
        pemn.freeze_masks(nn.Linear(2, 2))


def test_root_module_and_wrappers(tmp_path: Path) -> None:
    lin = pemn.convert_(nn.Linear(4, 3), PEMNConfig(strategy="mp"))
    assert isinstance(lin, pemn.MaskedLinear) and isinstance(lin, nn.Linear)
    x = torch.randn(2, 4)
    wrapped = nn.DataParallel(lin)
    path = pemn.save(wrapped, tmp_path / "w.pemn")
    fresh = pemn.load(path, nn.Linear(4, 3))
    assert torch.equal(fresh(x), lin(x))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"strategy": "nope"}, "strategy"),
    ({"strategy": "mp", "ratio": 0.1}, "ratio"),
    ({"strategy": "rp", "ratio": 1.0}, "ratio"),
    ({"strategy": "rp", "ratio": 0}, "ratio"),
    ({"keep": 0}, "keep"),
    ({"keep": 1.5}, "keep"),
    ({"keep": True}, "keep"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"init": "xavier"}, "init"),
    ({"fill": "zigzag"}, "fill"),
    ({"strategy": "mask", "fill": "rand"}, "fill"),
    ({"rescale": "yes"}, "rescale"),
    ({"scope": "model"}, "scope"),
    ({"targets": [3]}, "targets"),
    ({"exclude": ["("]}, "exclude"),
])
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PEMNConfig(**kwargs)


def test_config_json_roundtrip() -> None:
    cfg = PEMNConfig(strategy="rp", ratio=1e-4, keep=0.3, seed=3, targets=["Linear"], exclude=["head"])
    assert PEMNConfig.from_json(cfg.to_json()) == cfg
    assert PEMNConfig().ratio == 1e-3
    with pytest.raises(ValueError, match="unknown PEMNConfig field"):
        PEMNConfig.from_dict({"strategy": "rp", "sparsity": 0.5})


def test_summary_echoes_one_line_in_a_repl() -> None:
    model = pemn.convert_(torch.nn.Sequential(torch.nn.Linear(64, 32)), pemn.PEMNConfig(ratio=0.1))
    text = repr(pemn.summary(model, verbose=False))
    assert "\n" not in text and text.startswith("<PEMNSummary rp: 2,048 masked weights, P=205") and "x;" in text
