"""The quantized-model file (``model.quant.safetensors``, format tag ``pemn-quant``): packed integer codes, one
float16 scale per output channel, and the dense extras, in a safetensors file whose size is the honest size.

Layout (format version 2). Four tensors, so the header stays a few hundred bytes whatever the model:

- ``index``: uint8, a zlib-compressed JSON object ``{"method", "layers": [...], "extras": [...]}``. A layer is
  ``[name, shape, coding, kept, nonzero, [positions bytes, codes bytes, signs bytes]]``; the extras are grouped by
  module, ``[module, [[attribute, shape, dtype], ...]]`` (dtype ``float32`` or ``int64``), in state_dict order.
  (Format version 1, still read, spelled a layer ``{"name", "shape", "bits", "coding", "count", "kept",
  "nonzero", "bytes"}`` and an extra ``{"name", "shape", "dtype"}``.)
- ``codes``: uint8, every layer's bytes one after another: its ``positions`` (a pruned layer: the survivors'
  positions, a :func:`pemn.coding.encode_entropy` mask of ``count`` elements with ``kept`` ones; none for an
  unpruned layer), then its codes for the ``kept`` stored weights in row-major order, whichever of these is
  smallest per layer: ``packed`` (code ``c`` stored as ``c - min_code``, ``bits`` per code, least-significant
  bits first, zero padding); for the three-level methods (ternary, int2) ``entropy``: the non-zero positions as
  an entropy-coded mask of ``kept`` elements with ``nonzero`` ones, then one :func:`pemn.coding.pack_bits` sign
  bit per non-zero (1 = positive); for every method but binary ``categorical`` (Deep Compression's entropy
  stage): the count of each code value (uint32 each), then the codes range coded with those frequencies
  (:func:`encode_categorical`).
- ``scales``: float16, one per row (output channel) of every layer, in layer order.
- ``extras``: float32, every other floating-point ``state_dict`` entry (biases, norms, float buffers) flattened
  in index order; ``extras_int``: int64, the integer buffers (BatchNorm's ``num_batches_tracked``), if any.

The metadata holds ``format``, ``format_version``, ``method`` and the application's ``pemn_app``. Reading never
unpickles and treats the file as untrusted: anything malformed is one :class:`~pemn.FormatError`.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

import constriction
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from pemn.coding import decode_entropy, encode_entropy, pack_bits, unpack_bits
from pemn.convert import unwrap
from pemn.errors import FormatError
from pemn.stfile import write_file
from pemn.training.checkpoint import load_exact_state
from pemn.training.quantize import (
    QUANTIZE_METHODS,
    bits_of,
    code_range,
    dequantize,
    fake_quantizers,
    plain_state_name,
    weight_method,
)

__all__ = ["QUANT_FORMAT", "QUANT_FORMAT_VERSION", "load_quant", "quant_info", "read_quant", "save_quant"]

QUANT_FORMAT = "pemn-quant"
QUANT_FORMAT_VERSION = 2
#: The versions this pemn reads: 1 spelled every index entry as an object (a ResNet-56 index: 1.7 KB compressed),
#: 2 as arrays, with a module's extras under its name once (0.9 KB).
READ_VERSIONS = ("1", "2")
_MAX_INDEX_BYTES = 16 << 20  # a decompressed index larger than this is refused (a zlib bomb)
_MAX_ELEMENTS = 1 << 31


# ------------------------------------------------------------------------------------------ code packing


def pack_codes(codes: np.ndarray, bits: int, low: int) -> np.ndarray:
    """``codes - low`` at ``bits`` (1, 2, 4 or 8) bits each, little-endian within a byte; uint8."""
    u = (codes.astype(np.int64).ravel() - low).astype(np.uint8)
    per = 8 // bits
    pad = (-u.size) % per
    u = np.concatenate([u, np.zeros(pad, np.uint8)]).reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(u << shifts, axis=1).astype(np.uint8) if u.size else np.empty(0, np.uint8)


def unpack_codes(data: np.ndarray, count: int, bits: int, low: int, high: int) -> np.ndarray:
    """Inverse of :func:`pack_codes` (int64 codes); FormatError for a wrong length, a code outside
    ``[low, high]`` or non-zero padding."""
    per = 8 // bits
    if data.size != -(-count // per):
        raise FormatError(f"{count} codes of {bits} bits need {-(-count // per)} bytes, got {data.size}")
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    u = ((data[:, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)
    if np.any(u[count:]):
        raise FormatError("non-zero padding bits after the last code")
    codes = u[:count].astype(np.int64) + low
    if codes.size and int(codes.max()) > high:
        raise FormatError(f"a code is {int(codes.max())}, above the largest, {high}")
    return codes


def packed_code_bytes(count: int, bits: int) -> int:
    return -(-count // (8 // bits))


def _categorical(counts: np.ndarray) -> Any:
    """The range coder's model of a layer's codes: their own frequencies (``perfect=False``: a deterministic
    quantization of ``counts / total`` in float64, the same on both sides)."""
    return constriction.stream.model.Categorical(counts.astype(np.float64) / float(counts.sum()), perfect=False)


def encode_categorical(symbols: np.ndarray, levels: int) -> bytes:
    """``levels`` little-endian uint32 symbol counts, then the range code of ``symbols`` (0 .. levels-1) under
    those frequencies (little-endian 32-bit words): the layer's codes at about their empirical entropy."""
    counts = np.bincount(symbols, minlength=levels).astype(np.uint32)
    encoder = constriction.stream.queue.RangeEncoder()
    if symbols.size:
        encoder.encode(symbols.astype(np.int32), _categorical(counts))
    return counts.astype("<u4").tobytes() + encoder.get_compressed().astype("<u4").tobytes()


def decode_categorical(data: np.ndarray, count: int, levels: int) -> np.ndarray:
    """Inverse of :func:`encode_categorical` for ``count`` symbols (int64); FormatError unless ``data`` is exactly
    the encoding of what it decodes to (the counts included)."""
    if data.size < 4 * levels or (data.size - 4 * levels) % 4:
        raise FormatError(f"categorical codes need {levels} counts and whole 32-bit words, got {data.size} bytes")
    counts = np.frombuffer(data[:4 * levels].tobytes(), "<u4").astype(np.int64)
    if int(counts.sum()) != count:
        raise FormatError(f"categorical counts sum to {int(counts.sum())}, the layer stores {count} codes")
    words = np.frombuffer(data[4 * levels:].tobytes(), "<u4").astype(np.uint32)
    symbols = np.zeros(0, np.int64)
    if count:
        try:
            decoded = constriction.stream.queue.RangeDecoder(words).decode(_categorical(counts), count)
        except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
            raise
        except BaseException as exc:  # AssertionError on bad data; a Rust panic arrives as a BaseException
            raise FormatError(f"categorical codes are corrupt: constriction rejected them: {exc!r}") from None
        symbols = np.asarray(decoded, dtype=np.int64)
    if encode_categorical(symbols, levels) != data.tobytes():
        raise FormatError("categorical codes are corrupt: they do not re-encode to the stored bytes")
    return symbols


# ----------------------------------------------------------------------------------------------- writing


def _layer_bytes(codes: torch.Tensor, method: str, mask: torch.Tensor | None) -> tuple[dict[str, Any], list[bytes]]:
    bits = bits_of(method)
    low = code_range(method)[0]
    flat = codes.reshape(-1).numpy().astype(np.int64)
    count = flat.size
    positions = b""
    if mask is not None:
        keep = mask.reshape(-1).cpu().numpy().astype(bool)
        if np.any(flat[~keep]):
            raise ValueError("a pruned weight has a non-zero code")
        positions = encode_entropy(keep, int(keep.sum())).tobytes()
        flat = flat[keep]
    kept = flat.size
    binary = weight_method(method) == "binary"  # codes -1 / +1 stored as bits 0 / 1
    packed = pack_codes((flat > 0) if binary else flat, bits, 0 if binary else low).tobytes()
    coding, stored, signs = "packed", packed, b""
    nonzero = int(np.count_nonzero(flat))
    if code_range(method) == (-1, 1) and weight_method(method) != "binary":
        nz = flat != 0
        coded = encode_entropy(nz, nonzero).tobytes()
        sign_bits = pack_bits(flat[nz] > 0).tobytes()
        if len(coded) + len(sign_bits) < len(packed):
            coding, stored, signs = "entropy", coded, sign_bits
    if not binary and kept:
        high = code_range(method)[1]
        categorical = encode_categorical(flat - low, high - low + 1)
        if len(categorical) < len(stored) + len(signs):
            coding, stored, signs = "categorical", categorical, b""
    entry = {"shape": list(codes.shape), "bits": bits, "coding": coding, "count": count, "kept": kept,
             "nonzero": nonzero, "bytes": [len(positions), len(stored), len(signs)]}
    return entry, [positions, stored, signs]


def save_quant(model: nn.Module, path: str | os.PathLike[str], method: str, *,
               extra_metadata: dict[str, str] | None = None) -> int:
    """Write a model :func:`~pemn.training.quantize.quantize_` quantized (trained or calibrated) as its codes,
    scales and extras, atomically; returns the file's size. ValueError if the model is not quantized."""
    if method not in QUANTIZE_METHODS:
        raise ValueError(f"unknown quantize method {method!r}; valid: {', '.join(QUANTIZE_METHODS)}")
    root = unwrap(model)
    quantizers = fake_quantizers(root)
    if not quantizers:
        raise ValueError("the model is not quantized (pemn.training.quantize.quantize_ first)")
    layers, blobs, scales = [], [], []
    for name, (fq, latent) in quantizers.items():
        if fq.method != weight_method(method):
            raise ValueError(f"{name} is quantized by {fq.method!r}, the file says {method!r}")
        codes, s = fq.quantized(latent)
        entry, parts = _layer_bytes(codes.cpu(), fq.method, fq.mask)
        layers.append([name, entry["shape"], entry["coding"], entry["kept"], entry["nonzero"], entry["bytes"]])
        blobs.extend(parts)
        scales.append(s.cpu())
    quantized = set(quantizers)
    extras: list[list[Any]] = []  # [module, [[attribute, shape, dtype], ...]], a module's entries together
    floats, ints = [], []
    for key, value in root.state_dict().items():
        name = plain_state_name(key)
        if name in quantized:
            continue
        t = value.detach().to("cpu")
        if t.is_floating_point():
            floats.append(t.float().reshape(-1))
        else:
            ints.append(t.to(torch.int64).reshape(-1))
        module, _, attribute = name.rpartition(".")
        if not extras or extras[-1][0] != module:
            extras.append([module, []])
        extras[-1][1].append([attribute, list(t.shape), "float32" if t.is_floating_point() else "int64"])
    index = json.dumps({"method": method, "layers": layers, "extras": extras}, separators=(",", ":"))
    tensors = {
        "index": torch.frombuffer(bytearray(zlib.compress(index.encode(), 9)), dtype=torch.uint8),
        "codes": torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8) if any(blobs)
        else torch.empty(0, dtype=torch.uint8),
        "scales": torch.cat(scales).half(),
        "extras": torch.cat(floats) if floats else torch.empty(0),
    }
    if ints:
        tensors["extras_int"] = torch.cat(ints)
    metadata = {"format": QUANT_FORMAT, "format_version": str(QUANT_FORMAT_VERSION), "method": method}
    return write_file(path, tensors, metadata, extra_metadata)


