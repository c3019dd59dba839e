"""Context coding against entropy coding (issue 23's better coder): bytes and speed of each file's masks, same process.

    python benchmarks/bench_context_coding.py [--quick] [RUN/model.pemn ...]

With files (``pemn train`` outputs, any coding): each file is re-coded in memory both ways
(:func:`pemn.artifact.recode`, lossless), and per file the report gives the whole file's bytes and the masks' bytes
under ``entropy`` and ``context``, their ratio, bits per masked weight beside H(kept fraction) (the order-0 bound
the entropy coding reaches), the masks by context model, and the median seconds to re-code and to decode each
(:func:`pemn.artifact.parse` plus every mask decoded). Without files: synthetic masks (a 180x600 classifier whose
rows and columns keep unequal shares, one without structure, and without ``--quick`` a 2000-5000-10 one for the
speed on 10 M weights) stand in. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import pemn
from _common import machine
from pemn.artifact import _masks, parse, recode
from pemn.coding import entropy_bits


def _median(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _manifests(art: Any) -> list[list[dict[str, Any]]]:
    return [t.artifact.manifest for t in art.tasks] if art.tasks else [art.manifest]


def _decode_all(data: bytes) -> None:
    art = parse(data)
    for sub in [t.artifact for t in art.tasks] if art.tasks else [art]:
        _masks(sub, "")


def measure(name: str, data: bytes, repeats: int) -> dict[str, Any]:
    coded = {c: recode(data, c) for c in ("entropy", "context")}
    arts = {c: parse(d) for c, d in coded.items()}
    entries = [e for m in _manifests(arts["context"]) for e in m]
    weights = sum(math.prod(e["shape"]) for e in entries)
    ideal = sum(entropy_bits(math.prod(e["shape"]), e["kept"]) for e in entries)
    mask_bytes = {c: sum(e["bytes"] for m in _manifests(a) for e in m) for c, a in arts.items()}
    models: dict[str, int] = {}
    for e in entries:
        models[e.get("model", "order0")] = models.get(e.get("model", "order0"), 0) + 1
    timing = {c: {"recode_s": _median(lambda c=c: recode(data, c), repeats),
                  "decode_s": _median(lambda c=c: _decode_all(coded[c]), repeats)} for c in coded}
    return {
        "file": name, "masked_weights": weights,
        "file_bytes": {c: len(d) for c, d in coded.items()}, "mask_bytes": mask_bytes,
        "ratio_context_over_entropy_file": round(len(coded["context"]) / len(coded["entropy"]), 4),
        "ratio_context_over_entropy_masks": round(mask_bytes["context"] / mask_bytes["entropy"], 4),
        "mask_bits_per_weight": {"order0_bound": round(ideal / weights, 4),
                                 **{c: round(8 * b / weights, 4) for c, b in mask_bytes.items()}},
        "masks_by_model": models,
        "timing": {c: {k: float(f"{v:.4g}") for k, v in t.items()} for c, t in timing.items()},
        "ratio_decode_context_over_entropy": round(timing["context"]["decode_s"] / timing["entropy"]["decode_s"], 3),
    }


def _synthetic(structured: bool, inputs: int = 600, units: int = 180) -> bytes:
    """A converted ``inputs``-``units``-10 classifier at keep 0.1, its layers' scores scaled per row and column (or
    not)."""
    torch.manual_seed(0)
    model = pemn.convert_(nn.Sequential(nn.Linear(inputs, units), nn.ReLU(), nn.Linear(units, 10)),
                          pemn.PEMNConfig(strategy="rp", ratio=1e-2, keep=0.1, seed=0))
    if structured:  # log-normal unit rates, two in five inputs nearly unused
        rng = np.random.default_rng(0)
        with torch.no_grad():
            for mw in pemn.masked_weights(model).values():
                units, fan_in = mw.shape
                factor = np.outer(rng.lognormal(0.0, 0.6, units), np.where(rng.random(fan_in) < 0.4, 0.2, 1.0))
                mw.scores.copy_(torch.from_numpy((rng.random((units, fan_in)) * factor).astype(np.float32)))
    return pemn.artifact.to_bytes(model, coding="entropy")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="pemn artifacts (default: two synthetic classifiers)")
    parser.add_argument("--quick", action="store_true", help="one timing repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    if args.files:
        cases = [(f, Path(f).read_bytes()) for f in args.files]
    else:
        cases = [("synthetic classifier, rows and columns structured", _synthetic(True)),
                 ("synthetic classifier, no structure", _synthetic(False))]
        if not args.quick:  # the decoder's speed on a large mask: 10 M weights in 5,000 rows
            cases.append(("synthetic classifier 2000-5000-10, structured", _synthetic(True, 2000, 5000)))
    print(json.dumps({"benchmark": "context vs entropy mask coding", "machine": machine(), "numpy": np.__version__,
                      "repeats": repeats, "results": [measure(n, d, repeats) for n, d in cases]}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
