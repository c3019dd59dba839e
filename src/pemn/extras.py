"""Codecs for an artifact's dense extras: folded BatchNorms and affine int8.

**Folding** (``pemn.save(..., fold_norms=True)``). A BatchNorm with running statistics computes, in eval mode,
``γ·(x − μ)/√(σ² + ε) + β`` — one per-channel scale ``s = γ/√(σ² + ε)`` and shift ``t = β − μ·s``. A folded
artifact stores those two numbers per channel instead of γ, β, μ, σ² and ``num_batches_tracked``. Loading
puts them back into the same plain ``nn.BatchNorm*`` module as ``weight = s``, ``bias = t``,
``running_mean = 0``, ``running_var = 1 − ε``, ``num_batches_tracked = 0``: a consistent state whose eval
transform is ``x·s + t`` (to float rounding: ``√((1 − ε) + ε)`` is 1 within one float32 ulp), so everything
that reads those attributes keeps working. What is lost is the *training* state (γ, β, μ and σ² separately):
a folded file is an inference artifact, :func:`pemn.load` returns the model in eval mode, and continuing to
train it starts BatchNorm from the folded values (train mode normalises with batch statistics, a different
function from the one saved). Only BatchNorms with affine parameters and running statistics fold; others are
stored as they are.

**int8** (``extras_dtype="int8"``). A tensor is stored as ``q`` (int8) with, per group, ``lo`` and ``step``
(float32, in the artifact's ``qparams`` tensor) so that ``x̂ = lo + step·(q + 128)``, ``step = (max − min)/255``:
the largest error is ``step/2``, 1/510 of the group's range. Groups are the whole tensor for 1-D tensors
(biases, norm affine, folded scales and shifts each on their own) and one per index of the first dimension
for tensors of two or more dimensions (per output channel).

One range per tensor is not safe by itself: a per-channel tensor of large dynamic range (a folded scale
``γ/σ`` where some σ are tiny, a running mean against small σ) loses its small channels (measured: 6.5 to
16.5 points of CIFAR-10 accuracy). So int8 is **error-bounded**: every element's error must be at most
``INT8_TOL`` (1 %) of its *unit*, the size of the effect that element has on the layer's output
(:func:`error_units`). Per channel ``c`` of a norm with affine weight ``γ`` (``γ = 1`` without one), let
``u_c = max(|γ_c|, UNIT_FLOOR·max|γ|)`` (``UNIT_FLOOR`` = 1/16, so a near-dead channel is held to the layer's
scale, not to zero), the spread of the channel's output; the RMS output error each tensor causes alone, over
inputs with the running mean μ and variance σ², must be ≤ ``INT8_TOL·u_c``:

- ``weight`` γ and ``bias`` β: unit ``u_c`` (γ multiplies a normalised input of RMS 1);
- ``running_mean`` μ: unit ``u_c·σ_c/|γ_c|`` (an error in μ is an error in ``(x − μ)/σ``);
- ``running_var`` v: unit ``2·u_c·σ_c²/|γ_c|`` with ``σ_c² = v_c + ε`` (a relative error ``e`` in σ² scales
  ``(x − μ)/σ`` by ``e/2``);
- a folded norm's scale ``s_c``: unit ``u_c/max(σ_c, √(μ_c² + v_c))`` — ``Δs·x``, where ``√(μ² + v)`` is the RMS
  of ``x``; never looser than ``u_c/σ_c``, a relative error of the scale, so a channel that hardly moved in
  training (a dead channel: ``s = γ/√ε``) is still held to 1 % of itself should it fire; its shift ``t_c``:
  unit ``u_c`` (LayerNorm / GroupNorm / InstanceNorm affine as for a BatchNorm's γ and β);
- a unit is infinite where the error never reaches the output (``γ_c = 0``);
- any other tensor (biases of conv / linear layers, positional tables...): ``max(|x_i|, UNIT_FLOOR·max|x|)``,
  relative to the element itself, floored at 1/16 of the tensor's largest magnitude.

The rule, per tensor (:class:`Int8Rule`): embedding tables (parameters of ``nn.Embedding`` /
``nn.EmbeddingBag``) and integer buffers keep their dtype; every other finite floating-point tensor is
stored as int8 where that is smaller (:func:`int8_groups`: not 0-d, and ``numel + 8·groups < numel·itemsize``)
and meets the bound — the grid spans only what the bound needs (:func:`quantize` with units: elements with room
to spare are clamped to its ends, so a channel whose error cannot reach the output does not coarsen the grid) —
otherwise as float16 where that is smaller and meets the bound, otherwise exactly as trained. A folded norm that
int8 cannot hold whole is then tried row by row (:meth:`Int8Rule.encode_rows`: its scale and its shift each by the
same rule, in their own units) and stored so, as format version 3's ``fold.scale`` / ``fold.shift`` entries, where
that is smaller: typically a float16 scale (dead channels spread γ/σ) beside an int8 shift. float16 tensors of an
int8 file are ordinary float16 entries.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

#: bytes of quantisation parameters per group (``lo`` and ``step``, float32)
QPARAM_BYTES = 8
#: the largest error int8 (and its float16 fallback) may make, in units of each element's effect (see above)
INT8_TOL = 0.01
#: the smallest unit, as a fraction of the largest one in the tensor (near-zero channels)
UNIT_FLOOR = 1 / 16
#: the buffers and parameters a folded BatchNorm no longer stores
FOLDED_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def foldable(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm whose eval transform folds into a per-channel scale and shift."""
    return (isinstance(module, _BatchNorm) and module.affine and module.track_running_stats
            and module.running_mean is not None and module.running_var is not None)


