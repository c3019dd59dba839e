"""The layer registry, nn.Embedding, tied / shared weights, parametrized layers and the dense-leftover report."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import pemn
from pemn import PEMNConfig
from pemn.convert import dense_report

CFG = PEMNConfig(strategy="rp", ratio=0.1, keep=0.5)


class TinyLM(nn.Module):
    """Token embedding, a learned position table, a norm and a head tied to the embedding."""

    def __init__(self, vocab: int = 40, dim: int = 12, tied: bool = True, **emb_kwargs) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, **emb_kwargs)
        self.pos = nn.Parameter(torch.randn(6, dim))
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x) + self.pos[: x.shape[1]]
        return self.head(self.norm(h + torch.relu(self.mix(h))))


def tokens(seed: int = 3, vocab: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, (4, 6), generator=torch.Generator().manual_seed(seed))


def train(model: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(x).logsumexp(-1).mean().backward()
        opt.step()


def build(seed: int = 0, **kwargs) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(**kwargs)


def quiet_convert(model: nn.Module, config: PEMNConfig = CFG, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pemn.convert_(model, config, **kwargs)


# --- nn.Embedding ------------------------------------------------------------------------------------------

def test_embedding_is_masked_by_default_through_f_embedding() -> None:
    m = quiet_convert(build(tied=False))
    assert isinstance(m.emb, pemn.MaskedEmbedding) and isinstance(m.emb, nn.Embedding)
    assert set(pemn.masked_weights(m)) == {"emb.weight", "mix.weight", "head.weight"}
    x = tokens()
    assert torch.equal(m.emb(x), nn.functional.embedding(x, m.emb.weight))
    mw = m.emb.pemn_weight
    assert int(mw.current_mask().sum()) == pemn.kept_count(0.5, 40 * 12)
    assert mw.fan_in == 12  # the embedding dimension: torch's prod(shape[1:])
    dense = quiet_convert(build(tied=False), PEMNConfig(exclude=["Embedding"]))
    assert "emb.weight" not in pemn.masked_weights(dense) and isinstance(dense.emb.weight, nn.Parameter)


def test_embedding_padding_row_gets_no_gradient() -> None:
    m = quiet_convert(build(tied=False, padding_idx=0))
    x = tokens()
    x[:, 0] = 0
    m(x).sum().backward()
    grad = m.emb.pemn_weight.scores.grad
    assert grad is not None and torch.count_nonzero(grad[0]) == 0 and torch.count_nonzero(grad[1:]) > 0


@pytest.mark.parametrize(("kwargs", "match"), [({"sparse": True}, "sparse=True"), ({"max_norm": 1.0}, "max_norm")])
def test_embedding_options_refused_clearly(kwargs: dict, match: str) -> None:
    model = build(tied=False, **kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pemn.ConversionError, match=match) as err:
        pemn.convert_(model, CFG)
    assert "'emb'" in str(err.value) and "exclude" in str(err.value)
    assert not pemn.convert.is_converted(model) and type(model.emb) is nn.Embedding  # unchanged
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    m = quiet_convert(build(tied=False, **kwargs), PEMNConfig(exclude=["Embedding"]))
    assert "emb.weight" not in pemn.masked_weights(m)


# --- ties --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("coding", ["packed", "entropy"])
def test_tied_weight_is_one_masked_weight_everywhere(tmp_path: Path, coding: str) -> None:
    m = quiet_convert(build())
    assert m.head.pemn_weight is m.emb.pemn_weight
    assert pemn.tied_weights(m) == {"emb.weight": ["emb.weight", "head.weight"]}
    assert list(pemn.masked_weights(m)) == ["emb.weight", "mix.weight"]
    x = tokens()
    train(m, x)
    assert m.head.pemn_weight is m.emb.pemn_weight
    path = pemn.save(m, tmp_path / "lm.pemn", coding=coding)
    art = pemn.artifact.read(path)
    assert [e["name"] for e in art.manifest] == ["emb.weight", "mix.weight"]  # the shared weight stored once
    fresh = pemn.load(path, build(seed=9))
    assert fresh.head.pemn_weight is fresh.emb.pemn_weight
    m.eval()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), m(x))
    pemn.freeze_masks(m)
    assert m.head.pemn_weight is m.emb.pemn_weight and m.emb.pemn_weight.frozen
    dense = pemn.materialize(m)
    assert dense.head.weight is dense.emb.weight and type(dense.head) is nn.Linear
    with torch.no_grad():
        assert torch.equal(dense(x), m(x))


def test_tie_against_untied_model_is_a_mismatch(tmp_path: Path) -> None:
    path = pemn.save(quiet_convert(build()), tmp_path / "tied.pemn")
    with pytest.raises(pemn.ArchitectureMismatchError):
        pemn.load(path, build(tied=False))
    path = pemn.save(quiet_convert(build(tied=False)), tmp_path / "untied.pemn")
    with pytest.raises(pemn.ArchitectureMismatchError, match="tied"):
        pemn.load(path, build())


@pytest.mark.filterwarnings("ignore:pemn. pos .TinyLM:UserWarning")  # the model's plain position table, expected
def test_tie_with_a_dense_user_keeps_both_dense() -> None:
    with pytest.warns(UserWarning, match="shared with head.weight"):
        m = pemn.convert_(build(), PEMNConfig(exclude=["head"]))
    assert m.head.weight is m.emb.weight and isinstance(m.emb.weight, nn.Parameter)
    assert set(pemn.masked_weights(m)) == {"mix.weight"}


def test_shared_dense_tensors_stored_once(tmp_path: Path) -> None:
    class SharedBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
            self.b.bias = self.a.bias
            self.norm = nn.LayerNorm(8)
            self.again = self.norm  # one module under two names

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.again(self.b(self.norm(self.a(x))))

    torch.manual_seed(0)
    m = quiet_convert(SharedBias())
    art = pemn.artifact.parse(pemn.artifact.to_bytes(m))
    assert [e[0] for e in art.dense] == ["a.bias", "norm.weight", "norm.bias"]
    torch.manual_seed(5)
    fresh = pemn.load(pemn.save(m, tmp_path / "s.pemn"), SharedBias())
    assert fresh.b.bias is fresh.a.bias
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))
    s = pemn.summary(m, verbose=False)
    assert s.dense_bytes == 4 * (2 * 64 + 8 + 16)


# --- pemn's names are out of reach of name-prefix matching ---------------------------------------------------

def test_internal_names_not_reachable_by_parameter_prefix() -> None:
    m = quiet_convert(build(tied=False))
    for name, _ in m.named_parameters():
        for original in ("emb.weight", "head.weight", "mix.weight"):
            assert not name.startswith(original), name
    with pytest.raises(pemn.ConversionError, match="masked weight"):
        m.head.weight = nn.Parameter(torch.zeros(40, 12))
    assert isinstance(m.head, pemn.MaskedLinear)


# --- the registry ------------------------------------------------------------------------------------------

class Bilinear2(nn.Module):
    """A user's layer: weight stored (in, out), used by its own forward."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.gate = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight * torch.sigmoid(x @ self.gate) + self.bias


