"""Named tasks on one prototype: a converted model holds many tasks, each only its masks and small extras.

The shared random prototype is never trained, so any number of tasks can sit on it without forgetting
(SupSup, "Supermasks in Superposition", Wortsman et al. 2020). Like peft's named adapters:

- a converted model starts with one task, ``"default"`` (its current scores or masks and extras);
- :func:`add_task` adds a task with fresh scores (seeded by the config's seed and the task's name) and fresh
  task-specific extras: every dense parameter and persistent buffer (biases, norm affine and statistics...), and,
  with ``num_classes``, its own head (the last masked ``Linear``, or ``head=``) with that many outputs;
- :func:`set_task` (or the :func:`using_task` context manager) makes a task the active one; :func:`tasks` lists
  them, :func:`active_task` names the active one; :func:`delete_task`, :func:`rename_task`.

Only the active task's state is registered in the model: ``model.parameters()`` yields its scores and extras and
nothing of another task, so training (an optimizer built while a task is active) touches that task alone, and
every other task's masks and extras stay bit-identical. Inactive tasks hold their masks bit-packed (one bit per
weight; a task still training keeps its scores) and their extras as the tensors they were: N tasks in memory cost
one prototype bank plus N bit-packed masks and N sets of extras. Switching installs the target's tensors (its
bit-packed masks unpacked once) and materialises no weight of any task: the layers still compute
``prototype x mask`` in their forward.

A task's own head takes its weight values from the first rows of the converted head's prototype slice (the same
source and scale; its fan-in is unchanged), so it needs no prototype of its own. The head must be a ``Linear``
with masked weight and layer scope (``scope="global"`` shares one budget over fixed shapes).

:func:`pemn.save` writes every task of such a model into one file (format version 4, see :mod:`pemn.artifact`);
:func:`pemn.load` reads one task or all of them back, and :func:`pemn.save_task` appends one task to a file.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pemn.coding import pack_bits, unpack_bits
from pemn.config import kept_count
from pemn.convert import find_bank, masked_weights, unwrap
from pemn.errors import ConversionError
from pemn.layers import CHILD_PREFIX, MaskedLayer, MaskedWeight
from pemn.masking import init_scores

__all__ = [
    "DEFAULT_TASK",
    "active_task",
    "add_task",
    "delete_task",
    "head_of",
    "rename_task",
    "set_task",
    "task_app",
    "tasks",
    "using_task",
]

#: The name of a converted model's own (first) task.
DEFAULT_TASK = "default"
TASKS_ATTR = "pemn_tasks"
_NAME = re.compile(r"[A-Za-z0-9_.:+=@-]{1,128}")


@dataclass
class _Packed:
    """A frozen mask held one bit per weight (:func:`pemn.coding.pack_bits`), with its count of kept weights."""

    bits: torch.Tensor
    kept: int


@dataclass
class _Task:
    """One inactive (stashed) task: per shared masked weight its scores or bit-packed mask, per dense tensor (by
    its first state-dict name) the tensor object, and its own head module when it has one."""

    name: str
    seed: int
    num_classes: int | None = None  # its own head's outputs (None: the converted head)
    head: nn.Module | None = None
    weights: dict[str, nn.Parameter | _Packed] = field(default_factory=dict)
    kept: dict[str, int | None] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    app: dict[str, Any] = field(default_factory=dict)
    #: while active: the mask tensors installed from bit-packed masks, with those packed masks (a frozen mask is
    #: never written in place, so stashing the same tensor again reuses its bits instead of packing it anew)
    unpacked: dict[str, tuple[torch.Tensor, _Packed]] = field(default_factory=dict)


class TaskSet:
    """The tasks of one converted model (kept in its ``__dict__``, not a submodule: no state-dict entries)."""

    def __init__(self, root: nn.Module) -> None:
        bank = find_bank(root)
        self.active = DEFAULT_TASK
        self.tasks: dict[str, _Task] = {DEFAULT_TASK: _Task(DEFAULT_TASK, bank.config.seed)}
        self.head_path: str | None = None
        self.base_head: nn.Module | None = None

    # ------------------------------------------------------------------------------------------- state

    def _own_head_prefix(self) -> str | None:
        """The state-dict prefix of the active task's own head (which keeps its own state), or None."""
        task = self.tasks[self.active]
        if task.head is None or self.head_path is None:
            return None
        return self.head_path + "."

    def shared_weights(self, root: nn.Module) -> dict[str, MaskedWeight]:
        prefix = self._own_head_prefix()
        return {n: mw for n, mw in masked_weights(root).items() if prefix is None or not n.startswith(prefix)}

    def dense_slots(self, root: nn.Module) -> dict[str, list[tuple[nn.Module, str, bool]]]:
        """Every task-specific dense tensor (parameters and persistent buffers outside masked weights and the
        active task's own head) by its first state-dict name: the (module, attribute, is_parameter) holding it."""
        prefix = self._own_head_prefix()
        modules = dict(root.named_modules(remove_duplicate=False))
        first: dict[int, str] = {}
        slots: dict[str, list[tuple[nn.Module, str, bool]]] = {}
        for name, t in root.state_dict(keep_vars=True).items():
            mod_name, _, attr = name.rpartition(".")
            if prefix is not None and name.startswith(prefix):
                continue
            if any(part.startswith(CHILD_PREFIX) for part in mod_name.split(".")):
                continue  # a masked weight's own state (its mask buffer)
            module = modules[mod_name]
            if isinstance(module, MaskedWeight):
                continue
            key = first.setdefault(id(t), name)
            slots.setdefault(key, []).append((module, attr, attr in module._parameters))
        return slots

    def stash(self, root: nn.Module) -> None:
        """Take the active task's state out of the model into its :class:`_Task`."""
        task = self.tasks[self.active]
        task.weights, task.kept = {}, {}
        for name, mw in self.shared_weights(root).items():
            task.kept[name] = mw.kept
            if mw.frozen:
                mask = mw._buffers["mask"]
                installed = task.unpacked.get(name)
                if installed is not None and installed[0] is mask:
                    task.weights[name] = installed[1]
                    continue
                task.weights[name] = _Packed(torch.from_numpy(pack_bits(mask.detach().cpu().numpy().reshape(-1))),
                                             int(mask.sum()))
            else:
                task.weights[name] = mw.scores
        task.dense = {key: (s[0][0]._parameters if s[0][2] else s[0][0]._buffers)[s[0][1]]
                      for key, s in self.dense_slots(root).items()}
        task.unpacked = {}

    def place_head(self, root: nn.Module, task: _Task) -> None:
        if self.head_path is None:
            return
        parent_name, _, attr = self.head_path.rpartition(".")
        parent = root.get_submodule(parent_name)
        want = task.head if task.head is not None else self.base_head
        if parent._modules[attr] is not want:
            parent._modules[attr] = want

    def install(self, root: nn.Module, name: str) -> None:
        """Put task ``name``'s state into the model and make it the active task (the previous one stashed)."""
        task = self.tasks[name]
        self.place_head(root, task)
        self.active = name
        weights = self.shared_weights(root)
        slots = self.dense_slots(root)
        if set(weights) != set(task.weights) or set(slots) != set(task.dense):
            raise ConversionError(f"task {name!r} does not fit this model any more (its masked weights or extras "
                                  "changed since it was stashed)")
        for wname, mw in weights.items():
            stored = task.weights[wname]
            device = mw.bank.view(mw.source, 1).device
            mw._buffers.pop("mask", None)
            mw._parameters.pop("scores", None)
            mw.kept = task.kept[wname]
            if isinstance(stored, _Packed):
                mask = torch.from_numpy(unpack_bits(stored.bits.numpy(), mw.numel)).view(mw.shape)
                mw.freeze(mask.to(device), copy=False)
                task.unpacked[wname] = (mw._buffers["mask"], stored)
            else:
                if stored.device != device:
                    stored.data = stored.data.to(device)
                mw.scores = stored
        for key, holders in slots.items():
            t = task.dense[key]
            for module, attr, is_param in holders:
                current = (module._parameters if is_param else module._buffers)[attr]
                if current is not None and t.device != current.device:
                    t.data = t.data.to(current.device)
                (module._parameters if is_param else module._buffers)[attr] = t
        task.weights, task.kept, task.dense = {}, {}, {}


