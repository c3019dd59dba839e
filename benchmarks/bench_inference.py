"""Inference: a frozen-mask model and a materialized model vs the dense model, forward only.

    python benchmarks/bench_inference.py [--quick]
"""

from __future__ import annotations

import sys

import torch

import pemn
from _common import alternate, emit, machine, quick_flag
from pemn.training.models import create_model


def bench(model_name: str, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    dense = create_model(model_name).eval()
    frozen = pemn.freeze_masks(pemn.convert_(create_model(model_name), pemn.PEMNConfig(ratio=1e-3))).eval()
    materialized = pemn.materialize(frozen).eval()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def fwd(model):
        def run():
            with torch.inference_mode():
                model(x)
        return run

    t = alternate({"dense": fwd(dense), "frozen": fwd(frozen), "materialized": fwd(materialized)}, repeats=repeats)
    med = {k: v["median_s"] for k, v in t.items()}
    return {"model": model_name, "batch": batch, "timings": t,
            "ratio_materialized_over_dense": med["materialized"] / med["dense"],
            "ratio_frozen_over_dense": med["frozen"] / med["dense"],
            "bars": {"materialized_over_dense": 1.02, "frozen_over_dense": 1.10}}


def main(argv: list[str] | None = None) -> dict:
    cases = [("convmixer-32-2", 8, 3)] if quick_flag(argv) else [("convmixer-256-8", 64, 15), ("resnet56", 128, 15)]
    return {"benchmark": "inference", "machine": machine(), "results": [bench(*c) for c in cases]}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
