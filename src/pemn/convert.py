"""Convert any model in place to a PEMN model, freeze its masks, or bake it back into a plain model.

Which layers are masked is the table of :mod:`pemn.registry`. A parameter several layers hold (tied input
and output embeddings, T5's shared embedding, any ``a.weight is b.weight``) becomes one masked weight that all
of them reference, masked only if every one of its users is; everything is checked before the model changes.
``convert_`` leaves a :class:`DenseReport` of what stayed dense on the model (``model.pemn_dense_report``).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from pemn._compat import module_fqn_filter
from pemn._memory import release_freed_memory
from pemn.config import PEMNConfig, kept_count
from pemn.errors import ConversionError
from pemn.hf import refuse_save_pretrained
from pemn.layers import (
    CHILD_PREFIX,
    GlobalTopK,
    MaskedLayer,
    MaskedWeight,
    layer_fan_in,
    make_masked_weight,
    masked_class_for,
    to_dense_,
    to_masked_,
    weight_params,
)
from pemn.normed import detach_hooked_, hooked_tensor, parametrized_tensor, prepare_norms_, unmask_norms_
from pemn.prototype import Assignment, PrototypeBank, plan, slice_scale
from pemn.registry import lookup, type_names

FilterFn = Callable[[nn.Module, str], bool]  # torchao's order: filter_fn(module, fqn)
_TRIM_AFTER = 1 << 20  # weights; below this, a layer's freed memory is not worth a trim
#: a dense tensor at least this share of the model, left dense without being asked to, is warned about
DENSE_WARN_SHARE = 0.01
REPORT_ATTR = "pemn_dense_report"
OVERRIDES = "its class overrides"


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _qualified(module_name: str, param: str) -> str:
    return f"{module_name}.{param}" if module_name else param


def _type_names(module: nn.Module) -> set[str]:
    return {c.__name__ for c in type(module).__mro__}


def _matches(name: str, module: nn.Module, patterns: tuple[str, ...], known: tuple[str, ...]) -> bool:
    types_ = _type_names(module)
    for p in patterns:
        if p in known:
            if p in types_:
                return True
        elif re.fullmatch(p, name):
            return True
    return False


def _owns_params(module: nn.Module) -> bool:
    return any(p is not None for p in module._parameters.values())


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


def _refusal(name: str, module: nn.Module) -> str | None:
    """Why ``module`` (of a registered type) cannot be masked faithfully, or None."""
    spec = lookup(module)
    assert spec is not None  # only registered modules are asked about
    where = f"module {name or '<root>'!r} ({type(module).__name__})"
    way_out = f"leave it dense with exclude=[{re.escape(name)!r}]" if name else "leave it dense"
    if parametrize.is_parametrized(module) and _through_parametrizations(module) is None:
        params = ", ".join(sorted(module.parametrizations.keys()))
        return (f"cannot mask {where}: its {params} is computed by a torch.nn.utils.parametrize "
                f"parametrization that pemn cannot mask through (it masks a weight computed by exactly one "
                f"weight_norm or spectral_norm of torch.nn.utils.parametrizations). {way_out.capitalize()}, "
                f"or remove it first with torch.nn.utils.parametrize.remove_parametrizations(module, "
                f"{sorted(module.parametrizations.keys())[0]!r}) (bakes the current weight)")
    computed = [w for w in spec[0].weights if module._parameters.get(w) is None and hooked_tensor(module, w) is None
                and not parametrize.is_parametrized(module, w) and isinstance(getattr(module, w, None), torch.Tensor)]
    if computed:
        return (f"cannot mask {where}: its {', '.join(computed)} is not a parameter but computed by a hook "
                f"(torch.nn.utils.weight_norm?). {way_out.capitalize()}, or remove the hook first "
                "(torch.nn.utils.remove_weight_norm)")
    if masked_class_for(module) is None:
        return (f"cannot mask {where}: it overrides its parent's forward ({spec[1].__name__}), which pemn cannot "
                f"reproduce. If that forward reads self.weight, register the class with "
                f"pemn.register_layer({type(module).__name__}); otherwise {way_out}")
    if spec[0].check is not None:
        reason = spec[0].check(module)
        if reason:
            return f"cannot mask {where}: {reason} ({way_out})"
    if not any(weight_params(m) for _, m in _mask_slots(name, module)):
        return f"module {name!r} has no weight"
    for w in weight_params(module):
        if isinstance(module._parameters[w], nn.parameter.UninitializedParameter):
            return f"module {name!r} is lazy and not initialised yet; run one forward first"
    return None


def _through_parametrizations(module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """For a registered layer whose weights torch.nn.utils.parametrize computes: the ``parametrizations.<w>``
    lists that pemn masks instead of the layer (relative name, list), or None when some parametrization is not
    one pemn masks through (:func:`pemn.layers.parametrized_tensor`) or sits on a tensor that is not a weight."""
    spec = lookup(module)
    weights = spec[0].weights if spec is not None else ()
    plists = dict(module.parametrizations.items())
    if any(w not in weights or parametrized_tensor(plist) is None for w, plist in plists.items()):
        return None
    if any(module._parameters.get(w) is not None for w in weights):  # partly parametrized: not worth the case
        return None
    return [(f"parametrizations.{w}", plist) for w, plist in plists.items()]


def _mask_slots(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose tensors masking ``module`` replaces: the module itself, or the parametrization lists of
    a weight_norm / spectral_norm layer."""
    if parametrize.is_parametrized(module):
        return [(_qualified(name, sub), plist) for sub, plist in _through_parametrizations(module) or []]
    return [(name, module)]