@pytest.fixture
def registered_bilinear():
    spec = pemn.register_layer(Bilinear2, weights=("weight", "gate"), fan_in=pemn.registry.fan_in_first)
    yield spec
    pemn.unregister_layer(Bilinear2)


def test_user_layer_in_a_few_lines(tmp_path: Path, registered_bilinear) -> None:
    def make() -> nn.Module:
        return nn.Sequential(Bilinear2(6, 10), nn.ReLU(), nn.Linear(10, 3))

    torch.manual_seed(0)
    m = quiet_convert(make())
    assert registered_bilinear.name in pemn.registry.type_names()
    assert set(pemn.masked_weights(m)) == {"0.weight", "0.gate", "2.weight"}
    assert type(m[0]).__name__ == "MaskedBilinear2" and isinstance(m[0], Bilinear2)
    assert m[0].pemn_weight.fan_in == 6  # fan_in_first on a (6, 10) weight
    x = torch.randn(5, 6)
    train(m, x)
    torch.manual_seed(4)
    fresh = pemn.load(pemn.save(m, tmp_path / "u.pemn", prototype="seed"), make())
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))
    only = quiet_convert(make(), PEMNConfig(targets=["Bilinear2"]))
    assert set(pemn.masked_weights(only)) == {"0.weight", "0.gate"}
    dense = pemn.materialize(m)
    assert type(dense[0]) is Bilinear2 and isinstance(dense[0].weight, nn.Parameter)


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="already registered"):
        pemn.register_layer(nn.Linear)
    with pytest.raises(ValueError, match="built in"):
        pemn.unregister_layer(nn.Linear)
    with pytest.raises(TypeError):
        pemn.register_layer(int)
    with pytest.raises(ValueError, match="weights"):
        pemn.register_layer(Bilinear2, weights=())
    with pytest.raises(pemn.ConversionError, match="register_layer"):  # a type the model has, with no entry
        pemn.convert_(nn.Sequential(Bilinear2(3, 3)), PEMNConfig(targets=["Bilinear2"]))


