"""Format version 4: many tasks of one prototype in one ``.pemn`` file (see :mod:`pemn.taskset`).

The container is format version 3's (safetensors, the zlib index compressed against
:data:`pemn.artifact.INDEX_DICTIONARY`, the integrity hash over everything). What changes:

- the prototype (``prototype``, with ``prototype_storage="values"``) is stored once, for the *base* masked weights:
  the converted model's, listed in the index as ``base: [[name, shape], ...]``;
- every task ``i`` (0, 1, ... in the index's ``tasks`` order) has its own tensors under ``tasks.<i>.``: ``masks``,
  ``params.<dtype>``, ``buffers.<dtype>``, ``folds.<dtype>``, ``qparams``, laid out exactly as a single-task file's
  (:mod:`pemn.artifact`), and its own index entry ``{"name", "classes", "manifest", "dense"[, "app"]}``: its name
  (1-128 of ``A-Za-z0-9_.:+=@-``, unique), ``classes`` (null, or the output count of its own head, a masked
  ``Linear`` named by the index's ``head``), its manifest (the base's names in order, the same shapes but for the
  head weight's, ``[classes, *base[1:]]``) and dense index (format version 3's entries), and an optional JSON object
  ``app`` the application keeps per task;
- the index's ``meta`` holds the file's fields as in format version 3 (``coding`` is the file's).

So a task costs its entropy-coded masks, its extras and its index entry; the shared prototype is paid once.
:func:`save_task` adds a task to a file (or replaces one) keeping every other task's tensors byte for byte,
through an atomic rewrite; a single-task file (format version 1-3) becomes task ``"default"`` of the new file with
its tensors moved verbatim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemn import taskset as task_api
from pemn.artifact import (
    FORMAT,
    Artifact,
    _check_dense,
    _check_dense_index,
    _check_manifest,
    _dense_state,
    _dense_tensors,
    _fan_ins,
    _masks,
    _prototypes,
    _selection_from_manifest,
    _unfold,
    build,
    encode,
    parse,
)
from pemn.coding import unpack_bits
from pemn.config import PEMNConfig
from pemn.convert import convert_selected_, find_bank, finish_conversion_, is_converted, masked_weights, unwrap
from pemn.errors import ArchitectureMismatchError, FormatError, PrototypeMismatchError
from pemn.fileio import atomic_write_bytes
from pemn.prototype import plan

TASKS_VERSION = 4
_TASK_KEYS = {"name", "classes", "manifest", "dense"}
_TENSOR = re.compile(r"tasks\.(0|[1-9][0-9]{0,8})\.(masks|qparams|(?:params|buffers|folds)\.[a-z0-9]+)")
_RESERVED = " loading"  # not a valid task name: the placeholder task while a file is applied


@dataclass
class TaskEntry:
    """One task of a format-version-4 file: its name, its own head's class count (or None), its app mapping, and
    ``artifact``, the task alone as a single-task :class:`~pemn.artifact.Artifact` (the shared prototype and its
    own tensors, its manifest and dense index)."""

    name: str
    num_classes: int | None
    app: dict[str, Any]
    artifact: Artifact
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # its own tensors, under their file names

    @property
    def data_bytes(self) -> int:
        """The bytes of its tensors (masks and extras) in the file."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def mask_bytes(self) -> int:
        return sum(e["bytes"] for e in self.artifact.manifest)

    @property
    def kept_fraction(self) -> float:
        m = self.artifact.manifest
        return sum(e["kept"] for e in m) / max(1, sum(math.prod(e["shape"]) for e in m))


def task_rows(art: Artifact) -> list[dict[str, Any]]:
    """One row per task of a format-version-4 artifact: name, own head's classes, kept fraction, the bytes of its
    masks, of its extras and in all (its tensors), and the order-0 entropy bound of its masks in bytes."""
    from pemn.coding import entropy_bits

    rows = []
    for t in art.tasks:
        bound = sum(entropy_bits(math.prod(e["shape"]), e["kept"]) for e in t.artifact.manifest) / 8
        rows.append({"name": t.name, "classes": t.num_classes, "kept_fraction": t.kept_fraction,
                     "mask_bytes": t.mask_bytes, "extras_bytes": t.data_bytes - t.mask_bytes,
                     "data_bytes": t.data_bytes, "entropy_bound_bytes": math.ceil(bound), "app": t.app})
    return rows


