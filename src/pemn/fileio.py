"""Atomic file writes: a reader sees the old file or the new one, never a mix, and a failure leaves no debris."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync it, rename it over
    ``path`` and fsync the directory. The file gets the usual ``0o666 & ~umask`` mode (mkstemp's is 0600).
    On any error (disk full, read-only directory, interrupt) the previous file is intact and the temporary
    file is removed."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # name the file in the message
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened or fsynced
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def remove_stale_temp_files(directory: str | os.PathLike[str], names: list[str]) -> int:
    """Delete the temporary files :func:`atomic_write_bytes` left in ``directory`` for ``names`` when its
    process was killed mid-write (SIGKILL, power loss); only call it where nothing else writes them now."""
    removed = 0
    for name in names:
        for tmp in Path(directory).glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed
