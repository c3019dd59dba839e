"""Broken, foreign and hostile artifacts: every one is a :class:`pemn.FormatError` (or a subclass) whose
message names the file and what is wrong, and a failed :func:`pemn.load` leaves the target model exactly as
it was. Also: :func:`pemn.save` is atomic (a failed write keeps the previous artifact and leaves no
temporary file behind).

Most cases take a valid artifact apart with the codec (``pemn.artifact.parse``: metadata, the flat
``masks`` / ``prototype`` / ``params.*`` / ``buffers.*`` tensors, the manifest and dense index), edit it and
put it back together with ``pemn.artifact.encode``, which rebuilds the index and reseals the integrity hash,
so the check under test -- not the hash -- is what must fire. Each table has a positive control row.
"""

from __future__ import annotations

import copy
import errno
import functools
import io
import json
import math
import os
import pickle
import random
import re
import time
import tracemalloc
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file
from torch import nn

import pemn
from pemn import artifact, fileio
from pemn import coding as mask_coding

CONFIGS = {
    "rp": pemn.PEMNConfig(strategy="rp", ratio=0.1),
    "mask": pemn.PEMNConfig(strategy="mask", keep=0.3, seed=3),
    "mp_rand": pemn.PEMNConfig(strategy="mp", fill="rand", seed=7),
}
VARIANTS = [(c, coding, storage)
            for c in CONFIGS for coding in artifact.CODINGS for storage in artifact.PROTOTYPE_STORAGE]
