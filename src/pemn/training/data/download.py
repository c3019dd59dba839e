"""Downloads and archive extraction: hostile input, kept on its own for review.

:func:`fetch` fetches an ``http(s)`` URL through a temporary file in the target folder and keeps it only if its
MD5 is the expected one (the file is then moved in place atomically). :func:`safe_extract_tar` and
:func:`safe_extract_zip` extract into a temporary folder next to the target and refuse, before writing anything,
absolute member paths, ``..``, drive letters, backslashes, links and special files; only then are the files moved
into place. Every problem raises :class:`pemn.errors.DatasetError`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from pemn.training.errors import DatasetError

__all__ = ["CHUNK", "fetch", "join_url", "md5_of", "safe_extract_tar", "safe_extract_zip"]

logger = logging.getLogger("pemn.training.data")

#: Bytes read at a time from files, gzip streams and downloads.
CHUNK = 1 << 20
def join_url(base: str, fname: str) -> str:
    return base if base.endswith(fname) else base.rstrip("/") + "/" + fname


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, md5: str, *, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``dest`` through a temporary file; refuse it unless its MD5 is ``md5``."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise DatasetError(f"refusing to download {url}: only http(s) URLs are supported")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise DatasetError(f"cannot write to {dest.parent}: {exc}") from exc
    tmp = Path(tmp_name)
    logger.info("downloading %s -> %s", url, dest)
    try:
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
        digest = h.hexdigest()
        if digest != md5:
            raise DatasetError(
                f"{dest.name}: MD5 checksum mismatch for {url} (got {digest}, expected {md5}); the download was removed"
            )
        os.replace(tmp, dest)
    except DatasetError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"download of {url} failed ({exc}); fetch {dest.name} by hand and put it in {dest.parent}"
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unsafe_member_name(name: str) -> bool:
    """An archive member that would land outside the extraction folder (absolute, ``..``, drive, backslash)."""
    parts = Path(name).parts
    return (name.startswith(("/", "\\")) or os.path.isabs(name) or (bool(parts) and ":" in parts[0])
            or ".." in parts or "\\" in name)


def safe_extract_zip(zip_path: Path, root: Path, folder: str) -> None:
    """Extract the zip ``zip_path`` into ``root``; refuse unsafe member paths and links; ``folder/`` must be in
    it. Files are moved into ``root/folder`` (an existing folder is completed, not replaced)."""
    tmp_dir = Path(tempfile.mkdtemp(dir=root, prefix=".pemn-extract-"))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                for m in zf.infolist():
                    if unsafe_member_name(m.filename):
                        raise DatasetError(f"{zip_path}: refused unsafe member path {m.filename!r}")
                    if (m.external_attr >> 16) & 0o170000 not in (0, 0o100000, 0o040000):
                        raise DatasetError(f"{zip_path}: refused member {m.filename!r} (links and devices not allowed)")
                zf.extractall(tmp_dir)
        except DatasetError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as exc:
            raise DatasetError(f"{zip_path}: corrupt archive ({exc})") from exc
        extracted = tmp_dir / folder
        if not extracted.is_dir():
            raise DatasetError(f"{zip_path}: the archive has no {folder}/ folder")
        for item in sorted(extracted.rglob("*")):
            if item.is_file():
                target = root / folder / item.relative_to(extracted)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def safe_extract_tar(tar_path: Path, root: Path, folder: str) -> None:
    """Extract ``tar_path`` into ``root``; refuse absolute paths, ``..``, links and special files."""
    tmp_dir = Path(tempfile.mkdtemp(dir=root, prefix=".pemn-extract-"))
    try:
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                members = tar.getmembers()
                for m in members:
                    if unsafe_member_name(m.name):
                        raise DatasetError(f"{tar_path}: refused unsafe member path {m.name!r}")
                    if not (m.isfile() or m.isdir()):
                        raise DatasetError(f"{tar_path}: refused member {m.name!r} (links and devices not allowed)")
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp_dir, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tar.extractall(tmp_dir, members=members)
        except DatasetError:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{tar_path}: corrupt archive ({exc})") from exc
        extracted = tmp_dir / folder
        if not extracted.is_dir():
            raise DatasetError(f"{tar_path}: the archive has no {folder}/ folder")
        dest = root / folder
        dest.mkdir(parents=True, exist_ok=True)
        for item in extracted.iterdir():
            if item.is_file():
                os.replace(item, dest / item.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
