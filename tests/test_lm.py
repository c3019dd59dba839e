"""Character-level language models: the text dataset, the GPT, sampling, and the artifact round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pemn
from conftest import QUICK_TEXT as TEXT
from conftest import quick_config, quick_text_config
from pemn.errors import DatasetError
from pemn.training.gpt import GPT, gpt_heads
from pemn.training.models import ModelError, create_model, list_models
from pemn.training.sample import build_lm, generate, lm_app, read_app, sample_text
from pemn.training.text import (
    VocabularyError,
    decode,
    encode,
    evaluate_lm,
    lm_window_losses,
    load_text,
    random_windows,
)


def _write(tmp_path, data: bytes | str):
    path = tmp_path / "input.txt"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return tmp_path


def _tiny_gpt(vocab: int = 11, block: int = 8, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return create_model("gpt-16-2", num_classes=vocab, block_size=block)


# ------------------------------------------------------------------------------------------------ data


def test_split_and_vocab(tmp_path):
    corpus = load_text(_write(tmp_path, TEXT), block_size=8)
    n_train = int(0.9 * len(TEXT))
    assert corpus.vocab == "".join(sorted(set(TEXT)))
    assert decode(corpus.train, corpus.vocab) == TEXT[:n_train]
    assert decode(corpus.val, corpus.vocab) == TEXT[n_train:]
    assert corpus.train.dtype == torch.int64


def test_data_dir_may_be_the_file_and_bom_is_dropped(tmp_path):
    _write(tmp_path, "\ufeff" + TEXT)
    corpus = load_text(tmp_path / "input.txt", block_size=8)
    assert "\ufeff" not in corpus.vocab


def test_utf8_beyond_ascii(tmp_path):
    text = "Grüße, ÉCOLE — 東京 ✓\n" * 20
    corpus = load_text(_write(tmp_path, text), block_size=8)
    assert set(corpus.vocab) == set(text)
    assert decode(torch.cat([corpus.train, corpus.val]), corpus.vocab) == text


@pytest.mark.parametrize(("content", "block", "message"), [
    (None, 8, "no input.txt"),
    (b"", 8, "is empty"),
    (b"\xff\xfeabc" * 100, 8, "not UTF-8"),
    ("abc" * 10, 8, "needs more than one context"),  # 27 train / 3 val characters
    ("x" * 80, 8, "the file needs at least 81 characters"),  # 72 train / 8 validation: no full window
])
def test_bad_text_is_a_clear_error(tmp_path, content, block, message):
    if content is not None:
        _write(tmp_path, content)
    with pytest.raises(DatasetError, match=message):
        load_text(tmp_path, block_size=block)


def test_shortest_text_that_fits(tmp_path):
    # validation needs block_size + 1 characters: 90 characters give 81 train / 9 validation
    corpus = load_text(_write(tmp_path, "ab" * 45), block_size=8)
    assert (corpus.train.numel(), corpus.val.numel()) == (81, 9)


def test_random_windows_are_shifted_targets_and_seeded(tmp_path):
    data = torch.arange(100)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, y = random_windows(data, 8, 5, g1)
    x2, y2 = random_windows(data, 8, 5, g2)
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1) and torch.equal(x, x2) and torch.equal(y, y2)
    assert int(x.max()) <= 98


def test_unknown_character_is_a_vocabulary_error():
    with pytest.raises(VocabularyError, match=r"'Z' \(U\+005A\) at position 2"):
        encode("abZ", "ab")
    assert isinstance(VocabularyError("x"), ValueError)


# ----------------------------------------------------------------------------------------------- model


def test_registry_and_heads():
    assert "gpt-128-4" in list_models()
    assert [gpt_heads(d) for d in (16, 32, 100, 128, 384)] == [1, 1, 2, 4, 12]
    m = create_model("gpt-128-4", num_classes=65)
    assert m.heads == 4 and m.block_size == 64 and len(m.blocks) == 4
    with pytest.raises(ModelError, match="block_size"):
        create_model("gpt-16-1", num_classes=5, block_size=0)
    with pytest.raises(ModelError, match="divisible"):
        create_model("gpt-16-1", num_classes=5, heads=3)


def test_weight_count_and_layer_types():
    m = create_model("gpt-128-4", num_classes=65)
    # nanoGPT's count for this setting (bias=False, tied head): 0.80M without the position embedding
    n = sum(p.numel() for p in m.parameters())
    assert n == 65 * 128 + 64 * 128 + 4 * (12 * 128 * 128 + 2 * 128) + 128
    assert not any(isinstance(mod, nn.MultiheadAttention) for mod in m.modules())
    assert sum(isinstance(mod, nn.Linear) for mod in m.modules()) == 16


def test_head_is_tied_to_the_token_embedding():
    m = _tiny_gpt()
    x = torch.randint(0, 11, (2, 8))
    m(x).sum().backward()
    assert m.wte.weight.grad is not None
    with torch.no_grad():
        m.wte.weight.zero_()
    # no separate head matrix: zeroing the embedding zeroes every logit
    assert torch.count_nonzero(m(x)) == 0
    assert not any(p.shape == (11, 16) for n, p in m.named_parameters() if n != "wte.weight")


def test_attention_is_causal():
    m = _tiny_gpt().eval()
    x = torch.randint(0, 11, (1, 8))
    y = x.clone()
    y[0, 5:] = (y[0, 5:] + 1) % 11
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[:, :5], b[:, :5], atol=0, rtol=0)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_longer_than_block_size_is_an_error():
    with pytest.raises(ValueError, match="block_size 8"):
        _tiny_gpt()(torch.zeros(1, 9, dtype=torch.int64))


def test_one_layer_shares_one_random_block_across_blocks():
    m = pemn.convert_(_tiny_gpt(), pemn.PEMNConfig(strategy="one_layer"))
    mws = pemn.masked_weights(m)
    names = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    for n in names:
        assert mws[f"blocks.0.{n}.weight"].source == mws[f"blocks.1.{n}.weight"].source
    # the four projections of a block are four different random tensors
    assert len({mws[f"blocks.0.{n}.weight"].source for n in names}) == 4
    # and each block learns its own mask
    assert mws["blocks.0.attn.c_attn.weight"].scores is not mws["blocks.1.attn.c_attn.weight"].scores
    assert not torch.equal(mws["blocks.0.attn.c_attn.weight"].scores, mws["blocks.1.attn.c_attn.weight"].scores)


# ----------------------------------------------------------------------------------------- evaluation


def test_eval_covers_every_character_once(tmp_path):
    corpus = load_text(_write(tmp_path, TEXT), block_size=8)
    m = _tiny_gpt(vocab=corpus.vocab_size)
    nats, correct, count = lm_window_losses(m, corpus.val, 8, batch_size=3, device=torch.device("cpu"))
    assert count == corpus.val.numel() - 1
    # two ranks' shares add up to the whole
    parts = [lm_window_losses(m, corpus.val, 8, batch_size=2, device=torch.device("cpu"), rank=r, world=2)
             for r in range(2)]
    assert sum(p[2] for p in parts) == count and sum(p[1] for p in parts) == correct
    assert math.isclose(sum(p[0] for p in parts), nats, rel_tol=1e-6)
    metrics = evaluate_lm(m, corpus.val, 8)
    assert math.isclose(metrics["val_loss"], nats / count, rel_tol=1e-6)
    assert math.isclose(metrics["bits_per_char"], metrics["val_loss"] / math.log(2))
    # an untrained model is near uniform over the vocabulary
    assert abs(metrics["val_loss"] - math.log(corpus.vocab_size)) < 0.5
    assert evaluate_lm(m, corpus.val, 8) == metrics  # deterministic


# ----------------------------------------------------------------------------------- save / load / sample


@pytest.mark.parametrize("strategy", ["mask", "one_layer", "rp"])
def test_save_load_identical_logits(tmp_path, strategy):
    vocab = "abcdefghijk"
    m = pemn.convert_(_tiny_gpt(), pemn.PEMNConfig(strategy=strategy, seed=1))
    x = torch.randint(0, 11, (2, 8))
    m.eval()
    with torch.no_grad():
        ref = m(x)
    path = pemn.save(m, tmp_path / "m.pemn", app=lm_app("gpt-16-2", vocab, 8))
    torch.manual_seed(123)  # a different global seed before loading
    loaded, app = build_lm(path)
    assert app == read_app(path) == {"kind": "char-lm", "model": "gpt-16-2", "vocab": vocab, "block_size": 8}
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)


def test_artifact_without_lm_metadata_is_a_clear_error(tmp_path):
    m = pemn.convert_(_tiny_gpt(), pemn.PEMNConfig())
    path = pemn.save(m, tmp_path / "m.pemn")
    with pytest.raises(pemn.FormatError, match="no language model"):
        read_app(path)


def test_sampling_is_deterministic_under_a_seed():
    vocab = "abcdefghijk"
    m = _tiny_gpt()
    app = lm_app("gpt-16-2", vocab, 8)
    a = sample_text(m, app, "abc", 40, temperature=0.8, top_k=5, seed=7)
    state = torch.get_rng_state()
    b = sample_text(m, app, "abc", 40, temperature=0.8, top_k=5, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is untouched
    c = sample_text(m, app, "abc", 40, temperature=0.8, top_k=5, seed=8)
    assert a == b and a != c
    assert len(a) == 43 and a.startswith("abc") and set(a) <= set(vocab)
    # longer than the context: the context is cropped, not an error
    assert len(sample_text(m, app, "abcdefghijk", 3, seed=0)) == 14


def test_top_k_one_and_temperature_zero_are_greedy():
    m = _tiny_gpt()
    p = torch.tensor([1, 2, 3])
    greedy = generate(m, p, 20, block_size=8, temperature=0)
    assert torch.equal(generate(m, p, 20, block_size=8, top_k=1, seed=5), greedy)
    assert torch.equal(generate(m, p, 20, block_size=8, top_k=1, seed=6), greedy)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tokens": -1}, "tokens"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 0}, "top_k"),
])
def test_bad_sampling_settings(kwargs, message):
    args = {"tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(_tiny_gpt(), torch.tensor([1]), args.pop("tokens"), block_size=8, **args)


def test_unknown_prompt_character_is_a_clear_error():
    with pytest.raises(VocabularyError, match="'z'"):
        sample_text(_tiny_gpt(), lm_app("gpt-16-2", "abcdefghijk", 8), "abz", 5)


def test_text_in_the_dataset_registry(tmp_path):
    from pemn.training.data import dataset_info, list_datasets, load_dataset

    assert "text" in list_datasets()
    info = dataset_info("text", _write(tmp_path, TEXT))
    assert info.num_classes == len(set(TEXT)) and info.files == ("input.txt",)
    with pytest.raises(DatasetError, match="load_text"):
        load_dataset("text", tmp_path)
    with pytest.raises(DatasetError, match=r"no input\.txt"):
        dataset_info("text", tmp_path / "nowhere")


# ------------------------------------------------------------------------------------- pemn train on text


TRAIN_CASES = [
    ("dense", {"strategy": "dense"}, "model.safetensors"),
    ("mask", {"strategy": "mask"}, "model.pemn"),
    ("one_layer", {"strategy": "one_layer"}, "model.pemn"),
    ("rp-entropy", {"strategy": "rp", "ratio": 1e-2, "keep": 0.2, "coding": "entropy"}, "model.pemn"),
    ("pruned", {"strategy": "dense", "prune": "magnitude", "compression": 0.9}, "model.sparse.safetensors"),
]


@pytest.mark.parametrize(("label", "overrides", "filename"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_text_writes_lm_metrics_and_a_self_sufficient_file(tmp_path, label, overrides, filename):
    import json

    from pemn.training.engine import train

    result = train(quick_text_config(tmp_path, **overrides), log=lambda _: None)
    out = tmp_path / "run"
    # 302 training characters / (4 x 8) = 9 steps per epoch: --steps 12 is one epoch and a partial one of 3
    assert result.epochs_run == 2 and result.steps_run == 12
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [9, 12]
    assert rows[-1]["lr"] == 0.0  # the cosine schedule ran over the 12 steps
    for r in rows:
        assert math.isclose(r["bits_per_char"], r["val_loss"] / math.log(2))
    saved = json.loads((out / "result.json").read_text())
    assert saved["val_loss"] == rows[-1]["val_loss"] == result.val_loss
    assert saved["artifact_val_loss"] == result.val_loss  # the file reproduces the last evaluation exactly
    assert math.isclose(saved["bits_per_char"], saved["val_loss"] / math.log(2))
    path = out / filename
    model, app = build_lm(path)
    assert app["vocab"] == "".join(sorted(set(TEXT))) and app["block_size"] == 8 and app["model"] == "gpt-16-2"
    corpus = load_text(tmp_path / "data", 8)
    assert evaluate_lm(model, corpus.val, 8)["val_loss"] == result.val_loss


def test_train_text_learns(tmp_path):
    from pemn.training.engine import train

    result = train(quick_text_config(tmp_path, strategy="dense", steps=150, lr=1e-2), log=lambda _: None)
    assert result.val_loss < math.log(len(set(TEXT))) - 1.0  # well below the uniform guess


@pytest.mark.parametrize("stop_at", [5, 10])  # mid first epoch, and inside the partial last epoch
def test_text_resume_is_exact(tmp_path, stop_at):
    import json

    from pemn.training.engine import TrainingInterrupted, train

    whole = train(quick_text_config(tmp_path, "whole", strategy="rp", ratio=0.1), log=lambda _: None)
    cfg = quick_text_config(tmp_path, "parts", strategy="rp", ratio=0.1)
    with pytest.raises(TrainingInterrupted):
        train(cfg, log=lambda _: None, stop_after_step=stop_at)
    cfg.resume = True
    resumed = train(cfg, log=lambda _: None)
    assert resumed.state_sha256 == whole.state_sha256
    assert resumed.val_loss == whole.val_loss and resumed.steps_run == 12

    def strip(p):
        rows = [json.loads(line) for line in p.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("seconds", "chars_per_s")} for r in rows]

    assert strip(tmp_path / "parts" / "metrics.jsonl") == strip(tmp_path / "whole" / "metrics.jsonl")
    # (the files' bytes may differ: safetensors writes its metadata map in no fixed order)
    parts, whole = (pemn.artifact.read(tmp_path / d / "model.pemn") for d in ("parts", "whole"))
    assert parts.app == whole.app and parts.metadata == whole.metadata and parts.file_bytes == whole.file_bytes
    assert all(torch.equal(parts.tensors[k], whole.tensors[k]) for k in whole.tensors)


def test_resuming_a_finished_text_run_writes_its_outputs_again(tmp_path):
    """`pemn train --resume` of a finished language-model run (what a re-run sweep does to a run whose row is
    missing) once crashed with KeyError 'val_loss': no evaluation had run in that process."""
    from pemn.training.engine import train

    cfg = quick_text_config(tmp_path, strategy="dense", quantize="binary")
    first = train(cfg, log=lambda _: None)
    cfg.resume = True
    again = train(cfg, log=lambda _: None)
    assert again.val_loss == first.val_loss and again.artifact_val_loss == first.val_loss
    assert again.bits_per_char == first.bits_per_char and again.steps_run == 12


def test_steps_on_an_image_dataset(tmp_path):
    from pemn.training.engine import train

    # digits: 1438 training images, batch 128 -> 12 steps per epoch; 15 steps = one epoch and 3 steps
    cfg = quick_config(strategy="rp", steps=15, out=tmp_path / "run")
    result = train(cfg, log=lambda _: None)
    assert result.epochs_run == 2 and result.steps_run == 15
    import json

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [12, 15] and rows[-1]["lr"] == 0.0
    assert result.val_loss is None


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model": "tiny-mlp"}, "choose a gpt-<dim>-<depth> model"),
    ({"dataset": "digits"}, "is a language model"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"block_size": 0}, "block_size must be >= 1"),
])
def test_text_config_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        quick_text_config(tmp_path, **overrides)


def test_block_size_only_for_text():
    from pemn.training.config import resolve_config

    with pytest.raises(ValueError, match="applies only to dataset 'text'"):
        resolve_config({"model": "tiny-mlp", "dataset": "digits", "block_size": 32})


def test_text_too_short_for_the_context_is_a_clear_cli_error(tmp_path, capsys):
    from pemn.training.cli import main

    _write(tmp_path, "abc" * 30)
    rc = main(["train", "--dataset", "text", "--data-dir", str(tmp_path), "--model", "gpt-16-1", "--steps", "2",
               "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 4 and err.startswith("pemn: error: text:") and "--block-size" in err and "Traceback" not in err


def test_cli_train_eval_sample_end_to_end(tmp_path, capsys):
    import json

    from pemn.training.cli import main

    data = tmp_path / "data"
    data.mkdir()
    _write(data, TEXT)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "text", "--data-dir", str(data), "--model", "gpt-16-2", "--block-size", "8",
               "--steps", "12", "--batch-size", "4", "--recipe", "nanogpt", "--strategy", "rp", "--ratio", "0.1",
               "--out", str(out), "--no-progress", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and "val loss" in text and "bits/char" in text
    saved = json.loads((out / "result.json").read_text())
    art = str(out / "model.pemn")
    # eval: nothing but the text folder (and even that comes from config.json when left out)
    assert main(["eval", art, "--dataset", "text", "--data-dir", str(data), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["val_loss"] == saved["val_loss"] and got["bits_per_char"] == saved["bits_per_char"]
    assert main(["eval", art]) == 0
    assert f"validation loss {saved['val_loss']:.4f}" in capsys.readouterr().out
    # sample: deterministic under a seed
    args = ["sample", art, "--prompt", "First", "--tokens", "30", "--temperature", "0.8", "--top-k", "5"]
    assert main([*args, "--seed", "3"]) == 0
    a = capsys.readouterr().out
    assert main([*args, "--seed", "3"]) == 0
    assert capsys.readouterr().out == a and a.startswith("First") and len(a.rstrip("\n")) >= 35 - 1
    assert main([*args, "--seed", "4"]) == 0
    assert capsys.readouterr().out != a
    # unknown prompt character: one clear line
    assert main(["sample", art, "--prompt", "First@"]) == 4  # the data: a character the model never saw
    err = capsys.readouterr().err
    assert err.startswith("pemn: error: character '@'") and "Traceback" not in err
    # a file that is no language model
    plain = tmp_path / "plain.pemn"
    pemn.save(pemn.convert_(nn.Sequential(nn.Linear(4, 3)), pemn.PEMNConfig()), plain)
    assert main(["sample", str(plain)]) == 3  # a model file that cannot be used
    assert "no language model" in capsys.readouterr().err


LM_DDP_CHILD = """
import json, os, sys
from pemn.training.config import resolve_config
from pemn.training.engine import train

