"""Memory: peak RSS of training an RP model vs training the dense model (each in a fresh process), and proof
from the model's own tensors that the random weights are held once, not once per layer.

    python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import pemn
from _common import emit, isolated, machine, peak_rss_mb, quick_flag
from pemn.convert import find_bank, masked_weights
from pemn.training.models import create_model


def train_peak(model_name: str, strategy: str, batch: int, steps: int) -> dict:
    """Runs in a fresh process: build, (convert,) train ``steps`` steps; report RSS before and at peak."""
    torch.manual_seed(0)
    model = create_model(model_name)
    if strategy != "dense":
        pemn.convert_(model, pemn.PEMNConfig(strategy=strategy, ratio=1e-3))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    before = peak_rss_mb()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {"model": model_name, "strategy": strategy, "rss_before_training_mb": before}


def tensor_accounting(model_name: str) -> dict:
    model = pemn.convert_(create_model(model_name), pemn.PEMNConfig(strategy="rp", ratio=1e-3))
    bank = find_bank(model)
    mws = masked_weights(model)
    storages = {mw.base().untyped_storage().data_ptr() for mw in mws.values() if mw.scale == 1.0}
    return {"masked_weights": sum(mw.numel for mw in mws.values()), "layers": len(mws),
            "distinct_weight_storages": len(storages),
            "bank_values_held": sum(b.numel() for b in bank.buffers()),
            "unique_prototype_values": bank.unique_values}


def main(argv: list[str] | None = None) -> dict:
    quick = quick_flag(argv)
    model, batch, steps = ("convmixer-32-2", 8, 1) if quick else ("convmixer-512-8", 64, 3)
    dense = isolated("bench_memory", "train_peak", model_name=model, strategy="dense", batch=batch, steps=steps)
    rp = isolated("bench_memory", "train_peak", model_name=model, strategy="rp", batch=batch, steps=steps)
    return {"benchmark": "memory", "machine": machine(), "model": model, "batch": batch, "steps": steps,
            "dense": dense, "pemn_rp": rp, "ratio_peak_rss_rp_over_dense": rp["peak_rss_mb"] / dense["peak_rss_mb"],
            "bar": 1.05, "tensors": tensor_accounting(model)}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
