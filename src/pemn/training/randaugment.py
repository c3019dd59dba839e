"""torchvision's RandAugment, drawn per image, on batched tensors (CPU or GPU).

This follows ``torchvision.transforms.RandAugment(num_ops, magnitude, num_magnitude_bins=31,
interpolation=NEAREST, fill)`` (Cubuk et al. 2020, as torchvision defines it; the recipe the official PEMN code
trains ConvMixer with is ``RandAugment(num_ops=2, magnitude=12)``):

* **Operations** (:data:`OPS`, 14, drawn uniformly, independently for every image and every one of the
  ``num_ops`` slots): Identity, ShearX, ShearY, TranslateX, TranslateY, Rotate, Brightness, Color, Contrast,
  Sharpness, Posterize, Solarize, AutoContrast, Equalize. No Invert, no SolarizeAdd.
* **Magnitudes** (:func:`magnitude_table`): bin ``magnitude`` of ``num_magnitude_bins`` levels:
  shear ``linspace(0, 0.3)``, translate ``linspace(0, 150/331 · size)`` pixels (truncated to an int: 5 px on
  32×32, 11 px on 64×64 at magnitude 12), rotate ``linspace(0, 30)`` degrees, brightness / color / contrast /
  sharpness ``linspace(0, 0.9)`` (factor ``1 ± m``), posterize ``8 - round(i / ((bins - 1) / 4))`` bits,
  solarize threshold ``linspace(255, 0)`` on the 8-bit scale. Signed operations take a random sign per image.
* **Geometry** is torchvision's inverse affine matrix (``torchvision.transforms.functional.affine``/``rotate``)
  sampled with nearest interpolation at pixel centres (``grid_sample(..., "nearest", align_corners=False)``
  semantics, ties to even); shears are about the top-left corner (``center=[0, 0]``), translations and
  rotations about the image centre; pixels that come from outside the image get ``fill`` (0 = black).
* **Colour** operations are those the official pipeline runs, torchvision's functions on PIL images (Pillow's
  ``ImageEnhance``), on the 8-bit values ``v = round(255 · x)``: ``blend(v, d, f) = trunc(d + f·(v - d))``
  clipped to 0..255 (Pillow's ``Image.blend``, float32, the factor ``f`` a float32), with degenerate ``d`` = 0
  (Brightness), the 8-bit grayscale ``(19595 R + 38470 G + 7471 B + 32768) >> 16`` (Color; a no-op on 1-channel
  images), that grayscale's mean rounded to an integer (Contrast) and the 3×3 ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]]
  / 13`` smoothing of the interior rounded to an integer (Sharpness; border pixels kept). AutoContrast is Pillow's
  per-channel table ``trunc(v · 255 / (hi - lo) - lo · 255 / (hi - lo))`` (unchanged when constant).
* **8-bit operations**: Posterize keeps the top bits (``v & -2**(8 - bits)``), Solarize inverts the values
  ``>= threshold``, Equalize is Pillow's per-channel histogram table (``step = (count - count of the last
  non-empty bin) // 255``; unchanged when ``step == 0``).

Every operation thus ends on the 8-bit grid, as in the official pipeline, where each operation returns an 8-bit
PIL image: the second operation of a draw sees what the first one would have written to a PIL image (an input off
the grid is first rounded onto it), and the output is ``v / 255`` as ``ToTensor`` makes it of that image.

Images are float ``N×C×H×W`` in [0, 1] (C = 1 or 3). The draws come from torch's global CPU generator (run
under :func:`torch.random.fork_rng` to seed them; :mod:`pemn.training.augment` does), so the same seed picks the
same operations on every device. The batch is sorted by operation once per slot, so each operation runs once
on a contiguous block, and the five geometric operations share one gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OPS", "RandAugment", "inverse_affine_matrix", "magnitude_table", "warp_nearest"]

#: torchvision's RandAugment operations, in its order.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")  # contiguous in OPS
_GEO_FIRST, _GEO_END = OPS.index(_GEOMETRIC[0]), OPS.index(_GEOMETRIC[-1]) + 1
_GRAY = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class _Op:
    magnitude: float
    signed: bool


def magnitude_table(magnitude: int, num_bins: int = 31, image_size: tuple[int, int] = (32, 32)) -> dict[str, _Op]:
    """Every operation's magnitude at bin ``magnitude`` and whether it takes a random sign, as torchvision's
    ``RandAugment._augmentation_space`` computes them (float32 ``linspace``, read with ``.item()``)."""
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude must be in [0, {num_bins - 1}] for {num_bins} bins, got {magnitude}")
    height, width = image_size

    def lin(start: float, end: float) -> float:
        return float(torch.linspace(start, end, num_bins)[magnitude].item())

    bits = 8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int()
    return {
        "Identity": _Op(0.0, False),
        "ShearX": _Op(lin(0.0, 0.3), True),
        "ShearY": _Op(lin(0.0, 0.3), True),
        "TranslateX": _Op(lin(0.0, 150.0 / 331.0 * width), True),
        "TranslateY": _Op(lin(0.0, 150.0 / 331.0 * height), True),
        "Rotate": _Op(lin(0.0, 30.0), True),
        "Brightness": _Op(lin(0.0, 0.9), True),
        "Color": _Op(lin(0.0, 0.9), True),
        "Contrast": _Op(lin(0.0, 0.9), True),
        "Sharpness": _Op(lin(0.0, 0.9), True),
        "Posterize": _Op(float(bits[magnitude].item()), False),
        "Solarize": _Op(lin(255.0, 0.0), False),
        "AutoContrast": _Op(0.0, False),
        "Equalize": _Op(0.0, False),
    }


def inverse_affine_matrix(center: tuple[float, float], angle: float, translate: tuple[float, float],
                          scale: float, shear: tuple[float, float]) -> list[float]:
    """torchvision's ``_get_inverse_affine_matrix`` (output pixel -> input pixel, in coordinates centred on
    the image), for ``angle`` and ``shear`` in degrees."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [v / scale for v in (d, -b, 0.0, -c, a, 0.0)]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return m


