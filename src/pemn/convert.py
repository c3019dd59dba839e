"""Convert any model in place to a PEMN model, freeze its masks, or bake it back into a plain model."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from pemn.config import SUPPORTED_TYPES, PEMNConfig, kept_count
from pemn.errors import ConversionError
from pemn.fileio import release_freed_memory
from pemn.layers import (
    GlobalTopK,
    MaskedLayer,
    MaskedWeight,
    make_masked_weight,
    masked_class_for,
    to_dense_,
    to_masked_,
    weight_params,
)
from pemn.prototype import PrototypeBank, plan

FilterFn = Callable[[str, nn.Module], bool]
_TRIM_AFTER = 1 << 20  # weights; below this, a layer's freed memory is not worth a trim


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _type_names(module: nn.Module) -> set[str]:
    return {c.__name__ for c in type(module).__mro__}


def _matches(name: str, module: nn.Module, patterns: tuple[str, ...]) -> bool:
    types = _type_names(module)
    for p in patterns:
        if p in SUPPORTED_TYPES:
            if p in types:
                return True
        elif re.fullmatch(p, name):
            return True
    return False


def _owns_params(module: nn.Module) -> bool:
    return any(p is not None for p in module._parameters.values())


def _select(model: nn.Module, config: PEMNConfig, filter_fn: FilterFn | None) -> list[tuple[str, nn.Module]]:
    selected: list[tuple[str, nn.Module]] = []
    chosen: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in chosen:
            continue
        supported = any(isinstance(module, _base_type(t)) for t in SUPPORTED_TYPES)
        if config.targets is None:
            wanted = supported
        else:
            wanted = _matches(name, module, config.targets)
        if not wanted or _matches(name, module, config.exclude):
            continue
        if filter_fn is not None and not filter_fn(name, module):
            continue
        if masked_class_for(module) is None:
            if not supported and not _owns_params(module):
                continue  # a container matched by a name pattern: its children decide
            what = f"{type(module).__name__}"
            if supported:
                what += " (it overrides its parent's forward, which pemn cannot reproduce)"
            raise ConversionError(
                f"cannot mask module {name or '<root>'!r} of type {what}; pemn masks "
                f"{', '.join(SUPPORTED_TYPES)}. Leave it out with exclude=[{re.escape(name)!r}] or narrow targets.")
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.weight is None:
            raise ConversionError(f"module {name!r} has no weight")
        if isinstance(module.__dict__.get("_parameters", {}).get("weight"), nn.parameter.UninitializedParameter):
            raise ConversionError(f"module {name!r} is lazy and not initialised yet; run one forward first")
        selected.append((name, module))
        chosen.add(id(module))
        if isinstance(module, nn.MultiheadAttention):  # its out-projection belongs to it
            prefix = f"{name}.out_proj" if name else "out_proj"
            out = module.out_proj
            if id(out) not in chosen and not _matches(prefix, out, config.exclude):
                selected.append((prefix, out))
                chosen.add(id(out))
    # keep named_modules order (the out-projection may have been appended early)
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    selected.sort(key=lambda nm: order[id(nm[1])])
    return selected


def _base_type(name: str) -> type[nn.Module]:
    return getattr(nn, name)


def masked_weights(model: nn.Module) -> dict[str, MaskedWeight]:
    """Every masked weight of a converted model, keyed by the weight's qualified name (``"fc.weight"``)."""
    out: dict[str, MaskedWeight] = {}
    for name, module in unwrap(model).named_modules():
        if isinstance(module, MaskedLayer):
            for param, mw in module.masked_weights().items():
                out[f"{name}.{param}" if name else param] = mw
    return out


def find_bank(model: nn.Module) -> PrototypeBank:
    """The prototype bank of a converted model (ConversionError if the model is not converted)."""
    for mw in masked_weights(model).values():
        return mw.bank
    raise ConversionError("this model has no pemn masked layers; call pemn.convert_(model, config) first")


