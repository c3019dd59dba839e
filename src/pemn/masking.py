"""Edge-popup's top-k mask with a straight-through gradient; pure functions, no module state."""

from __future__ import annotations

import torch


def topk_mask(magnitudes: torch.Tensor, kept: int) -> torch.Tensor:
    """Boolean mask of the ``kept`` largest entries of ``magnitudes`` (any shape).

    Exactly ``kept`` entries are True. Ties at the threshold go to the lowest flat (row-major) index,
    so the mask is deterministic. Cost: one selection (``kthvalue``) and a few elementwise passes,
    not a full sort.
    """
    flat = magnitudes.detach().reshape(-1)
    n = flat.numel()
    if not 0 <= kept <= n:
        raise ValueError(f"kept must be in [0, {n}], got {kept}")
    if kept == n:
        return torch.ones_like(flat, dtype=torch.bool).view_as(magnitudes)
    if kept == 0:
        return torch.zeros_like(flat, dtype=torch.bool).view_as(magnitudes)
    threshold = torch.kthvalue(flat, n - kept + 1).values
    above = flat > threshold
    at = flat == threshold
    missing = kept - above.sum()
    mask = above | (at & (torch.cumsum(at, 0) <= missing))
    return mask.view_as(magnitudes)


class _TopKSTE(torch.autograd.Function):
    """Forward: the top-k mask as 0/1 in the input's dtype. Backward: the gradient passes unchanged."""

    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, kept: int) -> torch.Tensor:  # type: ignore[override]
        return topk_mask(magnitudes, kept).to(magnitudes.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def ste_mask(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Edge-popup: the top-``kept`` of ``|scores|`` as a 0/1 float mask; the gradient reaches ``scores``
    straight through the top-k and then through ``abs`` (as in the paper's code)."""
    return _TopKSTE.apply(scores.abs(), kept)


class _GivenMaskSTE(torch.autograd.Function):
    """Forward: a precomputed boolean mask as 0/1. Backward: the gradient passes unchanged."""

    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return mask.to(magnitudes.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def ste_given_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Like :func:`ste_mask` for a mask chosen elsewhere (a global top-k over many layers)."""
    return _GivenMaskSTE.apply(scores.abs(), mask)


def global_topk_masks(magnitudes: list[torch.Tensor], total_kept: int) -> list[torch.Tensor]:
    """Boolean masks keeping the ``total_kept`` largest entries over all tensors together (ties to the lowest
    index in the concatenation), then, for any tensor left empty, its largest entry as well: every layer
    keeps at least one weight, so the total is ``total_kept`` plus the number of such layers."""
    flat = torch.cat([m.detach().reshape(-1) for m in magnitudes])
    chosen = topk_mask(flat, min(total_kept, flat.numel()))
    masks = []
    start = 0
    for m in magnitudes:
        mask = chosen[start:start + m.numel()].view_as(m).clone()
        start += m.numel()
        if not mask.any():
            mask.view(-1)[torch.argmax(m.detach().reshape(-1))] = True
        masks.append(mask)
    return masks


def init_scores(shape: tuple[int, ...], fan_in: int, seed: int, index: int) -> torch.Tensor:
    """Edge-popup's score init, U(±1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)), from a private
    CPU generator so that converting a model never touches (or depends on) torch's global RNG."""
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + index) % (2**63))
    bound = 1.0 / fan_in**0.5
    return (torch.rand(shape, generator=g, dtype=torch.float32) * 2 - 1) * bound