VARIANT_IDS = ["-".join(v) for v in VARIANTS]
X = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(123))
# What any FormatError raised for a damaged artifact may say; it always says *something* of this kind.
DAMAGE = re.compile(r"corrupt|not a pemn artifact|truncated|format.version|newer pemn|too short|pickle|"
                    r"architecture mismatch|prototype", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_model(*, conv_out: int = 4, bn: int | None = None, out: int = 3, conv_bias: bool = True,
               drop_linear: bool = False, extra: nn.Module | None = None) -> nn.Sequential:
    """The tiny reference model (or a variant of it), always from the same torch seed."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, conv_out, 3, padding=1, bias=conv_bias),
                               nn.BatchNorm2d(conv_out if bn is None else bn), nn.ReLU(), nn.Flatten()]
    if not drop_linear:
        layers.append(nn.Linear(conv_out * 16, out))
    if extra is not None:
        layers.append(extra)
    return nn.Sequential(*layers)


@functools.cache
def trained(cfg: str) -> nn.Module:
    """The reference model converted with ``CONFIGS[cfg]`` and trained one step (masks differ from init).

    Shared between tests: never modify it (to_bytes / save only read it)."""
    model = pemn.convert_(make_model(), CONFIGS[cfg])
    init = {k: mw.current_mask().clone() for k, mw in pemn.masked_weights(model).items()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    changed = [k for k, mw in pemn.masked_weights(model).items() if not torch.equal(mw.current_mask(), init[k])]
    assert changed, "one training step should change the masks"
    return model


@functools.cache
def reference_output(cfg: str) -> torch.Tensor:
    model = copy.deepcopy(trained(cfg)).eval()
    with torch.no_grad():
        return model(X)


@functools.cache
def artifact_bytes(cfg: str = "rp", coding: str = "packed", storage: str = "values") -> bytes:
    return artifact.to_bytes(trained(cfg), coding=coding, prototype=storage)


def output(model: nn.Module) -> torch.Tensor | str:
    """Eval-mode output on X, restoring every module's training flag; the exception name if it cannot run."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(X)
    except Exception as e:  # e.g. a deliberately inconsistent BatchNorm size
        return type(e).__name__
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "classes": [(n, type(m)) for n, m in model.named_modules()],
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        # named_buffers includes the non-persistent prototype bank of a converted model
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "state_keys": list(model.state_dict()),
        "modes": [m.training for m in model.modules()],
        "output": output(model),
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["classes"] == before["classes"], "the failed load changed the model's module classes"
    assert after["state_keys"] == before["state_keys"], "the failed load changed the model's state_dict keys"
    assert after["modes"] == before["modes"]
    assert after["params"].keys() == before["params"].keys()
    for n, (p, grad) in before["params"].items():
        q, grad2 = after["params"][n]
        assert grad == grad2 and p.dtype == q.dtype and torch.equal(p, q), f"parameter {n} changed"
    assert after["buffers"].keys() == before["buffers"].keys()
    for n, b in before["buffers"].items():
        assert b.dtype == after["buffers"][n].dtype and torch.equal(b, after["buffers"][n]), f"buffer {n} changed"
    if isinstance(before["output"], str):
        assert after["output"] == before["output"]
    else:
        assert torch.equal(after["output"], before["output"]), "the failed load changed the model's outputs"


def assert_loads_exactly(path: Path, cfg: str, model: nn.Module | None = None) -> nn.Module:
    model = make_model() if model is None else model
    loaded = pemn.load(path, model)
    assert loaded is model
    out = output(model)
    assert isinstance(out, torch.Tensor) and torch.equal(out, reference_output(cfg))
    return model


def expect_load_error(tmp_path: Path, data: bytes, match: str, *, model: nn.Module | None = None,
                      exc: type[pemn.FormatError] = pemn.FormatError, name: str = "model.pemn") -> str:
    """Write ``data``, load it into ``model``: ``exc`` with a message naming the file and matching ``match``,
    and the model untouched. Any other exception type propagates and fails the test."""
    path = tmp_path / name
    path.write_bytes(data)
    model = make_model() if model is None else model
    before = snapshot(model)
    with pytest.raises(exc) as info:
        pemn.load(path, model)
    msg = str(info.value)
    assert str(path) in msg, f"the message does not name the file: {msg}"
    assert re.search(match, msg, re.IGNORECASE), f"{msg!r} does not match {match!r}"
    assert_unchanged(model, before)
    return msg


def header_len(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


def container_header(data: bytes) -> dict[str, Any]:
    return json.loads(data[8:8 + header_len(data)])


def tensor_span(data: bytes, name: str) -> tuple[int, int]:
    """File offsets ``[start, end)`` of tensor ``name``'s bytes."""
    start, end = container_header(data)[name]["data_offsets"]
    return 8 + header_len(data) + start, 8 + header_len(data) + end


def uint8_tensor(raw: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())


def index_text(index: Any) -> bytes:
    """``index`` as to_bytes writes it: compact JSON (a str or bytes is taken verbatim)."""
    raw = index if isinstance(index, bytes | str) else json.dumps(index, separators=(",", ":"))
    return raw.encode() if isinstance(raw, str) else raw


def compress_index(index: Any) -> torch.Tensor:
    """An ``index`` tensor holding ``index_text(index)``, zlib-compressed as to_bytes does."""
    return uint8_tensor(zlib.compress(index_text(index), 9))


@dataclass
class Parts:
    """A valid artifact taken apart by the codec (``artifact.parse``), to be edited and re-encoded."""

    meta: dict[str, str]
    tensors: dict[str, torch.Tensor]
    index: Any  # {"manifest": [...], "dense": [...]}; anything else is compressed verbatim as the index


def edit(data: bytes, fn: Callable[[Parts], None], *, fix_integrity: bool = True) -> bytes:
    """``data`` parsed, edited in place by ``fn`` and encoded again (integrity resealed unless
    ``fix_integrity`` is false). An edit of the ``index`` tensor itself is written as it is."""
    art = artifact.parse(data)
    original = {"manifest": art.manifest, "dense": art.dense}
    stored_index = art.tensors["index"].clone()
    parts = Parts(dict(art.metadata), {k: v.clone() for k, v in art.tensors.items()}, copy.deepcopy(original))
    fn(parts)
    art.metadata, art.tensors = parts.meta, parts.tensors
    index: bytes | torch.Tensor | bool = True
    new_index = parts.tensors.get("index")
    if new_index is None:
        index = False
    elif new_index.dtype != stored_index.dtype or not torch.equal(new_index, stored_index):
        index = new_index  # the index tensor itself was edited: written as it is
    elif isinstance(parts.index, dict) and set(parts.index) == {"manifest", "dense"}:
        art.manifest, art.dense = parts.index["manifest"], parts.index["dense"]
    elif index_text(parts.index) != index_text(original):  # not ==, since 54.0 == 54 but not in JSON
        index = zlib.compress(index_text(parts.index), 9)
    return artifact.encode(art, seal=fix_integrity, index=index)


def rewrite(data: bytes, *, meta: dict[str, str] | None = None, drop_meta: tuple[str, ...] = (),
            tensors: dict[str, torch.Tensor | None] | None = None, fix_integrity: bool = True) -> bytes:
    """A valid artifact with metadata / tensors edited (``None`` deletes a tensor), integrity recomputed."""
    def fn(p: Parts) -> None:
        p.meta.update(meta or {})
        for k in drop_meta:
            p.meta.pop(k, None)
        for k, v in (tensors or {}).items():
            if v is None:
                p.tensors.pop(k, None)
            else:
                p.tensors[k] = v
    return edit(data, fn, fix_integrity=fix_integrity)


def edit_json(data: bytes, key: str, fn: Callable[[Any], Any]) -> bytes:
    """Rewrite metadata field ``key`` (a JSON string) through ``fn``; a str result is used verbatim."""
    value = fn(json.loads(container_header(data)["__metadata__"][key]))
    return rewrite(data, meta={key: value if isinstance(value, str) else json.dumps(value)})


def mask_chunks(p: Parts) -> dict[str, torch.Tensor]:
    """Each masked weight's payload, cut from the ``masks`` tensor by the manifest's ``bytes``."""
    out, start = {}, 0
    for e in p.index["manifest"]:
        out[e["name"]] = p.tensors["masks"][start:start + e["bytes"]].clone()
        start += e["bytes"]
    return out


def dense_entries(p: Parts) -> list[list[Any]]:
    """``[name, kind, tensor]`` for every entry of the dense index, in order."""
    out, offsets = [], {}
    for name, kind, dtype, shape in p.index["dense"]:
        key, n = f"{kind}s.{dtype}", math.prod(shape)
        start = offsets.get(key, 0)
        out.append([name, kind, p.tensors[key][start:start + n].reshape(shape).clone()])
        offsets[key] = start + n
    return out


def set_dense(p: Parts, entries: list[list[Any]]) -> None:
    """Rebuild the dense index and the flat ``params.*`` / ``buffers.*`` tensors the way to_bytes packs them."""
    for k in [k for k in p.tensors if k.startswith(("params.", "buffers."))]:
        del p.tensors[k]
    groups: dict[str, list[torch.Tensor]] = {}
    p.index["dense"] = []
    for name, kind, t in entries:
        dtype = str(t.dtype).removeprefix("torch.")
        p.index["dense"].append([name, kind, dtype, list(t.shape)])
        groups.setdefault(f"{kind}s.{dtype}", []).append(t.reshape(-1))
    p.tensors.update({k: torch.cat(v) for k, v in groups.items()})


def raw_container(header: Any, body: bytes = b"") -> bytes:
    """A safetensors-shaped file with an arbitrary JSON header (8-byte length, header padded to 8)."""
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + body


def same_artifact(a: bytes, b: bytes) -> bool:
    """Equal content (safetensors writes the metadata in hash-map order, so bytes may differ between saves)."""
    x, y = artifact.parse(a), artifact.parse(b)
    return x.metadata == y.metadata and x.tensors.keys() == y.tensors.keys() and all(
        x.tensors[k].dtype == y.tensors[k].dtype and torch.equal(x.tensors[k], y.tensors[k]) for k in x.tensors)


# Edits, each a function of the artifact bytes.


def _index(fn: Callable[[Any], Any]) -> Callable[[bytes], bytes]:
    """The decoded index replaced by ``fn(index)`` (a str or bytes result is compressed verbatim)."""
    def apply(p: Parts) -> None:
        p.index = fn(copy.deepcopy(p.index))
    return lambda d: edit(d, apply)


def _raw_index(fn: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """The index tensor's (compressed) bytes replaced by ``fn(bytes)``."""
    def apply(p: Parts) -> None:
        p.tensors["index"] = uint8_tensor(fn(p.tensors["index"].numpy().tobytes()))
    return lambda d: edit(d, apply)


def _manifest(fn: Callable[[list[dict[str, Any]]], Any]) -> Callable[[bytes], bytes]:
    return _index(lambda i: {**i, "manifest": fn(i["manifest"])})


def _entry(i: int, **fields: Any) -> Callable[[bytes], bytes]:
    def fn(m: list[dict[str, Any]]) -> list[dict[str, Any]]:
        m[i].update(fields)
        return m
    return _manifest(fn)


def _dense_index(fn: Callable[[list[list[Any]]], Any]) -> Callable[[bytes], bytes]:
    """The dense index edited alone (the flat tensors are left as they are)."""
    return _index(lambda i: {**i, "dense": fn(i["dense"])})


def _dense_field(name: str, pos: int, value: Any) -> Callable[[bytes], bytes]:
    def fn(dense: list[list[Any]]) -> list[list[Any]]:
        for e in dense:
            if e[0] == name:
                e[pos] = value
        return dense
    return _dense_index(fn)


def _dense(fn: Callable[[list[list[Any]]], None]) -> Callable[[bytes], bytes]:
    """``fn`` edits the ``[name, kind, tensor]`` list in place; index and flat tensors are repacked from it."""
    def apply(p: Parts) -> None:
        entries = dense_entries(p)
        fn(entries)
        set_dense(p, entries)
    return lambda d: edit(d, apply)


def _dense_tensor(name: str, value: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[bytes], bytes]:
    """Dense tensor ``name`` replaced by ``value(it)`` (``None`` drops it), consistently repacked."""
    def fn(entries: list[list[Any]]) -> None:
        for e in entries:
            if e[0] == name:
                e[2] = value(e[2])
        entries[:] = [e for e in entries if e[2] is not None]
    return _dense(fn)


def _tensor(name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[bytes], bytes]:
    """Tensor ``name`` replaced by ``fn(it)`` (``None`` deletes it); nothing else changes."""
    def apply(p: Parts) -> None:
        t = fn(p.tensors[name].clone())
        if t is None:
            del p.tensors[name]
        else:
            p.tensors[name] = t
    return lambda d: edit(d, apply)


def _mask_chunk(fn: Callable[[torch.Tensor], torch.Tensor], name: str = "0.weight", *,
                fix_bytes: bool = True) -> Callable[[bytes], bytes]:
    """One weight's payload inside ``masks`` replaced by ``fn(it)``; its manifest ``bytes`` follows unless
    ``fix_bytes`` is false (then the ``masks`` length disagrees with the manifest)."""
    def apply(p: Parts) -> None:
        chunks = mask_chunks(p)
        chunks[name] = fn(chunks[name])
        p.tensors["masks"] = torch.cat(list(chunks.values()))
        if fix_bytes:
            for e in p.index["manifest"]:
                if e["name"] == name:
                    e["bytes"] = chunks[name].numel()
    return lambda d: edit(d, apply)


def _recode_mask(fn: Callable[[np.ndarray], np.ndarray], name: str = "0.weight", *,
                 kept: Callable[[int], int] | None = None) -> Callable[[bytes], bytes]:
    """Weight ``name``'s mask decoded, changed by ``fn`` and re-encoded validly in the artifact's own coding
    (the manifest's ``bytes`` follows; its ``kept`` becomes ``kept(popcount)`` if given, else stays)."""
    def apply(p: Parts) -> None:
        coding = p.meta["coding"]
        entry = next(e for e in p.index["manifest"] if e["name"] == name)
        count = math.prod(entry["shape"])
        chunks = mask_chunks(p)
        data = chunks[name].numpy()
        if coding == "packed":
            bits = mask_coding.unpack_bits(data, count)
        elif coding == "entropy":
            bits = mask_coding.decode_entropy(data, count, entry["kept"])
        else:
            bits = mask_coding.decode_context(data, count, entry["kept"], entry["shape"][0],
                                              entry.get("model", "order0"))
        bits = fn(bits.copy())
        ones = int(bits.sum())
        if coding == "packed":
            payload = mask_coding.pack_bits(bits)
        elif coding == "entropy":
            payload = mask_coding.encode_entropy(bits, ones)
        else:
            payload, model = mask_coding.encode_context(bits, ones, entry["shape"][0])
            entry.pop("model", None)
            if model != "order0":
                entry["model"] = model
        chunks[name] = uint8_tensor(payload.tobytes())
        p.tensors["masks"] = torch.cat(list(chunks.values()))
        entry["bytes"] = len(payload)
        if kept is not None:
            entry["kept"] = kept(ones)
    return lambda d: edit(d, apply)


def _flip_first(value: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Flip the first mask element that is ``value`` (one more kept if False, one fewer if True)."""
    def fn(bits: np.ndarray) -> np.ndarray:
        bits[int(np.flatnonzero(bits == value)[0])] = not value
        return bits
    return fn


def _config(**fields: Any) -> Callable[[bytes], bytes]:
    return lambda d: edit_json(d, "config", lambda c: {**c, **fields})


def _old_layout(data: bytes) -> bytes:
    """The same model in the layout before the index: per-layer ``mask/`` ``prototype/`` ``param/``
    ``buffer/`` tensors and a JSON ``manifest`` metadata field (integrity computed the same way)."""
    def apply(p: Parts) -> None:
        tensors = {f"mask/{k}": v for k, v in mask_chunks(p).items()}
        if "prototype" in p.tensors:
            tensors["prototype/0"] = p.tensors["prototype"]
        tensors.update({f"{kind}/{name}": t for name, kind, t in dense_entries(p)})
        p.meta["manifest"] = json.dumps([{k: e[k] for k in ("name", "shape", "kept")} for e in p.index["manifest"]])
        p.tensors.clear()
        p.tensors.update(tensors)
    return edit(data, apply)


def _zlib_stream(head: bytes, fill: bytes, size: int) -> bytes:
    """A valid zlib stream of ``head`` then ``fill`` bytes, ``size`` bytes in all, built without ever holding
    them: fully flushed (self-contained, byte-aligned) deflate segments of 1 MiB of ``fill`` are repeated."""
    block = fill * (1 << 20)
    count, rest = divmod(size - len(head), len(block))
    c = zlib.compressobj(9)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    segment = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    assert count > 1 and c.compress(block) + c.flush(zlib.Z_FULL_FLUSH) == segment
    adler = zlib.adler32(head)
    for _ in range(count):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(block[:rest], adler)
    return first + segment * count + (c.compress(block[:rest]) + c.flush())[:-4] + adler.to_bytes(4, "big")


# ------------------------------------------------------------------------------------- positive controls


@pytest.mark.parametrize(("cfg", "coding", "storage"), VARIANTS, ids=VARIANT_IDS)
def test_valid_artifact_loads_exactly(tmp_path: Path, cfg: str, coding: str, storage: str) -> None:
    path = pemn.save(trained(cfg), tmp_path / "ok.pemn", coding=coding, prototype=storage)
    assert same_artifact(path.read_bytes(), artifact_bytes(cfg, coding, storage))
    assert_loads_exactly(path, cfg)
    # into a model already converted with the same config, too
    assert_loads_exactly(path, cfg, pemn.convert_(make_model(), CONFIGS[cfg]))


def test_identity_edits_are_valid(tmp_path: Path) -> None:
    """The editing helpers themselves produce loadable, identical files, so failures below come from the edit."""
    identities = {
        "rewrite": rewrite, "index": _index(lambda i: i), "raw_index": _raw_index(lambda r: r),
        "index_recompressed": _raw_index(lambda r: compress_index(json.loads(zlib.decompress(r))).numpy().tobytes()),
        "dense_repacked": _dense(lambda entries: None), "mask_chunk": _mask_chunk(lambda t: t),
        "mask_chunk_last": _mask_chunk(lambda t: t, "4.weight"), "mask_recoded": _recode_mask(lambda b: b),
        "masks": _tensor("masks", lambda t: t),
    }
    for cfg, coding, storage in VARIANTS:
        data = artifact_bytes(cfg, coding, storage)
        for name, fn in identities.items():
            assert same_artifact(fn(data), data), name
        path = tmp_path / f"{cfg}-{coding}-{storage}.pemn"
        path.write_bytes(rewrite(data, meta={"note": "extra metadata is ignored"}))
        assert_loads_exactly(path, cfg)
    assert zlib.decompress(_zlib_stream(b"", b"\0", 3 << 20)) == bytes(3 << 20)
    assert zlib.decompress(_zlib_stream(b"[1]", b" ", (3 << 20) + 5)) == b"[1]" + b" " * ((3 << 20) + 2)


@pytest.mark.parametrize(("first", "target_len"), [(b"\x80", None), (b"PK", 0x4B50)], ids=["0x80", "PK"])
def test_valid_artifact_whose_header_length_looks_like_pickle_or_zip(tmp_path: Path, first: bytes,
                                                                     target_len: int | None) -> None:
    """Regression: a valid artifact whose header length starts with byte 0x80 (1 in 32 artifacts) or
    "PK" was rejected as a pickle / zip. Pad the metadata until the header length has that prefix."""
    data = artifact_bytes()
    base = header_len(data)
    start = max(0, (target_len or 0) - base - 64)
    for pad in range(start, start + 70000):
        candidate = rewrite(data, meta={"note": "x" * pad})
        if candidate.startswith(first):
            break
    else:
        pytest.fail("could not build the artifact")
    assert candidate[8:9] == b"{"
    path = tmp_path / "looks-like-pickle.pemn"
    path.write_bytes(candidate)
    assert_loads_exactly(path, "rp")


# ------------------------------------------------------------------------------------------- truncation


def _cut_points(data: bytes) -> dict[str, int]:
    h = header_len(data)
    index, masks = tensor_span(data, "index"), tensor_span(data, "masks")
    return {
        "empty": 0, "1": 1, "7": 7, "8": 8, "9": 9, "10": 10,
        "header_middle": 8 + h // 2, "header_last_byte_missing": 8 + h - 1, "header_only": 8 + h,
        "data_first_byte": 8 + h + 1, "data_middle": (8 + h + len(data)) // 2,
        "inside_index": (index[0] + index[1]) // 2, "inside_masks": (masks[0] + masks[1]) // 2,
        "last_byte_missing": len(data) - 1,
    }


@pytest.mark.parametrize("cut", [*_cut_points(artifact_bytes()), "none (positive control)"])
@pytest.mark.parametrize("coding", artifact.CODINGS)
def test_truncated_file(tmp_path: Path, coding: str, cut: str) -> None:
    data = artifact_bytes("rp", coding)
    if cut.startswith("none"):
        (tmp_path / "model.pemn").write_bytes(data)
        assert_loads_exactly(tmp_path / "model.pemn", "rp")
        return
    expect_load_error(tmp_path, data[:_cut_points(data)[cut]], r"truncated|too short|corrupt|not valid JSON")


@pytest.mark.parametrize(("cfg", "coding", "storage"), VARIANTS, ids=VARIANT_IDS)
def test_every_truncation_is_a_format_error(cfg: str, coding: str, storage: str) -> None:
    data = artifact_bytes(cfg, coding, storage)
    for n in range(len(data)):
        with pytest.raises(pemn.FormatError, match=DAMAGE):
            artifact.parse(data[:n])


# -------------------------------------------------------------------------------------------- bit flips


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


# Every bit of every byte of these variants (each coding with each prototype storage) is flipped...
FULL_SWEEP = [("rp", "packed", "values"), ("mask", "packed", "seed"), ("mask", "entropy", "values"),
              ("mp_rand", "entropy", "seed")]
# ...and of the other variants, every bit of every 3rd byte (from a different start in each) -- still all
# header fields and every tensor, since none is shorter than 3 bytes.
SAMPLE_STEP = 3


@pytest.mark.parametrize(("cfg", "coding", "storage"), VARIANTS, ids=VARIANT_IDS)
def test_every_single_bit_flip_is_a_format_error(cfg: str, coding: str, storage: str) -> None:
    """All 8 bits of every byte (header length, JSON metadata, tensor entries, padding, each tensor's data)."""
    data = artifact_bytes(cfg, coding, storage)
    artifact.parse(data)  # positive control
    full = (cfg, coding, storage) in FULL_SWEEP
    positions = range(len(data)) if full else range(VARIANTS.index((cfg, coding, storage)) % SAMPLE_STEP,
                                                    len(data), SAMPLE_STEP)
    survivors, wrong = [], []
    for pos in positions:
        for bit in range(8):
            try:
                artifact.parse(_flip(data, pos, bit))
            except pemn.FormatError as e:
                if not DAMAGE.search(str(e)):
                    wrong.append((pos, bit, str(e)))
            else:
                survivors.append((pos, bit))
    assert not survivors, f"bit flips that parsed as a valid artifact: {survivors[:20]}"
    assert not wrong, f"unhelpful messages: {wrong[:5]}"


def _flip_positions(data: bytes) -> dict[str, int]:
    h = header_len(data)
    header = data[:8 + h]
    masks_entry = header.find(b'"masks":')
    assert masks_entry > 0
    index, masks = tensor_span(data, "index"), tensor_span(data, "masks")
    return {
        "header_length_low": 0, "header_length_high": 7, "json_open_brace": 8,
        "metadata_key": header.find(b'"__metadata__"') + 3, "integrity_value": header.find(b'"integrity"') + 20,
        "config_value": header.find(b'"config"') + 30, "coding_value": header.find(b'"coding"') + 11,
        "tensor_entry_name": masks_entry + 3, "tensor_entry_dtype": header.find(b'"U8"', masks_entry) + 1,
        "tensor_entry_offsets": header.find(b"data_offsets", masks_entry) + 16, "header_padding": 8 + h - 1,
        "data_first": 8 + h, "data_middle": (8 + h + len(data)) // 2, "data_last": len(data) - 1,
        "index_zlib_header": index[0], "index_middle": (index[0] + index[1]) // 2, "index_adler32": index[1] - 1,
        "masks_first": masks[0], "masks_last": masks[1] - 1,
        "prototype": tensor_span(data, "prototype")[0] + 2, "params": tensor_span(data, "params.float32")[0] + 5,
        "buffers_int64": tensor_span(data, "buffers.int64")[0],
    }


@pytest.mark.parametrize("where", [*_flip_positions(artifact_bytes()), "none (positive control)"])
@pytest.mark.parametrize("coding", artifact.CODINGS)
def test_bit_flip_load_leaves_model_unchanged(tmp_path: Path, coding: str, where: str) -> None:
    data = artifact_bytes("rp", coding)
    if where.startswith("none"):
        (tmp_path / "model.pemn").write_bytes(data)
        assert_loads_exactly(tmp_path / "model.pemn", "rp")
        return
    pos = _flip_positions(data)[where]
    for bit in (0, 3, 7):
        expect_load_error(tmp_path, _flip(data, pos, bit), DAMAGE.pattern)
        # ... and into a model already converted with the same config (its bank and scores stay as they are)
        expect_load_error(tmp_path, _flip(data, pos, bit), DAMAGE.pattern,
                          model=pemn.convert_(make_model(), CONFIGS["rp"]))


# ---------------------------------------------------------------------------------------- foreign files


class _Evil:
    """A pickle that creates a marker file when (and only when) it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.pemn", artifact_bytes())
    return buf.getvalue()


def _torch_save(obj: Any, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def _safetensors_file(tmp_path: Path, metadata: dict[str, str] | None) -> bytes:
    p = tmp_path / "plain.safetensors"
    save_file({"weight": torch.ones(3, 2), "bias": torch.zeros(3)}, str(p), metadata=metadata)
    return p.read_bytes()


FOREIGN: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "empty": (lambda t: b"", r"too short\D*\b0 bytes"),
    "one_byte": (lambda t: b"{", r"too short"),
    "random_4k_a": (lambda t: random.Random(1).randbytes(4096), r"not a pemn artifact|pickle"),
    "random_4k_b": (lambda t: random.Random(2).randbytes(4096), r"not a pemn artifact|pickle"),
    "random_64": (lambda t: random.Random(3).randbytes(64), r"not a pemn artifact|pickle"),
    "zeros": (lambda t: bytes(1024), r"not a pemn artifact|not valid JSON"),
    "safetensors_without_metadata": (lambda t: _safetensors_file(t, None), r"no metadata"),
    "safetensors_foreign_metadata": (lambda t: _safetensors_file(t, {"format": "pt"}), r"not a pemn artifact"),
    "safetensors_header_not_object": (lambda t: raw_container([1, 2, 3]), r"no metadata"),
    "json_file": (lambda t: json.dumps({"format": "pemn", "format_version": "1"}).encode(), r"not a pemn"),
    "text_file": (lambda t: b"hello, this is not a model\n" * 10, r"not a pemn artifact"),
    "npy_file": (lambda t: _npy_bytes(), r"not a pemn artifact"),
    "zip_file": (lambda t: _zip_bytes(), r"not a pemn artifact"),
    "deeply_nested_json_header": (lambda t: _nested_header(), r"not valid JSON"),
    "header_length_2_pow_63": (lambda t: (2**63).to_bytes(8, "little") + b"{}", r"header length"),
}


def _npy_bytes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(10))
    return buf.getvalue()


def _nested_header() -> bytes:
    body = b"[" * 200_000
    return len(body).to_bytes(8, "little") + body


@pytest.mark.parametrize("kind", [*FOREIGN, "valid (positive control)"])
def test_foreign_file(tmp_path: Path, kind: str) -> None:
    if kind.startswith("valid"):
        (tmp_path / "model.pemn").write_bytes(artifact_bytes())
        assert_loads_exactly(tmp_path / "model.pemn", "rp")
        return
    make, match = FOREIGN[kind]
    expect_load_error(tmp_path, make(tmp_path), match)


PICKLES: dict[str, Callable[[_Evil], bytes]] = {
    **{f"pickle_protocol_{p}": functools.partial(lambda p, o: pickle.dumps(o, protocol=p), p) for p in range(6)},
    "torch_save_zip": lambda o: _torch_save(o),
    "torch_save_legacy": lambda o: _torch_save(o, _use_new_zipfile_serialization=False),
    "torch_save_state_dict": lambda o: _torch_save({"evil": o, "w": torch.ones(2)}),
}


@pytest.mark.parametrize("kind", PICKLES)
def test_pickle_is_refused_without_unpickling(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "UNPICKLED"
    data = PICKLES[kind](_Evil(marker))
    assert not marker.exists()
    msg = expect_load_error(tmp_path, data, r"not a pemn artifact|pickle")
    if data[:1] == b"\x80" or data[:2] == b"PK":  # protocols 0/1 have no magic bytes to recognise
        assert "pickle" in msg, msg
    assert not marker.exists(), "pemn.load unpickled the file"


def test_evil_pickle_is_live(tmp_path: Path) -> None:
    """Positive control: the pickles above really do create the marker when unpickled."""
    marker = tmp_path / "UNPICKLED"
    pickle.loads(pickle.dumps(_Evil(marker))).close()
    assert marker.exists()


# ------------------------------------------------------------------------------------------ format version


@pytest.mark.parametrize(("version", "match"), [
    ("99", r"newer pemn.*upgrade"),
    ("5", r"newer pemn"),
    ("4", r"multi-task index"),  # relabelled 4: a single-task index is not a multi-task one
    ("3", None),  # relabelled 3: the codec lays it out as version 3 (metadata in the dictionary-compressed index)
    ("2", None),  # the codec lays a file relabelled 2 out as version 2 (its metadata in the index): it loads
    ("0", r"unknown format version 0"),
    ("", r"invalid format_version"),
    ("1.0", r"invalid format_version"),
    ("v1", r"invalid format_version"),
    ("-1", r"invalid format_version"),
    (" 1", r"invalid format_version"),
    ("\u00b2", r"invalid format_version"),  # str.isdigit() is True, int() fails
    ("1" * 5000, r"invalid format_version"),  # int() refuses more than 4300 digits
    (None, r"invalid format_version None"),
    ("1", None),  # positive control
])
def test_format_version(tmp_path: Path, version: str | None, match: str | None) -> None:
    data = artifact_bytes("rp", "entropy", "seed")
    edited = rewrite(data, drop_meta=("format_version",)) if version is None else \
        rewrite(data, meta={"format_version": version})
    if match is None:
        (tmp_path / "model.pemn").write_bytes(edited)
        assert_loads_exactly(tmp_path / "model.pemn", "rp")
        return
    expect_load_error(tmp_path, edited, match)


@pytest.mark.parametrize(("fmt", "match"), [("pemn2", r"format='pemn2'"), ("PEMN", r"not a pemn artifact"),
                                            (None, r"format=None")])
def test_format_field(tmp_path: Path, fmt: str | None, match: str) -> None:
    data = artifact_bytes()
    edited = rewrite(data, drop_meta=("format",)) if fmt is None else rewrite(data, meta={"format": fmt})
    expect_load_error(tmp_path, edited, match)


# -------------------------------------------------------------------------------- architecture mismatch


ARCH: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "missing_linear": (lambda: make_model(drop_linear=True), r"4\.weight"),
    "extra_linear": (lambda: make_model(extra=nn.Linear(3, 3)), r"5\.(weight|bias)"),
    "extra_linear_no_bias": (lambda: make_model(extra=nn.Linear(3, 3, bias=False)), r"5\.weight"),
    "extra_batchnorm": (lambda: make_model(extra=nn.BatchNorm1d(3)), r"5\.(weight|bias|running_mean)"),
    "conv_out_channels": (lambda: make_model(conv_out=5), r"0\.weight.*\(5, 3, 3, 3\).*\(4, 3, 3, 3\)"),
    "linear_out_features": (lambda: make_model(out=5), r"4\.weight.*\(5, 64\).*\(3, 64\)"),
    "batchnorm_size": (lambda: make_model(bn=5), r"1\.(weight|bias|running_mean|running_var)"),
    "conv_without_bias": (lambda: make_model(conv_bias=False), r"0\.bias"),
    "conv1d_instead_of_conv2d": (lambda: nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                                                       nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)), r"0\.weight"),
    "renamed_layers": (lambda: nn.Sequential(OrderedDict(zip(["conv", "bn", "act", "flat", "fc"], make_model()))),
                       r"0\.weight|4\.weight"),
    "unrelated_model": (lambda: nn.Sequential(nn.Linear(2, 2)), r"architecture mismatch"),
    "converted_with_other_config": (lambda: pemn.convert_(make_model(), CONFIGS["mask"]), r"another config"),
    "converted_other_layers": (lambda: pemn.convert_(make_model(), pemn.PEMNConfig(strategy="rp", ratio=0.1,
                                                                                  targets=("Linear",))),
                               r"another config|architecture mismatch"),
}


@pytest.mark.parametrize("kind", [*ARCH, "same_architecture (positive control)"])
@pytest.mark.parametrize("storage", artifact.PROTOTYPE_STORAGE)
def test_architecture_mismatch(tmp_path: Path, storage: str, kind: str) -> None:
    data = artifact_bytes("rp", "packed", storage)
    if kind.startswith("same"):
        (tmp_path / "model.pemn").write_bytes(data)
        assert_loads_exactly(tmp_path / "model.pemn", "rp")
        return
    factory, match = ARCH[kind]
    expect_load_error(tmp_path, data, match, model=factory(), exc=pemn.ArchitectureMismatchError)


# ------------------------------------------------------------------------------------ prototype mismatch


def _perturb_prototype(t: torch.Tensor) -> torch.Tensor:
    t[0] += 1.0
    return t


PROTO: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    "values_sha_edited": ("values", lambda d: rewrite(d, meta={"prototype_sha256": "0" * 64}), r"SHA-256"),
    "values_tensor_edited": ("values", _tensor("prototype", _perturb_prototype), r"SHA-256"),
    "values_tensor_reversed": ("values", _tensor("prototype", lambda t: t.flip(0)), r"SHA-256"),
    "seed_sha_edited": ("seed", lambda d: rewrite(d, meta={"prototype_sha256": "f" * 64}), r"seed .*SHA-256"),
    "seed_config_seed_edited": ("seed", lambda d: edit_json(d, "config", lambda c: {**c, "seed": c["seed"] + 1}),
                                r"regenerated from seed \d+"),
    "seed_config_init_edited": ("seed", lambda d: edit_json(d, "config", lambda c: {**c, "init": "kaiming_uniform"}),
                                r"regenerated from seed"),
}


@pytest.mark.parametrize("kind", [*PROTO, "untouched (positive control)"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_prototype_mismatch(tmp_path: Path, cfg: str, kind: str) -> None:
    if kind.startswith("untouched"):
        for storage in artifact.PROTOTYPE_STORAGE:
            (tmp_path / "model.pemn").write_bytes(artifact_bytes(cfg, "entropy", storage))
            assert_loads_exactly(tmp_path / "model.pemn", cfg)
        return
    storage, edit_fn, match = PROTO[kind]
    data = edit_fn(artifact_bytes(cfg, "entropy", storage))
    expect_load_error(tmp_path, data, match, exc=pemn.PrototypeMismatchError)
    converted = pemn.convert_(make_model(), CONFIGS[cfg])
    if "config" in kind:  # the converted model's config no longer matches the artifact's: caught first
        expect_load_error(tmp_path, data, r"another config", exc=pemn.ArchitectureMismatchError, model=converted)
    else:
        expect_load_error(tmp_path, data, match, exc=pemn.PrototypeMismatchError, model=converted)


# ------------------------------------------------------------- header and tensor edits (integrity recomputed)


def _set_padding_bit(t: torch.Tensor) -> torch.Tensor:
    t[-1] |= 0x80  # 0.weight has 108 elements: the low 4 bits of the last byte are used, the high 4 are padding
    return t


def _shift_bytes(m: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One byte moved from the first weight's payload to the second's: same total, wrong split."""
    m[0]["bytes"] -= 1
    m[1]["bytes"] += 1
    return m


def _swap_bytes(m: list[dict[str, Any]]) -> list[dict[str, Any]]:
    m[0]["bytes"], m[1]["bytes"] = m[1]["bytes"], m[0]["bytes"]
    return m


def _append_duplicate(entries: list[list[Any]]) -> None:
    entries.append([entries[0][0], entries[0][1], entries[0][2].clone()])


BIG = 10**30
KEPT_0 = pemn.kept_count(0.5, 108)  # the rp config keeps half: 0.weight has 108 weights, 4.weight 192
HEADER_EDITS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # manifest: kept is exactly kept_count(config.keep, numel); counts, signs, types, structure
    "kept_huge": (_entry(0, kept=BIG), r"bad manifest entry"),
    "kept_above_numel": (_entry(0, kept=109), r"bad manifest entry"),
    "kept_zero": (_entry(0, kept=0), r"bad manifest entry"),
    "kept_negative": (_entry(0, kept=-KEPT_0), r"bad manifest entry"),
    "kept_string": (_entry(0, kept=str(KEPT_0)), r"bad manifest entry"),
    "kept_float": (_entry(0, kept=float(KEPT_0)), r"bad manifest entry"),
    "kept_nan": (_entry(0, kept=float("nan")), r"bad manifest entry"),
    "kept_bool": (_entry(0, kept=True), r"bad manifest entry"),
    "kept_null": (_entry(0, kept=None), r"bad manifest entry"),
    "kept_missing": (_manifest(lambda m: [{k: v for k, v in m[0].items() if k != "kept"}, m[1]]),
                     r"bad manifest entry"),
    "kept_off_by_one": (_entry(0, kept=KEPT_0 - 1), rf"bad manifest entry.*'kept': {KEPT_0 - 1}\b"),
    "kept_of_another_keep": (_entry(0, kept=pemn.kept_count(0.6, 108)), r"bad manifest entry.*'kept': 65\b"),
    "shape_huge": (_entry(0, shape=[BIG, BIG, 3, 3], kept=1), r"bad manifest entry.*0\.weight"),
    "shape_dim_2_pow_40": (_entry(1, shape=[2**40, 1], kept=2**39), r"bad manifest entry.*4\.weight"),
    "shape_huge_numel": (_entry(1, shape=[2**39, 2**39], kept=2**77),
                         r"4\.weight is \(3, 64\) in the model but \(549755813888, 549755813888\)"),
    "shape_negative": (_entry(0, shape=[-4, 3, 3, 3]), r"bad manifest entry"),
    "shape_zero": (_entry(0, shape=[0, 3, 3, 3]), r"bad manifest entry"),
    "shape_float": (_entry(0, shape=[4.0, 3, 3, 3]), r"bad manifest entry"),
    "shape_bool": (_entry(0, shape=[True, 108], kept=KEPT_0), r"bad manifest entry"),
    "shape_string": (_entry(0, shape="4,3,3,3"), r"bad manifest entry"),
    "shape_empty": (_entry(0, shape=[]), r"bad manifest entry"),
    "shape_reordered": (_entry(0, shape=[3, 4, 3, 3]), r"0\.weight"),
    "name_int": (_entry(0, name=0), r"bad manifest entry"),
    "name_unknown_layer": (_entry(0, name="9.weight"), r"9\.weight"),
    "name_not_a_weight": (_entry(0, name="0.bias"), r"0\.bias"),
    "name_root": (_entry(0, name=""), r"architecture mismatch"),
    "entry_is_list": (_manifest(lambda m: [["0.weight", [4, 3, 3, 3], KEPT_0, 14], m[1]]), r"bad manifest entry"),
    "entry_extra_key": (_entry(0, note="x"), r"bad manifest entry"),
    "entry_duplicated": (_manifest(lambda m: [m[0], m[0], m[1]]), r"architecture mismatch|manifest"),
    "entries_swapped": (_manifest(lambda m: [m[1], m[0]]), r"architecture mismatch"),
    "entry_dropped": (_manifest(lambda m: [m[0]]), r"corrupt|architecture mismatch"),
    # manifest: each payload's length in the masks tensor
    "bytes_negative": (_entry(0, bytes=-14), r"bad manifest entry"),
    "bytes_string": (_entry(0, bytes="14"), r"bad manifest entry"),
    "bytes_float": (_entry(0, bytes=14.0), r"bad manifest entry"),
    "bytes_null": (_entry(0, bytes=None), r"bad manifest entry"),
    "bytes_missing": (_manifest(lambda m: [{k: v for k, v in m[0].items() if k != "bytes"}, m[1]]),
                      r"bad manifest entry"),
    "bytes_huge": (_entry(0, bytes=BIG), r"masks tensor does not match the manifest's sizes"),
    "bytes_zero": (_entry(0, bytes=0), r"masks tensor does not match the manifest's sizes"),
    "bytes_bool": (_entry(0, bytes=True), r"bad manifest entry|masks tensor does not match the manifest's sizes"),
    "bytes_one_more": (_entry(1, bytes=25), r"masks tensor does not match the manifest's sizes"),
    "bytes_shifted": (_manifest(_shift_bytes), r"corrupt mask for 0\.weight.*needs 14 bytes, got 13"),
    "bytes_swapped": (_manifest(_swap_bytes), r"corrupt mask for 0\.weight.*needs 14 bytes, got 24"),
    # the index: the manifest and dense lists, compressed
    "manifest_empty": (_manifest(lambda m: []), r"non-empty list"),
    "manifest_dict": (_manifest(lambda m: {"0.weight": m[0]}), r"non-empty list"),
    "manifest_null": (_manifest(lambda m: None), r"non-empty list"),
    "manifest_string": (_manifest(lambda m: json.dumps(m)), r"non-empty list"),
    "index_without_manifest": (_index(lambda i: {"dense": i["dense"]}), r"exactly a manifest and a dense list"),
    "index_without_dense": (_index(lambda i: {"manifest": i["manifest"]}), r"exactly a manifest and a dense list"),
    "index_extra_key": (_index(lambda i: {**i, "extra": []}), r"exactly a manifest and a dense list"),
    "index_is_list": (_index(lambda i: [i["manifest"], i["dense"]]), r"exactly a manifest and a dense list"),
    "index_is_null": (_index(lambda i: "null"), r"exactly a manifest and a dense list"),
    "index_not_json": (_index(lambda i: '{"manifest": [{"name": '), r"bad header field"),
    "index_deeply_nested": (_index(lambda i: "[" * 200_000), r"bad header field"),
    "index_not_utf8": (_index(lambda i: b'{"manifest": "\xff\xfe"}'), r"bad header field"),
    "index_uncompressed": (_raw_index(zlib.decompress), r"bad header field.*incorrect header check"),
    "index_raw_deflate": (_raw_index(lambda r: zlib.compress(zlib.decompress(r), wbits=-15)),
                          r"bad header field"),
    "index_gzip": (_raw_index(lambda r: zlib.compress(zlib.decompress(r), wbits=31)), r"bad header field"),
    "index_random_bytes": (_raw_index(lambda r: random.Random(4).randbytes(len(r))), r"bad header field"),
    "index_truncated": (_raw_index(lambda r: r[:-5]), r"bad header field.*truncated"),
    "index_zlib_header_only": (_raw_index(lambda r: r[:2]), r"bad header field.*truncated"),
    "index_empty": (_raw_index(lambda r: b""), r"bad header field.*truncated"),
    "index_adler32_flipped": (_raw_index(lambda r: r[:-1] + bytes([r[-1] ^ 1])), r"bad header field"),
    "index_trailing_junk": (_raw_index(lambda r: r + b"junk"), r"bad header field.*after"),
    "index_second_stream": (_raw_index(lambda r: r + zlib.compress(b"{}")), r"bad header field.*after"),
    "index_int32": (_tensor("index", lambda t: t.to(torch.int32)), r"bad header field.*1-D uint8"),
    "index_int8": (_tensor("index", lambda t: t.view(torch.int8)), r"bad header field.*1-D uint8"),
    "index_2d": (_tensor("index", lambda t: t.reshape(1, -1)), r"bad header field.*1-D uint8"),
    "index_missing": (_tensor("index", lambda t: None), r"bad header field \('index'\)"),
    "old_layout": (_old_layout, r"bad header field \('index'\)"),
    # the dense index, edited alone (params.float32 holds 0.bias, 1.weight, 1.bias, 4.bias: 4 + 4 + 4 + 3)
    "dense_shape_larger": (_dense_field("0.bias", 3, [5]), r"dense tensor 4\.bias does not fit params\.float32"),
    "dense_shape_smaller": (_dense_field("0.bias", 3, [3]), r"dense tensors do not match the dense index"),
    "dense_shape_huge_numel": (_dense_field("0.bias", 3, [2**39, 2**39]), r"dense tensor 0\.bias does not fit"),
    "dense_shape_huge": (_dense_field("0.bias", 3, [2**40]), r"bad dense index"),
    "dense_shape_negative": (_dense_field("0.bias", 3, [-4]), r"bad dense index"),
    "dense_shape_float": (_dense_field("0.bias", 3, [4.0]), r"bad dense index"),
    "dense_shape_bool": (_dense_field("0.bias", 3, [True, 4]), r"bad dense index"),
    "dense_shape_string": (_dense_field("0.bias", 3, "4"), r"bad dense index"),
    "dense_scalar_as_vector": (_dense_field("1.num_batches_tracked", 3, [1]),
                               r"1\.num_batches_tracked: artifact torch\.int64 \(1,\) vs model torch\.int64 \(\)"),
    "dense_dtype_other": (_dense_field("0.bias", 2, "float64"), r"dense tensor 0\.bias does not fit params\.float64"),
    "dense_dtype_unknown": (_dense_field("0.bias", 2, "float33"), r"0\.bias does not fit params\.float33"),
    "dense_dtype_int": (_dense_field("0.bias", 2, 32), r"bad dense index"),
    "dense_kind_unknown": (_dense_field("0.bias", 1, "weight"), r"bad dense index"),
    "dense_kind_swapped": (_dense_field("0.bias", 1, "buffer"), r"does not fit buffers\.float32"),
    "dense_name_int": (_dense_field("0.bias", 0, 0), r"bad dense index"),
    "dense_entry_short": (_dense_index(lambda dense: [e[:3] for e in dense]), r"bad dense index"),
    "dense_entry_dict": (_dense_index(lambda dense: [dict(enumerate(e)) for e in dense]), r"bad dense index"),
    "dense_entry_dropped": (_dense_index(lambda dense: dense[1:]), r"dense tensors do not match the dense index"),
    "dense_empty": (_dense_index(lambda dense: []), r"dense tensors do not match the dense index"),
    "dense_dict": (_dense_index(lambda dense: {e[0]: e[1:] for e in dense}), r"bad dense index"),
    "dense_null": (_dense_index(lambda dense: None), r"bad dense index"),
    # the flat dense tensors, edited alone
    "dense_group_longer": (_tensor("params.float32", lambda t: torch.cat([t, t[:1]])), r"do not match the dense index"),
    "dense_group_shorter": (_tensor("params.float32", lambda t: t[:-1].clone()), r"4\.bias does not fit"),
    "dense_group_2d": (_tensor("params.float32", lambda t: t.reshape(3, 5)), r"0\.bias does not fit params"),
    "dense_group_other_dtype": (_tensor("buffers.int64", lambda t: t.to(torch.int32)),
                                r"num_batches_tracked does not fit buffers\.int64"),
    "dense_group_missing": (_tensor("buffers.float32", lambda t: None), r"running_mean does not fit buffers\.float32"),
    "dense_group_extra": (lambda d: rewrite(d, tensors={"params.float64": torch.zeros(2, dtype=torch.float64)}),
                          r"dense tensors do not match the dense index"),
    "dense_group_extra_empty": (lambda d: rewrite(d, tensors={"buffers.bool": torch.zeros(0, dtype=torch.bool)}),
                                r"dense tensors do not match the dense index"),
    # dense parameters and buffers, consistently repacked: the model's own check names them
    "param_missing": (_dense_tensor("0.bias", lambda t: None), r"0\.bias"),
    "param_reshaped": (_dense_tensor("4.bias", lambda t: torch.zeros(5)), r"4\.bias"),
    "param_int": (_dense_tensor("1.weight", lambda t: t.to(torch.int64)), r"1\.weight"),
    "param_extra": (_dense(lambda e: e.append(["9.bias", "param", torch.zeros(3)])), r"9\.bias"),
    "param_masked_weight_as_dense": (_dense(lambda e: e.append(["0.weight", "param", torch.zeros(4, 3, 3, 3)])),
                                     r"0\.weight"),
    "param_listed_twice": (_dense(_append_duplicate), r"dense tensor 0\.bias listed twice"),
    "buffer_missing": (_dense_tensor("1.running_mean", lambda t: None), r"1\.running_mean"),
    "buffer_float_counter": (_dense_tensor("1.num_batches_tracked", lambda t: t.double()), r"num_batches_tracked"),
    "buffer_as_param": (_dense(lambda e: [x.__setitem__(1, "param") for x in e if x[0] == "1.running_var"]),
                        r"1\.running_var"),
    # config
    "config_unknown_key": (_config(colour="blue"), r"unknown PEMNConfig field.*colour"),
    "config_bad_strategy": (_config(strategy="magic"), r"strategy must be one of"),
    "config_bad_keep": (_config(keep=2.0), r"keep"),
    "config_negative_seed": (_config(seed=-1), r"seed"),
    "config_seed_string": (_config(seed="0"), r"seed"),
    "config_bad_ratio": (_config(ratio=0.0), r"ratio"),
    "config_bad_regex": (_config(targets=["("]), r"regex"),
    "config_other_ratio": (_config(ratio=0.2), r"prototype"),
    "config_other_strategy": (_config(strategy="mask", ratio=None), r"prototype"),
    "config_not_json": (lambda d: rewrite(d, meta={"config": "{strategy: rp"}), r"bad header field"),
    "config_list": (lambda d: rewrite(d, meta={"config": "[]"}), r"bad header field"),
    "config_deeply_nested": (lambda d: rewrite(d, meta={"config": "[" * 200_000}), r"bad header field"),
    "config_missing": (lambda d: rewrite(d, drop_meta=("config",)), r"bad header field.*config"),
    # coding / storage names
    "coding_unknown": (lambda d: rewrite(d, meta={"coding": "zip"}), r"unknown coding 'zip'"),
    "coding_empty": (lambda d: rewrite(d, meta={"coding": ""}), r"unknown coding ''"),
    "coding_swapped": (lambda d: rewrite(d, meta={"coding": "entropy"}), r"corrupt mask for"),
    "coding_swapped_to_packed": (lambda d: rewrite(d, meta={"coding": "packed"}), r"corrupt mask for 0\.weight"),
    "coding_missing": (lambda d: rewrite(d, drop_meta=("coding",)), r"bad header field.*coding"),
    # context coding: a manifest entry names its model ("rows", "rows-cols") only in a context-coded file; order 0
    # goes unnamed (one spelling per file)
    "model_key_in_packed": (_entry(0, model="rows"), r"bad manifest entry.*'model'"),
    "model_key_in_entropy": (_entry(0, model="rows"), r"bad manifest entry.*'model'"),
    "model_order0_named": (_entry(0, model="order0"), r"bad manifest entry.*'order0'"),
    "model_unknown": (_entry(0, model="columns"), r"bad manifest entry.*'columns'"),
    "model_null": (_entry(0, model=None), r"bad manifest entry"),
    "model_list": (_entry(0, model=["rows"]), r"bad manifest entry"),
    "model_switched_to_rows": (_entry(0, model="rows"), r"corrupt mask for 0\.weight.*context"),
    "model_switched_to_rows_cols": (_entry(1, model="rows-cols"), r"corrupt mask for 4\.weight.*context"),
    "storage_unknown": (lambda d: rewrite(d, meta={"prototype_storage": "none"}), r"prototype storage 'none'"),
    "integrity_missing": (lambda d: rewrite(d, drop_meta=("integrity",), fix_integrity=False), r"integrity"),
    "integrity_garbage": (lambda d: rewrite(d, meta={"integrity": "x"}, fix_integrity=False), r"integrity"),
    "integrity_stale": (lambda d: rewrite(d, meta={"pemn_version": "9.9"}, fix_integrity=False), r"integrity"),
    "integrity_stale_index": (lambda d: edit(d, lambda p: p.index["manifest"][0].update(kept=KEPT_0 - 1),
                                             fix_integrity=False), r"integrity"),
    # the masks tensor as a whole (manifest unchanged)
    "masks_int32": (_tensor("masks", lambda t: t.to(torch.int32)), r"masks tensor is missing or not 1-D uint8"),
    "masks_float": (_tensor("masks", lambda t: t.to(torch.float32)), r"masks tensor is missing or not 1-D uint8"),
    "masks_bool": (_tensor("masks", lambda t: t.to(torch.bool)), r"masks tensor is missing or not 1-D uint8"),
    "masks_int8": (_tensor("masks", lambda t: t.view(torch.int8)), r"masks tensor is missing or not 1-D uint8"),
    "masks_2d": (_tensor("masks", lambda t: t.reshape(2, -1)), r"masks tensor is missing or not 1-D uint8"),
    "masks_missing": (_tensor("masks", lambda t: None), r"masks tensor is missing or not 1-D uint8"),
    "masks_byte_short": (_tensor("masks", lambda t: t[:-1].clone()), r"masks tensor does not match the manifest"),
    "masks_byte_extra": (_tensor("masks", lambda t: torch.cat([t, torch.zeros(1, dtype=torch.uint8)])),
                         r"masks tensor does not match the manifest"),
    "masks_empty": (_tensor("masks", lambda t: t[:0].clone()), r"masks tensor does not match the manifest"),
    "mask_byte_short_bytes_stale": (_mask_chunk(lambda t: t[:-1].clone(), fix_bytes=False),
                                    r"masks tensor does not match the manifest"),
    # one weight's payload inside masks (its manifest bytes following it)
    "mask_byte_short": (_mask_chunk(lambda t: t[:-1].clone()), r"corrupt mask for 0\.weight.*bytes"),
    "mask_byte_extra": (_mask_chunk(lambda t: torch.cat([t, torch.zeros(1, dtype=torch.uint8)])),
                        r"corrupt mask for 0\.weight.*bytes"),
    "mask_empty": (_mask_chunk(lambda t: t[:0].clone()), r"corrupt mask for 0\.weight"),
    "mask_last_byte_short": (_mask_chunk(lambda t: t[:-1].clone(), "4.weight"), r"corrupt mask for 4\.weight.*bytes"),
    "mask_padding_bit": (_mask_chunk(_set_padding_bit), r"corrupt mask for 0\.weight.*padding"),
    "mask_one_more_kept": (_recode_mask(_flip_first(False)),
                           rf"corrupt mask for 0\.weight: {KEPT_0 + 1} kept, header says {KEPT_0}"),
    "mask_one_fewer_kept": (_recode_mask(_flip_first(True), "4.weight"),
                            r"corrupt mask for 4\.weight: 95 kept, header says 96"),
    # the prototype tensor (values storage)
    "prototype_float64": (_tensor("prototype", lambda t: t.double()), r"prototype is torch\.float64.*expected float32"),
    "prototype_float16": (_tensor("prototype", lambda t: t.half()), r"expected float32"),
    "prototype_short": (_tensor("prototype", lambda t: t[:-1].clone()), r"expected float32 \(20,\)"),
    "prototype_long": (_tensor("prototype", lambda t: torch.cat([t, t[:1]])), r"expected float32 \(20,\)"),
    "prototype_2d": (_tensor("prototype", lambda t: t.reshape(4, 5)), r"prototype is torch\.float32 \(4, 5\)"),
    "prototype_missing": (_tensor("prototype", lambda t: None), r"prototype is missing"),
    "storage_seed_switched_to_values": (lambda d: rewrite(d, meta={"prototype_storage": "values"}),
                                        r"prototype is missing"),
    "storage_values_switched_to_seed": (lambda d: rewrite(d, meta={"prototype_storage": "seed"}),
                                        r"prototype values in a seed-only artifact"),
}
# The entries above that need a particular variant of the artifact.
HEADER_VARIANT = {k: ("rp", "packed", "values") for k in HEADER_EDITS}
HEADER_VARIANT["coding_swapped"] = ("mask", "packed", "values")
HEADER_VARIANT["coding_swapped_to_packed"] = ("rp", "entropy", "values")
HEADER_VARIANT["storage_seed_switched_to_values"] = ("rp", "packed", "seed")
for _kind in ("model_order0_named", "model_unknown", "model_null", "model_list", "model_switched_to_rows",
              "model_switched_to_rows_cols"):
    HEADER_VARIANT[_kind] = ("rp", "context", "values")
HEADER_VARIANT["model_key_in_entropy"] = ("rp", "entropy", "values")


@pytest.mark.parametrize("kind", [*HEADER_EDITS, "identity (positive control)"])
def test_header_and_tensor_edits(tmp_path: Path, kind: str) -> None:
    if kind.startswith("identity"):
        (tmp_path / "model.pemn").write_bytes(rewrite(artifact_bytes()))
        assert_loads_exactly(tmp_path / "model.pemn", "rp")
        return
    edit_fn, match = HEADER_EDITS[kind]
    cfg, coding, storage = HEADER_VARIANT[kind]
    data = edit_fn(artifact_bytes(cfg, coding, storage))
    expect_load_error(tmp_path, data, match)
    if not kind.startswith("config"):  # a config edit is (rightly) reported as "converted with another config"
        # the converted-model path checks names and shapes together, without naming the layer
        expect_load_error(tmp_path, data, rf"{match}|masked layers differ",
                          model=pemn.convert_(make_model(), CONFIGS[cfg]))


def _random_entropy_mask(t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(5).integers(0, 256, t.numel(), dtype=np.uint8))


@pytest.mark.parametrize(("kind", "edit_fn"), [
    ("random_bytes", _random_entropy_mask),
    ("last_word_dropped", lambda t: t[:-4].clone()),
    ("odd_length", lambda t: t[:-1].clone()),
    ("empty", lambda t: t[:0].clone()),
    ("all_ones", lambda t: torch.full_like(t, 255)),
    ("zero_word_appended", lambda t: torch.cat([t, torch.zeros(4, dtype=torch.uint8)])),
])
@pytest.mark.parametrize("name", ["0.weight", "4.weight"])
def test_entropy_mask_garbage(tmp_path: Path, name: str, kind: str, edit_fn: Callable[[torch.Tensor], torch.Tensor]
                              ) -> None:
    data = _mask_chunk(edit_fn, name)(artifact_bytes("rp", "entropy", "values"))
    expect_load_error(tmp_path, data, rf"corrupt mask for {re.escape(name)}")


@pytest.mark.parametrize(("kind", "edit_fn"), [
    ("non_string_metadata_value", lambda h: h["__metadata__"].update(coding=5)),
    ("non_string_format_version", lambda h: h["__metadata__"].update(format_version=1)),
    ("metadata_is_list", lambda h: h.update(__metadata__=[])),
    ("unknown_dtype", lambda h: h["masks"].update(dtype="Q8")),
    ("offsets_overlap", lambda h: h["masks"].update(
        data_offsets=[h["index"]["data_offsets"][0], h["index"]["data_offsets"][0] + h["masks"]["shape"][0]])),
    ("offsets_past_end", lambda h: h["masks"].update(data_offsets=[0, 10**9])),
    ("shape_disagrees_with_offsets", lambda h: h["masks"].update(shape=[999])),
    ("tensor_entry_not_object", lambda h: h.update({"masks": 3})),
    ("tensor_entry_missing", lambda h: h.pop("index")),
])
def test_malformed_container(tmp_path: Path, kind: str, edit_fn: Callable[[dict[str, Any]], None]) -> None:
    """Headers that safetensors itself rejects (no integrity hash can be computed for them)."""
    data = artifact_bytes()
    n = header_len(data)
    header = json.loads(data[8:8 + n])
    edit_fn(header)
    expect_load_error(tmp_path, raw_container(header, data[8 + n:]), r"corrupt|format_version|no metadata")


@pytest.mark.parametrize("coding", artifact.CODINGS)
@pytest.mark.parametrize("storage", artifact.PROTOTYPE_STORAGE)
@pytest.mark.parametrize("kind", ["config_keep_edited", "manifest_kept_and_mask_edited",
                                  "config_keep_and_manifest_kept_edited"])
def test_kept_disagreeing_with_config_keep(tmp_path: Path, kind: str, storage: str, coding: str) -> None:
    """Regression: the manifest's kept counts were not checked against kept_count(config.keep, numel), so
    apply() converted the model and then MaskedWeight.freeze raised a plain ValueError, leaving it half-loaded."""
    data = artifact_bytes("rp", coding, storage)
    if kind == "config_keep_edited":
        data, match = _config(keep=0.6)(data), rf"bad manifest entry.*'kept': {KEPT_0}\b"
    elif kind == "manifest_kept_and_mask_edited":  # a valid mask with one weight fewer, and kept saying so
        data = _recode_mask(_flip_first(True), kept=lambda ones: ones)(data)
        match = rf"bad manifest entry.*'kept': {KEPT_0 - 1}\b"
    else:  # consistent with another keep everywhere but in the masks themselves
        def both(p: Parts) -> None:  # one edit: each edit starts from a valid artifact
            p.meta["config"] = json.dumps({**json.loads(p.meta["config"]), "keep": 0.6})
            p.index["manifest"] = [{**e, "kept": pemn.kept_count(0.6, math.prod(e["shape"]))}
                                   for e in p.index["manifest"]]
        data = edit(data, both)
        match = r"corrupt mask for 0\.weight"
    expect_load_error(tmp_path, data, match)
    expect_load_error(tmp_path, data, rf"{match}|another config", model=pemn.convert_(make_model(), CONFIGS["rp"]))


# ------------------------------------------------------------------------------- unknown tensors, zlib bombs


@pytest.mark.parametrize("name", ["foo", "mask/9.weight", "prototype/0", "param/9.bias", "params", "Index"])
def test_unknown_extra_tensor_is_ignored_but_covered_by_integrity(tmp_path: Path, name: str) -> None:
    """A tensor the format does not define is tolerated, like an unknown metadata field (an extension point
    for later writers) -- but the integrity hash covers it, so it cannot be added, or changed, unnoticed.
    (Unknown ``params.*`` / ``buffers.*`` groups and a ``prototype`` in a seed-only artifact are refused.)"""
    data = artifact_bytes("rp", "entropy", "seed")
    extra = torch.arange(6, dtype=torch.uint8)
    with_extra = rewrite(data, tensors={name: extra})
    (tmp_path / "model.pemn").write_bytes(with_extra)
    assert_loads_exactly(tmp_path / "model.pemn", "rp")
    expect_load_error(tmp_path, rewrite(data, tensors={name: extra}, fix_integrity=False), r"integrity check failed")
    expect_load_error(tmp_path, rewrite(with_extra, tensors={name: extra.flip(0)}, fix_integrity=False),
                      r"integrity check failed")


def _peak_and_seconds(fn: Callable[[], Any]) -> tuple[int, float]:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, elapsed


@pytest.mark.parametrize("kind", ["zeros_1_GiB", "index_padded_to_just_over_the_cap", "index_padded_by_1_MiB"])
def test_index_zlib_bomb_is_refused_quickly(tmp_path: Path, kind: str) -> None:
    """An index that inflates to 1 GiB (of zeros, from about 1 MB), or the artifact's own, valid index padded with
    spaces to one byte over the loader's cap (artifact._MAX_INDEX), is refused after inflating at most the
    cap -- never the whole of it -- and fast. Padded by 1 MiB only, it loads (positive control)."""
    data = artifact_bytes()
    text = zlib.decompress(st_load(data)["index"].numpy().tobytes())
    if kind == "index_padded_by_1_MiB":
        (tmp_path / "model.pemn").write_bytes(rewrite(data, tensors={"index": compress_index(text + b" " * (1 << 20))}))
        assert_loads_exactly(tmp_path / "model.pemn", "rp")
        return
    raw = _zlib_stream(b"", b"\0", 1 << 30) if kind == "zeros_1_GiB" else \
        _zlib_stream(text, b" ", artifact._MAX_INDEX + 1)
    bomb = rewrite(data, tensors={"index": uint8_tensor(raw)})
    assert len(bomb) < 2 << 20
    peak, seconds = _peak_and_seconds(lambda: expect_load_error(
        tmp_path, bomb, r"bad header field \(the index is truncated or larger than any real model's\)"))
    assert peak < 3 * artifact._MAX_INDEX, f"refusing the bomb took {peak >> 20} MiB"  # the 1 GiB never is
    assert seconds < 10, f"refusing the bomb took {seconds:.1f} s"


# ------------------------------------------------------------------------------------------------ paths


def test_directory_path(tmp_path: Path) -> None:
    d = tmp_path / "a_directory.pemn"
    d.mkdir()
    model = make_model()
    before = snapshot(model)
    with pytest.raises(pemn.FormatError, match="is a directory") as info:
        pemn.load(d, model)
    assert str(d) in str(info.value)
    assert_unchanged(model, before)


def test_missing_path(tmp_path: Path) -> None:
    p = tmp_path / "nope" / "missing.pemn"
    model = make_model()
    before = snapshot(model)
    with pytest.raises(FileNotFoundError) as info:
        pemn.load(p, model)
    assert str(p) in str(info.value)
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------------------- atomic writes


def _only_file(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc
    return fail


class _FailingFile:
    """os.fdopen's file, whose write fails like a full disk."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


INJECTED: dict[str, tuple[str, Callable[[pytest.MonkeyPatch], None], int]] = {
    "fsync": ("OSError", lambda mp: mp.setattr(fileio.os, "fsync", _raise(OSError(errno.EIO, "I/O error"))),
              errno.EIO),
    "replace": ("OSError", lambda mp: mp.setattr(fileio.os, "replace", _raise(OSError(errno.EXDEV, "cross"))),
                errno.EXDEV),
    "write_disk_full": ("OSError", lambda mp: mp.setattr(
        fileio.os, "fdopen", functools.partial(lambda real, *a, **k: _FailingFile(real(*a, **k)), os.fdopen)),
        errno.ENOSPC),
    "mkstemp_denied": ("OSError", lambda mp: mp.setattr(
        fileio.tempfile, "mkstemp", _raise(PermissionError(errno.EACCES, "Permission denied"))), errno.EACCES),
    "fchmod": ("OSError", lambda mp: mp.setattr(fileio.os, "fchmod", _raise(OSError(errno.EPERM, "not permitted"))),
               errno.EPERM),
    "fsync_errno_less": ("OSError", lambda mp: mp.setattr(fileio.os, "fsync", _raise(OSError("boom"))), 0),
    "interrupted": ("KeyboardInterrupt", lambda mp: mp.setattr(fileio.os, "fsync", _raise(KeyboardInterrupt())), 0),
}


@pytest.mark.parametrize("failure", [*INJECTED, "none (positive control)"])
def test_failed_save_keeps_previous_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    path = tmp_path / "model.pemn"
    pemn.save(trained("rp"), path)
    previous = path.read_bytes()
    if failure.startswith("none"):
        assert pemn.save(trained("mask"), path, coding="entropy") == path
        assert same_artifact(path.read_bytes(), artifact_bytes("mask", "entropy"))
        assert not same_artifact(path.read_bytes(), previous)
        assert_loads_exactly(path, "mask")
        assert _only_file(tmp_path) == ["model.pemn"]
        return
    kind, inject, code = INJECTED[failure]
    inject(monkeypatch)
    if kind == "KeyboardInterrupt":
        with pytest.raises(KeyboardInterrupt):
            pemn.save(trained("mask"), path, coding="entropy")
    else:
        with pytest.raises(OSError) as info:
            pemn.save(trained("mask"), path, coding="entropy")
        assert not isinstance(info.value, pemn.PEMNError)
        assert str(path) in str(info.value), str(info.value)
        if code:
            assert info.value.errno == code
    monkeypatch.undo()
    assert path.read_bytes() == previous, "the previous artifact was damaged"
    assert _only_file(tmp_path) == ["model.pemn"], "a temporary file was left behind"
    assert_loads_exactly(path, "rp")


def test_save_into_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no_such_dir" / "model.pemn"
    with pytest.raises(OSError, match=re.escape(str(path))):
        pemn.save(trained("rp"), path)
    assert not path.parent.exists()


def test_save_with_bad_arguments_keeps_previous_artifact(tmp_path: Path) -> None:
    path = pemn.save(trained("rp"), tmp_path / "model.pemn")
    previous = path.read_bytes()
    with pytest.raises(ValueError, match="coding"):
        pemn.save(trained("mask"), path, coding="zip")
    with pytest.raises(ValueError, match="prototype"):
        pemn.save(trained("mask"), path, prototype="none")
    with pytest.raises(pemn.ConversionError):
        pemn.save(make_model(), path)  # not converted
    assert path.read_bytes() == previous
    assert _only_file(tmp_path) == ["model.pemn"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="running as root, which ignores directory permissions, so chmod 0o555 cannot make a "
                           "directory read-only (the failure path is covered by the 'mkstemp_denied' injection)")
def test_save_into_read_only_directory(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    path = pemn.save(trained("rp"), d / "model.pemn")
    previous = path.read_bytes()
    d.chmod(0o555)
    try:
        with pytest.raises(OSError, match=re.escape(str(path))):
            pemn.save(trained("mask"), path)
        assert path.read_bytes() == previous
        assert _only_file(d) == ["model.pemn"]
        assert_loads_exactly(path, "rp")
    finally:
        d.chmod(0o755)
