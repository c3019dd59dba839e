"""Tests for pemn.coding: round trips, pinned on-disk layouts, compression ratio, hostile input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pemn import coding
from pemn.coding import decode_entropy, encode_entropy, entropy_bits, pack_bits, packed_size, unpack_bits
from pemn.errors import FormatError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mask(count: int, kept: int, seed: int) -> np.ndarray:
    """A mask of ``count`` elements with exactly ``kept`` ones at random positions."""
    mask = np.zeros(count, dtype=bool)
    mask[np.random.default_rng(seed).permutation(count)[:kept]] = True
    return mask


@st.composite
def masks(draw: st.DrawFn, max_count: int = 1000) -> np.ndarray:
    count = draw(st.integers(0, max_count))
    kind = draw(st.sampled_from(["zeros", "ones", "one-hot", "one-cold", "fraction"]))
    if kind == "zeros":
        kept = 0
    elif kind == "ones":
        kept = count
    elif kind == "one-hot":
        kept = min(1, count)
    elif kind == "one-cold":
        kept = max(count - 1, 0)
    else:
        kept = round(count * draw(st.floats(0.0, 1.0)))
    return _mask(count, kept, draw(st.integers(0, 2**32 - 1)))


def _assert_format_error_or_valid(data: bytes | np.ndarray, count: int, kept: int) -> None:
    """Decoding untrusted data either raises FormatError or returns a mask that honours the header."""
    try:
        out = decode_entropy(data, count, kept)
    except FormatError:
        return
    assert out.dtype == np.bool_ and out.shape == (count,)
    assert int(out.sum()) == kept
    assert bytes(encode_entropy(out, kept)) == bytes(np.frombuffer(bytes(data), dtype=np.uint8))


# --------------------------------------------------------------------------------------------- packed


def test_pack_bit_order_is_pinned() -> None:
    mask = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    assert pack_bits(mask).tolist() == [1, 1]
    assert pack_bits(np.array([0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1], dtype=bool)).tolist() == [0x82, 0x04]
    assert unpack_bits(np.array([0x82, 0x04], dtype=np.uint8), 11).tolist() == [
        False, True, False, False, False, False, False, True, False, False, True,
    ]  # fmt: skip


def test_pack_flattens_in_c_order() -> None:
    mask = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)
    assert pack_bits(mask).tolist() == [0b100001]


@SETTINGS
@given(masks())
def test_pack_round_trip(mask: np.ndarray) -> None:
    data = pack_bits(mask)
    assert data.dtype == np.uint8 and data.ndim == 1 and data.size == packed_size(mask.size)
    out = unpack_bits(data, mask.size)
    assert out.dtype == np.bool_ and np.array_equal(out, mask)
    assert np.array_equal(unpack_bits(bytes(data), mask.size), mask)


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 63, 64, 65, 999, 1000])
@pytest.mark.parametrize("value", [False, True])
def test_pack_round_trip_constant(count: int, value: bool) -> None:
    mask = np.full(count, value)
    assert np.array_equal(unpack_bits(pack_bits(mask), count), mask)


@pytest.mark.parametrize(
    ("data", "count", "match"),
    [
        (np.zeros(2, np.uint8), 17, "needs 3 bytes"),
        (np.zeros(4, np.uint8), 17, "needs 3 bytes"),
        (np.zeros(1, np.uint8), 0, "needs 0 bytes"),
        (np.array([0, 0x02], np.uint8), 9, "padding"),
        (np.array([0x80], np.uint8), 7, "padding"),
        (np.zeros((1, 2), np.uint8), 16, "1-D"),
        (np.zeros(2, np.int8), 16, "uint8"),
        (np.zeros(0, np.uint8), -1, ">= 0"),
        ([0, 1], 16, "bytes or a numpy"),
    ],
)
def test_unpack_rejects_malformed(data: np.ndarray, count: int, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        unpack_bits(data, count)


@SETTINGS
@given(st.binary(max_size=40), st.integers(0, 320))
def test_unpack_garbage_is_format_error_or_canonical(data: bytes, count: int) -> None:
    try:
        out = unpack_bits(data, count)
    except FormatError:
        return
    assert bytes(pack_bits(out)) == data  # every accepted payload is the unique encoding of its mask


def test_pack_rejects_non_bool() -> None:
    with pytest.raises(TypeError, match="bool"):
        pack_bits(np.array([0, 1, 2], dtype=np.uint8))


# -------------------------------------------------------------------------------------------- entropy


def test_entropy_bits() -> None:
    assert entropy_bits(0, 0) == 0.0
    assert entropy_bits(10, 0) == 0.0 and entropy_bits(10, 10) == 0.0
    assert entropy_bits(8, 4) == pytest.approx(8.0)
    assert entropy_bits(1000, 100) == pytest.approx(1000 * 0.4689955935892812)
    with pytest.raises(ValueError):
        entropy_bits(10, 11)


@SETTINGS
@given(masks(max_count=2000))
def test_entropy_round_trip(mask: np.ndarray) -> None:
    kept = int(mask.sum())
    data = encode_entropy(mask, kept)
    assert data.dtype == np.uint8 and data.ndim == 1 and data.size % 4 == 0
    if kept in (0, mask.size):
        assert data.size == 0
    out = decode_entropy(data, mask.size, kept)
    assert out.dtype == np.bool_ and np.array_equal(out, mask)
    assert np.array_equal(decode_entropy(bytes(data), mask.size, kept), mask)


@pytest.mark.parametrize("mask", [[], [False], [True], [False, True], [True, False]])
def test_entropy_round_trip_tiny(mask: list[bool]) -> None:
    arr = np.array(mask, dtype=bool)
    kept = int(arr.sum())
    assert np.array_equal(decode_entropy(encode_entropy(arr, kept), arr.size, kept), arr)


def test_entropy_layout_is_pinned() -> None:
    """Golden bytes: fails if constriction ever changes its model quantization or coder (format break)."""
    mask = np.zeros(20, dtype=bool)
    mask[[1, 5, 7, 11, 19]] = True
    assert encode_entropy(mask, 5).tolist() == [216, 115, 88, 162]
    assert np.array_equal(decode_entropy(bytes([216, 115, 88, 162]), 20, 5), mask)


def test_entropy_chunking_does_not_change_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    mask = _mask(10_000, 1234, seed=3)
    whole = encode_entropy(mask, 1234)
    monkeypatch.setattr(coding, "_CHUNK", 37)
    assert np.array_equal(encode_entropy(mask, 1234), whole)
    assert np.array_equal(decode_entropy(whole, 10_000, 1234), mask)


@pytest.mark.parametrize(("p", "slack"), [(0.1, 1.02), (0.5, 1.002)])
def test_entropy_size_near_ideal(p: float, slack: float) -> None:
    count = 1_000_000
    kept = round(count * p)
    mask = _mask(count, kept, seed=0)
    data = encode_entropy(mask, kept)
    ideal = entropy_bits(count, kept)
    assert data.size * 8 <= slack * ideal, (data.size * 8, ideal)
    assert np.array_equal(decode_entropy(data, count, kept), mask)


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="kept=3"):
        encode_entropy(np.array([True, False]), 3)
    with pytest.raises(TypeError, match="bool"):
        encode_entropy(np.array([1, 0]), 1)


@pytest.mark.parametrize(
    ("data", "count", "kept", "match"),
    [
        (np.zeros(4, np.uint8), 10, 0, "empty payload"),
        (np.zeros(4, np.uint8), 10, 10, "empty payload"),
        (np.zeros(0, np.uint8), 10, 3, "non-empty multiple of 4"),
        (np.zeros(5, np.uint8), 10, 3, "non-empty multiple of 4"),
        (np.zeros(4, np.uint8), 10, 11, "kept <= count"),
        (np.zeros(4, np.uint8), -1, 0, "kept <= count"),
        (np.zeros(4, np.uint8), 10, -1, "kept <= count"),
        (np.zeros((1, 4), np.uint8), 10, 3, "1-D"),
        (np.zeros(4, np.uint32), 10, 3, "uint8"),
    ],
)
def test_decode_rejects_malformed(data: np.ndarray, count: int, kept: int, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        decode_entropy(data, count, kept)


@pytest.fixture(scope="module")
def stream() -> tuple[np.ndarray, np.ndarray, int]:
    mask = _mask(5000, 700, seed=7)
    return mask, encode_entropy(mask, 700), 700


@pytest.mark.parametrize("cut", [1, 4, 8, 12])
def test_decode_rejects_truncated(stream: tuple[np.ndarray, np.ndarray, int], cut: int) -> None:
    mask, data, kept = stream
    with pytest.raises(FormatError):
        decode_entropy(data[:-cut], mask.size, kept)


@pytest.mark.parametrize("extra", [[0, 0, 0, 0], [1, 2, 3, 4], [0] * 8, [255] * 12])
def test_decode_rejects_trailing_words(stream: tuple[np.ndarray, np.ndarray, int], extra: list[int]) -> None:
    mask, data, kept = stream
    with pytest.raises(FormatError):
        decode_entropy(np.concatenate([data, np.array(extra, np.uint8)]), mask.size, kept)


@SETTINGS
@given(st.data())
def test_decode_bit_flips(stream: tuple[np.ndarray, np.ndarray, int], data: st.DataObject) -> None:
    mask, payload, kept = stream
    corrupt = payload.copy()
    index = data.draw(st.integers(0, corrupt.size - 1))
    corrupt[index] ^= np.uint8(1 << data.draw(st.integers(0, 7)))
    _assert_format_error_or_valid(corrupt, mask.size, kept)


@SETTINGS
@given(st.binary(max_size=64), st.integers(0, 600), st.data())
def test_decode_garbage_never_raises_anything_else(payload: bytes, count: int, data: st.DataObject) -> None:
    kept = data.draw(st.integers(0, count))
    _assert_format_error_or_valid(payload, count, kept)


@SETTINGS
@given(masks(max_count=600), st.data())
def test_decode_with_wrong_kept(mask: np.ndarray, data: st.DataObject) -> None:
    kept = int(mask.sum())
    other = data.draw(st.integers(0, mask.size).filter(lambda k: k != kept)) if mask.size else 0
    if other == kept:
        return
    _assert_format_error_or_valid(encode_entropy(mask, kept), mask.size, other)


@SETTINGS
@given(masks(max_count=600), st.integers(1, 50))
def test_decode_with_wrong_count(mask: np.ndarray, delta: int) -> None:
    kept = int(mask.sum())
    data = encode_entropy(mask, kept)
    _assert_format_error_or_valid(data, mask.size + delta, kept)
    if mask.size - delta >= kept:
        _assert_format_error_or_valid(data, mask.size - delta, kept)


def test_decode_wraps_constriction_errors() -> None:
    """Garbage that constriction itself rejects (it raises AssertionError) still surfaces as FormatError."""
    payload = bytes([67, 158, 25, 40, 68, 250, 5, 165, 172, 187, 38, 184, 35, 180, 182, 232])
    with pytest.raises(FormatError) as info:
        decode_entropy(payload, 58, 17)
    assert info.value.__cause__ is not None


def test_decode_wraps_rust_panics(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyo3 turns Rust panics into PanicException, a BaseException; those must become FormatError too."""

    class PanicException(BaseException):
        pass

    class Exploding:
        def __init__(self, words: np.ndarray) -> None:
            raise PanicException("boom")

    monkeypatch.setattr(coding.constriction.stream.queue, "RangeDecoder", Exploding)
    with pytest.raises(FormatError, match="boom"):
        decode_entropy(np.zeros(4, np.uint8), 10, 3)


