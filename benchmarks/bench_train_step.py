"""Training-step overhead: one optimizer step of an RP-converted model vs the same architecture trained dense,
and vs a reference edge-popup that fully sorts the scores every step (as the original research code does).

    python benchmarks/bench_train_step.py [--quick]
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn

import pemn
import pemn.masking
from _common import alternate, emit, machine, quick_flag
from pemn.training.models import create_model


def reference_topk(magnitudes: torch.Tensor, kept: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """hidden-networks' GetSubnet: sort all scores, zero the lowest ``numel - kept`` (``pemn.masking.topk_mask``'s
    signature: the mask as ``dtype``)."""
    flat = magnitudes.flatten()
    _, idx = flat.sort()
    out = torch.zeros_like(flat, dtype=torch.bool)
    out[idx[flat.numel() - kept:]] = True
    return out.view_as(magnitudes).to(dtype)


@contextlib.contextmanager
def reference_masking() -> Iterator[None]:
    original = pemn.masking.topk_mask
    pemn.masking.topk_mask = reference_topk
    try:
        yield
    finally:
        pemn.masking.topk_mask = original


def make_step(model: nn.Module, batch: int, image: int, classes: int, reference: bool = False) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image, image, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    model.train()

    def step() -> None:
        ctx = reference_masking() if reference else contextlib.nullcontext()
        with ctx:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    return step


def bench(model_name: str, batch: int, repeats: int, image: int = 32) -> dict:
    cfg = pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=0.5, seed=0)
    torch.manual_seed(0)
    dense = create_model(model_name)
    masked = pemn.convert_(create_model(model_name), cfg)
    ref = pemn.convert_(create_model(model_name), cfg)
    variants = {
        "dense": make_step(dense, batch, image, 10),
        "pemn_rp": make_step(masked, batch, image, 10),
        "reference_full_sort": make_step(ref, batch, image, 10, reference=True),
    }
    t = alternate(variants, repeats=repeats)
    med = {k: v["median_s"] for k, v in t.items()}
    return {
        "model": model_name, "batch": batch, "timings": t,
        "images_per_s": {k: batch / v for k, v in med.items()},
        "ratio_pemn_over_dense": med["pemn_rp"] / med["dense"],
        "ratio_pemn_over_reference": med["pemn_rp"] / med["reference_full_sort"],
        "bar_pemn_over_dense": 1.10,
    }


def main(argv: list[str] | None = None) -> dict:
    quick = quick_flag(argv)
    if quick:
        cases = [("convmixer-32-2", 8, 2), ("resnet20", 8, 2)]
    else:
        cases = [("convmixer-256-8", 64, 7), ("resnet56", 128, 7)]
    doc = {"benchmark": "train_step", "machine": machine(),
           "results": [bench(name, batch, repeats) for name, batch, repeats in cases]}
    return doc


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
