"""The ``.pemn`` artifact: one safetensors file holding masks, prototype, dense extras and a small header.

Layout (format version 1). Tensors, all 1-D:

- ``masks``: uint8, every masked weight's mask, one after another in manifest order (each entry's ``bytes``
  long). ``coding="packed"``: 1 bit per weight, bit ``i`` of the row-major mask is bit ``i % 8`` (LSB first) of
  byte ``i // 8``; ``coding="entropy"``: a range code with the layer's kept fraction as the probability of a 1
  (see :mod:`pemn.coding`); ``coding="context"``: per mask the smallest of :data:`pemn.coding.CONTEXT_MODELS`,
  named by the manifest entry's ``model`` key (``"rows"`` or ``"rows-cols"``; absent for ``"order0"``, whose
  payload is the entropy coding's; only context-coded files have the key, and an older pemn refuses the coding
  by name, never misreads it).
- ``prototype``: float32, the stored prototype values, the bank's sources concatenated in name order
  (absent with ``prototype="seed"``; :mod:`pemn.prototype` says how to regenerate them).
- ``params.<dtype>`` / ``buffers.<dtype>``: every parameter that is not masked (biases, norm affine,
  embeddings...) and every persistent buffer (norm running statistics...), flattened and concatenated per
  dtype in the order of the ``dense`` index.
- ``index``: uint8, zlib-compressed JSON ``{"manifest": [{name, shape, kept, bytes}...], "dense": [[name,
  "param"|"buffer", dtype, shape]...]}`` (compressed because the names repeat: it keeps the header a small
  fraction of the file).

Metadata (safetensors ``__metadata__``, str → str): ``format`` = ``"pemn"``, ``format_version``,
``pemn_version``, ``torch_version``, ``config`` (PEMNConfig JSON), ``coding``, ``prototype_storage``
(``"values"`` | ``"seed"``), ``prototype_sha256``, optionally ``app`` (a JSON object the application stores
with the model: :mod:`pemn.training` records the registry model name, its constructor arguments and the
data preprocessing there, so a file needs nothing beside it) and ``integrity``: SHA-256 over the other
metadata and every tensor's name, dtype, shape and bytes, so any corruption is caught before a model is
touched. Loading never unpickles anything.

Format version 2 adds two kinds of dense entry; a file is written as version 3 (below) only when it holds one
(all other files stay version 1, readable by every pemn; version 2 files, written by an earlier build, load).
Its container metadata holds only ``format``, ``format_version`` and ``integrity``; every other field (same
names, same string values) moves into the compressed index as ``{"meta": {...}, "manifest": [...], "dense":
[...]}``. The dense entries may be:

- ``[name, kind, "int8", shape, groups]`` (``extras_dtype="int8"``): int8 values in ``<kind>s.int8``, dequantised
  with ``groups`` (lo, step) float32 pairs taken, in index order, from the 1-D float32 ``qparams`` tensor. The
  int8 rule is error-bounded, so an int8 file also holds the tensors int8 cannot store within the bound as
  ordinary float16 (or as-trained) entries.
- ``[module, "fold", dtype, [2, C]]`` (``fold_norms=True``; int8 ones carry ``groups`` = 2): a folded
  BatchNorm's per-channel scale and shift, in ``folds.<dtype>``; its weight, bias, running statistics and
  ``num_batches_tracked`` are not stored. :mod:`pemn.extras` describes both codecs and the per-tensor int8 rule.

Format version 3 is version 2 with two more things. A folded BatchNorm whose ``[2, C]`` int8 cannot hold within
the bound may be stored as its two rows, ``[module, "fold.scale", dtype, [C](, groups)]`` and ``[module,
"fold.shift", dtype, [C](, groups)]`` (both in ``folds.<dtype>``; exactly one of each, of one length, and no whole
``fold`` entry for that module), so a float16 scale sits beside an int8 shift. And the index's zlib stream is
compressed against a preset dictionary
(:data:`INDEX_DICTIONARY`, RFC 1950's FDICT, its Adler-32 in the stream header): the metadata keys, the config's
JSON and the entry keys every index repeats cost almost nothing, which takes the header and index of a slim
keep-0.1 ConvMixer-256/8 file from 2.19 % to 1.65 % of it. A version 1 or 2 index must not use a dictionary, a
version 3 (or 4) index must use one of :data:`INDEX_DICTIONARIES`: :data:`INDEX_DICTIONARY` (the core's strings
only, what pemn writes) or :data:`FIRST_INDEX_DICTIONARY` (the first files', which also held strings of the
training application; read, never written).

Format version 4 holds many tasks of one prototype (:mod:`pemn.taskset`): the prototype once, then per task its
masks, extras, name and app under ``tasks.<i>.``; its layout and checks are in :mod:`pemn.taskfile`. Only models
with named tasks are written as version 4.

The codec is symmetric: :func:`build` makes an :class:`Artifact` from a model, :func:`encode` serialises one
(rebuilding the index from its ``manifest`` and ``dense`` lists and sealing it with its integrity hash) and
:func:`parse` reads one back, checked. Tools that edit artifacts go through these three.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from torch import nn

from pemn import coding as mask_coding
from pemn import extras
from pemn._version import __version__
from pemn.config import PEMNConfig, kept_count
from pemn.convert import convert_selected_, finish_conversion_
from pemn.errors import ArchitectureMismatchError, FormatError, PrototypeMismatchError
from pemn.fileio import atomic_write_bytes
from pemn.hf import APP_KIND as TRANSFORMERS_APP
from pemn.hf import app_of as transformers_app
from pemn.hf import build as build_transformers
from pemn.layers import MaskedWeight, gain_key, masked_class_for, weight_params
from pemn.prototype import fingerprint, plan, prototype_values
from pemn.stfile import save_bytes
from pemn.walk import distinct_weights, find_bank, is_converted, masked_weights, param_slots, unwrap

FORMAT = "pemn"
FORMAT_VERSION = 4  # the newest this pemn reads and writes; files without its features are written as 1
#: a single-task file with int8 extras or folded norms is written as format version 3 (4 holds many tasks)
SINGLE_TASK_VERSION = 3

#: the strings every index of the core repeats (metadata keys, the config's JSON, manifest and dense-entry keys,
#: layer-name suffixes, dtypes), most frequent last
_CORE_WORDS = (
    b'"seed","prototype_storage":"values","prototype_sha256":"'
    b'{"meta":{"pemn_version":"0.1.0","torch_version":"2.13.0+cpu","config":"{\\"exclude\\": [], \\"fill\\": '
    b'\\"copy\\", \\"init\\": \\"kaiming_normal\\", \\"keep\\": 0.5, \\"keep_rounding\\": \\"exact\\", '
    b'\\"keep_scale\\": false, \\"ratio\\": 0.001, \\"rescale\\": false, \\"scope\\": \\"layer\\", '
    b'\\"seed\\": 0, \\"strategy\\": \\"rp\\", \\"targets\\": null}","coding":"entropy",'
    b'"dense":[["","param","float32",[]],["","buffer","float16",[]],["","param","int8",[],1],'
    b'.running_mean",".running_var",".num_batches_tracked","int64",[]],'
    b'"manifest":[{"name":"","shape":[256,256,1,1],"kept":,"bytes":},{"name":".weight","shape":['
    b'],"kept":'
    b',"bytes":'
    b'"fold.scale","float16",[256]],["'
    b'"fold.shift","int8",[256],1],["'
    b'"fold","int8",[2,256],2],[".bias",'
)
#: The preset zlib dictionary pemn writes a format version 3 or 4 index with (RFC 1950's FDICT; the stream header
#: names it by its Adler-32): the core's own strings only. An application's words (its ``app`` object) would freeze
#: that application into the core's format, and a file must load in a process that never imported the application.
#: Its ``app`` words are the core's own (the start of :mod:`pemn.hf`'s object: its ``kind`` and ``model`` keys).
#: Part of the format: these exact bytes, forever.
INDEX_DICTIONARY = b'"app":"{\\"kind\\":\\"transformers\\",\\"model\\":\\"' + _CORE_WORDS
#: The preset dictionary the first format version 3 and 4 files were written with: an ``app`` object of the training
#: application (an image classifier on CIFAR-10, in a JSON layout it no longer writes) before the core's strings of
#: :data:`INDEX_DICTIONARY`. Read, never written: its files load forever.
FIRST_INDEX_DICTIONARY = (
    b'"app":"{\\"kind\\": \\"image-classifier\\", \\"model\\": \\"", \\"kwargs\\": {\\"num_classes\\": '
    b'10, \\"in_channels\\": 3, \\"image_size\\": 32}, \\"preprocessing\\": {\\"dataset\\": \\"cifar10\\", '
    b'\\"mean\\": [0.4914, 0.4822, 0.4465], \\"std\\": [0.247, 0.2435, 0.2616]}}",'
) + _CORE_WORDS
#: every dictionary a version 3 or 4 index may be compressed against, by its Adler-32 (the stream's DICTID)
INDEX_DICTIONARIES = {zlib.adler32(d).to_bytes(4, "big"): d for d in (INDEX_DICTIONARY, FIRST_INDEX_DICTIONARY)}
CODINGS = ("packed", "entropy", "context")
PROTOTYPE_STORAGE = ("values", "seed")
EXTRAS_DTYPES = (None, "float32", "float16", "bfloat16", "int8")
_MAX_HEADER = 64 << 20
_MAX_INDEX = 16 << 20  # a real index is a few KB (ResNet-50: 19 KB): this caps what a zlib bomb can cost
_PICKLE_HINT = ("this looks like a pickle / torch.save file, not a pemn artifact; pemn never unpickles "
                "(write artifacts with pemn.save)")


@dataclass
class Artifact:
    """A parsed, integrity-checked artifact (before it is applied to any model)."""

    metadata: dict[str, str]
    tensors: dict[str, torch.Tensor]
    config: PEMNConfig
    manifest: list[dict[str, Any]]
    dense: list[list[Any]]
    coding: str
    prototype_storage: str
    prototype_sha256: str
    file_bytes: int
    app: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: format version 4 (:mod:`pemn.taskfile`): every task (a :class:`pemn.taskfile.TaskEntry`); ``manifest`` and
    #: ``dense`` are then the first task's
    tasks: list[Any] = dataclasses.field(default_factory=list)
    head: str | None = None  # format version 4: the module of the tasks' own heads
    base: list[list[Any]] = dataclasses.field(default_factory=list)  # format version 4: [[name, shape], ...]

    @property
    def format_version(self) -> int:
        version = self.metadata.get("format_version", "")
        return int(version) if isinstance(version, str) and version.isascii() and version.isdigit() \
            and len(version) <= 9 else 0

    @property
    def folded(self) -> list[str]:
        """The BatchNorm modules stored folded (scale and shift only): such a file is for inference."""
        return list(dict.fromkeys(e[0] for e in self.dense if e[1].startswith("fold")))


def integrity(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != "integrity"}
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _split_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A converted model's dense parameters and persistent buffers (masked-weight state excluded, under
    every path a masked weight is reachable by), each tensor once."""
    prefixes = tuple(n + "." for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, MaskedWeight))
    # a masked weight's per-channel gain (PEMNConfig.gain) is a dense extra like a bias; its scores and mask are not
    return _dense_state(model, lambda k: k.startswith(prefixes) and not k.endswith(".gain"))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


