"""safetensors bytes that depend only on their contents.

``safetensors.torch.save`` writes the ``__metadata__`` entries in a hash map's order, which changes from one
process to the next, so the same model saved twice gave different files (and different SHA-256s). :func:`save_bytes`
writes the same safetensors file with the metadata in sorted key order: byte-identical for identical tensors and
metadata, readable by every safetensors reader (the format does not fix an order; only the header changes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save as _st_save

from pemn.fileio import atomic_write_bytes

__all__ = ["save_bytes", "write_file"]


def save_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save(tensors, metadata)`` with a canonical header (metadata keys sorted, tensors in the
    library's own order: by dtype alignment, then name)."""
    data = _st_save(tensors, metadata=metadata)
    if not metadata:
        return data
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # cannot happen (same entries, same escapes); keep the library's bytes rather than guess
        return data
    text += b" " * (n - len(text))  # the same length, padded with spaces as safetensors pads to 8-byte alignment
    return data[:8] + text + data[8 + n:]


def write_file(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str],
               extra_metadata: dict[str, str] | None = None) -> int:
    """Write :func:`save_bytes` of ``tensors`` atomically, with ``metadata`` (the format's own keys) plus
    ``extra_metadata`` (the application's, which must not set the format's keys: ValueError); returns the size."""
    reserved = sorted(set(extra_metadata or {}) & set(metadata))
    if reserved:
        raise ValueError(f"extra_metadata must not set the reserved key(s) {reserved}")
    path = Path(path)
    atomic_write_bytes(path, save_bytes(tensors, metadata={**metadata, **(extra_metadata or {})}))
    return path.stat().st_size
