"""pemn.training.randaugment against torchvision's RandAugment as the official PEMN code runs it: on PIL images.

torchvision does not install beside this torch build, so the expected values are written out here: the operation
list and the magnitude bins from torchvision's ``transforms/autoaugment.py``; the colour and 8-bit operations from
the Pillow functions torchvision calls on PIL images (``ImageEnhance`` blends, ``ImageOps``), in integer numpy on
8-bit values (every operation returns an 8-bit image, so the next one starts from its rounded result); the geometry
from ``functional.affine`` / ``rotate`` with ``_get_inverse_affine_matrix`` and nearest sampling at pixel centres.
Where Pillow is installed, every pair of operations is also checked against Pillow itself, bit for bit.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pemn.training.randaugment import OPS, RandAugment, magnitude_table

TORCHVISION_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                   "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8).float() / 255.0


# ---------------------------------------------------------------------------------------------------------
# reference operations (numpy, one image C x H x W of 8-bit values at a time; Pillow's arithmetic)
# ---------------------------------------------------------------------------------------------------------


def _u8(img: np.ndarray) -> np.ndarray:
    return np.rint(img * 255.0).astype(np.int64)


def ref_gray(v: np.ndarray) -> np.ndarray:
    """Pillow's ``convert("L")``: ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``."""
    return (19595 * v[0] + 38470 * v[1] + 7471 * v[2] + 0x8000) >> 16


def ref_blend(v: np.ndarray, degenerate: np.ndarray, f: float) -> np.ndarray:
    """Pillow's ``Image.blend(degenerate, image, f)``: ``d + f (v - d)`` in float32, truncated, clipped."""
    f32 = np.float32(f)
    d = np.broadcast_to(degenerate, v.shape).astype(np.float32)
    out = d + f32 * (v.astype(np.float32) - d)
    return np.clip(np.floor(out), 0, 255).astype(np.int64)


def ref_brightness(v: np.ndarray, f: float) -> np.ndarray:
    return ref_blend(v, np.zeros_like(v), f)


def ref_color(v: np.ndarray, f: float) -> np.ndarray:
    return v.copy() if v.shape[0] == 1 else ref_blend(v, ref_gray(v)[None], f)


def ref_contrast(v: np.ndarray, f: float) -> np.ndarray:
    gray = ref_gray(v) if v.shape[0] == 3 else v[0]
    return ref_blend(v, np.full_like(v, int(gray.mean() + 0.5)), f)


def ref_sharpness(v: np.ndarray, f: float) -> np.ndarray:
    smooth = v.copy()
    h, w = v.shape[1:]
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            total = v[:, i - 1:i + 2, j - 1:j + 2].sum(axis=(1, 2)) + 4 * v[:, i, j]
            smooth[:, i, j] = (total + 6) // 13  # Pillow's SMOOTH filter, rounded
    return ref_blend(v, smooth, f)


def ref_posterize(v: np.ndarray, bits: int) -> np.ndarray:
    step = 2 ** (8 - bits)
    return v // step * step


