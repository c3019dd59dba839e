"""PEMNConfig: the validated, JSON-serializable description of how a model is masked."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pemn.options import checked_value, copy_option, either, field_types, option
from pemn.strategies import STRATEGIES, STRATEGY_TABLE, strategy_names

FILLS = ("copy", "rand")
INITS = ("kaiming_normal", "kaiming_uniform", "signed_constant")
SCOPES = ("layer", "global")
#: How a kept fraction becomes a kept count (:func:`kept_count`).
KEEP_ROUNDINGS = ("exact", "paper")
#: How a mask is trained (:mod:`pemn.masking`): ``"topk"`` (edge-popup, the paper) or ``"bernoulli"``
#: (probabilistic masks sampled at the target keep).
MASK_SAMPLINGS = ("topk", "bernoulli")
#: How ``keep`` is shared among the layers with ``scope="layer"`` (:func:`layer_keeps`): ``"uniform"`` (every
#: layer keeps ``keep``, the paper) or ``"erk"`` (Erdős–Rényi-kernel, RigL: small layers keep more).
KEEP_RULES = ("uniform", "erk")
#: The built-in layer types masked by default, by class name (the entries of :mod:`pemn.registry`, where
#: ``pemn.register_layer`` adds more). Their subclasses are masked too when they keep the parent's forward
#: (e.g. MultiheadAttention's ``NonDynamicallyQuantizableLinear`` out-projection). ``Conv1D`` is
#: ``transformers.pytorch_utils.Conv1D`` (GPT-2).
SUPPORTED_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "MultiheadAttention", "Embedding", "Conv1D")
#: rp's ratio when none is given (:data:`pemn.strategies.STRATEGY_TABLE` holds it).
DEFAULT_RP_RATIO = STRATEGY_TABLE["rp"].default_ratio


def _takers(takes: str) -> list[str]:
    """The strategies with ``takes`` (a :class:`pemn.strategies.Strategy` flag: ``takes_ratio``, ``takes_fill``)."""
    return [name for name, s in STRATEGY_TABLE.items() if getattr(s, takes)]


def _only(takes: str) -> str:
    """``rp`` or ``mp/rp``: :func:`_takers` for a help text."""
    return "/".join(_takers(takes))


def kept_count(keep: float, numel: int, rounding: str = "exact") -> int:
    """Number of weights a mask keeps.

    ``rounding="exact"`` (the default): ``max(1, ceil(keep * numel))``, the product taken exactly on ``keep``'s
    shortest decimal form, so 0.1 × 70 keeps 7, not 8. This is the paper's rule without its float rounding.
    ``rounding="paper"``: the official PEMN code's ``numel - int((1 - keep) * numel)`` in float arithmetic
    (at least 1), which keeps one more at some keeps (k = 0.8, n = 6,400: 5,121 instead of 5,120), so runs
    are bit-comparable with the official code at every keep. The two agree at keep 0.5.
    """
    if numel <= 0:
        return 0
    if rounding == "paper":
        return min(numel, max(1, numel - int((1.0 - float(keep)) * numel)))
    if rounding != "exact":
        raise ValueError(f"rounding must be one of {KEEP_ROUNDINGS}, got {rounding!r}")
    return min(numel, max(1, math.ceil(Fraction(repr(float(keep))) * numel)))


def layer_keeps(keep: float, shapes: list[tuple[int, ...]], rule: str = "uniform") -> list[float]:
    """The kept fraction of each weight (of these shapes) when a model keeps ``keep`` of its masked weights.

    ``rule="uniform"``: ``keep`` everywhere. ``rule="erk"`` (the Erdős–Rényi-kernel rule of RigL, Evci et al.
    2020; SupSup's "ER" budgets): a weight's kept fraction is ``eps * sum(shape) / prod(shape)``, capped at 1,
    with ``eps`` chosen so that the fractions average to ``keep`` over all weights (layers the cap makes dense
    are set aside and ``eps`` solved again for the rest). Small layers (a first conv, a classifier, a depthwise
    filter) then keep more, large ones less; masks coded at one probability per layer cost
    ``sum(n * H(k_layer))`` bits, never more than ``N * H(keep)`` (H is concave).
    """
    if rule not in KEEP_RULES:
        raise ValueError(f"keep_rule must be one of {KEEP_RULES}, got {rule!r}")
    keep = float(keep)
    if rule == "uniform" or keep >= 1 or not shapes:
        return [keep] * len(shapes)
    numels = [math.prod(s) for s in shapes]
    density = [sum(s) / n for s, n in zip(shapes, numels, strict=True)]
    budget = keep * math.fsum(numels)
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(shapes)) if i not in dense]
        eps = (budget - math.fsum(numels[i] for i in dense)) / math.fsum(density[i] * numels[i] for i in rest)
        capped = {i for i in rest if eps * density[i] >= 1}
        if not capped:
            return [1.0 if i in dense else eps * density[i] for i in range(len(shapes))]
        dense |= capped


def _patterns(name: str) -> Callable[[Any], None]:
    """The check of option ``name``: layer type names or name regexes (a type name is a valid regex too: which one
    it is, is decided at conversion time)."""
    def check(value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{name} must be a list of non-empty strings (layer type names or name patterns)")
        for v in value:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"{name}: {v!r} is neither a layer type nor a valid regex ({e})") from None
    return check


#: Fields added after format version 1, serialized only when they differ from these defaults.
_OMITTED_DEFAULTS = {"keep_rounding": "exact", "mask_sampling": "topk", "keep_rule": "uniform", "gain": False}


@dataclass(frozen=True)
class PEMNConfig:
    """How a model's Conv/Linear weights are replaced by masked views of a shared random prototype.

    Args:
        strategy: ``"mask"`` (every layer its own random weights: plain edge-popup), ``"one_layer"``
            (layers of the same weight shape share one random tensor), ``"mp"`` (every layer is the prefix
            of the largest layer's random weights), ``"rp"`` (a random vector of
            ``int(ratio * largest_numel) + 1`` values tiled to the largest layer's size).
        ratio: rp only, 0 < ratio < 1 (default 1e-3 for rp).
        fill: mp/rp only. ``"copy"``: plain tiling (the paper's default); ``"rand"``: tiled, then shuffled
            by a seeded permutation.
        keep: fraction of each layer's weights its mask keeps (0 < keep <= 1; paper: 0.5). The kept count
            is :func:`kept_count` with ``keep_rounding``.
        keep_rounding: ``"exact"`` (default): ``ceil(keep * n)`` computed exactly; ``"paper"``: the official
            code's ``n - int((1 - keep) * n)`` in float arithmetic (one more kept at some keeps; equal at 0.5).
        seed: seeds the prototype (portable, see :mod:`pemn.prototype`) and the score initialisation.
        init: distribution of the prototype: ``"kaiming_normal"`` (N(0, 2/fan_in) of the layer the
            prototype comes from; the paper's), ``"kaiming_uniform"`` (U(±sqrt(6/fan_in))) or
            ``"signed_constant"`` (±sqrt(2/fan_in)).
        rescale: scale each layer's slice of the prototype to that layer's own fan-in (False = the paper).
        keep_scale: also divide each layer's slice by ``sqrt(keep)``, so the kept weights carry the variance
            of a dense layer (edge-popup's ``--scale-fan``; False = the paper). With ``rescale`` this is the
            full variance correction ``sqrt(fan_in_source / fan_in_layer) / sqrt(keep)``.
        scope: ``"layer"``: every layer keeps its own top ``keep`` fraction (the paper); ``"global"``: one
            top-k over all masked weights together, on scores measured in units of their initial scale
            (``|score| * sqrt(fan_in)``), so layers keep different fractions (every layer keeps at least one).
        targets: which modules are masked: layer type names (``"Linear"``, ``"Conv2d"``, ``"Embedding"``...,
            any name in :func:`pemn.registry.type_names`, including layers added by ``pemn.register_layer``)
            or regexes fully matching a module's qualified name. ``None``: every registered type (embeddings
            included).
        exclude: same syntax; matching modules are left dense (``exclude=["Embedding"]`` keeps embeddings
            dense).
        keep_rule: how ``keep`` is shared among the layers with ``scope="layer"``: ``"uniform"`` (default, the
            paper: every layer keeps ``keep``) or ``"erk"`` (Erdős–Rényi-kernel: each layer's fraction
            proportional to ``sum(shape) / prod(shape)``, the model keeping ``keep`` of all its masked weights;
            :func:`layer_keeps`). Each layer's kept count is :func:`kept_count` of its own fraction.
        gain: give every masked weight a learned gain per output channel (its first dimension: a Conv's or
            Linear's output channels, an Embedding's rows), initialised to 1, multiplied into the masked
            weight (biprop / multi-prize tickets, Diffenderfer & Kailkhura 2021): one float per channel, stored
            in the file as a dense extra. For networks without normalization layers, where nothing else can set
            a layer's output scale (default False, the paper).
        mask_sampling: how the masks train. ``"topk"`` (default, the paper's edge-popup): every forward keeps
            the top ``keep`` of ``|scores|``, the gradient passes straight through. ``"bernoulli"``
            (probabilistic masks: Zhou et al. 2019, FedPM): in training mode each forward samples every
            weight with probability ``sigmoid(logit + b)`` (the logit is the score in units of its initial
            scale times :data:`pemn.masking.BERNOULLI_LOGIT_SCALE`), ``b`` a per-layer shift that makes the expected
            kept fraction exactly ``keep``, with the straight-through gradient to the probabilities; in eval
            mode, and in every saved or frozen mask, the top ``keep`` of the scores (the most probable weights),
            so saved masks keep exactly the kept count. Needs ``scope="layer"``.
    """

    # One line per option (pemn.options): the help, names and ranges the command line and its docs show
    # (pemn.training.config.TrainConfig declares these fields from them); __post_init__ checks every value against
    # them (pemn.options.checked_value), then the rules across options.
    strategy: str = option("rp", f"the PEMN strategy: {', '.join(STRATEGIES)}",
                           choices=lambda: tuple(STRATEGY_TABLE))  # read when checked: the table may grow
    ratio: float | None = option(None, f"{_only('takes_ratio')} only: prototype length as a fraction of the "
                                 f"largest layer (default {DEFAULT_RP_RATIO:g})", bounds="(0, 1)")
    fill: str = option("copy", f"{_only('takes_fill')}: copy (plain tiling) or rand (tiled, then shuffled)",
                       choices=FILLS)
    keep: float = option(0.5, "fraction of each masked layer's weights that its mask keeps", bounds="(0, 1]")
    seed: int = option(0, "seed of the prototype and the score initialisation", bounds="[0, 2**63)")
    init: str = option("kaiming_normal", f"prototype values: {either(INITS)}",
                       choices=INITS)
    rescale: bool = option(False, "scale each layer's prototype slice to its own fan-in")
    keep_scale: bool = option(False, "divide each layer's prototype slice by sqrt(keep)")
    scope: str = option("layer", "mask top-k per layer (the paper) or global (one threshold over all masked layers)",
                        choices=SCOPES)
    targets: tuple[str, ...] | None = option(None, "layer types or name regexes to mask (default: every type in "
                                             "pemn's layer table)", check=_patterns("targets"))
    exclude: tuple[str, ...] = option(help="layer types or name regexes to leave dense", check=_patterns("exclude"),
                                      default_factory=tuple)
    keep_rounding: str = option("exact", "kept count of a layer of n weights: exact (ceil(keep * n)) or paper (the "
                                "official code's n - int((1 - keep) * n) in float arithmetic; equal at keep 0.5)",
                                choices=KEEP_ROUNDINGS)
    mask_sampling: str = option("topk", "how the masks train: topk (edge-popup: the top keep of |scores| each step, "
                                "the paper) or bernoulli (probabilistic masks: each step samples every weight with "
                                "probability sigmoid(score + b), b making the expected keep exact; saved masks are "
                                "the top keep of the scores)", choices=MASK_SAMPLINGS)
    keep_rule: str = option("uniform", "how keep is shared among the layers: uniform (every layer keeps keep, the "
                            "paper) or erk (Erdos-Renyi-kernel: a layer's fraction proportional to "
                            "sum(shape)/prod(shape), small layers keeping more, the model keeping keep of all its "
                            "masked weights)", choices=KEEP_RULES)
    gain: bool = option(False, "a learned gain per output channel of every masked weight (one float each, stored in "
                        "model.pemn as an extra)")

    def __post_init__(self) -> None:
        strategy = STRATEGY_TABLE.get(self.strategy)  # an unknown one: refused by its declaration below
        if strategy is not None and strategy.takes_ratio and self.ratio is None:
            object.__setattr__(self, "ratio", strategy.default_ratio)
        elif strategy is not None and not strategy.takes_ratio and self.ratio is not None:  # before ratio's range
            raise ValueError(f"ratio applies only to {strategy_names(_takers('takes_ratio'))} (got "
                             f"ratio={self.ratio!r} with strategy {self.strategy!r}); leave it unset")
        kinds = field_types(PEMNConfig)
        for f in dataclasses.fields(self):  # every option against its declaration: type, names, range, check
            context = f" for strategy {self.strategy!r}" if f.name == "ratio" else ""
            object.__setattr__(self, f.name, checked_value(f, getattr(self, f.name), *kinds[f.name], context))
        # rules across options
        if self.fill == "rand" and not STRATEGY_TABLE[self.strategy].takes_fill:
            raise ValueError(f"fill='rand' applies only to {strategy_names(_takers('takes_fill'))}, not "
                             f"{self.strategy!r}")
        if self.mask_sampling == "bernoulli" and self.scope != "layer":
            raise ValueError("mask_sampling 'bernoulli' samples each layer at its own keep: it needs scope 'layer'")
        if self.keep_rule != "uniform" and self.scope != "layer":
            raise ValueError(f"keep_rule {self.keep_rule!r} shares keep among the layers: it needs scope 'layer' "
                             "(scope 'global' chooses each layer's share itself)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples become lists); ``keep_rounding``, ``mask_sampling``,
        ``keep_rule`` and ``gain`` only when they are not their defaults, so default configs (and the artifacts
        holding them) serialize as before."""
        d = dataclasses.asdict(self)
        for k in ("targets", "exclude"):
            if d[k] is not None:
                d[k] = list(d[k])
        for k in _OMITTED_DEFAULTS:
            if d[k] == _OMITTED_DEFAULTS[k]:
                del d[k]
        return d

    def layer_keeps(self, shapes: list[tuple[int, ...]], keep: float | None = None) -> list[float]:
        """Each weight's kept fraction under :attr:`keep_rule` (at ``keep``, default :attr:`keep`)."""
        return layer_keeps(self.keep if keep is None else keep, shapes, self.keep_rule)

    def kept_counts(self, shapes: list[tuple[int, ...]], keep: float | None = None) -> list[int]:
        """Each weight's kept count with ``scope="layer"`` (:func:`kept_count` of its :meth:`layer_keeps`)."""
        return [kept_count(k, math.prod(s), self.keep_rounding)
                for k, s in zip(self.layer_keeps(shapes, keep), shapes, strict=True)]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PEMNConfig:
        """Build from :meth:`to_dict`'s output; unknown keys are an error naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"a PEMNConfig must be built from a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown PEMNConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PEMNConfig:
        return cls.from_dict(json.loads(text))


def pemn_option(name: str, **change: Any) -> Any:
    """:class:`PEMNConfig`'s option ``name`` (its default, help, choices and bounds) declared as a field of another
    dataclass (``pemn.training.config.TrainConfig``), with ``change`` (``default``, ``help``, ``choices``,
    ``bounds``) applied: the option is written once, here."""
    fields = {f.name: f for f in dataclasses.fields(PEMNConfig)}
    if name not in fields:
        raise ValueError(f"PEMNConfig has no option {name!r}; its options: {', '.join(fields)}")
    return copy_option(fields[name], **change)
