"""Walks over a model's structure: the user's model inside its wrappers, who holds each parameter, the distinct
weights of a selection of layers, and the masked weights of a converted model.

The one "distinct weights" walk (:func:`distinct_weights`) is what conversion, the artifact's fan-ins and the
check of a file's manifest against a fresh model all read, so the three agree on which weights there are, in
which order, under which name and with which fan-in.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pemn.errors import ConversionError
from pemn.layers import MaskedLayer, MaskedWeight, layer_fan_in, weight_params
from pemn.prototype import PrototypeBank


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def qualified(module_name: str, param: str) -> str:
    """A parameter's name in the state dict: ``"fc.weight"`` (just ``"weight"`` for the root module's)."""
    return f"{module_name}.{param}" if module_name else param


def param_slots(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """Every (module, parameter name, qualified name) holding each parameter, by the parameter's id."""
    slots: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append((module, pname, qualified(mname, pname)))
    return slots


@dataclass(frozen=True)
class DistinctWeight:
    """One weight of a selection, counted once however many selected layers hold it: its qualified name and
    fan-in by its first holder (its layer type's rule), and its shape."""

    name: str
    shape: tuple[int, ...]
    fan_in: int


#: each selected module with, per weight it masks, the parameter name and the index of its distinct weight
Layout = list[tuple[nn.Module, list[tuple[str, int]]]]


def distinct_weights(selected: list[tuple[str, nn.Module]]) -> tuple[list[DistinctWeight], Layout]:
    """The distinct weights the ``(name, module)`` pairs of ``selected`` mask, in order of first holder (a tied
    weight once, under its first holder's name), and where each module's weights are among them."""
    weights: list[DistinctWeight] = []
    index_of: dict[int, int] = {}
    layout: Layout = []
    for name, module in selected:
        slots = []
        for param in weight_params(module):
            weight = module._parameters[param]
            if id(weight) not in index_of:
                index_of[id(weight)] = len(weights)
                shape = tuple(weight.shape)
                weights.append(DistinctWeight(qualified(name, param), shape, layer_fan_in(module, shape)))
            slots.append((param, index_of[id(weight)]))
        layout.append((module, slots))
    return weights, layout


def masked_weights(model: nn.Module) -> dict[str, MaskedWeight]:
    """Every masked weight of a converted model, once each, keyed by the weight's qualified name
    (``"fc.weight"``; a weight shared by several layers under its first user's name)."""
    out: dict[str, MaskedWeight] = {}
    seen: set[int] = set()
    for name, module in unwrap(model).named_modules():
        if isinstance(module, MaskedLayer):
            for param, mw in module.masked_weights().items():
                if id(mw) not in seen:
                    seen.add(id(mw))
                    out[qualified(name, param)] = mw
    return out


def tied_weights(model: nn.Module) -> dict[str, list[str]]:
    """Every masked weight held by more than one layer: its name (as in :func:`masked_weights`) -> the
    qualified names of all its users, the first one included."""
    users: dict[int, list[str]] = {}
    for name, module in unwrap(model).named_modules(remove_duplicate=False):
        if isinstance(module, MaskedLayer):
            for param, mw in module.masked_weights().items():
                users.setdefault(id(mw), [])
                q = qualified(name, param)
                if q not in users[id(mw)]:
                    users[id(mw)].append(q)
    return {names[0]: names for names in users.values() if len(names) > 1}


def find_bank(model: nn.Module) -> PrototypeBank:
    """The prototype bank of a converted model (ConversionError if the model is not converted)."""
    for mw in masked_weights(model).values():
        return mw.bank
    raise ConversionError("this model has no pemn masked layers; call pemn.convert_(model, config) first")


def is_converted(model: nn.Module) -> bool:
    """Whether ``model`` (inside any wrapper) holds a pemn masked layer."""
    return any(isinstance(m, MaskedLayer) for m in unwrap(model).modules())


__all__ = ["DistinctWeight", "distinct_weights", "find_bank", "is_converted", "masked_weights", "param_slots",
           "qualified", "tied_weights", "unwrap"]