# ----------------------------------------------------------------------------------------------- reading


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    where = str(path)
    try:
        with safe_open(where, framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FormatError(f"{where!r} is not a readable safetensors file ({e}); pemn never unpickles") from None
    if metadata.get("format") != QUANT_FORMAT:
        raise FormatError(f"{where!r} is not a pemn quantized file (format {metadata.get('format')!r})")
    if metadata.get("format_version") not in READ_VERSIONS:
        raise FormatError(f"{where!r}: unsupported quantized format version {metadata.get('format_version')!r}")
    return metadata, tensors


def _tensor(tensors: dict[str, torch.Tensor], name: str, dtype: torch.dtype, *, optional: bool = False
            ) -> torch.Tensor:
    t = tensors.get(name)
    if t is None:
        if optional:
            return torch.empty(0, dtype=dtype)
        raise FormatError(f"the tensor {name!r} is missing")
    if t.dtype != dtype or t.dim() != 1:
        raise FormatError(f"the tensor {name!r} must be 1-D {dtype}, got {t.dim()}-D {t.dtype}")
    return t


def _index(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, Any]:
    raw = _tensor(tensors, "index", torch.uint8).numpy().tobytes()
    try:
        d = zlib.decompressobj()
        text = d.decompress(raw, _MAX_INDEX_BYTES)
        if d.unconsumed_tail or not d.eof or d.unused_data:
            raise FormatError("the index is not one complete zlib stream under 16 MiB")
        index = json.loads(text)
    except (zlib.error, ValueError, RecursionError) as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(f"the index is not zlib-compressed JSON ({type(e).__name__})") from None
    if not (isinstance(index, dict) and isinstance(index.get("layers"), list)
            and isinstance(index.get("extras"), list)):
        raise FormatError("the index must be an object with the lists 'layers' and 'extras'")
    if index.get("method") != metadata.get("method") or index.get("method") not in QUANTIZE_METHODS:
        raise FormatError(f"the method {metadata.get('method')!r} is unknown or differs from the index's")
    if metadata.get("format_version") == "2":
        index["layers"], index["extras"] = _layer_objects(index["layers"]), _extra_objects(index["extras"])
    return index


def _layer_objects(layers: list[Any]) -> list[dict[str, Any]]:
    """Version 2's layer arrays ``[name, shape, coding, kept, nonzero, bytes]`` as version 1's objects (count and
    bits filled in from the shape and the method, so the same checks apply)."""
    out = []
    for e in layers:
        if not (isinstance(e, list) and len(e) == 6):
            raise FormatError(f"a layer entry must be [name, shape, coding, kept, nonzero, bytes], got {str(e)[:80]}")
        entry = dict(zip(("name", "shape", "coding", "kept", "nonzero", "bytes"), e, strict=True))
        entry["count"] = math.prod(_shape(entry))
        out.append(entry)
    return out


def _extra_objects(groups: list[Any]) -> list[dict[str, Any]]:
    """Version 2's ``[module, [[attribute, shape, dtype], ...]]`` groups as version 1's ``{name, shape, dtype}``."""
    out = []
    for g in groups:
        if not (isinstance(g, list) and len(g) == 2 and isinstance(g[0], str) and isinstance(g[1], list) and g[1]):
            raise FormatError(f"an extras entry must be [module, [[attribute, shape, dtype], ...]], got {str(g)[:80]}")
        for e in g[1]:
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and e[0]):
                raise FormatError(f"an extra of {g[0]!r} must be [attribute, shape, dtype], got {str(e)[:80]}")
            out.append({"name": f"{g[0]}.{e[0]}" if g[0] else e[0], "shape": e[1], "dtype": e[2]})
    return out


def _int(entry: dict[str, Any], key: str, low: int = 0, high: int = _MAX_ELEMENTS, default: Any = None) -> int:
    v = entry.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise FormatError(f"{entry.get('name')!r}: {key} must be an integer in [{low}, {high}], got {v!r}")
    return v


def _shape(entry: dict[str, Any]) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_ELEMENTS for d in shape)):
        raise FormatError(f"{entry.get('name')!r}: shape must be a list of at most 8 sizes, got {shape!r}")
    if math.prod(shape) > _MAX_ELEMENTS:
        raise FormatError(f"{entry.get('name')!r}: shape {shape} has too many elements")
    return tuple(shape)


def _name(entry: Any, seen: set[str]) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name or name in seen:
        raise FormatError(f"an entry's name is missing, not a string or repeated: {name!r}")
    seen.add(name)
    return name


