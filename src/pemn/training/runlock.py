"""One writer per run folder: an OS file lock (``flock``) on ``<folder>/.pemn-run.lock``, held for the whole run.

The kernel releases the lock when its process ends, however it ends (SIGKILL, a crash, power loss of the
process), so a lock is never stale: a left-over lock *file* (from a killed run) means nothing until a live process
holds it. A run that ends normally removes the file; a waiter that then holds a lock on the removed file notices
(its inode is no longer the path's) and locks the path anew.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOCK_NAME", "RunBusyError", "RunLock"]

LOCK_NAME = ".pemn-run.lock"


class RunBusyError(RuntimeError):
    """Another live process is writing into the run folder."""


def _holder(path: Path) -> str:
    """What the lock file says about its holder (``pid 123 on host, since 08:01:02``), or ``""``."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text.splitlines()[0][:200] if text else ""


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class RunLock:
    """An exclusive lock on a run folder. ``acquire()`` it, ``release()`` it (or let the process end)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, wait: bool = False, log: Callable[[str], None] | None = None,
                what: str = "pemn train") -> RunLock:
        """Take the lock; :class:`RunBusyError` if another process holds it (``wait=False``), else block until
        it is free (after telling ``log``). PermissionError/OSError if the folder is not writable."""
        import fcntl

        if self._fd is not None:
            return self
        told = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _holder(self.path)
                    by = f" ({holder})" if holder else ""
                    if not wait:
                        raise RunBusyError(
                            f"{str(self.folder)!r} is in use by another running {what}{by}; wait for it to end, "
                            "choose another --out, or pass --wait to start when it is done") from None
                    if log is not None and not told:
                        log(f"waiting for the {what} writing into {self.folder}{by} to end (--wait) ...")
                        told = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
                if _same_file(fd, self.path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder removed the file as it ended: lock the path's new file
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                     .encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and give the lock up."""
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            if _same_file(fd, self.path):
                self.path.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
