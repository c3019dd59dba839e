"""Tests for pemn.training.augment: shapes/dtypes, seeded reproducibility, the recipes' semantics."""

from __future__ import annotations

import pytest
import torch

from pemn.errors import DatasetError
from pemn.training.augment import AugmentParams, build_eval_transform, build_train_transform, list_recipes
from pemn.training.data import dataset_info

CIFAR = dataset_info("cifar10")
MNIST = dataset_info("mnist")


def _batch(info, n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, info.in_channels, info.image_size, info.image_size)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def _unnormalize(x: torch.Tensor, info) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return x * std + mean


def test_list_recipes() -> None:
    assert list_recipes() == ["none", "flip-crop", "flip-crop8", "convmixer", "convmixer-kornia"]


@pytest.mark.parametrize("recipe", ["none", "flip-crop", "flip-crop8", "convmixer", "convmixer-kornia"])
@pytest.mark.parametrize("info", [CIFAR, MNIST], ids=["cifar10", "mnist"])
def test_shapes_and_dtypes(recipe: str, info) -> None:
    tf = build_train_transform(recipe, info)
    x = _batch(info)
    for inp in (x, x.float() / 255, x.double() / 255):
        out = tf(inp, generator=1)
        assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
        assert torch.isfinite(out).all()
    assert torch.equal(x, _batch(info))  # input untouched
    for n in (0, 1, 3):
        assert tf(_batch(info, n=n), generator=2).shape == (n, *x.shape[1:])


@pytest.mark.parametrize("recipe", ["flip-crop", "convmixer", "convmixer-kornia"])
def test_seeded_reproducibility(recipe: str) -> None:
    tf = build_train_transform(recipe, CIFAR)
    x = _batch(CIFAR, n=32)
    a = tf(x, generator=123)
    b = tf(x, generator=123)
    assert torch.equal(a, b)
    assert not torch.equal(a, tf(x, generator=124))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    c1, c2 = tf(x, generator=g1), tf(x, generator=g2)
    assert torch.equal(c1, c2)
    assert not torch.equal(tf(x, generator=g1), c1)  # the generator advanced
    # a fresh transform object gives the same result for the same seed
    assert torch.equal(build_train_transform(recipe, CIFAR)(x, generator=123), a)


def test_seeded_call_leaves_global_rng_alone() -> None:
    tf = build_train_transform("convmixer", CIFAR)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    tf(_batch(CIFAR), generator=5)
    assert torch.equal(torch.get_rng_state(), state)


def test_global_rng_path_reproducible() -> None:
    tf = build_train_transform("convmixer", CIFAR)
    x = _batch(CIFAR)
    torch.manual_seed(3)
    a = tf(x)
    torch.manual_seed(3)
    b = tf(x)
    assert torch.equal(a, b)


def test_eval_transform_normalizes() -> None:
    for info in (CIFAR, MNIST):
        tf = build_eval_transform(info)
        x = _batch(info, n=8)
        out = tf(x)
        mean = torch.tensor(info.mean).view(1, -1, 1, 1)
        std = torch.tensor(info.std).view(1, -1, 1, 1)
        assert torch.allclose(out, (x.float() / 255 - mean) / std, atol=1e-6)
        assert torch.equal(tf(x, generator=1), out)  # deterministic
        const = mean.expand(1, -1, info.image_size, info.image_size).clone()
        assert torch.allclose(tf(const), torch.zeros_like(const), atol=1e-6)
    x = _batch(CIFAR)
    assert torch.equal(build_train_transform("none", CIFAR)(x), build_eval_transform(CIFAR)(x))


def test_flip_is_exact() -> None:
    tf = build_train_transform({"hflip": 1.0}, CIFAR)
    x = _batch(CIFAR)
    assert torch.allclose(_unnormalize(tf(x, generator=0), CIFAR), x.flip(-1).float() / 255, atol=1e-5)


def test_crop_is_a_shifted_window_of_the_padded_image() -> None:
    tf = build_train_transform({"crop_padding": 4}, CIFAR)
    x = _batch(CIFAR, n=8)
    out = _unnormalize(tf(x, generator=0), CIFAR)
    padded = torch.nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    shifts = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.allclose(out[i], padded[i, :, dy : dy + 32, dx : dx + 32], atol=1e-4)
        ]
        assert hits, f"sample {i} is not a crop of the padded image"
        shifts.add(hits[0])
    assert len(shifts) > 1  # offsets are random per image


