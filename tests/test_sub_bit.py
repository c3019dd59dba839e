"""Issue 23: masks below one bit per weight. Probabilistic (Bernoulli) masks that train at the target keep and
save exactly its count."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pemn
from cli_run import run
from conftest import load_script
from pemn.artifact import _check_manifest
from pemn.config import PEMNConfig, kept_count, layer_keeps
from pemn.layers import gain_key
from pemn.masking import bernoulli_mask, keep_shift, topk_mask
from pemn.prototype import slice_scale
from pemn.training.config import resolve_config
from pemn.training.engine import train
from pemn.training.models import create_model
from test_training_methods import quick, quiet

STRATEGIES = [("mask", None), ("one_layer", None), ("mp", None), ("rp", 0.1)]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


# ------------------------------------------------------------------------------------- the sampling rule


@pytest.mark.parametrize("keep", [0.01, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("spread", [0.01, 1.0, 20.0])
def test_keep_shift_lands_on_the_target_keep(keep: float, spread: float) -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3000, generator=g) * spread
    b = keep_shift(scores, keep)
    assert float(torch.sigmoid(scores + b).mean()) == pytest.approx(keep, abs=1e-5)


def test_keep_shift_refuses_degenerate_keeps() -> None:
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="0 < keep < 1"):
            keep_shift(torch.zeros(4), bad)


def test_bernoulli_mask_samples_the_expected_count_with_the_sigmoid_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    scores = (torch.randn(20000, generator=g) * 2).requires_grad_(True)
    torch.manual_seed(0)
    m = bernoulli_mask(scores, 2000)
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    assert abs(float(m.detach().sum()) - 2000) < 5 * math.sqrt(20000 * 0.1 * 0.9)  # 5 sigma
    upstream = torch.randn(20000, generator=g)
    (m * upstream).sum().backward()
    p = torch.sigmoid(scores.detach() + keep_shift(scores, 0.1))
    assert torch.allclose(scores.grad, upstream * p * (1 - p), atol=1e-6)  # straight through to the probabilities
    torch.manual_seed(0)
    assert torch.equal(bernoulli_mask(scores, 2000), m)  # seeded by torch's generator
    assert torch.equal(bernoulli_mask(scores, 0), torch.zeros(20000))
    assert torch.equal(bernoulli_mask(scores, 20000), torch.ones(20000))
    with pytest.raises(ValueError, match="kept must be"):
        bernoulli_mask(scores, 20001)


# ------------------------------------------------------------------------------------------ the config


def test_mask_sampling_is_validated_and_serialized_only_when_set() -> None:
    assert "mask_sampling" not in PEMNConfig().to_dict()  # default configs (and artifacts) serialize as before
    cfg = PEMNConfig(mask_sampling="bernoulli")
    assert cfg.to_dict()["mask_sampling"] == "bernoulli"
    assert PEMNConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="mask_sampling must be one of"):
        PEMNConfig(mask_sampling="gumbel")
    with pytest.raises(ValueError, match="needs scope 'layer'"):
        PEMNConfig(mask_sampling="bernoulli", scope="global")


@pytest.mark.parametrize(("strategy", "ratio"), STRATEGIES)
def test_bernoulli_model_samples_in_training_and_saves_the_exact_top_k(strategy: str, ratio: float | None) -> None:
    cfg = PEMNConfig(strategy=strategy, ratio=ratio, keep=0.2, mask_sampling="bernoulli")
    model = pemn.convert_(_net(), cfg)
    with torch.no_grad():  # distinct scores (a well-defined top-k), close enough for the samples to differ
        for mw in pemn.masked_weights(model).values():
            mw.scores.normal_(std=1e-3, generator=torch.Generator().manual_seed(mw.numel))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    model.train()
    torch.manual_seed(0)
    a, b = model(x), model(x)
    assert not torch.equal(a, b)  # a fresh sample per forward
    a.sum().backward()
    assert all(mw.scores.grad is not None and mw.scores.grad.abs().sum() > 0
               for mw in pemn.masked_weights(model).values())
    model.eval()
    for mw in pemn.masked_weights(model).values():  # eval: the most probable weights (signed top-k)
        assert torch.equal(mw.current_mask(), topk_mask(mw.scores.detach(), kept_count(0.2, mw.numel)))
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(model(x), expected)
    art = pemn.artifact.parse(pemn.artifact.to_bytes(model, coding="entropy"))
    assert art.config.mask_sampling == "bernoulli"
    assert all(e["kept"] == kept_count(0.2, math.prod(e["shape"])) for e in art.manifest)
    loaded = pemn.artifact.apply(art, _net()).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)  # the file is the eval-mode model, bit for bit


# ------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_bernoulli_run_is_seeded_and_saves_what_it_tested(tmp_path: Path) -> None:
    kw = {"keep": 0.1, "coding": "entropy", "mask_sampling": "bernoulli"}
    first = train(quick(tmp_path, "a", epochs=1, **kw), log=quiet)
    second = train(quick(tmp_path, "b", epochs=1, **kw), log=quiet)
    assert first.final_acc == second.final_acc
    assert (tmp_path / "a" / "model.pemn").read_bytes() == (tmp_path / "b" / "model.pemn").read_bytes()
    assert first.artifact_acc == first.final_acc  # the saved (top-k) masks are what the test split saw
    art = pemn.artifact.read(first.artifact)
    assert art.config.mask_sampling == "bernoulli" and art.config.keep_rule == "erk"  # erk: the sub-bit default
    assert [e["kept"] for e in art.manifest] == art.config.kept_counts([tuple(e["shape"]) for e in art.manifest])


def test_bernoulli_is_a_pemn_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mask_sampling"):
        quick(tmp_path, strategy="dense", ratio=None, mask_sampling="bernoulli")
    with pytest.raises(ValueError, match="mask_sampling"):
        quick(tmp_path, mask_sampling="gumbel")


# ------------------------------------------------------------------------------------- the ERK keep rule


LENET_SHAPES = [(6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]


def _bits(k: float) -> float:
    return 0.0 if k in (0.0, 1.0) else -(k * math.log2(k) + (1 - k) * math.log2(1 - k))


@pytest.mark.parametrize("keep", [0.02, 0.1, 0.3, 0.5, 0.9, 1.0])
def test_erk_shares_keep_by_layer_size_and_costs_no_more_bits(keep: float) -> None:
    assert layer_keeps(keep, LENET_SHAPES) == [keep] * 5
    keeps = layer_keeps(keep, LENET_SHAPES, "erk")
    numels = [math.prod(s) for s in LENET_SHAPES]
    assert all(0 < k <= 1 for k in keeps)
    assert sum(k * n for k, n in zip(keeps, numels, strict=True)) == pytest.approx(keep * sum(numels))
    density = [sum(s) / n for s, n in zip(LENET_SHAPES, numels, strict=True)]
    for i in range(5):  # a layer with more dims per weight keeps at least as large a fraction
        for j in range(5):
            if density[i] > density[j]:
                assert keeps[i] >= keeps[j]
    coded = sum(n * _bits(k) for k, n in zip(keeps, numels, strict=True))
    assert coded <= sum(numels) * _bits(keep) + 1e-9  # H is concave: never more bits than uniform
    assert layer_keeps(keep, list(reversed(LENET_SHAPES)), "erk") == list(reversed(keeps))  # order-free


def test_erk_caps_small_layers_at_dense() -> None:
    keeps = layer_keeps(0.5, LENET_SHAPES, "erk")
    assert keeps[0] == 1.0 and keeps[4] == 1.0 and keeps[2] < 0.5


def test_keep_rule_is_validated_and_serialized_only_when_set() -> None:
    assert "keep_rule" not in PEMNConfig().to_dict()
    assert PEMNConfig.from_json(PEMNConfig(keep_rule="erk").to_json()).keep_rule == "erk"
    with pytest.raises(ValueError, match="keep_rule must be one of"):
        PEMNConfig(keep_rule="er")
    with pytest.raises(ValueError, match="needs scope 'layer'"):
        PEMNConfig(keep_rule="erk", scope="global")
    with pytest.raises(ValueError, match="keep_rule must be one of"):
        layer_keeps(0.1, LENET_SHAPES, "er")


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 84), nn.ReLU(), nn.Linear(84, 10))


@pytest.mark.parametrize(("strategy", "ratio"), STRATEGIES)
@pytest.mark.parametrize("sampling", ["topk", "bernoulli"])
def test_erk_model_keeps_each_layers_share_and_round_trips(strategy: str, ratio: float | None,
                                                            sampling: str) -> None:
    cfg = PEMNConfig(strategy=strategy, ratio=ratio, keep=0.1, keep_rule="erk", keep_scale=True,
                     mask_sampling=sampling)
    model = pemn.convert_(_lenet(), cfg)
    mws = list(pemn.masked_weights(model).values())
    shapes = [mw.shape for mw in mws]
    assert [mw.kept for mw in mws] == cfg.kept_counts(shapes)
    assert len({mw.kept / mw.numel for mw in mws}) > 1  # not uniform
    for mw, k in zip(mws, cfg.layer_keeps(shapes), strict=True):  # keep_scale uses the layer's own fraction
        assert mw.scale == pytest.approx(slice_scale(cfg, mw.bank.sources[mw.source].fan_in, mw.fan_in, k))
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        expected = model(x)
    data = pemn.artifact.to_bytes(model, coding="entropy")
    art = pemn.artifact.parse(data)
    loaded = pemn.artifact.apply(art, _lenet()).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    pemn.set_keep_(model, 0.5)  # annealing moves every layer's share, and comes back exactly
    assert [mw.kept for mw in mws] == cfg.kept_counts(shapes, 0.5)
    pemn.set_keep_(model, 0.1)
    assert [mw.kept for mw in mws] == cfg.kept_counts(shapes)


def test_erk_manifest_with_uniform_counts_is_a_format_error() -> None:
    uniform = pemn.convert_(_lenet(), PEMNConfig(strategy="rp", ratio=0.1, keep=0.1))
    art = pemn.artifact.build(uniform)
    erk = PEMNConfig(strategy="rp", ratio=0.1, keep=0.1, keep_rule="erk")
    with pytest.raises(pemn.FormatError, match="erk rule"):
        _check_manifest(art.manifest, erk, "")
    _check_manifest(art.manifest, art.config, "")


# ------------------------------------------------------------------------------------ per-channel gains


@pytest.mark.parametrize(("strategy", "ratio"), STRATEGIES)
@pytest.mark.parametrize("extras_dtype", [None, "float16", "int8"])
def test_gains_train_and_round_trip_as_extras(strategy: str, ratio: float | None, extras_dtype: str | None) -> None:
    cfg = PEMNConfig(strategy=strategy, ratio=ratio, keep=0.2, gain=True)
    model = pemn.convert_(_lenet(), cfg)
    plain = pemn.convert_(_lenet(), PEMNConfig(strategy=strategy, ratio=ratio, keep=0.2))
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x), plain(x))  # gains start at 1: the same network as without them
    model(x).square().sum().backward()
    mws = pemn.masked_weights(model)
    for mw in mws.values():
        assert mw.gain.shape == (mw.shape[0],) and mw.gain.grad is not None
        with torch.no_grad():
            mw.gain.copy_(torch.linspace(0.5, 2.0, mw.shape[0]))
    model.eval()
    with torch.no_grad():
        expected = model(x)
    data = pemn.artifact.to_bytes(model, coding="entropy", extras_dtype=extras_dtype)
    art = pemn.artifact.parse(data)
    stored = {e[0] for e in art.dense}
    assert {gain_key(n) for n in mws} <= stored  # extras, so their bytes are in the file
    without = pemn.artifact.to_bytes(plain, coding="entropy", extras_dtype=extras_dtype)
    assert len(data) > len(without)
    loaded = pemn.artifact.apply(art, _lenet()).eval()
    with torch.no_grad():
        got = loaded(x)
    if extras_dtype is None:
        assert torch.equal(got, expected)  # exact
    else:
        assert torch.allclose(got, expected, rtol=0.05, atol=0.05)
    reconverted = pemn.convert_(_lenet(), cfg)  # loading into a model converted with the same config
    pemn.artifact.apply(art, reconverted)
    assert torch.equal(reconverted.eval()(x), got)


def test_gain_is_validated() -> None:
    assert "gain" not in PEMNConfig().to_dict()
    with pytest.raises(ValueError, match="gain must be a bool"):
        PEMNConfig(gain=1)  # type: ignore[arg-type]


def test_a_gain_file_with_a_gainless_config_is_an_architecture_mismatch() -> None:
    model = pemn.convert_(_lenet(), PEMNConfig(strategy="rp", ratio=0.1, gain=True))
    art = pemn.artifact.parse(pemn.artifact.to_bytes(model))
    gainless = dataclasses.replace(art, config=PEMNConfig(strategy="rp", ratio=0.1))
    with pytest.raises(pemn.errors.ArchitectureMismatchError, match="gain"):
        pemn.artifact.apply(gainless, _lenet())


@pytest.mark.parametrize("kw", [{"keep_rule": "erk"}, {"gain": True}])
def test_tasks_refuse_per_layer_shares_and_gains(kw: dict) -> None:
    model = pemn.convert_(_lenet(), PEMNConfig(strategy="rp", ratio=0.1, keep=0.1, **kw))
    with pytest.raises(pemn.errors.ConversionError, match="keep_rule='uniform' and gain=False"):
        pemn.add_task(model, "second")


@pytest.mark.parametrize(("kw", "rule"), [
    ({"keep": 0.1}, "erk"),  # the sub-bit default: pemn train --keep 0.1 --coding entropy
    ({"keep": 0.3}, "erk"),
    ({"keep": 0.5}, "uniform"),  # the paper's setting stays as in RESULTS.md sections 1-5
    ({"keep": 0.1, "paper": True}, "uniform"),
    ({"keep": 0.1, "scope": "global"}, "uniform"),
    ({"keep": 0.1, "keep_rule": "uniform"}, "uniform"),
    ({"keep": 0.5, "keep_rule": "erk"}, "erk"),
])
def test_keep_rule_auto(tmp_path: Path, kw: dict, rule: str) -> None:
    cfg = quick(tmp_path, **kw)
    assert cfg.keep_rule == kw.get("keep_rule", "auto")
    assert cfg.pemn_config().keep_rule == rule


@pytest.mark.parametrize(("kw", "init"), [
    ({"keep": 0.1}, "signed_constant"),  # the sub-bit default: pemn train --keep 0.1 --coding entropy
    ({"keep": 0.3, "scope": "global"}, "signed_constant"),
    ({"keep": 0.5}, "kaiming_normal"),  # the paper's setting stays as in RESULTS.md sections 1-5
    ({"keep": 0.7}, "kaiming_normal"),
    ({"keep": 0.1, "paper": True}, "kaiming_normal"),
    ({"keep": 0.1, "init": "kaiming_normal"}, "kaiming_normal"),
    ({"keep": 0.5, "init": "signed_constant"}, "signed_constant"),
    ({"keep": 0.1, "init": "kaiming_uniform"}, "kaiming_uniform"),
])
def test_init_auto(tmp_path: Path, kw: dict, init: str) -> None:
    cfg = quick(tmp_path, **kw)
    assert cfg.init == kw.get("init", "auto") and cfg.resolved_init() == init
    assert cfg.pemn_config().init == init
    # the prototype a converted model is built from is the resolved one
    torch.manual_seed(0)
    net = pemn.convert_(nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)), cfg.pemn_config())
    values = torch.cat([mw.base().flatten() for mw in pemn.masked_weights(net).values()])
    assert (values.abs().unique().numel() <= 2) is (init == "signed_constant")


def test_init_auto_is_refused_outside_its_choices_and_tasks_keep_kaiming(tmp_path: Path) -> None:
    from pemn.training.tasks import tasks_config

    with pytest.raises(ValueError, match="init"):
        quick(tmp_path, keep=0.1, init="signed")
    assert tasks_config(quick(tmp_path, keep=0.1)).resolved_init() == "kaiming_normal"
    assert tasks_config(quick(tmp_path, keep=0.1, init="signed_constant")).resolved_init() == "signed_constant"


# ------------------------------------------------------------------------------------------- the CLI

@pytest.mark.slow
@pytest.mark.parametrize(("coding", "extra"), [("entropy", []), ("entropy", ["--gain", "--mask-sampling", "bernoulli"]),
                                               ("context", [])])
def test_cli_sub_bit_file_trains_evals_inspects_and_exports(tmp_path: Path, coding: str, extra: list[str]) -> None:
    out = tmp_path / "run"
    code, stdout, err = run(["train", "--model", "tiny-mlp", "--dataset", "digits", "--epochs", "1", "--train-subset",
                             "128", "--device", "cpu", "--no-progress", "--strategy", "rp", "--ratio", "0.1",
                             "--keep", "0.1", "--coding", coding, *extra, "--out", str(out)])
    assert code == 0, err
    assert "keep 0.1 shared by erk" in stdout  # the sub-bit default
    final = float(re.search(r"final epoch \(\d+\): ([0-9.]+) %", stdout).group(1))
    code, text, err = run(["eval", str(out / "model.pemn"), "--json", "--device", "cpu"])
    assert code == 0, err
    assert round(json.loads(text)["accuracy"], 2) == final
    code, text, err = run(["inspect", str(out / "model.pemn"), "--json"])
    assert code == 0, err
    code, _, err = run(["export", str(out / "model.pemn"), "--format", "pt", "-o", str(tmp_path / "x.safetensors")])
    assert code == 0, err


@pytest.mark.parametrize(("model", "kw", "gain"), [
    ("lenet5", {"keep": 0.1}, True),  # no normalization layer, below one bit: gains on
    ("lenet5", {"keep": 0.5}, False),
    ("lenet5", {"keep": 0.1, "paper": True}, False),
    ("lenet5", {"keep": 0.1, "gain": False}, False),
    ("convmixer-64-4", {"keep": 0.1}, False),  # BatchNorm sets the scale
    ("convmixer-64-4", {"keep": 0.5, "gain": True}, True),
])
def test_gain_auto(tmp_path: Path, model: str, kw: dict, gain: bool) -> None:
    net = create_model(model, num_classes=10, in_channels=1, image_size=28)
    cfg = quick(tmp_path, **kw)
    assert cfg.pemn_config(net).gain is gain
    assert cfg.pemn_config().gain is kw.get("gain", False)  # without the model: only an explicit gain


# ------------------------------------------------------------------------------- mask structure (item 5)


def test_mask_structure_script_sees_rows_and_counts_their_cost(tmp_path: Path) -> None:
    script = load_script("scripts/mask_structure.py")
    rows = np.zeros((20, 50), dtype=bool)
    rows[:2] = True  # whole output channels kept: one probability per row codes it almost for free
    rep = script.layer_report(rows)
    assert rep["layer"] == pytest.approx(_bits(0.1))
    assert rep["row"] == pytest.approx(20 * math.log2(51) / 1000)  # only the stored row counts
    g = np.random.default_rng(0)
    scattered = g.random((20, 50)) < 0.1  # no structure: the per-row counts cost more than they save
    rep = script.layer_report(scattered)
    assert rep["row"] > rep["layer"] and rep["column"] > rep["layer"]
    model = pemn.convert_(_lenet(), PEMNConfig(strategy="rp", ratio=0.1, keep=0.1, keep_rule="erk"))
    path = tmp_path / "m.pemn"
    pemn.save(model, path, coding="entropy")
    report = script.file_report(str(path))
    coded = sum(e["bytes"] for e in pemn.artifact.read(path).manifest) * 8 / report["weights"]
    assert report["mask_bits_per_weight"]["layer"] <= coded <= report["mask_bits_per_weight"]["layer"] + 0.05
    # the context coder's real bytes, beside the ideals: what pemn.save(coding="context") writes for these masks
    context = pemn.save(model, tmp_path / "c.pemn", coding="context")
    written = {e["name"]: e for e in pemn.artifact.read(context).manifest}
    for name, layer in report["layers"].items():
        assert layer["context"] == round(8 * written[name]["bytes"] / layer["weights"], 4)
        assert layer["context_model"] == written[name].get("model", "order0")


def test_resume_of_a_run_written_before_the_auto_fields_keeps_its_settings(tmp_path: Path) -> None:
    cfg = quick(tmp_path, model="lenet5", dataset="mnist", keep=0.1)  # auto: erk and gains for this plain net
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("keep_rule", "gain")}  # an older config.json
    out = tmp_path / "run"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(old))
    resumed = resolve_config({"out": str(out), "resume": True})
    net = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    assert (resumed.keep_rule, resumed.gain) == ("uniform", False)
    assert (resumed.pemn_config(net).keep_rule, resumed.pemn_config(net).gain) == ("uniform", False)
    assert (cfg.pemn_config(net).keep_rule, cfg.pemn_config(net).gain) == ("erk", True)  # a new run


@pytest.mark.parametrize("settings", [{"strategy": "dense"}, {"strategy": "dense", "quantize": "binary"},
                                      {"strategy": "dense", "prune": "magnitude", "compression": 0.9}],
                         ids=["dense", "quantized", "pruned"])
def test_resume_of_an_older_baseline_run_is_not_given_pemn_options(tmp_path: Path, settings: dict) -> None:
    """A dense / quantized / pruned run's config.json from before keep_rule/gain existed once failed to resume
    ('the PEMN option(s) ['keep_rule', 'gain'] do not apply'): the older settings were filled in for every run."""
    cfg = quick(tmp_path, model="lenet5", dataset="mnist", ratio=None, **settings)
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("keep_rule", "gain")}
    out = tmp_path / "run"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(old))
    resumed = resolve_config({"out": str(out), "resume": True})
    assert resumed.strategy == "dense" and resumed.quantize == settings.get("quantize")


# ------------------------------------------------------------------------------------ context coding


def _structured_net(seed: int = 0) -> nn.Module:
    """A two-layer classifier whose masks keep unequal shares per unit (rows) and per input (columns), as trained
    LeNet-5 classifiers do: scores scaled by a per-row and a per-column factor before the top-k."""
    torch.manual_seed(seed)
    model = pemn.convert_(nn.Sequential(nn.Linear(600, 180), nn.ReLU(), nn.Linear(180, 10)),
                          PEMNConfig(strategy="rp", ratio=1e-2, keep=0.1, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mw in pemn.masked_weights(model).values():
            rows, cols = mw.shape
            row = torch.rand(rows, 1, generator=g) * 2.5 + 0.2
            col = torch.where(torch.rand(1, cols, generator=g) < 0.4, 0.3, 1.5)
            mw.scores.copy_(torch.rand(rows, cols, generator=g) * row * col)
    return model


def test_context_coding_saves_structured_masks_exactly(tmp_path: Path) -> None:
    """coding="context": the classifier's masks code well below the entropy coding, the file loads bit for bit,
    and the manifest names each layer's model."""
    model = _structured_net()
    x = torch.randn(5, 600)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    entropy = pemn.save(model, tmp_path / "e.pemn", coding="entropy")
    context = pemn.save(model, tmp_path / "c.pemn", coding="context")
    art_e, art_c = pemn.artifact.read(entropy), pemn.artifact.read(context)
    assert art_c.manifest[0]["model"] == "rows-cols"
    assert [e.get("model", "order0") for e in art_c.manifest] == [
        pemn.coding.encode_context(m.current_mask().numpy(), m.kept, m.shape[0])[1]
        for m in pemn.masked_weights(model).values()]
    assert all(c["bytes"] <= e["bytes"] for c, e in zip(art_c.manifest, art_e.manifest, strict=True))
    masks_e, masks_c = (sum(e["bytes"] for e in a.manifest) for a in (art_e, art_c))
    assert masks_c < 0.9 * masks_e, (masks_c, masks_e)
    fresh = pemn.convert_(nn.Sequential(nn.Linear(600, 180), nn.ReLU(), nn.Linear(180, 10)),
                          PEMNConfig(strategy="rp", ratio=1e-2, keep=0.1, seed=0))
    pemn.load(context, fresh)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    for a, b in zip(pemn.masked_weights(model).values(), pemn.masked_weights(fresh).values(), strict=True):
        assert torch.equal(a.current_mask(), b.current_mask())
    summary = pemn.summary(context, verbose=False)
    assert summary.file_bytes == context.stat().st_size
    assert [lay.mask_model for lay in summary.layers] == [e.get("model", "order0") for e in art_c.manifest]
    assert "mask model" in summary.table() and "rows-cols" in summary.table()
    assert {lay.mask_model for lay in pemn.summary(entropy, verbose=False).layers} == {""}
    assert "mask model" not in pemn.summary(entropy, verbose=False).table()


