"""Sampling text from a character-level language model (``pemn sample``), and the metadata that makes an
artifact self-sufficient for it.

:func:`generate` is autoregressive sampling as in nanoGPT's ``generate``: the context is cropped to the last
``block_size`` tokens, the last position's logits are divided by ``temperature``, optionally cut to the
``top_k`` largest (others get ``-inf``), and one token is drawn from the softmax with ``torch.multinomial``
and a private CPU generator seeded by ``seed``, so the same model, prompt and settings always give the same
text and torch's global generator is not touched. ``temperature=0`` means greedy decoding (argmax).

A trained language model carries :func:`lm_app` in its file (``pemn.save(..., app=...)``, or the
``pemn_app`` metadata of a dense ``model.safetensors``): the registry model name, the vocabulary and the
block size. :func:`read_app` reads it back from any of pemn's files and :func:`build_lm` rebuilds the model;
:func:`sample_file` is ``pemn sample``: a file's model continuing a prompt.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemn.errors import FormatError
from pemn.training import artifacts
from pemn.training.dist import device_option
from pemn.training.errors import OptionError
from pemn.training.text import decode, encode, evaluate_lm, load_text

__all__ = ["APP_KIND", "build_lm", "evaluate_lm_file", "generate", "lm_app", "read_app", "sample_file",
           "sample_text"]

#: ``app["kind"]`` of a character-level language model.
APP_KIND = "char-lm"
#: Metadata key of the app object in plain safetensors files (dense and pruned models).
SAFETENSORS_APP_KEY = artifacts.APP_KEY


def lm_app(model_name: str, vocab: str, block_size: int) -> dict[str, Any]:
    """What rebuilds a character-level LM and its tokenizer: stored in the model file."""
    return {"kind": APP_KIND, "model": model_name, "vocab": vocab, "block_size": int(block_size)}


def _check_app(app: Any, path: Path) -> dict[str, Any]:
    if not isinstance(app, dict) or app.get("kind") != APP_KIND:
        raise FormatError(f"{path}: this file holds no language model (no vocabulary / block size in its metadata); "
                          "only models trained with --dataset text can be sampled or evaluated on text")
    vocab, block, model = app.get("vocab"), app.get("block_size"), app.get("model")
    if not (isinstance(vocab, str) and vocab and len(set(vocab)) == len(vocab)):
        raise FormatError(f"{path}: corrupt language-model metadata (vocab)")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1 or not isinstance(model, str):
        raise FormatError(f"{path}: corrupt language-model metadata (model / block_size)")
    return app


def read_app(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The language-model metadata of a ``.pemn`` artifact, dense ``model.safetensors`` or pruned
    ``model.sparse.safetensors`` (:func:`pemn.training.artifacts.read_app`, checked to be a language model's);
    FormatError if the file has none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such artifact file: {str(path)!r}")
    return _check_app(artifacts.read_app(path), path)


def build_lm(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """The language model stored at ``path`` (any of pemn's files), in eval mode, and its metadata."""
    app = read_app(path)
    model, _, _ = artifacts.load_model(path)
    return model, app


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, tokens: int, *, block_size: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0) -> torch.Tensor:
    """``prompt`` (1-D int64 ids, at least one) followed by ``tokens`` sampled ids; see the module doc."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an int >= 0, got {tokens!r}")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int (or unset), got {top_k!r}")
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError("the prompt must hold at least one character")
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    was_training = model.training
    model.eval()
    ids = prompt.to(device=device, dtype=torch.int64).view(1, -1)
    try:
        for _ in range(tokens):
            logits = model(ids[:, -block_size:])[0, -1].float().cpu()
            if temperature == 0:
                nxt = logits.argmax().view(1)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.numel():
                    kth = torch.topk(logits, top_k).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g)
            ids = torch.cat([ids, nxt.to(device).view(1, 1)], dim=1)
    finally:
        model.train(was_training)
    return ids[0].cpu()


def sample_text(model: nn.Module, app: dict[str, Any], prompt: str, tokens: int, *, temperature: float = 1.0,
                top_k: int | None = None, seed: int = 0) -> str:
    """The prompt and ``tokens`` sampled characters (VocabularyError for a prompt character the model lacks)."""
    vocab = app["vocab"]
    ids = generate(model, encode(prompt, vocab), tokens, block_size=app["block_size"], temperature=temperature,
                   top_k=top_k, seed=seed)
    return decode(ids, vocab)


def sample_file(artifact: str, prompt: str, *, tokens: int, temperature: float = 1.0, top_k: int | None = None,
                seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """``pemn sample``: the language model of the file at ``artifact`` (on ``device``, a ``--device`` spec)
    continues ``prompt`` by ``tokens`` characters (:func:`sample_text`). Returns ``--json``'s object: ``artifact``,
    ``model``, ``prompt``, ``tokens``, ``temperature``, ``top_k``, ``seed`` and ``text`` (the prompt and what
    followed). :class:`~pemn.training.errors.OptionError` for a transformers model's file or settings out of
    range; FormatError for a file that holds no language model."""
    _, app = artifacts.file_kind_and_app(artifact)
    if (app or {}).get("kind") == "transformers":
        raise OptionError(f"{artifact} holds a transformers {app['model']}; pemn sample writes with pemn's "
                          "character-level GPTs. Generate in Python: model = pemn.load(FILE) rebuilds it (no code "
                          "needed), then use transformers' model.generate with its tokenizer")
    if tokens < 0:
        raise OptionError(f"--tokens must be >= 0, got {tokens}")
    if temperature < 0 or temperature != temperature:
        raise OptionError(f"--temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise OptionError(f"--top-k must be >= 1, got {top_k}")
    if not prompt:
        raise OptionError("--prompt must hold at least one character")
    model, lm = build_lm(artifact)
    model.to(device_option(device))
    text = sample_text(model, lm, prompt, tokens, temperature=temperature, top_k=top_k, seed=seed)
    return {"artifact": str(artifact), "model": lm["model"], "prompt": prompt, "tokens": tokens,
            "temperature": temperature, "top_k": top_k, "seed": seed, "text": text}


def evaluate_lm_file(path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None, *,
                     eval_subset: int | None = None, batch_size: int, device: torch.device
                     ) -> tuple[dict[str, float], dict[str, Any], Path]:
    """``pemn eval`` of a language model file: its loss and next-character accuracy on the validation split of
    the text at ``data_dir`` (the first ``eval_subset`` predicted characters), everything but the text from the
    file (a text of another vocabulary is re-encoded into the model's). Returns
    ``(metrics, app, text file)``: :func:`pemn.training.text.evaluate_lm`'s metrics, the file's app metadata
    (:func:`read_app`) and the text file read."""
    model, app = build_lm(path)
    corpus = load_text(data_dir, app["block_size"])
    val = corpus.val if eval_subset is None else corpus.val[:eval_subset + 1]  # N predicted characters
    val = val if corpus.vocab == app["vocab"] else encode(decode(val, corpus.vocab), app["vocab"])
    m = evaluate_lm(model.to(device), val, app["block_size"], batch_size=batch_size, device=device)
    return m, app, Path(corpus.path)
