"""Which modules of a model :func:`pemn.convert_` masks, and why each registered module it leaves dense stays so.

The rules, in order, for each module (its layer-table entry resolved once, :func:`pemn.layers.resolve`):
``exclude`` (a name regex or any class name of the module) and ``targets`` (default: every registered layer)
choose; ``filter_fn(module, fqn)`` can veto; an unregistered module asked for is an error; a registered subclass
with its own ``forward``, or with frozen weights, stays dense when only the default targets ask for it; a module
pemn cannot mask faithfully is an error (:func:`_refusal`). A MultiheadAttention takes its out-projection along.
Last, a weight is masked only if every module holding it is masked (ties are never undone). Every error is raised
before the model changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from pemn.config import PEMNConfig
from pemn.errors import ConversionError
from pemn.layers import Resolved, resolve, weight_params
from pemn.normed import hooked_tensor, parametrized_tensor
from pemn.registry import type_names
from pemn.walk import param_slots, qualified

FilterFn = Callable[[nn.Module, str], bool]  # torchao's order: filter_fn(module, fqn)
#: the start of the reason a registered subclass with its own forward stays dense
OVERRIDES = "its class overrides"
FROZEN = ("frozen (requires_grad=False): a fixed table such as a sinusoidal position embedding keeps its values "
          "(name it in targets to mask it)")
#: the reasons for staying dense that the user chose (never warned about)
USER_CHOICES = ("excluded", "not in targets", "vetoed by filter_fn", FROZEN)
Selection = list[tuple[str, nn.Module]]


@dataclass(frozen=True)
class _Module:
    """One module as selection sees it: its name, its layer-table entry (None: not registered) and the names of
    every class in its MRO, each read once."""

    name: str
    module: nn.Module
    entry: Resolved | None
    classes: frozenset[str]

    @classmethod
    def of(cls, name: str, module: nn.Module) -> _Module:
        return cls(name, module, resolve(module), frozenset(c.__name__ for c in type(module).__mro__))

    def matches(self, patterns: tuple[str, ...], known: tuple[str, ...]) -> bool:
        """Whether a pattern names this module: a registered type name by its classes, anything else as a
        regex over its name."""
        return any((p in self.classes) if p in known else re.fullmatch(p, self.name) is not None for p in patterns)


def _check_type_patterns(model: nn.Module, config: PEMNConfig, known: tuple[str, ...]) -> None:
    """A ``targets`` entry naming a layer type of the model that the registry does not know is an error
    (it would otherwise be read as a module-name regex and silently match nothing)."""
    if not config.targets:
        return
    names = [n for n, _ in model.named_modules()]
    classes = {c.__name__ for m in model.modules() for c in type(m).__mro__}
    for p in config.targets:
        if p in known or not re.fullmatch(r"[A-Z]\w*", p) or p not in classes:
            continue
        if not any(re.fullmatch(p, n) for n in names):
            raise ConversionError(
                f"targets: {p!r} is a layer type of this model that pemn has no entry for (it masks "
                f"{', '.join(known)}); add it with pemn.register_layer({p}, weights=('weight',)) if its "
                "forward reads self.weight")


def _refusal(m: _Module) -> str | None:
    """Why ``m`` (of a registered type) cannot be masked faithfully, or None."""
    name, module, entry = m.name, m.module, m.entry
    assert entry is not None  # only registered modules are asked about
    where = f"module {name or '<root>'!r} ({type(module).__name__})"
    way_out = f"leave it dense with exclude=[{re.escape(name)!r}]" if name else "leave it dense"
    if parametrize.is_parametrized(module) and _through_parametrizations(entry, module) is None:
        params = ", ".join(sorted(module.parametrizations.keys()))
        return (f"cannot mask {where}: its {params} is computed by a torch.nn.utils.parametrize "
                f"parametrization that pemn cannot mask through (it masks a weight computed by exactly one "
                f"weight_norm or spectral_norm of torch.nn.utils.parametrizations). {way_out.capitalize()}, "
                f"or remove it first with torch.nn.utils.parametrize.remove_parametrizations(module, "
                f"{sorted(module.parametrizations.keys())[0]!r}) (bakes the current weight)")
    computed = [w for w in entry.spec.weights if module._parameters.get(w) is None and hooked_tensor(module, w) is None
                and not parametrize.is_parametrized(module, w) and isinstance(getattr(module, w, None), torch.Tensor)]
    if computed:
        return (f"cannot mask {where}: its {', '.join(computed)} is not a parameter but computed by a hook "
                f"(torch.nn.utils.weight_norm?). {way_out.capitalize()}, or remove the hook first "
                "(torch.nn.utils.remove_weight_norm)")
    if entry.masked_class is None:
        return (f"cannot mask {where}: it overrides its parent's forward ({entry.cls.__name__}), which pemn cannot "
                f"reproduce. If that forward reads self.weight, register the class with "
                f"pemn.register_layer({type(module).__name__}); otherwise {way_out}")
    if entry.spec.check is not None:
        reason = entry.spec.check(module)
        if reason:
            return f"cannot mask {where}: {reason} ({way_out})"
    if not any(weights for _, _, weights in _mask_slots(m)):
        return f"module {name!r} has no weight"
    for w in entry.weights:
        if isinstance(module._parameters[w], nn.parameter.UninitializedParameter):
            return f"module {name!r} is lazy and not initialised yet; run one forward first"
    return None


def _through_parametrizations(entry: Resolved, module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """For a registered layer whose weights torch.nn.utils.parametrize computes: the ``parametrizations.<w>``
    lists that pemn masks instead of the layer (relative name, list), or None when some parametrization is not
    one pemn masks through (:func:`pemn.layers.parametrized_tensor`) or sits on a tensor that is not a weight."""
    weights = entry.spec.weights
    plists = dict(module.parametrizations.items())
    if any(w not in weights or parametrized_tensor(plist) is None for w, plist in plists.items()):
        return None
    if any(module._parameters.get(w) is not None for w in weights):  # partly parametrized: not worth the case
        return None
    return [(f"parametrizations.{w}", plist) for w, plist in plists.items()]


def _mask_slots(m: _Module) -> list[tuple[str, nn.Module, tuple[str, ...]]]:
    """The modules whose tensors masking ``m`` replaces, with those tensors' names: the module itself, or the
    parametrization lists of a weight_norm / spectral_norm layer."""
    assert m.entry is not None  # only registered modules are asked about
    if parametrize.is_parametrized(m.module):
        return [(qualified(m.name, sub), plist, tuple(weight_params(plist)))
                for sub, plist in _through_parametrizations(m.entry, m.module) or []]
    return [(m.name, m.module, m.entry.weights)]


def _frozen(m: _Module) -> bool:
    """Whether every weight pemn would mask in ``m`` is frozen (``requires_grad=False``)."""
    # _parameters, not getattr: reading a parametrized weight runs its parametrization (spectral_norm's power
    # iteration updates buffers), and a refused module must be left as it was
    weights = [module._parameters[w] for _, module, names in _mask_slots(m) for w in names]
    return bool(weights) and not any(w.requires_grad for w in weights)


def _why_dense(m: _Module, config: PEMNConfig, known: tuple[str, ...], filter_fn: FilterFn | None) -> str | None:
    """None to mask ``m``; else why it stays dense ("" for a module not worth a reason in the report). Raises
    :class:`ConversionError` for a module asked for that cannot be masked."""
    registered = m.entry is not None
    # exclude also takes any class name of the module (exclude=["LayerNorm"] only silences the report)
    excluded = m.matches(config.exclude, known) or bool(m.classes & set(config.exclude))
    wanted = registered if config.targets is None else m.matches(config.targets, known)
    if not wanted or excluded:
        return ("excluded" if excluded else "not in targets") if registered or excluded else ""
    if filter_fn is not None and not filter_fn(m.module, m.name):
        return "vetoed by filter_fn" if registered else ""
    if m.entry is None:
        if not any(p is not None for p in m.module._parameters.values()):
            return ""  # a container matched by a name pattern: its children decide
        raise ConversionError(
            f"cannot mask module {m.name or '<root>'!r} of type {type(m.module).__name__}; pemn masks "
            f"{', '.join(known)} (add a layer type with pemn.register_layer). Leave it out with "
            f"exclude=[{re.escape(m.name)!r}] or narrow targets.")
    if config.targets is None and m.entry.masked_class is None:
        # a subclass with its own forward (Whisper's positional embedding, scaled embeddings...): asked for by
        # default only, so it stays dense, said in the report and a warning; targeting it is an error
        cls = type(m.module).__name__
        return (f"{OVERRIDES} {m.entry.cls.__name__}'s forward (pemn.register_layer({cls}) masks it if that "
                "forward reads self.weight)")
    if config.targets is None and _frozen(m):
        # a weight the model freezes is a fixed table (Whisper's sinusoidal positions...), not a learned one: by
        # default it keeps its values (naming it in targets masks it)
        return FROZEN
    refusal = _refusal(m)
    if refusal:
        raise ConversionError(refusal)
    return None


def select(model: nn.Module, config: PEMNConfig, filter_fn: FilterFn | None) -> tuple[Selection, dict[int, str]]:
    """The modules to mask, in ``named_modules`` order, and why each registered module left dense is (by the
    module's id).

    Raises :class:`ConversionError` for anything asked for that cannot be masked, before any change.
    """
    known = type_names()
    _check_type_patterns(model, config, known)
    selected: Selection = []
    masked: dict[int, tuple[str, ...]] = {}  # every module chosen (by its id) -> the names of its weights masked
    dense_reason: dict[int, str] = {}
    for name, module in model.named_modules():
        if id(module) in masked or isinstance(module, parametrize.ParametrizationList):
            continue  # a layer's parametrizations: the layer decides
        m = _Module.of(name, module)
        reason = _why_dense(m, config, known, filter_fn)
        if reason is not None:
            if reason:
                dense_reason[id(module)] = reason
            continue
        assert m.entry is not None  # _why_dense masks registered modules only
        for slot_name, slot, weights in _mask_slots(m):
            selected.append((slot_name, slot))
            masked[id(slot)] = weights
        masked.setdefault(id(module), m.entry.weights)
        dense_reason.pop(id(module), None)
        if isinstance(module, nn.MultiheadAttention):  # its out-projection belongs to it
            out = _Module.of(f"{name}.out_proj" if name else "out_proj", module.out_proj)
            if id(out.module) not in masked and not out.matches(config.exclude, known):
                selected.append((out.name, out.module))
                masked[id(out.module)] = out.entry.weights if out.entry is not None else ()
                dense_reason.pop(id(out.module), None)
    _drop_partial_ties(model, selected, masked, dense_reason)
    # keep named_modules order (the out-projection may have been appended early)
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    selected.sort(key=lambda nm: order[id(nm[1])])
    return selected, dense_reason


def _drop_partial_ties(model: nn.Module, selected: Selection, masked: dict[int, tuple[str, ...]],
                       dense_reason: dict[int, str]) -> None:
    """A weight is masked only if every module holding it masks it: otherwise masking would untie it.
    Modules holding such a weight stay dense (with the reason recorded), until nothing changes."""
    slots = param_slots(model)
    changed = True
    while changed:
        changed = False
        for name, module in list(selected):
            for p in masked[id(module)]:
                others = [q for holder, pn, q in slots[id(module._parameters[p])]
                          if pn not in masked.get(id(holder), ())]
                if others:
                    selected.remove((name, module))
                    del masked[id(module)]
                    dense_reason[id(module)] = f"its {p} is shared with {others[0]}, which stays dense"
                    changed = True
                    break


__all__ = ["FROZEN", "OVERRIDES", "USER_CHOICES", "FilterFn", "Selection", "select"]