def _decode_layer(entry: dict[str, Any], method: str, blob: memoryview, offset: int,
                  scales: torch.Tensor, s_offset: int) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
    shape = _shape(entry)
    count = math.prod(shape)
    if _int(entry, "count") != count or _int(entry, "bits", 1, 8, bits_of(method)) != bits_of(method):
        raise FormatError(f"{entry['name']!r}: count / bits do not match the shape and method")
    kept, nonzero = _int(entry, "kept", 0, count), _int(entry, "nonzero", 0, count)
    sizes = entry.get("bytes")
    if not (isinstance(sizes, list) and len(sizes) == 3 and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= len(blob) for n in sizes)):
        raise FormatError(f"{entry['name']!r}: bytes must list three sizes within the codes tensor")
    if offset + sum(sizes) > len(blob):
        raise FormatError(f"{entry['name']!r}: its bytes run past the end of the codes tensor")
    parts, start = [], offset
    for n in sizes:
        parts.append(np.frombuffer(blob[start:start + n], dtype=np.uint8))
        start += n
    positions, stored, signs = parts
    if kept == count and positions.size == 0:
        keep = None
    else:
        keep = decode_entropy(positions, count, kept)
    low, high = code_range(method)
    coding = entry.get("coding")
    if coding == "packed":
        if signs.size:
            raise FormatError(f"{entry['name']!r}: a packed layer has no sign bytes")
        if weight_method(method) == "binary":
            codes = unpack_codes(stored, kept, 1, 0, 1) * 2 - 1
        else:
            codes = unpack_codes(stored, kept, bits_of(method), low, high)
        if int(np.count_nonzero(codes)) != nonzero:
            raise FormatError(f"{entry['name']!r}: {int(np.count_nonzero(codes))} non-zero codes, index says "
                              f"{nonzero}")
    elif coding == "entropy" and (low, high) == (-1, 1) and weight_method(method) != "binary":
        nz = decode_entropy(stored, kept, nonzero)
        positive = unpack_bits(signs, nonzero)
        codes = np.zeros(kept, np.int64)
        codes[nz] = np.where(positive, 1, -1)
    elif coding == "categorical" and weight_method(method) != "binary":
        if signs.size:
            raise FormatError(f"{entry['name']!r}: a categorical layer has no sign bytes")
        codes = decode_categorical(stored, kept, high - low + 1) + low
        if int(np.count_nonzero(codes)) != nonzero:
            raise FormatError(f"{entry['name']!r}: {int(np.count_nonzero(codes))} non-zero codes, index says "
                              f"{nonzero}")
    else:
        raise FormatError(f"{entry['name']!r}: unknown coding {coding!r} for method {method!r}")
    full = np.zeros(count, np.int64)
    if keep is None:
        full[:] = codes
    else:
        full[keep] = codes
    rows = shape[0] if shape else 1
    if s_offset + rows > scales.numel():
        raise FormatError(f"{entry['name']!r}: the scales tensor is too short")
    s = scales[s_offset:s_offset + rows].float()
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise FormatError(f"{entry['name']!r}: a scale is negative or not finite")
    weight = dequantize(torch.from_numpy(full).reshape(shape), s)
    mask = None if keep is None else torch.from_numpy(keep.copy()).reshape(shape)
    return weight, mask, start, s_offset + rows