def test_flip_crop_recipe_is_crop_plus_flip() -> None:
    tf = build_train_transform("flip-crop", CIFAR)
    x = _batch(CIFAR, n=16)
    out = _unnormalize(tf(x, generator=0), CIFAR)
    padded = torch.nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    for i in range(len(x)):
        found = any(
            torch.allclose(cand, padded[i, :, dy : dy + 32, dx : dx + 32], atol=1e-4)
            for cand in (out[i], out[i].flip(-1))
            for dy in range(9)
            for dx in range(9)
        )
        assert found


def test_convmixer_recipe_contents() -> None:
    tf = build_train_transform("convmixer", CIFAR)
    assert tf.params.hflip == 0.5 and tf.params.randaugment == (2, 12)
    assert tf.params.jitter == 0.2 and tf.params.erasing == 0.2
    names = [type(m).__name__ for m in tf._pre.modules()] + [type(m).__name__ for m in tf._post.modules()]
    for expected in ("RandomHorizontalFlip", "RandAugment", "ColorJitter", "RandomErasing"):
        assert expected in names
    gray = build_train_transform("convmixer", MNIST)
    gray_names = [type(m).__name__ for m in gray._pre.modules()]
    assert "ColorJitter" not in gray_names and "RandAugment" in gray_names
    x = _batch(MNIST, n=8)
    for seed in range(30):  # many op draws; none may need 3 channels
        assert gray(x, generator=seed).shape == x.shape


def test_convmixer_randaugment_implementations() -> None:
    """``convmixer`` runs torchvision's RandAugment per image (pemn.training.randaugment); ``convmixer-kornia``
    keeps kornia's, in 8 groups; everything else in the two recipes is the same."""
    from kornia.augmentation.auto import RandAugment as KorniaRandAugment

    from pemn.training.randaugment import RandAugment

    new, old = build_train_transform("convmixer", CIFAR), build_train_transform("convmixer-kornia", CIFAR)
    assert new.params.randaugment_impl == "torchvision" and old.params.randaugment_impl == "kornia"
    ours = [m for m in new._pre.modules() if isinstance(m, RandAugment)]
    assert len(ours) == 1 and (ours[0].num_ops, ours[0].magnitude, ours[0].num_magnitude_bins) == (2, 12, 31)
    assert not any(isinstance(m, KorniaRandAugment) for m in new._pre.modules())
    assert any(isinstance(m, KorniaRandAugment) for m in old._pre.modules())
    assert {f: getattr(new.params, f) for f in ("hflip", "jitter", "erasing", "randaugment")} == \
        {f: getattr(old.params, f) for f in ("hflip", "jitter", "erasing", "randaugment")}
    with pytest.raises(ValueError, match="randaugment_impl"):
        build_train_transform({"recipe": "convmixer", "randaugment_impl": "pil"}, CIFAR)


def test_flip_crop8_is_the_tiny_imagenet_recipe() -> None:
    from pemn.training.data import DatasetInfo

    tiny = DatasetInfo("tiny", 200, 3, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (), "64x64")
    tf = build_train_transform("flip-crop8", tiny)
    assert (tf.params.crop_padding, tf.params.hflip, tf.params.randaugment) == (8, 0.5, None)
    x = _batch(tiny, n=6)
    out = _unnormalize(tf(x, generator=0), tiny)
    padded = torch.nn.functional.pad(x.float() / 255, (8, 8, 8, 8))
    for i in range(len(x)):
        assert any(torch.allclose(cand, padded[i, :, dy:dy + 64, dx:dx + 64], atol=1e-4)
                   for cand in (out[i], out[i].flip(-1)) for dy in range(17) for dx in range(17))


def test_params_dict_and_errors() -> None:
    tf = build_train_transform({"recipe": "convmixer", "erasing": 0.0, "randaugment": [1, 5]}, CIFAR)
    assert tf.params.erasing == 0.0 and tf.params.randaugment == (1, 5) and tf.params.hflip == 0.5
    assert build_train_transform(AugmentParams(hflip=1.0), CIFAR).params.hflip == 1.0
    assert build_train_transform(None, CIFAR).params == AugmentParams()
    with pytest.raises(ValueError, match="flip-crop"):
        build_train_transform("autoaugment", CIFAR)
    with pytest.raises(ValueError, match="unknown augmentation parameter"):
        build_train_transform({"mixup": 0.8}, CIFAR)
    tf = build_train_transform("flip-crop", CIFAR)
    with pytest.raises(DatasetError):
        tf(_batch(MNIST))  # 1 channel into a 3-channel transform
    with pytest.raises(DatasetError):
        tf(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))  # wrong size
    with pytest.raises(DatasetError):
        tf(torch.zeros(2, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(TypeError):
        tf(_batch(CIFAR), generator="seed")  # type: ignore[arg-type]
