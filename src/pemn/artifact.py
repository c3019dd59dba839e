"""The ``.pemn`` artifact: one safetensors file holding masks, prototype, dense extras and a JSON header.

Layout (format version 1). Tensors, all 1-D unless noted:

- ``mask/<weight>``: uint8, the mask of one masked weight; ``coding="packed"``: 1 bit per weight, bit
  ``i`` of the row-major mask is bit ``i % 8`` (LSB first) of byte ``i // 8``; ``coding="entropy"``: a
  range code with the layer's kept fraction as the probability of a 1 (see :mod:`pemn.coding`).
- ``prototype/<source>``: float32, the stored prototype values (absent with ``prototype="seed"``).
- ``param/<name>``: every parameter that is not masked (biases, norm affine, embeddings...), as trained.
- ``buffer/<name>``: every persistent buffer (norm running statistics...).

Metadata (safetensors ``__metadata__``, str → str): ``format`` = ``"pemn"``, ``format_version``,
``pemn_version``, ``torch_version``, ``config`` (PEMNConfig JSON), ``coding``, ``prototype_storage``
(``"values"`` | ``"seed"``), ``prototype_sha256``, ``manifest`` (JSON list of ``{name, shape, kept}`` in
conversion order) and ``integrity``: SHA-256 over the other metadata and every tensor's name, dtype, shape
and bytes, so any corruption is caught before a model is touched. Loading never unpickles anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from pemn import coding as mask_coding
from pemn.config import PEMNConfig
from pemn.convert import convert_selected_, find_bank, is_converted, masked_weights, unwrap
from pemn.errors import ArchitectureMismatchError, FormatError, PrototypeMismatchError
from pemn.layers import MaskedWeight, masked_class_for, weight_params
from pemn.prototype import fingerprint, plan, prototype_values

FORMAT = "pemn"
FORMAT_VERSION = 1
CODINGS = ("packed", "entropy")
PROTOTYPE_STORAGE = ("values", "seed")
_MAX_HEADER = 64 << 20
_PICKLE_HINT = ("this looks like a pickle / torch.save file, not a pemn artifact; pemn never unpickles "
                "(write artifacts with pemn.save)")


def _version() -> str:
    from pemn import __version__

    return __version__


@dataclass
class Artifact:
    """A parsed, integrity-checked artifact (before it is applied to any model)."""

    metadata: dict[str, str]
    tensors: dict[str, torch.Tensor]
    config: PEMNConfig
    manifest: list[dict[str, Any]]
    coding: str
    prototype_storage: str
    prototype_sha256: str
    file_bytes: int

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def _integrity(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != "integrity"}
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _split_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A converted model's dense parameters and persistent buffers (masked-weight state excluded)."""
    prefixes = tuple(n + "." for n, m in model.named_modules() if isinstance(m, MaskedWeight))
    return _dense_state(model, lambda k: k.startswith(prefixes))


def _tensor_for_file(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


def to_bytes(model: nn.Module, *, coding: str = "packed", prototype: str = "values") -> bytes:
    """Serialise a converted model (training or frozen) to artifact bytes; see :func:`save`."""
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {CODINGS}, got {coding!r}")
    if prototype not in PROTOTYPE_STORAGE:
        raise ValueError(f"prototype must be one of {PROTOTYPE_STORAGE}, got {prototype!r}")
    model = unwrap(model)
    bank = find_bank(model)
    tensors: dict[str, torch.Tensor] = {}
    manifest = []
    for name, mw in masked_weights(model).items():
        mask = mw.current_mask().detach().reshape(-1).cpu().numpy()
        data = mask_coding.pack_bits(mask) if coding == "packed" else mask_coding.encode_entropy(mask, mw.kept)
        tensors[f"mask/{name}"] = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
        manifest.append({"name": name, "shape": list(mw.shape), "kept": mw.kept})
    protos = bank.prototypes()
    if prototype == "values":
        for src, values in protos.items():
            tensors[f"prototype/{src}"] = torch.from_numpy(np.array(values, dtype=np.float32))
    params, buffers = _split_state(model)
    for name, t in params.items():
        tensors[f"param/{name}"] = _tensor_for_file(t)
    for name, t in buffers.items():
        tensors[f"buffer/{name}"] = _tensor_for_file(t)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "pemn_version": _version(),
        "torch_version": torch.__version__,
        "config": bank.config.to_json(),
        "coding": coding,
        "prototype_storage": prototype,
        "prototype_sha256": bank.sha256,
        "manifest": json.dumps(manifest, separators=(",", ":")),
    }
    metadata["integrity"] = _integrity(metadata, tensors)
    return st_save(tensors, metadata=metadata)


