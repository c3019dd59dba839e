"""Artifact size: file bytes vs the sum of its payload (masks, prototype, extras, norm statistics, int8 scales)
for ConvMixer-256/8, bytes by component, bits per masked weight against H(keep), the paper ratio and the honest
ratio (dense fp32 bytes of the whole model / file bytes: the dense model is the competitor), for the default
artifact and the slim ones (``fold_norms=True``, ``extras_dtype="float16"`` / ``"int8"``), with the model's
BatchNorms at init and, for the slim rows, also with calibrated running statistics (see ``ROWS``).

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

#: (keep, coding, prototype, fold_norms, extras_dtype[, calibrated]): the default artifact, then the slim ones.
#: The model is untrained: its BatchNorms hold their init state (γ = 1, β = 0, μ = 0, σ² = 1), constant per
#: tensor, which int8 stores exactly. "calibrated" rows first run the model in train mode over random inputs so
#: the running statistics differ per channel as in a real network (γ and β stay at init): with those, the
#: error-bounded int8 rule (pemn.extras) decides per tensor as it would on a trained file.
ROWS = [(0.5, "packed", "values", False, None), (0.5, "entropy", "values", False, None),
        (0.5, "packed", "seed", False, None), (0.1, "entropy", "values", False, None),
        (0.1, "entropy", "seed", False, None),
        (0.5, "packed", "values", True, None), (0.5, "packed", "values", True, "float16"),
        (0.5, "packed", "values", False, "int8"), (0.5, "packed", "values", True, "int8"),
        (0.5, "packed", "seed", True, "int8"), (0.1, "entropy", "values", True, "float16"),
        (0.1, "entropy", "values", True, "int8"), (0.1, "entropy", "seed", True, "int8"),
        (0.5, "packed", "values", True, "float16", True), (0.5, "packed", "values", True, "int8", True),
        (0.1, "entropy", "values", True, "float16", True), (0.1, "entropy", "values", True, "int8", True)]


def calibrate(model: torch.nn.Module, batches: int = 4, batch_size: int = 32, image_size: int = 32) -> None:
    """Running statistics from train-mode forward passes over N(0, 1) images (cumulative average)."""
    g = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch_size, 3, image_size, image_size, generator=g))
    model.eval()


def measure(model_name: str, keep: float, coding: str, prototype: str, fold_norms: bool = False,
            extras_dtype: str | None = None, calibrated: bool = False) -> dict:
    torch.manual_seed(0)
    model = pemn.convert_(create_model(model_name), pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=keep))
    if calibrated:
        calibrate(model)
    with tempfile.TemporaryDirectory() as d:
        path = pemn.save(model, Path(d) / "m.pemn", coding=coding, prototype=prototype, fold_norms=fold_norms,
                         extras_dtype=extras_dtype)
        s = pemn.summary(path, verbose=False)
        stored = [e[2] for e in pemn.artifact.read(path).dense]
    payload = sum(s.bytes[k] for k in ("masks", "prototype", "extras", "norm_stats", "scales"))
    ideal = sum(entropy_bits(lay.masked_weights, lay.kept) for lay in s.layers)
    return {"model": model_name, "keep": keep, "coding": coding, "prototype": prototype,
            "fold_norms": fold_norms, "extras_dtype": extras_dtype or "float32",
            "statistics": "calibrated" if calibrated else "init",
            "stored_dtypes": {t: stored.count(t) for t in sorted(set(stored))},
            "file_bytes": s.file_bytes, "bytes": s.bytes, "payload_bytes": payload,
            "overhead_fraction": (s.file_bytes - payload) / s.file_bytes,
            "mask_bits_per_weight": 8 * s.bytes["masks"] / s.masked_weights,
            "entropy_bound_bits_per_weight": ideal / s.masked_weights,
            "paper_ratio": s.paper_ratio, "honest_ratio": s.honest_ratio,
            "dense_fp32_bytes": s.dense_bytes,
            "extras_share": (s.bytes["extras"] + s.bytes["norm_stats"] + s.bytes["scales"]) / s.file_bytes,
            "masked_weights": s.masked_weights, "unique_values": s.unique_values,
            "packed_mask_bytes_expected": sum(math.ceil(lay.masked_weights / 8) for lay in s.layers)}


def main(argv: list[str] | None = None) -> dict:
    model = "convmixer-32-2" if quick_flag(argv) else "convmixer-256-8"
    rows = [measure(model, *row) for row in ROWS]
    return {"benchmark": "artifact_size", "machine": machine(), "bar_overhead_fraction": 0.02,
            "bar_honest_ratio": {"keep 0.5 packed": 28.0, "keep 0.1 entropy": 50.0}, "results": rows}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
