"""Datasets as in-memory tensors, read from the official file formats.

Every loader returns ``(images, labels)``: ``images`` is a ``uint8`` tensor of shape ``N×C×H×W``
and ``labels`` an ``int64`` tensor of shape ``N``. No torch ``DataLoader`` is involved; batching and
augmentation (see :mod:`pemn.training.augment`) work on these tensors directly.

One module per format, each registering its names in the catalog (:func:`register_dataset`, in
:mod:`.catalog`, which also normalises names, once, for the whole program: :func:`find_dataset`):

==================  ===============================================================================
``digits``          :mod:`.digits`: scikit-learn's bundled 8×8 digits, a fixed seeded 80/20 split
``mnist``,          :mod:`.idx`: the official IDX files, headers checked against the real byte count
``fashion-mnist``
``cifar10``,        :mod:`.cifar`: the official "python version" pickles, through a restricted unpickler
``cifar100``
``tiny-imagenet``,  :mod:`.folders`: the official ``tiny-imagenet-200`` layout; one sub folder per class
``imagefolder``
``text``            :mod:`.textfile`: ``data_dir/input.txt`` for character-level language models
==================  ===============================================================================

``data_dir=None`` means ``$PEMN_DATA_DIR`` or, if that is unset, ``./data``.

``download=True`` fetches missing files from the official mirrors (or ``base_url``), checks their MD5
against :data:`CHECKSUMS`, writes them atomically and extracts archives safely (:mod:`.download`: absolute
paths, ``..`` and links are refused). Decoded arrays are cached in this process only (keyed by the files' path,
size and mtime); nothing but downloads is ever written to disk. Every problem raises
:class:`pemn.errors.DatasetError`.
"""

from __future__ import annotations

# isort: off
# the formats register themselves on import, in list_datasets()'s order
from pemn.training.data import digits, idx, cifar, folders, textfile  # noqa: F401
# isort: on
from pemn.training.data.catalog import (
    CHECKSUMS,
    DOWNLOAD_URLS,
    DatasetEntry,
    DatasetInfo,
    canonical_name,
    class_names,
    clear_cache,
    dataset_descriptions,
    dataset_info,
    dataset_serves,
    find_dataset,
    list_datasets,
    load_dataset,
    preprocessing,
    register_dataset,
)

__all__ = [
    "CHECKSUMS",
    "DOWNLOAD_URLS",
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
