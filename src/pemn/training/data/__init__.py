"""Datasets as in-memory tensors, read from the official file formats.

Every loader returns ``(images, labels)``: ``images`` is a ``uint8`` tensor of shape ``N×C×H×W``
and ``labels`` an ``int64`` tensor of shape ``N``. No torch ``DataLoader`` is involved; batching and
augmentation (see :mod:`pemn.training.augment`) work on these tensors directly.

Supported datasets (see :func:`list_datasets`):

``digits``
    scikit-learn's bundled 8×8 digits (1797 images, no files needed). Pixel values 0..16 are scaled
    to 0..255 (``round(v * 255 / 16)``). The train/test split is fixed and deterministic: the
    indices are permuted with ``numpy.random.default_rng(0).permutation(1797)``; the first 1438
    (80 %) are ``train``, the remaining 359 are ``test``.
``mnist`` / ``fashion-mnist``
    The official IDX files (gzipped or not) in ``data_dir``, ``data_dir/mnist/`` or
    ``data_dir/MNIST/raw/`` (``fashion-mnist/``, ``FashionMNIST/raw/`` for Fashion-MNIST). The IDX
    header is validated against the real byte count before anything is allocated.
``cifar10`` / ``cifar100``
    The official "python version" pickles (``cifar-10-batches-py/``, ``cifar-100-python/``); ``data_dir``
    may be the parent folder or the folder itself. They are read with a restricted unpickler that
    only admits numpy array reconstruction and plain containers.
``text``
    ``data_dir/input.txt`` (UTF-8) for character-level language models; read by
    :func:`pemn.training.text.load_text` (:func:`dataset_info` gives its vocabulary size as ``num_classes``).
``tiny-imagenet``
    Tiny-ImageNet (200 classes, 64×64 RGB, 100,000 train / 10,000 val images) in its official
    ``tiny-imagenet-200`` layout: ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` with
    ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box...``); ``data_dir`` may be the parent folder or the
    folder itself. Class ``i`` is the ``i``-th wnid in sorted order (torchvision ``ImageFolder``'s order of
    ``train/``). The ``test`` split is the labelled ``val/`` set (the official test images have no labels), as
    in the PEMN paper. Decoding all JPEGs takes a while (Pillow); the arrays are cached in-process.
``imagefolder``
    ``data_dir/train/<class>/*.png|jpg|jpeg`` and ``data_dir/test/`` (or ``data_dir/val/``); classes are
    the sorted sub folder names of ``train/``. Images are converted to RGB and resized to
    ``image_size`` (default 64). Needs Pillow.

``data_dir=None`` means ``$PEMN_DATA_DIR`` or, if that is unset, ``./data``.

``download=True`` fetches missing files from the official mirrors (or ``base_url``), checks their MD5
against :data:`CHECKSUMS`, writes them atomically and extracts tar archives safely. Decoded arrays are
cached in this process only (keyed by the files' path, size and mtime); nothing but downloads is ever
written to disk. Every problem raises :class:`pemn.errors.DatasetError`. Zip archives (Tiny-ImageNet) are
extracted with the same refusals (absolute paths, ``..``, links).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from pemn.training.errors import DatasetError

__all__ = [
    "CHECKSUMS",
    "DOWNLOAD_URLS",
    "DatasetInfo",
    "class_names",
    "clear_cache",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "preprocessing",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    ``mean``/``std`` are per channel, for pixel values scaled to [0, 1] (train split). ``files`` are the
    files the loader expects, relative to the dataset folder. ``url`` is where the official files live.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: tuple[str, ...]
    description: str
    url: str = ""


_DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "tiny-imagenet", "imagefolder", "text")
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
    "tinyimagenet": "tiny-imagenet",
    "tiny_imagenet": "tiny-imagenet",
    "tiny-imagenet-200": "tiny-imagenet",
    "tiny": "tiny-imagenet",
    "image-folder": "imagefolder",
    "image_folder": "imagefolder",
}
_SPLITS = ("train", "test")

_IDX_BASENAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_FILES = tuple(f"{b}.gz" for pair in _IDX_BASENAMES.values() for b in pair)

_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "tar": "cifar-10-python.tar.gz",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "label_key": "labels",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "tar": "cifar-100-python.tar.gz",
        "train": ("train",),
        "test": ("test",),
        "label_key": "fine_labels",
        "classes": 100,
    },
}

#: Default mirrors; a file's URL is ``base_url + file_name``.
DOWNLOAD_URLS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
    "tiny-imagenet": "http://cs231n.stanford.edu/",
}

#: MD5 of every downloadable file (the values torchvision hard-codes), per dataset.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    "tiny-imagenet": {"tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de"},
}

_TINY = {"folder": "tiny-imagenet-200", "zip": "tiny-imagenet-200.zip", "classes": 200, "size": 64}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_DEFAULT_IMAGEFOLDER_SIZE = 64

_STATIC_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=8,
        mean=(0.3055,),
        std=(0.3759,),
        files=(),
        description="scikit-learn's bundled 8x8 handwritten digits (1797 images; fixed seeded 80/20 split)",
        url="",
    ),
    "mnist": DatasetInfo(
        name="mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(0.1307,),
        std=(0.3081,),
        files=_IDX_FILES,
        description="MNIST handwritten digits, 28x28 grayscale, 60000 train / 10000 test (IDX files)",
        url=DOWNLOAD_URLS["mnist"],
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        files=_IDX_FILES,
        description="Fashion-MNIST clothing images, 28x28 grayscale, 60000 train / 10000 test (IDX files)",
        url=DOWNLOAD_URLS["fashion-mnist"],
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),  # the official PEMN (and ConvMixer) code's constants
        std=(0.2471, 0.2435, 0.2616),
        files=tuple(f"cifar-10-batches-py/{f}" for f in (*_CIFAR["cifar10"]["train"], "test_batch")),
        description="CIFAR-10, 32x32 RGB, 10 classes, 50000 train / 10000 test (python version)",
        url=DOWNLOAD_URLS["cifar10"] + "cifar-10-python.tar.gz",
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        in_channels=3,
        image_size=32,
        mean=(0.5071, 0.4867, 0.4408),  # the official PEMN code's constants
        std=(0.2675, 0.2565, 0.2761),
        files=("cifar-100-python/train", "cifar-100-python/test"),
        description="CIFAR-100, 32x32 RGB, 100 fine classes, 50000 train / 10000 test (python version)",
        url=DOWNLOAD_URLS["cifar100"] + "cifar-100-python.tar.gz",
    ),
    "tiny-imagenet": DatasetInfo(
        name="tiny-imagenet",
        num_classes=200,
        in_channels=3,
        image_size=64,
        mean=_IMAGENET_MEAN,  # as the official PEMN code normalizes Tiny-ImageNet
        std=_IMAGENET_STD,
        files=("tiny-imagenet-200/wnids.txt", "tiny-imagenet-200/train/<wnid>/images/*.JPEG",
               "tiny-imagenet-200/val/images/*.JPEG", "tiny-imagenet-200/val/val_annotations.txt"),
        description="Tiny-ImageNet, 64x64 RGB, 200 classes, 100000 train / 10000 val (the test split; official "
        "tiny-imagenet-200 layout)",
        url=DOWNLOAD_URLS["tiny-imagenet"] + "tiny-imagenet-200.zip",
    ),
}

_CACHE: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def list_datasets() -> list[str]:
    """Names accepted by :func:`dataset_info` and :func:`load_dataset`."""
    return list(_DATASET_NAMES)


def clear_cache() -> None:
    """Forget the decoded arrays cached in this process."""
    _CACHE.clear()


def dataset_info(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, image_size: int | None = None
) -> DatasetInfo:
    """Static facts about ``name``.

    ``data_dir`` is only consulted for ``imagefolder`` (the classes are its ``train/`` sub folders);
    ``image_size`` only changes ``imagefolder`` (default 64) and must otherwise match the native size.
    """
    key = _canonical_name(name)
    if key == "text":
        return _text_info(data_dir)
    if key == "imagefolder":
        size = _imagefolder_size(image_size)
        if data_dir is None:
            raise DatasetError(
                "imagefolder: dataset_info needs data_dir (the folder holding train/<class>/ sub folders)"
            )
        root = Path(data_dir)
        classes = _imagefolder_classes(root)
        return DatasetInfo(
            name="imagefolder",
            num_classes=len(classes),
            in_channels=3,
            image_size=size,
            mean=_IMAGENET_MEAN,
            std=_IMAGENET_STD,
            files=("train/<class>/*.png|jpg|jpeg", "test/<class>/*.png|jpg|jpeg (or val/)"),
            description=f"class-per-folder RGB images from {root} ({len(classes)} classes), "
            f"resized to {size}x{size}; ImageNet mean/std",
        )
    info = _STATIC_INFO[key]
    _check_native_size(info, image_size)
    return info


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: str = "train",
    download: bool = False,
    base_url: str | None = None,
    image_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a dataset as ``(images uint8 N×C×H×W, labels int64 N)``.

    ``download=True`` fetches missing official files into ``data_dir`` (``base_url`` overrides the
    mirror). The returned tensors are fresh copies; the decoded data is cached in-process.
    """
    key = _canonical_name(name)
    if key == "text":
        raise DatasetError("text: a character-level corpus, not images and labels; read it with "
                           "pemn.training.text.load_text(data_dir, block_size)")
    if split not in _SPLITS:
        raise DatasetError(f"{key}: unknown split {split!r}; use one of {', '.join(_SPLITS)}")
    if key == "digits":
        _check_native_size(_STATIC_INFO[key], image_size)
        images, labels = _cached(("digits", split), lambda: _load_digits(split))
    elif key in ("mnist", "fashion-mnist"):
        _check_native_size(_STATIC_INFO[key], image_size)
        root = _resolve_root(data_dir)
        paths = _locate_idx(key, root, split, download=download, base_url=base_url)
        images, labels = _cached((key, split, *_fingerprint(paths)), lambda: _load_idx_pair(paths[0], paths[1], key))
    elif key in _CIFAR:
        _check_native_size(_STATIC_INFO[key], image_size)
        root = _resolve_root(data_dir)
        paths = _locate_cifar(key, root, split, download=download, base_url=base_url)
        images, labels = _cached((key, split, *_fingerprint(paths)), lambda: _load_cifar(key, paths))
    elif key == "tiny-imagenet":
        _check_native_size(_STATIC_INFO[key], image_size)
        folder = _locate_tiny(_resolve_root(data_dir), download=download, base_url=base_url)
        tiny_files = _tiny_files(folder, split)
        images, labels = _cached(("tiny-imagenet", split, *_fingerprint([p for p, _ in tiny_files])),
                                 lambda: _load_imagefolder(tiny_files, _TINY["size"]))
    else:  # imagefolder
        size = _imagefolder_size(image_size)
        if download:
            raise DatasetError("imagefolder: there is nothing to download; put your images in data_dir")
        root = _resolve_root(data_dir)
        classes = _imagefolder_classes(root)
        split_dir = _imagefolder_split_dir(root, split)
        files = _imagefolder_files(split_dir, classes)
        images, labels = _cached(
            ("imagefolder", split, size, tuple(classes), *_fingerprint([p for p, _ in files])),
            lambda: _load_imagefolder(files, size),
        )
    return images.clone(), labels.clone()