#: Format version 3: a folded BatchNorm may be stored as its two rows, each ``[C]`` in its own dtype (a scale
#: that needs float16 next to an int8 shift), instead of one ``[2, C]`` ``fold`` entry.
FOLD_ROWS = ("fold.scale", "fold.shift")


def _store_key(kind: str, dtype: str) -> str:
    """The flat tensor a dense entry of ``kind`` and ``dtype`` lives in (``params.float32``, ``folds.int8``...)."""
    return f"folds.{dtype}" if kind.startswith("fold") else f"{kind}s.{dtype}"


def _stored_bytes(t: torch.Tensor, qp: torch.Tensor | None) -> int:
    return t.numel() * t.element_size() + (0 if qp is None else qp.numel() * qp.element_size())


def _append_dense(name: str, kind: str, t: torch.Tensor, qp: torch.Tensor | None, index: list[list[Any]],
                  groups: dict[str, list[torch.Tensor]], qparams: list[torch.Tensor]) -> None:
    n_groups = 0 if qp is None else qp.shape[0]
    if qp is not None:
        qparams.append(qp.reshape(-1))
    dtype = _dtype_name(t.dtype)
    index.append([name, kind, dtype, list(t.shape), n_groups] if n_groups else [name, kind, dtype, list(t.shape)])
    groups.setdefault(_store_key(kind, dtype), []).append(t.reshape(-1))