def fold(module: nn.Module) -> torch.Tensor:
    """The ``[2, C]`` scale and shift of a foldable BatchNorm's eval transform (computed in float64, returned
    in the dtype of its weight)."""
    with torch.no_grad():
        w, b = module.weight.detach().double(), module.bias.detach().double()
        mean, var = module.running_mean.detach().double(), module.running_var.detach().double()
        scale = w / torch.sqrt(var + module.eps)
        shift = b - mean * scale
        return torch.stack([scale, shift]).to(module.weight.dtype).cpu()


def unfold(name: str, module: nn.Module, scale_shift: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """The ``param`` / ``buffer`` state that gives ``module`` (named ``name``) the eval transform of
    ``scale_shift``: see the module docstring. ``scale_shift`` has been checked to be ``[2, C]``."""
    prefix = f"{name}." if name else ""
    channels = scale_shift.shape[1]
    buffers = {f"{prefix}running_mean": torch.zeros(channels),
               f"{prefix}running_var": torch.full((channels,), 1.0 - module.eps)}
    if getattr(module, "num_batches_tracked", None) is not None:
        buffers[f"{prefix}num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return {"param": {f"{prefix}weight": scale_shift[0], f"{prefix}bias": scale_shift[1]}, "buffer": buffers}


def int8_exempt(model: nn.Module) -> set[str]:
    """State names the int8 rule keeps in their own dtype whatever their values: embedding tables."""
    out = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            out.update(prefix + p for p, _ in module.named_parameters(recurse=False))
    return out


def _floored(x: torch.Tensor) -> torch.Tensor:
    a = x.detach().cpu().double().abs()
    return a.clamp(min=UNIT_FLOOR * float(a.max())) if a.numel() else a


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` with ``inf`` where ``b`` is 0 (an error multiplied by nothing never reaches the output)."""
    return torch.where(b > 0, a / b.clamp(min=torch.finfo(torch.float64).tiny), torch.full_like(a, math.inf))


_NORMS = (_BatchNorm, _InstanceNorm, nn.LayerNorm, nn.GroupNorm)


def error_units(model: nn.Module) -> dict[str, torch.Tensor]:
    """The float64 error unit of every element of the norms' state (see the module docstring), by state name
    (``<norm>.weight``, ``.bias``, ``.running_mean``, ``.running_var``) and, for a foldable BatchNorm, by
    module name (the ``[2, C]`` units of its folded scale and shift). Other tensors are not listed: their
    unit is relative to themselves."""
    units: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, _NORMS):
            continue
        prefix = f"{name}." if name else ""
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        gain = weight.detach().cpu().double().abs() if isinstance(weight, torch.Tensor) else None
        unit = _floored(weight) if gain is not None else None
        if unit is not None:
            units[prefix + "weight"] = unit
        if isinstance(bias, torch.Tensor):
            units[prefix + "bias"] = unit if unit is not None else torch.ones(bias.shape, dtype=torch.float64)
        mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
        if not (isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor)):
            continue
        mean, var = mean.detach().cpu().double(), var.detach().cpu().double().clamp(min=0)
        sd = (var + module.eps).sqrt()
        if gain is None:
            unit = gain = torch.ones_like(sd)
        if unit.shape != sd.shape:
            continue
        per_gain = _ratio(unit, gain)  # γ = 0: μ and σ² do not reach the output
        units[prefix + "running_mean"] = sd * per_gain
        units[prefix + "running_var"] = 2 * (var + module.eps) * per_gain
        if foldable(module):
            units[name] = torch.stack([unit / torch.maximum(sd, (mean ** 2 + var).sqrt()), unit])
    return units


def within_bound(stored: torch.Tensor, t: torch.Tensor, unit: torch.Tensor) -> bool:
    """Whether every element of ``stored`` (as loaded) is within ``INT8_TOL`` units of ``t``."""
    err = (stored.detach().cpu().double() - t.detach().cpu().double()).abs()
    return bool(torch.isfinite(err).all()) and bool((err <= INT8_TOL * unit).all())


def encode_int8(t: torch.Tensor, unit: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What ``extras_dtype="int8"`` stores for ``t``: ``(q, qparams)`` where int8 is smaller and meets the
    bound, else ``(float16 tensor, None)`` where that is smaller and meets it, else ``(t, None)``. ``unit``
    (same shape as ``t``) defaults to ``t``'s own magnitude, floored (see the module docstring)."""
    t = t.detach().cpu()
    if not t.dtype.is_floating_point or t.numel() == 0 or not bool(torch.isfinite(t).all()):
        return t, None
    if unit is None or unit.shape != t.shape:
        unit = _floored(t)
    groups = int8_groups(t)
    if groups:
        q, qp = quantize(t, groups, unit)
        if within_bound(dequantize(q, qp), t, unit):
            return q, qp
    if t.element_size() > 2:
        half = t.to(torch.float16)
        if within_bound(half, t, unit):
            return half, None
    return t, None


class Int8Rule:
    """The per-tensor int8 rule for one model (see the module docstring): :meth:`encode` by state name."""

    def __init__(self, model: nn.Module) -> None:
        self.exempt = int8_exempt(model)
        self.units = error_units(model)

    def encode(self, name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(stored tensor, qparams or None)`` for the tensor (or fold entry) named ``name``."""
        if name in self.exempt:
            return t.detach().cpu(), None
        return encode_int8(t, self.units.get(name))

    def encode_rows(self, name: str, t: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The folded norm ``name``'s ``[2, C]`` scale and shift encoded row by row (each ``[C]``, its own
        dtype): a shift int8 holds within the bound is stored as int8 even when its scale needs float16."""
        unit = self.units.get(name)
        return [encode_int8(t[i], None if unit is None or unit.shape != t.shape else unit[i]) for i in range(2)]


def int8_groups(t: torch.Tensor) -> int:
    """How many int8 groups ``t`` would be quantised in (0: int8 is not possible or not smaller)."""
    if not t.dtype.is_floating_point or t.dim() == 0 or t.numel() == 0:
        return 0
    groups = t.shape[0] if t.dim() >= 2 else 1
    if t.numel() + QPARAM_BYTES * groups >= t.numel() * t.element_size():
        return 0
    if not bool(torch.isfinite(t).all()):
        return 0
    return groups


def quantize(t: torch.Tensor, groups: int, unit: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` as int8 (same shape) and its ``[groups, 2]`` float32 ``(lo, step)``; ``groups`` is 1 or
    ``t.shape[0]``. Without ``unit`` a group's grid spans its minimum to its maximum. With ``unit`` (the
    error units of :func:`error_units`, same shape as ``t``) it spans only what the bound needs: elements
    whose tolerance allows it are clamped to the grid's ends (at most half their ``INT8_TOL·unit`` away), so an
    element that barely reaches the output (the mean of a channel whose γ is 0) does not coarsen the grid of
    all the others."""
    x = t.detach().cpu().double().reshape(groups, -1)
    lo, hi = x.min(dim=1).values, x.max(dim=1).values
    if unit is not None:
        slack = INT8_TOL * unit.detach().cpu().double().reshape(groups, -1) / 2
        lo = torch.minimum((x + slack).min(dim=1).values, hi)  # every element below lo is within its slack
        hi = torch.maximum(torch.maximum((x - slack).max(dim=1).values, x.min(dim=1).values), lo)
    lo = lo.float().double()  # what the file holds, so rounding uses the stored lo
    step = ((hi - lo) / 255).float().double()
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.round((x - lo[:, None]) / safe[:, None]).clamp_(0, 255) - 128
    return q.to(torch.int8).reshape(t.shape), torch.stack([lo, step], dim=1).float()


def dequantize(q: torch.Tensor, qparams: torch.Tensor) -> torch.Tensor:
    """The float32 values of int8 ``q`` quantised in ``qparams.shape[0]`` groups (inverse of :func:`quantize`)."""
    groups = qparams.shape[0]
    lo, step = qparams[:, 0:1], qparams[:, 1:2]
    x = (q.reshape(groups, -1).to(torch.float32) + 128) * step + lo
    return x.reshape(q.shape)


def int8_bytes(numel: int, groups: int) -> int:
    """File bytes of a tensor of ``numel`` values quantised in ``groups`` groups (payload and qparams)."""
    return numel + QPARAM_BYTES * groups


def valid_groups(shape: list[int], groups: int) -> bool:
    """Whether a stored int8 tensor of ``shape`` may be quantised in ``groups`` groups (1, or per first index)."""
    numel = math.prod(shape)
    return numel > 0 and (groups == 1 or (len(shape) >= 2 and groups == shape[0]))


__all__ = ["FOLDED_STATE", "INT8_TOL", "QPARAM_BYTES", "UNIT_FLOOR", "Int8Rule", "dequantize", "encode_int8",
           "error_units", "fold", "foldable", "int8_bytes", "int8_exempt", "int8_groups", "quantize", "unfold",
           "valid_groups", "within_bound"]
