"""Masked layers: standard torch layers whose weight is a masked view of the shared prototype.

Each masked weight is a :class:`MaskedWeight` child named ``pemn_<param>`` (``pemn_weight``: no prefix of the
original name ``weight``, so libraries that match parameters by name prefix, like transformers'
``tie_weights``, never reach pemn's internals). The layer classes are subclasses of the layers they replace,
with the weight attribute turned into a property, so the layer's own forward (torch's padding modes,
attention fast paths, ``F.embedding``, transformers' ``Conv1D``...) runs unchanged. Which layers qualify,
and with which weights, is the table in :mod:`pemn.registry`. A weight shared by several layers (tied
embeddings) is one :class:`MaskedWeight`, the child of each of them. Biases and everything else stay
ordinary parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from pemn.errors import ConversionError
from pemn.masking import (
    BERNOULLI_LOGIT_SCALE,
    bernoulli_mask,
    global_topk_masks,
    init_scores,
    masked_product,
    ste_given_mask,
    topk_mask,
    topk_ste,
)
from pemn.normed import hooked_tensor, parametrized_tensor
from pemn.prototype import PrototypeBank
from pemn.registry import LayerSpec, fan_in_torch, lookup

#: A masked weight ``w`` of a layer is its child module ``CHILD_PREFIX + "w"``.
CHILD_PREFIX = "pemn_"


def gain_key(weight_name: str) -> str:
    """The state-dict name of the per-channel gain of the masked weight ``weight_name`` (``"fc.weight"`` ->
    ``"fc.pemn_weight.gain"``): a dense extra of the file (``PEMNConfig.gain``)."""
    owner, _, param = weight_name.rpartition(".")
    return f"{owner}.{CHILD_PREFIX}{param}.gain" if owner else f"{CHILD_PREFIX}{param}.gain"


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
            masks = global_topk_masks([m.scores.detach().abs() * math.sqrt(m.fan_in) for m in live],
                                      max(budget, 0))
            self._masks = {id(m): mask for m, mask in zip(live, masks, strict=True)}
            self._key = key
        return self._masks[id(member)]


class MaskedWeight(nn.Module):
    """One masked weight: ``prototype_slice * scale * mask`` (times a learned ``gain`` per output channel with
    ``PEMNConfig.gain``).

    Training mode holds real-valued ``scores`` (a Parameter) and recomputes the top-``kept`` mask each
    call (or takes its share of a model-wide top-k with ``scope="global"``, when ``kept`` is None); frozen
    mode holds the boolean ``mask`` buffer and no scores. The prototype slice is a view of the shared
    :class:`PrototypeBank`, never a copy.
    """

    def __init__(self, bank: PrototypeBank, source: str, shape: tuple[int, ...], scale: float, kept: int | None,
                 scores: torch.Tensor | None = None, *, fan_in: int | None = None) -> None:
        super().__init__()
        self.bank = bank
        self.source = source
        self.shape = tuple(int(s) for s in shape)
        self.numel = math.prod(self.shape)
        #: the fan-in by its (first) layer's rule (pemn.registry); sets the scores' init and global scale
        self.fan_in = fan_in_torch(self.shape) if fan_in is None else int(fan_in)
        self.scale = float(scale)
        self.kept = None if kept is None else int(kept)
        if scores is not None:
            self.scores = nn.Parameter(scores)
        if bank.config.gain:  # one learned factor per output channel (PEMNConfig.gain), 1 at the start
            self.gain = nn.Parameter(torch.ones(self.shape[0], dtype=torch.float32))

    @property
    def frozen(self) -> bool:
        return "mask" in self._buffers

    def base(self) -> torch.Tensor:
        """The (scaled) prototype slice this weight is masked from."""
        w = self.bank.view(self.source, self.numel).view(self.shape)
        return w * self.scale if self.scale != 1.0 else w

    @property
    def sampled(self) -> bool:
        """Whether the mask trains as a probabilistic (Bernoulli) mask (``PEMNConfig.mask_sampling``)."""
        return self.bank.config.mask_sampling == "bernoulli"

    def current_mask(self) -> torch.Tensor:
        """The boolean mask the next eval-mode forward uses (stored when frozen, else the top-k of the scores:
        of ``|scores|`` for edge-popup, of the scores themselves, the most probable weights, for Bernoulli
        masks)."""
        if self.frozen:
            return self._buffers["mask"]
        if self.kept is None:
            return self.bank.global_topk.mask_for(self)
        return topk_mask(self.scores.detach() if self.sampled else self.scores.detach().abs(), self.kept)

    def forward(self) -> torch.Tensor:
        params = self._parameters
        scores = params.get("scores")
        if scores is not None and self.kept is not None and "gain" not in params and not self.sampled:
            # the usual training case (edge-popup, own top-k, no gains) with few attribute lookups: one call per
            # weight and step, measured in BENCHMARKS.md section 10; _masked's result, bit for bit
            return masked_product(self.base(), scores, self.kept)
        w = self._masked()
        gain = params.get("gain")
        if gain is None:
            return w
        return w * gain.to(w.dtype).view(-1, *([1] * (w.dim() - 1)))

    def _masked(self) -> torch.Tensor:
        base = self.base()
        if self.frozen:
            return base * self._buffers["mask"]
        # Same dtype and op as the frozen path, so freezing or saving never changes an output bit.
        if self.kept is None:
            return base * ste_given_mask(self.scores, self.bank.global_topk.mask_for(self)).to(base.dtype)
        if self.sampled:
            if self.training:  # logits in units of the scores' initial scale (1/sqrt(fan_in)), sharpened
                mask = bernoulli_mask(self.scores * (math.sqrt(self.fan_in) * BERNOULLI_LOGIT_SCALE), self.kept)
            else:
                mask = topk_ste(self.scores, self.kept)
            return base * mask.to(base.dtype)
        return masked_product(base, self.scores, self.kept)

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
    child = CHILD_PREFIX + name

    def fget(self: nn.Module) -> torch.Tensor | None:
        mw = self._modules.get(child)
        if mw is None:  # this projection is not masked (or absent, e.g. MHA's q_proj_weight)
            return self._parameters.get(name)
        return mw()

    return property(fget, doc=f"The masked ``{name}`` (a fresh tensor each access).")


class MaskedLayer:
    """Mixin marking a layer converted by pemn; ``masked_params`` names its masked weights.

    Assigning to a masked weight (``layer.weight = ...``, as transformers' ``tie_weights`` and
    ``resize_token_embeddings`` do) raises :class:`~pemn.errors.ConversionError` instead of silently putting
    a dense weight back.
    """

    masked_params: ClassVar[tuple[str, ...]] = ("weight",)
    base_class: ClassVar[type[nn.Module]]

    def masked_weights(self) -> dict[str, MaskedWeight]:
        mods = self._modules  # type: ignore[attr-defined]
        return {p: mods[CHILD_PREFIX + p] for p in self.masked_params if CHILD_PREFIX + p in mods}

    def __setattr__(self, name: str, value: object) -> None:
        if name in type(self).masked_params and CHILD_PREFIX + name in self.__dict__.get("_modules", {}):
            raise ConversionError(
                f"{name} of this {type(self).__name__} is a pemn masked weight (prototype x mask) and cannot be "
                "replaced: tie, resize or swap weights before pemn.convert_, or bake the model with "
                "pemn.materialize first")
        super().__setattr__(name, value)


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


class MaskedEmbedding(MaskedLayer, nn.Embedding):
    """Embedding through torch's own ``F.embedding`` on the masked weight.

    ``padding_idx``: as in torch, the padding row gets no gradient from the lookup, so its mask does not
    move (unless the weight is tied to a layer that does give it one); its value is the masked prototype
    row, not zero (torch zeroes it only at init). ``sparse=True`` and ``max_norm`` are refused at conversion.
    """

    base_class = nn.Embedding
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


class MaskedParametrizationList(MaskedLayer, parametrize.ParametrizationList):
    """The ``layer.parametrizations.weight`` of a weight_norm / spectral_norm layer, with the tensor the
    parametrization reads masked (:func:`pemn.normed.parametrized_tensor`): the layer's weight is still the
    parametrization's output, so it still normalises what it computes."""

    base_class = parametrize.ParametrizationList
    masked_params = ("original", "original1")
    original = _masked_param("original")  # type: ignore[assignment]
    original1 = _masked_param("original1")  # type: ignore[assignment]

    def right_inverse(self, value: torch.Tensor) -> None:
        raise ConversionError("this weight is computed from a pemn masked tensor (prototype x mask) and cannot be "
                              "assigned: set it before pemn.convert_, or bake the model with pemn.materialize first")


