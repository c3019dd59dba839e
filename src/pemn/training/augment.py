"""Batched, seedable augmentation of image tensors on the training device (pemn's RandAugment, kornia).

A transform takes a batch ``N×C×H×W`` (``uint8`` 0..255, or float in [0, 1]) and returns a normalized
``float32`` batch of the same shape on the same device::

    tf = build_train_transform("convmixer", dataset_info("cifar10"))
    x = tf(images_uint8)                    # uses (and advances) torch's global RNG
    x = tf(images_uint8, generator=g)       # g: torch.Generator or int seed -> reproducible

With a generator or seed, the augmentation runs under :func:`torch.random.fork_rng` seeded from it, so
the same seed gives the same batch and the caller's global RNG state is left untouched.

Recipes (:func:`list_recipes`):

``none``
    normalize only.
``flip-crop``
    random 32×32 crop of the image padded by 4 zero pixels, horizontal flip (p=0.5): the classic CIFAR
    ResNet recipe.
``flip-crop8``
    random crop of the image padded by 8 zero pixels, horizontal flip (p=0.5): the official PEMN code's
    Tiny-ImageNet recipe (``RandomCrop(64, padding=8)``, ``RandomHorizontalFlip()``).
``convmixer``
    the recipe PEMN uses for ConvMixer: horizontal flip, RandAugment(n=2, m=12) as torchvision defines it,
    drawn per image (:mod:`pemn.training.randaugment`), ColorJitter(0.2, 0.2, 0.2), normalize,
    RandomErasing(p=0.2).
``convmixer-kornia``
    the same with kornia's RandAugment instead (pemn's recipe before 2026-12: another operation set, with
    Invert and SolarizeAdd and no Identity, other strengths at m=12, and one draw per group of the batch).

A dict of parameters may be passed instead of a name; ``{"recipe": "convmixer", "erasing": 0.0}``
starts from a named recipe and overrides fields. Keys: ``crop_padding`` (int, 0 = off),
``rrc_scale`` (lower bound of a square RandomResizedCrop scale, None = off), ``hflip`` (probability),
``randaugment`` ((n, m) or None), ``randaugment_impl`` (``"torchvision"``: pemn's per-image implementation
of torchvision's definition; ``"kornia"``: kornia's), ``randaugment_groups`` (int, kornia only), ``jitter``
(brightness = contrast = saturation strength), ``erasing`` (probability).

For 1-channel data there is no ColorJitter; torchvision's RandAugment keeps its 14 operations (its Color is a
no-op on one channel), kornia's draws from its default policy without the saturation ("color") op (kornia's
needs 3 channels).

Note: kornia's RandAugment picks the same ``n`` operations for the whole batch it is called on (the
magnitude signs vary per image). ``randaugment_groups`` splits the batch into that many groups, each
with its own draw. The torchvision implementation draws every image's operations independently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from pemn.training.data import DatasetInfo
from pemn.training.errors import DatasetError

__all__ = [
    "RANDAUGMENT_IMPLS",
    "RECIPES",
    "AugmentParams",
    "BatchTransform",
    "build_eval_transform",
    "build_train_transform",
    "list_recipes",
]


#: RandAugment implementations: pemn's per-image one of torchvision's definition, or kornia's.
RANDAUGMENT_IMPLS = ("torchvision", "kornia")


@dataclass(frozen=True)
class AugmentParams:
    """What a training transform does, in order: crop, flip, RandAugment, jitter, normalize, erasing."""

    crop_padding: int = 0
    rrc_scale: float | None = None
    hflip: float = 0.0
    randaugment: tuple[int, int] | None = None
    randaugment_impl: str = "torchvision"
    randaugment_groups: int = 1
    jitter: float = 0.0
    erasing: float = 0.0

    def __post_init__(self) -> None:
        if self.randaugment_impl not in RANDAUGMENT_IMPLS:
            raise ValueError(f"randaugment_impl must be one of {RANDAUGMENT_IMPLS}, got {self.randaugment_impl!r}")


RECIPES: dict[str, AugmentParams] = {
    "none": AugmentParams(),
    "flip-crop": AugmentParams(crop_padding=4, hflip=0.5),
    "flip-crop8": AugmentParams(crop_padding=8, hflip=0.5),
    "convmixer": AugmentParams(hflip=0.5, randaugment=(2, 12), jitter=0.2, erasing=0.2),
    "convmixer-kornia": AugmentParams(hflip=0.5, randaugment=(2, 12), randaugment_impl="kornia", randaugment_groups=8,
                                      jitter=0.2, erasing=0.2),
}


def list_recipes() -> list[str]:
    """Names accepted by :func:`build_train_transform`."""
    return list(RECIPES)


def _resolve_params(recipe: str | Mapping[str, Any] | AugmentParams | None) -> tuple[str, AugmentParams]:
    if recipe is None:
        return "none", RECIPES["none"]
    if isinstance(recipe, AugmentParams):
        return "custom", recipe
    if isinstance(recipe, str):
        key = recipe.strip().lower().replace("_", "-")
        if key not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}; valid names: {', '.join(RECIPES)}")
        return key, RECIPES[key]
    if isinstance(recipe, Mapping):
        overrides = dict(recipe)
        base_name = overrides.pop("recipe", "none")
        name, base = _resolve_params(str(base_name))
        known = {f.name for f in fields(AugmentParams)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown augmentation parameter(s) {unknown}; valid: {sorted(known)}")
        if overrides.get("randaugment") is not None:
            overrides["randaugment"] = tuple(int(v) for v in overrides["randaugment"])
        return (f"{name}+custom" if overrides else name), replace(base, **overrides)
    raise TypeError(f"recipe must be a name, a dict or AugmentParams, got {type(recipe).__name__}")


_GRAY_RANDAUGMENT_DROP = {"color"}


def _randaugment(n: int, m: int, channels: int, impl: str = "torchvision") -> nn.Module:
    if impl == "torchvision":
        from pemn.training.randaugment import RandAugment as TorchvisionRandAugment

        return TorchvisionRandAugment(num_ops=n, magnitude=m)
    from kornia.augmentation.auto import RandAugment

    if channels == 3:
        return RandAugment(n=n, m=m)
    from kornia.augmentation.auto.rand_augment.rand_augment import default_policy

    policy = [sub for sub in default_policy if sub[0][0] not in _GRAY_RANDAUGMENT_DROP]
    return RandAugment(n=n, m=m, policy=policy)


class _Grouped(nn.Module):
    """Apply ``module`` separately to ``groups`` contiguous slices of the batch."""

    def __init__(self, module: nn.Module, groups: int) -> None:
        super().__init__()
        self.module = module
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups <= 1 or x.shape[0] <= 1:
            return self.module(x)
        return torch.cat([self.module(chunk) for chunk in x.chunk(self.groups)], dim=0)


def _build_ops(params: AugmentParams, info: DatasetInfo) -> tuple[nn.Module | None, nn.Module | None]:
    """kornia modules applied before and after normalization (None when there are none)."""
    active = (params.crop_padding, params.rrc_scale is not None, params.hflip, params.randaugment, params.jitter)
    if not any(active) and not params.erasing:
        return None, None
    import kornia.augmentation as K

    size = (info.image_size, info.image_size)
    colour = info.in_channels == 3
    pre: list[nn.Module] = []
    if params.rrc_scale is not None:
        pre.append(K.RandomResizedCrop(size, scale=(float(params.rrc_scale), 1.0), ratio=(1.0, 1.0)))
    if params.crop_padding:
        pre.append(K.RandomCrop(size, padding=int(params.crop_padding), fill=0.0, padding_mode="constant"))
    if params.hflip:
        pre.append(K.RandomHorizontalFlip(p=float(params.hflip)))
    if params.randaugment is not None:
        n, m = params.randaugment
        ra = _randaugment(int(n), int(m), info.in_channels, params.randaugment_impl)
        pre.append(_Grouped(ra, int(params.randaugment_groups)) if params.randaugment_impl == "kornia" else ra)
    if params.jitter and colour:
        j = float(params.jitter)
        pre.append(K.ColorJitter(j, j, j, 0.0, p=1.0))
    post: list[nn.Module] = []
    if params.erasing:
        post.append(K.RandomErasing(p=float(params.erasing), value=0.0))
    return (nn.Sequential(*pre) if pre else None), (nn.Sequential(*post) if post else None)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run under a forked RNG seeded with ``seed`` (CPU and ``device``); no-op when ``seed`` is None."""
    if seed is None:
        yield
        return
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    module = getattr(torch, device.type)
    index = device.index if device.index is not None else module.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.random.default_generator.manual_seed(seed)
        with module.device(index):
            module.manual_seed(seed)
        yield


