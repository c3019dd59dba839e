"""pemn on real third-party models: Hugging Face transformers architectures built from tiny config objects.

No weights are downloaded. Every model is shaped so that its weight matrices dominate, as in real ones: hidden
size 64, 2 layers, 4 heads, MLP 256, a 1024-token vocabulary (CLIP, ViT: 32x32 images, patch 8; Whisper:
16 mel bins, 32 positions). That leaves 0.1-2.6 % of each model in norms, biases and position tables, which
stay dense by design. For each model, with the default ``PEMNConfig(strategy="rp", ratio=1e-3, keep=0.5)``:
convert, a few training steps (only mask scores and dense extras get gradients), save, load into a freshly
built model with another torch seed (equal outputs bit for bit, for packed and entropy coding and seed-only
prototypes), ties preserved everywhere, transformers' ``tie_weights()`` safe and ``resize_token_embeddings``
refused, the file at least 10x smaller than the fp32 model (each tensor counted once), and summary's honest
ratio equal to that real ratio.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import pemn
from pemn.layers import MaskedLayer, MaskedWeight

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

CONFIG = pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=0.5)
V = 1024  # vocabulary
DIMS = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "intermediate_size": 256}
IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def _whisper():
    return transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(
        vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=16,
        max_source_positions=32, max_target_positions=32, decoder_start_token_id=0, **IDS))


MODELS = {
    # name: (factory, inputs(generator) -> kwargs, output name)
    "bert": (lambda: transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=V, max_position_embeddings=64, **DIMS)), "ids", "logits"),
    "gpt2": (lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)),
        "ids", "logits"),
    "llama": (lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, num_key_value_heads=2, max_position_embeddings=64, **DIMS, **IDS)), "ids", "logits"),
    "t5": (lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=V, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1)), "seq2seq", "logits"),
    "whisper": (_whisper, "audio", "logits"),
    "clip": (lambda: transformers.CLIPModel(transformers.CLIPConfig(
        text_config={"vocab_size": V, "max_position_embeddings": 32, **DIMS},
        vision_config={"image_size": 32, "patch_size": 8, **DIMS}, projection_dim=64)), "clip", "logits_per_image"),
    "vit": (lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=8, num_labels=10, **DIMS)), "image", "logits"),
}


def inputs(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (2, 12), generator=g)
    if kind == "ids":
        return {"input_ids": ids}
    if kind == "seq2seq":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :6]}
    if kind == "audio":
        return {"input_features": torch.randn(2, 16, 64, generator=g), "decoder_input_ids": ids[:, :6]}
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    return {"pixel_values": pixels} if kind == "image" else {"input_ids": ids, "pixel_values": pixels}


def build(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][0]()


def fp32_bytes_once(model: torch.nn.Module) -> int:
    """The dense model's size: every floating parameter and persistent buffer at 4 bytes, each tensor once."""
    seen: dict[int, int] = {}
    for t in model.state_dict(keep_vars=True).values():
        if t.is_floating_point():
            seen[id(t)] = t.numel()
    return 4 * sum(seen.values())


def tie_groups(model: torch.nn.Module) -> list[list[str]]:
    """The groups of parameter names that are one tensor."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def holder(model: torch.nn.Module, name: str) -> object:
    """What a parameter name of the original model is in a converted one: its MaskedWeight, or the tensor."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, MaskedLayer) and attr in module.masked_weights():
        return module.masked_weights()[attr]
    return module._parameters[attr]


def assert_ties(model: torch.nn.Module, groups: list[list[str]]) -> None:
    for names in groups:
        held = [holder(model, n) for n in names]
        assert all(h is held[0] for h in held), names