#: The named masked class of each built-in torch layer type; other registered types (transformers'
#: ``Conv1D``, users' layers) get a class made on first use, ``Masked<Name>``, a subclass of their own.
MASKED_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: MaskedLinear,
    nn.Conv1d: MaskedConv1d,
    nn.Conv2d: MaskedConv2d,
    nn.Conv3d: MaskedConv3d,
    nn.MultiheadAttention: MaskedMultiheadAttention,
    nn.Embedding: MaskedEmbedding,
}
_MADE: dict[tuple[type, tuple[str, ...]], type[nn.Module]] = {}


def _made_class(cls: type[nn.Module], weights: tuple[str, ...]) -> type[nn.Module]:
    made = _MADE.get((cls, weights))
    if made is None:
        attrs: dict[str, object] = {p: _masked_param(p) for p in weights}
        attrs.update(base_class=cls, masked_params=weights, __module__=__name__,
                     __doc__=f"{cls.__qualname__} with its {', '.join(weights)} masked by pemn.")
        made = _MADE[(cls, weights)] = type(f"Masked{cls.__name__}", (MaskedLayer, cls), attrs)
    return made


@dataclass(frozen=True)
class Resolved:
    """A module's entry in the layer table, read once: the :class:`~pemn.registry.LayerSpec`, the registered
    class it was found by (the most specific in the module's MRO), the masked class that can stand in for the
    module (None when the module overrides that class's ``forward``) and the names of the weights masking
    replaces (present ones; for a weight computed by a weight_norm / spectral_norm hook, the hook's source
    tensor)."""

    spec: LayerSpec
    cls: type[nn.Module]
    masked_class: type[nn.Module] | None
    weights: tuple[str, ...]

    def fan_in(self, shape: tuple[int, ...]) -> int:
        return self.spec.fan_in(shape)


