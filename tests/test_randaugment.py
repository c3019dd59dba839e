"""pemn.training.randaugment against torchvision's RandAugment, written out independently here.

torchvision does not install beside this torch build, so every expected value below is computed in float64
numpy from torchvision's published definitions (``transforms/autoaugment.py`` for the operation list and the
magnitude bins, ``transforms/_functional_tensor.py`` for the per-pixel formulas, ``functional.affine`` /
``rotate`` with ``_get_inverse_affine_matrix`` and nearest ``grid_sample`` at pixel centres for the geometry).
"""

from __future__ import annotations

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
# reference formulas (float64 numpy, one image C x H x W at a time)
# ---------------------------------------------------------------------------------------------------------


def ref_gray(img: np.ndarray) -> np.ndarray:
    return 0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def ref_blend(img: np.ndarray, degenerate: np.ndarray, f: float) -> np.ndarray:
    return np.clip(f * img + (1.0 - f) * degenerate, 0.0, 1.0)


def ref_brightness(img: np.ndarray, f: float) -> np.ndarray:
    return np.clip(f * img, 0.0, 1.0)


def ref_color(img: np.ndarray, f: float) -> np.ndarray:
    return img.copy() if img.shape[0] == 1 else ref_blend(img, ref_gray(img)[None], f)


def ref_contrast(img: np.ndarray, f: float) -> np.ndarray:
    mean = ref_gray(img).mean() if img.shape[0] == 3 else img.mean()
    return ref_blend(img, np.full_like(img, mean), f)


def ref_sharpness(img: np.ndarray, f: float) -> np.ndarray:
    blurred = img.copy()
    h, w = img.shape[1:]
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            blurred[:, i, j] = (img[:, i - 1:i + 2, j - 1:j + 2].sum(axis=(1, 2)) + 4 * img[:, i, j]) / 13.0
    return ref_blend(img, blurred, f)


def _u8(img: np.ndarray) -> np.ndarray:
    return np.rint(img * 255.0).astype(np.int64)


def ref_posterize(img: np.ndarray, bits: int) -> np.ndarray:
    step = 2 ** (8 - bits)
    return (_u8(img) // step * step) / 255.0


def ref_solarize(img: np.ndarray, threshold: float) -> np.ndarray:
    v = _u8(img)
    return np.where(v >= threshold, 255 - v, v) / 255.0


def ref_autocontrast(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    for ch in range(img.shape[0]):
        lo, hi = img[ch].min(), img[ch].max()
        if hi > lo:
            out[ch] = np.clip((img[ch] - lo) / (hi - lo), 0.0, 1.0)
    return out


def ref_equalize(img: np.ndarray) -> np.ndarray:
    v = _u8(img)
    out = v.copy()
    for ch in range(v.shape[0]):
        hist = np.bincount(v[ch].ravel(), minlength=256)
        nonzero = hist[hist != 0]
        step = int(nonzero[:-1].sum()) // 255
        if step == 0:
            continue
        lut = [0] + [min(255, (int(hist[:i + 1].sum()) + step // 2) // step) for i in range(255)]
        out[ch] = np.asarray(lut)[v[ch]]
    return out / 255.0


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
    out = ra.apply_op(x, op, negative).double().numpy()
    for k in range(4):
        f = 1.0 - 0.36 if negative[k] else 1.0 + 0.36
        np.testing.assert_allclose(out[k], COLOUR_REFS[op](x[k].double().numpy(), f), atol=2e-6, err_msg=op)
    assert not np.allclose(out[0], out[1]) or (op == "Color" and channels == 1)  # the sign matters


@pytest.mark.parametrize("op", ["Posterize", "Solarize", "AutoContrast", "Equalize", "Identity"])
def test_eight_bit_and_parameterless_operations(op: str) -> None:
    ra = RandAugment(2, 12)
    x = _images(3, 3, 7, 5, seed=2)
    x[2, 1] = 0.4  # a constant channel: autocontrast and equalize leave it alone
    x[1, 0, :4] = 1.0  # one dominant value: equalize's step comes from the other bins
    ref = {"Posterize": lambda im: ref_posterize(im, 6), "Solarize": lambda im: ref_solarize(im, 153.0),
           "AutoContrast": ref_autocontrast, "Equalize": ref_equalize, "Identity": lambda im: im}[op]
    out = ra.apply_op(x, op).double().numpy()
    for k in range(3):
        np.testing.assert_allclose(out[k], ref(x[k].double().numpy()), atol=1e-6, err_msg=f"{op} image {k}")


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
        expected, clear = ref_geometric(x[0].double().numpy(), op, m, fill=[0.25, 0.5, 1.0])
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
    torch.testing.assert_close(out, _replay(ra, x, 11), rtol=0, atol=1e-6)
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
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_augment

    doc = bench_augment.main(["--quick", "--device", "cpu"])
    assert doc["transforms"]["ratio_randaugment_new_over_old"] > 0
    assert doc["transforms"]["ratio_recipe_new_over_old"] > 0
    assert doc["epoch"]["ratio_epoch_new_over_old"] > 0 and doc["epoch"]["bar"] == 1.10
