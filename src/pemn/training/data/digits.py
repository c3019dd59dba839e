"""``digits``: scikit-learn's bundled 8×8 digits (1797 images, no files needed).

Pixel values 0..16 are scaled to 0..255 (``round(v * 255 / 16)``). The train/test split is fixed and
deterministic: the indices are permuted with ``numpy.random.default_rng(0).permutation(1797)``; the first 1438
(80 %) are ``train``, the remaining 359 are ``test``.
"""

from __future__ import annotations

import numpy as np
import torch

from pemn.training.data.catalog import (
    DatasetEntry,
    DatasetInfo,
    PathArg,
    Tensors,
    cached,
    check_native_size,
    fixed_info,
    register_dataset,
)
from pemn.training.errors import DatasetError

INFO = DatasetInfo(
    name="digits",
    num_classes=10,
    in_channels=1,
    image_size=8,
    mean=(0.3055,),
    std=(0.3759,),
    files=(),
    description="scikit-learn's bundled 8x8 handwritten digits (1797 images; fixed seeded 80/20 split)",
    url="",
)


def _load_digits(split: str) -> Tensors:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError("digits needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255)
    images = images.astype(np.uint8)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(images))
    n_test = len(images) // 5
    idx = perm[: len(images) - n_test] if split == "train" else perm[len(images) - n_test :]
    return torch.from_numpy(np.ascontiguousarray(images[idx])), torch.from_numpy(labels[idx].copy())


def load(data_dir: PathArg, split: str, *, download: bool, base_url: str | None, image_size: int | None) -> Tensors:
    check_native_size(INFO, image_size)
    return cached(("digits", split), lambda: _load_digits(split))


register_dataset(DatasetEntry("digits", fixed_info(INFO), load, class_names=lambda _: [str(i) for i in range(10)]))
