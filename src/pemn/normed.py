"""Masking through weight_norm and spectral_norm: which tensor of a normalised layer pemn masks, and how the
norm is kept well defined on a masked tensor.

A layer normalised by ``torch.nn.utils.parametrizations.weight_norm`` / ``spectral_norm`` (or the old
hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm``) computes its weight from other tensors. pemn masks
the tensor the norm reads, so the layer's weight is still the norm's output and keeps its meaning:

- weight norm, ``w = g * v / ||v||``: the direction ``v`` is masked, the magnitude ``g`` stays a trained dense
  parameter. A slice of ``v`` whose every entry is masked off has no direction: its weights are 0 (and get no
  gradient through the norm), as a fully masked row of a plain masked layer is 0, instead of torch's 0/0 = NaN;
  every other slice is bit-identical to torch's weight norm.
- spectral norm, ``w = W / sigma(W)``: the weight before normalisation is masked; the power iteration is rerun on
  the masked weight at conversion (15 steps, as torch does when the norm is registered), so ``sigma`` is the
  masked weight's, and continues as in torch (one step per training forward; buffers ``_u``/``_v`` are saved).

:func:`unmask_norms_` gives a materialized model torch's own norm classes back (same outputs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

#: The parametrizations pemn masks through, by class -> the tensor of the ``ParametrizationList`` it masks:
#: weight_norm's direction ``v`` (``original1``; the magnitude ``g`` is ``original0``) and spectral_norm's weight
#: before normalisation (``original``).
_WeightNormP = getattr(parametrizations, "_WeightNorm")  # noqa: B009 (private in torch)
_SpectralNormP = getattr(parametrizations, "_SpectralNorm")  # noqa: B009
PARAMETRIZED_TENSORS: dict[type[nn.Module], str] = {_WeightNormP: "original1", _SpectralNormP: "original"}
POWER_ITERATIONS = 15  # what torch runs when a spectral norm is registered


def _weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """torch's weight norm, with every slice of ``v`` that is all zeros giving zeros (no NaN, no gradient)."""
    dead = torch.norm_except_dim(v, 2, dim) == 0
    return torch._weight_norm(torch.where(dead, torch.ones_like(v), v), g, dim).masked_fill(dead, 0)


class MaskedWeightNorm(_WeightNormP):
    """``parametrizations.weight_norm`` on a masked direction ``v`` (see the module docstring)."""

    def forward(self, weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
        return _weight_norm(weight_v, weight_g, self.dim)


class MaskedWeightNormHook(WeightNorm):
    """The old hook-based ``torch.nn.utils.weight_norm`` on a masked direction ``v``."""

    def compute_weight(self, module: nn.Module) -> torch.Tensor:
        return _weight_norm(getattr(module, self.name + "_v"), getattr(module, self.name + "_g"), self.dim)


def parametrized_tensor(plist: nn.Module) -> str | None:
    """The tensor of ``plist`` (a ``layer.parametrizations.<weight>``) pemn masks, or None when its
    parametrizations are not exactly one weight_norm or spectral_norm of ``torch.nn.utils.parametrizations``."""
    if not isinstance(plist, parametrize.ParametrizationList) or len(plist) != 1:
        return None
    for cls, name in PARAMETRIZED_TENSORS.items():
        if isinstance(plist[0], cls):
            return name
    return None


def _norm_hooks(module: nn.Module) -> list[WeightNorm | SpectralNorm]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm | SpectralNorm)]


def hooked_tensor(module: nn.Module, weight: str) -> str | None:
    """The parameter from which the old hook-based ``torch.nn.utils.weight_norm`` (``<weight>_v``, the direction;
    ``<weight>_g`` stays dense) or ``spectral_norm`` (``<weight>_orig``) computes ``module.<weight>``, or None."""
    for hook in _norm_hooks(module):
        if hook.name == weight:
            name = weight + ("_v" if isinstance(hook, WeightNorm) else "_orig")
            return name if module._parameters.get(name) is not None else None
    return None


def prepare_norms_(module: nn.Module) -> None:
    """After ``module``'s tensors were masked: weight norms switch to their masked-safe form, spectral norms
    rerun their power iteration on the masked weight. No RNG is used."""
    with torch.no_grad():
        if isinstance(module, parametrize.ParametrizationList):
            norm = module[0]
            if type(norm) is _WeightNormP:
                norm.__class__ = MaskedWeightNorm
            elif isinstance(norm, _SpectralNormP) and module.original.ndim > 1:
                norm._power_method(norm._reshape_weight_to_matrix(module.original), POWER_ITERATIONS)
        for hook in _norm_hooks(module):
            if type(hook) is WeightNorm:
                hook.__class__ = MaskedWeightNormHook
                setattr(module, hook.name, hook.compute_weight(module))  # not the dense weight any more
            elif isinstance(hook, SpectralNorm):
                for _ in range(POWER_ITERATIONS // hook.n_power_iterations):
                    hook.compute_weight(module, do_power_iteration=True)
                setattr(module, hook.name, hook.compute_weight(module, do_power_iteration=False))


def detach_hooked_(model: nn.Module) -> None:
    """The old hooks keep their last output as a plain attribute; after a forward with grad it is a non-leaf
    tensor, which deepcopy refuses: replace it by a detached one (the next forward recomputes it anyway)."""
    for module in model.modules():
        for hook in _norm_hooks(module):
            w = module.__dict__.get(hook.name)
            if isinstance(w, torch.Tensor) and w.grad_fn is not None:
                module.__dict__[hook.name] = w.detach()


def _revive_dead_(v: torch.Tensor, g: torch.Tensor, dim: int) -> None:
    """Make torch's own weight norm give what :func:`_weight_norm` gives: a slice of ``v`` that is all zeros
    becomes ones with a magnitude ``g`` of 0, so its weights are 0 (not 0/0) and the others are unchanged."""
    with torch.no_grad():
        dead = torch.norm_except_dim(v, 2, dim) == 0
        v.copy_(torch.where(dead, torch.ones_like(v), v))
        g.copy_(torch.where(dead, torch.zeros_like(g), g))  # g has the shape of the norm (torch's weight_norm)


def unmask_norms_(model: nn.Module, masked: set[int]) -> None:
    """Give the norms that read a tensor of a module in ``masked`` (ids, as they were before
    :func:`pemn.layers.to_dense_` baked them) torch's own classes back, with the same outputs: a materialized
    model holds no pemn class, and keeps its structure (a transformers model's ``parametrizations.weight.
    original0/1`` keys, which ``save_pretrained`` / ``from_pretrained`` expect)."""
    for module in model.modules():
        if id(module) not in masked:
            continue
        if isinstance(module, parametrize.ParametrizationList) and isinstance(module[0], MaskedWeightNorm):
            module[0].__class__ = _WeightNormP
            _revive_dead_(module.original1, module.original0, module[0].dim)
        for hook in _norm_hooks(module):
            if isinstance(hook, MaskedWeightNormHook):
                hook.__class__ = WeightNorm
                _revive_dead_(getattr(module, hook.name + "_v"), getattr(module, hook.name + "_g"), hook.dim)
                with torch.no_grad():
                    setattr(module, hook.name, hook.compute_weight(module))
