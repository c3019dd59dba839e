"""The index's preset zlib dictionary (format versions 3 and 4): the file bytes of the same artifacts with their index
compressed against the core's dictionary (``pemn.artifact.INDEX_DICTIONARY``, what pemn writes), against the first
dictionary (``FIRST_INDEX_DICTIONARY``, which also held strings of the training application; read, no longer
written) and without one, each file encoded for real in this process (``pemn.artifact.encode``). The artifacts:
the slim ConvMixer-256/8 files of bench_size.py (fold_norms + extras_dtype, RP 1e-3), the golden version 3 files
written with the first dictionary, a ``pemn train``-style file with its ``app`` object (tiny-cnn, digits
preprocessing) and a multi-task file (format version 4).

    python benchmarks/bench_index_dictionary.py [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
import zlib
from pathlib import Path

import torch

import pemn
from _common import ROOT, emit, machine, quick_flag
from pemn import artifact
from pemn.training.models import create_model

#: (keep, coding, prototype, fold_norms, extras_dtype): bench_size.py's slim rows (format version 3)
SLIM_ROWS = [(0.5, "packed", "values", True, "int8"), (0.5, "packed", "seed", True, "int8"),
             (0.1, "entropy", "values", True, "float16"), (0.1, "entropy", "values", True, "int8"),
             (0.5, "packed", "values", False, "int8")]


def _compress(text: bytes, zdict: bytes | None) -> bytes:
    if zdict is None:
        return zlib.compress(text, 9)
    deflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY, zdict)
    return deflater.compress(text) + deflater.flush()


def compare(name: str, data: bytes) -> dict:
    """The file ``data`` re-encoded with its index compressed three ways (same index text, same tensors)."""
    art = artifact.parse(data)
    assert art.format_version >= 3, name
    raw = art.tensors["index"].numpy().tobytes()
    text = zlib.decompressobj(zdict=artifact.index_dictionary(raw) or b"").decompress(raw)
    sizes = {}
    for label, zdict in (("core", artifact.INDEX_DICTIONARY), ("first", artifact.FIRST_INDEX_DICTIONARY),
                         ("none", None)):
        index = _compress(text, zdict)
        encoded = artifact.encode(art, index=index)
        if zdict is not None:  # what the reader accepts: both dictionaries load
            assert json.loads(json.dumps(artifact.parse(encoded).manifest)) == art.manifest
        sizes[label] = {"file_bytes": len(encoded), "index_bytes": len(index)}
    payload = sum(v.numel() * v.element_size() for k, v in art.tensors.items() if k != "index")
    core, first = sizes["core"], sizes["first"]
    return {"file": name, "format_version": art.format_version, "index_text_bytes": len(text),
            "payload_bytes": payload, "sizes": sizes,
            "header_and_index_bytes": {k: v["file_bytes"] - payload for k, v in sizes.items()},
            "core_minus_first_file_bytes": core["file_bytes"] - first["file_bytes"],
            "core_over_first_index_ratio": core["index_bytes"] / first["index_bytes"]}


def _slim(model_name: str, keep: float, coding: str, prototype: str, fold: bool, extras: str | None) -> bytes:
    torch.manual_seed(0)
    model = pemn.convert_(create_model(model_name), pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=keep))
    return artifact.to_bytes(model, coding=coding, prototype=prototype, fold_norms=fold, extras_dtype=extras)


def _app_file() -> bytes:
    """A file as ``pemn train`` writes it: fold_norms + int8 extras and the application's app object."""
    from pemn.training.artifacts import image_app
    from pemn.training.data import dataset_info

    torch.manual_seed(0)
    info = dataset_info("digits")
    model = pemn.convert_(create_model("tiny-cnn", num_classes=info.num_classes, in_channels=info.in_channels,
                                       image_size=info.image_size),
                          pemn.PEMNConfig(strategy="rp", ratio=1e-2, keep=0.5))
    return artifact.to_bytes(model, coding="entropy", fold_norms=True, extras_dtype="int8",
                             app=image_app("tiny-cnn", info))


def _task_file() -> bytes:
    """A multi-task file (format version 4): two tasks of one prototype."""
    from pemn import taskset

    torch.manual_seed(0)
    model = pemn.convert_(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)),
                          pemn.PEMNConfig(strategy="rp", ratio=1e-2, keep=0.5))
    taskset.add_task(model, "t0", activate=True)
    taskset.add_task(model, "t1", activate=True)
    with tempfile.TemporaryDirectory() as d:
        path = pemn.save(model, Path(d) / "tasks.pemn", coding="entropy")
        return path.read_bytes()


def main(argv: list[str] | None = None) -> dict:
    model = "convmixer-32-2" if quick_flag(argv) else "convmixer-256-8"
    files = [(f"{model} keep {r[0]} {r[1]} {r[2]}{' fold' if r[3] else ''}+{r[4]}", _slim(model, *r))
             for r in SLIM_ROWS]
    files += [(p.name, p.read_bytes()) for p in sorted((ROOT / "tests" / "data").glob("golden_v3_*.pemn"))
              if "_core_" not in p.name]  # the files written with the first dictionary (their twins: the same)
    files += [("tiny-cnn digits, pemn train's app, fold+int8", _app_file()), ("two tasks (format version 4)",
                                                                            _task_file())]
    rows = [compare(name, data) for name, data in files]
    return {"benchmark": "index_dictionary", "machine": machine(),
            "dictionary_bytes": {"core": len(artifact.INDEX_DICTIONARY), "first": len(artifact.FIRST_INDEX_DICTIONARY)},
            "largest_growth_file_bytes": max(r["core_minus_first_file_bytes"] for r in rows), "results": rows}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
