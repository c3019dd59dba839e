"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread during a test (restored after it, whatever the test set): the models here are tiny,
    so more threads only add wake-up latency (seconds per file on a busy machine), and in-process runs then
    match the one-thread subprocesses. A test file uses it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