def test_subclass_with_own_forward_left_dense_until_registered() -> None:
    class Scaled(nn.Embedding):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2.0

    torch.manual_seed(0)
    with pytest.raises(pemn.ConversionError, match=r"no module matched.*overrides.*register_layer\(Scaled\)"):
        pemn.convert_(nn.Sequential(Scaled(10, 4)), CFG)
    with pytest.warns(UserWarning, match=r"pemn: 0 \(Scaled\) stays dense: its class overrides Embedding's forward"):
        m = pemn.convert_(nn.Sequential(Scaled(10, 4), nn.Linear(4, 4)), CFG)  # asked for by default only
    assert set(pemn.masked_weights(m)) == {"1.weight"} and type(m[0]) is Scaled
    with pytest.raises(pemn.ConversionError, match=r"'0'.*overrides.*register_layer\(Scaled\)"):
        pemn.convert_(nn.Sequential(Scaled(10, 4)), PEMNConfig(ratio=0.1, targets=["Embedding"]))  # asked for
    pemn.register_layer(Scaled)
    try:
        m = quiet_convert(nn.Sequential(Scaled(10, 4)))
        x = torch.tensor([[1, 2, 3]])
        assert torch.equal(m(x), nn.functional.embedding(x, m[0].weight) * 2.0)
    finally:
        pemn.unregister_layer(Scaled)


# --- parametrized layers -----------------------------------------------------------------------------------

def _weight_normed() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), parametrizations.weight_norm(nn.Conv1d(6, 6, 3, padding=1), dim=2))