def _atomic_write(path: Path, data: bytes) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save(model: nn.Module, path: str | os.PathLike[str], *, coding: str = "packed",
         prototype: str = "values") -> Path:
    """Write a converted model to one ``.pemn`` file, atomically (temporary file, fsync, rename).

    Args:
        model: a model converted by :func:`pemn.convert_`, training or frozen (the current masks are
            stored), possibly wrapped in DDP or ``torch.compile``.
        coding: ``"packed"`` (1 bit per masked weight) or ``"entropy"`` (about H(kept fraction) bits).
        prototype: ``"values"`` stores the float32 prototype (portable everywhere, the default);
            ``"seed"`` stores only the config's seed and the values' SHA-256, which :func:`load` checks
            after regenerating them.

    Returns the path written. On any error the previous file at ``path`` (if any) is left intact.
    """
    path = Path(path)
    data = to_bytes(model, coding=coding, prototype=prototype)
    try:
        _atomic_write(path, data)
    except OSError as e:
        raise OSError(e.errno, f"could not write pemn artifact {str(path)!r}: {e.strerror or e}") from e
    return path


def _fail(msg: str) -> FormatError:
    return FormatError(msg)


def parse(data: bytes, *, source: str = "<bytes>") -> Artifact:
    """Parse and integrity-check artifact bytes; :class:`FormatError` on anything wrong."""
    where = f"{source}: " if source else ""
    # A pickle (protocol 2+) starts with 0x80, a torch.save zip with "PK"; a safetensors header length
    # may start with those bytes too, so the hint is given only once the container fails to parse.
    foreign = where + (_PICKLE_HINT if data[:1] == b"\x80" or data[:2] == b"PK" else "not a pemn artifact")
    if len(data) < 10:
        raise _fail(f"{foreign} (file is too short: {len(data)} bytes)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > _MAX_HEADER:
        raise _fail(f"{foreign}, or truncated: its header length ({header_len}) exceeds the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, ValueError):
        raise _fail(f"{foreign}: its header is not valid JSON (corrupt or foreign file)") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise _fail(where + "not a pemn artifact: no metadata")
    meta = header["__metadata__"]
    if meta.get("format") != FORMAT:
        raise _fail(where + f"not a pemn artifact (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, str) or not version.isdigit():
        raise _fail(where + f"invalid format_version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise _fail(where + f"written by a newer pemn (format version {version}; this pemn "
                    f"{_version()} reads up to {FORMAT_VERSION}); upgrade pemn")
    if int(version) < 1:
        raise _fail(where + f"unknown format version {version}")
    try:
        tensors = st_load(bytes(data))
    except Exception as e:  # safetensors raises its own error types for every malformed container
        raise _fail(where + f"corrupt artifact: the tensor container is invalid ({e})") from None
    if not all(isinstance(v, str) for v in meta.values()):
        raise _fail(where + "corrupt artifact: metadata values must be strings")
    if meta.get("integrity") != _integrity(meta, tensors):
        raise _fail(where + "corrupt artifact: integrity check failed (the file was modified or damaged)")
    try:
        config = PEMNConfig.from_json(meta["config"])
        manifest = json.loads(meta["manifest"])
        coding = meta["coding"]
        storage = meta["prototype_storage"]
        sha = meta["prototype_sha256"]
    except (KeyError, ValueError, TypeError) as e:
        raise _fail(where + f"corrupt artifact: bad header field ({e})") from None
    if coding not in CODINGS or storage not in PROTOTYPE_STORAGE:
        raise _fail(where + f"unknown coding {coding!r} or prototype storage {storage!r}")
    _check_manifest(manifest, where)
    return Artifact(meta, tensors, config, manifest, coding, storage, sha, len(data))


def _check_manifest(manifest: Any, where: str) -> None:
    if not isinstance(manifest, list) or not manifest:
        raise _fail(where + "corrupt artifact: the manifest must be a non-empty list")
    for entry in manifest:
        ok = (isinstance(entry, dict) and isinstance(entry.get("name"), str)
              and isinstance(entry.get("shape"), list)
              and all(isinstance(s, int) and s > 0 for s in entry["shape"])
              and isinstance(entry.get("kept"), int))
        if not ok or not 0 < entry["kept"] <= math.prod(entry["shape"]):
            raise _fail(where + f"corrupt artifact: bad manifest entry {str(entry)[:200]}")


def read(path: str | os.PathLike[str]) -> Artifact:
    """Read and check an artifact file without applying it to a model."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no pemn artifact at {str(p)!r}") from None
    except IsADirectoryError:
        raise FormatError(f"{p}: is a directory, not a pemn artifact") from None
    return parse(data, source=str(p))


def _selection_from_manifest(model: nn.Module, art: Artifact, where: str) -> list[tuple[str, nn.Module]]:
    """The modules of a fresh model that own the artifact's masked weights, checked against the manifest."""
    modules = dict(model.named_modules())
    selected: dict[str, nn.Module] = {}
    problems = []
    for e in art.manifest:
        mod_name, _, param = e["name"].rpartition(".")
        module = modules.get(mod_name)
        if module is None or masked_class_for(module) is None or param not in weight_params(module):
            problems.append(f"{e['name']} is not a maskable weight of the model")
            continue
        shape = tuple(module._parameters[param].shape)
        if shape != tuple(e["shape"]):
            problems.append(f"{e['name']} is {shape} in the model but {tuple(e['shape'])} in the artifact")
        selected[mod_name] = module
    if problems:
        raise ArchitectureMismatchError(f"{where}architecture mismatch: " + "; ".join(problems[:5]))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    ordered = sorted(selected.items(), key=lambda nm: order[nm[0]])
    expected = [f"{n}.{p}" if n else p for n, m in ordered for p in weight_params(m)]
    if expected != [e["name"] for e in art.manifest]:
        raise ArchitectureMismatchError(
            f"{where}architecture mismatch: the model's masked weights would be {expected[:6]}..., "
            f"the artifact's are {[e['name'] for e in art.manifest][:6]}...")
    return ordered


def _dense_state(model: nn.Module, skip: Callable[[str], bool]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's parameters and persistent buffers whose names ``skip`` does not reject."""
    param_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    params: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if not skip(name):
            (params if name in param_names else buffers)[name] = t
    return params, buffers


def _check_dense(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], art: Artifact,
                 where: str) -> None:
    for prefix, mine in (("param/", params), ("buffer/", buffers)):
        theirs = art.group(prefix)
        missing = sorted(set(mine) - set(theirs))
        extra = sorted(set(theirs) - set(mine))
        bad = [f"{k}: artifact {theirs[k].dtype} {tuple(theirs[k].shape)} vs model {mine[k].dtype} "
               f"{tuple(mine[k].shape)}" for k in mine if k in theirs and (
                   tuple(theirs[k].shape) != tuple(mine[k].shape)
                   or theirs[k].dtype.is_floating_point != mine[k].dtype.is_floating_point)]
        if missing or extra or bad:
            kind = "parameters" if prefix == "param/" else "buffers"
            raise ArchitectureMismatchError(
                f"{where}architecture mismatch in dense {kind}: in the model but not the artifact "
                f"{missing[:5]}, in the artifact but not the model {extra[:5]}, mismatched {bad[:5]}")


def _prototypes(art: Artifact, model_shapes: list[tuple[int, ...]], where: str) -> dict[str, np.ndarray]:
    sources, _ = plan(art.config, model_shapes)
    if art.prototype_storage == "values":
        stored = art.group("prototype/")
        if set(stored) != set(sources):
            raise _fail(f"{where}corrupt artifact: prototype sources {sorted(stored)} != {sorted(sources)}")
        protos = {}
        for name, src in sources.items():
            t = stored[name]
            if t.dtype != torch.float32 or tuple(t.shape) != (src.length,):
                raise _fail(f"{where}corrupt artifact: prototype {name} is {t.dtype} {tuple(t.shape)}, "
                            f"expected float32 ({src.length},)")
            protos[name] = t.numpy()
        if fingerprint(protos) != art.prototype_sha256:
            raise PrototypeMismatchError(f"{where}the stored prototype does not match its SHA-256")
        return protos
    protos = {name: prototype_values(art.config, src) for name, src in sources.items()}
    if fingerprint(protos) != art.prototype_sha256:
        raise PrototypeMismatchError(
            f"{where}the prototype regenerated from seed {art.config.seed} does not match the artifact's "
            "SHA-256 (a different pemn prototype algorithm?); re-save the model with prototype='values'")
    return protos


def _masks(art: Artifact, where: str) -> dict[str, np.ndarray]:
    stored = art.group("mask/")
    names = [e["name"] for e in art.manifest]
    if set(stored) != set(names):
        raise _fail(f"{where}corrupt artifact: mask tensors do not match the manifest")
    out = {}
    for e in art.manifest:
        t = stored[e["name"]]
        if t.dtype != torch.uint8 or t.dim() != 1:
            raise _fail(f"{where}corrupt artifact: mask {e['name']} is {t.dtype} with {t.dim()} dims")
        count = math.prod(e["shape"])
        data = t.numpy()
        try:
            if art.coding == "packed":
                mask = mask_coding.unpack_bits(data, count)
            else:
                mask = mask_coding.decode_entropy(data, count, e["kept"])
        except FormatError as err:
            raise _fail(f"{where}corrupt mask for {e['name']}: {err}") from None
        if int(mask.sum()) != e["kept"]:
            raise _fail(f"{where}corrupt mask for {e['name']}: {int(mask.sum())} kept, header says {e['kept']}")
        out[e["name"]] = mask
    return out


def apply(art: Artifact, model: nn.Module, *, source: str = "") -> nn.Module:
    """Install a parsed artifact into ``model`` (fresh and unconverted, or converted with the same config).

    Everything is checked and decoded before the model is changed, so a failure leaves it as it was.
    """
    where = f"{source}: " if source else ""
    root = unwrap(model)
    shapes = [tuple(e["shape"]) for e in art.manifest]
    names = [e["name"] for e in art.manifest]
    if is_converted(root):
        bank = find_bank(root)
        if bank.config != art.config:
            raise ArchitectureMismatchError(
                f"{where}the model was converted with another config than the artifact's "
                f"({bank.config.to_json()} vs {art.config.to_json()}); pass a fresh, unconverted model")
        if [(n, mw.shape) for n, mw in masked_weights(root).items()] != list(zip(names, shapes, strict=True)):
            raise ArchitectureMismatchError(
                f"{where}architecture mismatch: the converted model's masked layers differ from the artifact's")
        prefixes = tuple(n + "." for n, m in root.named_modules() if isinstance(m, MaskedWeight))
        selected = None
        params, buffers = _dense_state(root, lambda k: k.startswith(prefixes))
    else:
        selected = _selection_from_manifest(root, art, where)
        masked = set(names)
        params, buffers = _dense_state(root, lambda k: k in masked)
    _check_dense(params, buffers, art, where)
    protos = _prototypes(art, shapes, where)
    masks = _masks(art, where)
    if selected is None:
        find_bank(root).install_(protos)
    else:
        convert_selected_(selected, art.config, protos)
    for name, mw in masked_weights(root).items():
        device = mw.scores.device if not mw.frozen else mw.current_mask().device
        mw.freeze(torch.from_numpy(masks[name]).to(device))
    with torch.no_grad():
        for prefix, mine in (("param/", params), ("buffer/", buffers)):
            for k, t in art.group(prefix).items():
                mine[k].copy_(t)
    return model


def load(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load an artifact into ``model`` and return it (the same object), with frozen masks.

    ``model`` is a freshly built, unconverted instance of the saved architecture (or one already converted
    with the same config). It gets exactly the saved masks, prototype and dense state, so its outputs equal
    the saved model's bit for bit. Raises :class:`~pemn.errors.FormatError` (or a subclass) for a corrupt,
    foreign or mismatching file; the model is not modified then. Never unpickles.
    """
    return apply(read(path), model, source=str(path))


__all__ = ["Artifact", "apply", "load", "parse", "read", "save", "to_bytes"]