def _seed_of(generator: torch.Generator | int | None) -> int | None:
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return int(generator)


class BatchTransform:
    """``transform(batch, generator=None) -> normalized float32 batch`` (see the module doc)."""

    def __init__(self, name: str, params: AugmentParams, info: DatasetInfo) -> None:
        if len(info.mean) != info.in_channels or len(info.std) != info.in_channels:
            raise DatasetError(f"{info.name}: mean/std must have {info.in_channels} values")
        self.name = name
        self.params = params
        self.info = info
        self._pre, self._post = _build_ops(params, info)
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"BatchTransform({self.name!r}, {self.params}, dataset={self.info.name!r})"

    @property
    def is_random(self) -> bool:
        return self._pre is not None or self._post is not None

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        stats = self._stats.get(key)
        if stats is None:
            shape = (1, self.info.in_channels, 1, 1)
            mean = torch.tensor(self.info.mean, dtype=x.dtype, device=x.device).view(shape)
            std = torch.tensor(self.info.std, dtype=x.dtype, device=x.device).view(shape)
            stats = self._stats[key] = (mean, std)
        return (x - stats[0]) / stats[1]

    def to_float(self, batch: torch.Tensor) -> torch.Tensor:
        """Check the batch and return it as float32 in [0, 1] (uint8 is divided by 255)."""
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor batch, got {type(batch).__name__}")
        if batch.dim() != 4 or batch.shape[1] != self.info.in_channels:
            raise DatasetError(
                f"{self.info.name}: expected a batch N x {self.info.in_channels} x H x W, got {tuple(batch.shape)}"
            )
        size = self.info.image_size
        if self.is_random and tuple(batch.shape[-2:]) != (size, size):
            raise DatasetError(f"{self.info.name}: expected {size}x{size} images, got {tuple(batch.shape[-2:])}")
        if batch.dtype == torch.uint8:
            return batch.to(torch.float32).div_(255.0)
        if not batch.is_floating_point():
            raise DatasetError(f"expected a uint8 or float batch, got {batch.dtype}")
        return batch.to(torch.float32, copy=True)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | int | None = None) -> torch.Tensor:
        x = self.to_float(batch)
        if x.shape[0] == 0:
            return self._normalize(x)
        if not self.is_random:
            return self._normalize(x)
        with _seeded(_seed_of(generator), x.device), torch.no_grad():
            if self._pre is not None:
                x = self._pre(x)
            x = self._normalize(x)
            if self._post is not None:
                x = self._post(x)
        return x.contiguous()


def build_train_transform(
    recipe_name_or_params: str | Mapping[str, Any] | AugmentParams | None, info: DatasetInfo
) -> BatchTransform:
    """The training transform for ``info``'s data: a recipe name, a parameter dict or :class:`AugmentParams`."""
    name, params = _resolve_params(recipe_name_or_params)
    return BatchTransform(name, params, info)


def build_eval_transform(info: DatasetInfo) -> BatchTransform:
    """Normalize only (uint8 or [0, 1] float in, normalized float32 out)."""
    return BatchTransform("eval", RECIPES["none"], info)
