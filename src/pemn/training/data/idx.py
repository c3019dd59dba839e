"""``mnist`` / ``fashion-mnist``: the official IDX files, header checked against the real byte count.

The files (gzipped or not) are looked for in ``data_dir``, ``data_dir/mnist/`` or ``data_dir/MNIST/raw/``
(``fashion-mnist/``, ``FashionMNIST/raw/`` for Fashion-MNIST). An IDX header is validated against the real byte
count before anything is allocated (a gzip file against what deflate can expand to), and each dataset refuses the
other's files by their class counts.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

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
from pemn.training.data.download import CHUNK, fetch, join_url
from pemn.training.errors import DatasetError

_IDX_BASENAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_FILES = tuple(f"{b}.gz" for pair in _IDX_BASENAMES.values() for b in pair)


#: Default mirrors; a file's URL is ``base_url + file_name`` (the catalog's DOWNLOAD_URLS holds them).
_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
#: MD5 of every downloadable file (the values torchvision hard-codes; the catalog's CHECKSUMS holds them).
_MD5 = {
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
}

INFO = {
    "mnist": DatasetInfo(
        name="mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(0.1307,),
        std=(0.3081,),
        files=_IDX_FILES,
        description="MNIST handwritten digits, 28x28 grayscale, 60000 train / 10000 test (IDX files)",
        url=_URLS["mnist"],
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
        url=_URLS["fashion-mnist"],
    ),
}

_CLASSES = {
    "mnist": tuple(map(str, range(10))),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}

_IDX_SUBDIRS = {
    "mnist": (".", "mnist", "MNIST/raw"),
    "fashion-mnist": (".", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
}
_MAX_DEFLATE_RATIO = 1100  # deflate cannot expand more than ~1032:1


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
                    fetch(join_url(base, fname), target / fname, CHECKSUMS[name][fname])
        found = [_idx_file_in(target, b) for b in needed]
        if all(f is not None for f in found):
            return [f for f in found if f is not None]
        folders = [target]
    best = max(folders, key=lambda f: sum(_idx_file_in(f, b) is not None for b in needed))
    missing = [f"{b}.gz" for b in needed if _idx_file_in(best, b) is None]
    other = "test" if split == "train" else "train"
    also = [f"{b}.gz" for b in _IDX_BASENAMES[other] if _idx_file_in(best, b) is None]
    error = missing_error(INFO[name], [f"{b}.gz" for b in needed], folders, missing)
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
                chunk = _read_exact(stream, min(CHUNK, payload + 1 - len(buf)))
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



def _loader(name: str) -> Load:
    def load(data_dir: PathArg, split: str, *, download: bool, base_url: str | None,
             image_size: int | None) -> Tensors:
        check_native_size(INFO[name], image_size)
        paths = _locate_idx(name, resolve_root(data_dir), split, download=download, base_url=base_url)
        return cached((name, split, *fingerprint(paths)), lambda: _load_idx_pair(paths[0], paths[1], name))

    return load


for _name in ("mnist", "fashion-mnist"):
    register_dataset(DatasetEntry(
        _name, fixed_info(INFO[_name]), _loader(_name), class_names=lambda _, n=_name: list(_CLASSES[n]),
        download_url=_URLS[_name], checksums=_MD5[_name]))