def read_quant(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse a :func:`save_quant` file: ``(plain state_dict with the dequantized weights, info)``; ``info`` holds
    the method, the masks of pruned layers and the byte counts (:func:`quant_info`). FormatError for anything but
    an intact file of this format."""
    where = str(path)
    metadata, tensors = _read(path)
    try:
        return _state(metadata, tensors)
    except FormatError as e:
        raise FormatError(f"{where!r} is a corrupt pemn quantized file ({e})") from None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, RecursionError, OverflowError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{where!r} is a corrupt pemn quantized file ({detail})") from None


def _state(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                               dict[str, Any]]:
    unknown = sorted(set(tensors) - {"index", "codes", "scales", "extras", "extras_int"})
    if unknown:
        raise FormatError(f"unknown tensor(s) {unknown}")
    index = _index(tensors, metadata)
    method = index["method"]
    blob = memoryview(_tensor(tensors, "codes", torch.uint8).numpy().tobytes())
    scales = _tensor(tensors, "scales", torch.float16)
    floats = _tensor(tensors, "extras", torch.float32)
    ints = _tensor(tensors, "extras_int", torch.int64, optional=True)
    if not bool(torch.isfinite(floats).all()):
        raise FormatError("an extra (bias, norm) is not finite")
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    offset = s_offset = 0
    stored = 0
    for entry in index["layers"]:
        name = _name(entry, seen)
        weight, mask, offset, s_offset = _decode_layer(entry, method, blob, offset, scales, s_offset)
        state[name] = weight
        stored += entry["kept"]
        if mask is not None:
            masks[name] = mask
    if offset != len(blob) or s_offset != scales.numel():
        raise FormatError(f"the codes / scales tensors hold {len(blob) - offset} / {scales.numel() - s_offset} "
                          "more entries than the layers use")
    f_offset = i_offset = 0
    for entry in index["extras"]:
        name = _name(entry, seen)
        shape = _shape(entry)
        n = math.prod(shape)
        if entry.get("dtype") == "float32":
            if f_offset + n > floats.numel():
                raise FormatError(f"{name!r}: the extras tensor is too short")
            state[name] = floats[f_offset:f_offset + n].reshape(shape).clone()
            f_offset += n
        elif entry.get("dtype") == "int64":
            if i_offset + n > ints.numel():
                raise FormatError(f"{name!r}: the extras_int tensor is too short")
            state[name] = ints[i_offset:i_offset + n].reshape(shape).clone()
            i_offset += n
        else:
            raise FormatError(f"{name!r}: dtype must be float32 or int64, got {entry.get('dtype')!r}")
    if f_offset != floats.numel() or i_offset != ints.numel():
        raise FormatError("the extras tensors hold more values than the index lists")
    weights = sum(math.prod(e["shape"]) for e in index["layers"])
    info = {"method": method, "bits": bits_of(method), "masks": masks, "quantized_weights": weights,
            "stored_codes": stored, "pruned_layers": len(masks), "code_bytes": len(blob),
            "scale_bytes": 2 * scales.numel(), "extras_bytes": 4 * floats.numel() + 8 * ints.numel(),
            "index_bytes": tensors["index"].numel(), "layers": len(index["layers"]),
            "codings": sorted({e["coding"] for e in index["layers"]})}
    info["payload_bytes"] = info["code_bytes"] + info["scale_bytes"] + info["extras_bytes"]
    info["code_bits_per_weight"] = 8 * info["code_bytes"] / weights if weights else 0.0
    return state, info


def quant_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a quantized file holds (FormatError if it is corrupt): method, bits, weights, byte counts
    (``code_bytes``, ``scale_bytes``, ``extras_bytes``, ``index_bytes``, ``payload_bytes`` = codes + scales +
    extras, ``file_bytes``), ``code_bits_per_weight`` (the codes' bits per quantized weight, positions included)
    and ``bits_per_weight`` (8 × the whole file's bytes per quantized weight: what ``sweep.csv`` and RESULTS.md call
    bits per weight)."""
    _, info = read_quant(path)
    info.pop("masks")
    info["file_bytes"] = Path(path).stat().st_size
    weights = info["quantized_weights"]
    info["bits_per_weight"] = 8 * info["file_bytes"] / weights if weights else 0.0
    return info


def load_quant(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load a :func:`save_quant` file into ``model`` (a fresh, plain instance of the same architecture): its
    weights become the dequantized values. Every key and shape must match (ArchitectureMismatchError naming the
    first difference otherwise); the model is untouched when loading fails. Returns ``model``."""
    state, _ = read_quant(path)
    load_exact_state(path, model, state)
    return model