# --------------------------------------------------------------------------------------------------
# helpers: names, paths, cache
# --------------------------------------------------------------------------------------------------


_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: CIFAR-100's fine labels, in label order
_CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)


def class_names(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[str] | None:
    """The name of each label, in label order (``imagefolder`` and ``tiny-imagenet`` read them from
    ``data_dir``); None where they cannot be known."""
    key = _canonical_name(name)
    fixed = {"digits": tuple(map(str, range(10))), "mnist": tuple(map(str, range(10))),
             "fashion-mnist": _FASHION_CLASSES, "cifar10": _CIFAR10_CLASSES, "cifar100": _CIFAR100_CLASSES}
    if key in fixed:
        return list(fixed[key])
    try:
        if key == "imagefolder" and data_dir is not None:
            return _imagefolder_classes(_resolve_root(data_dir))
        if key == "tiny-imagenet":
            root = _resolve_root(data_dir)
            folder = next((f for f in (root, root / _TINY["folder"]) if (f / "wnids.txt").is_file()), None)
            return _tiny_wnids(folder) if folder is not None else None
    except DatasetError:
        return None
    return None


def preprocessing(info: DatasetInfo, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Exactly how pemn turns this dataset's images into the model's input, as JSON-ready data (what an exported
    model needs to be used elsewhere): ``x = (pixels * scale - mean) / std`` per channel on uint8 ``pixels``
    (digits: sklearn's 0..16 values, first mapped to uint8 as ``round(v * 255 / 16)``), NCHW float32 of
    ``input_shape``, and the label names."""
    doc: dict[str, Any] = {
        "dataset": info.name,
        "input_shape": [info.in_channels, info.image_size, info.image_size],
        "layout": "NCHW", "dtype": "float32",
        "pixels": "uint8, 0..255",
        "scale": 1 / 255, "mean": list(info.mean), "std": list(info.std),
        "formula": "x = (pixels * scale - mean) / std, per channel",
    }
    if info.name == "digits":
        doc["pixels"] = ("uint8 = round(v * 255 / 16) of scikit-learn's load_digits values v (0..16), "
                         "i.e. x = (round(v * 255 / 16) / 255 - mean) / std")
    if info.name == "imagefolder":
        doc["resize"] = f"RGB, resized to {info.image_size}x{info.image_size} (bilinear) before scaling"
    names = class_names(info.name, data_dir)
    doc["classes"] = names if names is not None and len(names) == info.num_classes else None
    doc["num_classes"] = info.num_classes
    return doc


def _text_info(data_dir: str | os.PathLike[str] | None) -> DatasetInfo:
    """The ``text`` dataset (:mod:`pemn.training.text`): ``num_classes`` is the vocabulary size of the file."""
    from pemn.training.text import TEXT_FILE, read_text

    path, text = read_text(data_dir)
    vocab = len(set(text))
    return DatasetInfo(
        name="text",
        num_classes=vocab,
        in_channels=1,
        image_size=1,
        mean=(),
        std=(),
        files=(TEXT_FILE,),
        description=f"character-level text from {path} ({len(text):,} characters, {vocab} distinct; first 90 % "
        "train, last 10 % validation)",
    )


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(_DATASET_NAMES)}")
    return key


def _check_native_size(info: DatasetInfo, image_size: int | None) -> None:
    if image_size is not None and int(image_size) != info.image_size:
        raise DatasetError(
            f"{info.name}: images are {info.image_size}x{info.image_size}; image_size={image_size} is only "
            "supported for imagefolder"
        )


def _imagefolder_size(image_size: int | None) -> int:
    size = _DEFAULT_IMAGEFOLDER_SIZE if image_size is None else int(image_size)
    if size < 1:
        raise DatasetError(f"imagefolder: image_size must be positive, got {image_size}")
    return size


def _resolve_root(data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        data_dir = os.environ.get("PEMN_DATA_DIR") or "data"
    return Path(data_dir).expanduser()


def _fingerprint(paths: list[Path] | tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError as exc:
            raise DatasetError(f"cannot read {p}: {exc}") from exc
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _cached(
    key: tuple[Any, ...], load: Callable[[], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    hit = _CACHE.get(key)
    if hit is None:
        hit = load()
        _CACHE[key] = hit
    return hit


def _missing_error(name: str, expected: list[str], searched: list[Path], missing: list[str]) -> DatasetError:
    info = _STATIC_INFO[name]
    dirs = ", ".join(str(d) for d in searched)
    return DatasetError(
        f"{name}: dataset files not found. Expected {', '.join(expected)} in one of: {dirs} "
        f"(missing: {', '.join(missing)}). Get them with --download (load_dataset(..., download=True)) "
        f"or from the official source {info.url} and point data_dir at the folder."
    )


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
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


# --------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)
# --------------------------------------------------------------------------------------------------

_IDX_SUBDIRS = {
    "mnist": (".", "mnist", "MNIST/raw"),
    "fashion-mnist": (".", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
}
_MAX_DEFLATE_RATIO = 1100  # deflate cannot expand more than ~1032:1
_CHUNK = 1 << 20


def _idx_file_in(folder: Path, base: str) -> Path | None:
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


def _locate_idx(name: str, root: Path, split: str, *, download: bool, base_url: str | None) -> list[Path]:
    folders = [root / sub if sub != "." else root for sub in _IDX_SUBDIRS[name]]
    needed = _IDX_BASENAMES[split]
    for folder in folders:
        found = [_idx_file_in(folder, b) for b in needed]
        if all(f is not None for f in found):
            return [f for f in found if f is not None]
    if download:
        # download into the folder that already holds some of the files, else <root>/<name>
        target = next(
            (f for f in folders if any(_idx_file_in(f, b) for pair in _IDX_BASENAMES.values() for b in pair)),
            root / _IDX_SUBDIRS[name][1],
        )
        base = base_url if base_url is not None else DOWNLOAD_URLS[name]
        for pair in _IDX_BASENAMES.values():
            for b in pair:
                if _idx_file_in(target, b) is None:
                    fname = f"{b}.gz"
                    _download(_join_url(base, fname), target / fname, CHECKSUMS[name][fname])
        found = [_idx_file_in(target, b) for b in needed]
        if all(f is not None for f in found):
            return [f for f in found if f is not None]
        folders = [target]
    best = max(folders, key=lambda f: sum(_idx_file_in(f, b) is not None for b in needed))
    missing = [f"{b}.gz" for b in needed if _idx_file_in(best, b) is None]
    other = "test" if split == "train" else "train"
    also = [f"{b}.gz" for b in _IDX_BASENAMES[other] if _idx_file_in(best, b) is None]
    error = _missing_error(name, [f"{b}.gz" for b in needed], folders, missing)
    if also and split == "train":  # training also evaluates on the test split: say everything at once
        error = DatasetError(f"{error} The test split's {', '.join(also)} are missing too.")
    raise error


def _open_idx(path: Path) -> BinaryIO:
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        return gzip.open(path, "rb") if gz else open(path, "rb")
    except OSError as exc:
        raise DatasetError(f"cannot open {path}: {exc}") from exc


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    return data if data is not None else b""


def _read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Parse one IDX file; the header is checked against the real byte count before allocating."""
    try:
        file_size = path.stat().st_size
        with _open_idx(path) as stream:
            compressed = isinstance(stream, gzip.GzipFile)
            magic = _read_exact(stream, 4)
            if len(magic) < 4:
                raise DatasetError(f"{path}: file is too short to hold an IDX header ({len(magic)} bytes)")
            if magic[0] != 0 or magic[1] != 0:
                raise DatasetError(
                    f"{path}: not an IDX file (bad magic number 0x{magic.hex()}; expected 0x0000 0803/0801)"
                )
            if magic[2] != 0x08:
                raise DatasetError(f"{path}: IDX data type 0x{magic[2]:02x} is not unsigned byte (0x08)")
            ndim = magic[3]
            if ndim != expected_ndim:
                raise DatasetError(
                    f"{path}: IDX header declares {ndim} dimensions, expected {expected_ndim} "
                    f"(magic 0x{magic.hex()}); images and labels swapped?"
                )
            raw_dims = _read_exact(stream, 4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DatasetError(f"{path}: truncated IDX header")
            dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            payload = 1
            for d in dims:
                payload *= d
            header = 4 + 4 * ndim
            if compressed:
                if payload > _MAX_DEFLATE_RATIO * file_size:
                    raise DatasetError(
                        f"{path}: IDX header claims {dims} = {payload} bytes of data, more than a "
                        f"{file_size}-byte gzip file can hold; the file is corrupt or not MNIST"
                    )
            elif payload != file_size - header:
                raise DatasetError(
                    f"{path}: IDX header claims {dims} = {payload} bytes of data but the file holds "
                    f"{file_size - header}; the file is truncated or corrupt"
                )
            buf = bytearray()
            while len(buf) < payload + 1:
                chunk = _read_exact(stream, min(_CHUNK, payload + 1 - len(buf)))
                if not chunk:
                    break
                buf += chunk
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated file ({exc})") from exc
    if len(buf) < payload:
        raise DatasetError(
            f"{path}: IDX header claims {dims} = {payload} bytes of data but the file holds only "
            f"{len(buf)}; the file is truncated or corrupt"
        )
    if len(buf) > payload:
        raise DatasetError(f"{path}: trailing data after the {payload} bytes the IDX header declares")
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


#: Images per split of the official MNIST and Fashion-MNIST files (both use the same file names).
_IDX_SPLIT_SIZES = (60000, 10000)


def _check_idx_identity(name: str, labels: np.ndarray, labels_path: Path) -> None:
    """Refuse another dataset's official files under this name: Fashion-MNIST has exactly as many images of every
    class (6,000 train / 1,000 test), MNIST's digits never do. Copies that differ only in their compression still
    pass (the decoded labels are what is checked); subsets and other sizes are not judged."""
    if len(labels) not in _IDX_SPLIT_SIZES:
        return
    counts = np.bincount(labels, minlength=10)
    balanced = bool((counts == len(labels) // 10).all())
    span = f"{int(counts.min()):,}..{int(counts.max()):,} per class"
    if name == "fashion-mnist" and not balanced:
        raise DatasetError(
            f"{labels_path}: these are not Fashion-MNIST's files (it has exactly {len(labels) // 10:,} images of "
            f"every class, these labels have {span}: MNIST's digits?); point --data-dir at the Fashion-MNIST files "
            "or use --dataset mnist")
    if name == "mnist" and balanced:
        raise DatasetError(
            f"{labels_path}: these are not MNIST's files (exactly {len(labels) // 10:,} images of every class, as in "
            "Fashion-MNIST or KMNIST; MNIST's digit counts differ); point --data-dir at the MNIST files or use "
            "--dataset fashion-mnist")


def _load_idx_pair(images_path: Path, labels_path: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = _read_idx(images_path, 3)
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images are {images.shape[1:]}, {name} images are 28x28")
    labels = _read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(labels) and int(labels.max()) >= 10:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    _check_idx_identity(name, labels, labels_path)
    return (
        torch.from_numpy(images[:, None, :, :]).contiguous(),
        torch.from_numpy(labels.astype(np.int64)),
    )


# --------------------------------------------------------------------------------------------------
# CIFAR (restricted unpickling)
# --------------------------------------------------------------------------------------------------


class _PickledArray(np.ndarray):
    """Stand-in for ``numpy.ndarray`` inside CIFAR pickles.

    ``numpy.core.multiarray._reconstruct(cls, ...)`` builds an empty array of ``cls`` without calling
    ``__new__``, then ``__setstate__`` fills it from bytes that are really in the file. A direct
    ``numpy.ndarray(shape)`` call in a pickle (which would allocate whatever shape it declares) lands
    in ``__new__`` and is refused.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> _PickledArray:
        raise pickle.UnpicklingError("direct numpy.ndarray(...) construction is not allowed")


def _numpy_attr(submodule: str, attr: str) -> Any:
    for module in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {submodule}.{attr}")


def _safe_globals() -> dict[tuple[str, str], Callable[[], Any]]:
    table: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy", "ndarray"): lambda: _PickledArray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: importlib.import_module("_codecs").encode,
        ("builtins", "set"): lambda: set,
        ("builtins", "frozenset"): lambda: frozenset,
        ("builtins", "bytearray"): lambda: bytearray,
        ("__builtin__", "set"): lambda: set,
        ("__builtin__", "frozenset"): lambda: frozenset,
        ("__builtin__", "bytearray"): lambda: bytearray,
        ("collections", "OrderedDict"): lambda: importlib.import_module("collections").OrderedDict,
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = lambda: _numpy_attr("multiarray", "_reconstruct")
        table[(f"{prefix}.multiarray", "scalar")] = lambda: _numpy_attr("multiarray", "scalar")
        table[(f"{prefix}.numeric", "_frombuffer")] = lambda: _numpy_attr("numeric", "_frombuffer")
    return table


_SAFE_GLOBALS = _safe_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy array reconstruction and plain containers; refuses every other global."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        resolve = _SAFE_GLOBALS.get((module, name))
        if resolve is None:
            raise DatasetError(
                f"{self._path}: refused to unpickle the global {module}.{name}; a CIFAR file only needs "
                "numpy arrays and plain containers, so this file is corrupt or hostile (nothing was executed)"
            )
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetError(f"{self._path}: refused a persistent id in the pickle")


def _restricted_load(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except DatasetError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise DatasetError(f"{path}: corrupt or truncated CIFAR pickle ({type(exc).__name__}: {exc})") from exc


def _dict_get(batch: dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    return None


def _locate_cifar(name: str, root: Path, split: str, *, download: bool, base_url: str | None) -> list[Path]:
    spec = _CIFAR[name]
    folders = [root / spec["folder"], root]
    needed = spec[split]
    for folder in folders:
        if all((folder / f).is_file() for f in needed):
            return [folder / f for f in needed]
    if download:
        base = base_url if base_url is not None else DOWNLOAD_URLS[name]
        tar_name = spec["tar"]
        tar_path = root / tar_name
        md5 = CHECKSUMS[name][tar_name]
        if not (tar_path.is_file() and _md5(tar_path) == md5):
            _download(_join_url(base, tar_name), tar_path, md5)
        _safe_extract(tar_path, root, spec["folder"])
        folder = root / spec["folder"]
        if all((folder / f).is_file() for f in needed):
            return [folder / f for f in needed]
        folders = [folder]
    missing = [f for f in (*spec["train"], *spec["test"]) if not (folders[0] / f).is_file()]
    raise _missing_error(name, [f"{spec['folder']}/{f}" for f in (*spec["train"], *spec["test"])], folders, missing)


def _load_cifar(name: str, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    spec = _CIFAR[name]
    n_classes = spec["classes"]
    images, labels = [], []
    for path in paths:
        batch = _restricted_load(path)
        if not isinstance(batch, dict):
            raise DatasetError(f"{path}: expected a dict in the CIFAR pickle, got {type(batch).__name__}")
        data = _dict_get(batch, "data")
        labs = _dict_get(batch, spec["label_key"])
        if data is None or labs is None:
            raise DatasetError(f"{path}: the CIFAR pickle lacks the 'data' or '{spec['label_key']}' key")
        if not isinstance(data, np.ndarray):
            raise DatasetError(f"{path}: 'data' is a {type(data).__name__}, expected a numpy array")
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 N x 3072")
        if isinstance(labs, np.ndarray):
            if labs.dtype.kind not in "iu":
                raise DatasetError(f"{path}: labels have dtype {labs.dtype}, expected integers")
            lab = labs.astype(np.int64).reshape(-1)
        elif isinstance(labs, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in labs):
            lab = np.asarray(labs, dtype=np.int64) if labs else np.zeros(0, dtype=np.int64)
        else:
            raise DatasetError(f"{path}: labels must be a list of ints")
        if len(lab) != len(data):
            raise DatasetError(f"{path}: {len(data)} images but {len(lab)} labels")
        if len(lab) and (lab.min() < 0 or lab.max() >= n_classes):
            raise DatasetError(f"{path}: label out of range 0..{n_classes - 1} (min {lab.min()}, max {lab.max()})")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


# --------------------------------------------------------------------------------------------------
# Tiny-ImageNet (official tiny-imagenet-200 layout)
# --------------------------------------------------------------------------------------------------


def _is_tiny_folder(folder: Path) -> bool:
    return (folder / "wnids.txt").is_file() and (folder / "train").is_dir() and (folder / "val").is_dir()


def _locate_tiny(root: Path, *, download: bool, base_url: str | None) -> Path:
    folders = [root / _TINY["folder"], root]
    for folder in folders:
        if _is_tiny_folder(folder):
            return folder
    if download:
        base = base_url if base_url is not None else DOWNLOAD_URLS["tiny-imagenet"]
        zip_path = root / _TINY["zip"]
        md5 = CHECKSUMS["tiny-imagenet"][_TINY["zip"]]
        if not (zip_path.is_file() and _md5(zip_path) == md5):
            _download(_join_url(base, _TINY["zip"]), zip_path, md5)
        _safe_extract_zip(zip_path, root, _TINY["folder"])
        if _is_tiny_folder(folders[0]):
            return folders[0]
        folders = folders[:1]
    expected = ["wnids.txt", "train/<wnid>/images/*.JPEG", "val/images/*.JPEG", "val/val_annotations.txt"]
    missing = [f for f in ("wnids.txt", "train", "val") if not (folders[0] / f).exists()]
    raise _missing_error("tiny-imagenet", [f"{_TINY['folder']}/{f}" for f in expected], folders, missing)


def _tiny_wnids(folder: Path) -> list[str]:
    try:
        lines = (folder / "wnids.txt").read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{folder / 'wnids.txt'}: unreadable ({exc})") from exc
    if not lines or len(set(lines)) != len(lines) or len(lines) > _TINY["classes"]:
        raise DatasetError(f"{folder / 'wnids.txt'}: expected up to {_TINY['classes']} distinct class ids (wnids), "
                           f"one a line; found {len(lines)} ({len(set(lines))} distinct)")
    return sorted(lines)


def _tiny_files(folder: Path, split: str) -> list[tuple[Path, int]]:
    """``(image path, label)`` of a split: ``train/<wnid>/images/*`` or ``val/images/*`` as annotated."""
    index = {w: i for i, w in enumerate(_tiny_wnids(folder))}
    files: list[tuple[Path, int]] = []
    if split == "train":
        for wnid, label in index.items():
            images = folder / "train" / wnid / "images"
            if not images.is_dir():
                raise DatasetError(f"tiny-imagenet: {images} not found (wnids.txt lists {wnid}); the layout is "
                                   "train/<wnid>/images/*.JPEG")
            files += [(f, label) for f in sorted(images.iterdir())
                      if f.is_file() and f.suffix.lower() in _IMAGE_EXTENSIONS]
    else:
        annotations = folder / "val" / "val_annotations.txt"
        try:
            rows = annotations.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"tiny-imagenet: cannot read {annotations} ({exc})") from exc
        for number, row in enumerate(rows, 1):
            if not row.strip():
                continue
            fields = row.split("\t") if "\t" in row else row.split()
            if len(fields) < 2 or fields[1] not in index or Path(fields[0]).name != fields[0]:
                raise DatasetError(f"{annotations}:{number}: expected 'file<TAB>wnid<TAB>...' with a wnid of "
                                   f"wnids.txt, got {row[:120]!r}")
            path = folder / "val" / "images" / fields[0]
            if not path.is_file():
                raise DatasetError(f"{annotations}:{number}: {path} does not exist")
            files.append((path, index[fields[1]]))
    if not files:
        raise DatasetError(f"tiny-imagenet: no images for split {split!r} under {folder}")
    return files


# --------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------


def _imagefolder_classes(root: Path) -> list[str]:
    train = root / "train"
    if not train.is_dir():
        raise DatasetError(
            f"imagefolder: {train} not found. Expected {root}/train/<class>/*.png|jpg|jpeg and "
            f"{root}/test/<class>/... (or val/), one sub folder per class"
        )
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"imagefolder: {train} has no class sub folders (expected train/<class>/*.png)")
    return classes


def _imagefolder_split_dir(root: Path, split: str) -> Path:
    candidates = [root / "train"] if split == "train" else [root / "test", root / "val"]
    for c in candidates:
        if c.is_dir():
            return c
    raise DatasetError(
        f"imagefolder: no {' or '.join(str(c) for c in candidates)} folder for split {split!r}; "
        f"expected <class>/*.png|jpg|jpeg sub folders in it"
    )


def _imagefolder_files(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    index = {c: i for i, c in enumerate(classes)}
    files: list[tuple[Path, int]] = []
    for sub in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in index:
            raise DatasetError(f"imagefolder: class folder {sub} does not exist in train/ ({', '.join(classes)})")
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() in _IMAGE_EXTENSIONS:
                files.append((f, index[sub.name]))
    if not files:
        raise DatasetError(f"imagefolder: no .png/.jpg/.jpeg images under {split_dir}/<class>/")
    return files


def _load_imagefolder(files: list[tuple[Path, int]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from PIL import Image
    except ImportError as exc:
        raise DatasetError("imagefolder needs Pillow to read images: pip install pillow") from exc
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as im:
                im.load()
                rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                images[i] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
            raise DatasetError(f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})") from exc
    labels = np.asarray([label for _, label in files], dtype=np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


# --------------------------------------------------------------------------------------------------
# downloads
# --------------------------------------------------------------------------------------------------


def _join_url(base: str, fname: str) -> str:
    return base if base.endswith(fname) else base.rstrip("/") + "/" + fname


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, md5: str, *, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``dest`` through a temporary file; refuse it unless its MD5 is ``md5``."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise DatasetError(f"refusing to download {url}: only http(s) URLs are supported")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise DatasetError(f"cannot write to {dest.parent}: {exc}") from exc
    tmp = Path(tmp_name)
    logger.info("downloading %s -> %s", url, dest)
    try:
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        digest = h.hexdigest()
        if digest != md5:
            raise DatasetError(
                f"{dest.name}: MD5 checksum mismatch for {url} (got {digest}, expected {md5}); the download was removed"
            )
        os.replace(tmp, dest)
    except DatasetError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"download of {url} failed ({exc}); fetch {dest.name} by hand and put it in {dest.parent}"
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unsafe_member_name(name: str) -> bool:
    """An archive member that would land outside the extraction folder (absolute, ``..``, drive, backslash)."""
    parts = Path(name).parts
    return (name.startswith(("/", "\\")) or os.path.isabs(name) or (bool(parts) and ":" in parts[0])
            or ".." in parts or "\\" in name)


def _safe_extract_zip(zip_path: Path, root: Path, folder: str) -> None:
    """Extract the zip ``zip_path`` into ``root``; refuse unsafe member paths and links; ``folder/`` must be in
    it. Files are moved into ``root/folder`` (an existing folder is completed, not replaced)."""
    tmp_dir = Path(tempfile.mkdtemp(dir=root, prefix=".pemn-extract-"))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                for m in zf.infolist():
                    if _unsafe_member_name(m.filename):
                        raise DatasetError(f"{zip_path}: refused unsafe member path {m.filename!r}")
                    if (m.external_attr >> 16) & 0o170000 not in (0, 0o100000, 0o040000):
                        raise DatasetError(f"{zip_path}: refused member {m.filename!r} (links and devices not allowed)")
                zf.extractall(tmp_dir)
        except DatasetError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as exc:
            raise DatasetError(f"{zip_path}: corrupt archive ({exc})") from exc
        extracted = tmp_dir / folder
        if not extracted.is_dir():
            raise DatasetError(f"{zip_path}: the archive has no {folder}/ folder")
        for item in sorted(extracted.rglob("*")):
            if item.is_file():
                target = root / folder / item.relative_to(extracted)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _safe_extract(tar_path: Path, root: Path, folder: str) -> None:
    """Extract ``tar_path`` into ``root``; refuse absolute paths, ``..``, links and special files."""
    tmp_dir = Path(tempfile.mkdtemp(dir=root, prefix=".pemn-extract-"))
    try:
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                members = tar.getmembers()
                for m in members:
                    if _unsafe_member_name(m.name):
                        raise DatasetError(f"{tar_path}: refused unsafe member path {m.name!r}")
                    if not (m.isfile() or m.isdir()):
                        raise DatasetError(f"{tar_path}: refused member {m.name!r} (links and devices not allowed)")
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp_dir, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tar.extractall(tmp_dir, members=members)
        except DatasetError:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{tar_path}: corrupt archive ({exc})") from exc
        extracted = tmp_dir / folder
        if not extracted.is_dir():
            raise DatasetError(f"{tar_path}: the archive has no {folder}/ folder")
        dest = root / folder
        dest.mkdir(parents=True, exist_ok=True)
        for item in extracted.iterdir():
            if item.is_file():
                os.replace(item, dest / item.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