def _taskset(model: nn.Module, *, create: bool = False) -> TaskSet | None:
    root = unwrap(model)
    ts = root.__dict__.get(TASKS_ATTR)
    if ts is None and create:
        ts = root.__dict__[TASKS_ATTR] = TaskSet(root)
    return ts


def _require(model: nn.Module, name: str) -> TaskSet:
    ts = _taskset(model, create=True)
    assert ts is not None
    if name not in ts.tasks:
        raise KeyError(f"no task {name!r}; this model's tasks: {', '.join(ts.tasks)}")
    return ts


def tasks(model: nn.Module) -> list[str]:
    """The names of the model's tasks, in the order they were added (``["default"]`` for a converted model
    without :func:`add_task`)."""
    find_bank(unwrap(model))
    ts = _taskset(model)
    return [DEFAULT_TASK] if ts is None else list(ts.tasks)


def active_task(model: nn.Module) -> str:
    """The name of the task whose masks and extras the model computes with now."""
    find_bank(unwrap(model))
    ts = _taskset(model)
    return DEFAULT_TASK if ts is None else ts.active


def has_tasks(model: nn.Module) -> bool:
    """Whether the model's tasks were ever named or added (then :func:`pemn.save` writes them all)."""
    return _taskset(model) is not None


def task_app(model: nn.Module, name: str | None = None) -> dict[str, Any]:
    """The JSON-ready mapping an application stores with task ``name`` (default: the active one): the
    :func:`add_task` ``app=`` argument, or what a loaded file held. Mutable: edit it in place."""
    ts = _taskset(model, create=True)
    assert ts is not None
    name = ts.active if name is None else name
    return _require(model, name).tasks[name].app


