"""Folders of images: ``tiny-imagenet`` (its official layout) and ``imagefolder`` (one sub folder per class).

``tiny-imagenet``
    Tiny-ImageNet (200 classes, 64×64 RGB, 100,000 train / 10,000 val images) in its official
    ``tiny-imagenet-200`` layout: ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` with
    ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box...``); ``data_dir`` may be the parent folder or the
    folder itself. Class ``i`` is the ``i``-th wnid in sorted order (torchvision ``ImageFolder``'s order of
    ``train/``). The ``test`` split is the labelled ``val/`` set (the official test images have no labels), as
    in the PEMN paper. Decoding all JPEGs takes a while (Pillow); the arrays are cached in-process. The zip is
    extracted with :func:`~pemn.training.data.download.safe_extract_zip`'s refusals.
``imagefolder``
    ``data_dir/train/<class>/*.png|jpg|jpeg`` and ``data_dir/test/`` (or ``data_dir/val/``); classes are
    the sorted sub folder names of ``train/``. Images are converted to RGB and resized to
    ``image_size`` (default 64). Needs Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pemn.training.data.catalog import (
    CHECKSUMS,
    DOWNLOAD_URLS,
    DatasetEntry,
    DatasetInfo,
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
from pemn.training.data.download import fetch, join_url, md5_of, safe_extract_zip
from pemn.training.errors import DatasetError

__all__ = ["imagefolder_classes"]

_TINY = {"folder": "tiny-imagenet-200", "zip": "tiny-imagenet-200.zip", "classes": 200, "size": 64}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_DEFAULT_IMAGEFOLDER_SIZE = 64
_TINY_URL = "http://cs231n.stanford.edu/"
#: MD5 of the archive (the value torchvision hard-codes; the catalog's CHECKSUMS holds it).
_TINY_MD5 = {"tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de"}

TINY_INFO = DatasetInfo(
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
    url=_TINY_URL + "tiny-imagenet-200.zip",
)


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
        if not (zip_path.is_file() and md5_of(zip_path) == md5):
            fetch(join_url(base, _TINY["zip"]), zip_path, md5)
        safe_extract_zip(zip_path, root, _TINY["folder"])
        if _is_tiny_folder(folders[0]):
            return folders[0]
        folders = folders[:1]
    expected = ["wnids.txt", "train/<wnid>/images/*.JPEG", "val/images/*.JPEG", "val/val_annotations.txt"]
    missing = [f for f in ("wnids.txt", "train", "val") if not (folders[0] / f).exists()]
    raise missing_error(TINY_INFO, [f"{_TINY['folder']}/{f}" for f in expected], folders, missing)


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



def _tiny_load(data_dir: PathArg, split: str, *, download: bool, base_url: str | None,
               image_size: int | None) -> Tensors:
    check_native_size(TINY_INFO, image_size)
    folder = _locate_tiny(resolve_root(data_dir), download=download, base_url=base_url)
    tiny_files = _tiny_files(folder, split)
    return cached(("tiny-imagenet", split, *fingerprint([p for p, _ in tiny_files])),
                  lambda: _load_images(tiny_files, _TINY["size"]))


def _tiny_class_names(data_dir: PathArg) -> list[str] | None:
    root = resolve_root(data_dir)
    folder = next((f for f in (root, root / _TINY["folder"]) if (f / "wnids.txt").is_file()), None)
    return _tiny_wnids(folder) if folder is not None else None


# --------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------


def _imagefolder_size(image_size: int | None) -> int:
    size = _DEFAULT_IMAGEFOLDER_SIZE if image_size is None else int(image_size)
    if size < 1:
        raise DatasetError(f"imagefolder: image_size must be positive, got {image_size}")
    return size


def imagefolder_classes(root: Path) -> list[str]:
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


def _load_images(files: list[tuple[Path, int]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
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



def _imagefolder_info(data_dir: PathArg, image_size: int | None) -> DatasetInfo:
    size = _imagefolder_size(image_size)
    if data_dir is None:
        raise DatasetError(
            "imagefolder: dataset_info needs data_dir (the folder holding train/<class>/ sub folders)"
        )
    root = Path(data_dir)
    classes = imagefolder_classes(root)
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


def _imagefolder_load(data_dir: PathArg, split: str, *, download: bool, base_url: str | None,
                      image_size: int | None) -> Tensors:
    size = _imagefolder_size(image_size)
    if download:
        raise DatasetError("imagefolder: there is nothing to download; put your images in data_dir")
    root = resolve_root(data_dir)
    classes = imagefolder_classes(root)
    split_dir = _imagefolder_split_dir(root, split)
    files = _imagefolder_files(split_dir, classes)
    return cached(
        ("imagefolder", split, size, tuple(classes), *fingerprint([p for p, _ in files])),
        lambda: _load_images(files, size),
    )


def _imagefolder_class_names(data_dir: PathArg) -> list[str] | None:
    return imagefolder_classes(resolve_root(data_dir)) if data_dir is not None else None


register_dataset(DatasetEntry("tiny-imagenet", fixed_info(TINY_INFO), _tiny_load, class_names=_tiny_class_names,
                              aliases=("tiny-imagenet-200", "tiny"), download_url=_TINY_URL, checksums=_TINY_MD5))
register_dataset(DatasetEntry("imagefolder", _imagefolder_info, _imagefolder_load,
                              class_names=_imagefolder_class_names,
                              summary="class-per-folder RGB images: DIR/train/<class>/*.png|jpg and DIR/test/ "
                                      "(needs --data-dir)"))
