"""Artifact size: file bytes vs the sum of its payload (masks, prototype, extras, norm statistics) for
ConvMixer-256/8, bytes by component, bits per masked weight against H(keep), the paper ratio and the honest ratio.

    python benchmarks/bench_size.py [--quick]
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import torch

import pemn
from _common import emit, machine, quick_flag
from pemn.coding import entropy_bits
from pemn.training.models import create_model


def measure(model_name: str, keep: float, coding: str, prototype: str) -> dict:
    torch.manual_seed(0)
    model = pemn.convert_(create_model(model_name), pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=keep))
    with tempfile.TemporaryDirectory() as d:
        path = pemn.save(model, Path(d) / "m.pemn", coding=coding, prototype=prototype)
        s = pemn.summary(path, verbose=False)
    payload = s.bytes["masks"] + s.bytes["prototype"] + s.bytes["extras"] + s.bytes["norm_stats"]
    ideal = sum(entropy_bits(lay.masked_weights, lay.kept) for lay in s.layers)
    return {"model": model_name, "keep": keep, "coding": coding, "prototype": prototype,
            "file_bytes": s.file_bytes, "bytes": s.bytes, "payload_bytes": payload,
            "overhead_fraction": (s.file_bytes - payload) / s.file_bytes,
            "mask_bits_per_weight": 8 * s.bytes["masks"] / s.masked_weights,
            "entropy_bound_bits_per_weight": ideal / s.masked_weights,
            "paper_ratio": s.paper_ratio, "honest_ratio": s.honest_ratio,
            "dense_fp32_bytes": s.dense_bytes,
            "extras_share": (s.bytes["extras"] + s.bytes["norm_stats"]) / s.file_bytes,
            "masked_weights": s.masked_weights, "unique_values": s.unique_values,
            "packed_mask_bytes_expected": sum(math.ceil(lay.masked_weights / 8) for lay in s.layers)}


def main(argv: list[str] | None = None) -> dict:
    model = "convmixer-32-2" if quick_flag(argv) else "convmixer-256-8"
    rows = [measure(model, keep, coding, proto)
            for keep, coding, proto in [(0.5, "packed", "values"), (0.5, "entropy", "values"),
                                        (0.5, "packed", "seed"), (0.1, "entropy", "values"),
                                        (0.1, "entropy", "seed")]]
    return {"benchmark": "artifact_size", "machine": machine(), "bar_overhead_fraction": 0.02, "results": rows}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
