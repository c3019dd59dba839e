"""Masked layers: standard torch layers whose weight is a masked view of the shared prototype.

Each masked weight is a :class:`MaskedWeight` child named ``<param>_masked``; the layer classes are
subclasses of the torch layers they replace, with the weight attribute turned into a property, so torch's
own forward (padding modes, attention fast paths...) runs unchanged. Biases and everything else stay
ordinary parameters.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from pemn.masking import global_topk_masks, init_scores, ste_given_mask, ste_mask, topk_mask
from pemn.prototype import PrototypeBank, fan_in


class GlobalTopK:
    """One top-k over all masked weights of a model (``scope="global"``), shared through the bank.

    The masks are recomputed only when some member's scores changed (their autograd version counters),
    so a forward pass computes them once, not once per layer.
    """

    def __init__(self, total_kept: int) -> None:
        self.total_kept = int(total_kept)
        self.members: list[MaskedWeight] = []
        self._key: tuple | None = None
        self._masks: dict[int, torch.Tensor] = {}

    def mask_for(self, member: MaskedWeight) -> torch.Tensor:
        live = [m for m in self.members if "scores" in m._parameters]
        key = tuple((id(m.scores), m.scores._version, m.scores.device) for m in live)
        if key != self._key:
            # members frozen on their own keep their masks, and their share of the budget
            budget = self.total_kept - sum(m.kept or 0 for m in self.members if m.frozen)
            # Scores start at U(±1/sqrt(fan_in)): comparing them raw would starve wide-fan-in layers (a 1x1
            # conv over 64 channels against a 5x5 depthwise one), so they are compared in units of that scale.
            masks = global_topk_masks([m.scores.detach().abs() * math.sqrt(fan_in(m.shape)) for m in live],
                                      max(budget, 0))
            self._masks = {id(m): mask for m, mask in zip(live, masks, strict=True)}
            self._key = key
        return self._masks[id(member)]


class MaskedWeight(nn.Module):
    """One masked weight: ``prototype_slice * scale * mask``.

    Training mode holds real-valued ``scores`` (a Parameter) and recomputes the top-``kept`` mask each
    call (or takes its share of a model-wide top-k with ``scope="global"``, when ``kept`` is None); frozen
    mode holds the boolean ``mask`` buffer and no scores. The prototype slice is a view of the shared
    :class:`PrototypeBank`, never a copy.
    """

    def __init__(self, bank: PrototypeBank, source: str, shape: tuple[int, ...], scale: float, kept: int | None,
                 scores: torch.Tensor | None = None) -> None:
        super().__init__()
        self.bank = bank
        self.source = source
        self.shape = tuple(int(s) for s in shape)
        self.numel = math.prod(self.shape)
        self.scale = float(scale)
        self.kept = None if kept is None else int(kept)
        if scores is not None:
            self.scores = nn.Parameter(scores)

    @property
    def frozen(self) -> bool:
        return "mask" in self._buffers

    def base(self) -> torch.Tensor:
        """The (scaled) prototype slice this weight is masked from."""
        w = self.bank.view(self.source, self.numel).view(self.shape)
        return w * self.scale if self.scale != 1.0 else w

    def current_mask(self) -> torch.Tensor:
        """The boolean mask the next forward uses (stored when frozen, top-k of the scores otherwise)."""
        if self.frozen:
            return self._buffers["mask"]
        if self.kept is None:
            return self.bank.global_topk.mask_for(self)
        return topk_mask(self.scores.detach().abs(), self.kept)

    def forward(self) -> torch.Tensor:
        base = self.base()
        if self.frozen:
            return base * self._buffers["mask"]
        # Same dtype and op as the frozen path, so freezing or saving never changes an output bit.
        if self.kept is None:
            return base * ste_given_mask(self.scores, self.bank.global_topk.mask_for(self)).to(base.dtype)
        return base * ste_mask(self.scores, self.kept).to(base.dtype)

    def freeze(self, mask: torch.Tensor | None = None, *, copy: bool = True) -> None:
        """Replace the scores by the boolean mask they select (or by ``mask``, when given; ``copy=False``
        hands over a tensor nobody else holds instead of copying it)."""
        if mask is None:
            mask = self.current_mask()
        mask = mask.detach().to(dtype=torch.bool).reshape(self.shape)
        if copy:
            mask = mask.clone()
        count = int(mask.sum())
        if self.kept is not None and count != self.kept:
            raise ValueError(f"a mask for this weight must keep {self.kept} entries, got {count}")
        device = self.scores.device if "scores" in self._parameters else mask.device
        self._parameters.pop("scores", None)
        self._buffers.pop("mask", None)
        self.register_buffer("mask", mask.to(device))
        self.kept = count

    def extra_repr(self) -> str:
        state = "frozen" if self.frozen else "training"
        kept = "global" if self.kept is None else self.kept
        return f"shape={self.shape}, kept={kept}/{self.numel}, source={self.source}, {state}"


def _masked_param(name: str) -> property:
    child = name + "_masked"

    def fget(self: nn.Module) -> torch.Tensor | None:
        mw = self._modules.get(child)
        if mw is None:  # this projection is not masked (or absent, e.g. MHA's q_proj_weight)
            return self._parameters.get(name)
        return mw()

    return property(fget, doc=f"The masked ``{name}`` (a fresh tensor each access).")


class MaskedLayer:
    """Mixin marking a layer converted by pemn; ``masked_params`` names its masked weights."""

    masked_params: ClassVar[tuple[str, ...]] = ("weight",)
    base_class: ClassVar[type[nn.Module]]

    def masked_weights(self) -> dict[str, MaskedWeight]:
        mods = self._modules  # type: ignore[attr-defined]
        return {p: mods[p + "_masked"] for p in self.masked_params if p + "_masked" in mods}


class MaskedLinear(MaskedLayer, nn.Linear):
    base_class = nn.Linear
    weight = _masked_param("weight")  # type: ignore[assignment]


class MaskedConv1d(MaskedLayer, nn.Conv1d):
    base_class = nn.Conv1d
    weight = _masked_param("weight")  # type: ignore[assignment]


class MaskedConv2d(MaskedLayer, nn.Conv2d):
    base_class = nn.Conv2d
    weight = _masked_param("weight")  # type: ignore[assignment]


class MaskedConv3d(MaskedLayer, nn.Conv3d):
    base_class = nn.Conv3d
    weight = _masked_param("weight")  # type: ignore[assignment]


class MaskedMultiheadAttention(MaskedLayer, nn.MultiheadAttention):
    """MultiheadAttention with masked input projections (packed ``in_proj_weight`` or separate
    ``q/k/v_proj_weight``); its ``out_proj`` is converted to a :class:`MaskedLinear` alongside."""

    base_class = nn.MultiheadAttention
    masked_params = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
    in_proj_weight = _masked_param("in_proj_weight")  # type: ignore[assignment]
    q_proj_weight = _masked_param("q_proj_weight")  # type: ignore[assignment]
    k_proj_weight = _masked_param("k_proj_weight")  # type: ignore[assignment]
    v_proj_weight = _masked_param("v_proj_weight")  # type: ignore[assignment]


#: Masked class for each supported torch layer type.
MASKED_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: MaskedLinear,
    nn.Conv1d: MaskedConv1d,
    nn.Conv2d: MaskedConv2d,
    nn.Conv3d: MaskedConv3d,
    nn.MultiheadAttention: MaskedMultiheadAttention,
}


def masked_class_for(module: nn.Module) -> type[nn.Module] | None:
    """The masked class that can stand in for ``module``, or None if its type is not supported.

    A subclass of a supported type qualifies only if it keeps the parent's ``forward`` (otherwise its
    own forward might read the weight in ways the masked class does not reproduce).
    """
    for base, masked in MASKED_CLASSES.items():
        if isinstance(module, base) and type(module).forward is base.forward:
            return masked
    return None


def weight_params(module: nn.Module) -> list[str]:
    """Names of the weight parameters of a supported module that masking replaces."""
    if isinstance(module, nn.MultiheadAttention):
        return [p for p in MaskedMultiheadAttention.masked_params if module._parameters.get(p) is not None]
    return ["weight"]


def to_masked_(module: nn.Module, weights: dict[str, MaskedWeight]) -> nn.Module:
    """Turn ``module`` into its masked class in place: drop its dense weights, attach ``weights``."""
    cls = masked_class_for(module)
    if cls is None:
        raise TypeError(f"pemn cannot mask {type(module).__name__}")
    original = type(module)
    for name, mw in weights.items():
        param = module._parameters.pop(name)
        if param is not None and tuple(param.shape) != mw.shape:
            raise ValueError(f"{name}: masked shape {mw.shape} != weight shape {tuple(param.shape)}")
        module.add_module(name + "_masked", mw)
    module.__class__ = cls
    module._pemn_original_class = original  # restored by to_dense_
    return module


def to_dense_(module: nn.Module) -> nn.Module:
    """Turn a masked layer back into its original torch class in place, baking ``prototype * mask``
    into ordinary weight Parameters.

    The new weights have ``requires_grad=False``, like the masked weights they replace: besides being
    right for inference, this keeps outputs bit-identical, since torch picks different (equally valid)
    matmul decompositions for weights that require grad. Call ``requires_grad_()`` to fine-tune them.
    """
    if not isinstance(module, MaskedLayer):
        raise TypeError(f"{type(module).__name__} is not a pemn masked layer")
    weights = {name: mw().detach().clone() for name, mw in module.masked_weights().items()}
    for name in weights:
        del module._modules[name + "_masked"]
    module.__class__ = module.__dict__.pop("_pemn_original_class", module.base_class)
    for name, w in weights.items():
        module.register_parameter(name, nn.Parameter(w, requires_grad=False))
    return module


def make_masked_weight(bank: PrototypeBank, source: str, shape: tuple[int, ...], scale: float, kept: int | None,
                       seed: int, index: int, device: torch.device | None = None) -> MaskedWeight:
    """A training-mode :class:`MaskedWeight` with edge-popup's score init (seeded, private generator)."""
    scores = init_scores(shape, fan_in(shape), seed, index)
    if device is not None:
        scores = scores.to(device)
    return MaskedWeight(bank, source, shape, scale, kept, scores)
