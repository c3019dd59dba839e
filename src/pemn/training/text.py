"""The ``text`` dataset: character-level language modelling on one UTF-8 file (nanoGPT's ``shakespeare_char``).

``DIR/input.txt`` is read as UTF-8 (strictly: an invalid byte is an error, not a replacement character). The
vocabulary is the sorted set of distinct characters of the whole file; a character's id is its index in that
string. The first 90 % of the characters (``int(0.9 * len(text))``) are the training split, the rest the
validation split, exactly as nanoGPT's ``data/shakespeare_char/prepare.py``.

Training batches are random windows of the training split: for batch row ``b`` a start ``s`` drawn uniformly
from ``[0, len(train) - block_size - 1]``, input ``train[s:s+T]`` and target ``train[s+1:s+T+1]``. The starts
of a whole (global) batch come from one generator seeded by the caller, so a step's batch never depends on
what ran before it (resume is exact) nor on the world size (each rank takes its rows of the same batch).

Validation (:func:`evaluate_lm`) is deterministic and covers the whole split once: it is cut into consecutive
windows of ``block_size`` characters (the last one shorter), and every character after the first is predicted
from the characters before it in its window (0 to ``block_size - 1`` of them). The loss is the mean natural-log
loss per predicted character (nats/char); ``bits_per_char = val_loss / ln 2``. Averaged over positions, this
is the quantity nanoGPT's ``estimate_loss`` estimates from random windows.

Every problem with the file is a :class:`pemn.errors.DatasetError`; an unknown character in text given to
:func:`encode` is a :class:`VocabularyError`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pemn.errors import PEMNError
from pemn.training.errors import DatasetError

__all__ = [
    "TEXT_FILE",
    "TRAIN_FRACTION",
    "TextCorpus",
    "VocabularyError",
    "decode",
    "encode",
    "evaluate_lm",
    "lm_metrics",
    "lm_window_losses",
    "load_text",
    "random_windows",
    "read_text",
    "text_path",
]

#: The file the ``text`` dataset reads inside ``--data-dir``.
TEXT_FILE = "input.txt"
#: Fraction of the characters that form the training split (the rest is validation).
TRAIN_FRACTION = 0.9


class VocabularyError(PEMNError, ValueError):
    """Text holds a character the model's vocabulary does not have."""


@dataclass(frozen=True)
class TextCorpus:
    """A character-level corpus: ``vocab`` (the sorted distinct characters) and both splits as int64 ids."""

    path: Path
    vocab: str
    train: torch.Tensor
    val: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def text_path(data_dir: str | os.PathLike[str] | None) -> Path:
    """``DIR/input.txt`` (``DIR`` defaults to ``$PEMN_DATA_DIR`` or ``./data``); ``DIR`` may also be the file."""
    root = Path(data_dir if data_dir is not None else os.environ.get("PEMN_DATA_DIR", "data"))
    return root if root.is_file() else root / TEXT_FILE