def content(art: Artifact) -> dict[str, Any]:
    """The index content of a format-version-4 artifact (without ``meta``, which :func:`pemn.artifact.encode`
    adds)."""
    entries = []
    for t in art.tasks:
        e: dict[str, Any] = {"name": t.name, "classes": t.num_classes, "manifest": t.artifact.manifest,
                             "dense": t.artifact.dense}
        if t.app:
            e["app"] = t.app
        entries.append(e)
    return {"base": art.base, "head": art.head, "tasks": entries}


def _bad(where: str, what: str) -> FormatError:
    return FormatError(f"{where}corrupt artifact: {what}")


def parse_tasks(metadata: dict[str, str], tensors: dict[str, torch.Tensor], index: Any, config: PEMNConfig,
                coding: str, storage: str, sha: str, app: dict[str, Any], file_bytes: int, where: str) -> Artifact:
    """Check a format-version-4 index against its tensors and split the file into its tasks (nothing decoded)."""
    if not isinstance(index, dict) or set(index) != {"base", "head", "tasks"}:
        raise _bad(where, "a multi-task index must hold exactly base, head and tasks")
    base, head, entries = index["base"], index["head"], index["tasks"]
    if not isinstance(base, list) or not base or not all(
            isinstance(b, list) and len(b) == 2 and isinstance(b[0], str) and isinstance(b[1], list) and b[1]
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s < 2**40 for s in b[1]) for b in base):
        raise _bad(where, "bad base list of masked weights")
    base_names = [b[0] for b in base]
    if len(set(base_names)) != len(base_names):
        raise _bad(where, "a base weight is listed twice")
    head_weight = f"{head}.weight" if isinstance(head, str) else None
    if head is not None and (head_weight not in base_names or len(base[base_names.index(head_weight)][1]) != 2):
        raise _bad(where, f"the task head {str(head)[:100]!r} is not a 2-D base weight's module")
    if not isinstance(entries, list) or not entries:
        raise _bad(where, "the task list must be non-empty")
    shared = {k: v for k, v in tensors.items() if not k.startswith("tasks.")}
    unknown = sorted(set(shared) - {"index", "prototype"})
    if unknown:
        raise _bad(where, f"unknown tensor {unknown[0][:100]!r}")
    own: list[dict[str, torch.Tensor]] = [{} for _ in entries]
    for k, t in tensors.items():
        if k.startswith("tasks."):
            m = _TENSOR.fullmatch(k)
            if m is None or int(m.group(1)) >= len(entries):
                raise _bad(where, f"tensor {k[:100]!r} belongs to no task")
            own[int(m.group(1))][m.group(2)] = t
    tasks, names = [], set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not (_TASK_KEYS <= set(e) <= _TASK_KEYS | {"app"}):
            raise _bad(where, f"task {i}'s entry must hold name, classes, manifest, dense (and app)")
        name, classes = e["name"], e["classes"]
        if not isinstance(name, str) or not task_api._NAME.fullmatch(name) or name in names:
            raise _bad(where, f"task {i} has an invalid or repeated name {str(name)[:100]!r}")
        names.add(name)
        if classes is not None and (head is None or isinstance(classes, bool) or not isinstance(classes, int)
                                    or not 0 < classes < 2**31):
            raise _bad(where, f"task {name!r} has bad classes {str(classes)[:50]} (or the file has no head)")
        task_app = e.get("app", {})
        if not isinstance(task_app, dict) or ("app" in e and not task_app):
            raise _bad(where, f"task {name!r}'s app must be a non-empty JSON object when present")
        _check_manifest(e["manifest"], config, where, coding)
        _check_dense_index(e["dense"], where, 3)
        shapes = [[b[0], b[1]] for b in base]
        if classes is not None:
            j = base_names.index(head_weight)
            if classes == base[j][1][0]:
                raise _bad(where, f"task {name!r} gives classes equal to the base head's (store null)")
            shapes[j] = [head_weight, [classes, *base[j][1][1:]]]
        if [[m["name"], m["shape"]] for m in e["manifest"]] != shapes:
            raise _bad(where, f"task {name!r}'s masked weights are not the base's (names, order, shapes)")
        sub_tensors = dict(own[i])
        if "prototype" in shared:
            sub_tensors["prototype"] = shared["prototype"]
        sub = Artifact(metadata, sub_tensors, config, e["manifest"], e["dense"], coding, storage, sha, file_bytes,
                       app)
        tasks.append(TaskEntry(name, classes, task_app, sub, {f"tasks.{i}.{k}": t for k, t in own[i].items()}))
    first = tasks[0].artifact
    return Artifact(metadata, tensors, config, first.manifest, first.dense, coding, storage, sha, file_bytes, app,
                    tasks=tasks, head=head, base=base)


