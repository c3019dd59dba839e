"""Lossless coding of boolean masks into bytes, for the pemn file format.

Two codings are offered:

* **packed** (:func:`pack_bits` / :func:`unpack_bits`): 1 bit per element. Trivial, fast, and
  readable by anything that has ``np.unpackbits``.
* **entropy** (:func:`encode_entropy` / :func:`decode_entropy`): an order-0 range code with a fixed
  Bernoulli model whose probability of a 1 is ``kept / count``. A mask that keeps a fraction ``p`` of
  its elements costs about ``count * H(p)`` bits instead of ``count`` bits (0.47 bits/element at
  ``p = 0.1``). The model needs no side information because ``count`` and ``kept`` are stored in
  the artifact's header anyway.
* **context** (:func:`encode_context` / :func:`decode_context`): per mask, the smallest of three models
  (:data:`CONTEXT_MODELS`), its name stored beside the payload. ``"order0"`` is the entropy coding's
  payload itself. The others view the mask as ``rows`` rows (a weight's output units) of ``count / rows``
  entries and first code each row's kept count (uniform over ``0..cols``): ``"rows"`` codes each row with
  its own kept fraction as the probability of a 1; ``"rows-cols"`` multiplies that probability's odds by
  the odds of the column's kept fraction in the rows before it (shrunk towards the layer's fraction) over
  the layer's odds. A trained mask whose units keep unequal shares (a classifier's inputs and outputs)
  codes 10-20 % below H(p) this way; masks without that structure (ConvMixer, a GPT) stay at order 0, so
  a context-coded mask is never larger than an entropy-coded one. The encoder compares the row models' ideal
  code lengths first and runs the range coder only for the shorter one. The probabilities are computed with
  ``+ - * /`` only (correctly rounded IEEE operations), so every platform builds the same model.

Both layouts are part of the on-disk format; changing either one is a format break. Decoders treat
their input as untrusted: anything malformed raises :class:`~pemn.errors.FormatError` (a
``ValueError``), never another exception and never a silently wrong mask.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator

import constriction
import numpy as np

from pemn.errors import FormatError

__all__ = [
    "CONTEXT_MODELS",
    "decode_context",
    "decode_entropy",
    "encode_context",
    "encode_entropy",
    "entropy_bits",
    "pack_bits",
    "packed_size",
    "unpack_bits",
]

# Symbols go through constriction as int32 (the only symbol dtype it accepts), so a 100M-element mask
# would need a 400 MB temporary. Coding in chunks of this many symbols into one continuous stream
# bounds that to 16 MB; the stream is identical to a one-shot encode.
_CHUNK = 1 << 22

#: the models of the context coding, in the order the encoder prefers them at equal size (part of the format)
CONTEXT_MODELS = ("order0", "rows", "rows-cols")
# rows-cols: the column's kept fraction in the rows before it counts as ``_PRIOR_ROWS`` rows at the layer's fraction
_PRIOR_ROWS = 4.0
# the row models code each row's kept count uniformly over 0..cols, which constriction's 24-bit models allow up to
# 2**24 - 1 columns; rows longer than this stay at order 0
_MAX_COLS = 1 << 20
# a row model must save more than this over order 0: about what its name costs in a file's compressed index
_NAMING_BYTES = 16

# Compressed words are stored little-endian so the format does not depend on the host's byte order.
_WORD = np.dtype("<u4")


def packed_size(count: int) -> int:
    """Bytes :func:`pack_bits` produces for ``count`` elements: ``ceil(count / 8)``."""
    count = _check_count(count)
    return (count + 7) // 8


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """Pack a boolean mask into bytes, 8 elements per byte.

    Bit order (part of the file format): element ``i`` of the flattened (C-order) mask is bit
    ``i % 8`` of byte ``i // 8``, least-significant bit first -- ``np.packbits(bitorder="little")``.
    Padding bits in the last byte are zero. Returns a 1-D ``uint8`` array of ``ceil(n / 8)`` bytes.
    """
    flat = _as_flat_bool(mask)
    return np.packbits(flat, bitorder="little")


def unpack_bits(data: np.ndarray | bytes, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``count`` bits of ``data`` as a 1-D bool array.

    ``data`` must be exactly ``ceil(count / 8)`` bytes with zero padding bits, so every mask has
    exactly one valid encoding; anything else raises :class:`FormatError`.
    """
    count = _check_count(count)
    buf = _as_byte_array(data)
    expected = (count + 7) // 8
    if buf.size != expected:
        raise FormatError(f"packed mask of {count} elements needs {expected} bytes, got {buf.size}")
    tail = count % 8
    if tail and int(buf[-1]) >> tail:
        raise FormatError(
            f"packed mask of {count} elements has non-zero padding bits in its last byte "
            f"(0x{int(buf[-1]):02x}, only the low {tail} bits may be set)"
        )
    return np.unpackbits(buf, count=count, bitorder="little").view(np.bool_)