def read_text(data_dir: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The text of ``DIR/input.txt``; DatasetError if it is missing, unreadable, empty or not UTF-8."""
    path = text_path(data_dir)
    if not path.is_file():
        raise DatasetError(f"text: no {TEXT_FILE} at {str(path)!r}; put a UTF-8 text file there (for Tiny "
                           f"Shakespeare, char-rnn's data/tinyshakespeare/input.txt) and pass --data-dir DIR")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"text: cannot read {str(path)!r}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"text: {str(path)!r} is not UTF-8 text (invalid byte {raw[e.start]:#04x} at offset "
                           f"{e.start}); convert it to UTF-8 first") from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark is not part of the text
    if not text:
        raise DatasetError(f"text: {str(path)!r} is empty; it needs at least a few context lengths of text")
    return path, text


def encode(text: str, vocab: str) -> torch.Tensor:
    """Character ids (int64) of ``text`` in ``vocab``; VocabularyError naming the first unknown character."""
    index = {c: i for i, c in enumerate(vocab)}
    try:
        return torch.tensor([index[c] for c in text], dtype=torch.int64)
    except KeyError as e:
        c = e.args[0]
        raise VocabularyError(f"character {c!r} (U+{ord(c):04X}) at position {text.index(c)} is not in the "
                              f"model's {len(vocab)}-character vocabulary; use only characters of its training "
                              f"text") from None


def decode(ids: torch.Tensor | list[int], vocab: str) -> str:
    """The text of character ids."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return "".join(vocab[i] for i in values)


def load_text(data_dir: str | os.PathLike[str] | None, block_size: int) -> TextCorpus:
    """Read, check and split ``DIR/input.txt`` (see the module doc).

    Both splits must hold more than ``block_size`` characters (one full input window plus its target);
    otherwise a DatasetError says how long the text must be.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise DatasetError(f"text: block_size must be a positive int, got {block_size!r}")
    path, text = read_text(data_dir)
    n_train = int(TRAIN_FRACTION * len(text))
    n_val = len(text) - n_train
    if min(n_train, n_val) <= block_size:
        need = block_size + 2
        while min(int(TRAIN_FRACTION * need), need - int(TRAIN_FRACTION * need)) <= block_size:
            need += 1
        raise DatasetError(f"text: {str(path)!r} has {len(text):,} characters ({n_train:,} train / {n_val:,} "
                           f"validation); each split needs more than one context ({block_size} characters), so "
                           f"the file needs at least {need:,} characters (or use a smaller --block-size)")
    vocab = "".join(sorted(set(text)))
    ids = encode(text, vocab)
    return TextCorpus(path, vocab, ids[:n_train].clone(), ids[n_train:].clone())


def random_windows(data: torch.Tensor, block_size: int, batch_size: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``data``: inputs and next-character targets, both ``(B, block_size)``."""
    if data.numel() <= block_size:
        raise DatasetError(f"text: {data.numel()} characters is too short for a context of {block_size}")
    starts = torch.randint(0, data.numel() - block_size, (batch_size,), generator=generator, device="cpu")
    offsets = torch.arange(block_size + 1)
    windows = data.cpu()[starts[:, None] + offsets]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def _eval_windows(data: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The validation split cut into consecutive windows: inputs, targets and a validity mask, ``(W, T)``."""
    n = data.numel() - 1  # predicted characters
    count = -(-n // block_size)
    x = torch.zeros(count * block_size, dtype=torch.int64)
    y = torch.zeros(count * block_size, dtype=torch.int64)
    valid = torch.zeros(count * block_size, dtype=torch.bool)
    x[:n], y[:n], valid[:n] = data[:-1], data[1:], True
    return x.view(count, block_size), y.view(count, block_size), valid.view(count, block_size)


def lm_window_losses(model: nn.Module, data: torch.Tensor, block_size: int, *, batch_size: int,
                     device: torch.device, rank: int = 0, world: int = 1,
                     autocast: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
                     ) -> tuple[float, int, int]:
    """``(sum of nats, correct top-1 predictions, predicted characters)`` over this rank's validation windows.

    Windows ``rank, rank + world, ...`` of the split; the sums of all ranks cover every character once.
    The padded tail of the last window is never fed to the loss: a causal model's predictions for the real
    positions do not depend on it.
    """
    x, y, valid = _eval_windows(data.cpu(), block_size)
    x, y, valid = x[rank::world], y[rank::world], valid[rank::world]
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                xb = x[i:i + batch_size].to(device)
                yb = y[i:i + batch_size].to(device)
                vb = valid[i:i + batch_size].to(device)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    logits = model(xb)
                logits = logits.float()[vb]
                target = yb[vb]
                total += F.cross_entropy(logits, target, reduction="sum").double()
                correct += (logits.argmax(-1) == target).sum()
    finally:
        model.train(was_training)
    return float(total), int(correct), int(valid.sum())


def evaluate_lm(model: nn.Module, data: torch.Tensor, block_size: int, *, batch_size: int = 64,
                device: str | torch.device | None = None) -> dict[str, float]:
    """Validation metrics of a language model on ``data`` (ids): ``val_loss`` (nats/char), ``bits_per_char``,
    ``val_acc`` (top-1 next-character accuracy, %) and ``characters`` (how many were predicted)."""
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    nats, correct, count = lm_window_losses(model, data, block_size, batch_size=batch_size,
                                            device=torch.device(device))
    return lm_metrics(nats, correct, count)


def lm_metrics(nats: float, correct: float, count: float) -> dict[str, float]:
    """``val_loss``, ``bits_per_char``, ``val_acc`` and ``characters`` from summed window losses."""
    loss = nats / count if count else float("nan")
    return {"val_loss": loss, "bits_per_char": loss / math.log(2), "val_acc": 100.0 * correct / count if count
            else 0.0, "characters": int(count)}
