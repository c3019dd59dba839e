"""The masks' training rules, pure functions with no module state: edge-popup's top-k with a straight-through
gradient, and probabilistic (Bernoulli) masks sampled at a target keep with a straight-through gradient."""

from __future__ import annotations

import numpy as np
import torch

#: Integers whose order is that of non-negative floats' bit patterns, per float dtype numpy selects in.
_SAME_ORDER_BITS = {torch.float32: np.int32, torch.float64: np.int64}


def _numpy_selects(values: torch.Tensor) -> bool:
    """Whether numpy selects among ``values`` (float32/float64 on the CPU, no grad)."""
    return values.device.type == "cpu" and values.dtype in _SAME_ORDER_BITS and not values.requires_grad


def kth_smallest(flat: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank``-th smallest entry (1-based) of the 1-D tensor ``flat``: ``torch.kthvalue(flat, rank).values``.

    On the CPU (float32/float64) numpy's introselect (``np.partition``) finds the same value an order of magnitude
    faster than ``torch.kthvalue``, which carries an index array through its selection; the value of a given rank
    is unique, so both give the same number (NaN, which both order last, included).
    """
    value = _kth_smallest_value(flat, rank)
    return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=flat.dtype)


def _kth_smallest_value(values: torch.Tensor, rank: int) -> float | torch.Tensor:
    """The ``rank``-th smallest of all entries of ``values`` (any shape), as :func:`kth_smallest` finds it: a
    Python float where numpy selects it (a float32 or float64 value converts to a Python float and back exactly,
    so comparing a tensor with it compares with that value, without building a 0-d tensor), else a 0-d tensor
    on the values' device."""
    if _numpy_selects(values):
        return float(np.partition(values.numpy().reshape(-1), rank - 1)[rank - 1])
    return torch.kthvalue(values.reshape(-1), rank).values


def _kth_smallest_in_place(magnitudes: torch.Tensor, rank: int) -> tuple[float, bool]:
    """:func:`kth_smallest` of ``magnitudes`` (float32/float64 on the CPU, no grad, no entry with its sign bit
    set: ``abs()`` output, NaN included), and whether an entry of lower rank equals it (a tie at the threshold:
    more than ``numel - rank + 1`` entries are >= it, NaN aside).

    It is found in the magnitudes' own memory, whose order it scrambles (no copy, no new array, which shows in a
    training step), among their bit patterns read as integers: non-negative floats order as those do (NaN,
    above +inf, last, as torch and numpy order it), and numpy selects among integers 1.6-2.4x faster than among
    floats. The partition leaves every lower rank below the threshold's place, so the largest of them tells a
    tie (equal bits are equal values here) without counting a mask."""
    flat = magnitudes.numpy().reshape(-1)  # a view (a copy, left unsorted, if magnitudes is not contiguous)
    bits = flat.view(_SAME_ORDER_BITS[magnitudes.dtype])
    bits.partition(rank - 1)
    return float(flat[rank - 1]), rank > 1 and bool(bits[: rank - 1].max() == bits[rank - 1])


def _counts_exactly(dtype: torch.dtype, n: int) -> bool:
    """Whether the sum of ``n`` zeros and ones in the float ``dtype`` is their exact count (float16 and bfloat16
    cannot tell 3,000 from 3,001)."""
    return dtype == torch.float64 or (dtype == torch.float32 and n < 2**24)


def topk_mask(magnitudes: torch.Tensor, kept: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Mask of the ``kept`` largest entries of ``magnitudes`` (any shape): True / 1 there, False / 0 elsewhere,
    as ``dtype`` (bool by default; a float dtype gives the 0/1 values ``mask.to(dtype)`` would, directly).

    Exactly ``kept`` entries are set. Ties at the threshold go to the lowest flat (row-major) index,
    so the mask is deterministic. Cost: one selection (:func:`kth_smallest`), a comparison and a count, plus,
    only when entries tie at the threshold, a few elementwise passes that break the tie; never a full sort.
    """
    flat = magnitudes.detach().reshape(-1)
    n = flat.numel()
    if not 0 <= kept <= n:
        raise ValueError(f"kept must be in [0, {n}], got {kept}")
    if kept == n:
        return torch.ones_like(flat, dtype=dtype).view_as(magnitudes)
    if kept == 0:
        return torch.zeros_like(flat, dtype=dtype).view_as(magnitudes)
    # a float mask is written by the comparison itself (3x faster than a bool one and its conversion) where its
    # sum, which detects ties, counts exactly
    out_dtype = dtype if _counts_exactly(dtype, n) else torch.bool
    mask = _write_topk(flat, kept, torch.empty(flat.shape, dtype=out_dtype, device=flat.device))
    return mask.to(dtype).view_as(magnitudes)


def _write_topk(magnitudes: torch.Tensor, kept: int, out: torch.Tensor) -> torch.Tensor:
    """:func:`topk_mask` of ``magnitudes`` (no grad, any shape, ``0 < kept < numel``) written into ``out`` (the
    same shape; bool, or a float dtype whose sum counts exactly: :func:`_counts_exactly`), which it returns."""
    threshold = _kth_smallest_value(magnitudes, magnitudes.numel() - kept + 1)
    mask = torch.ge(magnitudes, threshold, out=out)
    if int(mask.sum()) == kept:  # no tie at the threshold (the usual case): every entry >= it is kept
        return mask
    return _break_tie(magnitudes, threshold, kept, out)


def _break_tie(magnitudes: torch.Tensor, threshold: float | torch.Tensor, kept: int, out: torch.Tensor) -> torch.Tensor:
    """The top-``kept`` mask of ``magnitudes`` whose ``kept``-th largest entry, ``threshold``, ties with others:
    every entry above it, then those equal to it by lowest flat index; written into ``out``, returned."""
    flat = magnitudes.reshape(-1)
    above = flat > threshold
    at = flat == threshold
    missing = kept - above.sum()
    return out.copy_((above | (at & (torch.cumsum(at, 0) <= missing))).view_as(out))


class _TopKSTE(torch.autograd.Function):
    """Forward: the top-k mask as 0/1 in the input's dtype. Backward: the gradient passes unchanged."""

    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, kept: int) -> torch.Tensor:  # type: ignore[override]
        return topk_mask(magnitudes, kept, magnitudes.dtype)

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


class _MaskedProduct(torch.autograd.Function):
    """``base * ste_mask(scores, kept).to(base.dtype)`` as one autograd node: the same forward values and the
    same gradients, bit for bit (``scores`` gets ``(grad * base).to(scores.dtype) * scores.sgn()``, the product
    the three nodes ``abs``, the straight-through top-k and ``mul`` compute in that order), without their
    bookkeeping and the autograd pass through ``abs``.

    On the CPU (float32/float64 scores and base) the forward makes one tensor besides the product: ``|scores|``,
    in which the threshold is selected in place (:func:`_kth_smallest_in_place`, which also tells a tie), then
    ``|scores|`` is written again into the product's memory, compared with the threshold and multiplied by
    ``base`` there. The sign of the scores is then taken into the first tensor, while the scores are in cache
    (the backward would read them again from memory, and allocate): the backward is two passes (``grad *
    base``, times the sign) instead of three, for one tensor of the scores' size held until the backward. On
    other devices (no cache to save, memory dearer) the backward takes the sign.

    Measured by ``benchmarks/bench_lm_step.py`` (BENCHMARKS.md section 10)."""

    @staticmethod
    def forward(ctx, base: torch.Tensor, scores: torch.Tensor, kept: int,  # type: ignore[override]
                records_grad: bool) -> torch.Tensor:
        detached = scores.detach()
        magnitudes = detached.abs()
        n = magnitudes.numel()
        same_layout = magnitudes.shape == base.shape and base.dtype == scores.dtype
        # _numpy_selects(magnitudes) written out (|scores| never requires grad): this runs every step
        if 0 < kept < n and same_layout and magnitudes.is_cpu and magnitudes.dtype in _SAME_ORDER_BITS:
            # the usual case (CPU): the threshold is selected in the memory of |scores| (scrambling it), then
            # |scores| is written again into the memory of the product and compared there, in place
            threshold, tied = _kth_smallest_in_place(magnitudes, n - kept + 1)
            mask = torch.abs(detached, out=torch.empty_like(base))
            torch.ge(mask, threshold, out=mask)
            if tied:  # rare; without a tie the entries >= the threshold are the kept ones (NaN never compares)
                mask = _break_tie(detached.abs(), threshold, kept, mask)
        else:
            mask = topk_mask(magnitudes, kept, scores.dtype).to(base.dtype)
        base_grad = ctx.needs_input_grad[0]
        mask_for_base = mask if base_grad else None
        ctx.sign_taken = records_grad and scores.is_cpu
        if ctx.sign_taken:  # the mask has its own memory, so |scores| may now hold the sign
            ctx.save_for_backward(base, torch.sgn(detached, out=magnitudes), mask_for_base)
        else:
            ctx.save_for_backward(base, scores, mask_for_base)
        if base_grad or mask.shape != base.shape:
            return base * mask
        return mask.mul_(base)  # base * mask in the mask's own memory (the same products, no new tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:  # type: ignore[override]
        base, sign_or_scores, mask = ctx.saved_tensors
        grad_base = grad * mask if ctx.needs_input_grad[0] else None
        if not ctx.needs_input_grad[1]:
            return grad_base, None, None, None
        sign = sign_or_scores if ctx.sign_taken else sign_or_scores.sgn()
        grad_mask = grad * base
        if grad_mask.dtype != sign.dtype:
            grad_mask = grad_mask.to(sign.dtype)
        return grad_base, grad_mask.mul_(sign), None, None


def masked_product(base: torch.Tensor, scores: torch.Tensor, kept: int) -> torch.Tensor:
    """``base`` times the edge-popup mask of ``scores`` (:func:`ste_mask`), in ``base``'s dtype: what a training
    :class:`~pemn.layers.MaskedWeight` returns."""
    # whether autograd records this call (inside the node's forward grad mode is always off): without a
    # graph (evaluation under no_grad) the sign of the scores is never needed
    return _MaskedProduct.apply(base, scores, kept, torch.is_grad_enabled() and scores.requires_grad)


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