def set_task(model: nn.Module, name: str) -> nn.Module:
    """Make task ``name`` the active one: the model computes with its masks and extras, and its parameters are
    that task's scores (if it is still training) and extras. Cheap: no weight is materialised."""
    ts = _require(model, name)
    if ts.active != name:
        root = unwrap(model)
        ts.stash(root)
        ts.install(root, name)
    return model


@contextlib.contextmanager
def using_task(model: nn.Module, name: str) -> Iterator[nn.Module]:
    """``with pemn.using_task(model, "b"): ...`` runs the block with task ``b`` active, then restores the task
    that was active before (also on an exception)."""
    previous = active_task(model)
    set_task(model, name)
    try:
        yield model
    finally:
        set_task(model, previous)


def _check_name(name: object, existing: Mapping[str, Any]) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a task name is 1-128 characters of letters, digits and _.:+=@-, got {name!r}")
    if name in existing:
        raise ValueError(f"the model already has a task {name!r}")
    return name


def task_seed(base_seed: int, name: str) -> int:
    """The seed of a new task's score init: from the config's seed and the task's name (stable everywhere)."""
    digest = hashlib.blake2b(f"{int(base_seed)}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def head_of(model: nn.Module) -> str:
    """The qualified name of the model's head: its last masked ``Linear`` (in ``named_modules`` order)."""
    heads = [n for n, m in unwrap(model).named_modules()
             if isinstance(m, MaskedLayer) and isinstance(m, nn.Linear) and n]
    if not heads:
        raise ConversionError("this model has no masked Linear layer to use as a task head; pass head=")
    return heads[-1]


def _new_head(base: nn.Module, num_classes: int, seed: int, index: int) -> nn.Module:
    """A copy of the masked Linear ``base`` with ``num_classes`` outputs: its weight takes the first rows of the
    base's prototype slice (same source and scale), fresh scores, a fresh bias (torch's init, seeded)."""
    mw = base.masked_weights()["weight"]
    shape = (num_classes, *mw.shape[1:])
    numel = math.prod(shape)
    bank = mw.bank
    if numel > bank.sources[mw.source].expanded:
        raise ConversionError(
            f"a head of {num_classes} classes needs {numel:,} prototype values, more than its source has "
            f"({bank.sources[mw.source].expanded:,}): convert the model with the largest class count")
    head = copy.deepcopy(base, memo={id(bank): bank, id(mw): mw})
    kept = kept_count(bank.config.keep, numel, bank.config.keep_rounding)
    new = MaskedWeight(bank, mw.source, shape, mw.scale, kept, fan_in=mw.fan_in)
    scores = init_scores(shape, mw.fan_in, seed, index)
    new.scores = nn.Parameter(scores.to(device=mw.bank.view(mw.source, 1).device))
    head._modules[CHILD_PREFIX + "weight"] = new
    head.out_features = num_classes
    if base.bias is not None:
        bias = _fresh_bias((num_classes,), mw.fan_in, seed, index).to(base.bias)
        head._parameters["bias"] = nn.Parameter(bias, requires_grad=base.bias.requires_grad)
    return head


def _fresh_bias(shape: tuple[int, ...], fan_in: int, seed: int, index: int) -> torch.Tensor:
    """torch's Linear/Conv bias init, U(±1/sqrt(fan_in)), from a private generator."""
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + 7_777_777 + index) % (2**63))
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return (torch.rand(shape, generator=g, dtype=torch.float32) * 2 - 1) * bound