# -------------------------------------------------------------------------------------------- context


def _structured(rows: int, cols: int, seed: int) -> np.ndarray:
    """A (rows, cols) mask whose rows and columns keep unequal shares, as a trained classifier's masks do."""
    rng = np.random.default_rng(seed)
    row_rate = rng.uniform(0.02, 0.3, rows)
    column_factor = np.where(rng.random(cols) < 0.4, 0.1, 1.6)  # some inputs nearly unused, as at an image border
    p = np.clip(row_rate[:, None] * column_factor[None, :], 0, 1)
    return rng.random((rows, cols)) < p


@st.composite
def shaped_masks(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    rows = draw(st.integers(1, 40))
    cols = draw(st.integers(1, 40))
    if draw(st.booleans()):
        return _structured(rows, cols, draw(st.integers(0, 2**32 - 1))).reshape(-1), rows
    kept = draw(st.one_of(st.sampled_from([0, 1, rows * cols - 1, rows * cols]), st.integers(0, rows * cols)))
    return _mask(rows * cols, max(0, kept), draw(st.integers(0, 2**32 - 1))), rows


@SETTINGS
@given(shaped_masks())
def test_context_round_trip_every_model(case: tuple[np.ndarray, int]) -> None:
    """Every model that applies round-trips; the chosen one is never larger than order 0 and within the coder's
    overhead of the smallest."""
    mask, rows = case
    kept = int(mask.sum())
    data, model = coding.encode_context(mask, kept, rows)
    assert model in coding.CONTEXT_MODELS and data.dtype == np.uint8 and data.size % 4 == 0
    assert data.size <= encode_entropy(mask, kept).size
    assert np.array_equal(coding.decode_context(data, mask.size, kept, rows, model), mask)
    for name in coding.CONTEXT_MODELS:
        try:
            forced, got = coding.encode_context(mask, kept, rows, name)
        except ValueError:  # a row model on a mask it does not apply to (empty, full, one row or one column)
            assert name != "order0" and (kept in (0, mask.size) or rows in (1, mask.size))
            continue
        # the encoder codes the row model of the shorter ideal code, and keeps it only if it saves more than
        # _NAMING_BYTES: a forced row model may be up to that much (and the coder's few bytes) smaller
        slack = coding._NAMING_BYTES + 8 if name != "order0" else 0
        assert got == name and forced.size + slack >= data.size
        assert np.array_equal(coding.decode_context(forced, mask.size, kept, rows, name), mask)


def test_context_order0_is_the_entropy_payload() -> None:
    mask = _mask(5000, 500, seed=1)  # no structure: order 0 wins
    data, model = coding.encode_context(mask, 500, 50)
    assert model == "order0" and np.array_equal(data, encode_entropy(mask, 500))


@pytest.mark.parametrize(("rows", "cols", "bound"), [(180, 600, 0.9), (126, 180, 0.9), (600, 180, 0.9)])
def test_context_codes_structured_masks_below_order0(rows: int, cols: int, bound: float) -> None:
    """Rows and columns that keep unequal shares code at least 10 % below H(kept fraction) per element."""
    mask = _structured(rows, cols, seed=rows)
    kept = int(mask.sum())
    data, model = coding.encode_context(mask, kept, rows)
    assert model == "rows-cols"
    assert data.size * 8 < bound * entropy_bits(mask.size, kept), (data.size * 8, entropy_bits(mask.size, kept))
    assert np.array_equal(coding.decode_context(data, mask.size, kept, rows, model), mask.reshape(-1))


def test_context_layout_is_pinned() -> None:
    """Golden bytes of both row models: fails if the probability rule, the count model or constriction changes
    (a format break)."""
    mask = np.zeros((4, 8), dtype=bool)
    mask[0, [1, 2]] = mask[1, [1]] = mask[2, [1, 2, 5]] = mask[3, :] = True
    kept = int(mask.sum())
    got = {name: coding.encode_context(mask, kept, 4, name)[0].tolist() for name in ("rows", "rows-cols")}
    assert got == {"rows": [142, 91, 113, 61], "rows-cols": [190, 91, 113, 61]}, got
    for name, payload in got.items():
        assert np.array_equal(coding.decode_context(bytes(payload), 32, kept, 4, name), mask.reshape(-1))


def test_context_blocks_do_not_change_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder computes a block of rows at a time, the decoder one row at a time: the same probabilities."""
    mask = _structured(300, 70, seed=5)
    kept = int(mask.sum())
    whole = {name: coding.encode_context(mask, kept, 300, name)[0] for name in ("rows", "rows-cols")}
    monkeypatch.setattr(coding, "_CHUNK", 150)  # two rows per block
    for name, data in whole.items():
        assert np.array_equal(coding.encode_context(mask, kept, 300, name)[0], data)
        assert np.array_equal(coding.decode_context(data, mask.size, kept, 300, name), mask.reshape(-1))


def test_context_rejects_bad_arguments() -> None:
    mask = _structured(10, 10, seed=0).reshape(-1)
    kept = int(mask.sum())
    with pytest.raises(ValueError, match="cannot have 7 rows"):
        coding.encode_context(mask, kept, 7)
    with pytest.raises(ValueError, match="model must be one of"):
        coding.encode_context(mask, kept, 10, "columns")
    with pytest.raises(ValueError, match="kept="):
        coding.encode_context(mask, kept + 1, 10)
    with pytest.raises(ValueError, match="does not apply"):
        coding.encode_context(mask, kept, 1, "rows")
    with pytest.raises(FormatError, match="unknown context model"):
        coding.decode_context(b"", 100, kept, 10, "columns")
    with pytest.raises(FormatError, match="cannot have 7 rows"):
        coding.decode_context(b"", 100, kept, 7, "rows")
    with pytest.raises(FormatError, match="is not used"):
        coding.decode_context(b"\0\0\0\0", 100, 0, 10, "rows")


@pytest.fixture(scope="module", params=["rows", "rows-cols"])
def context_stream(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray, int, str]:
    mask = _structured(60, 50, seed=9).reshape(-1)
    return mask, coding.encode_context(mask, int(mask.sum()), 60, request.param)[0], int(mask.sum()), request.param


def _assert_context_error_or_valid(data: bytes | np.ndarray, count: int, kept: int, rows: int, model: str) -> None:
    try:
        out = coding.decode_context(data, count, kept, rows, model)
    except FormatError:
        return
    assert out.dtype == np.bool_ and out.shape == (count,) and int(out.sum()) == kept
    assert bytes(coding.encode_context(out, kept, rows, model)[0]) == bytes(np.frombuffer(bytes(data), np.uint8))


@pytest.mark.parametrize("cut", [1, 4, 8])
def test_context_rejects_truncated(context_stream: tuple[np.ndarray, np.ndarray, int, str], cut: int) -> None:
    mask, data, kept, model = context_stream
    with pytest.raises(FormatError):
        coding.decode_context(data[:-cut], mask.size, kept, 60, model)


def test_context_rejects_trailing_words(context_stream: tuple[np.ndarray, np.ndarray, int, str]) -> None:
    mask, data, kept, model = context_stream
    with pytest.raises(FormatError):
        coding.decode_context(np.concatenate([data, np.zeros(4, np.uint8)]), mask.size, kept, 60, model)


@SETTINGS
@given(st.data())
def test_context_bit_flips(context_stream: tuple[np.ndarray, np.ndarray, int, str], data: st.DataObject) -> None:
    mask, payload, kept, model = context_stream
    corrupt = payload.copy()
    corrupt[data.draw(st.integers(0, corrupt.size - 1))] ^= np.uint8(1 << data.draw(st.integers(0, 7)))
    _assert_context_error_or_valid(corrupt, mask.size, kept, 60, model)


@SETTINGS
@given(st.binary(max_size=64), st.integers(2, 30), st.integers(2, 30), st.sampled_from(["rows", "rows-cols"]),
       st.data())
def test_context_garbage_never_raises_anything_else(payload: bytes, rows: int, cols: int, model: str,
                                                    data: st.DataObject) -> None:
    kept = data.draw(st.integers(1, rows * cols - 1))
    _assert_context_error_or_valid(payload, rows * cols, kept, rows, model)


def test_context_wrong_header_is_caught(context_stream: tuple[np.ndarray, np.ndarray, int, str]) -> None:
    """A payload read with another kept count, row count or model never comes back as a different mask."""
    mask, data, kept, model = context_stream
    for k, rows, name in ((kept + 1, 60, model), (kept - 1, 60, model), (kept, 30, model), (kept, 50, model),
                          (kept, 60, "order0"), (kept, 60, "rows" if model == "rows-cols" else "rows-cols")):
        _assert_context_error_or_valid(data, mask.size, k, rows, name)
