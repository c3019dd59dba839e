"""The table of layer types pemn can mask: which weights each one has and how its fan-in is read.

Every entry says, for one layer class, the names of the weight parameters masking replaces and the fan-in
rule used for the prototype's scale and the scores' init. The built-in entries are torch's ``Linear``,
``Conv1d/2d/3d``, ``MultiheadAttention`` and ``Embedding``, and ``transformers.pytorch_utils.Conv1D``
(GPT-2's transposed linear layer), registered by its dotted name so ``import pemn`` never imports
transformers. A user adds a layer in one call::

    pemn.register_layer(MyLayer, weights=("weight",), fan_in=pemn.registry.fan_in_first)

A layer qualifies when its ``forward`` reads its weights as attributes (``self.weight``): pemn turns that
attribute into the masked tensor and leaves the forward untouched. A subclass of a registered class is
masked as its parent only if it keeps the parent's ``forward``; register the subclass itself to mask one
whose own forward reads ``self.weight``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

FanIn = Callable[[tuple[int, ...]], int]
Check = Callable[[nn.Module], "str | None"]


def fan_in_torch(shape: tuple[int, ...]) -> int:
    """torch's convention, ``prod(shape[1:])`` (``shape[0]`` for a vector): Linear, Conv, Embedding."""
    return max(1, math.prod(shape[1:])) if len(shape) > 1 else max(1, shape[0])


def fan_in_first(shape: tuple[int, ...]) -> int:
    """For weights stored as ``(in, out)`` (transformers' ``Conv1D``): ``shape[0]``."""
    return max(1, shape[0])


@dataclass(frozen=True)
class LayerSpec:
    """One entry of the table.

    ``name`` is the type name ``PEMNConfig(targets=..., exclude=...)`` accepts; ``module`` and ``qualname``
    identify the class (matched against every class in a module's MRO, so a lazily named class is found
    without importing its package); ``weights`` are the parameter names masked (absent or ``None`` ones are
    skipped, as for MultiheadAttention's packed vs separate projections); ``fan_in`` maps a weight's shape to
    its fan-in; ``check`` returns why a particular instance cannot be masked (or None).
    """

    name: str
    module: str
    qualname: str
    weights: tuple[str, ...]
    fan_in: FanIn = fan_in_torch
    check: Check | None = None


_TABLE: dict[tuple[str, str], LayerSpec] = {}


def _key_of(cls: type | str) -> tuple[str, str]:
    if isinstance(cls, str):
        module, _, qualname = cls.rpartition(".")
        if not module or not qualname:
            raise ValueError(f"a layer named by string must be 'package.module.ClassName', got {cls!r}")
        return module, qualname
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"register_layer needs an nn.Module subclass (or its dotted name), got {cls!r}")
    return cls.__module__, cls.__qualname__


def register_layer(cls: type[nn.Module] | str, weights: tuple[str, ...] | list[str] = ("weight",),
                   fan_in: FanIn | None = None, *, check: Check | None = None, name: str | None = None,
                   replace: bool = False) -> LayerSpec:
    """Make pemn mask layers of class ``cls`` (or a dotted ``"package.module.Class"`` name, matched lazily).

    Args:
        cls: the layer class, or its dotted name (so the package need not be imported to register it).
        weights: names of its weight parameters to mask; its forward must read them as ``self.<name>``.
        fan_in: ``shape -> fan-in`` (default :func:`fan_in_torch`, ``prod(shape[1:])``; use
            :func:`fan_in_first` for weights stored ``(in, out)``).
        check: ``module -> reason or None``: refuse instances pemn cannot mask faithfully (the reason goes
            into the :class:`~pemn.errors.ConversionError`).
        name: the type name for ``targets`` / ``exclude`` (default: the class name).
        replace: allow replacing an existing entry (otherwise registering a class twice is an error).

    Returns the new :class:`LayerSpec`.
    """
    module, qualname = _key_of(cls)
    weights = tuple(weights)
    if not weights or not all(isinstance(w, str) and w.isidentifier() for w in weights):
        raise ValueError(f"weights must be a non-empty tuple of parameter names, got {weights!r}")
    if fan_in is not None and not callable(fan_in):
        raise TypeError("fan_in must be a callable shape -> int")
    name = qualname.rpartition(".")[2] if name is None else name
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ValueError(f"a layer type name must be an identifier, got {name!r}")
    if (module, qualname) in _TABLE and not replace:
        raise ValueError(f"{module}.{qualname} is already registered; pass replace=True to change its entry")
    spec = LayerSpec(name, module, qualname, weights, fan_in or fan_in_torch, check)
    _TABLE[(module, qualname)] = spec
    return spec


def unregister_layer(cls: type[nn.Module] | str) -> None:
    """Remove an entry added by :func:`register_layer` (a KeyError if there is none)."""
    key = _key_of(cls)
    if key in _BUILTIN:
        raise ValueError(f"{key[0]}.{key[1]} is built in; leave it dense with PEMNConfig(exclude=[...]) instead")
    del _TABLE[key]


def layer_specs() -> list[LayerSpec]:
    """Every entry of the table, built-in ones first."""
    return list(_TABLE.values())


def type_names() -> tuple[str, ...]:
    """The type names ``targets`` / ``exclude`` accept, in table order."""
    return tuple(dict.fromkeys(s.name for s in _TABLE.values()))


def lookup(module: nn.Module) -> tuple[LayerSpec, type] | None:
    """The entry for ``module`` (the most specific registered class in its MRO) and that class, or None."""
    for c in type(module).__mro__:
        spec = _TABLE.get((c.__module__, c.__qualname__))
        if spec is not None:
            return spec, c
    return None


def _check_embedding(module: nn.Module) -> str | None:
    if module.sparse:
        return ("it has sparse=True (sparse gradients cannot reach mask scores); build it with sparse=False or "
                "leave it dense")
    if module.max_norm is not None:
        return ("it has max_norm set (torch renormalises the stored rows in place, which a masked weight does "
                "not have); build it without max_norm or leave it dense")
    return None


for _cls, _weights in ((nn.Linear, ("weight",)), (nn.Conv1d, ("weight",)), (nn.Conv2d, ("weight",)),
                       (nn.Conv3d, ("weight",)),
                       (nn.MultiheadAttention, ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"))):
    register_layer(_cls, _weights)
register_layer(nn.Embedding, ("weight",), check=_check_embedding)
register_layer("transformers.pytorch_utils.Conv1D", ("weight",), fan_in_first)
_BUILTIN = frozenset(_TABLE)

__all__ = ["LayerSpec", "fan_in_first", "fan_in_torch", "layer_specs", "lookup", "register_layer", "type_names",
           "unregister_layer"]