def entropy_bits(count: int, kept: int) -> float:
    """Ideal size in bits of a ``count``-element mask with ``kept`` ones: ``count * H(kept / count)``.

    This is the order-0 lower bound that :func:`encode_entropy` approaches; use it for reporting.
    """
    count, kept = _check_count_kept(count, kept, ValueError)
    if kept in (0, count):
        return 0.0
    p = kept / count
    return count * -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


def encode_entropy(mask: np.ndarray, kept: int) -> np.ndarray:
    """Range-code a boolean mask with a Bernoulli(``kept / count``) model; returns ``uint8`` bytes.

    ``kept`` must equal the number of ``True`` elements (it is stored in the header, so the
    decoder knows the model). An all-False or all-True mask encodes to zero bytes. Otherwise the
    payload is constriction's ``RangeEncoder`` output (32-bit words) stored little-endian, about
    ``entropy_bits(count, kept) / 8`` bytes rounded up to whole words.
    """
    flat = _as_flat_bool(mask)
    count = flat.size
    kept = _index(kept, "kept")
    actual = int(np.count_nonzero(flat))
    if kept != actual:
        raise ValueError(f"kept={kept} but the mask has {actual} True elements")
    if kept in (0, count):
        return np.empty(0, dtype=np.uint8)
    model = _model(count, kept)
    encoder = constriction.stream.queue.RangeEncoder()
    buf = np.empty(min(count, _CHUNK), dtype=np.int32)
    for start in range(0, count, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        symbols = buf[: chunk.size]
        np.copyto(symbols, chunk, casting="unsafe")
        encoder.encode(symbols, model)
    return _words_to_bytes(encoder.get_compressed())


def decode_entropy(data: np.ndarray | bytes, count: int, kept: int) -> np.ndarray:
    """Inverse of :func:`encode_entropy`: decode a ``count``-element mask with ``kept`` ones.

    ``count`` and ``kept`` come from the artifact's header and select the model. The input is
    untrusted, so the result is checked before it is returned: its popcount must equal ``kept``,
    and ``data`` must be exactly the encoder's output for that mask (re-encoded on the fly while
    decoding, which costs about a third of the decode time). This rejects truncated data, trailing
    words and data decoded with a mismatched header, which a range decoder alone cannot always
    detect. Any failure, including any error raised inside constriction, raises :class:`FormatError`.
    """
    count, kept = _check_count_kept(count, kept, FormatError)
    buf = _as_byte_array(data)
    if kept in (0, count):
        if buf.size:
            raise FormatError(
                f"entropy-coded mask with kept={kept} of count={count} must have an empty payload, "
                f"got {buf.size} bytes"
            )
        return np.full(count, kept == count, dtype=np.bool_)
    if buf.size == 0 or buf.size % _WORD.itemsize:
        raise FormatError(
            f"entropy-coded payload must be a non-empty multiple of {_WORD.itemsize} bytes, "
            f"got {buf.size} bytes"
        )
    words = np.ascontiguousarray(buf).view(_WORD).astype(np.uint32)
    model = _model(count, kept)
    out = np.empty(count, dtype=np.bool_)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        check = constriction.stream.queue.RangeEncoder()
        for start in range(0, count, _CHUNK):
            n = min(_CHUNK, count - start)
            symbols = decoder.decode(model, n)
            check.encode(symbols, model)
            out[start : start + n] = symbols
        reencoded = check.get_compressed()
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as exc:  # AssertionError on bad data; a Rust panic arrives as a BaseException
        raise FormatError(f"entropy-coded mask is corrupt: constriction rejected it: {exc!r}") from exc
    actual = int(np.count_nonzero(out))
    if actual != kept:
        raise FormatError(f"entropy-coded mask decodes to {actual} ones, header says kept={kept}")
    if reencoded.size != words.size or not np.array_equal(reencoded, words):
        raise FormatError(
            f"entropy-coded mask is corrupt: payload has {words.size} words but its decoded mask "
            f"encodes to {reencoded.size} words"
            + ("" if reencoded.size != words.size else " with different content")
        )
    return out


def encode_context(mask: np.ndarray, kept: int, rows: int, model: str | None = None) -> tuple[np.ndarray, str]:
    """Code a boolean mask of ``rows`` rows (its weight's first dimension) with the smallest of the context
    models, or with ``model`` when given; returns ``(payload bytes, model name)``. The name must be stored with
    the payload: :func:`decode_context` needs it. Of the two row models the one with the shorter ideal code
    (its code lengths, computed without coding) is coded, and kept if it saves more than ``_NAMING_BYTES`` (16)
    over order 0: what naming it in a file's index may cost, so a context-coded file is not larger for it.
    ``kept`` must equal the mask's number of ``True`` elements, as for :func:`encode_entropy`."""
    flat = _as_flat_bool(mask)
    count, kept, rows = _check_rows(flat.size, _index(kept, "kept"), rows, ValueError)
    if model is not None and model not in CONTEXT_MODELS:
        raise ValueError(f"model must be one of {CONTEXT_MODELS} or None, got {model!r}")
    order0 = encode_entropy(flat, kept)  # also checks kept against the mask
    if model == "order0":
        return order0, model
    if not _rows_apply(count, kept, rows):
        if model is None:
            return order0, "order0"
        raise ValueError(f"context model {model!r} does not apply to a mask of {count} elements in {rows} rows "
                         f"keeping {kept} (it needs 0 < kept < count and 2..{_MAX_COLS:,}-element rows)")
    if model is not None:
        return _encode_rows(flat, kept, rows, mix=model == "rows-cols"), model
    # the row model with the shorter ideal code (cheap: no range coder), coded only if that could beat order 0
    bits = {name: _row_model_bits(flat, kept, rows, mix=name == "rows-cols") for name in CONTEXT_MODELS[1:]}
    name = min(bits, key=lambda n: bits[n])
    if bits[name] / 8 + _NAMING_BYTES >= order0.size:
        return order0, "order0"
    data = _encode_rows(flat, kept, rows, mix=name == "rows-cols")
    return (data, name) if data.size + _NAMING_BYTES < order0.size else (order0, "order0")


def decode_context(data: np.ndarray | bytes, count: int, kept: int, rows: int, model: str) -> np.ndarray:
    """Inverse of :func:`encode_context`: the ``count``-element mask with ``kept`` ones that ``model`` coded.

    Untrusted input, checked as :func:`decode_entropy` checks it: the row counts must add up to ``kept`` and
    each decoded row must hold its count, and ``data`` must be exactly what the encoder writes for the decoded
    mask (re-encoded and compared); anything else raises :class:`FormatError`."""
    if model not in CONTEXT_MODELS:
        raise FormatError(f"unknown context model {model!r} (known: {', '.join(CONTEXT_MODELS)})")
    count, kept = _check_count_kept(count, kept, FormatError)
    count, kept, rows = _check_rows(count, kept, rows, FormatError)
    if model == "order0":
        return decode_entropy(data, count, kept)
    if not _rows_apply(count, kept, rows):
        raise FormatError(f"context model {model!r} is not used for a mask of {count} elements in {rows} rows "
                          f"keeping {kept}")
    buf = _as_byte_array(data)
    if buf.size == 0 or buf.size % _WORD.itemsize:
        raise FormatError(f"context-coded payload must be a non-empty multiple of {_WORD.itemsize} bytes, "
                          f"got {buf.size} bytes")
    words = np.ascontiguousarray(buf).view(_WORD).astype(np.uint32)
    mix = model == "rows-cols"
    cols = count // rows
    out = np.zeros((rows, cols), dtype=np.bool_)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        counts = decoder.decode(constriction.stream.model.Uniform(cols + 1), rows).astype(np.int64)
        if int(counts.sum()) != kept:
            raise FormatError(f"context-coded mask's row counts add up to {int(counts.sum())}, header says "
                              f"kept={kept}")
        family = constriction.stream.model.Bernoulli(perfect=True)
        out[counts == cols] = True
        if mix:  # a row's probabilities need the rows before it: one row at a time
            g = kept / count
            column_kept = np.zeros(cols, dtype=np.float64)
            for r in range(rows):
                k = int(counts[r])
                if 0 < k < cols:
                    out[r] = decoder.decode(family, _row_probabilities(k / cols, column_kept, r, g))
                column_kept += out[r]
        else:  # every probability is known from the counts: a block of rows at a time, as the encoder wrote them
            step = max(1, _CHUNK // cols)
            for start in range(0, rows, step):
                block = counts[start:start + step]
                coded = np.flatnonzero((block > 0) & (block < cols)) + start
                if coded.size:
                    p = _row_fractions(counts[coded], cols).reshape(-1)
                    out[coded] = decoder.decode(family, p).reshape(coded.size, cols)
        decoded = np.count_nonzero(out, axis=1)
        if not np.array_equal(decoded, counts):
            r = int(np.flatnonzero(decoded != counts)[0])
            raise FormatError(f"context-coded mask's row {r} decodes to {int(decoded[r])} ones, its count says "
                              f"{int(counts[r])}")
    except FormatError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as exc:  # AssertionError on bad data; a Rust panic arrives as a BaseException
        raise FormatError(f"context-coded mask is corrupt: constriction rejected it: {exc!r}") from exc
    flat = out.reshape(-1)
    reencoded = _encode_rows(flat, kept, rows, mix=mix)
    if reencoded.size != buf.size or not np.array_equal(reencoded, buf):
        raise FormatError(f"context-coded mask is corrupt: payload has {buf.size} bytes but its decoded mask "
                          f"encodes to {reencoded.size} bytes" + ("" if reencoded.size != buf.size else
                                                                  " with different content"))
    return flat


def _row_blocks(flat: np.ndarray, kept: int, rows: int, *, mix: bool
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The row models' symbols and their probabilities of a 1, a block of rows at a time (at most about ``_CHUNK``
    symbols): every row that is neither empty nor full, in order, flattened; ``mix``: ``"rows-cols"``."""
    count = flat.size
    cols = count // rows
    matrix = flat.reshape(rows, cols)
    counts = np.count_nonzero(matrix, axis=1)
    g = kept / count
    column_kept = np.zeros(cols, dtype=np.float64)
    step = max(1, _CHUNK // cols)
    for start in range(0, rows, step):
        block = matrix[start:start + step]
        block_counts = counts[start:start + step]
        coded = (block_counts > 0) & (block_counts < cols)
        if mix:
            before = column_kept + (np.cumsum(block, axis=0, dtype=np.float64) - block)
            column_kept += block.sum(axis=0, dtype=np.float64)
            index = np.arange(start, start + block.shape[0], dtype=np.float64)
            fractions = block_counts[coded] / cols
            p = _row_probabilities(fractions[:, None], before[coded], index[coded][:, None], g)
        else:
            p = _row_fractions(block_counts[coded], cols)
        if p.size:
            yield block[coded].reshape(-1), p.reshape(-1)


def _encode_rows(flat: np.ndarray, kept: int, rows: int, *, mix: bool) -> np.ndarray:
    """The ``"rows"`` (``mix`` False) or ``"rows-cols"`` payload of a mask with ``0 < kept < count`` and
    ``1 < rows < count``: the row counts, then every row that is neither empty nor full, in order."""
    cols = flat.size // rows
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(np.count_nonzero(flat.reshape(rows, cols), axis=1).astype(np.int32),
                   constriction.stream.model.Uniform(cols + 1))
    family = constriction.stream.model.Bernoulli(perfect=True)
    for symbols, p in _row_blocks(flat, kept, rows, mix=mix):
        encoder.encode(symbols.astype(np.int32), family, p)
    return _words_to_bytes(encoder.get_compressed())


def _row_model_bits(flat: np.ndarray, kept: int, rows: int, *, mix: bool) -> float:
    """The ideal size in bits of :func:`_encode_rows`'s payload (its code lengths, without the coder's few bytes
    of overhead): what the encoder compares before it spends a range coder on a row model."""
    cols = flat.size // rows
    bits = rows * math.log2(cols + 1)
    for symbols, p in _row_blocks(flat, kept, rows, mix=mix):
        bits -= float(np.log2(np.where(symbols, p, 1.0 - p)).sum())
    return bits


def _row_fractions(counts: np.ndarray, cols: int) -> np.ndarray:
    """``"rows"``: the probability of a 1 in each column of the rows with these kept counts, their fraction
    (``(len(counts), cols)``; the encoder and the decoder both take it from here)."""
    return np.repeat(counts / cols, cols).reshape(-1, cols)


def _row_probabilities(row_fraction: np.ndarray | float, column_kept: np.ndarray, row: np.ndarray | int,
                       g: float) -> np.ndarray:
    """``"rows-cols"``: the probability of a 1 in each column of row ``row`` (elementwise over broadcast
    arrays), from the row's kept fraction, the column's kept count in the rows before it and the layer's kept
    fraction ``g``; ``+ - * /`` only, in one order, so the encoder (a block at a time) and the decoder (a row
    at a time) compute the same numbers on every platform."""
    column = (column_kept + _PRIOR_ROWS * g) / (row + _PRIOR_ROWS)
    odds = (row_fraction / (1.0 - row_fraction)) * (column / (1.0 - column)) / (g / (1.0 - g))
    return odds / (1.0 + odds)


def _rows_apply(count: int, kept: int, rows: int) -> bool:
    """Whether the row models code a mask: neither empty nor full, more than one row of more than one entry, rows
    of at most ``_MAX_COLS`` entries."""
    return 0 < kept < count and 1 < rows < count and count // rows <= _MAX_COLS


def _check_rows(count: int, kept: int, rows: int, error: type[ValueError]) -> tuple[int, int, int]:
    rows = _index(rows, "rows")
    if rows < 1 or count % rows:
        raise error(f"a mask of {count} elements cannot have {rows} rows")
    return count, kept, rows


def _model(count: int, kept: int) -> constriction.stream.model.Bernoulli:
    """The shared Bernoulli model; ``perfect=True`` pins the quantization (and silences a warning).

    constriction quantizes ``p`` to a 24-bit fixed-point probability and never assigns zero to
    either symbol, so a symbol that occurs is always encodable. ``kept / count`` is a correctly
    rounded IEEE division, so encoder and decoder build the identical model on every platform.
    """
    return constriction.stream.model.Bernoulli(kept / count, perfect=True)


def _words_to_bytes(words: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(words, dtype=_WORD).view(np.uint8)


def _as_flat_bool(mask: np.ndarray) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        got = mask.dtype if isinstance(mask, np.ndarray) else type(mask).__name__
        raise TypeError(f"mask must be a numpy bool array, got {got}")
    return mask.ravel()


def _as_byte_array(data: np.ndarray | bytes) -> np.ndarray:
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    if not isinstance(data, np.ndarray):
        raise FormatError(f"mask payload must be bytes or a numpy uint8 array, got {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 1:
        raise FormatError(f"mask payload must be a 1-D uint8 array, got {data.ndim}-D {data.dtype}")
    return data


def _index(value: int, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _check_count(count: int) -> int:
    count = _index(count, "count")
    if count < 0:
        raise FormatError(f"mask element count must be >= 0, got {count}")
    return count


def _check_count_kept(count: int, kept: int, error: type[ValueError]) -> tuple[int, int]:
    count = _index(count, "count")
    kept = _index(kept, "kept")
    if count < 0 or not 0 <= kept <= count:
        raise error(f"need 0 <= kept <= count, got kept={kept}, count={count}")
    return count, kept
