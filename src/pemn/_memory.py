"""Returning freed memory to the operating system (glibc's ``malloc_trim``), for the converter's peak-RSS bound.

libc is looked up on the first call, not at import: ``import pemn`` stays free of ctypes work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:  # glibc only; elsewhere the allocator returns large blocks itself
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand memory freed by dropped dense weights back to the OS (glibc's ``malloc_trim``).

    glibc raises its mmap threshold after large frees, so the next model's weights live on the heap, and
    freeing them one by one while converting leaves holes that make peak RSS grow by the model's size.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