def _pack_dense(entries: list[tuple[str, str, torch.Tensor]], tensors: dict[str, torch.Tensor],
                index: list[list[Any]], float_dtype: torch.dtype | None, int8: extras.Int8Rule | None) -> None:
    """Pack ``(name, kind, tensor)`` entries into one flat tensor per kind and stored dtype, appending each
    entry to ``index``. ``float_dtype`` casts every floating tensor; ``int8`` (the model's rule, or None for
    no int8) stores each tensor as the error-bounded int8 rule of :mod:`pemn.extras` decides."""
    groups: dict[str, list[torch.Tensor]] = {}
    qparams: list[torch.Tensor] = []
    for name, kind, t in entries:
        t, qp = t.detach().cpu(), None
        if int8 is not None:
            t, qp = int8.encode(name, t)
            if kind == "fold" and qp is None:  # not int8 as a whole: maybe the shift row is (FOLD_ROWS)
                rows = int8.encode_rows(name, t)
                if sum(_stored_bytes(*r) for r in rows) < _stored_bytes(t, None):
                    for row_kind, (row, row_qp) in zip(FOLD_ROWS, rows, strict=True):
                        _append_dense(name, row_kind, row, row_qp, index, groups, qparams)
                    continue
        elif float_dtype is not None and t.dtype.is_floating_point:
            t = t.to(float_dtype)
        _append_dense(name, kind, t, qp, index, groups, qparams)
    for key, parts in groups.items():
        tensors[key] = torch.cat(parts)
    if qparams:
        tensors["qparams"] = torch.cat(qparams)


def _fold_norms(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]
                ) -> list[tuple[str, str, torch.Tensor]]:
    """Fold every foldable BatchNorm: its state leaves ``params`` / ``buffers``, its scale and shift come back
    as ``fold`` entries."""
    folds = []
    for name, module in model.named_modules():
        if extras.foldable(module):
            prefix = f"{name}." if name else ""
            for key in extras.FOLDED_STATE:
                params.pop(prefix + key, None)
                buffers.pop(prefix + key, None)
            folds.append((name, "fold", extras.fold(module)))
    return folds


def _app_json(app: Mapping[str, Any] | None) -> str | None:
    if app is None:
        return None
    if not isinstance(app, Mapping):
        raise TypeError(f"app must be a JSON-serializable mapping, got {type(app).__name__}")
    try:
        return json.dumps(dict(app), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"app metadata must be JSON-serializable ({e})") from None


def build(model: nn.Module, *, coding: str = "packed", prototype: str = "values",
          extras_dtype: str | None = None, fold_norms: bool = False,
          app: Mapping[str, Any] | None = None) -> Artifact:
    """The artifact of a converted model (training or frozen), not yet serialised (see :func:`save` for the
    options; :func:`encode` writes it, adding the index tensor and the integrity hash)."""
    if extras_dtype not in EXTRAS_DTYPES:
        raise ValueError(f"extras_dtype must be one of {EXTRAS_DTYPES}, got {extras_dtype!r}")
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {CODINGS}, got {coding!r}")
    if prototype not in PROTOTYPE_STORAGE:
        raise ValueError(f"prototype must be one of {PROTOTYPE_STORAGE}, got {prototype!r}")
    if not isinstance(fold_norms, bool):
        raise TypeError(f"fold_norms must be True or False, got {fold_norms!r}")
    model = unwrap(model)
    bank = find_bank(model)
    if app is None:  # a transformers model records its class and config, so pemn.load(path) rebuilds it
        app = transformers_app(model)
    tensors: dict[str, torch.Tensor] = {}
    manifest = []
    payloads = []
    for name, mw in masked_weights(model).items():
        mask = mw.current_mask().detach().reshape(-1).cpu().numpy()
        kept = int(mask.sum())
        data, entry = _coded_mask(name, list(mw.shape), mask, kept, coding)
        payloads.append(data)
        manifest.append(entry)
    _check_writable(manifest, bank.config, coding)
    tensors["masks"] = torch.from_numpy(np.concatenate(payloads))
    if prototype == "values":
        protos = bank.prototypes()
        tensors["prototype"] = torch.from_numpy(np.concatenate([protos[n] for n in sorted(protos)]).astype("<f4"))
    params, buffers = _split_state(model)
    folds = _fold_norms(model, params, buffers) if fold_norms else []
    entries = [(n, "param", t) for n, t in params.items()] + [(n, "buffer", t) for n, t in buffers.items()] + folds
    dense: list[list[Any]] = []
    int8 = extras_dtype == "int8"
    float_dtype = None if extras_dtype is None or int8 else getattr(torch, extras_dtype)
    _pack_dense(entries, tensors, dense, float_dtype, extras.Int8Rule(model) if int8 else None)
    version = SINGLE_TASK_VERSION if any(len(e) == 5 or e[1].startswith("fold") for e in dense) else 1
    metadata = {
        "format": FORMAT,
        "format_version": str(version),
        "pemn_version": __version__,
        "torch_version": torch.__version__,
        "config": bank.config.to_json(),
        "coding": coding,
        "prototype_storage": prototype,
        "prototype_sha256": bank.sha256,
    }
    app_json = _app_json(app)
    if app_json is not None:
        metadata["app"] = app_json
    return Artifact(metadata, tensors, bank.config, manifest, dense, coding, prototype, bank.sha256, 0,
                    json.loads(app_json) if app_json is not None else {})


