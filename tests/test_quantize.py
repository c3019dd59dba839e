"""Quantized dense baselines (pemn.training.quantize, pemn.training.quantfile), table-driven over the methods:
the quantizers take the values they claim, the straight-through gradient reaches the latent weights, every method
runs end to end (train -> file -> eval -> inspect -> export) and its file is its payload plus a small header."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cli_run import run
from conftest import quick_config, quick_text_config
from pemn.errors import ArchitectureMismatchError, FormatError
from pemn.training.artifacts import KINDS, kind_of_file, load_model
from pemn.training.config import resolve_config
from pemn.training.engine import train
from pemn.training.models import create_model
from pemn.training.quantfile import load_quant, pack_codes, quant_info, read_quant, save_quant, unpack_codes
from pemn.training.quantize import (
    PTQ_METHODS,
    QAT_METHODS,
    QUANTIZE_METHODS,
    bits_of,
    calibrate_,
    code_range,
    dequantize,
    quantizable_weights,
    quantize_,
    quantize_weight,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: Allowed bytes above the payload (codes + scales + extras): the safetensors header, the metadata, the index.
HEADER_BUDGET = 2048


def _weight(rows: int = 6, cols: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ quantizers


@pytest.mark.parametrize("method", QUANTIZE_METHODS)
def test_codes_stay_in_range_and_each_row_takes_at_most_2_to_the_bits_values(method: str) -> None:
    w = _weight()
    codes, scales = quantize_weight(w, method)
    low, high = code_range(method)
    assert codes.dtype == torch.int8 and codes.shape == w.shape and scales.shape == (6,)
    assert int(codes.min()) >= low and int(codes.max()) <= high
    assert torch.equal(scales, scales.half().float())  # float16 values: what the file stores
    q = dequantize(codes, scales)
    for row in q:
        assert len(set(row.tolist())) <= 2 ** bits_of(method)
    assert (q - w).square().mean() < w.square().mean()  # closer to w than zero is


def test_binary_is_mean_abs_times_sign_per_channel() -> None:
    w = _weight()
    codes, scales = quantize_weight(w, "binary")
    assert torch.equal(codes.float(), torch.where(w >= 0, 1.0, -1.0))
    assert torch.allclose(scales, w.abs().mean(1), rtol=1e-3)


def test_ternary_keeps_weights_above_0_7_mean_abs_with_their_mean() -> None:
    w = _weight()
    codes, scales = quantize_weight(w, "ternary")
    delta = 0.7 * w.abs().mean(1, keepdim=True)
    kept = w.abs() > delta
    assert torch.equal(codes.float(), torch.sign(w) * kept)
    want = (w.abs() * kept).sum(1) / kept.sum(1)
    assert torch.allclose(scales, want, rtol=1e-3)


@pytest.mark.parametrize("method", ["int2", "int4", "int8"])
def test_int_scales_minimise_the_error_over_the_clip_grid(method: str) -> None:
    w = _weight(cols=400)
    codes, scales = quantize_weight(w, method)
    q = code_range(method)[1]
    err = (dequantize(codes, scales) - w).square().sum(1)
    plain = w.abs().amax(1) / q  # the max scale is one of the candidates: the chosen one is no worse
    plain_codes = torch.clamp(torch.round(w / plain[:, None]), -q, q)
    assert torch.all(err <= (plain[:, None] * plain_codes - w).square().sum(1) * (1 + 1e-3))
    if method == "int8":
        assert torch.allclose(scales, plain, rtol=0.1)


def test_masked_weights_stay_zero_and_take_their_statistics_from_the_survivors() -> None:
    w = _weight()
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    codes, _ = quantize_weight(w * mask, "ternary", mask)
    assert not codes[~mask].any()
    delta = 0.7 * (w.abs() * mask).sum(1) / mask.sum(1)
    assert torch.equal(codes.bool(), (w.abs() > delta[:, None]) & mask)
    with pytest.raises(ValueError, match="binary weights have no zero code"):
        quantize_weight(w, "binary", mask)


@pytest.mark.parametrize("method", QAT_METHODS)
def test_straight_through_gradient_reaches_the_latent_weights(method: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 3)
    quantize_(layer, method)
    latent = layer.parametrizations.weight.original
    x = torch.randn(5, 8)
    out = layer(x)
    codes, scales = quantize_weight(latent, method)
    assert torch.equal(layer.weight, dequantize(codes, scales))  # exactly the quantized values
    out.square().sum().backward()
    expected = (2 * out.detach()).T @ x  # d/dW of sum((xW^T + b)^2), W the quantized weight
    assert torch.allclose(latent.grad, expected, atol=1e-5)


def test_every_conv_linear_embedding_and_attention_weight_is_quantized() -> None:
    model = nn.ModuleDict({"conv": nn.Conv2d(2, 3, 3), "lin": nn.Linear(3, 4), "emb": nn.Embedding(5, 4),
                           "attn": nn.MultiheadAttention(4, 2), "norm": nn.LayerNorm(4)})
    names = quantize_(model, "int4")
    assert names == ["conv.weight", "lin.weight", "emb.weight", "attn.in_proj_weight", "attn.out_proj.weight"]
    assert list(quantizable_weights(model)) == names
    with pytest.raises(ValueError, match="quantized already"):
        quantize_(model, "int4")
    import pemn

    with pytest.raises(ValueError, match="converted by pemn"):
        quantize_(pemn.convert_(nn.Sequential(nn.Linear(4, 4)), pemn.PEMNConfig(strategy="mask")), "int8")
    with pytest.raises(ValueError, match="unknown quantize method"):
        quantize_(nn.Linear(2, 2), "int3")


@pytest.mark.parametrize("bits,low,high", [(1, 0, 1), (2, -1, 1), (4, -7, 7), (8, -127, 127)])
def test_code_packing_round_trips_and_refuses_bad_bytes(bits: int, low: int, high: int) -> None:
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 33):
        codes = rng.integers(low, high + 1, n)
        packed = pack_codes(codes, bits, low)
        assert packed.size == math.ceil(n * bits / 8)
        assert np.array_equal(unpack_codes(packed, n, bits, low, high), codes)
    if bits < 8:
        with pytest.raises(FormatError, match="padding"):
            unpack_codes(np.array([0xFF], np.uint8), 1, bits, low, high + 2**bits)
    if high - low + 1 < 2**bits:
        with pytest.raises(FormatError, match="above the largest"):
            unpack_codes(np.array([0xFF], np.uint8), 8 // bits, bits, low, high)


def test_calibration_re_estimates_batchnorm_statistics_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    model.eval()
    x = torch.randn(64, 1, 6, 6) * 3 + 1
    assert calibrate_(model, lambda: iter(x.split(16))) == 1
    bn = model[1]
    h = model[0](x)
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert not model.training and not bn.training and bn.momentum == 0.1
    assert calibrate_(nn.Linear(2, 2), lambda: iter(())) == 0


# ------------------------------------------------------------------------------------------------ files


def _lenet(method: str, masks: dict[str, torch.Tensor] | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    quantize_(model, method, masks)
    return model.eval()


@pytest.mark.parametrize("method", QUANTIZE_METHODS)
def test_file_loads_the_exact_model_and_is_its_payload_plus_a_small_header(tmp_path: Path, method: str) -> None:
    model = _lenet(method)
    path = tmp_path / "m.quant.safetensors"
    size = save_quant(model, path, method)
    info = quant_info(path)
    n = sum(p.numel() for p in (model.parametrizations.weight.original for model in
                                (m for m in model.modules() if hasattr(m, "parametrizations"))))
    assert info["quantized_weights"] == n == 61_470
    ideal_codes = math.ceil(n * bits_of(method) / 8)
    assert info["code_bytes"] <= ideal_codes + 5 * 4  # packed, or entropy coded (whole 32-bit words per layer)
    assert info["scale_bytes"] == 2 * (6 + 16 + 120 + 84 + 10)
    assert info["extras_bytes"] == 4 * (6 + 16 + 120 + 84 + 10)  # the biases
    assert size == path.stat().st_size == info["file_bytes"]
    assert size <= info["payload_bytes"] + HEADER_BUDGET
    # one name, one meaning: bits_per_weight is the whole file's (as sweep.csv's), code_bits_per_weight the codes'
    assert info["bits_per_weight"] == pytest.approx(8 * size / n)
    assert info["code_bits_per_weight"] == pytest.approx(8 * info["code_bytes"] / n)
    assert info["code_bits_per_weight"] < info["bits_per_weight"]
    assert size <= ideal_codes + info["scale_bytes"] + info["extras_bytes"] + HEADER_BUDGET
    fresh = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    load_quant(path, fresh)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("method", ["ternary", "int2", "int4", "int8"])
def test_pruned_survivors_file_codes_only_the_survivors(tmp_path: Path, method: str) -> None:
    from pemn.training.prune import prune_, remove_pruning_

    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    prune_(model, "magnitude", 0.9)
    masks = remove_pruning_(model)
    quantize_(model, method, masks)
    model.eval()
    path = tmp_path / "dc.quant.safetensors"
    save_quant(model, path, method)
    state, info = read_quant(path)
    assert info["stored_codes"] == sum(int(m.sum()) for m in masks.values())
    assert set(info["masks"]) == set(masks) and all(torch.equal(info["masks"][k], masks[k]) for k in masks)
    dense_codes = math.ceil(61_470 * bits_of(method) / 8)
    assert info["code_bytes"] < dense_codes / 2  # positions (entropy coded) + survivors' codes
    fresh = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    load_quant(path, fresh)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert all(not state[k][~m].any() for k, m in masks.items())


def test_damaged_or_foreign_files_are_one_format_error(tmp_path: Path) -> None:
    model = _lenet("int4")
    path = tmp_path / "m.quant.safetensors"
    save_quant(model, path, "int4")
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for broken in (data[:len(data) // 2], data[:-1], b"\x80\x04K\x01."):
        bad.write_bytes(broken)
        with pytest.raises(FormatError):
            read_quant(bad)
    fresh = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(FormatError):
        load_quant(bad, fresh)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    with pytest.raises(ArchitectureMismatchError):
        load_quant(path, create_model("mlp", num_classes=10, in_channels=1, image_size=28))
    with pytest.raises(ValueError, match="not quantized"):
        save_quant(create_model("mlp", num_classes=10, in_channels=1, image_size=28), tmp_path / "x", "int4")


# -------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("settings,match", [
    ({"strategy": "rp", "quantize": "int4"}, "needs strategy 'dense'"),
    ({"strategy": "dense", "quantize": "int3"}, "unknown quantize 'int3'"),
    ({"strategy": "dense", "quantize": "binary", "prune": "magnitude"}, "survivors are quantized by"),
    ({"strategy": "dense", "quantize": "ptq-int4", "prune": "magnitude"}, "survivors are quantized by"),
])
def test_config_refuses_contradictions(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_config(settings)


# -------------------------------------------------------------------------------------------- end to end

RUNS = {**{m: {"quantize": m} for m in QUANTIZE_METHODS},
        "dc-ternary": {"quantize": "ternary", "prune": "magnitude", "compression": 0.8},
        "dc-int4": {"quantize": "int4", "prune": "magnitude", "compression": 0.8}}


@pytest.mark.parametrize("name", list(RUNS))
def test_train_file_eval_inspect_export(tmp_path: Path, name: str) -> None:
    settings = RUNS[name]
    cfg = quick_config(**{"model": "tiny-cnn", "epochs": 1, "train_subset": 256, "batch_size": 64,
                          "out": tmp_path / "run", "strategy": "dense", **settings})
    result = train(cfg, log=lambda _m: None)
    path = tmp_path / "run" / KINDS["quant"].filename
    assert result.weights == path and kind_of_file(path) is KINDS["quant"]
    assert result.artifact_acc == result.final_acc  # the file holds exactly the model the run measured
    summary = result.summary
    assert summary["quantize"] == settings["quantize"] and summary["file_bytes"] == path.stat().st_size
    assert summary["file_bytes"] <= summary["payload_bytes"] + HEADER_BUDGET
    if settings["quantize"] in PTQ_METHODS:  # the dense model's accuracy is reported; the quantized one is the run's
        assert "dense_acc" in summary and result.best_acc == result.final_acc
    if "prune" in settings:
        assert summary["kept_weights"] < summary["quantized_weights"]
    _, kind, app = load_model(path)
    assert kind is KINDS["quant"] and app is not None and app["model"] == "tiny-cnn"
    code, out, err = run(["eval", str(path), "--json"])
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(result.final_acc)
    code, out, err = run(["inspect", str(path), "--json"])
    assert code == 0, err
    info = json.loads(out)["quantized"]
    assert info["method"] == settings["quantize"] and info["file_bytes"] == summary["file_bytes"]
    n = summary["quantized_weights"]
    for doc in (info, summary):
        assert doc["bits_per_weight"] == pytest.approx(8 * summary["file_bytes"] / n)
        assert doc["code_bits_per_weight"] == pytest.approx(8 * summary["code_bytes"] / n)
    code, out, err = run(["inspect", str(path)])
    assert code == 0, err
    assert f"{info['code_bits_per_weight']:.3f} code bits per weight" in out
    assert f"whole file {info['bits_per_weight']:.3f} bits per weight" in out
    code, out, err = run(["export", str(path), "--format", "pt", "-o", str(tmp_path / "plain.safetensors")])
    assert code == 0, err
    assert "max abs diff vs the pemn model 0" in out


@pytest.mark.parametrize("settings", [{"quantize": "int4"}, {"quantize": "ternary", "prune": "magnitude"},
                                      {"quantize": "ptq-int4"}], ids=["qat", "deep-compression", "ptq"])
def test_interrupted_quantized_run_resumes_to_the_same_file(tmp_path: Path, settings: dict[str, Any]) -> None:
    from pemn.training.engine import TrainingInterrupted

    def cfg(out: str, **extra: Any) -> Any:
        return quick_config(**{"model": "tiny-cnn", "epochs": 2, "train_subset": 160, "batch_size": 32,
                               "strategy": "dense", "out": tmp_path / out, **settings, **extra})

    straight = train(cfg("a"), log=lambda _m: None)
    with pytest.raises(TrainingInterrupted):
        train(cfg("b"), log=lambda _m: None, stop_after_step=7)
    resumed = train(cfg("b", resume=True), log=lambda _m: None)
    name = KINDS["quant"].filename
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (straight.final_acc, straight.state_sha256) == (resumed.final_acc, resumed.state_sha256)


def test_cli_says_in_one_line_what_is_wrong(tmp_path: Path) -> None:
    code, _, err = run(["train", "--quantize", "int4", "--epochs", "1", "--out", str(tmp_path / "x")])
    assert code != 0 and "needs strategy 'dense'" in err and "Traceback" not in err
    code, _, err = run(["train", "--strategy", "dense", "--quantize", "int5", "--out", str(tmp_path / "y")])
    assert code != 0 and "valid: binary, ternary, int2, int4, int8, ptq-int8" in err
    bad = tmp_path / "model.quant.safetensors"
    save_quant(_lenet("int8"), bad, "int8")
    bad.write_bytes(bad.read_bytes()[:-10])
    code, _, err = run(["inspect", str(bad)])
    assert code != 0 and "FormatError" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("method", PTQ_METHODS)
def test_pemn_quantize_of_a_dense_file_equals_the_ptq_run(tmp_path: Path, method: str) -> None:
    """`pemn quantize DENSE --method ptq-*` writes byte for byte the file of `pemn train --quantize ptq-*` (same
    seed: the same dense model, calibrated on the same training images), and reports both accuracies."""
    common = {"model": "tiny-cnn", "epochs": 1, "strategy": "dense"}
    train(quick_config(**common, out=tmp_path / "dense"), log=lambda _m: None)
    ptq = train(quick_config(**common, quantize=method, out=tmp_path / "ptq"), log=lambda _m: None)
    out = tmp_path / "q.quant.safetensors"
    code, text, err = run(["quantize", str(tmp_path / "dense" / "model.safetensors"), "--method", method, "-o",
                           str(out), "--json"])
    assert code == 0, err
    doc = json.loads(text)
    assert out.read_bytes() == (tmp_path / "ptq" / KINDS["quant"].filename).read_bytes()
    assert doc["accuracy"] == pytest.approx(ptq.final_acc) and doc["dense_accuracy"] == pytest.approx(
        ptq.summary["dense_acc"])
    assert doc["batchnorm_layers_calibrated"] == 2 and doc["file_bytes"] == out.stat().st_size
    info = quant_info(out)
    assert (doc["bits_per_weight"], doc["code_bits_per_weight"]) == (info["bits_per_weight"],
                                                                     info["code_bits_per_weight"])
    assert doc["bits_per_weight"] == pytest.approx(8 * doc["file_bytes"] / info["quantized_weights"])
    code, text, err = run(["quantize", str(tmp_path / "dense" / "model.safetensors"), "--method", method, "-o",
                           str(out)])
    assert code == 0, err
    assert (f"{info['code_bits_per_weight']:.3f} code bits per weight, whole file {info['bits_per_weight']:.3f} "
            "bits per weight") in text


def test_pemn_quantize_refuses_what_it_cannot_quantize(tmp_path: Path) -> None:
    path = tmp_path / "m.quant.safetensors"
    save_quant(_lenet("int8"), path, "int8")
    code, _, err = run(["quantize", str(path), "--method", "ptq-int4"])
    assert code != 0 and "takes a dense model.safetensors" in err
    code, _, err = run(["quantize", str(path), "--method", "int4"])
    assert code != 0 and "invalid choice" in err


def test_quantize_model_file_reports_without_printing(tmp_path: Path) -> None:
    """pemn quantize's application function: the file beside the dense one (default name), the JSON record and the
    text lines; without an evaluation no accuracy; a language model's file is quantized from the file alone (its
    workload reads no data: no BatchNorm to calibrate)."""
    from pemn.training.errors import OptionError
    from pemn.training.ptq_file import default_output, quantize_model_file

    train(quick_config(model="tiny-cnn", epochs=1, strategy="dense", out=tmp_path / "dense"), log=lambda _m: None)
    dense = tmp_path / "dense" / "model.safetensors"
    report = quantize_model_file(dense, "ptq-int8", evaluate=False)
    out = default_output(dense, "ptq-int8")
    assert out == tmp_path / "dense" / "model.ptq-int8.quant.safetensors" and kind_of_file(out).name == "quant"
    assert report.record["output"] == str(out) and report.record["accuracy"] is report.record["dense_accuracy"] is None
    assert report.record["batchnorm_layers_calibrated"] == 2 and report.record["file_bytes"] == out.stat().st_size
    assert report.lines == [f"wrote {out} ({out.stat().st_size:,} bytes, ptq-int8: "
                            f"{report.record['code_bits_per_weight']:.3f} code bits per weight, whole file "
                            f"{report.record['bits_per_weight']:.3f} bits per weight; BatchNorm statistics of 2 "
                            f"layers re-estimated on {report.record['calibration_images']:,} training images)"]
    with pytest.raises(OptionError, match="would overwrite the dense model"):
        quantize_model_file(dense, "ptq-int4", output=dense)
    with pytest.raises(OptionError, match=r"is a quantized model .*takes a dense model\.safetensors"):
        quantize_model_file(out, "ptq-int4")
    train(quick_text_config(tmp_path, out="lm", strategy="dense"), log=lambda _m: None)
    report = quantize_model_file(tmp_path / "lm" / "model.safetensors", "ptq-int4")
    assert report.record["calibration_images"] == 0 and report.record["accuracy"] is None
    assert report.lines[0].endswith("no BatchNorm to calibrate)") and len(report.lines) == 1


def test_categorical_codes_round_trip_and_refuse_corruption() -> None:
    from pemn.training.quantfile import decode_categorical, encode_categorical

    rng = np.random.default_rng(0)
    symbols = np.clip(np.round(rng.normal(7, 1.5, 5000)), 0, 14).astype(np.int64)
    data = np.frombuffer(encode_categorical(symbols, 15), np.uint8)
    assert data.size < 5000 * 4 / 8  # below the packed 4 bits: about the codes' entropy
    assert np.array_equal(decode_categorical(data, 5000, 15), symbols)
    assert decode_categorical(np.frombuffer(encode_categorical(np.zeros(0, np.int64), 3), np.uint8), 0, 3).size == 0
    broken = data.copy()
    broken[-3] ^= 0x10
    for bad, n in ((data[:-4], 5000), (broken, 5000), (data, 4999), (data[:10], 5000)):
        with pytest.raises(FormatError):
            decode_categorical(bad, n, 15)


@pytest.mark.parametrize("method", ["int4", "int8", "ternary"])
def test_peaked_codes_are_range_coded_below_their_bits(tmp_path: Path, method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(512, 64), nn.Linear(64, 3))  # N(0, 1) embedding: peaked codes
    quantize_(model, method)
    path = tmp_path / "e.quant.safetensors"
    save_quant(model, path, method)
    info = quant_info(path)
    assert "categorical" in info["codings"] or method == "ternary"
    assert info["code_bytes"] < math.ceil(512 * 64 * bits_of(method) / 8)
    fresh = nn.Sequential(nn.Embedding(512, 64), nn.Linear(64, 3))
    load_quant(path, fresh)
    assert torch.equal(fresh[0].weight, model[0].weight) and torch.equal(fresh[1].weight, model[1].weight)


def _v1_file(data: bytes) -> bytes:
    """``data`` (a format version 2 file) rewritten as format version 1 (index entries as objects)."""
    import zlib

    from safetensors.torch import load, save

    from pemn.training.quantfile import _extra_objects, _layer_objects

    tensors = load(data)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    meta = dict(header["__metadata__"])
    index = json.loads(zlib.decompress(tensors["index"].numpy().tobytes()))
    layers = [{**e, "bits": bits_of(index["method"])} for e in _layer_objects(index["layers"])]
    tensors["index"] = torch.frombuffer(bytearray(zlib.compress(json.dumps(
        {"method": index["method"], "layers": layers, "extras": _extra_objects(index["extras"])}).encode())),
        dtype=torch.uint8)
    return save(tensors, metadata={**meta, "format_version": "1"})


def test_format_version_1_files_still_load(tmp_path: Path) -> None:
    model = _lenet("ternary")
    path = tmp_path / "v2.quant.safetensors"
    save_quant(model, path, "ternary")
    old = tmp_path / "v1.quant.safetensors"
    old.write_bytes(_v1_file(path.read_bytes()))
    a, b = read_quant(path)[0], read_quant(old)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert quant_info(old)["index_bytes"] > quant_info(path)["index_bytes"]


@pytest.mark.parametrize("name,args", [
    ("resnet56", {"num_classes": 10, "in_channels": 3, "image_size": 32}),
    ("convmixer-256-8", {"num_classes": 10, "in_channels": 3, "image_size": 32}),
    ("gpt-128-4", {"num_classes": 65, "block_size": 64}),
])
def test_large_models_files_are_their_payload_plus_under_2_kb(tmp_path: Path, name: str, args: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = create_model(name, **args)
    quantize_(model, "binary")
    path = tmp_path / "m.quant.safetensors"
    save_quant(model, path, "binary", extra_metadata={"pemn_app": json.dumps({"model": name, "model_args": args})})
    info = quant_info(path)
    assert info["file_bytes"] <= info["payload_bytes"] + HEADER_BUDGET