def resolve(module: nn.Module) -> Resolved | None:
    """``module``'s entry in the layer table (:class:`Resolved`), or None if its type is not registered.

    A subclass of a registered type gets a masked class only if it keeps the parent's ``forward`` (otherwise
    its own forward might read the weight in ways pemn does not know; register the subclass to allow it).
    """
    found = lookup(module)
    if found is None:
        return None
    spec, cls = found
    hooked = tuple(h for w in spec.weights if (h := hooked_tensor(module, w)) is not None)
    if type(module).forward is not cls.forward:
        masked = None
    elif hooked:  # torch.nn.utils.weight_norm / spectral_norm hooks: their source tensor is masked, not weight
        masked = _made_class(type(module), hooked)
    elif cls in MASKED_CLASSES:
        masked = MASKED_CLASSES[cls]
    else:
        masked = _made_class(type(module), spec.weights)
    names = [p if module._parameters.get(p) is not None else hooked_tensor(module, p) for p in spec.weights]
    return Resolved(spec, cls, masked, tuple(p for p in names if p is not None))


def masked_class_for(module: nn.Module) -> type[nn.Module] | None:
    """The masked class that can stand in for ``module``, or None if its type is not registered or it
    overrides its registered parent's ``forward`` (see :func:`resolve`); a weight_norm / spectral_norm
    parametrization list has its own (:class:`MaskedParametrizationList`)."""
    if isinstance(module, parametrize.ParametrizationList):
        return MaskedParametrizationList if parametrized_tensor(module) is not None else None
    found = resolve(module)
    return None if found is None else found.masked_class


def weight_params(module: nn.Module) -> list[str]:
    """Names of the weight parameters of a registered module that masking replaces (present ones)."""
    if isinstance(module, parametrize.ParametrizationList):
        name = parametrized_tensor(module)
        return [name] if name is not None and module._parameters.get(name) is not None else []
    found = resolve(module)
    return [] if found is None else list(found.weights)


def layer_fan_in(module: nn.Module, shape: tuple[int, ...]) -> int:
    """The fan-in of a weight of ``module`` by its type's rule in the registry."""
    found = lookup(module)
    return found[0].fan_in(shape) if found is not None else fan_in_torch(shape)


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
        module.add_module(CHILD_PREFIX + name, mw)
    module.__class__ = cls
    module._pemn_original_class = original  # restored by to_dense_
    return module


def to_dense_(module: nn.Module, baked: dict[int, nn.Parameter] | None = None) -> nn.Module:
    """Turn a masked layer back into its original class in place, baking ``prototype * mask`` into
    ordinary weight Parameters.

    ``baked`` (id of a MaskedWeight -> its baked Parameter) is shared across the layers of one model, so
    a weight shared by several layers becomes one Parameter they all hold: ties survive.
    The new weights have ``requires_grad=False``, like the masked weights they replace: besides being
    right for inference, this keeps outputs bit-identical, since torch picks different (equally valid)
    matmul decompositions for weights that require grad. Call ``requires_grad_()`` to fine-tune them.
    """
    if not isinstance(module, MaskedLayer):
        raise TypeError(f"{type(module).__name__} is not a pemn masked layer")
    baked = {} if baked is None else baked
    weights = {}
    for name, mw in module.masked_weights().items():
        if id(mw) not in baked:
            baked[id(mw)] = nn.Parameter(mw().detach().clone(), requires_grad=False)
        weights[name] = baked[id(mw)]
    for name in weights:
        del module._modules[CHILD_PREFIX + name]
    module.__class__ = module.__dict__.pop("_pemn_original_class", module.base_class)
    for name, w in weights.items():
        module.register_parameter(name, w)
    return module


def make_masked_weight(bank: PrototypeBank, source: str, shape: tuple[int, ...], scale: float, kept: int | None,
                       seed: int, index: int, device: torch.device | None = None,
                       fan_in: int | None = None) -> MaskedWeight:
    """A training-mode :class:`MaskedWeight` with edge-popup's score init (seeded, private generator)."""
    mw = MaskedWeight(bank, source, shape, scale, kept, fan_in=fan_in)
    scores = init_scores(shape, mw.fan_in, seed, index)
    if device is not None:
        scores = scores.to(device)
    mw.scores = nn.Parameter(scores)
    return mw