def _hooked(norm, layer: nn.Module) -> nn.Module:
    """The old hook-based torch.nn.utils.weight_norm / spectral_norm (deprecated: a FutureWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return norm(layer)


#: name -> (factory of the parametrized layer (6 -> 6 channels), the tensor pemn masks, the dense ones it keeps)
PARAMETRIZED = {
    "weight_norm_conv1d": (lambda: parametrizations.weight_norm(nn.Conv1d(6, 6, 3, padding=1), dim=2),
                           "parametrizations.weight.original1", ["parametrizations.weight.original0", "bias"]),
    "weight_norm_linear": (lambda: parametrizations.weight_norm(nn.Linear(6, 6)),
                           "parametrizations.weight.original1", ["parametrizations.weight.original0", "bias"]),
    "spectral_norm_linear": (lambda: parametrizations.spectral_norm(nn.Linear(6, 6)),
                             "parametrizations.weight.original", ["bias", "parametrizations.weight.0._u",
                                                                  "parametrizations.weight.0._v"]),
    "spectral_norm_conv1d": (lambda: parametrizations.spectral_norm(nn.Conv1d(6, 6, 3, padding=1)),
                             "parametrizations.weight.original", ["bias", "parametrizations.weight.0._u",
                                                                  "parametrizations.weight.0._v"]),
    "hook_weight_norm_conv1d": (lambda: _hooked(torch.nn.utils.weight_norm, nn.Conv1d(6, 6, 3, padding=1)),
                                "weight_v", ["weight_g", "bias"]),
    "hook_weight_norm_linear": (lambda: _hooked(torch.nn.utils.weight_norm, nn.Linear(6, 6)),
                                "weight_v", ["weight_g", "bias"]),
    "hook_spectral_norm_linear": (lambda: _hooked(torch.nn.utils.spectral_norm, nn.Linear(6, 6)),
                                  "weight_orig", ["bias", "weight_u", "weight_v"]),
}


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def _parametrized_net(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = PARAMETRIZED[name][0]()
    if isinstance(layer, nn.Conv1d):  # (batch, 5 positions, 4) -> (batch, 6 channels, 5) -> conv -> head
        return nn.Sequential(nn.Linear(4, 6), _Transpose(), layer, _Transpose(), nn.Linear(6, 3))
    return nn.Sequential(nn.Linear(4, 6), layer, nn.Linear(6, 3))


def _effective_weight(layer: nn.Module, masked: torch.Tensor) -> torch.Tensor:
    """What the layer's weight must be, computed here from the masked tensor and the norm's own state (a weight
    norm slice whose direction is masked off entirely is 0, where torch's 0/0 gives NaN)."""
    if hasattr(layer, "parametrizations"):
        norm = layer.parametrizations.weight[0]
        if isinstance(norm, parametrizations._WeightNorm):
            return torch._weight_norm(masked, layer.parametrizations.weight.original0, norm.dim).nan_to_num(0.0)
        sigma = torch.vdot(norm._u, torch.mv(norm._reshape_weight_to_matrix(masked), norm._v))
        return masked / sigma
    hook = next(iter(layer._forward_pre_hooks.values()))
    if hasattr(hook, "n_power_iterations"):  # spectral norm
        sigma = torch.dot(layer.weight_u, torch.mv(hook.reshape_weight_to_matrix(masked), layer.weight_v))
        return masked / sigma
    return torch._weight_norm(masked, layer.weight_g, hook.dim).nan_to_num(0.0)


@pytest.mark.parametrize("strategy", ["mask", "rp"])
@pytest.mark.parametrize("name", sorted(PARAMETRIZED))
def test_parametrized_layers_masked_through_their_parametrization(tmp_path: Path, name: str, strategy: str) -> None:
    """weight_norm / spectral_norm (both APIs) are masked with the defaults: the direction v (weight norm, its
    magnitude g stays a trained dense parameter) or the weight before normalisation (spectral norm), so the layer
    still normalises what it computes; training, save / load (bit-identical) and materialize all work."""
    _, masked_name, dense = PARAMETRIZED[name]
    cfg = PEMNConfig(strategy=strategy, ratio=0.2 if strategy == "rp" else None)
    model = quiet_convert(_parametrized_net(name), cfg)
    mws = pemn.masked_weights(model)
    assert set(mws) == {"0.weight", f"2.{masked_name}" if "conv1d" in name else f"1.{masked_name}", "4.weight"
                        if "conv1d" in name else "2.weight"}
    layer = model[2] if "conv1d" in name else model[1]
    prefix = "2." if "conv1d" in name else "1."
    state = dict(model.state_dict())
    assert all(prefix + d in state for d in dense)
    mw = mws[prefix + masked_name]
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    model.eval()
    model(x)  # the hooks compute the weight in the forward
    with torch.no_grad():
        assert torch.allclose(layer.weight, _effective_weight(layer, mw()), rtol=1e-5, atol=1e-6)
        if "spectral" in name:  # the power iteration was rerun on the masked weight: sigma is the masked one's
            w = mw().reshape(mw().shape[0], -1)
            assert torch.linalg.matrix_norm(layer.weight.reshape(w.shape), 2) == pytest.approx(1.0, rel=0.05)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        assert mw.scores.grad is not None and mw.scores.grad.abs().sum() > 0 and mw.scores.grad.isfinite().all()
        opt.step()
    model(x).sum().backward()  # the old hooks now hold a weight with a graph, which deepcopy refuses
    pemn.materialize(model)  # works right after a training step too
    model.eval()
    with torch.no_grad():
        expected = model(x)
    assert torch.isfinite(expected).all()
    fresh = pemn.load(pemn.save(model, tmp_path / "p.pemn"), _parametrized_net(name, seed=5)).eval()
    dense = pemn.materialize(model)  # torch's own norms again (the structure kept), no pemn class
    assert not any(type(m).__module__.startswith("pemn") for m in dense.modules())
    norms = [type(h) for m in dense.modules() for h in m._forward_pre_hooks.values()]
    norms += [type(m[0]) for m in dense.modules() if isinstance(m, parametrize.ParametrizationList)]
    assert len(norms) == 1 and norms[0].__module__.startswith("torch.nn.utils.")
    assert {k for k in dense.state_dict()} == {k for k in _parametrized_net(name).state_dict()}
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
        assert torch.equal(dense(x), expected)
        assert torch.equal(model(x), expected)  # the model itself is untouched by materialize
    assert pemn.summary(model, verbose=False).kept == sum(int(m.current_mask().sum()) for m in mws.values())


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Linear(4, 6), parametrizations.orthogonal(nn.Linear(6, 6))),
    lambda: nn.Sequential(nn.Linear(4, 6), parametrizations.spectral_norm(parametrizations.weight_norm(
        nn.Linear(6, 6)))),  # two parametrizations chained on one weight
])
def test_other_parametrizations_refused_model_unchanged(make) -> None:
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pemn.ConversionError, match=r"module '1'.*weight_norm or spectral_norm.*exclude=\['1'\]"):
        pemn.convert_(model, CFG)
    assert type(model[0]) is nn.Linear and not pemn.convert.is_converted(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    m = quiet_convert(model, PEMNConfig(exclude=["1"]))
    assert set(pemn.masked_weights(m)) == {"0.weight"}


def test_parametrization_removed_then_masked() -> None:
    model = _weight_normed()
    parametrize.remove_parametrizations(model[1], "weight")
    m = quiet_convert(model)
    assert set(pemn.masked_weights(m)) == {"0.weight", "1.weight"}


# --- what stays dense --------------------------------------------------------------------------------------

def test_dense_report_and_warning(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(UserWarning, match=r"pos \(TinyLM, 72 elements"):
        m = pemn.convert_(build(), CFG)
    report = m.pemn_dense_report
    n_masked = 40 * 12 + 12 * 12
    n_dense = 72 + 12 + 2 * 12  # pos, mix.bias, norm
    assert (report.total_elements, report.masked_elements) == (n_masked + n_dense, n_masked)
    assert {t.module_type: t.elements for t in report.by_type} == {"TinyLM": 72, "LayerNorm": 24, "Linear": 12}
    assert math.isclose(sum(t.share for t in report.by_type), n_dense / (n_masked + n_dense))
    assert report.large[0].name == "pos"
    assert dense_report(m).by_type == report.by_type
    pemn.summary(m)
    out = capsys.readouterr().out
    assert "dense (not masked)" in out and "TinyLM" in out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded on purpose, or a bias/norm vector: no warning
        pemn.convert_(build(tied=False), PEMNConfig(ratio=0.1, exclude=["TinyLM", "Embedding"]),
                      filter_fn=lambda module, fqn: fqn != "mix")


def test_older_files_with_a_shared_tensor_stored_twice_still_load() -> None:
    """Before shared tensors were stored once, a tied bias was in the dense index under both its names."""
    class SharedBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
            self.b.bias = self.a.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    m = quiet_convert(SharedBias())
    art = pemn.artifact.build(m)
    assert [e[0] for e in art.dense] == ["a.bias"]
    art.dense.append(["b.bias", "param", "float32", [6]])
    art.tensors["params.float32"] = torch.cat([art.tensors["params.float32"], m.a.bias.detach()])
    torch.manual_seed(1)
    fresh = pemn.artifact.apply(pemn.artifact.parse(pemn.artifact.encode(art)), SharedBias())
    x = torch.randn(2, 6)
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x)) and fresh.b.bias is fresh.a.bias