def test_context_coding_of_many_tasks(tmp_path: Path) -> None:
    """A many-task file (format version 4) context-codes every task's masks and reads each task back exactly."""
    model = _structured_net()
    pemn.add_task(model, "b", activate=True)
    other = pemn.masked_weights(_structured_net(1))
    with torch.no_grad():
        for name, mw in pemn.masked_weights(model).items():  # task b: another structure
            mw.scores.copy_(other[name].scores)
    x = torch.randn(3, 600)
    outputs = {}
    for task in ("default", "b"):
        pemn.set_task(model, task)
        model.eval()
        with torch.no_grad():
            outputs[task] = model(x)
    path = pemn.save(model, tmp_path / "t.pemn", coding="context")
    art = pemn.artifact.read(path)
    assert art.coding == "context"
    assert [t.artifact.manifest[0]["model"] for t in art.tasks] == ["rows-cols"] * 2
    assert pemn.artifact.recode(path.read_bytes(), "entropy") == pemn.save(model, tmp_path / "e.pemn",
                                                                            coding="entropy").read_bytes()
    loaded = pemn.load(path, nn.Sequential(nn.Linear(600, 180), nn.ReLU(), nn.Linear(180, 10)))
    for task in ("default", "b"):
        pemn.set_task(loaded, task)
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), outputs[task]), task