cfg = resolve_config({"model": "gpt-16-2", "dataset": "text", "data_dir": sys.argv[1], "block_size": 8,
                      "batch_size": 4, "steps": 12, "strategy": "rp", "ratio": 0.1, "device": "cpu",
                      "progress": False, "out": sys.argv[2]}, recipe="nanogpt")
result = train(cfg, log=lambda line: print(line, flush=True))
with open(os.path.join(sys.argv[3], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"state": result.state_sha256, "val_loss": result.val_loss}, f)
"""


@pytest.mark.slow
def test_text_under_torchrun(tmp_path):
    """Two gloo ranks: each takes its rows of the same global batch; masks agree; one writer."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    data = tmp_path / "data"
    data.mkdir()
    _write(data, TEXT)
    script = tmp_path / "child.py"
    script.write_text(LM_DDP_CHILD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", str(script), str(data), str(tmp_path / "run"), str(tmp_path)],
        capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["state"] == ranks[1]["state"]
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"] is not None
    assert proc.stdout.count("pemn train:") == 1
    single = __import__("pemn.training.engine", fromlist=["train"]).train(
        quick_text_config(tmp_path, "single", strategy="rp", ratio=0.1), log=lambda _: None)
    # the same global batches: the sharded run tracks the single-process one (reduction order aside)
    assert abs(single.val_loss - ranks[0]["val_loss"]) < 1e-2
