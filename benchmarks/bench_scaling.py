"""Scaling: convert + save + load for models of about 1M, 10M and 100M+ parameters, each in a fresh process:
time and peak RSS, packed and entropy coding, against the model's dense fp32 size.

    python benchmarks/bench_scaling.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

import pemn
from _common import emit, isolated, machine, peak_rss_mb, quick_flag
from pemn.training.models import create_model


def run(model_name: str, coding: str) -> dict:
    """In a fresh process: build, convert, save, build again, load; time each step."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = create_model(model_name)
    params = sum(p.numel() for p in model.parameters())
    t1 = time.perf_counter()
    pemn.convert_(model, pemn.PEMNConfig(strategy="rp", ratio=1e-3))
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = pemn.save(model, Path(d) / "m.pemn", coding=coding)
        t3 = time.perf_counter()
        del model
        fresh = create_model(model_name)
        t4 = time.perf_counter()
        pemn.load(path, fresh)
        t5 = time.perf_counter()
        size = path.stat().st_size
    return {"model": model_name, "coding": coding, "parameters": params, "dense_fp32_mb": params * 4 / 2**20,
            "file_bytes": size, "build_s": t1 - t0, "convert_s": t2 - t1, "save_s": t3 - t2,
            "build_again_s": t4 - t3, "load_s": t5 - t4, "rss_after_load_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> dict:
    sizes = ["convmixer-32-2", "vit-64-2"] if quick_flag(argv) else ["convmixer-256-8", "vit-512-6", "vit-1024-12"]
    rows = []
    for name in sizes:
        for coding in ("packed", "entropy"):
            r = isolated("bench_scaling", "run", model_name=name, coding=coding)
            r["peak_rss_over_dense_fp32"] = r["peak_rss_mb"] / r["dense_fp32_mb"]
            r["seconds_per_million_params"] = {k: r[k] / (r["parameters"] / 1e6)
                                               for k in ("convert_s", "save_s", "load_s")}
            rows.append(r)
    return {"benchmark": "scaling", "machine": machine(), "bar_peak_rss_over_dense_fp32_for_100M": 3.0, "results": rows}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