class _FrozenTable(nn.Module):
    """A fixed (sinusoidal-style) position table frozen with requires_grad_(False), as Whisper's encoder has, next
    to trainable layers."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Embedding(16, 8)
        self.pos.requires_grad_(False)
        self.tok = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.tok(ids) + self.pos(torch.arange(ids.shape[-1])))


def test_frozen_weights_stay_dense_by_default_and_are_masked_when_targeted(tmp_path: Path) -> None:
    """A weight the model freezes (requires_grad=False: a fixed table, not a learned one) keeps its values by
    default, said in the dense report without a warning; naming it in targets masks it."""
    model = _FrozenTable()
    table = model.pos.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pemn.convert_(model, PEMNConfig(ratio=0.5))
    assert set(pemn.masked_weights(model)) == {"tok.weight", "head.weight"}
    assert torch.equal(model.pos.weight, table) and not model.pos.weight.requires_grad
    reasons = {t.name: t.reason for t in model.pemn_dense_report.large}
    assert reasons["pos.weight"].startswith("frozen")
    ids = torch.randint(0, 10, (2, 16))
    loaded = pemn.load(pemn.save(model, tmp_path / "m.pemn"), _FrozenTable())
    assert torch.equal(loaded.pos.weight, table) and torch.equal(loaded.eval()(ids), model.eval()(ids))
    targeted = pemn.convert_(_FrozenTable(), PEMNConfig(ratio=0.5, targets=["Embedding", "Linear"]))
    assert set(pemn.masked_weights(targeted)) == {"pos.weight", "tok.weight", "head.weight"}
