"""The dataset catalog: the :func:`register_dataset` table, the one place a dataset name is normalised, and the
public functions that dispatch through the table (:func:`dataset_info`, :func:`load_dataset`, :func:`class_names`,
:func:`preprocessing`), with the in-process cache and the helpers every format shares (data folder, fingerprint,
"files not found" message).

A format module (:mod:`.digits`, :mod:`.idx`, :mod:`.cifar`, :mod:`.folders`, :mod:`.textfile`) registers one
:class:`DatasetEntry` per name it serves; the package's ``__init__`` imports them in the order
:func:`list_datasets` shows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from pemn.training.errors import DatasetError

__all__ = [
    "CHECKSUMS",
    "DOWNLOAD_URLS",
    "SPLITS",
    "DatasetEntry",
    "DatasetInfo",
    "canonical_name",
    "class_names",
    "clear_cache",
    "dataset_descriptions",
    "dataset_info",
    "dataset_serves",
    "find_dataset",
    "list_datasets",
    "load_dataset",
    "preprocessing",
    "register_dataset",
]

PathArg = str | os.PathLike[str] | None
Tensors = tuple[torch.Tensor, torch.Tensor]

SPLITS = ("train", "test")

#: Default mirrors, per dataset; a file's URL is ``base_url + file_name`` (filled by :func:`register_dataset`).
DOWNLOAD_URLS: dict[str, str] = {}
#: MD5 of every downloadable file (the values torchvision hard-codes), per dataset (filled by
#: :func:`register_dataset`; each inner dict is the format module's own, so patching it reaches the loader).
CHECKSUMS: dict[str, dict[str, str]] = {}


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


class Describe(Protocol):
    def __call__(self, data_dir: PathArg, image_size: int | None) -> DatasetInfo: ...


class Load(Protocol):
    def __call__(self, data_dir: PathArg, split: str, *, download: bool, base_url: str | None,
                 image_size: int | None) -> Tensors: ...


def _no_class_names(data_dir: PathArg) -> list[str] | None:
    return None


@dataclass(frozen=True)
class DatasetEntry:
    """One name of the catalog.

    ``describe(data_dir, image_size)`` gives its :class:`DatasetInfo` (and refuses an image size it cannot give);
    ``load(data_dir, split, download=, base_url=, image_size=)`` returns ``(images uint8 N×C×H×W, labels int64 N)``
    of a checked split, or is None for data that is not images and labels (``not_images`` then says where it is
    read instead); ``class_names(data_dir)`` names the labels in label order (None where unknown). ``aliases``
    are other spellings (``-``, ``_``, spaces and case never matter); ``download_url``/``checksums`` fill
    :data:`DOWNLOAD_URLS`/:data:`CHECKSUMS`."""

    name: str
    describe: Describe
    load: Load | None
    class_names: Callable[[PathArg], list[str] | None] = _no_class_names
    aliases: tuple[str, ...] = ()
    not_images: str = ""
    download_url: str = ""
    checksums: dict[str, str] = field(default_factory=dict)
    #: the workload the data serves (:data:`pemn.training.workloads.WORKLOADS`' key, the app kind of its models)
    serves: str = "image-classifier"
    #: what the data is when ``describe`` cannot say without its files (data read from a folder you give)
    summary: str = ""


_REGISTRY: dict[str, DatasetEntry] = {}
#: every accepted spelling, squashed (:func:`_squash`), to its canonical name
_SPELLINGS: dict[str, str] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Add ``entry`` to the catalog (after the ones already there, in :func:`list_datasets`'s order)."""
    spellings = {_squash(s) for s in (entry.name, *entry.aliases)}
    taken = sorted(s for s in spellings if s in _SPELLINGS)
    if entry.name in _REGISTRY or taken:
        raise ValueError(f"dataset {entry.name!r} is already registered (or a spelling of it: {taken})")
    _REGISTRY[entry.name] = entry
    _SPELLINGS.update(dict.fromkeys(spellings, entry.name))
    if entry.download_url:
        DOWNLOAD_URLS[entry.name] = entry.download_url
    if entry.checksums:
        CHECKSUMS[entry.name] = entry.checksums
    return entry


def _squash(name: str) -> str:
    return re.sub(r"[-_\s]", "", str(name).strip().lower())


def find_dataset(name: str) -> str | None:
    """The canonical name ``name`` spells (case, ``-``, ``_`` and spaces aside; aliases such as ``cifar-10`` or
    ``tiny``), or None if it names no dataset."""
    return _SPELLINGS.get(_squash(name))


def dataset_serves(name: str) -> str | None:
    """The workload (app kind) of the dataset ``name`` spells (``serves`` of its entry), None for no dataset."""
    key = find_dataset(name)
    return None if key is None else _REGISTRY[key].serves