# --------------------------------------------------------------------------------------------- writing


def _base(model: nn.Module) -> tuple[list[list[Any]], str | None]:
    """The base masked weights (with the converted head) and the task head's module name (or None)."""
    root = unwrap(model)
    ts = task_api._taskset(root)
    head = None if ts is None else ts.head_path
    uses_heads = ts is not None and any(t.head is not None for t in ts.tasks.values())
    base = []
    for name, mw in masked_weights(root).items():
        shape = list(mw.shape)
        if uses_heads and name == f"{head}.weight":
            shape = list(ts.base_head.masked_weights()["weight"].shape)  # type: ignore[union-attr]
        base.append([name, shape])
    return base, head if uses_heads else None


def _entry(model: nn.Module, name: str, index: int, *, coding: str, prototype: str, extras_dtype: str | None,
           fold_norms: bool) -> TaskEntry:
    """Task ``name`` of ``model`` built as a task of a file (its tensors named ``tasks.<index>.*``)."""
    root = unwrap(model)
    ts = task_api._taskset(root)
    with task_api.using_task(root, name) if ts is not None else contextlib.nullcontext():
        sub = build(root, coding=coding, prototype=prototype, extras_dtype=extras_dtype, fold_norms=fold_norms)
        classes = None if ts is None else ts.tasks[name].num_classes
        app = {} if ts is None else dict(ts.tasks[name].app)
    own = {f"tasks.{index}.{k}": t for k, t in sub.tensors.items() if k != "prototype"}
    return TaskEntry(name, classes, app, sub, own)


def _assemble(meta: dict[str, str], base: list[list[Any]], head: str | None, entries: list[TaskEntry],
              prototype: torch.Tensor | None, config: PEMNConfig) -> Artifact:
    metadata = {**meta, "format": FORMAT, "format_version": str(TASKS_VERSION)}
    metadata.pop("integrity", None)
    tensors: dict[str, torch.Tensor] = {}
    if prototype is not None:
        tensors["prototype"] = prototype
    for e in entries:
        tensors.update(e.tensors)
    first = entries[0].artifact
    app = json.loads(metadata["app"]) if "app" in metadata else {}
    return Artifact(metadata, tensors, config, first.manifest, first.dense, metadata["coding"],
                    metadata["prototype_storage"], metadata["prototype_sha256"], 0, app, tasks=entries, head=head,
                    base=base)


def build_tasks(model: nn.Module, *, coding: str = "packed", prototype: str = "values",
                extras_dtype: str | None = None, fold_norms: bool = False,
                app: Mapping[str, Any] | None = None) -> Artifact:
    """The format-version-4 artifact of every task of ``model`` (in :func:`pemn.tasks` order)."""
    root = unwrap(model)
    names = task_api.tasks(root)
    entries = [_entry(root, n, i, coding=coding, prototype=prototype, extras_dtype=extras_dtype,
                      fold_norms=fold_norms) for i, n in enumerate(names)]
    first = build(root, coding=coding, prototype=prototype, app=app)  # the shared metadata and prototype
    base, head = _base(root)
    return _assemble(first.metadata, base, head, entries, first.tensors.get("prototype"), first.config)


