"""The masks' training rules, pure functions with no module state: edge-popup's top-k with a straight-through
gradient, and probabilistic (Bernoulli) masks sampled at a target keep with a straight-through gradient."""

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


def topk_ste(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """The top-``kept`` of the signed ``scores`` as a 0/1 float mask, the gradient passing straight through:
    the deterministic mask of :func:`bernoulli_mask`'s scores."""
    return _TopKSTE.apply(scores, kept)


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


#: A Bernoulli mask's logits are its scores in units of their initial scale (``score * sqrt(fan_in)``, so
#: U(-1, 1) at the start) times this factor. Measured on LeNet-5 / MNIST at keep 0.1 (150 AdamW steps at lr
#: 0.01, RESULTS.md "Below one bit"): 1 and 4 stay at chance (every weight's probability is near keep, each
#: step samples a new random network and the loss cannot fall), 16 gives 37.6 %, 64 63.9 %, 256 34.8 %.
BERNOULLI_LOGIT_SCALE = 64.0


class _SampleSTE(torch.autograd.Function):
    """Forward: a 0/1 sample of Bernoulli(``probs``). Backward: the gradient reaches ``probs`` unchanged."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (torch.rand_like(probs) < probs).to(probs.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def keep_shift(scores: torch.Tensor, keep: float, iterations: int = 40) -> torch.Tensor:
    """The shift ``b`` (a 0-d tensor) with ``mean(sigmoid(scores + b)) == keep``: bisection on the bracket
    ``[logit(keep) - max(scores), logit(keep) - min(scores)]``, where the mean is monotone in ``b``; after 40
    halvings the expected kept fraction is within float32 rounding of ``keep``. ``0 < keep < 1``."""
    if not 0 < keep < 1:
        raise ValueError(f"keep_shift needs 0 < keep < 1, got {keep!r}")
    s = scores.detach().reshape(-1).float()
    target = torch.logit(torch.tensor(float(keep), dtype=torch.float32, device=s.device))
    lo, hi = target - s.max(), target - s.min()
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = torch.sigmoid(s + mid).mean() < keep
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def bernoulli_mask(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """A probabilistic mask (Zhou et al. 2019 "supermasks", FedPM): each weight kept with probability
    ``sigmoid(score + b)``, the per-tensor shift ``b`` (:func:`keep_shift`, no gradient) making the expected kept
    count exactly ``kept``; one fresh sample per call from torch's global generator, as 0/1 floats, with the
    straight-through gradient to the probabilities (so ``d/d score = sigmoid'``). The deterministic mask these
    scores stand for is the top-``kept`` of the scores themselves (the most probable weights)."""
    n = scores.numel()
    if not 0 <= kept <= n:
        raise ValueError(f"kept must be in [0, {n}], got {kept}")
    if kept in (0, n):
        return _TopKSTE.apply(scores, kept)
    shift = keep_shift(scores, kept / n)
    return _SampleSTE.apply(torch.sigmoid(scores + shift))


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