@pytest.mark.parametrize("target", pemn.artifact.CODINGS)
@pytest.mark.parametrize("coding", pemn.artifact.CODINGS)
@pytest.mark.parametrize("extras", [{}, {"extras_dtype": "int8", "prototype": "seed"}])
def test_recode_is_saving_in_the_other_coding(tmp_path: Path, coding: str, target: str, extras: dict) -> None:
    """pemn.artifact.recode(file, target) writes the bytes pemn.save(model, coding=target) writes: a lossless
    transcode of the masks, everything else (extras, prototype, app, format version) kept."""
    model = _structured_net()
    app = {"kind": "test", "note": "kept"}
    source = pemn.save(model, tmp_path / "a.pemn", coding=coding, app=app, **extras).read_bytes()
    direct = pemn.save(model, tmp_path / "b.pemn", coding=target, app=app, **extras).read_bytes()
    assert pemn.artifact.recode(source, target) == direct


def test_recode_refuses_bad_input(tmp_path: Path) -> None:
    data = pemn.save(_structured_net(), tmp_path / "a.pemn", coding="entropy").read_bytes()
    with pytest.raises(ValueError, match="coding must be one of"):
        pemn.artifact.recode(data, "zip")
    with pytest.raises(pemn.FormatError, match="integrity"):
        pemn.artifact.recode(data[:-1] + bytes([data[-1] ^ 1]), "context")