def forward(model: torch.nn.Module, name: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return getattr(model(**batch), MODELS[name][2])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is fastest (and several fight each other on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple]:
    """Each model converted and trained once (shared by the tests below)."""
    return {}


def _trained(name: str, cache: dict) -> tuple:
    if name not in cache:
        model = build(name, seed=0)
        groups = tie_groups(model)
        dense_bytes = fp32_bytes_once(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pemn.convert_(model, CONFIG)
        said = [str(w.message) for w in caught if str(w.message).startswith("pemn:")]
        # nothing left dense silently: the only warning is Whisper's decoder position table, a subclass of
        # Embedding with its own forward, which pemn leaves dense unless it is registered
        assert said == ([] if name != "whisper" else [
            "pemn: model.decoder.embed_positions (WhisperPositionalEmbedding) stays dense: its class overrides "
            "Embedding's forward (pemn.register_layer(WhisperPositionalEmbedding) masks it if that forward reads "
            "self.weight)"]), said
        batch = inputs(MODELS[name][1])
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
        model.train()
        for _ in range(2):
            opt.zero_grad()
            forward(model, name, batch).float().pow(2).mean().backward()
            opt.step()
        cache[name] = (model, groups, dense_bytes, batch)
    return cache[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_convert_train_save_load(tmp_path: Path, name: str, trained: dict) -> None:
    model, groups, dense_bytes, batch = _trained(name, trained)
    assert_ties(model, groups)
    # what trains: mask scores and the dense extras, nothing else; every masked weight got a gradient
    masked = set(map(id, pemn.masked_weights(model).values()))
    for pname, p in model.named_parameters():  # a trainable tensor is a mask's scores or a dense extra
        assert (".pemn_" in pname) == pname.endswith(".scores"), pname
        if p.grad is not None and ".pemn_" not in pname:
            assert p.dim() < 2 or "embed" in pname or "token" in pname, pname  # a bias, norm or position table
    assert all(mw.scores.grad is not None for mw in pemn.masked_weights(model).values())
    assert not any(isinstance(m, MaskedWeight) and id(m) not in masked for m in model.modules())
    assert all(not b.requires_grad for b in pemn.convert.find_bank(model).buffers())

    model.eval()
    with torch.no_grad():
        expected = forward(model, name, batch)
    for coding, prototype in (("packed", "values"), ("entropy", "values"), ("packed", "seed")):
        path = pemn.save(model, tmp_path / f"{coding}-{prototype}.pemn", coding=coding, prototype=prototype)
        fresh = pemn.load(path, build(name, seed=1)).eval()
        assert_ties(fresh, groups)
        with torch.no_grad():
            assert torch.equal(forward(fresh, name, batch), expected), (coding, prototype)
    fresh.tie_weights()  # transformers' own tying, on the loaded model: kept, still converted, same outputs
    assert_ties(fresh, groups)
    assert pemn.convert.is_converted(fresh)
    with torch.no_grad():
        assert torch.equal(forward(fresh, name, batch), expected)

    # the bar: >= 10x smaller than the fp32 model, each tensor counted once, and summary says so exactly
    path = tmp_path / "packed-values.pemn"
    real = dense_bytes / path.stat().st_size
    s = pemn.summary(path, verbose=False)
    assert s.honest_ratio == pytest.approx(real, rel=1e-12) and s.dense_bytes == dense_bytes
    assert pemn.summary(model, verbose=False).honest_ratio == pytest.approx(real, rel=1e-12)
    assert real >= 10, f"{name}: only {real:.1f}x smaller than fp32"
    print(f"{name}: fp32 {dense_bytes:,} B, file {path.stat().st_size:,} B, {real:.1f}x")  # -s shows the table

    dense = pemn.materialize(model)
    for names in groups:
        assert all(dense.get_parameter(n) is dense.get_parameter(names[0]) for n in names)
    with torch.no_grad():
        assert torch.equal(forward(dense, name, batch), expected)


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5", "whisper"])
def test_tie_weights_and_resize_after_conversion(name: str, trained: dict) -> None:
    model, groups, _, batch = _trained(name, trained)
    model.eval()
    with torch.no_grad():
        before = forward(model, name, batch)
    model.tie_weights()
    assert_ties(model, groups)
    with torch.no_grad():
        assert torch.equal(forward(model, name, batch), before)
    emb = model.get_input_embeddings()
    with pytest.raises(pemn.ConversionError, match=r"before pemn\.convert_"):
        model.resize_token_embeddings(V + 8)
    assert model.get_input_embeddings() is emb and isinstance(emb, pemn.MaskedEmbedding)
    assert model.resize_token_embeddings() is emb  # the query form still works
    with torch.no_grad():
        assert torch.equal(forward(model, name, batch), before)


def test_whisper_positional_embedding_masked_once_registered(tmp_path: Path) -> None:
    from transformers.models.whisper.modeling_whisper import WhisperPositionalEmbedding

    pemn.register_layer(WhisperPositionalEmbedding)  # its forward returns self.weight[positions]
    try:
        model = build("whisper", seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            pemn.convert_(model, CONFIG)
        assert "model.decoder.embed_positions.weight" in pemn.masked_weights(model)
        batch = inputs("audio")
        model.eval()
        fresh = pemn.load(pemn.save(model, tmp_path / "w.pemn"), build("whisper", seed=1)).eval()
        with torch.no_grad():
            assert torch.equal(forward(fresh, "whisper", batch), forward(model, "whisper", batch))
    finally:
        pemn.unregister_layer(WhisperPositionalEmbedding)
    with pytest.raises(pemn.ConversionError, match=r"overrides.*register_layer\(WhisperPositionalEmbedding\)"):
        pemn.convert_(build("whisper", seed=0), pemn.PEMNConfig(targets=["Embedding"]))


def test_tie_weights_refuses_a_tie_pemn_does_not_hold() -> None:
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pemn.convert_(model, CONFIG)
    model.config.tie_word_embeddings = True
    with pytest.raises(pemn.ConversionError, match=r"tie the weights before pemn\.convert_"):
        model.tie_weights()
    assert model.lm_head.pemn_weight is not model.transformer.wte.pemn_weight  # unchanged


def test_gpt2_conv1d_masked_with_its_fan_in() -> None:
    from transformers.pytorch_utils import Conv1D

    model = build("gpt2", seed=0)
    pemn.convert_(model, pemn.PEMNConfig(targets=["Conv1D"]))
    attn = model.transformer.h[0].attn.c_attn
    assert isinstance(attn, Conv1D) and type(attn).__name__ == "MaskedConv1D"
    assert attn.pemn_weight.shape == (64, 192) and attn.pemn_weight.fan_in == 64  # stored (in, out)
    x = torch.randn(3, 64)
    assert torch.equal(attn(x), torch.addmm(attn.bias, x, attn.weight))
    assert all(type(m) is not Conv1D for m in model.modules())
    assert set(pemn.masked_weights(model)) == {f"transformer.h.{i}.{p}.weight" for i in range(2)
                                               for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def _wav2vec2() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(
        vocab_size=32, conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, **DIMS))


def test_wav2vec2_weight_norm_masked_with_the_defaults(tmp_path: Path) -> None:
    """Wav2Vec2's positional conv is weight-normed (parametrizations.weight_norm, dim=2): the default conversion
    masks its direction v and keeps its magnitude g dense; it trains, saves and loads bit-identically."""
    model = _wav2vec2()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing large left dense
        pemn.convert_(model, CONFIG)
    conv = model.wav2vec2.encoder.pos_conv_embed.conv
    name = "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"
    assert name in pemn.masked_weights(model)
    assert conv.parametrizations.weight.original0.shape == (1, 1, 16)  # g: dense, trained
    wave = torch.randn(2, 400, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(wave).logits.pow(2).mean().backward()
        opt.step()
    assert pemn.masked_weights(model)[name].scores.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        expected = model(wave).logits
    assert torch.isfinite(expected).all()
    fresh = pemn.load(pemn.save(model, tmp_path / "w2v.pemn"), _wav2vec2()).eval()
    pemn.materialize(model).save_pretrained(tmp_path / "dense")  # torch's weight norm again: transformers' keys
    back, info = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path / "dense", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(fresh(wave).logits, expected)
        assert torch.equal(pemn.load(tmp_path / "w2v.pemn").eval()(wave).logits, expected)  # no model given
        assert torch.equal(back.eval()(wave).logits, expected)


def test_wav2vec2_weight_norm_excluded(tmp_path: Path) -> None:
    model = _wav2vec2()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # left dense on purpose: reported, not warned about
        pemn.convert_(model, pemn.PEMNConfig(exclude=["ParametrizedConv1d"]))
    (big,) = [t for t in model.pemn_dense_report.large if "pos_conv_embed" in t.name]
    assert big.reason == "excluded" and big.module_type == "ParametrizedConv1d"
    wave = torch.randn(2, 400, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        expected = model(wave).logits
    fresh = pemn.load(pemn.save(model, tmp_path / "w2v.pemn"), _wav2vec2()).eval()
    with torch.no_grad():
        assert torch.equal(fresh(wave).logits, expected)
