"""What ``pemn recode`` does: an artifact's masks re-coded losslessly into another coding
(:func:`pemn.artifact.recode`), written atomically, with the sizes before and after."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pemn.artifact import Artifact, parse, recode
from pemn.errors import FormatError
from pemn.fileio import atomic_write_bytes

__all__ = ["RecodeReport", "recode_model_file"]


@dataclass(frozen=True)
class RecodeReport:
    """What ``pemn recode`` reports: ``record``, the JSON object of ``--json`` (``input``, ``output``,
    ``coding_before``, ``coding``, ``file_bytes_before``, ``file_bytes``, ``mask_bytes_before``, ``mask_bytes``,
    ``ratio`` (file bytes after / before), ``layers_by_model`` (how many masks each coding model took: for
    ``context`` its :data:`pemn.coding.CONTEXT_MODELS`)), and ``lines``, the text."""

    record: dict[str, Any]
    lines: list[str]


def _manifests(art: Artifact) -> list[list[dict[str, Any]]]:
    return [t.artifact.manifest for t in art.tasks] if art.tasks else [art.manifest]


def recode_model_file(artifact: str | os.PathLike[str], coding: str, *,
                      output: str | os.PathLike[str] | None = None) -> RecodeReport:
    """Write the artifact at ``artifact`` with its masks in ``coding`` to ``output`` (default: beside it,
    ``<stem>.<coding>.pemn``; it may be the input itself: the write is atomic and the result checked first)."""
    source = Path(artifact)
    if source.is_dir():
        raise FormatError(f"{source}: is a directory, not a pemn artifact (give its model.pemn)")
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no pemn artifact at {str(source)!r}") from None
    before = parse(data, source=str(source))
    out = recode(data, coding, source=str(source))
    after = parse(out)
    target = Path(output) if output is not None else source.with_name(f"{source.stem}.{coding}.pemn")
    atomic_write_bytes(target, out)
    models: dict[str, int] = {}
    for manifest in _manifests(after):
        for e in manifest:
            model = e.get("model", "order0") if coding == "context" else coding
            models[model] = models.get(model, 0) + 1
    mask_before, mask_after = (sum(e["bytes"] for m in _manifests(a) for e in m) for a in (before, after))
    record = {"input": str(source), "output": str(target), "coding_before": before.coding, "coding": coding,
              "file_bytes_before": len(data), "file_bytes": len(out), "mask_bytes_before": mask_before,
              "mask_bytes": mask_after, "ratio": round(len(out) / len(data), 4), "layers_by_model": models}
    lines = [f"recoded {source} ({before.coding}, {len(data):,} bytes) -> {target} ({coding}, {len(out):,} bytes, "
             f"{len(out) / len(data):.3f}x); masks {mask_before:,} -> {mask_after:,} bytes; masks by model: "
             + ", ".join(f"{k} {v}" for k, v in models.items()),
             "the model is the same bit for bit (masks re-coded losslessly and checked; prototype, extras and "
             "metadata kept)"]
    return RecodeReport(record, lines)