def _fresh_state_(root: nn.Module, ts: TaskSet, seed: int) -> None:
    """Give the (just installed) task fresh scores and fresh extras: new tensor objects everywhere, so the
    stashed tasks' tensors are never written. Masked layers' biases get torch's init (seeded); every other module
    with ``reset_parameters`` (norms...) is reset under a seeded RNG; any other dense tensor is a copy of the
    previously active task's."""
    config = find_bank(root).config
    for index, (_, mw) in enumerate(ts.shared_weights(root).items()):
        mw._buffers.pop("mask", None)
        mw._parameters.pop("scores", None)
        mw.kept = None if config.scope == "global" else kept_count(config.keep, mw.numel, config.keep_rounding)
        scores = init_scores(mw.shape, mw.fan_in, seed, index)
        mw.scores = nn.Parameter(scores.to(device=mw.bank.view(mw.source, 1).device))
    for holders in ts.dense_slots(root).values():
        module, attr, is_param = holders[0]
        old = (module._parameters if is_param else module._buffers)[attr]
        new = old.detach().clone()
        new = nn.Parameter(new, requires_grad=old.requires_grad) if is_param else new
        for m, a, p in holders:
            (m._parameters if p else m._buffers)[a] = new
    own = ts._own_head_prefix()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index, (name, module) in enumerate(root.named_modules()):
            if own is not None and (name + ".").startswith(own):
                continue
            if isinstance(module, MaskedLayer):
                bias = module._parameters.get("bias")
                weights = module.masked_weights()
                if bias is not None and weights:
                    fan_in = next(iter(weights.values())).fan_in
                    with torch.no_grad():
                        bias.copy_(_fresh_bias(tuple(bias.shape), fan_in, seed, index))
            elif not isinstance(module, MaskedWeight) and callable(getattr(module, "reset_parameters", None)) \
                    and (any(p is not None for p in module._parameters.values()) or module._buffers) \
                    and not any(isinstance(c, MaskedWeight) for c in module.modules()):
                with torch.no_grad():
                    module.reset_parameters()


def add_task(model: nn.Module, name: str, *, num_classes: int | None = None, head: str | None = None,
             seed: int | None = None, app: Mapping[str, Any] | None = None, activate: bool = False) -> nn.Module:
    """Add task ``name`` to a converted model: fresh scores and fresh extras (see the module doc).

    Args:
        name: 1-128 characters of letters, digits and ``_.:+=@-``; unique in the model.
        num_classes: the task's own head with this many outputs (None: the converted head's count; a task with
            the converted head's count shares its module, with its own scores and bias).
        head: the qualified name of the head module (default: the last masked ``Linear``, :func:`head_of`); all
            tasks of a model share one head position.
        seed: seeds the task's score init and extras (default: from the config's seed and ``name``).
        app: a JSON-ready mapping stored with the task (what an application needs to rebuild its inputs).
        activate: make the new task the active one (like peft's ``add_adapter``, the default leaves the active
            task as it is).
    """
    root = unwrap(model)
    bank = find_bank(root)
    if bank.config.keep_rule != "uniform" or bank.config.gain:
        raise ConversionError("tasks share one set of per-layer kept counts and no per-channel gains: convert with "
                              "keep_rule='uniform' and gain=False to add tasks")
    ts = _taskset(root, create=True)
    assert ts is not None
    _check_name(name, ts.tasks)
    seed = task_seed(bank.config.seed, name) if seed is None else int(seed)
    task = _Task(name, seed, app=dict(app or {}))
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        path = head if head is not None else (ts.head_path or head_of(root))
        if ts.head_path is not None and path != ts.head_path:
            raise ConversionError(f"this model's task heads are at {ts.head_path!r}, not {path!r}")
        base = ts.base_head if ts.head_path is not None else root.get_submodule(path)
        if not (isinstance(base, MaskedLayer) and isinstance(base, nn.Linear) and "weight" in base.masked_weights()):
            raise ConversionError(f"a task head must be a masked Linear; {path!r} is {type(base).__name__}")
        if bank.config.scope == "global":
            raise ConversionError("a task with its own head needs scope='layer' (a global budget is over fixed "
                                  "shapes)")
        if num_classes != base.masked_weights()["weight"].shape[0]:
            ts.head_path, ts.base_head = path, base
            task.head = _new_head(base, num_classes, seed, len(masked_weights(root)))
            task.num_classes = num_classes
    previous = ts.active
    ts.stash(root)
    ts.tasks[name] = task
    ts.place_head(root, task)
    ts.active = name
    _fresh_state_(root, ts, seed)
    if not activate:
        ts.stash(root)
        ts.install(root, previous)
    return model


def delete_task(model: nn.Module, name: str) -> None:
    """Remove task ``name`` (not the active one: :func:`set_task` another first)."""
    ts = _require(model, name)
    if ts.active == name:
        raise ValueError(f"task {name!r} is the active one; set_task another before deleting it")
    del ts.tasks[name]


def rename_task(model: nn.Module, old: str, new: str) -> None:
    """Rename task ``old`` to ``new`` (keeps the order of the tasks)."""
    ts = _require(model, old)
    _check_name(new, ts.tasks)
    ts.tasks = {(new if k == old else k): v for k, v in ts.tasks.items()}
    ts.tasks[new].name = new
    if ts.active == old:
        ts.active = new