def canonical_name(name: str) -> str:
    """:func:`find_dataset`, raising :class:`~pemn.errors.DatasetError` (listing the valid names) for no dataset."""
    key = find_dataset(name)
    if key is None:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(_REGISTRY)}")
    return key


def list_datasets() -> list[str]:
    """Names accepted by :func:`dataset_info` and :func:`load_dataset`."""
    return list(_REGISTRY)


def dataset_descriptions() -> list[tuple[str, str]]:
    """``(name, description)`` of every dataset (``pemn datasets``), in :func:`list_datasets`' order: the
    description of its :class:`DatasetInfo` (read from the default data folder where it depends on the files), else
    the entry's ``summary`` where that folder does not hold its files."""
    rows = []
    for name, entry in _REGISTRY.items():
        try:
            rows.append((name, entry.describe(None, None).description))
        except DatasetError:
            rows.append((name, entry.summary))
    return rows


def dataset_info(name: str, data_dir: PathArg = None, *, image_size: int | None = None) -> DatasetInfo:
    """Static facts about ``name``.

    ``data_dir`` is only consulted for ``imagefolder`` (the classes are its ``train/`` sub folders) and ``text``;
    ``image_size`` only changes ``imagefolder`` (default 64) and must otherwise match the native size.
    """
    return _REGISTRY[canonical_name(name)].describe(data_dir, image_size)


def load_dataset(
    name: str,
    data_dir: PathArg = None,
    *,
    split: str = "train",
    download: bool = False,
    base_url: str | None = None,
    image_size: int | None = None,
) -> Tensors:
    """Load one split of a dataset as ``(images uint8 N×C×H×W, labels int64 N)``.

    ``download=True`` fetches missing official files into ``data_dir`` (``base_url`` overrides the
    mirror). The returned tensors are fresh copies; the decoded data is cached in-process.
    """
    entry = _REGISTRY[canonical_name(name)]
    if entry.load is None:
        raise DatasetError(f"{entry.name}: {entry.not_images}")
    if split not in SPLITS:
        raise DatasetError(f"{entry.name}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    images, labels = entry.load(data_dir, split, download=download, base_url=base_url, image_size=image_size)
    return images.clone(), labels.clone()


def class_names(name: str, data_dir: PathArg = None) -> list[str] | None:
    """The name of each label, in label order (``imagefolder`` and ``tiny-imagenet`` read them from
    ``data_dir``); None where they cannot be known."""
    entry = _REGISTRY[canonical_name(name)]
    try:
        return entry.class_names(data_dir)
    except DatasetError:
        return None


def preprocessing(info: DatasetInfo, data_dir: PathArg = None) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------------
# what the formats share: native sizes, the data folder, the cache, the "not found" message
# --------------------------------------------------------------------------------------------------

_CACHE: dict[tuple[Any, ...], Tensors] = {}


def clear_cache() -> None:
    """Forget the decoded arrays cached in this process."""
    _CACHE.clear()


def check_native_size(info: DatasetInfo, image_size: int | None) -> None:
    if image_size is not None and int(image_size) != info.image_size:
        raise DatasetError(
            f"{info.name}: images are {info.image_size}x{info.image_size}; image_size={image_size} is only "
            "supported for imagefolder"
        )


def fixed_info(info: DatasetInfo) -> Describe:
    """The ``describe`` of a dataset whose facts never change: ``info``, at its native image size only."""

    def describe(data_dir: PathArg, image_size: int | None) -> DatasetInfo:
        check_native_size(info, image_size)
        return info

    return describe


def resolve_root(data_dir: PathArg) -> Path:
    if data_dir is None:
        data_dir = os.environ.get("PEMN_DATA_DIR") or "data"
    return Path(data_dir).expanduser()


def fingerprint(paths: list[Path] | tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError as exc:
            raise DatasetError(f"cannot read {p}: {exc}") from exc
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def cached(key: tuple[Any, ...], load: Callable[[], Tensors]) -> Tensors:
    hit = _CACHE.get(key)
    if hit is None:
        hit = load()
        _CACHE[key] = hit
    return hit


def missing_error(info: DatasetInfo, expected: list[str], searched: list[Path], missing: list[str]) -> DatasetError:
    dirs = ", ".join(str(d) for d in searched)
    return DatasetError(
        f"{info.name}: dataset files not found. Expected {', '.join(expected)} in one of: {dirs} "
        f"(missing: {', '.join(missing)}). Get them with --download (load_dataset(..., download=True)) "
        f"or from the official source {info.url}, and point at the folder with --data-dir DIR (Python: "
        f"data_dir=DIR) or the environment variable PEMN_DATA_DIR."
    )
