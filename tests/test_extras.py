"""Slim extras (format version 2): folded BatchNorms (``fold_norms=True``) and affine int8
(``extras_dtype="int8"``): what loads back, to which tolerance, what the per-tensor int8 rule keeps in float,
how summary counts the bytes, and the damaged version-2 files the loader must refuse (model untouched)."""

from __future__ import annotations

import copy
import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

import cases
import pemn
from pemn import artifact, extras

#: A folded BatchNorm's eval output against the unfolded one: float32 rounding of x·s + t vs
#: (x − μ)·γ/√(σ² + ε) + β, a few ulps of the output's scale.
FOLD_RTOL, FOLD_ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _with_stats(model: nn.Module, seed: int = 3) -> nn.Module:
    """Give every norm non-trivial affine parameters and running statistics (some variances tiny)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(c, generator=g) * 3)
                    m.running_var.copy_(torch.rand(c, generator=g) * 4 + 1e-4)
                    m.num_batches_tracked.fill_(17)
    return model


def _mild(model: nn.Module, seed: int = 4) -> nn.Module:
    """Give every BatchNorm well-conditioned state (γ ≈ 1, small β and μ, σ² ≈ 1): int8 stores it all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(1 + 0.1 * torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(1 + 0.1 * torch.rand(c, generator=g))
    return model


def _trained(model_name: str, strategy: str = "rp") -> nn.Module:
    model = pemn.convert_(cases.build(model_name), cases.config(strategy))
    cases.train_steps(model, cases.make_input(model_name))
    return _with_stats(model).eval()


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _roundtrip(model: nn.Module, model_name: str, tmp_path: Path, **options: Any) -> nn.Module:
    path = pemn.save(model, tmp_path / "m.pemn", **options)
    return pemn.load(path, cases.build(model_name, seed=9))


# ------------------------------------------------------------------------------------------------ folding

FOLD_MODELS = ["conv1d", "conv2d", "depthwise_conv2d", "conv3d"]


@pytest.mark.parametrize("model_name", FOLD_MODELS)
@pytest.mark.parametrize("extras_dtype", [None, "float16", "int8"])
def test_fold_outputs_match_and_norm_reports_a_consistent_state(tmp_path: Path, model_name: str,
                                                                 extras_dtype: str | None) -> None:
    model = _trained(model_name)
    x = cases.make_input(model_name)
    loaded = _roundtrip(model, model_name, tmp_path, fold_norms=True, extras_dtype=extras_dtype)
    assert not any(m.training for m in loaded.modules()), "a folded artifact loads in eval mode"
    ref = _out(model, x)
    out = _out(loaded, x)
    if extras_dtype is None:
        assert torch.allclose(out, ref, rtol=FOLD_RTOL, atol=FOLD_ATOL * ref.abs().max().item())
    else:  # the cost of the dtype itself, measured on trained models in RESULTS.md
        assert torch.allclose(out, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    norms = [(n, m) for n, m in loaded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    originals = dict(model.named_modules())
    assert norms
    for name, bn in norms:
        assert type(bn) is type(originals[name])  # the plain torch module
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.full_like(bn.running_var, 1 - bn.eps))
        assert int(bn.num_batches_tracked) == 0
        scale_shift = extras.fold(originals[name])
        if extras_dtype is None:
            assert torch.equal(bn.weight.detach(), scale_shift[0]) and torch.equal(bn.bias.detach(), scale_shift[1])
        # the module's own eval transform is x * weight + bias (running_mean 0, running_var + eps = 1)
        z = torch.randn(3, bn.num_features, *([2] * (x.dim() - 2)))
        shape = [1, -1] + [1] * (z.dim() - 2)
        expected = z * bn.weight.detach().view(shape) + bn.bias.detach().view(shape)
        assert torch.allclose(_out(bn, z), expected, rtol=FOLD_RTOL, atol=FOLD_ATOL)


def test_folded_norm_stores_two_numbers_per_channel(tmp_path: Path) -> None:
    model = _trained("conv2d")
    plain = pemn.artifact.read(pemn.save(model, tmp_path / "a.pemn"))
    folded = pemn.artifact.read(pemn.save(model, tmp_path / "b.pemn", fold_norms=True))
    assert (plain.format_version, folded.format_version) == (1, 3)
    assert folded.folded == ["1"]
    names = {e[0] for e in folded.dense}
    assert not names & {"1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert [e for e in folded.dense if e[1] == "fold"] == [["1", "fold", "float32", [2, 6]]]
    s_plain, s_fold = pemn.summary(tmp_path / "a.pemn", verbose=False), pemn.summary(tmp_path / "b.pemn",
                                                                                     verbose=False)
    # norm bytes: 6 channels x (weight, bias, mean, var) x 4 B + an int64 counter -> 6 x 2 x 4 B
    assert s_plain.bytes["extras"] - s_fold.bytes["extras"] == 6 * 2 * 4
    assert s_plain.bytes["norm_stats"] - s_fold.bytes["norm_stats"] == 6 * 2 * 4 + 8 - 6 * 2 * 4
    assert s_fold.bytes["norm_stats"] == 6 * 2 * 4
    assert s_fold.dense_bytes == s_plain.dense_bytes  # the dense model it is compared with does not shrink
    assert s_fold.file_bytes == sum(s_fold.bytes.values())


@pytest.mark.parametrize(("norm", "folds"), [
    (lambda: nn.BatchNorm2d(6), True),
    (lambda: nn.BatchNorm2d(6, affine=False), False),
    (lambda: nn.BatchNorm2d(6, track_running_stats=False), False),
    (lambda: nn.SyncBatchNorm(6), True),
    (lambda: nn.GroupNorm(2, 6), False),
    (lambda: nn.InstanceNorm2d(6, affine=True, track_running_stats=True), False),
])
def test_which_norms_fold(tmp_path: Path, norm: Callable[[], nn.Module], folds: bool) -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), norm(), nn.ReLU(), nn.Flatten(), nn.Linear(96, 3))

    model = _with_stats(pemn.convert_(build(), pemn.PEMNConfig(strategy="rp", ratio=0.1))).eval()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    path = pemn.save(model, tmp_path / "m.pemn", fold_norms=True)
    assert pemn.artifact.read(path).folded == (["1"] if folds else [])
    loaded = pemn.load(path, build()).eval()
    if isinstance(model[1], nn.SyncBatchNorm):
        return  # SyncBatchNorm's forward needs a process group; its state is what is checked above
    ref = _out(model, x)
    assert torch.allclose(_out(loaded, x), ref, rtol=FOLD_RTOL, atol=FOLD_ATOL * ref.abs().max().item())
    if not folds:
        assert torch.equal(_out(loaded, x), ref)


def test_folded_model_can_train_from_the_folded_state(tmp_path: Path) -> None:
    """The decision documented in pemn.extras: plain modules, so train() works (from the folded values, with
    batch statistics); the loaded file says it is folded."""
    model = _trained("conv2d")
    path = pemn.save(model, tmp_path / "m.pemn", fold_norms=True)
    loaded = pemn.load(path, cases.build("conv2d"))
    assert not loaded.training and pemn.artifact.read(path).folded
    loaded.train()
    x = cases.make_input("conv2d")
    loaded(x).sum().backward()
    assert loaded[1].weight.grad is not None and int(loaded[1].num_batches_tracked) == 1


def test_default_save_is_still_format_version_1(tmp_path: Path) -> None:
    model = _trained("conv2d")
    for options in ({}, {"extras_dtype": "float16"}, {"fold_norms": False, "extras_dtype": None}):
        assert pemn.artifact.read(pemn.save(model, tmp_path / "m.pemn", **options)).format_version == 1
    data = artifact.to_bytes(model)
    assert artifact.parse(data).metadata.keys() >= {"config", "coding", "prototype_sha256"}
    assert "meta" not in artifact.parse(data).tensors


def test_fold_norms_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="fold_norms"):
        pemn.save(_trained("conv2d"), tmp_path / "m.pemn", fold_norms="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "m.pemn").exists()


# ---------------------------------------------------------------------------------------------------- int8


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.gate = nn.Parameter(torch.tensor(0.5))
        self.pair = nn.Parameter(torch.tensor([0.1, 0.2]))
        self.pos = nn.Parameter(torch.randn(1, 4, 8))
        self.proj = nn.Parameter(torch.randn(3, 8))
        self.register_buffer("steps", torch.tensor([3, 4, 5]))
        self.head = nn.Linear(8, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.fc(self.emb(idx) + self.pos) * self.gate) + self.pair.sum()
        return self.head(h.mean(1)) + (h.mean(1) @ self.proj.t())


def _embed_model() -> nn.Module:
    torch.manual_seed(0)
    model = _Embed()
    with torch.no_grad():  # well-conditioned norm affine and a positive table: int8 meets the bound on them
        model.norm.weight.copy_(1 + 0.05 * torch.randn(8))
        model.norm.bias.copy_(0.05 * torch.randn(8))
        model.proj.copy_(2 + 0.1 * torch.rand(3, 8))
    return model


#: name -> (stored dtype, groups): the per-tensor rule of pemn.extras
INT8_RULE = {
    "emb.weight": ("float32", 0),  # embedding table: left as trained
    "fc.bias": ("float16", 0),  # zero-centred: the small entries would lose more than 1 % of their size
    "norm.weight": ("int8", 1), "norm.bias": ("int8", 1),  # 1 ± 0.05 and ± 0.05 (in units of the weight)
    "gate": ("float16", 0),  # 0-d: no int8, float16 is within the bound
    "pair": ("float16", 0),  # 2 values: 2 + 8 B >= 8 B, the scale costs more than it saves
    "pos": ("float16", 0),  # zero-centred, 3-D with first dimension 1 (one group)
    "proj": ("int8", 3),  # per output channel, 2 .. 2.1
    "head.bias": ("int8", 1),  # 3 values: the ends sit on the grid, the third is within its bound
    "steps": ("int64", 0),  # integers keep their dtype
}


@pytest.mark.filterwarnings("ignore:pemn. (pos|proj) ._Embed:UserWarning")  # its plain parameters stay dense
def test_int8_rule_per_tensor(tmp_path: Path) -> None:
    model = pemn.convert_(_embed_model(), pemn.PEMNConfig(strategy="rp", ratio=0.5, targets=["Linear"]))
    art = artifact.build(model, extras_dtype="int8")
    got = {e[0]: (e[2], e[4] if len(e) == 5 else 0) for e in art.dense}
    assert got == INT8_RULE
    assert art.tensors["qparams"].numel() == 2 * sum(g for _, g in INT8_RULE.values())
    idx = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    loaded = pemn.load(pemn.save(model, tmp_path / "m.pemn", extras_dtype="int8"), _embed_model())
    assert torch.equal(loaded.emb.weight, model.emb.weight) and torch.equal(loaded.steps, model.steps)
    assert torch.equal(loaded.pair, model.pair.half().float()) and torch.equal(loaded.gate, model.gate.half().float())
    for name in ("norm.weight", "proj"):  # quantised, within 1 % of each value (the grid spans what it needs)
        a, b = dict(loaded.named_parameters())[name], dict(model.named_parameters())[name]
        assert not torch.equal(a, b) and bool(((a - b).abs() <= extras.INT8_TOL * b.abs()).all()), name
    for name in ("fc.bias", "pos"):
        a, b = dict(loaded.named_parameters())[name], dict(model.named_parameters())[name]
        assert torch.equal(a, b.detach().half().float()), name
    assert torch.allclose(_out(loaded.eval(), idx), _out(model.eval(), idx), atol=0.1)


@pytest.mark.parametrize(("shape", "dtype", "groups"), [
    ((3,), torch.float32, 1), ((2,), torch.float32, 0), ((), torch.float32, 0), ((9,), torch.float16, 1),
    ((8,), torch.float16, 0), ((8,), torch.bfloat16, 0), ((4, 5), torch.float32, 4), ((1, 6, 2), torch.float32, 1),
    ((5,), torch.int64, 0), ((0,), torch.float32, 0),
])
def test_int8_groups(shape: tuple[int, ...], dtype: torch.dtype, groups: int) -> None:
    t = torch.ones(shape).to(dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype)
    assert extras.int8_groups(t) == groups


def test_int8_skips_non_finite_tensors() -> None:
    assert extras.int8_groups(torch.tensor([1.0, float("inf"), 2.0, 3.0])) == 0
    assert extras.int8_groups(torch.tensor([1.0, float("nan"), 2.0, 3.0])) == 0


@pytest.mark.parametrize("values", [
    torch.linspace(-3, 7, 1000), torch.randn(257, generator=torch.Generator().manual_seed(0)) * 1e-3,
    torch.full((10,), 2.5), torch.tensor([-1e6, 0.0, 1e6]),
    torch.randn(4, 33, generator=torch.Generator().manual_seed(1)),
])
def test_quantize_error_is_at_most_half_a_step(values: torch.Tensor) -> None:
    groups = values.shape[0] if values.dim() >= 2 else 1
    q, qp = extras.quantize(values, groups)
    assert q.dtype == torch.int8 and q.shape == values.shape and qp.shape == (groups, 2)
    back = extras.dequantize(q, qp)
    rows = values.reshape(groups, -1)
    step = (rows.amax(1) - rows.amin(1)) / 255
    err = (back - values).reshape(groups, -1).abs().amax(1)
    assert bool((err <= step / 2 * (1 + 1e-5) + 1e-6 * rows.abs().amax(1)).all()), (err, step)
    if bool((step == 0).all()):
        assert torch.equal(back, values)
    assert int(q.min()) >= -128 and int(q.max()) <= 127


def test_unfolded_int8_bounds_running_var(tmp_path: Path) -> None:
    """The running variance is under the bound like the rest (its unit grows with σ²): int8 where the
    variances are alike, float16 where they span decades."""
    model = _mild(_trained("conv2d"))
    art = artifact.build(model, extras_dtype="int8")
    dtypes = {e[0]: e[2] for e in art.dense}
    assert dtypes["1.running_var"] == "int8" and dtypes["1.running_mean"] == "int8"
    assert dtypes["1.num_batches_tracked"] == "int64"
    with torch.no_grad():
        model[1].running_var.copy_(torch.logspace(-3, 1, 6))
    assert {e[0]: e[2] for e in artifact.build(model, extras_dtype="int8").dense}["1.running_var"] == "float16"


def test_summary_counts_scales(tmp_path: Path) -> None:
    model = _trained("conv2d")
    s = pemn.summary(model, extras_dtype="int8", fold_norms=True, verbose=False)
    art = artifact.build(model, extras_dtype="int8", fold_norms=True)
    groups = sum(e[4] for e in art.dense if len(e) == 5)
    assert s.bytes["scales"] == extras.QPARAM_BYTES * groups > 0
    assert s.file_bytes == sum(s.bytes.values())
    full = pemn.summary(model, verbose=False)
    assert s.dense_bytes == full.dense_bytes and s.file_bytes < full.file_bytes


# ------------------------------------------------------------------------------------------------- codec


@pytest.mark.parametrize("options", [{}, {"fold_norms": True}, {"extras_dtype": "int8"},
                                     {"fold_norms": True, "extras_dtype": "int8", "prototype": "seed"}])
def test_codec_is_symmetric(options: dict[str, Any]) -> None:
    model = _trained("conv2d")
    data = artifact.encode(artifact.build(model, **options))
    art = artifact.parse(data)
    assert artifact.encode(art) == data or artifact.parse(artifact.encode(art)).metadata == art.metadata
    again = artifact.parse(artifact.encode(art))
    assert (again.manifest, again.dense, again.metadata) == (art.manifest, art.dense, art.metadata)
    assert again.tensors.keys() == art.tensors.keys()
    assert all(torch.equal(again.tensors[k], art.tensors[k]) for k in art.tensors)
    if art.format_version >= 2:  # only format, version and integrity in the container
        header = artifact.encode(art)
        n = int.from_bytes(header[:8], "little")
        assert set(json.loads(header[8:8 + n])["__metadata__"]) == {"format", "format_version", "integrity"}


# ------------------------------------------------------------------------------------- damaged v2 files


def _v2() -> artifact.Artifact:
    return artifact.parse(artifact.to_bytes(_mild(_trained("conv2d")), fold_norms=True, extras_dtype="int8"))


def _dense_entry(art: artifact.Artifact, name: str) -> list[Any]:
    return next(e for e in art.dense if e[0] == name)


def _set(fn: Callable[[artifact.Artifact], Any]) -> Callable[[artifact.Artifact], artifact.Artifact]:
    def apply(art: artifact.Artifact) -> artifact.Artifact:
        fn(art)
        return art
    return apply


def _qp(value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[artifact.Artifact], artifact.Artifact]:
    return _set(lambda a: a.tensors.__setitem__("qparams", value(a.tensors["qparams"].clone())))


def _negative_step(t: torch.Tensor) -> torch.Tensor:
    t[1] = -1.0
    return t


def _nan_lo(t: torch.Tensor) -> torch.Tensor:
    t[0] = float("nan")
    return t


def _groups(value: Any) -> Callable[[artifact.Artifact], artifact.Artifact]:
    return _set(lambda a: _dense_entry(a, "1").__setitem__(4, value))


def _rename_fold(name: str) -> Callable[[artifact.Artifact], artifact.Artifact]:
    return _set(lambda a: _dense_entry(a, "1").__setitem__(0, name))


def _fold_shape(shape: list[int]) -> Callable[[artifact.Artifact], artifact.Artifact]:
    return _set(lambda a: _dense_entry(a, "1").__setitem__(3, shape))


def _stored_and_folded(art: artifact.Artifact) -> artifact.Artifact:
    art.dense.append(["1.running_mean", "buffer", "float32", [6]])
    art.tensors["buffers.float32"] = torch.zeros(6)
    return art


#: edit of a valid v2 artifact -> what the error says (a positive control first)
DAMAGED: dict[str, tuple[Callable[[artifact.Artifact], artifact.Artifact], str, type[Exception]]] = {
    "control": (lambda a: a, "", type(None)),
    "qparams_missing": (_set(lambda a: a.tensors.pop("qparams")), r"has no qparams", pemn.FormatError),
    "qparams_short": (_qp(lambda t: t[:-2]), r"has no qparams", pemn.FormatError),
    "qparams_long": (_qp(lambda t: torch.cat([t, t[:2]])), r"qparams tensor does not match", pemn.FormatError),
    "qparams_float64": (_qp(lambda t: t.double()), r"has no qparams", pemn.FormatError),
    "qparams_negative_step": (_qp(_negative_step), r"invalid qparams", pemn.FormatError),
    "qparams_nan": (_qp(_nan_lo), r"invalid qparams", pemn.FormatError),
    "groups_zero": (_groups(0), r"bad dense index", pemn.FormatError),
    "groups_wrong": (_groups(3), r"bad dense index", pemn.FormatError),
    "groups_bool": (_groups(True), r"bad dense index", pemn.FormatError),
    "groups_on_float": (_set(lambda a: a.dense.__setitem__(0, [*a.dense[0][:2], "float32", *a.dense[0][3:4], 1])),
                        r"bad dense index", pemn.FormatError),
    "fold_not_a_module": (_rename_fold("nope"), r"'nope' is a folded BatchNorm", pemn.ArchitectureMismatchError),
    "fold_not_a_norm": (_rename_fold("2"), r"'2' is a folded BatchNorm", pemn.ArchitectureMismatchError),
    "fold_wrong_channels": (_fold_shape([2, 3]), r"dense tensors do not match|folded BatchNorm of 3",
                            pemn.PEMNError),
    "fold_shape_3_rows": (_fold_shape([3, 6]), r"bad dense index", pemn.FormatError),
    "fold_in_version_1": (lambda a: a, r"bad header field|bad dense index", pemn.FormatError),
    "stored_and_folded": (_stored_and_folded, r"1\.running_mean is stored and folded", pemn.FormatError),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_version_2_file(tmp_path: Path, kind: str) -> None:
    edit, match, exc = DAMAGED[kind]
    art = _v2()
    data = artifact.encode(edit(art))
    if kind == "fold_in_version_1":  # the v1 label on the v2 layout (its meta in the index, 5-element entries)
        good = artifact.parse(artifact.encode(_v2()))
        good.metadata = {"format": "pemn", "format_version": "1"}
        data = artifact.encode(good, index=good.tensors["index"])
    path = tmp_path / "m.pemn"
    path.write_bytes(data)
    model = cases.build("conv2d", seed=4)
    before = copy.deepcopy(model.state_dict())
    if exc is type(None):
        pemn.load(path, model)
        return
    with pytest.raises(exc, match=match) as info:
        pemn.load(path, model)
    assert str(path) in str(info.value)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_version_2_and_3_metadata_in_one_place_only(tmp_path: Path) -> None:
    art = artifact.parse(artifact.encode(_v2()))
    # the same field in the container too: encode never writes that, so the container is built by hand
    tensors = dict(art.tensors)
    meta = {"format": "pemn", "format_version": "3", "coding": "packed"}
    meta["integrity"] = artifact.integrity(meta, tensors)
    (tmp_path / "twice.pemn").write_bytes(st_save(tensors, metadata=meta))
    with pytest.raises(pemn.FormatError, match="both in the container and in the index"):
        pemn.artifact.read(tmp_path / "twice.pemn")
    # a version 2 label on a version 1 layout (no meta object in the index)
    v1 = artifact.parse(artifact.to_bytes(_trained("conv2d")))
    v1_index = v1.tensors["index"]
    v1.metadata["format_version"] = "2"
    (tmp_path / "nometa.pemn").write_bytes(artifact.encode(v1, index=v1_index))
    with pytest.raises(pemn.FormatError, match="meta object"):
        pemn.artifact.read(tmp_path / "nometa.pemn")


def test_slim_convmixer_header_and_ratio() -> None:
    """The issue's size bars at toy scale are in benchmarks/bench_size.py; here: the parts add up, the
    header of a slim file stays small, and fold + int8 beats every other option."""
    from pemn.training.models import create_model

    torch.manual_seed(0)
    model = pemn.convert_(create_model("convmixer-32-2"), pemn.PEMNConfig(strategy="rp", keep=0.5))
    sizes = {}
    for fold in (False, True):
        for dtype in (None, "float16", "int8"):
            s = pemn.summary(model, fold_norms=fold, extras_dtype=dtype, verbose=False)
            assert s.file_bytes == sum(s.bytes.values())
            sizes[(fold, dtype)] = s.file_bytes
    assert min(sizes, key=sizes.get) == (True, "int8")
    # 5 BatchNorms x 32 channels: 2 float32 each, or 2 int8 each plus 2 x 8 B of qparams per norm
    assert math.isclose(sizes[(True, None)] - sizes[(True, "int8")], 5 * 32 * 2 * 4 - 5 * (32 * 2 + 16), rel_tol=0.1)


def test_pemn_train_flags(tmp_path: Path) -> None:
    """``pemn train --fold-norms --extras-dtype int8`` writes a folded int8 model.pemn (TrainConfig fields)."""
    from pemn.training.cli import main

    out = tmp_path / "run"
    main(["train", "--model", "tiny-cnn", "--dataset", "digits", "--epochs", "1", "--device", "cpu",
          "--no-progress", "--fold-norms", "--extras-dtype", "int8", "--train-subset", "200", "--out", str(out)])
    art = pemn.artifact.read(out / "model.pemn")
    assert art.format_version == 3 and art.folded and all(e[2] == "int8" for e in art.dense if e[1] == "fold")
    assert json.loads((out / "config.json").read_text())["fold_norms"] is True


# ------------------------------------------------------------------------ int8: the error bound per tensor


def _bn_net(gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> nn.Module:
    """conv -> BatchNorm with the given state (16 channels) -> linear, converted and in eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Flatten(), nn.Linear(16 * 16, 3))
    model = pemn.convert_(model, pemn.PEMNConfig(strategy="rp", ratio=0.1)).eval()
    with torch.no_grad():
        bn = model[1]
        bn.weight.copy_(gamma), bn.bias.copy_(beta), bn.running_mean.copy_(mean), bn.running_var.copy_(var)
    return model


_C = 16
_ONES, _ZEROS = torch.ones(_C), torch.zeros(_C)
_RAMP = torch.linspace(0.9, 1.1, _C)
_WIDE = torch.logspace(-2, 1, _C)  # 0.01 .. 10: a ramp of 1/510 of the range loses the small channels
_NOISE = torch.rand(_C, generator=torch.Generator().manual_seed(7))  # values off any grid: 0 .. 1
#: case -> (gamma, beta, mean, var, fold_norms, {stored name: dtype}); the bound is checked for every case
INT8_BOUND = {
    "well-conditioned, unfolded": (_RAMP, _RAMP - 1, _RAMP - 1, _RAMP, False,
                                   {"1.weight": "int8", "1.bias": "int8", "1.running_mean": "int8",
                                    "1.running_var": "int8"}),
    "well-conditioned, folded": (_RAMP, _RAMP - 1, _RAMP - 1, _RAMP, True, {"1": "int8"}),
    "gamma of wide range: float16": (_WIDE, _ZEROS, _ZEROS, _ONES, False,
                                     {"1.weight": "float16", "1.bias": "int8", "1.running_mean": "int8",
                                      "1.running_var": "int8"}),
    "mean large against small sigmas: float16": (_ONES, _ZEROS, _NOISE * 0.2 - 0.1,
                                                 torch.logspace(-4, 0, _C), False,
                                                 {"1.running_mean": "float16", "1.running_var": "float16"}),
    "mean large against sigma: float32": (_ONES, _ZEROS, 1e4 + _NOISE * 15, _ONES * 1e-2,
                                          False, {"1.running_mean": "float32"}),
    # a folded norm int8 cannot hold whole is stored row by row (format version 3's fold.scale / fold.shift)
    "folded scale of wide range: float16 scale, int8 shift": (_ONES, _ZEROS, _ZEROS, _WIDE, True,
                                                              {"1:scale": "float16", "1:shift": "int8"}),
    "folded, shift of wide range: int8 scale, float16 shift": (_ONES, _ZEROS, _WIDE, _ONES, True,
                                                               {"1:scale": "int8", "1:shift": "float16"}),
    "folded, mean 100 sigmas: int8 scale, float32 shift": (_ONES, _ZEROS, 50 + _NOISE * 50, _ONES, True,
                                                           {"1:scale": "int8", "1:shift": "float32"}),
    "folded, both rows of wide range: one float16 fold": (_ONES, (_NOISE - 0.5) * 20, _ZEROS, _WIDE, True,
                                                           {"1": "float16"}),
}


@pytest.mark.parametrize("case", sorted(INT8_BOUND))
def test_int8_error_bound(tmp_path: Path, case: str) -> None:
    """Whatever int8 stores meets the documented error bound of pemn.extras (every channel's error in its own
    output units ≤ INT8_TOL); a tensor int8 cannot store within it falls back to float16, then float32."""
    gamma, beta, mean, var, fold, expected = INT8_BOUND[case]
    model = _bn_net(gamma, beta, mean, var)
    art = artifact.build(model, extras_dtype="int8", fold_norms=fold)
    dtypes = {e[0] + (":" + e[1].split(".")[1] if e[1] in artifact.FOLD_ROWS else ""): e[2] for e in art.dense}
    assert {k: dtypes.get(k) for k in expected} == expected, dtypes
    units = extras.error_units(model)
    bn = model[1]
    loaded = pemn.load(pemn.save(model, tmp_path / "m.pemn", extras_dtype="int8", fold_norms=fold),
                       _bn_net(_ONES, _ZEROS, _ZEROS, _ONES)).eval()
    if fold:
        got = torch.stack([loaded[1].weight.detach(), loaded[1].bias.detach()])
        err = (got - extras.fold(bn)).abs()
        assert bool((err <= extras.INT8_TOL * units["1"] * (1 + 1e-5)).all()), (case, err / units["1"])
    else:
        for name in ("weight", "bias", "running_mean", "running_var"):
            err = (getattr(loaded[1], name).detach() - getattr(bn, name).detach()).abs()
            unit = units[f"1.{name}"]
            assert bool((err <= extras.INT8_TOL * unit * (1 + 1e-5)).all()), (case, name, (err / unit).max())
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = _out(model, x)
    assert torch.allclose(_out(loaded, x), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


_LIVE = torch.linspace(1.0, 1.1, 15)
#: case -> (values, units): the grid with units spans only what the bound needs
QUANTIZE_UNITS = {
    "an element whose error cannot reach the output is clamped": (torch.cat([_LIVE, torch.tensor([300.0])]),
                                                                 torch.cat([_LIVE, torch.tensor([math.inf])])),
    "room to spare at both ends": (torch.tensor([-50.0, 0.0, 0.5, 1.0, 80.0]),
                                   torch.tensor([1e5, 1.0, 1.0, 1.0, 1e5])),
    "no room: the full range": (torch.linspace(-1, 1, 9), torch.full((9,), 1e-6)),
}


@pytest.mark.parametrize("case", sorted(QUANTIZE_UNITS))
def test_quantize_with_units_meets_the_bound(case: str) -> None:
    values, units = QUANTIZE_UNITS[case]
    q, qp = extras.quantize(values, 1, units.double())
    back = extras.dequantize(q, qp).double()
    plain_q, plain_qp = extras.quantize(values, 1)
    plain = extras.dequantize(plain_q, plain_qp).double()
    if case == "no room: the full range":
        assert torch.allclose(qp, plain_qp, atol=1e-6)  # nothing to clamp: the plain grid (to the slack)
    else:
        assert extras.within_bound(back, values, units.double())
        assert not extras.within_bound(plain, values, units.double())  # one grid from min to max does not


# ------------------------------------------------------------------- format version 3: the preset dictionary


def _index_text(art: artifact.Artifact) -> bytes:
    content: dict = {"manifest": art.manifest, "dense": art.dense}
    if art.format_version >= 2:
        meta = {k: v for k, v in art.metadata.items() if k not in ("format", "format_version", "integrity")}
        content = {"meta": meta, **content}
    return json.dumps(content, separators=(",", ":")).encode()


def _with_dictionary(text: bytes, zdict: bytes) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY, zdict)
    return deflater.compress(text) + deflater.flush()


def test_version_3_index_uses_exactly_its_dictionary(tmp_path: Path) -> None:
    """A version 3 index is compressed against INDEX_DICTIONARY (smaller than plain zlib); a version 3 index
    without it, an older index with one, or another dictionary are each a FormatError saying so."""
    art = artifact.parse(artifact.encode(_v2()))
    assert art.format_version == 3
    text = _index_text(art)
    stored = art.tensors["index"].numpy().tobytes()
    assert zlib.decompressobj(zdict=artifact.INDEX_DICTIONARY).decompress(stored) == text
    assert len(stored) < len(zlib.compress(text, 9))
    bad = {
        "no dictionary": (art, zlib.compress(text, 9), "lacks a preset dictionary"),
        "another dictionary": (art, _with_dictionary(text, b'"manifest":"dense":'), "another preset dictionary"),
    }
    v1 = artifact.parse(artifact.to_bytes(_trained("conv2d")))
    assert v1.format_version == 1
    bad["v1 with a dictionary"] = (v1, _with_dictionary(_index_text(v1), artifact.INDEX_DICTIONARY),
                                     "needs a preset dictionary, which format version 1 does not use")
    for name, (base, index, message) in bad.items():
        path = tmp_path / f"{name}.pemn"
        path.write_bytes(artifact.encode(base, index=index))
        with pytest.raises(pemn.FormatError, match=message):
            pemn.artifact.read(path)


def _multi_task_bytes() -> bytes:
    """A format version 4 file: two tasks of one small prototype."""
    from pemn import taskset
    from pemn.taskfile import build_tasks

    model = pemn.convert_(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)), cases.config("rp"))
    for name in ("a", "b"):
        taskset.add_task(model, name, activate=True)
    return artifact.encode(build_tasks(model, coding="entropy"))


@pytest.mark.parametrize("version", [3, 4])
def test_index_of_the_first_dictionary_still_loads(version: int) -> None:
    """Issue 19: pemn writes a version 3 / 4 index against the core's dictionary (no application strings), and still
    reads one compressed against FIRST_INDEX_DICTIONARY (every version 3 / 4 file written before), named in the
    stream by its Adler-32: the same index, the same file content."""
    data = artifact.to_bytes(_mild(_trained("conv2d")), fold_norms=True, extras_dtype="int8") if version == 3 \
        else _multi_task_bytes()
    art = artifact.parse(data)
    assert art.format_version == version
    raw = art.tensors["index"].numpy().tobytes()
    assert raw[2:6] == zlib.adler32(artifact.INDEX_DICTIONARY).to_bytes(4, "big")  # what pemn writes
    assert artifact.index_dictionary(raw) is artifact.INDEX_DICTIONARY
    text = zlib.decompressobj(zdict=artifact.INDEX_DICTIONARY).decompress(raw)
    old = artifact.parse(artifact.encode(art, index=_with_dictionary(text, artifact.FIRST_INDEX_DICTIONARY)))
    old_raw = old.tensors["index"].numpy().tobytes()
    assert artifact.index_dictionary(old_raw) is artifact.FIRST_INDEX_DICTIONARY and old_raw != raw
    def content(a: artifact.Artifact) -> tuple:  # all but the integrity hash, which covers the index's bytes
        return {k: v for k, v in a.metadata.items() if k != "integrity"}, a.manifest, a.dense, a.app

    assert content(old) == content(art)
    assert [t.name for t in old.tasks] == [t.name for t in art.tasks]


def test_core_dictionary_holds_no_application_words() -> None:
    """The core's dictionary has none of the training application's app-object words that the first one froze into
    the format (its dataset, model arguments, preprocessing), and the first one is kept byte for byte (its Adler-32
    is what the golden version 3 files name)."""
    assert zlib.adler32(artifact.FIRST_INDEX_DICTIONARY) == 0xEF99348D
    for word in (b"image-classifier", b"cifar10", b"num_classes", b"in_channels", b"image_size", b"preprocessing",
                 b'\\"mean\\"', b'\\"std\\"', b"kwargs"):
        assert word in artifact.FIRST_INDEX_DICTIONARY and word not in artifact.INDEX_DICTIONARY, word
    assert set(artifact.INDEX_DICTIONARIES.values()) == {artifact.INDEX_DICTIONARY, artifact.FIRST_INDEX_DICTIONARY}


def _split_fold_artifact() -> artifact.Artifact:
    gamma, beta, mean, var, _, _ = INT8_BOUND["folded scale of wide range: float16 scale, int8 shift"]
    art = artifact.parse(artifact.encode(artifact.build(_bn_net(gamma, beta, mean, var), extras_dtype="int8",
                                                        fold_norms=True)))
    assert [e[1] for e in art.dense if e[1].startswith("fold")] == list(artifact.FOLD_ROWS)
    return art


def _edit_rows(edit: Callable[[list], None], version: str | None = None) -> Callable[[], bytes]:
    def make() -> bytes:
        art = _split_fold_artifact()
        edit(art.dense)
        if version is not None:
            art.metadata["format_version"] = version
        return artifact.encode(art)
    return make


def _kind_of(kind: str, new: str) -> Callable[[list], None]:
    def edit(dense: list) -> None:
        next(e for e in dense if e[1] == kind)[1] = new
    return edit


#: case -> (damaged bytes, error): a row-wise fold must be exactly one scale and one shift row of one length
SPLIT_DAMAGE = {
    "shift row missing": (_edit_rows(lambda d: d.remove(next(e for e in d if e[1] == "fold.shift"))),
                          r"dense tensors do not match|one scale row and one shift row|qparams"),
    "scale row twice": (_edit_rows(_kind_of("fold.shift", "fold.scale")), r"listed twice|does not fit"),
    "row of two dimensions": (_edit_rows(lambda d: next(e for e in d if e[1] == "fold.scale").__setitem__(3, [2, 8])),
                              r"bad dense index"),
    "rows in a version 2 file": (_edit_rows(lambda d: None, version="2"), r"bad dense index"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_DAMAGE))
def test_row_wise_fold_damage_is_a_format_error(tmp_path: Path, case: str) -> None:
    make, message = SPLIT_DAMAGE[case]
    path = tmp_path / "m.pemn"
    path.write_bytes(make())
    model = _bn_net(_ONES, _ZEROS, _ZEROS, _ONES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pemn.FormatError, match=message):
        pemn.load(path, model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_row_wise_fold_is_smaller_and_loads_within_the_bound(tmp_path: Path) -> None:
    gamma, beta, mean, var, _, _ = INT8_BOUND["folded scale of wide range: float16 scale, int8 shift"]
    model = _bn_net(gamma, beta, mean, var)
    split = pemn.save(model, tmp_path / "split.pemn", extras_dtype="int8", fold_norms=True)
    s = pemn.summary(split, verbose=False)
    # the norm: a float16 scale row and an int8 shift row (one qparams pair), not a [2, C] float16 fold (4·C bytes)
    assert (s.bytes["norm_stats"], s.bytes["scales"]) == (2 * _C + _C, 8 + 8)  # the int8 conv bias has its own pair
    assert s.bytes["norm_stats"] + 8 < 4 * _C and s.file_bytes == split.stat().st_size
    assert pemn.summary(model, extras_dtype="int8", fold_norms=True, verbose=False).file_bytes == split.stat().st_size
    loaded = pemn.load(split, _bn_net(_ONES, _ZEROS, _ZEROS, _ONES)).eval()
    got = torch.stack([loaded[1].weight.detach(), loaded[1].bias.detach()])
    unit = extras.error_units(model)["1"]
    assert bool(((got - extras.fold(model[1])).abs() <= extras.INT8_TOL * unit * (1 + 1e-5)).all())