def _from_single(art: Artifact) -> tuple[list[list[Any]], list[TaskEntry]]:
    """A format-version 1-3 artifact as task ``"default"`` of a multi-task file, its tensors moved verbatim."""
    own = {f"tasks.0.{k}": t for k, t in art.tensors.items() if k not in ("index", "prototype")}
    base = [[e["name"], list(e["shape"])] for e in art.manifest]
    return base, [TaskEntry(task_api.DEFAULT_TASK, None, {}, art, own)]


def save_task(model: nn.Module, path: str | os.PathLike[str], *, task: str | None = None, coding: str = "entropy",
              prototype: str = "values", extras_dtype: str | None = None, fold_norms: bool = False,
              app: Mapping[str, Any] | None = None, replace: bool = False) -> Path:
    """Write task ``task`` of ``model`` (default: the active one) into the multi-task file at ``path``.

    A new file holds the prototype and this task. An existing file (multi-task, or a single-task file, whose
    task becomes ``"default"``) must hold the same prototype and config; the task is appended (or, with
    ``replace``, takes the place of the file's task of that name), every other task's tensors are written back
    byte for byte, and the file is replaced atomically. ``coding`` and ``prototype`` are the file's when it
    exists; ``extras_dtype`` and ``fold_norms`` apply to this task only.
    """
    root = unwrap(model)
    path = Path(path)
    name = task_api.active_task(root) if task is None else task
    if name not in task_api.tasks(root):
        raise ValueError(f"the model has no task {name!r}; its tasks: {', '.join(task_api.tasks(root))}")
    bank = find_bank(root)
    if not path.exists():
        data = build(root, coding=coding, prototype=prototype, app=app)
        base, head = _base(root)
        entry = _entry(root, name, 0, coding=coding, prototype=prototype, extras_dtype=extras_dtype,
                       fold_norms=fold_norms)
        art = _assemble(data.metadata, base, head, [entry], data.tensors.get("prototype"), data.config)
        atomic_write_bytes(path, encode(art))
        return path
    old = parse(path.read_bytes(), source=str(path))
    where = f"{path}: "
    if old.config != bank.config or old.prototype_sha256 != bank.sha256:
        raise PrototypeMismatchError(f"{where}the file's prototype or config is not this model's; a task can only "
                                     "join the file of the prototype it was trained on")
    if old.tasks:
        base, head, entries = old.base, old.head, list(old.tasks)
    else:
        base, entries = _from_single(old)
        head = None
    mine, my_head = _base(root)
    if mine != base:
        raise ArchitectureMismatchError(f"{where}the model's masked weights are not the file's base")
    if my_head is not None:
        if head is not None and head != my_head:
            raise ArchitectureMismatchError(f"{where}the file's task heads are at {head!r}, the model's at {my_head!r}")
        head = my_head
    names = [e.name for e in entries]
    if name in names and not replace:
        raise ValueError(f"{where}the file already has a task {name!r} (pass replace=True to overwrite it)")
    position = names.index(name) if name in names else len(entries)
    entry = _entry(root, name, position, coding=old.coding, prototype=old.prototype_storage,
                   extras_dtype=extras_dtype, fold_norms=fold_norms)
    entries[position:position + 1] = [entry]
    meta = {k: v for k, v in old.metadata.items() if k not in ("format", "format_version", "integrity")}
    art = _assemble(meta, base, head, entries, old.tensors.get("prototype"), old.config)
    atomic_write_bytes(path, encode(art))
    return path


# --------------------------------------------------------------------------------------------- loading


