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
for tensors of two or more dimensions (per output channel). The rule, per tensor (:func:`int8_groups`):

- only finite floating-point tensors are quantised; integer buffers keep their dtype;
- embedding tables (parameters of ``nn.Embedding`` / ``nn.EmbeddingBag``) keep their dtype (left dense);
- an unfolded BatchNorm / InstanceNorm ``running_var`` keeps its dtype: ``1/√(σ² + ε)`` amplifies its error
  without bound near zero (fold the norm to get it into int8 safely, as part of the scale);
- 0-d tensors and tensors where int8 would not be smaller — ``numel + 8·groups ≥ numel·itemsize``, the
  scales costing more than they save — keep their dtype.

Everything that keeps its dtype is stored exactly as trained.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

#: bytes of quantisation parameters per group (``lo`` and ``step``, float32)
QPARAM_BYTES = 8
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
    """State names the int8 rule keeps in their own dtype whatever their size: embedding tables and the
    running variances of (unfolded) norms."""
    out = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            out.update(prefix + p for p, _ in module.named_parameters(recurse=False))
        if isinstance(module, _BatchNorm | _InstanceNorm) and getattr(module, "running_var", None) is not None:
            out.add(prefix + "running_var")
    return out


def int8_groups(t: torch.Tensor) -> int:
    """How many int8 groups ``t`` is quantised in (0: it keeps its dtype), for a tensor not exempt by name."""
    if not t.dtype.is_floating_point or t.dim() == 0 or t.numel() == 0:
        return 0
    groups = t.shape[0] if t.dim() >= 2 else 1
    if t.numel() + QPARAM_BYTES * groups >= t.numel() * t.element_size():
        return 0
    if not bool(torch.isfinite(t).all()):
        return 0
    return groups


def quantize(t: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` as int8 (same shape) and its ``[groups, 2]`` float32 ``(lo, step)``; ``groups`` is 1 or
    ``t.shape[0]``."""
    x = t.detach().cpu().double().reshape(groups, -1)
    lo = x.min(dim=1).values.float().double()  # what the file holds, so rounding uses the stored lo
    step = ((x.max(dim=1).values - lo) / 255).float().double()
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


__all__ = ["FOLDED_STATE", "QPARAM_BYTES", "dequantize", "fold", "foldable", "int8_bytes", "int8_exempt",
           "int8_groups", "quantize", "unfold", "valid_groups"]