def _geometric_matrix(op: str, magnitude: float, height: int, width: int) -> list[float]:
    """The inverse matrix torchvision's ``_apply_op`` uses for a geometric operation of signed ``magnitude``."""
    corner = (-width * 0.5, -height * 0.5)  # center=[0, 0] (top-left) in the centred coordinates
    if op == "ShearX":
        return inverse_affine_matrix(corner, 0.0, (0.0, 0.0), 1.0, (math.degrees(math.atan(magnitude)), 0.0))
    if op == "ShearY":
        return inverse_affine_matrix(corner, 0.0, (0.0, 0.0), 1.0, (0.0, math.degrees(math.atan(magnitude))))
    if op == "TranslateX":
        return inverse_affine_matrix((0.0, 0.0), 0.0, (float(int(magnitude)), 0.0), 1.0, (0.0, 0.0))
    if op == "TranslateY":
        return inverse_affine_matrix((0.0, 0.0), 0.0, (0.0, float(int(magnitude))), 1.0, (0.0, 0.0))
    if op == "Rotate":  # F.rotate passes -angle (its angle is counter-clockwise)
        return inverse_affine_matrix((0.0, 0.0), -magnitude, (0.0, 0.0), 1.0, (0.0, 0.0))
    raise ValueError(f"{op} is not a geometric operation")