def ref_solarize(v: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(v >= threshold, 255 - v, v)


def ref_autocontrast(v: np.ndarray) -> np.ndarray:
    out = v.copy()
    for ch in range(v.shape[0]):
        lo, hi = int(v[ch].min()), int(v[ch].max())
        if hi > lo:
            scale = 255.0 / (hi - lo)
            lut = [min(255, max(0, int(i * scale + -lo * scale))) for i in range(256)]
            out[ch] = np.asarray(lut)[v[ch]]
    return out


def ref_equalize(v: np.ndarray) -> np.ndarray:
    out = v.copy()
    for ch in range(v.shape[0]):
        hist = np.bincount(v[ch].ravel(), minlength=256)
        nonzero = hist[hist != 0]
        step = int(nonzero[:-1].sum()) // 255
        if step == 0:
            continue
        lut = [0] + [min(255, (int(hist[:i + 1].sum()) + step // 2) // step) for i in range(255)]
        out[ch] = np.asarray(lut)[v[ch]]
    return out


def ref_geometric(img: np.ndarray, op: str, m: float, fill: float | list[float] = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Output, and a mask of the pixels whose source coordinate is not within 1e-3 of a rounding tie.

    Output pixel (i, j) (centre at j + 0.5, i + 0.5) reads input pixel rint(col), rint(row):
    ShearX (about the top-left corner, slope m): col = j + m (i + 0.5), row = i;
    ShearY: col = j, row = i + m (j + 0.5); TranslateX by t = int(m): col = j - t; TranslateY: row = i - t;
    Rotate by m degrees counter-clockwise about the centre: with x = j + 0.5 - W/2, y = i + 0.5 - H/2,
    col = cos(m) x - sin(m) y + W/2 - 0.5, row = sin(m) x + cos(m) y + H/2 - 0.5.
    """
    c, h, w = img.shape
    out = np.empty_like(img)
    clear = np.ones((h, w), dtype=bool)
    fills = np.broadcast_to(np.asarray(fill, dtype=np.float64), (c,))
    t = math.radians(m)
    for i in range(h):
        for j in range(w):
            col, row = float(j), float(i)
            if op == "ShearX":
                col = j + m * (i + 0.5)
            elif op == "ShearY":
                row = i + m * (j + 0.5)
            elif op == "TranslateX":
                col = j - int(m)
            elif op == "TranslateY":
                row = i - int(m)
            elif op == "Rotate":
                x, y = j + 0.5 - w / 2, i + 0.5 - h / 2
                col = math.cos(t) * x - math.sin(t) * y + w / 2 - 0.5
                row = math.sin(t) * x + math.cos(t) * y + h / 2 - 0.5
            clear[i, j] = min(abs(col % 1 - 0.5), abs(row % 1 - 0.5)) > 1e-3
            ci, ri = int(np.rint(col)), int(np.rint(row))
            out[:, i, j] = img[:, ri, ci] if 0 <= ci < w and 0 <= ri < h else fills
    return out, clear


# ---------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------


def test_operation_list_is_torchvisions() -> None:
    assert OPS == TORCHVISION_OPS and len(OPS) == 14
    assert "Invert" not in OPS and "SolarizeAdd" not in OPS


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("magnitude", [0, 9, 12, 30])
def test_magnitude_bins(size: int, magnitude: int) -> None:
    table = magnitude_table(magnitude, 31, (size, size))
    frac = magnitude / 30
    expected = {"ShearX": 0.3 * frac, "ShearY": 0.3 * frac, "TranslateX": 150 / 331 * size * frac,
                "TranslateY": 150 / 331 * size * frac, "Rotate": 30 * frac, "Brightness": 0.9 * frac,
                "Color": 0.9 * frac, "Contrast": 0.9 * frac, "Sharpness": 0.9 * frac,
                "Posterize": 8 - round(magnitude / 7.5), "Solarize": 255 - 255 * frac}
    for op, value in expected.items():
        assert table[op].magnitude == pytest.approx(value, rel=1e-6, abs=1e-5), op
        assert table[op].signed == (op not in ("Posterize", "Solarize")), op
    for op in ("Identity", "AutoContrast", "Equalize"):
        assert table[op].magnitude == 0.0 and not table[op].signed


def test_magnitude_12_is_the_paper_recipe() -> None:
    """The strengths the issue lists for RandAugment(2, 12): shear 0.12, translate 5 px on 32x32 (11 on 64x64),
    factors 1 +- 0.36, posterize 6 bits, solarize threshold 153 (0.60)."""
    t32, t64 = magnitude_table(12, 31, (32, 32)), magnitude_table(12, 31, (64, 64))
    assert t32["ShearX"].magnitude == pytest.approx(0.12)
    assert int(t32["TranslateX"].magnitude) == 5 and int(-t32["TranslateX"].magnitude) == -5
    assert int(t64["TranslateY"].magnitude) == 11
    assert t32["Brightness"].magnitude == pytest.approx(0.36)
    assert t32["Posterize"].magnitude == 6 and t32["Solarize"].magnitude == 153.0
    with pytest.raises(ValueError, match="magnitude"):
        magnitude_table(31, 31)


COLOUR_REFS = {"Brightness": ref_brightness, "Color": ref_color, "Contrast": ref_contrast,
               "Sharpness": ref_sharpness}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("op", list(COLOUR_REFS))
def test_colour_operations(op: str, channels: int) -> None:
    ra = RandAugment(2, 12)
    x = _images(4, channels, 5, 6, seed=1)
    negative = torch.tensor([False, True, False, True])
    out = _u8(ra.apply_op(x, op, negative).double().numpy())
    magnitude = magnitude_table(12, 31, (5, 6))[op].magnitude
    for k in range(4):
        f = 1.0 - magnitude if negative[k] else 1.0 + magnitude
        np.testing.assert_array_equal(out[k], COLOUR_REFS[op](_u8(x[k].double().numpy()), f), err_msg=op)
    assert not np.array_equal(out[0], out[1]) or (op == "Color" and channels == 1)  # the sign matters


@pytest.mark.parametrize("op", ["Posterize", "Solarize", "AutoContrast", "Equalize", "Identity"])
def test_eight_bit_and_parameterless_operations(op: str) -> None:
    ra = RandAugment(2, 12)
    x = _images(3, 3, 7, 5, seed=2)
    x[2, 1] = 0.4  # a constant channel: autocontrast and equalize leave it alone
    x[1, 0, :4] = 1.0  # one dominant value: equalize's step comes from the other bins
    ref = {"Posterize": lambda im: ref_posterize(im, 6), "Solarize": lambda im: ref_solarize(im, 153.0),
           "AutoContrast": ref_autocontrast, "Equalize": ref_equalize, "Identity": lambda im: im}[op]
    out = _u8(ra.apply_op(x, op).double().numpy())
    for k in range(3):
        np.testing.assert_array_equal(out[k], ref(_u8(x[k].double().numpy())), err_msg=f"{op} image {k}")


_EIGHT_BIT_OPS = ("Identity", "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast",
                  "Equalize")


def _ref_op(op: str, v: np.ndarray, negative: bool, size: tuple[int, int]) -> np.ndarray:
    spec = magnitude_table(12, 31, size)[op]
    f = 1.0 + (-spec.magnitude if negative else spec.magnitude)
    return {"Identity": lambda: v, "Brightness": lambda: ref_brightness(v, f), "Color": lambda: ref_color(v, f),
            "Contrast": lambda: ref_contrast(v, f), "Sharpness": lambda: ref_sharpness(v, f),
            "Posterize": lambda: ref_posterize(v, int(spec.magnitude)),
            "Solarize": lambda: ref_solarize(v, spec.magnitude), "AutoContrast": lambda: ref_autocontrast(v),
            "Equalize": lambda: ref_equalize(v)}[op]()


@pytest.mark.parametrize(("first", "second"), list(itertools.product(_EIGHT_BIT_OPS, repeat=2)))
def test_the_second_operation_reads_the_first_ones_8bit_result(first: str, second: str) -> None:
    """Issue 21 item 16: as in the official PIL pipeline, every operation returns 8-bit values, so the second of a
    draw reads the first one's rounded result (floats kept between them made 2 % of pixels differ by more than
    one level over these pairs, a quarter of them for Brightness then Equalize)."""
    ra = RandAugment(2, 12)
    x = _images(4, 3, 12, 12, seed=8)
    negative = torch.tensor([False, True, False, True])
    out = _u8(ra.apply_op(ra.apply_op(x, first, negative), second, negative).double().numpy())
    for k in range(4):
        v = _u8(x[k].double().numpy())
        expected = _ref_op(second, _ref_op(first, v, bool(negative[k]), (12, 12)), bool(negative[k]), (12, 12))
        np.testing.assert_array_equal(out[k], expected, err_msg=f"{first} then {second}, image {k}")


@pytest.mark.parametrize("channels", [3, 1])
def test_every_pair_of_operations_equals_pillow(channels: int) -> None:
    """Every pair of the colour and 8-bit operations, bit for bit, against Pillow's own functions as torchvision
    applies them to PIL images (ImageEnhance.Brightness / Color / Contrast / Sharpness, ImageOps.posterize /
    solarize / autocontrast / equalize)."""
    Image = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    def pil(img: object, op: str, signed: float, magnitude: float) -> object:
        enhance = {"Brightness": ImageEnhance.Brightness, "Color": ImageEnhance.Color,
                   "Contrast": ImageEnhance.Contrast, "Sharpness": ImageEnhance.Sharpness}
        if op in enhance:
            return enhance[op](img).enhance(1.0 + signed)
        return {"Identity": lambda: img, "Posterize": lambda: ImageOps.posterize(img, int(magnitude)),
                "Solarize": lambda: ImageOps.solarize(img, magnitude),
                "AutoContrast": lambda: ImageOps.autocontrast(img), "Equalize": lambda: ImageOps.equalize(img)}[op]()

    n, size = 8, (16, 16)
    ra, table = RandAugment(2, 12), magnitude_table(12, 31, size)
    x = _images(n, channels, *size, seed=9)
    negative = torch.arange(n) % 2 == 1
    pixels = _u8(x.double().numpy()).astype(np.uint8).transpose(0, 2, 3, 1)
    for first, second in itertools.product(_EIGHT_BIT_OPS, repeat=2):
        out = _u8(ra.apply_op(ra.apply_op(x, first, negative), second, negative).double().numpy())
        for k in range(n):
            img = Image.fromarray(pixels[k][..., 0] if channels == 1 else pixels[k])
            for op in (first, second):
                sign = -1.0 if negative[k] and table[op].signed else 1.0
                img = pil(img, op, sign * table[op].magnitude, table[op].magnitude)
            expected = np.asarray(img, dtype=np.int64).reshape(size[0], size[1], channels).transpose(2, 0, 1)
            np.testing.assert_array_equal(out[k], expected, err_msg=f"{first} then {second}, image {k}")


def test_equalize_pinned_values() -> None:
    """A 1x1x4x4 image worked by hand: values 0 (x4), 10 (x4), 20 (x4), 30 (x4); step = 12 // 255 = 0 ->
    unchanged; with 4080 pixels in the other bins the LUT spreads them."""
    img = torch.tensor([0, 10, 20, 30] * 4, dtype=torch.float32).view(1, 1, 4, 4) / 255
    assert torch.equal(RandAugment(1, 0).apply_op(img, "Equalize"), img)
    big = torch.zeros(1, 1, 64, 64)
    big.view(-1)[:2048] = 10 / 255
    big.view(-1)[2048:] = 200 / 255
    out = RandAugment(1, 0).apply_op(big, "Equalize")
    # step = 2048 // 255 = 8; lut[10] = 0 (shifted cumsum of bins < 10 is 0), lut[200] = (2048 + 4) // 8 = 256 -> 255
    assert set(torch.round(out * 255).unique().tolist()) == {0.0, 255.0}


@pytest.mark.parametrize("size", [(6, 8), (32, 32), (64, 64)])
@pytest.mark.parametrize("op", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_geometric_operations(op: str, size: tuple[int, int]) -> None:
    h, w = size
    ra = RandAugment(2, 12)
    x = _images(2, 3, h, w, seed=3)
    negative = torch.tensor([False, True])
    out = ra.apply_op(x, op, negative).double().numpy()
    m = magnitude_table(12, 31, (h, w))[op].magnitude
    for k in range(2):
        expected, clear = ref_geometric(x[k].double().numpy(), op, -m if negative[k] else m)
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(out[k][:, clear], expected[:, clear], err_msg=f"{op} {size} image {k}")
        if op.startswith("Translate"):  # integer shifts have no ties: every pixel, and the border is black
            np.testing.assert_array_equal(out[k], expected)
            assert (out[k] == 0).any()


def test_geometric_fill() -> None:
    ra = RandAugment(2, 30, fill=[0.25, 0.5, 1.0])
    x = _images(1, 3, 8, 8, seed=4)
    for op in ("TranslateX", "Rotate", "ShearY"):
        m = magnitude_table(30, 31, (8, 8))[op].magnitude
        # the fill is an 8-bit value too (a PIL image's fillcolor): 0.25 -> 64 / 255
        expected, clear = ref_geometric(x[0].double().numpy(), op, m, fill=[64 / 255, 128 / 255, 1.0])
        out = ra.apply_op(x, op).double().numpy()[0]
        np.testing.assert_allclose(out[:, clear], expected[:, clear], atol=1e-7, err_msg=op)
    with pytest.raises(ValueError, match="fill"):
        RandAugment(2, 12, fill=[0.1, 0.2]).apply_op(x, "Rotate")


def _replay(ra: RandAugment, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The forward pass rebuilt image by image from the same draws: slot s draws (op, sign) for every position
    of the batch as the previous slot left it sorted (stable) by operation."""
    torch.manual_seed(seed)
    images = list(x)
    order = list(range(len(images)))
    for _ in range(ra.num_ops):
        ops = torch.randint(len(OPS), (len(images),)).tolist()
        negs = torch.randint(2, (len(images),)).tolist()
        sorted_pos = sorted(range(len(images)), key=lambda p: ops[p])
        for p in range(len(images)):
            idx = order[p]
            images[idx] = ra.apply_op(images[idx][None], OPS[ops[p]], torch.tensor([bool(negs[p])]))[0]
        order = [order[p] for p in sorted_pos]
    return torch.stack(images)


@pytest.mark.parametrize("channels", [3, 1])
def test_forward_draws_per_image(channels: int) -> None:
    ra = RandAugment(2, 12)
    x = _images(40, channels, 8, 8, seed=5)
    torch.manual_seed(11)
    out = ra(x)
    assert torch.equal(out, _replay(ra, x, 11))
    torch.manual_seed(11)
    assert torch.equal(ra(x), out)  # seeded: reproducible


def test_every_operation_is_drawn_about_equally() -> None:
    torch.manual_seed(0)
    ops = []
    ra = RandAugment(1, 12)
    for _ in range(3):
        ops += torch.randint(len(OPS), (2000,)).tolist()
    counts = np.bincount(ops, minlength=14)
    assert counts.min() > 6000 / 14 * 0.8  # sanity of the draw the forward pass uses
    # on a batch of one repeated image, different images get different operations
    x = _images(1, 3, 16, 16, seed=6).expand(256, -1, -1, -1).contiguous()
    torch.manual_seed(1)
    out = ra(x)
    distinct = {tuple(torch.round(o * 255).flatten()[:64].tolist()) for o in out}
    assert len(distinct) >= 12


def test_input_checks_and_edge_cases() -> None:
    ra = RandAugment(2, 12)
    with pytest.raises(ValueError, match="float"):
        ra(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="N x"):
        ra(torch.zeros(2, 2, 8, 8))
    assert ra(torch.zeros(0, 3, 8, 8)).shape == (0, 3, 8, 8)
    assert torch.equal(RandAugment(0, 12)(_images(2, 3, 4, 4)), _images(2, 3, 4, 4))
    with pytest.raises(ValueError, match="unknown operation"):
        ra.apply_op(_images(1, 3, 4, 4), "Invert")
    out = ra(_images(64, 3, 8, 8))
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_draws_on_gpu() -> None:
    ra = RandAugment(2, 12)
    x = _images(64, 3, 32, 32, seed=7)
    torch.manual_seed(3)
    cpu = ra(x)
    torch.manual_seed(3)
    gpu = ra(x.cuda()).cpu()
    assert (cpu - gpu).abs().max() < 1e-5 or (cpu != gpu).float().mean() < 0.01


@pytest.mark.slow
def test_bench_augment_smoke() -> None:
    """benchmarks/bench_augment.py at toy size reports the ratios BENCHMARKS.md quotes (not a measurement)."""
    from conftest import load_script

    load_script("benchmarks/_common.py", "_common")  # bench_augment's sibling import
    bench_augment = load_script("benchmarks/bench_augment.py")

    doc = bench_augment.main(["--quick", "--device", "cpu"])
    assert doc["transforms"]["ratio_randaugment_new_over_old"] > 0
    assert doc["transforms"]["ratio_recipe_new_over_old"] > 0
    assert doc["epoch"]["ratio_epoch_new_over_old"] > 0 and doc["epoch"]["bar"] == 1.10