def chosen(art: Artifact, task: str | Sequence[str] | None) -> list[TaskEntry]:
    names = [t.name for t in art.tasks]
    if task is None:
        return list(art.tasks)
    wanted = [task] if isinstance(task, str) else list(task)
    missing = [w for w in wanted if w not in names]
    if missing or not wanted:
        raise ValueError(f"the file has no task {missing[0] if missing else '(none asked)'!r}; its tasks: "
                         f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    return [art.tasks[names.index(w)] for w in dict.fromkeys(wanted)]


def apply_tasks(art: Artifact, model: nn.Module, *, task: str | Sequence[str] | None = None,
                source: str = "") -> nn.Module:
    """Install tasks of a format-version-4 artifact into a fresh, unconverted ``model`` of its base architecture:
    all of them (``task=None``), one name, or a list; the first one loaded is the active task. Everything is
    decoded and checked before the model changes."""
    where = f"{source}: " if source else ""
    root = unwrap(model)
    if is_converted(root):
        raise ArchitectureMismatchError(f"{where}a multi-task file loads into a fresh, unconverted model")
    picked = chosen(art, task)
    base_manifest = [{"name": n, "shape": s, "kept": 0, "bytes": 0} for n, s in art.base]
    base_art = dataclasses.replace(art.tasks[0].artifact, manifest=base_manifest)
    selected, masked = _selection_from_manifest(root, base_art, where)
    fan_ins = _fan_ins(selected)
    protos = _prototypes(base_art, [tuple(s) for _, s in art.base], where, fan_ins)
    sources, assignments = plan(art.config, [tuple(s) for _, s in art.base], fan_ins)
    if art.head is not None:  # a task's own head reads the first rows of the base head's source: it must fit
        j = [n for n, _ in art.base].index(f"{art.head}.weight")
        room = sources[assignments[j].source].expanded
        for entry in picked:
            if entry.num_classes is not None and entry.num_classes * math.prod(art.base[j][1][1:]) > room:
                raise FormatError(f"{where}corrupt artifact: task {entry.name!r}'s head of {entry.num_classes} classes "
                                  f"needs more prototype values than its source has ({room:,})")
    params, buffers = _dense_state(root, lambda k: k in masked)
    decoded = []
    for entry in picked:
        sub = entry.artifact
        theirs = _dense_tensors(sub, where)
        _unfold(theirs, root, where)
        mine = {"param": dict(params), "buffer": dict(buffers)}
        if entry.num_classes is not None:
            bias = mine["param"].get(f"{art.head}.bias")
            if bias is not None:
                mine["param"][f"{art.head}.bias"] = torch.empty((entry.num_classes,), dtype=bias.dtype, device="meta")
        _check_dense(mine, theirs, where)
        masks = _masks(sub, where)
        shapes = {e["name"]: tuple(e["shape"]) for e in sub.manifest}
        decoded.append((entry, masks, shapes, theirs))
    # Nothing below can fail on the file's account: the model changes only now.
    convert_selected_(selected, art.config, protos)
    finish_conversion_(root, {}, warn=False)
    ts = task_api._taskset(root, create=True)
    assert ts is not None
    ts.tasks = {_RESERVED: ts.tasks.pop(task_api.DEFAULT_TASK)}
    ts.active = _RESERVED
    ts.tasks[_RESERVED].name = _RESERVED
    for entry, masks, shapes, theirs in decoded:
        task_api.add_task(root, entry.name, num_classes=entry.num_classes, head=art.head, app=entry.app,
                          activate=True)
        for name, mw in masked_weights(root).items():
            mask = torch.from_numpy(unpack_bits(masks[name], math.prod(shapes[name]))).view(shapes[name])
            mw.freeze(mask.to(mw.bank.view(mw.source, 1).device), copy=False)
        state = root.state_dict(keep_vars=True)
        with torch.no_grad():
            for kind in ("param", "buffer"):
                for k, t in theirs[kind].items():
                    state[k].copy_(t)
    task_api.set_task(root, picked[0].name)
    del ts.tasks[_RESERVED]
    if any(t.artifact.folded for t in picked):
        model.eval()
    return model
