"""Quantized dense baselines: weights stored as a few bits per weight plus one scale per output channel.

The competitor a user weighs a pemn file against at equal bytes. Every Conv/Linear/Embedding weight (and a
MultiheadAttention's packed ``in_proj_weight``; the first and last layers included) becomes ``scale_c × code``
with one scale per output channel (row ``c`` of the weight: an output channel of a Conv/Linear, a token of an
Embedding) and integer codes:

- ``binary`` (BinaryConnect / BWN): ``code = sign(w)`` (±1, a zero weight counts as +1), ``scale = mean|w_c|``;
  1 bit per weight.
- ``ternary`` (TWN): ``code = sign(w)`` where ``|w| > Δ_c = 0.7·mean|w_c|``, else 0; ``scale`` = the mean
  ``|w|`` of the kept weights; 2 bits per weight, or entropy coded (zero / non-zero positions plus a sign bit).
- ``int2`` / ``int4`` / ``int8``: symmetric, ``code = clamp(round(w / scale), -q, q)`` with
  ``q = 2^(k-1) - 1`` (so int2 has the 3 levels -1, 0, 1 like ternary, but stored at 2 bits); ``scale`` is the
  per-channel clipping ``ratio × max|w_c| / q`` whose ratio, from a fixed grid (:data:`CLIP_RATIOS`), gives the
  smallest squared error (at 8 bits it is about 1, the plain max scale; at 2-4 bits clipping the outliers wins).

Scales are rounded to float16 (that is what the file stores), and the codes are computed with the rounded
scale, so the model a run trains or evaluates is exactly the model its file loads.

Two ways to get there (:data:`QAT_METHODS`, :data:`PTQ_METHODS`):

- quantization-aware training (``binary``, ``ternary``, ``int2``, ``int4``, ``int8``): :func:`quantize_` puts a
  :class:`FakeQuantize` parametrization on every weight; the forward pass uses the quantized values and the
  gradient passes straight through to the latent float32 weights (the straight-through estimator). With
  ``masks`` (a pruned model: Deep Compression) the pruned weights stay exactly zero and the statistics
  (mean, max, error) are taken over the survivors only.
- post-training quantization (``ptq-int8``, ``ptq-int4``, ``ptq-int2``): the same quantizer put on a trained
  dense model, then :func:`calibrate_` re-estimates every BatchNorm's statistics on training images with the
  quantized weights (a model without BatchNorm needs no calibration: the weight scales come from the weights).

Written by hand (about as long as a library's configuration would be): torchao's QAT accepts only Linear and
Embedding layers, brevitas replaces the model's layers with its own classes (files and checkpoints would then
depend on brevitas and hold fake-quantized float32 weights), and neither has TWN's ternary threshold or a
per-channel binary scale of mean|w|. The packed file is :mod:`pemn.training.quantfile`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from pemn.convert import is_converted, unwrap

__all__ = [
    "CLIP_RATIOS",
    "PRUNED_METHODS",
    "PTQ_CALIBRATION_IMAGES",
    "PTQ_METHODS",
    "QAT_METHODS",
    "QUANTIZE_METHODS",
    "FakeQuantize",
    "bits_of",
    "calibrate_",
    "code_range",
    "dequantize",
    "fake_quantizers",
    "post_training_quantize_",
    "quantizable_weights",
    "quantize_",
    "quantize_weight",
    "weight_method",
]

QAT_METHODS = ("binary", "ternary", "int2", "int4", "int8")
PTQ_METHODS = ("ptq-int8", "ptq-int4", "ptq-int2")
QUANTIZE_METHODS = QAT_METHODS + PTQ_METHODS
#: The methods that may quantize a pruned model's survivors (Deep Compression; binary has no zero code).
PRUNED_METHODS = ("ternary", "int2", "int4", "int8")
#: Clipping ratios (of max|w_c|) tried for the int-k scales: 0.20, 0.225, ..., 1.0.
CLIP_RATIOS = tuple(round(0.2 + 0.025 * i, 3) for i in range(33))
#: Post-training quantization re-estimates BatchNorm statistics on (at most) this many training images.
PTQ_CALIBRATION_IMAGES = 4096
#: ``0.7 · mean|w|``: TWN's ternary threshold.
TERNARY_THRESHOLD = 0.7
_QUANTIZED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
_SCALE_MIN, _SCALE_MAX = 2.0**-24, 65504.0  # float16's smallest subnormal and largest finite value


def weight_method(method: str) -> str:
    """The weight quantizer of a method: ``ptq-int4`` -> ``int4``; QAT methods are their own."""
    if method not in QUANTIZE_METHODS:
        raise ValueError(f"unknown quantize method {method!r}; valid: {', '.join(QUANTIZE_METHODS)}")
    return method.removeprefix("ptq-")


def bits_of(method: str) -> int:
    """Bits per stored code: 1 (binary), 2 (ternary, int2), 4 or 8."""
    m = weight_method(method)
    return {"binary": 1, "ternary": 2}.get(m) or int(m.removeprefix("int"))


def code_range(method: str) -> tuple[int, int]:
    """The smallest and largest code of a method: (-1, 1) for binary (no 0), ternary and int2; (-7, 7) for int4,
    (-127, 127) for int8."""
    m = weight_method(method)
    if m in ("binary", "ternary"):
        return -1, 1
    q = 2 ** (bits_of(m) - 1) - 1
    return -q, q


def quantizable_weights(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """The weights quantization applies to, as ``{"<module>.<param>": (module, param name)}`` in module order:
    every Conv/Linear/Embedding ``weight`` and every MultiheadAttention ``in_proj_weight`` (plain names, also for
    a model whose weights are parametrized already)."""
    out: dict[str, tuple[nn.Module, str]] = {}
    for name, module in unwrap(model).named_modules():
        attrs = ("weight",) if isinstance(module, _QUANTIZED_TYPES) else (
            ("in_proj_weight",) if isinstance(module, nn.MultiheadAttention) else ())
        for attr in attrs:
            if _original(module, attr) is not None:
                out[f"{name}.{attr}" if name else attr] = (module, attr)
    return out


def _original(module: nn.Module, attr: str) -> torch.Tensor | None:
    """The latent parameter ``attr`` of ``module`` (under a parametrization: its ``original``)."""
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    p = module._parameters.get(attr)
    return p if isinstance(p, nn.Parameter) else None


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).float() if w.dim() else w.detach().reshape(1, 1).float()


def _to_scale(s: torch.Tensor) -> torch.Tensor:
    """Per-channel scales as the file stores them: float16 values (held as float32)."""
    return s.clamp(_SCALE_MIN, _SCALE_MAX).half().float()


def _masked_mean(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    if keep is None:
        return x.mean(1)
    n = keep.sum(1)
    return (x * keep).sum(1) / n.clamp_min(1)


def quantize_weight(w: torch.Tensor, method: str,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales)`` of one weight: integer codes (int8, ``w``'s shape; 0 where ``mask`` is False) and one
    float16-valued scale per row (float32, shape ``(rows,)``). ``dequantize(codes, scales)`` is the quantized
    weight. Statistics are taken over ``mask``'s True positions only when it is given."""
    m = weight_method(method)
    x = _rows(w)
    keep = None if mask is None else mask.detach().reshape(x.shape).to(x.device, torch.bool)
    a = x.abs()
    if m == "binary":
        if keep is not None:
            raise ValueError("binary weights have no zero code: a pruned model takes ternary, int2, int4 or int8")
        scales = _to_scale(a.mean(1))
        codes = torch.where(x >= 0, 1, -1)
    elif m == "ternary":
        delta = TERNARY_THRESHOLD * _masked_mean(a, keep)
        kept = a > delta[:, None]
        if keep is not None:
            kept &= keep
        scales = _to_scale(_masked_mean(a, kept))
        codes = torch.sign(x).to(torch.int64) * kept
    else:
        q = code_range(m)[1]
        scales = _clip_scales(x, keep, q)
        codes = torch.clamp(torch.round(x / scales[:, None]), -q, q).to(torch.int64)
        if keep is not None:
            codes = codes * keep
    return codes.to(torch.int8).reshape(w.shape), scales


