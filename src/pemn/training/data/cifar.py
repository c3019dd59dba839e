"""``cifar10`` / ``cifar100``: the official "python version" pickles, read by a restricted unpickler.

``data_dir`` may be the parent folder of ``cifar-10-batches-py/`` (``cifar-100-python/``) or that folder itself.
The pickles are hostile input: :class:`_RestrictedUnpickler` admits numpy array reconstruction and plain containers
and refuses every other global by name (nothing is executed); a ``numpy.ndarray(shape)`` call, which would allocate
whatever shape it declares, is refused too. The decoded arrays are then checked (dtype, shape, label range).
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from pemn.training.data.catalog import (
    CHECKSUMS,
    DOWNLOAD_URLS,
    DatasetEntry,
    DatasetInfo,
    Load,
    PathArg,
    Tensors,
    cached,
    check_native_size,
    fingerprint,
    fixed_info,
    missing_error,
    register_dataset,
    resolve_root,
)
from pemn.training.data.download import fetch, join_url, md5_of, safe_extract_tar
from pemn.training.errors import DatasetError

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


_URL = "https://www.cs.toronto.edu/~kriz/"
#: MD5 of the archives (the values torchvision hard-codes; the catalog's CHECKSUMS holds them).
_MD5 = {
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}

INFO = {
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),  # the official PEMN (and ConvMixer) code's constants
        std=(0.2471, 0.2435, 0.2616),
        files=tuple(f"cifar-10-batches-py/{f}" for f in (*_CIFAR["cifar10"]["train"], "test_batch")),
        description="CIFAR-10, 32x32 RGB, 10 classes, 50000 train / 10000 test (python version)",
        url=_URL + "cifar-10-python.tar.gz",
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
        url=_URL + "cifar-100-python.tar.gz",
    ),
}

_CLASSES10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: CIFAR-100's fine labels, in label order
_CLASSES100 = (
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
        if not (tar_path.is_file() and md5_of(tar_path) == md5):
            fetch(join_url(base, tar_name), tar_path, md5)
        safe_extract_tar(tar_path, root, spec["folder"])
        folder = root / spec["folder"]
        if all((folder / f).is_file() for f in needed):
            return [folder / f for f in needed]
        folders = [folder]
    missing = [f for f in (*spec["train"], *spec["test"]) if not (folders[0] / f).is_file()]
    expected = [f"{spec['folder']}/{f}" for f in (*spec["train"], *spec["test"])]
    raise missing_error(INFO[name], expected, folders, missing)


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



def _loader(name: str) -> Load:
    def load(data_dir: PathArg, split: str, *, download: bool, base_url: str | None,
             image_size: int | None) -> Tensors:
        check_native_size(INFO[name], image_size)
        paths = _locate_cifar(name, resolve_root(data_dir), split, download=download, base_url=base_url)
        return cached((name, split, *fingerprint(paths)), lambda: _load_cifar(name, paths))

    return load


for _name, _classes in (("cifar10", _CLASSES10), ("cifar100", _CLASSES100)):
    register_dataset(DatasetEntry(
        _name, fixed_info(INFO[_name]), _loader(_name), class_names=lambda _, c=_classes: list(c),
        download_url=_URL, checksums=_MD5[_name]))