def warp_nearest(x: torch.Tensor, matrices: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Sample every image of ``x`` (n×C×H×W) at ``matrices[i]`` (n×2×3, inverse, centred coordinates) with
    nearest interpolation; samples from outside the image are ``fill`` (per channel, default 0)."""
    n, c, h, w = x.shape
    dev = x.device
    xs = torch.arange(w, device=dev, dtype=torch.float32) + (0.5 - w * 0.5)
    ys = torch.arange(h, device=dev, dtype=torch.float32) + (0.5 - h * 0.5)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=dev)], -1).view(1, -1, 3)
    src = base.expand(n, -1, -1).bmm(matrices.to(device=dev, dtype=torch.float32).transpose(1, 2))  # n×HW×2
    col = torch.round(src[..., 0] + (w * 0.5 - 0.5))
    row = torch.round(src[..., 1] + (h * 0.5 - 0.5))
    valid = (col >= 0) & (col <= w - 1) & (row >= 0) & (row <= h - 1)
    index = torch.where(valid, row * w + col, torch.zeros_like(col)).long()
    out = x.reshape(n, c, h * w).gather(2, index[:, None, :].expand(n, c, h * w))
    fill_value = (torch.zeros((), dtype=x.dtype, device=dev) if fill is None
                  else fill.to(device=dev, dtype=x.dtype).view(1, -1, 1))
    return torch.where(valid[:, None, :], out, fill_value).view(n, c, h, w)


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit values ``round(255 · x)`` of a batch in [0, 1], as floats 0..255 (exact integers)."""
    return torch.round(x * 255.0).clamp_(0, 255)


def _from_8bit(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``v / 255`` (what ``ToTensor`` makes of an 8-bit image)."""
    return v.to(dtype) / 255.0


def _blend(v: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend(degenerate, image, factor)`` on 8-bit values: ``d + f·(v - d)`` in float32,
    truncated and clipped to 0..255 (``ImageEnhance``'s every ``enhance``)."""
    v32, d32 = v.to(torch.float32), degenerate.to(torch.float32)
    return torch.floor(d32 + factor.to(torch.float32) * (v32 - d32)).clamp_(0, 255)


def grayscale(v: torch.Tensor) -> torch.Tensor:
    """Pillow's 8-bit ``convert("L")`` (n×1×H×W) of a 3-channel batch of 8-bit values: ``(19595 R + 38470 G +
    7471 B + 32768) >> 16``."""
    q = v.to(torch.int64)
    return ((19595 * q[:, 0] + 38470 * q[:, 1] + 7471 * q[:, 2] + 32768) >> 16).unsqueeze(1).to(v.dtype)


def adjust_brightness(v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(v, torch.zeros_like(v), factor)


def adjust_saturation(v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if v.shape[1] == 1:  # an "L" image is its own grayscale: the blend returns it
        return v.clone()
    return _blend(v, grayscale(v), factor)


def adjust_contrast(v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageEnhance.Contrast``: the degenerate is the grayscale's mean, rounded to an integer."""
    gray = grayscale(v) if v.shape[1] == 3 else v
    mean = torch.floor(gray.to(torch.float64).mean(dim=(-3, -2, -1), keepdim=True) + 0.5)
    return _blend(v, mean.to(v.dtype).expand_as(v), factor)


def adjust_sharpness(v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageEnhance.Sharpness``: blend with the ``SMOOTH`` filter (the 3×3 kernel above, rounded to an
    integer, border pixels kept)."""
    c, h, w = v.shape[1:]
    if h <= 2 or w <= 2:
        return v.clone()
    kernel = torch.ones((3, 3), dtype=torch.float64, device=v.device)
    kernel[1, 1] = 5.0
    sums = F.conv2d(v.to(torch.float64), kernel.expand(c, 1, 3, 3), groups=c)  # exact integers
    smoothed = v.clone()
    smoothed[..., 1:-1, 1:-1] = torch.div(sums + 6, 13, rounding_mode="floor").to(v.dtype)  # round(sums / 13)
    return _blend(v, smoothed, factor)


def posterize(v: torch.Tensor, bits: int) -> torch.Tensor:
    return (v.to(torch.uint8) & (-int(2 ** (8 - bits)) & 0xFF)).to(v.dtype)


def solarize(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert the values at or above ``threshold`` (on the 8-bit scale, as Pillow's ``ImageOps.solarize``)."""
    return torch.where(v >= threshold, 255.0 - v, v)


def autocontrast(v: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageOps.autocontrast`` of every channel: ``lut[i] = trunc(i · scale + offset)``, ``scale = 255 /
    (hi - lo)``, ``offset = -lo · scale`` in double precision, clipped to 0..255; a constant channel unchanged."""
    low = v.amin(dim=(-2, -1), keepdim=True).to(torch.float64)
    high = v.amax(dim=(-2, -1), keepdim=True).to(torch.float64)
    constant = high <= low
    # a true division (torch's ``255.0 / tensor`` multiplies by the reciprocal: one rounding more than Python's)
    scale = torch.full_like(high, 255.0) / torch.where(constant, torch.ones_like(high), high - low)
    offset = -low * scale
    stretched = torch.trunc(v.to(torch.float64) * scale + offset).clamp_(0, 255).to(v.dtype)
    return torch.where(constant, v, stretched)


def equalize(v: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageOps.equalize`` of every channel of every image (torchvision's tensor ``equalize`` is the
    same table)."""
    n, c, h, w = v.shape
    q = v.long().view(n * c, h * w)
    hist = torch.zeros((n * c, 256), dtype=torch.long, device=v.device).scatter_add_(1, q, torch.ones_like(q))
    top = q.amax(dim=1, keepdim=True)  # the last non-empty bin
    step = (h * w - hist.gather(1, top)) // 255
    safe = step.clamp(min=1)
    lut = (hist.cumsum(1) + safe // 2) // safe
    lut = F.pad(lut, (1, 0))[:, :-1].clamp_(0, 255)
    out = torch.where(step == 0, q, lut.gather(1, q))
    return out.to(v.dtype).view(n, c, h, w)


class RandAugment(nn.Module):
    """torchvision's ``RandAugment(num_ops, magnitude, num_magnitude_bins, NEAREST, fill)`` drawn per image,
    for float ``N×C×H×W`` batches in [0, 1] (see the module doc). ``fill``: the value (or one per channel)
    given to pixels a geometric operation brings in from outside the image; None = 0."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 fill: float | list[float] | tuple[float, ...] | None = None) -> None:
        super().__init__()
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        magnitude_table(magnitude, num_magnitude_bins)  # validates the bin
        self.num_ops = int(num_ops)
        self.magnitude = int(magnitude)
        self.num_magnitude_bins = int(num_magnitude_bins)
        self.fill = fill
        self._tables: dict[tuple[int, int], tuple[dict[str, _Op], torch.Tensor]] = {}

    def extra_repr(self) -> str:
        return (f"num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={self.num_magnitude_bins}, "
                f"fill={self.fill}")

    def _table(self, h: int, w: int) -> tuple[dict[str, _Op], torch.Tensor]:
        """The magnitudes, and the inverse matrices of the geometric operations (5×2 signs ×2×3)."""
        hit = self._tables.get((h, w))
        if hit is None:
            table = magnitude_table(self.magnitude, self.num_magnitude_bins, (h, w))
            mats = [[_geometric_matrix(op, sign * table[op].magnitude, h, w) for sign in (1.0, -1.0)]
                    for op in _GEOMETRIC]
            hit = self._tables[(h, w)] = (table, torch.tensor(mats, dtype=torch.float64).view(5, 2, 2, 3))
        return hit

    def _fill(self, channels: int) -> torch.Tensor | None:
        """The fill on the 8-bit scale (``round(255 · fill)``, one per channel), or None for 0."""
        if self.fill is None:
            return None
        values = [float(self.fill)] * channels if isinstance(self.fill, int | float) else [float(v) for v in self.fill]
        if len(values) != channels:
            raise ValueError(f"fill has {len(values)} values for {channels}-channel images")
        return _to_8bit(torch.tensor(values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
            raise ValueError(f"RandAugment expects a float N x (1 or 3) x H x W batch, got {x.dtype} {tuple(x.shape)}")
        n, c, h, w = x.shape
        if n == 0 or self.num_ops == 0:
            return x
        table, mats = self._table(h, w)
        fill = self._fill(c)
        dtype, x = x.dtype, _to_8bit(x)  # the 8-bit values every operation reads and writes
        perm: torch.Tensor | None = None  # x[i] is the input's image perm[i]
        for _ in range(self.num_ops):
            ops = torch.randint(len(OPS), (n,))
            negative = torch.randint(2, (n,)).bool()  # torchvision draws a sign for signed operations only
            order = torch.argsort(ops, stable=True)
            counts = torch.bincount(ops, minlength=len(OPS)).tolist()
            ops, negative = ops[order], negative[order]
            perm = order if perm is None else perm[order]
            src = x[order.to(x.device)]
            out = torch.empty_like(src)
            signs = (1.0 - 2.0 * negative.to(torch.float32)).to(x.device)  # one copy per slot, sliced per op
            # the geometric operations are one contiguous block of the sorted batch: one gather for all
            geo_start, geo_end = sum(counts[:_GEO_FIRST]), sum(counts[:_GEO_END])
            if geo_end > geo_start:
                sel = mats[ops[geo_start:geo_end] - _GEO_FIRST, negative[geo_start:geo_end].long()]
                out[geo_start:geo_end] = warp_nearest(src[geo_start:geo_end], sel, fill)
            start = 0
            for k, count in enumerate(counts):
                end = start + count
                if count and not _GEO_FIRST <= k < _GEO_END:
                    spec = table[OPS[k]]
                    sign = signs[start:end] if spec.signed else None
                    out[start:end] = self._apply(OPS[k], src[start:end], spec.magnitude, sign)
                start = end
            x = out
        assert perm is not None
        # back to the input's order (the draws are i.i.d. per image)
        return _from_8bit(x[torch.argsort(perm).to(x.device)], dtype)

    def apply_op(self, x: torch.Tensor, op: str, negative: torch.Tensor | None = None) -> torch.Tensor:
        """Apply one operation of :data:`OPS` at this transform's magnitude to every image of ``x``;
        ``negative`` (bool per image, default all False) flips the sign of signed operations."""
        if op not in OPS:
            raise ValueError(f"unknown operation {op!r}; valid: {', '.join(OPS)}")
        n, c, h, w = x.shape
        table, mats = self._table(h, w)
        neg = torch.zeros(n, dtype=torch.bool) if negative is None else negative.to("cpu", torch.bool)
        v = _to_8bit(x)
        if op in _GEOMETRIC:
            return _from_8bit(warp_nearest(v, mats[_GEOMETRIC.index(op), neg.long()], self._fill(c)), x.dtype)
        spec = table[op]
        sign = 1.0 - 2.0 * neg.to(torch.float32) if spec.signed else None
        return _from_8bit(self._apply(op, v, spec.magnitude, sign), x.dtype)

    @staticmethod
    def _apply(op: str, x: torch.Tensor, magnitude: float, sign: torch.Tensor | None) -> torch.Tensor:
        """Operation ``op`` on the 8-bit values ``x``; signed factors are ``1 ± magnitude`` rounded once to float32,
        as Python's double ``1.0 + magnitude`` is when Pillow takes it."""
        if sign is not None:
            factor = (1.0 + magnitude * sign.to(torch.float64)).to(device=x.device, dtype=torch.float32)
            factor = factor.view(-1, 1, 1, 1)
        if op == "Identity":
            return x
        if op == "Brightness":
            return adjust_brightness(x, factor)
        if op == "Color":
            return adjust_saturation(x, factor)
        if op == "Contrast":
            return adjust_contrast(x, factor)
        if op == "Sharpness":
            return adjust_sharpness(x, factor)
        if op == "Posterize":
            return posterize(x, int(magnitude))
        if op == "Solarize":
            return solarize(x, magnitude)
        if op == "AutoContrast":
            return autocontrast(x)
        if op == "Equalize":
            return equalize(x)
        raise ValueError(f"unknown operation {op!r}")