def param_slots(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """Every (module, parameter name, qualified name) holding each parameter, by the parameter's id."""
    slots: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append((module, pname, _qualified(mname, pname)))
    return slots


FROZEN = ("frozen (requires_grad=False): a fixed table such as a sinusoidal position embedding keeps its values "
          "(name it in targets to mask it)")


def _frozen(module: nn.Module) -> bool:
    """Whether every weight pemn would mask in ``module`` is frozen (``requires_grad=False``)."""
    # _parameters, not getattr: reading a parametrized weight runs its parametrization (spectral_norm's power
    # iteration updates buffers), and a refused module must be left as it was
    weights = [m._parameters[w] for _, m in _mask_slots("", module) for w in weight_params(m)]
    return bool(weights) and not any(w.requires_grad for w in weights)


def _select(model: nn.Module, config: PEMNConfig, filter_fn: FilterFn | None
            ) -> tuple[list[tuple[str, nn.Module]], dict[int, str]]:
    """The modules to mask, in ``named_modules`` order, and why each registered module left dense is.

    Raises :class:`ConversionError` for anything asked for that cannot be masked, before any change.
    """
    known = type_names()
    _check_type_patterns(model, config, known)
    selected: list[tuple[str, nn.Module]] = []
    chosen: set[int] = set()
    dense_reason: dict[int, str] = {}
    for name, module in model.named_modules():
        if id(module) in chosen or isinstance(module, parametrize.ParametrizationList):
            continue  # a layer's parametrizations: the layer decides
        registered = lookup(module) is not None
        # exclude also takes any class name of the module (exclude=["LayerNorm"] only silences the report)
        excluded = _matches(name, module, config.exclude, known) or bool(_type_names(module) & set(config.exclude))
        if config.targets is None:
            wanted = registered
        else:
            wanted = _matches(name, module, config.targets, known)
        if not wanted or excluded:
            if registered or excluded:
                dense_reason[id(module)] = "excluded" if excluded else "not in targets"
            continue
        if filter_fn is not None and not filter_fn(module, name):
            if registered:
                dense_reason[id(module)] = "vetoed by filter_fn"
            continue
        if not registered:
            if not _owns_params(module):
                continue  # a container matched by a name pattern: its children decide
            raise ConversionError(
                f"cannot mask module {name or '<root>'!r} of type {type(module).__name__}; pemn masks "
                f"{', '.join(known)} (add a layer type with pemn.register_layer). Leave it out with "
                f"exclude=[{re.escape(name)!r}] or narrow targets.")
        if config.targets is None and masked_class_for(module) is None:
            # a subclass with its own forward (Whisper's positional embedding, scaled embeddings...): asked for
            # by default only, so it stays dense, said in the report and a warning; targeting it is an error
            cls, parent = type(module).__name__, lookup(module)[1].__name__  # type: ignore[index]
            dense_reason[id(module)] = (f"{OVERRIDES} {parent}'s forward (pemn.register_layer({cls}) masks it "
                                        "if that forward reads self.weight)")
            continue
        if config.targets is None and _frozen(module):
            # a weight the model freezes is a fixed table (Whisper's sinusoidal positions...), not a learned one:
            # by default it keeps its values (naming it in targets masks it)
            dense_reason[id(module)] = FROZEN
            continue
        refusal = _refusal(name, module)
        if refusal:
            raise ConversionError(refusal)
        for slot in _mask_slots(name, module):
            selected.append(slot)
            chosen.add(id(slot[1]))
        chosen.add(id(module))
        dense_reason.pop(id(module), None)
        if isinstance(module, nn.MultiheadAttention):  # its out-projection belongs to it
            prefix = f"{name}.out_proj" if name else "out_proj"
            out = module.out_proj
            if id(out) not in chosen and not _matches(prefix, out, config.exclude, known):
                selected.append((prefix, out))
                chosen.add(id(out))
                dense_reason.pop(id(out), None)
    _drop_partial_ties(model, selected, chosen, dense_reason)
    # keep named_modules order (the out-projection may have been appended early)
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    selected.sort(key=lambda nm: order[id(nm[1])])
    return selected, dense_reason


def _drop_partial_ties(model: nn.Module, selected: list[tuple[str, nn.Module]], chosen: set[int],
                       dense_reason: dict[int, str]) -> None:
    """A weight is masked only if every module holding it masks it: otherwise masking would untie it.
    Modules holding such a weight stay dense (with the reason recorded), until nothing changes."""
    slots = param_slots(model)
    changed = True
    while changed:
        changed = False
        for name, module in list(selected):
            for p in weight_params(module):
                others = [q for m, pn, q in slots[id(module._parameters[p])]
                          if id(m) not in chosen or pn not in weight_params(m)]
                if others:
                    selected.remove((name, module))
                    chosen.discard(id(module))
                    dense_reason[id(module)] = f"its {p} is shared with {others[0]}, which stays dense"
                    changed = True
                    break


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
                    out[_qualified(name, param)] = mw
    return out


def tied_weights(model: nn.Module) -> dict[str, list[str]]:
    """Every masked weight held by more than one layer: its name (as in :func:`masked_weights`) -> the
    qualified names of all its users, the first one included."""
    users: dict[int, list[str]] = {}
    for name, module in unwrap(model).named_modules(remove_duplicate=False):
        if isinstance(module, MaskedLayer):
            for param, mw in module.masked_weights().items():
                users.setdefault(id(mw), [])
                q = _qualified(name, param)
                if q not in users[id(mw)]:
                    users[id(mw)].append(q)
    return {names[0]: names for names in users.values() if len(names) > 1}


def find_bank(model: nn.Module) -> PrototypeBank:
    """The prototype bank of a converted model (ConversionError if the model is not converted)."""
    for mw in masked_weights(model).values():
        return mw.bank
    raise ConversionError("this model has no pemn masked layers; call pemn.convert_(model, config) first")


def set_keep_(model: nn.Module, keep: float) -> nn.Module:
    """Change a converted, training model's kept fraction to ``keep`` in place (keep annealing).

    Each layer then keeps :func:`~pemn.kept_count` ``(keep, numel)`` weights (``scope="global"``: the model-wide
    budget), and with ``keep_scale`` its slice is scaled by ``1 / sqrt(keep)``. The model's config (what
    :func:`pemn.save` records and :func:`pemn.load` rebuilds from) takes the new ``keep`` too, so the model is
    exactly what :func:`convert_` with that keep gives and a save at any keep loads bit-identically; setting
    the first keep back restores the counts and scales of the conversion (the prototype does not depend on
    keep). Frozen masks cannot change (ValueError).
    """
    if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0 < keep <= 1:
        raise ValueError(f"keep (the kept fraction) must be a number with 0 < keep <= 1, got {keep!r}")
    mws = masked_weights(model)
    bank = find_bank(model)
    if any(mw.frozen for mw in mws.values()):
        raise ValueError("set_keep_ needs trainable scores: this model's masks are frozen")
    config = bank.config = dataclasses.replace(bank.config, keep=float(keep))
    if bank.global_topk is not None:
        bank.global_topk.total_kept = kept_count(keep, sum(mw.numel for mw in mws.values()), config.keep_rounding)
        bank.global_topk._key = None
    for mw in mws.values():
        if mw.kept is not None:
            mw.kept = kept_count(keep, mw.numel, config.keep_rounding)
        mw.scale = slice_scale(config, bank.sources[mw.source].fan_in, mw.fan_in, keep)
    return model


def is_converted(model: nn.Module) -> bool:
    return any(isinstance(m, MaskedLayer) for m in unwrap(model).modules())


def convert_(model: nn.Module, config: PEMNConfig, *, filter_fn: FilterFn | None = None) -> nn.Module:
    """Convert ``model`` in place to a PEMN model and return the same object.

    Every weight of a layer type in :mod:`pemn.registry` (Linear, Conv, MultiheadAttention, Embedding,
    transformers' Conv1D and whatever :func:`~pemn.registry.register_layer` added) that ``config.targets`` /
    ``exclude`` select is replaced by a masked view of one shared random prototype
    (:class:`~pemn.prototype.PrototypeBank`) plus trainable scores; all other parameters (biases, norms,
    position tensors) are left as they are, trainable unless the user freezes them. A weight shared by
    several layers becomes one masked weight they all hold (its fan-in by its first user's rule).
    A subclass of a registered type with its own ``forward`` is left dense (with a warning) when only the
    default targets ask for it, and refused when targeted explicitly; ``pemn.register_layer`` masks it.
    ``filter_fn(module, fqn)`` (torchao's order; the old ``(name, module)`` still works, deprecated) can veto
    individual modules. Everything is checked first: on any
    :class:`ConversionError` the model is unchanged. Torch's global RNG is neither used nor changed.

    The model gets a :class:`DenseReport` of what stayed dense (``model.pemn_dense_report``, printed by
    :func:`pemn.summary`), and a warning names every tensor of 2+ dimensions and at least 1 % of the model
    that stayed dense without being excluded (a position table, an unregistered layer's weight...).
    """
    if not isinstance(config, PEMNConfig):
        raise TypeError(f"config must be a PEMNConfig, got {type(config).__name__}")
    root = unwrap(model)
    if is_converted(root):
        raise ConversionError("this model is already converted by pemn; build a fresh model to convert again")
    selected, dense_reason = _select(root, config, module_fqn_filter(filter_fn))
    if not selected:
        skipped = [f"{n or '<root>'!r}: {dense_reason[id(m)]}" for n, m in root.named_modules()
                   if dense_reason.get(id(m), "").startswith(OVERRIDES)]
        raise ConversionError(
            f"no module matched targets={list(config.targets) if config.targets else 'all supported types'} "
            f"(exclude={list(config.exclude)}); pemn masks {', '.join(type_names())}"
            + (f"; left dense: {'; '.join(skipped[:3])}" if skipped else ""))
    convert_selected_(selected, config)
    finish_conversion_(root, dense_reason, warn=True)
    _warn_tiny_prototype(find_bank(root), config)
    return model


#: Fewer prototype values than this draw a warning from :func:`convert_`: every weight is then one of a handful
#: of numbers times its mask bit, and a small model stays near chance.
MIN_PROTOTYPE_VALUES = 8


def _warn_tiny_prototype(bank: PrototypeBank, config: PEMNConfig) -> None:
    if config.strategy != "rp" or bank.unique_values >= MIN_PROTOTYPE_VALUES:
        return
    largest = max(src.expanded for src in bank.sources.values())
    if largest < MIN_PROTOTYPE_VALUES:
        return
    need = (MIN_PROTOTYPE_VALUES - 1) / largest  # int(ratio * largest) + 1 >= MIN_PROTOTYPE_VALUES
    nice = 10.0 ** math.ceil(math.log10(need))
    n = bank.unique_values
    warnings.warn(f"pemn: the rp prototype has only {n} value{'' if n == 1 else 's'} (ratio {config.ratio:g} of the "
                  f"largest layer's {largest:,} weights), too few for this model to learn well; ratio >= {need:.2g} "
                  f"gives at least {MIN_PROTOTYPE_VALUES} (e.g. ratio={nice:g}: {int(nice * largest) + 1:,} values)",
                  stacklevel=3)


def convert_selected_(selected: list[tuple[str, nn.Module]], config: PEMNConfig,
                      prototypes: dict[str, np.ndarray] | None = None,
                      masks: Mapping[str, torch.Tensor] | None = None) -> None:
    """Convert exactly these modules (in this order) with one shared bank.

    A parameter held by several of them (a tie) becomes one :class:`MaskedWeight`, named by its first
    holder. ``prototypes`` gives stored values instead of regenerating them from the seed, and ``masks``
    (keyed by weight name) gives frozen masks instead of initialising scores: both are used when loading an
    artifact. Modules are converted one at a time, so each dense weight is released before the next layer's
    scores exist and peak memory stays near one copy of the weights.
    """
    unique: list[tuple[str, tuple[int, ...], int]] = []  # (name, shape, fan-in) of each distinct weight
    index_of: dict[int, int] = {}
    layout: list[tuple[nn.Module, list[tuple[str, int]]]] = []
    for name, module in selected:
        slots = []
        for param in weight_params(module):
            weight = module._parameters[param]
            if id(weight) not in index_of:
                index_of[id(weight)] = len(unique)
                shape = tuple(weight.shape)
                unique.append((_qualified(name, param), shape, layer_fan_in(module, shape)))
            slots.append((param, index_of[id(weight)]))
        layout.append((module, slots))
    shapes = [shape for _, shape, _ in unique]
    sources, assignments = plan(config, shapes, [f for _, _, f in unique])
    first = selected[0][1]._parameters[weight_params(selected[0][1])[0]]
    bank = PrototypeBank(config, sources, prototypes)
    dtype = first.dtype if first.dtype.is_floating_point else torch.float32
    bank.to(device=first.device, dtype=dtype)
    del first
    group = None
    if config.scope == "global" and masks is None:
        group = bank.global_topk = GlobalTopK(kept_count(config.keep, sum(math.prod(s) for s in shapes),
                                                                  config.keep_rounding))
    made: dict[int, MaskedWeight] = {}
    for module, slots in layout:
        weights: dict[str, MaskedWeight] = {}
        for param, index in slots:
            if index not in made:
                made[index] = _masked_weight(module._parameters[param], unique[index], assignments[index], bank,
                                             config, index, group, masks)
            weights[param] = made[index]
        to_masked_(module, weights)
        prepare_norms_(module)
        if sum(mw.numel for mw in weights.values()) >= _TRIM_AFTER:
            release_freed_memory()


def _masked_weight(weight: torch.Tensor, entry: tuple[str, tuple[int, ...], int], assign: Assignment,
                   bank: PrototypeBank,
                   config: PEMNConfig, index: int, group: GlobalTopK | None,
                   masks: Mapping[str, torch.Tensor] | None) -> MaskedWeight:
    name, shape, fan_in = entry
    device = weight.device
    kept = kept_count(config.keep, weight.numel(), config.keep_rounding) if group is None else None
    if masks is not None:
        mw = MaskedWeight(bank, assign.source, shape, assign.scale, None, fan_in=fan_in)
        mw.freeze(masks[name].to(device), copy=False)
        return mw
    mw = make_masked_weight(bank, assign.source, shape, assign.scale, kept, config.seed, index, device=device,
                            fan_in=fan_in)
    if weight.dtype.is_floating_point:
        mw.scores.data = mw.scores.data.to(weight.dtype)
    if group is not None:
        group.members.append(mw)
    return mw


def freeze_masks(model: nn.Module) -> nn.Module:
    """Replace every layer's scores by the boolean mask they select (no per-step top-k, no scores kept).

    Returns the same model. An optimizer built over the old scores must be rebuilt.
    """
    mws = masked_weights(model)
    if not mws:
        raise ConversionError("this model has no pemn masked layers to freeze")
    masks = {name: mw.current_mask() for name, mw in mws.items() if not mw.frozen}  # all before any freezes
    for name, mask in masks.items():
        mws[name].freeze(mask)
    return model


def materialize(model: nn.Module) -> nn.Module:
    """A plain PyTorch copy of a converted model: standard layers with ``weight = prototype * mask``.

    The result has no pemn classes, gives the same outputs, and exports like any model (ONNX, TorchScript).
    A masked weight shared by several layers becomes one Parameter they all hold. Its baked weights do not
    require grad (everything else keeps its flag). The input model is not changed.
    """
    root = unwrap(model)
    if not is_converted(root):
        raise ConversionError("this model has no pemn masked layers to materialize")
    detach_hooked_(root)
    dense = copy.deepcopy(root)
    baked: dict[int, nn.Parameter] = {}
    masked = {id(m) for m in dense.modules() if isinstance(m, MaskedLayer)}
    for module in list(dense.modules()):
        if isinstance(module, MaskedLayer):
            to_dense_(module, baked)
    unmask_norms_(dense, masked)
    for module in dense.modules():
        for attr in _GUARDED:
            if isinstance(module.__dict__.get(attr), types.MethodType) and \
                    getattr(module.__dict__[attr].__func__, "_pemn_guard", False):
                del module.__dict__[attr]
    dense.__dict__.pop(REPORT_ATTR, None)
    return dense


# --- what stayed dense --------------------------------------------------------------------------------------

@dataclass
class DenseType:
    """The dense tensors (parameters and float buffers) held by modules of one type."""

    module_type: str
    tensors: int
    elements: int
    share: float


@dataclass
class DenseTensor:
    name: str
    module_type: str
    elements: int
    share: float
    reason: str
    shape: tuple[int, ...] = ()

    @property
    def warned(self) -> bool:
        """Worth a warning: a matrix or larger (not a bias or norm vector, which PEMN keeps dense by design)
        that the user did not ask to keep dense."""
        return len(self.shape) >= 2 and self.reason not in _USER_CHOICES


@dataclass
class DenseReport:
    """What a converted model keeps dense, each tensor counted once.

    ``total_elements`` is the model's size in elements (masked weights + dense parameters + float buffers);
    ``by_type`` groups the dense tensors by the type of the module holding them (largest first); ``large``
    lists every dense tensor of at least 1 % of the model with why it stayed dense.
    """

    total_elements: int
    masked_elements: int
    by_type: list[DenseType] = field(default_factory=list)
    large: list[DenseTensor] = field(default_factory=list)

    @property
    def dense_elements(self) -> int:
        return self.total_elements - self.masked_elements

    def table(self) -> str:
        total = max(1, self.total_elements)
        rows = [f"dense (not masked): {self.dense_elements:,} of {self.total_elements:,} elements "
                f"({self.dense_elements / total:.1%})"]
        for t in self.by_type:
            rows.append(f"  {t.module_type:<38} {t.tensors:>5} tensors {t.elements:>12,} {t.share:>7.2%}")
        for t in self.large:
            rows.append(f"  >= 1%: {t.name} ({t.module_type}, {t.elements:,}, {t.share:.1%}): {t.reason}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def _reason(module: nn.Module, dense_reason: dict[int, str]) -> str:
    if id(module) in dense_reason:
        return dense_reason[id(module)]
    if isinstance(module, MaskedLayer):
        return "an extra of a masked layer (bias...)"
    if lookup(module) is None:
        return f"a parameter of a {type(module).__name__}, not a layer type pemn masks (pemn.register_layer adds one)"
    return "not selected"


_USER_CHOICES = ("excluded", "not in targets", "vetoed by filter_fn", FROZEN)


def dense_report(model: nn.Module, dense_reason: dict[int, str] | None = None) -> DenseReport:
    """What ``model`` (converted) keeps dense; see :class:`DenseReport`."""
    root = unwrap(model)
    dense_reason = dense_reason or {}
    masked = sum(mw.numel for mw in masked_weights(root).values())
    seen: set[int] = set()
    held: list[tuple[str, nn.Module, torch.Tensor]] = []
    modules = dict(root.named_modules())
    for mname, module in modules.items():
        if isinstance(module, MaskedWeight | PrototypeBank):
            continue
        owner = module
        if isinstance(module, parametrize.ParametrizationList):  # x.parametrizations.weight: x holds them
            owner = modules.get(mname.rsplit(".", 2)[0] if mname.count(".") >= 2 else "", module)
        tensors = [(n, p) for n, p in module._parameters.items() if p is not None]
        tensors += [(n, b) for n, b in module._buffers.items() if b is not None and b.is_floating_point()
                    and n not in module._non_persistent_buffers_set]
        for n, t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                held.append((_qualified(mname, n), owner, t))
    total = masked + sum(t.numel() for _, _, t in held)
    by_type: dict[str, list[int]] = {}
    large = []
    for qname, module, t in held:
        kind = module.__dict__.get("_pemn_original_class", type(module)).__name__
        entry = by_type.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += t.numel()
        if total and t.numel() >= DENSE_WARN_SHARE * total:
            large.append(DenseTensor(qname, kind, t.numel(), t.numel() / total, _reason(module, dense_reason),
                                     tuple(t.shape)))
    types_ = [DenseType(k, n, e, e / max(1, total)) for k, (n, e) in by_type.items()]
    types_.sort(key=lambda d: -d.elements)
    large.sort(key=lambda d: -d.elements)
    return DenseReport(total, masked, types_, large)


def finish_conversion_(root: nn.Module, dense_reason: dict[int, str], *, warn: bool) -> DenseReport:
    """After a conversion: leave the dense report on the model, warn about large dense tensors (when
    ``warn``), and guard transformers' weight-tying methods."""
    report = dense_report(root, dense_reason)
    root.__dict__[REPORT_ATTR] = report
    if warn:
        for name, module in root.named_modules():
            if dense_reason.get(id(module), "").startswith(OVERRIDES):
                warnings.warn(f"pemn: {name or '<root>'} ({type(module).__name__}) stays dense: "
                              f"{dense_reason[id(module)]}", stacklevel=3)
        for t in report.large:
            if t.warned and not t.reason.startswith(OVERRIDES):
                warnings.warn(f"pemn: {t.name} ({t.module_type}, {t.elements:,} elements, {t.share:.1%} of the "
                              f"model) stays dense: {t.reason}", stacklevel=3)
    _guard_transformers_(root)
    return report


# --- transformers' weight tying ---------------------------------------------------------------------------

_GUARDED = ("tie_weights", "resize_token_embeddings", "save_pretrained")


def _resolve(owner: nn.Module, name: str) -> tuple[str, object]:
    """What a parameter name of ``owner`` points at: ("masked", MaskedWeight), ("dense", tensor) or
    ("missing", None). Names inside pemn's internals resolve to their MaskedWeight."""
    parts = name.split(".")
    module: nn.Module = owner
    for part in parts[:-1]:
        child = module._modules.get(part)
        if child is None:
            return "missing", None
        if isinstance(child, MaskedWeight):
            return "masked", child
        module = child
    attr = parts[-1]
    if isinstance(module, MaskedLayer) and attr in module.masked_weights():
        return "masked", module.masked_weights()[attr]
    t = module._parameters.get(attr, module._buffers.get(attr))
    return ("dense", (module, attr, t)) if t is not None else ("missing", None)


def _expanded_ties(owner: nn.Module) -> dict[str, str]:
    """transformers' tie mapping ``{target: source}`` of ``owner`` and its sub-models, expanded to parameter
    names as ``PreTrainedModel.get_expanded_tied_weights_keys(all_submodels=True)`` does, but over the
    original model's names (a masked weight under its own name, pemn's internals hidden)."""
    out: dict[str, str] = {}
    for prefix, sub in owner.named_modules(remove_duplicate=False):
        if not callable(getattr(type(sub), "get_expanded_tied_weights_keys", None)):
            continue
        mapping = getattr(sub, "_tied_weights_keys", None)
        if not getattr(getattr(sub, "config", None), "tie_word_embeddings", False) or not mapping:
            continue
        if not isinstance(mapping, Mapping):
            raise ConversionError("tie_weights() on a pemn model needs transformers >= 5 (a dict of tied weight "
                                  "keys); tie the weights before pemn.convert_ instead (the tie then holds)")
        names = [n for n, _ in sub.named_parameters(remove_duplicate=False)]
        names += [n for n, _ in sub.named_buffers(remove_duplicate=False)]
        names = [n for n in names if f".{CHILD_PREFIX}" not in f".{n}"]
        names += [_qualified(m, p) for m, mod in sub.named_modules(remove_duplicate=False)
                  if isinstance(mod, MaskedLayer) for p in mod.masked_weights()]
        for target, source in mapping.items():
            if target in names and source in names:
                pairs: list[tuple[str, str]] = [(target, source)]
            else:
                sources = sorted(n for n in set(names) if re.search("^" + source, n))
                targets = sorted(n for n in set(names) if re.search("^" + target, n))
                if not sources or not targets or len(targets) % len(sources):
                    raise ConversionError(f"cannot expand transformers' tie {target!r} -> {source!r} on this model")
                pairs = list(zip(targets, itertools.cycle(sources)))
            for t, s_ in pairs:
                out[_qualified(prefix, t)] = out.get(_qualified(prefix, s_), _qualified(prefix, s_))
    return out


def _pemn_tie_weights(self: nn.Module, *args, **kwargs) -> None:
    """transformers' ``tie_weights`` on a pemn model: ties pemn already holds are kept (one masked weight
    for all users), dense ties are made as transformers makes them, and a tie that would replace a masked
    weight raises :class:`ConversionError` (nothing is changed then)."""
    todo = []
    for target, source in _expanded_ties(self).items():
        (tk, tv), (sk, sv) = _resolve(self, target), _resolve(self, source)
        if tk == sk == "masked" and tv is sv:
            continue
        if tk == sk == "dense":
            if tv[2] is not sv[2]:
                todo.append((tv[0], tv[1], sv[2]))
            continue
        raise ConversionError(
            f"transformers asks to tie {target} to {source}, but pemn masks {target if tk == 'masked' else source} "
            "and they are not one masked weight: tie the weights before pemn.convert_ (the tie then holds through "
            "conversion, training and saving), or bake the model with pemn.materialize first")
    for module, attr, t in todo:
        setattr(module, attr, t)


def _pemn_resize_token_embeddings(self: nn.Module, new_num_tokens: int | None = None,
                                  pad_to_multiple_of: int | None = None, *args, **kwargs):
    """transformers' ``resize_token_embeddings`` on a pemn model: only the no-op form is allowed."""
    if new_num_tokens is None and pad_to_multiple_of is None:
        return self.get_input_embeddings()
    raise ConversionError("resize_token_embeddings() would replace pemn's masked embeddings by dense ones: resize "
                          "before pemn.convert_ (then convert the resized model)")


_pemn_tie_weights._pemn_guard = True  # type: ignore[attr-defined]
_pemn_resize_token_embeddings._pemn_guard = True  # type: ignore[attr-defined]


def _guard_transformers_(root: nn.Module) -> None:
    """Give every transformers model inside ``root`` (duck-typed: it has ``tie_weights`` and
    ``resize_token_embeddings``) pemn-aware versions of both, on the instance, and a ``save_pretrained`` that
    refuses (:func:`pemn.hf.refuse_save_pretrained`)."""
    for module in root.modules():
        if callable(getattr(type(module), "tie_weights", None)) and \
                callable(getattr(type(module), "resize_token_embeddings", None)):
            module.__dict__["tie_weights"] = types.MethodType(_pemn_tie_weights, module)
            module.__dict__["resize_token_embeddings"] = types.MethodType(_pemn_resize_token_embeddings, module)
            if callable(getattr(type(module), "save_pretrained", None)):
                module.__dict__["save_pretrained"] = types.MethodType(refuse_save_pretrained, module)