def is_converted(model: nn.Module) -> bool:
    return any(isinstance(m, MaskedLayer) for m in unwrap(model).modules())


def convert_(model: nn.Module, config: PEMNConfig, *, filter_fn: FilterFn | None = None) -> nn.Module:
    """Convert ``model`` in place to a PEMN model and return the same object.

    Every targeted Linear/Conv/MultiheadAttention weight is replaced by a masked view of one shared
    random prototype (:class:`~pemn.prototype.PrototypeBank`) plus trainable scores; all other parameters
    (biases, norms, embeddings) are left as they are, trainable unless the user freezes them.
    ``filter_fn(name, module)`` can veto individual modules. Torch's global RNG is neither used nor changed.
    """
    if not isinstance(config, PEMNConfig):
        raise TypeError(f"config must be a PEMNConfig, got {type(config).__name__}")
    root = unwrap(model)
    if is_converted(root):
        raise ConversionError("this model is already converted by pemn; build a fresh model to convert again")
    selected = _select(root, config, filter_fn)
    if not selected:
        raise ConversionError(
            f"no module matched targets={list(config.targets) if config.targets else 'all supported types'} "
            f"(exclude={list(config.exclude)}); pemn masks {', '.join(SUPPORTED_TYPES)}")
    convert_selected_(selected, config)
    return model


def convert_selected_(selected: list[tuple[str, nn.Module]], config: PEMNConfig,
                      prototypes: dict[str, np.ndarray] | None = None,
                      masks: Mapping[str, torch.Tensor] | None = None) -> None:
    """Convert exactly these modules (in this order) with one shared bank.

    ``prototypes`` gives stored values instead of regenerating them from the seed, and ``masks`` (keyed by
    weight name) gives frozen masks instead of initialising scores: both are used when loading an artifact.
    Modules are converted one at a time, so each dense weight is released before the next layer's scores
    exist and peak memory stays near one copy of the weights.
    """
    shapes = [tuple(module._parameters[p].shape) for _, module in selected for p in weight_params(module)]
    sources, assignments = plan(config, shapes)
    first = selected[0][1]._parameters[weight_params(selected[0][1])[0]]
    bank = PrototypeBank(config, sources, prototypes)
    dtype = first.dtype if first.dtype.is_floating_point else torch.float32
    bank.to(device=first.device, dtype=dtype)
    del first
    group = None
    if config.scope == "global" and masks is None:
        group = bank.global_topk = GlobalTopK(kept_count(config.keep, sum(math.prod(s) for s in shapes),
                                                                  config.keep_rounding))
    index = 0
    for name, module in selected:
        weights: dict[str, MaskedWeight] = {}
        for param in weight_params(module):
            weight = module._parameters[param]
            shape, device = tuple(weight.shape), weight.device
            assign = assignments[index]
            kept = kept_count(config.keep, weight.numel(), config.keep_rounding) if group is None else None
            if masks is None:
                mw = make_masked_weight(bank, assign.source, shape, assign.scale, kept, config.seed, index,
                                        device=device)
                if weight.dtype.is_floating_point:
                    mw.scores.data = mw.scores.data.to(weight.dtype)
                if group is not None:
                    group.members.append(mw)
            else:
                mw = MaskedWeight(bank, assign.source, shape, assign.scale, None)
                mw.freeze(masks[f"{name}.{param}" if name else param].to(device), copy=False)
            weights[param] = mw
            index += 1
        del weight
        to_masked_(module, weights)
        if sum(mw.numel for mw in weights.values()) >= _TRIM_AFTER:
            release_freed_memory()


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
    Its baked weights do not require grad (everything else keeps its flag). The input model is not changed.
    """
    root = unwrap(model)
    if not is_converted(root):
        raise ConversionError("this model has no pemn masked layers to materialize")
    dense = copy.deepcopy(root)
    for module in list(dense.modules()):
        if isinstance(module, MaskedLayer):
            to_dense_(module)
    return dense
