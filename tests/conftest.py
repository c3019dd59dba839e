"""Fixtures shared by the test files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from pemn.training.config import TrainConfig, resolve_config


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread during a test (restored after it, whatever the test set): the models here are tiny,
    so more threads only add wake-up latency (seconds per file on a busy machine), and in-process runs then
    match the one-thread subprocesses. A test file uses it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: What every quick run shares: an image run is tiny-mlp on scikit-learn's digits (no files), a text run gpt-16-2
#: on the ``input.txt`` in ``text_dir`` with the nanogpt recipe; both on the CPU without a progress bar.
QUICK_IMAGE_RUN: dict[str, Any] = {"model": "tiny-mlp", "dataset": "digits", "progress": False, "device": "cpu"}
QUICK_TEXT_RUN: dict[str, Any] = {"model": "gpt-16-2", "dataset": "text", "block_size": 8, "batch_size": 4,
                                  "steps": 12, "progress": False, "device": "cpu"}


def quick_config(*, text_dir: str | os.PathLike[str] | None = None, **settings: Any) -> TrainConfig:
    """The one factory of a quick training run (a second or less): :data:`QUICK_IMAGE_RUN`, or with ``text_dir``
    :data:`QUICK_TEXT_RUN` reading ``text_dir/input.txt``, with ``settings`` on top (``out`` and ``data_dir`` may
    be paths), resolved by :func:`pemn.training.config.resolve_config`. Test files wrap it with their own presets
    (``from conftest import quick_config``; tests/ is on the path by pyproject's pytest ``pythonpath``)."""
    base = QUICK_IMAGE_RUN if text_dir is None else {**QUICK_TEXT_RUN, "data_dir": str(text_dir)}
    merged = {**base, **settings}
    for key in ("out", "data_dir"):
        if isinstance(merged.get(key), os.PathLike):
            merged[key] = str(merged[key])
    return resolve_config(merged, recipe=None if text_dir is None else "nanogpt")
