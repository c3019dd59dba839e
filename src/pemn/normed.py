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

:func:`bake_norms_` removes the norms from a materialized model (their output becomes a plain weight).
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


def bake_norms_(model: nn.Module, masked: set[int]) -> None:
    """Replace each weight_norm / spectral_norm that reads a tensor of a module in ``masked`` (ids, as they were
    before :func:`pemn.layers.to_dense_`) by its output as a plain weight (a spectral norm as in eval mode), not
    requiring grad: a materialized model holds no pemn class and exports like any model."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name, plist in list(module.parametrizations.items()):
                if id(plist) in masked:
                    training = plist.training
                    plist.eval()
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                    plist.train(training)
                    getattr(module, name).requires_grad_(False)
        if id(module) in masked:
            for hook in _norm_hooks(module):
                if isinstance(hook, WeightNorm):
                    torch.nn.utils.remove_weight_norm(module, hook.name)
                else:
                    torch.nn.utils.remove_spectral_norm(module, hook.name)
                getattr(module, hook.name).requires_grad_(False)