def test_cli_recode(tmp_path: Path) -> None:
    """pemn recode: a file's masks in another coding, the model the same, the report's sizes the files'."""
    path = pemn.save(_structured_net(), tmp_path / "model.pemn", coding="entropy", app={"kind": "test"})
    code, text, err = run(["recode", str(path), "--json"])
    assert code == 0, err
    report = json.loads(text)
    target = tmp_path / "model.context.pemn"
    assert report["output"] == str(target) and report["coding"] == "context"
    assert report["file_bytes"] == target.stat().st_size < report["file_bytes_before"] == path.stat().st_size
    assert report["layers_by_model"]["rows-cols"] >= 1
    code, _, err = run(["recode", str(target), "--coding", "entropy", "-o", str(tmp_path / "back.pemn")])
    assert code == 0, err
    assert (tmp_path / "back.pemn").read_bytes() == path.read_bytes()
    code, _, err = run(["recode", str(tmp_path / "missing.pemn")])
    assert code != 0 and "no pemn artifact at" in err
    code, _, err = run(["recode", str(tmp_path)])
    assert code != 0 and "is a directory" in err
    (tmp_path / "junk.pemn").write_bytes(b"not a model at all")
    code, _, err = run(["recode", str(tmp_path / "junk.pemn")])
    assert code != 0 and "not a pemn artifact" in err and not (tmp_path / "junk.context.pemn").exists()