def _clip_scales(x: torch.Tensor, keep: torch.Tensor | None, q: int) -> torch.Tensor:
    """Per row, the scale ``ratio × max|x| / q`` (ratio from :data:`CLIP_RATIOS`, float16-rounded) whose codes
    give the smallest squared error over the row (its ``keep`` positions); the first such ratio on ties. One ratio
    at a time: all at once is 5x slower on a CPU (33 full-size temporaries leave the cache)."""
    amax = (x.abs() if keep is None else x.abs() * keep).amax(1)
    best_err = torch.full_like(amax, float("inf"))
    scales = _to_scale(amax / q)
    for ratio in CLIP_RATIOS:
        s = _to_scale(ratio * amax / q)
        err = (x - s[:, None] * torch.clamp(torch.round(x / s[:, None]), -q, q)).square()
        err = err.sum(1) if keep is None else (err * keep).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scales = torch.where(better, s, scales)
    return scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``scale_c × code`` (float32, ``codes``' shape): the weight a quantized file and a quantized run use."""
    rows = codes.reshape(codes.shape[0], -1) if codes.dim() else codes.reshape(1, 1)
    return (scales.float()[:, None] * rows.float()).reshape(codes.shape)


class FakeQuantize(nn.Module):
    """A parametrization: the weight's quantized values in the forward pass, the straight-through gradient (the
    identity, times ``mask`` for a pruned model) to the latent weight in the backward pass. ``mask`` (a pruned
    model's survivors) is a non-persistent buffer: a run rebuilds it from its seed."""

    def __init__(self, method: str, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.method = weight_method(method)
        self.mask: torch.Tensor | None
        self.register_buffer("mask", None if mask is None else mask.detach().to(torch.bool), persistent=False)

    def quantized(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes, scales)`` of the latent weight ``w``."""
        with torch.no_grad():
            return quantize_weight(w, self.method, self.mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = dequantize(*self.quantized(w)).to(w.dtype)
        through = w - w.detach()  # exactly 0 in the forward pass (so the output is exactly q); d/dw = 1
        return q + (through if self.mask is None else through * self.mask)

    def extra_repr(self) -> str:
        return f"method={self.method!r}" + (", pruned" if self.mask is not None else "")


def quantize_(model: nn.Module, method: str, masks: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Put a :class:`FakeQuantize` on every weight of :func:`quantizable_weights` (in place); returns their names.

    ``method`` is a QAT method, or a PTQ one (its weight quantizer: ``ptq-int4`` -> ``int4``). ``masks`` (bool,
    True = kept, keyed like :func:`quantizable_weights`: a pruned model's) restrict each weight to its survivors.
    ValueError for a pemn-converted model, a model already quantized or without such weights, or masks that name
    other weights."""
    weight_method(method)
    root = unwrap(model)
    if is_converted(root):
        raise ValueError("quantization applies to dense models; this model is converted by pemn (its weights are "
                         "masks over a random prototype)")
    weights = quantizable_weights(root)
    if not weights:
        raise ValueError("the model has no Conv/Linear/Embedding weights to quantize")
    if any(parametrize.is_parametrized(m, a) for m, a in weights.values()):
        raise ValueError("this model is quantized already; build a fresh model to quantize again")
    unknown = sorted(set(masks or {}) - set(weights))
    if unknown:
        raise ValueError(f"masks name weights that are not quantized: {unknown[:5]}")
    for name, (module, attr) in weights.items():
        mask = (masks or {}).get(name)
        parametrize.register_parametrization(module, attr, FakeQuantize(method, mask))
    return list(weights)


def fake_quantizers(model: nn.Module) -> dict[str, tuple[FakeQuantize, torch.Tensor]]:
    """``{name: (its FakeQuantize, the latent weight)}`` of a model :func:`quantize_` quantized."""
    out = {}
    for name, (module, attr) in quantizable_weights(model).items():
        if parametrize.is_parametrized(module, attr):
            fq = module.parametrizations[attr][0]
            if isinstance(fq, FakeQuantize):
                out[name] = (fq, module.parametrizations[attr].original)
    return out


def plain_state_name(key: str) -> str:
    """A parametrized state_dict key under its plain name: ``conv.parametrizations.weight.original`` ->
    ``conv.weight``."""
    head, sep, tail = key.rpartition("parametrizations.")
    if not sep or not tail.endswith(".original"):
        return key
    return head + tail.removesuffix(".original")


@torch.no_grad()
def calibrate_(model: nn.Module, batches: Callable[[], Iterator[torch.Tensor]]) -> int:
    """Re-estimate every BatchNorm's running mean and variance (a plain average over ``batches()``, the inputs
    ready for the model) with the model's current (quantized) weights; everything else stays in eval mode.
    Returns the number of BatchNorm layers recalibrated (0: nothing to do, and ``batches`` is not read)."""
    norms = [m for m in unwrap(model).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
        m.train()
    try:
        for x in batches():
            model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


def post_training_quantize_(model: nn.Module, method: str, images: torch.Tensor | None,
                            transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                            batch_size: int = 128) -> int:
    """Quantize a trained dense model in place (``method``: a PTQ method) and re-estimate its BatchNorm statistics
    on the first :data:`PTQ_CALIBRATION_IMAGES` of ``images`` (training images, raw; ``transform`` makes them the
    model's inputs). Returns the number of BatchNorm layers recalibrated; ``images`` may be None for a model
    without BatchNorm (ValueError otherwise)."""
    if method not in PTQ_METHODS:
        raise ValueError(f"post-training quantization takes {', '.join(PTQ_METHODS)}, not {method!r} (the QAT "
                         "methods train with quantized weights: pemn train --strategy dense --quantize METHOD)")
    quantize_(model, method)
    calibration = None if images is None else images[:PTQ_CALIBRATION_IMAGES]

    def batches() -> Iterator[torch.Tensor]:
        if calibration is None:
            raise ValueError("the model has BatchNorm layers: post-training quantization needs training images to "
                             "re-estimate their statistics")
        for i in range(0, calibration.shape[0], batch_size):
            x = calibration[i:i + batch_size]
            yield transform(x) if transform is not None else x

    return calibrate_(model, batches)
