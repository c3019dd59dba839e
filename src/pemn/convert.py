"""Convert any model in place to a PEMN model, freeze its masks, or bake it back into a plain model.

Which layers are masked is the table of :mod:`pemn.registry`, read by :mod:`pemn.selection`. A parameter several
layers hold (tied input and output embeddings, T5's shared embedding, any ``a.weight is b.weight``) becomes one
masked weight that all of them reference, masked only if every one of its users is; everything is checked before
the model changes. ``convert_`` leaves a :class:`~pemn.densereport.DenseReport` of what stayed dense on the model
(``model.pemn_dense_report``) and guards transformers' weight tying (:mod:`pemn.tieguard`).

The names this module had before it was split by job (selection, the dense report, the tie guard, the walks
over a model) are still importable from it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from pemn._compat import module_fqn_filter
from pemn._memory import release_freed_memory
from pemn.config import PEMNConfig, kept_count
from pemn.densereport import (
    DENSE_WARN_SHARE,
    REPORT_ATTR,
    DenseReport,
    DenseTensor,
    DenseType,
    dense_report,
)
from pemn.errors import ConversionError
from pemn.layers import GlobalTopK, MaskedLayer, MaskedWeight, make_masked_weight, to_dense_, to_masked_
from pemn.normed import detach_hooked_, prepare_norms_, unmask_norms_
from pemn.prototype import Assignment, PrototypeBank, plan, slice_scale
from pemn.registry import type_names
from pemn.selection import FROZEN, OVERRIDES, FilterFn, select
from pemn.tieguard import guard_transformers_, unguard_
from pemn.walk import (
    DistinctWeight,
    distinct_weights,
    find_bank,
    is_converted,
    masked_weights,
    param_slots,
    tied_weights,
    unwrap,
)

_TRIM_AFTER = 1 << 20  # weights; below this, a layer's freed memory is not worth a trim


def set_keep_(model: nn.Module, keep: float) -> nn.Module:
    """Change a converted, training model's kept fraction to ``keep`` in place (keep annealing).

    Each layer then keeps :func:`~pemn.kept_count` ``(keep, numel)`` weights (``scope="global"``: the model-wide
    budget; ``keep_rule="erk"``: its share of ``keep``, :func:`pemn.config.layer_keeps`), and with ``keep_scale``
    its slice is scaled by ``1 / sqrt`` of its kept fraction. The model's config (what
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
    shapes = [mw.shape for mw in mws.values()]
    for mw, layer_keep, kept in zip(mws.values(), config.layer_keeps(shapes, keep), config.kept_counts(shapes, keep),
                                    strict=True):
        if mw.kept is not None:
            mw.kept = kept
        mw.scale = slice_scale(config, bank.sources[mw.source].fan_in, mw.fan_in, layer_keep)
    return model


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
    selected, dense_reason = select(root, config, module_fqn_filter(filter_fn))
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
    unique, layout = distinct_weights(selected)
    shapes = [w.shape for w in unique]
    sources, assignments = plan(config, shapes, [w.fan_in for w in unique])
    first_module, first_slots = layout[0]
    first = first_module._parameters[first_slots[0][0]]
    bank = PrototypeBank(config, sources, prototypes)
    dtype = first.dtype if first.dtype.is_floating_point else torch.float32
    bank.to(device=first.device, dtype=dtype)
    del first
    group = None
    if config.scope == "global" and masks is None:
        group = bank.global_topk = GlobalTopK(kept_count(config.keep, sum(math.prod(s) for s in shapes),
                                                                  config.keep_rounding))
    kept_counts = config.kept_counts(shapes)
    made: dict[int, MaskedWeight] = {}
    for module, slots in layout:
        weights: dict[str, MaskedWeight] = {}
        for param, index in slots:
            if index not in made:
                made[index] = _masked_weight(module._parameters[param], unique[index], assignments[index], bank,
                                             config, index, None if group else kept_counts[index], group, masks)
            weights[param] = made[index]
        to_masked_(module, weights)
        prepare_norms_(module)
        if sum(mw.numel for mw in weights.values()) >= _TRIM_AFTER:
            release_freed_memory()


def _masked_weight(weight: torch.Tensor, entry: DistinctWeight, assign: Assignment,
                   bank: PrototypeBank,
                   config: PEMNConfig, index: int, kept: int | None, group: GlobalTopK | None,
                   masks: Mapping[str, torch.Tensor] | None) -> MaskedWeight:
    mw = _new_masked_weight(weight, entry, assign, bank, config, index, kept, masks)
    if "gain" in mw._parameters:
        mw.gain.data = mw.gain.data.to(weight.device)
    if group is not None:
        group.members.append(mw)
    return mw


def _new_masked_weight(weight: torch.Tensor, entry: DistinctWeight, assign: Assignment,
                       bank: PrototypeBank, config: PEMNConfig, index: int, kept: int | None,
                       masks: Mapping[str, torch.Tensor] | None) -> MaskedWeight:
    name, shape, fan_in = entry.name, entry.shape, entry.fan_in
    device = weight.device
    if masks is not None:
        mw = MaskedWeight(bank, assign.source, shape, assign.scale, None, fan_in=fan_in)
        mw.freeze(masks[name].to(device), copy=False)
        return mw
    mw = make_masked_weight(bank, assign.source, shape, assign.scale, kept, config.seed, index, device=device,
                            fan_in=fan_in)
    if weight.dtype.is_floating_point:
        mw.scores.data = mw.scores.data.to(weight.dtype)
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
    unguard_(dense)
    dense.__dict__.pop(REPORT_ATTR, None)
    return dense


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
    guard_transformers_(root)
    return report


#: this module's own names and those it re-exports (where they lived before the split by job)
__all__ = ["DENSE_WARN_SHARE", "FROZEN", "MIN_PROTOTYPE_VALUES", "OVERRIDES", "REPORT_ATTR", "DenseReport",
           "DenseTensor", "DenseType", "DistinctWeight", "FilterFn", "convert_", "convert_selected_", "dense_report",
           "distinct_weights", "find_bank", "finish_conversion_", "freeze_masks", "is_converted", "masked_weights",
           "materialize", "param_slots", "select", "set_keep_", "tied_weights", "unwrap"]