def _coded_mask(name: str, shape: list[int], mask: np.ndarray, kept: int, coding: str
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """A flat boolean mask's payload in ``coding`` and its manifest entry: name, shape, kept, for a context-coded
    mask the model (order 0, the entropy coding's payload, goes unnamed: a context file of order-0 masks is the
    entropy file's size), and bytes."""
    model = None
    if coding == "packed":
        data = mask_coding.pack_bits(mask)
    elif coding == "entropy":
        data = mask_coding.encode_entropy(mask, kept)
    else:
        data, model = mask_coding.encode_context(mask, kept, shape[0])
    recorded = {} if model in (None, "order0") else {"model": model}
    return data, {"name": name, "shape": shape, "kept": kept, **recorded, "bytes": int(data.size)}


def recode(data: bytes, coding: str, *, source: str = "<bytes>") -> bytes:
    """The artifact ``data`` with every mask re-coded in ``coding`` (one of :data:`CODINGS`) and nothing else
    changed: the prototype, extras, config, app and every task's masks' bits are the file's own, so the model it
    loads into is the same bit for bit (checked here: the result is parsed and its masks compared before it is
    returned). A lossless transcode, e.g. an existing ``"entropy"`` file to ``"context"`` without retraining.
    Raises :class:`FormatError` for a file that does not parse, ``ValueError`` for an unknown coding."""
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {CODINGS}, got {coding!r}")
    art = parse(data, source=source)
    where = f"{source}: " if source else ""
    parts = [(t.artifact, f"tasks.{i}.masks") for i, t in enumerate(art.tasks)] if art.tasks else [(art, "masks")]
    before = []
    for sub, key in parts:
        packed = _masks(sub, where)
        before.append(packed)
        payloads = []
        for j, e in enumerate(sub.manifest):  # the index's own list (a task's manifest is its entry's)
            mask = mask_coding.unpack_bits(packed[e["name"]], math.prod(e["shape"]))
            payload, sub.manifest[j] = _coded_mask(e["name"], e["shape"], mask, e["kept"], coding)
            payloads.append(payload)
        art.tensors[key] = torch.from_numpy(np.concatenate(payloads))
    art.metadata["coding"] = coding
    art.coding = coding
    out = encode(art)
    check = parse(out, source=source)
    again = [t.artifact for t in check.tasks] if check.tasks else [check]
    for sub, old in zip(again, before, strict=True):
        new = _masks(sub, where)
        if new.keys() != old.keys() or any(not np.array_equal(new[k], old[k]) for k in old):
            raise RuntimeError(f"{where}re-coding changed a mask (a pemn bug); nothing was written")
    return out


_CONTAINER_KEYS = ("format", "format_version", "integrity")  # the container metadata of format version 2


def encode(art: Artifact, *, seal: bool = True, index: bytes | torch.Tensor | bool = True) -> bytes:
    """Serialise ``art``: its metadata and tensors, the ``index`` tensor rebuilt from ``art.manifest`` and
    ``art.dense`` (and, for format version 2, the metadata fields other than format, version and
    integrity), and, with ``seal``, a fresh integrity hash. No check is made: :func:`parse` is the checker.

    For tools that write deliberately malformed files, ``index`` may instead be the compressed index bytes, a
    tensor written as the index verbatim, or False (no index tensor)."""
    tensors = {k: v for k, v in art.tensors.items() if k != "index"}
    metadata = {k: v for k, v in art.metadata.items() if k != "integrity" or not seal}
    content: dict[str, Any] = {"manifest": art.manifest, "dense": art.dense}
    if art.tasks:
        from pemn.taskfile import content as tasks_content

        content = tasks_content(art)
    if art.format_version >= 2:
        content = {"meta": {k: v for k, v in metadata.items() if k not in _CONTAINER_KEYS}, **content}
        metadata = {k: v for k, v in metadata.items() if k in _CONTAINER_KEYS}
    if index is True:
        index = _compress_index(json.dumps(content, separators=(",", ":")).encode(), art.format_version)
    if isinstance(index, bytes | bytearray):
        index = torch.from_numpy(np.frombuffer(index, dtype=np.uint8).copy())
    if isinstance(index, torch.Tensor):
        tensors["index"] = index
    if seal:
        metadata["integrity"] = integrity(metadata, tensors)
    return save_bytes(tensors, metadata=metadata)


def to_bytes(model: nn.Module, *, coding: str = "packed", prototype: str = "values",
             extras_dtype: str | None = None, fold_norms: bool = False,
             app: Mapping[str, Any] | None = None) -> bytes:
    """Serialise a converted model (training or frozen) to artifact bytes: ``encode(build(model, ...))``."""
    return encode(build(model, coding=coding, prototype=prototype, extras_dtype=extras_dtype,
                        fold_norms=fold_norms, app=app))


def save(model: nn.Module, path: str | os.PathLike[str], *, coding: str = "packed",
         prototype: str = "values", extras_dtype: str | None = None, fold_norms: bool = False,
         app: Mapping[str, Any] | None = None) -> Path:
    """Write a converted model to one ``.pemn`` file, atomically (temporary file, fsync, rename).

    Args:
        model: a model converted by :func:`pemn.convert_`, training or frozen (the current masks are
            stored), possibly wrapped in DDP or ``torch.compile``.
        coding: ``"packed"`` (1 bit per masked weight), ``"entropy"`` (about H(kept fraction) bits) or
            ``"context"`` (per layer the smallest of order 0, per-row and per-row-and-column models: masks never larger
            than ``"entropy"``, 10-20 % smaller where units keep unequal shares; :mod:`pemn.coding`).
        prototype: ``"values"`` stores the float32 prototype (portable everywhere, the default);
            ``"seed"`` stores only the config's seed and the values' SHA-256, which :func:`load` checks
            after regenerating them.
        extras_dtype: store the floating-point dense extras (norm parameters and statistics, biases) in
            this dtype (``"float16"`` or ``"bfloat16"``) to halve their bytes, or ``"int8"``: affine int8 per
            tensor (per output channel for tensors of 2+ dimensions), scales in the file, error-bounded: a
            tensor is int8 only where every element stays within 1 % of its effect on the output, else float16
            within the same bound, else as trained (embeddings keep their dtype; the rule and its units are in
            :mod:`pemn.extras`). ``None`` (default) keeps them as they are, which is what makes a loaded
            model bit-identical. They are cast back (dequantised) on load.
        fold_norms: store each BatchNorm with running statistics as its eval-mode per-channel scale and
            shift (2 numbers per channel instead of 4, no ``num_batches_tracked``): an inference artifact.
            :func:`load` returns the model in eval mode, its outputs equal to float rounding; the norm
            modules hold an equivalent state (``weight`` = scale, ``bias`` = shift, ``running_mean`` = 0,
            ``running_var`` = 1 − eps), not the trained γ, β, μ, σ² (see :mod:`pemn.extras`).
        app: a JSON-serializable mapping stored with the model (``Artifact.app`` on reading); applications
            record what rebuilds the architecture and its inputs there. Covered by the integrity hash. Left
            ``None`` for a transformers model, it records the model class and its config (:mod:`pemn.hf`), so
            ``pemn.load(path)`` rebuilds the model with no code.

    A model with named tasks (:mod:`pemn.taskset`) is written with all its tasks (format version 4: the prototype
    once, then each task's masks, extras, name and app; :mod:`pemn.taskfile`); :func:`pemn.save_task` adds one
    task to an existing file.

    Returns the path written. On any error the previous file at ``path`` (if any) is left intact.
    """
    path = Path(path)
    from pemn.taskset import has_tasks

    if has_tasks(model):  # every task, one file (format version 4)
        from pemn.taskfile import build_tasks

        data = encode(build_tasks(model, coding=coding, prototype=prototype, extras_dtype=extras_dtype,
                                  fold_norms=fold_norms, app=app))
    else:
        data = to_bytes(model, coding=coding, prototype=prototype, extras_dtype=extras_dtype,
                        fold_norms=fold_norms, app=app)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise OSError(e.errno, f"could not write pemn artifact {str(path)!r}: {e.strerror or e}") from e
    return path


def _looks_like(data: bytes, source: str) -> str:
    """What a file that is not safetensors seems to be (for the error message), or ``""``."""
    head = data[:256]
    if head[:1] == b"\x08" and (source.lower().endswith(".onnx") or b"pytorch" in head or b"onnx" in head):
        return "an ONNX model (read it with onnx or onnxruntime; pemn reads .pemn artifacts)"
    if head[:2] == b"\x1f\x8b":
        return "a gzip file"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return ""


def parse(data: bytes, *, source: str = "<bytes>") -> Artifact:
    """Parse and integrity-check artifact bytes; :class:`FormatError` on anything wrong."""
    where = f"{source}: " if source else ""
    # A pickle (protocol 2+) starts with 0x80, a torch.save zip with "PK"; a safetensors header length
    # may start with those bytes too, so the hint is given only once the container fails to parse.
    foreign = where + (_PICKLE_HINT if data[:1] == b"\x80" or data[:2] == b"PK" else "not a pemn artifact")
    if len(data) < 10:
        raise FormatError(f"{foreign} (file is too short: {len(data)} bytes)")
    header_len = int.from_bytes(data[:8], "little")
    if (header_len > len(data) - 8 or header_len > _MAX_HEADER) and (looks := _looks_like(data, source)):
        raise FormatError(f"{where}not a pemn artifact: this looks like {looks}")
    if header_len > len(data) - 8 or header_len > _MAX_HEADER:
        raise FormatError(f"{foreign}, or truncated: its header length ({header_len}) exceeds the file "
                          f"({len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError(f"{foreign}: its header is not valid JSON (corrupt or foreign file)") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise FormatError(where + "not a pemn artifact: no metadata")
    meta = header["__metadata__"]
    if meta.get("format") != FORMAT:
        raise FormatError(where + f"not a pemn artifact (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, str) or not (version.isascii() and version.isdigit()) or len(version) > 9:
        raise FormatError(where + f"invalid format_version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise FormatError(where + f"written by a newer pemn (format version {version}; this pemn "
                    f"{__version__} reads up to {FORMAT_VERSION}); upgrade pemn")
    if int(version) < 1:
        raise FormatError(where + f"unknown format version {version}")
    try:
        tensors = st_load(bytes(data))
    except Exception as e:  # safetensors raises its own error types for every malformed container
        raise FormatError(where + f"corrupt artifact: the tensor container is invalid ({e})") from None
    if not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(where + "corrupt artifact: metadata values must be strings")
    if meta.get("integrity") != integrity(meta, tensors):
        raise FormatError(where + "corrupt artifact: integrity check failed (the file was modified or damaged)")
    try:
        index = _read_index(tensors, int(version))
        if int(version) >= 2:
            meta = _merge_meta(meta, index)
        config = PEMNConfig.from_json(meta["config"])
        coding = meta["coding"]
        storage = meta["prototype_storage"]
        sha = meta["prototype_sha256"]
        app = json.loads(meta["app"]) if "app" in meta else {}
        if not isinstance(app, dict):
            raise ValueError("app metadata must be a JSON object")
    except (KeyError, ValueError, TypeError, RecursionError, zlib.error) as e:
        raise FormatError(where + f"corrupt artifact: bad header field ({e})") from None
    if coding not in CODINGS or storage not in PROTOTYPE_STORAGE:
        raise FormatError(where + f"unknown coding {coding!r} or prototype storage {storage!r}")
    if int(version) >= 4:  # many tasks (pemn.taskfile)
        from pemn.taskfile import parse_tasks

        return parse_tasks(meta, tensors, index, config, coding, storage, sha, app, len(data), where)
    if not isinstance(index, dict) or set(index) != {"manifest", "dense"}:
        raise FormatError(where + "corrupt artifact: the index must hold exactly a manifest and a dense list")
    _check_manifest(index["manifest"], config, where, coding)
    _check_dense_index(index["dense"], where, int(version))
    return Artifact(meta, tensors, config, index["manifest"], index["dense"], coding, storage, sha, len(data), app)


def _merge_meta(meta: dict[str, str], index: Any) -> dict[str, str]:
    """Format version 2: the container's metadata joined with the index's ``meta`` object (taken out of it)."""
    inner = index.pop("meta", None) if isinstance(index, dict) else None
    if not isinstance(inner, dict) or not all(isinstance(v, str) for v in inner.values()):
        raise ValueError("the index of a format version 2 file must hold a meta object of strings")
    twice = sorted(set(inner) & set(meta))
    if twice:
        raise ValueError(f"metadata field {twice[0]!r} is both in the container and in the index")
    return {**meta, **inner}


def _compress_index(text: bytes, version: int) -> bytes:
    """The index's zlib stream: with :data:`INDEX_DICTIONARY` preset from format version 3 on (files written
    before it existed name :data:`FIRST_INDEX_DICTIONARY`, which :func:`_read_index` also knows)."""
    if version < 3:
        return zlib.compress(text, 9)
    deflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY, INDEX_DICTIONARY)
    return deflater.compress(text) + deflater.flush()


def index_dictionary(raw: bytes) -> bytes | None:
    """The known preset dictionary (:data:`INDEX_DICTIONARIES`) a zlib stream names in its header, or None (no
    dictionary named, or one this pemn does not know)."""
    if len(raw) < 6 or not raw[1] & 0x20:  # RFC 1950: FDICT set, then the dictionary's Adler-32
        return None
    return INDEX_DICTIONARIES.get(bytes(raw[2:6]))


def _read_index(tensors: dict[str, torch.Tensor], version: int = 1) -> Any:
    t = tensors["index"]
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise ValueError("the index must be a 1-D uint8 tensor")
    raw = t.numpy().tobytes()
    zlib_header = len(raw) >= 2 and raw[0] & 0x0F == 8 and ((raw[0] << 8) | raw[1]) % 31 == 0  # RFC 1950
    preset = zlib_header and bool(raw[1] & 0x20)  # FDICT: the stream needs a preset dictionary
    if zlib_header and preset != (version >= 3):
        raise ValueError(f"the index {'needs' if preset else 'lacks'} a preset dictionary, which format version "
                         f"{version} {'does not use' if preset else 'requires'}")
    zdict = index_dictionary(raw) if preset else None
    if preset and zdict is None:
        raise ValueError("the index was compressed with another preset dictionary than the ones of format "
                         "versions 3 and 4")
    inflater = zlib.decompressobj(zdict=zdict) if zdict is not None else zlib.decompressobj()
    text = inflater.decompress(raw, _MAX_INDEX)
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("the index is truncated or larger than any real model's")
    if inflater.unused_data:
        raise ValueError("the index has data after its zlib stream")
    return json.loads(text)


def _check_manifest(manifest: Any, config: PEMNConfig, where: str, coding: str = "packed") -> None:
    if not isinstance(manifest, list) or not manifest:
        raise FormatError(where + "corrupt artifact: the manifest must be a non-empty list")
    keys = {"name", "shape", "kept", "bytes"}
    for entry in manifest:
        ok = (isinstance(entry, dict) and (set(entry) == keys or (
                  coding == "context" and set(entry) == keys | {"model"}
                  and isinstance(entry["model"], str) and entry["model"] in mask_coding.CONTEXT_MODELS[1:]))
              and isinstance(entry["name"], str)
              and isinstance(entry["shape"], list) and entry["shape"]
              and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s < 2**40 for s in entry["shape"])
              and isinstance(entry["kept"], int) and not isinstance(entry["kept"], bool)
              and isinstance(entry["bytes"], int) and entry["bytes"] >= 0)
        if not ok or not _kept_ok(entry["kept"], math.prod(entry["shape"]), config):
            raise FormatError(where + f"corrupt artifact: bad manifest entry {str(entry)[:200]}")
    if config.scope == "layer":
        expected = config.kept_counts([tuple(e["shape"]) for e in manifest])
        for entry, kept in zip(manifest, expected, strict=True):
            if entry["kept"] != kept:
                raise FormatError(where + f"corrupt artifact: bad manifest entry {str(entry)[:200]}: it keeps "
                                  f"{entry['kept']} weights, its keep ({config.keep_rule} rule) gives {kept}")
    if config.scope == "global":
        total = kept_count(config.keep, sum(math.prod(e["shape"]) for e in manifest), config.keep_rounding)
        if not total <= sum(e["kept"] for e in manifest) <= total + len(manifest):
            raise FormatError(where + "corrupt artifact: the kept counts do not add up to the global budget")


def _check_writable(manifest: list[dict[str, Any]], config: PEMNConfig, coding: str = "packed") -> None:
    """Refuse (before anything is written) masks that :func:`parse` would reject against ``config``."""
    try:
        _check_manifest(manifest, config, "", coding)
    except FormatError:
        expected = (config.kept_counts([tuple(e["shape"]) for e in manifest]) if config.scope == "layer"
                    else [e["kept"] for e in manifest])
        bad = next((e for e, kept in zip(manifest, expected, strict=True)
                    if e["kept"] != kept or not _kept_ok(e["kept"], math.prod(e["shape"]), config)), None)
        what = (f"layer {bad['name']!r} keeps {bad['kept']:,} of {math.prod(bad['shape']):,} weights"
                if bad is not None else f"the layers keep {sum(e['kept'] for e in manifest):,} weights in all")
        raise FormatError(f"cannot save: {what}, but the model's config (keep {config.keep:g}, scope "
                          f"{config.scope!r}, keep_rounding {config.keep_rounding!r}) gives another count, so the "
                          "file could not be loaded; nothing was written. Change keep with pemn.set_keep_, "
                          "never by editing a layer's kept count") from None


def _kept_ok(kept: int, numel: int, config: PEMNConfig) -> bool:
    """A kept count possible for a weight of ``numel`` (the exact counts are checked over the whole manifest)."""
    return 0 < kept <= numel


def _check_dense_index(dense: Any, where: str, version: int = 1) -> None:
    kinds = ("param", "buffer") + (("fold",) if version >= 2 else ()) + (FOLD_ROWS if version >= 3 else ())
    ok = isinstance(dense, list) and all(
        isinstance(e, list) and len(e) in ((4,) if version < 2 else (4, 5)) and isinstance(e[0], str)
        and e[1] in kinds and isinstance(e[2], str) and isinstance(e[3], list)
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in e[3])
        and (len(e) == 4 or (e[2] == "int8" and isinstance(e[4], int) and not isinstance(e[4], bool)
                             and extras.valid_groups(e[3], e[4])))
        and (e[1] != "fold" or (len(e[3]) == 2 and e[3][0] == 2 and e[3][1] > 0))
        and (e[1] not in FOLD_ROWS or (len(e[3]) == 1 and e[3][0] > 0))
        for e in dense)
    if not ok:
        raise FormatError(where + "corrupt artifact: bad dense index")


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


def _selection_from_manifest(model: nn.Module, art: Artifact, where: str
                             ) -> tuple[list[tuple[str, nn.Module]], set[str]]:
    """The modules of a fresh model that own the artifact's masked weights, checked against the manifest,
    and every name those weights have in the model's state dict (a tied weight is masked in all its users,
    and stored once, under its first user's name)."""
    modules = dict(model.named_modules())
    name_of = {id(m): n for n, m in modules.items()}
    slots = param_slots(model)
    selected: dict[str, nn.Module] = {}
    masked_names: set[str] = set()
    problems = []
    for e in art.manifest:
        mod_name, _, param = e["name"].rpartition(".")
        module = modules.get(mod_name)
        if module is None or masked_class_for(module) is None or param not in weight_params(module):
            problems.append(f"{e['name']} is not a maskable weight of the model")
            continue
        weight = module._parameters[param]
        shape = tuple(weight.shape)
        if shape != tuple(e["shape"]):
            problems.append(f"{e['name']} is {shape} in the model but {tuple(e['shape'])} in the artifact")
        for user, user_param, qualified in slots[id(weight)]:
            if masked_class_for(user) is None or user_param not in weight_params(user):
                problems.append(f"{e['name']} is shared with {qualified}, which pemn cannot mask")
            else:
                selected[name_of[id(user)]] = user
                masked_names.add(qualified)
    if problems:
        raise ArchitectureMismatchError(f"{where}architecture mismatch: " + "; ".join(problems[:5]))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    ordered = sorted(selected.items(), key=lambda nm: order[nm[0]])
    expected = [w.name for w in distinct_weights(ordered)[0]]
    if expected != [e["name"] for e in art.manifest]:
        raise ArchitectureMismatchError(
            f"{where}architecture mismatch: the model's masked weights would be {expected[:6]}..., "
            f"the artifact's are {[e['name'] for e in art.manifest][:6]}... (a weight tied in one but not the "
            "other?)")
    return ordered, masked_names


def _fan_ins(selected: list[tuple[str, nn.Module]]) -> list[int]:
    """Each distinct weight's fan-in, by its first user's layer rule (as conversion computes them)."""
    return [w.fan_in for w in distinct_weights(selected)[0]]


def _dense_state(model: nn.Module, skip: Callable[[str], bool]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's parameters and persistent buffers whose names ``skip`` does not reject, each tensor once
    (a tensor held by several modules, like a tied bias, under its first name in the state dict)."""
    param_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    params: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if not skip(name) and id(t) not in seen:
            seen.add(id(t))
            (params if name in param_names else buffers)[name] = t
    return params, buffers


def _dense_tensors(art: Artifact, where: str) -> dict[str, dict[str, torch.Tensor]]:
    """Split the flat ``params.*`` / ``buffers.*`` / ``folds.*`` tensors back into named tensors, by kind
    (int8 ones dequantised to float32 with their ``qparams``)."""
    out: dict[str, dict[str, torch.Tensor]] = {"param": {}, "buffer": {}, "fold": {}, **{k: {} for k in FOLD_ROWS}}
    offsets: dict[str, int] = {}
    qparams = art.tensors.get("qparams")
    used = 0
    for entry in art.dense:
        name, kind, dtype, shape = entry[:4]
        key = _store_key(kind, dtype)
        flat = art.tensors.get(key)
        n = math.prod(shape)
        start = offsets.get(key, 0)
        if flat is None or _dtype_name(flat.dtype) != dtype or flat.dim() != 1 or start + n > flat.numel():
            raise FormatError(f"{where}corrupt artifact: dense tensor {name} does not fit {key}")
        if name in out[kind]:
            raise FormatError(f"{where}corrupt artifact: dense tensor {name} listed twice")
        t = flat[start:start + n].view(shape)
        if len(entry) == 5:
            count = 2 * entry[4]
            if (qparams is None or qparams.dtype != torch.float32 or qparams.dim() != 1
                    or used + count > qparams.numel()):
                raise FormatError(f"{where}corrupt artifact: the int8 tensor {name} has no qparams")
            qp = qparams[used:used + count].view(-1, 2)
            if not bool(torch.isfinite(qp).all()) or bool((qp[:, 1] < 0).any()):
                raise FormatError(f"{where}corrupt artifact: the int8 tensor {name} has invalid qparams")
            t = extras.dequantize(t, qp)
            used += count
        out[kind][name] = t
        offsets[key] = start + n
    groups = {k for k in art.tensors if k.startswith(("params.", "buffers.", "folds."))}
    if groups != set(offsets) or any(art.tensors[k].numel() != offsets[k] for k in groups):
        raise FormatError(f"{where}corrupt artifact: dense tensors do not match the dense index")
    if (0 if qparams is None else qparams.numel()) != used:
        raise FormatError(f"{where}corrupt artifact: the qparams tensor does not match the int8 entries")
    scales, shifts = (out.pop(k) for k in FOLD_ROWS)
    for name in sorted(set(scales) | set(shifts)):
        if name not in scales or name not in shifts or name in out["fold"] or scales[name].shape != shifts[name].shape:
            raise FormatError(f"{where}corrupt artifact: the folded BatchNorm {name} needs exactly one scale row and "
                              "one shift row of the same length (and no whole fold entry)")
        common = torch.promote_types(scales[name].dtype, shifts[name].dtype)
        out["fold"][name] = torch.stack([scales[name].to(common), shifts[name].to(common)])
    return out


def _unfold(theirs: dict[str, dict[str, torch.Tensor]], model: nn.Module, where: str) -> None:
    """Replace the artifact's ``fold`` entries by the equivalent norm state of ``model``'s modules."""
    modules = dict(model.named_modules())
    for name, scale_shift in theirs.pop("fold").items():
        module = modules.get(name)
        channels = scale_shift.shape[1]
        if module is None or not extras.foldable(module) or module.num_features != channels:
            raise ArchitectureMismatchError(
                f"{where}architecture mismatch: {name!r} is a folded BatchNorm of {channels} channels in the "
                "artifact but not in the model")
        for kind, state in extras.unfold(name, module, scale_shift).items():
            clash = sorted(set(state) & set(theirs[kind]))
            if clash:
                raise FormatError(f"{where}corrupt artifact: {clash[0]} is stored and folded")
            theirs[kind].update(state)


def _drop_aliases(theirs: dict[str, dict[str, torch.Tensor]], mine: dict[str, dict[str, torch.Tensor]],
                  model: nn.Module) -> None:
    """Accept files of an older pemn, which stored a tensor held by several modules once per name: an entry
    whose name the model holds as another name of a tensor it stores (under its first name) is dropped."""
    first: dict[int, str] = {}
    alias: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        alias[name] = first.setdefault(id(t), name)
    for kind in ("param", "buffer"):
        for k in [k for k in theirs[kind] if k not in mine[kind] and alias.get(k, k) != k]:
            if alias[k] in mine[kind] or alias[k] in theirs[kind]:
                del theirs[kind][k]


def _check_dense(mine: dict[str, dict[str, torch.Tensor]], theirs: dict[str, dict[str, torch.Tensor]],
                 where: str) -> None:
    for kind in ("param", "buffer"):
        a, b = theirs[kind], mine[kind]
        missing = sorted(set(b) - set(a))
        extra = sorted(set(a) - set(b))
        bad = [f"{k}: artifact {a[k].dtype} {tuple(a[k].shape)} vs model {b[k].dtype} {tuple(b[k].shape)}"
               for k in b if k in a and (tuple(a[k].shape) != tuple(b[k].shape)
                                         or a[k].dtype.is_floating_point != b[k].dtype.is_floating_point)]
        if missing or extra or bad:
            raise ArchitectureMismatchError(
                f"{where}architecture mismatch in dense {kind}s: in the model but not the artifact "
                f"{missing[:5]}, in the artifact but not the model {extra[:5]}, mismatched {bad[:5]}")


def _prototypes(art: Artifact, model_shapes: list[tuple[int, ...]], where: str,
                fan_ins: list[int] | None = None) -> dict[str, np.ndarray]:
    sources, _ = plan(art.config, model_shapes, fan_ins)
    if art.prototype_storage == "values":
        stored = art.tensors.get("prototype")
        total = sum(src.length for src in sources.values())
        if stored is None or stored.dtype != torch.float32 or tuple(stored.shape) != (total,):
            what = "missing" if stored is None else f"{stored.dtype} {tuple(stored.shape)}"
            raise FormatError(f"{where}corrupt artifact: the prototype is {what}, expected float32 ({total},)")
        values = stored.numpy()
        protos, start = {}, 0
        for name in sorted(sources):
            protos[name] = values[start:start + sources[name].length]
            start += sources[name].length
        if fingerprint(protos) != art.prototype_sha256:
            raise PrototypeMismatchError(f"{where}the stored prototype does not match its SHA-256")
        return protos
    if "prototype" in art.tensors:
        raise FormatError(f"{where}corrupt artifact: prototype values in a seed-only artifact")
    protos = {name: prototype_values(art.config, src) for name, src in sources.items()}
    if fingerprint(protos) != art.prototype_sha256:
        raise PrototypeMismatchError(
            f"{where}the prototype regenerated from seed {art.config.seed} does not match the artifact's "
            "SHA-256 (a different pemn prototype algorithm?); re-save the model with prototype='values'")
    return protos


def _masks(art: Artifact, where: str) -> dict[str, np.ndarray]:
    stored = art.tensors.get("masks")
    if stored is None or stored.dtype != torch.uint8 or stored.dim() != 1:
        raise FormatError(f"{where}corrupt artifact: the masks tensor is missing or not 1-D uint8")
    if stored.numel() != sum(e["bytes"] for e in art.manifest):
        raise FormatError(f"{where}corrupt artifact: the masks tensor does not match the manifest's sizes")
    data = stored.numpy()
    out, start = {}, 0
    for e in art.manifest:
        count = math.prod(e["shape"])
        chunk = data[start:start + e["bytes"]]
        start += e["bytes"]
        try:
            if art.coding == "packed":
                mask = mask_coding.unpack_bits(chunk, count)
            elif art.coding == "entropy":
                mask = mask_coding.decode_entropy(chunk, count, e["kept"])
            else:
                mask = mask_coding.decode_context(chunk, count, e["kept"], e["shape"][0], e.get("model", "order0"))
        except FormatError as err:
            raise FormatError(f"{where}corrupt mask for {e['name']}: {err}") from None
        if int(mask.sum()) != e["kept"]:
            raise FormatError(f"{where}corrupt mask for {e['name']}: {int(mask.sum())} kept, header says {e['kept']}")
        # Held bit-packed until its layer is converted: 1/8 of the memory of all masks decoded at once.
        out[e["name"]] = mask_coding.pack_bits(mask)
    return out


class _LazyMasks(dict):
    """Bit-packed masks that unpack to bool tensors one at a time, as each layer takes its own."""

    def __init__(self, packed: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__(packed)
        self.shapes = shapes

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        return torch.from_numpy(mask_coding.unpack_bits(super().__getitem__(name), math.prod(shape))).view(shape)


def apply(art: Artifact, model: nn.Module, *, source: str = "", task: str | Sequence[str] | None = None
          ) -> nn.Module:
    """Install a parsed artifact into ``model`` (fresh and unconverted, or converted with the same config).

    Everything is checked and decoded before the model is changed, so a failure leaves it as it was.
    ``task``: which tasks of a multi-task file (see :func:`load`).
    """
    if art.tasks:
        from pemn.taskfile import apply_tasks

        return apply_tasks(art, model, task=task, source=source)
    if task is not None and ([task] if isinstance(task, str) else list(task)) != ["default"]:
        raise ValueError(f"{source or 'this artifact'} holds one task, 'default'; it has no task {task!r}")
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
        selected = None
        fan_ins = [mw.fan_in for mw in masked_weights(root).values()]
        params, buffers = _split_state(root)
    else:
        selected, masked = _selection_from_manifest(root, art, where)
        fan_ins = _fan_ins(selected)
        params, buffers = _dense_state(root, lambda k: k in masked)
        if art.config.gain:  # the gains the conversion below creates, each [out channels]
            params.update({gain_key(e["name"]): torch.empty(e["shape"][0]) for e in art.manifest})
    mine = {"param": params, "buffer": buffers}
    theirs = _dense_tensors(art, where)
    _unfold(theirs, root, where)
    _drop_aliases(theirs, mine, root)
    _check_dense(mine, theirs, where)
    protos = _prototypes(art, shapes, where, fan_ins)
    masks = _masks(art, where)
    # Nothing below can fail on the artifact's account: the model changes only now.
    unpacked = _LazyMasks(masks, dict(zip(names, shapes, strict=True)))
    if selected is None:
        find_bank(root).install_(protos)
        for name, mw in masked_weights(root).items():
            device = mw.scores.device if not mw.frozen else mw.current_mask().device
            mw.freeze(unpacked[name].to(device), copy=False)
    else:
        convert_selected_(selected, art.config, protos, unpacked)
        finish_conversion_(root, {}, warn=False)
        if art.config.gain:
            for name, mw in masked_weights(root).items():
                mine["param"][gain_key(name)] = mw.gain
    with torch.no_grad():
        for kind in ("param", "buffer"):
            for k, t in theirs[kind].items():
                mine[kind][k].copy_(t)
    if art.folded:  # an inference artifact (see save's fold_norms)
        model.eval()
    return model


def load(path: str | os.PathLike[str], model: nn.Module | None = None, *,
         task: str | Sequence[str] | None = None) -> nn.Module:
    """Load an artifact into ``model`` and return it (the same object), with frozen masks.

    A multi-task file (format version 4, :mod:`pemn.taskset`) loads all its tasks (``task=None``; the first is
    active), the one named ``task``, or a list of names (the first active); ``model`` must then be fresh and of the
    file's base architecture. A single-task file is task ``"default"``.

    ``model`` is a freshly built, unconverted instance of the saved architecture (or one already converted
    with the same config). It gets exactly the saved masks, prototype and dense state, so its outputs equal
    the saved model's bit for bit. Raises :class:`~pemn.errors.FormatError` (or a subclass) for a corrupt,
    foreign or mismatching file; the model is not modified then. Never unpickles.

    Without ``model``, the file must record its architecture: a transformers model saved by :func:`save` is
    rebuilt from its class and config (:mod:`pemn.hf`; transformers must be installed). FormatError otherwise.
    """
    art = read(path)
    if model is None:
        model = _rebuild(art, str(path))
    return apply(art, model, source=str(path), task=task)


def _rebuild(art: Artifact, path: str) -> nn.Module:
    """The fresh model a file records (:func:`load` without a model): a transformers model (:mod:`pemn.hf`)."""
    if art.app.get("kind") == TRANSFORMERS_APP:
        return build_transformers(art.app, path)
    if isinstance(art.app.get("model"), str):  # pemn train's registry models (pemn.training.artifacts)
        how = (f"it holds a pemn train model ({art.app['model']}): pemn.training.artifacts.load_model(path) "
               "rebuilds it, or pass pemn.training.models.create_model(...) as the model")
    else:
        how = "pass a freshly built model of the saved architecture: pemn.load(path, MyModel(...))"
    raise FormatError(f"{path}: the file does not record an architecture pemn.load can rebuild by itself; {how}")


__all__ = ["Artifact", "apply", "build", "encode", "integrity", "load", "parse", "read", "save", "to_bytes"]
