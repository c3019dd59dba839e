"""RandAugment: pemn's per-image torchvision RandAugment (the ``convmixer`` recipe) vs kornia's in 8 groups (the
previous recipe, now ``convmixer-kornia``), in the same process, alone and as part of a ``pemn train`` step of the
convmixer recipe (augment the batch, then one AdamW step of an RP-converted ConvMixer-256/8).

    python benchmarks/bench_augment.py [--quick] [--batch N] [--step-batch N] [--threads N] [--device cpu|cuda]

An epoch of ``pemn train`` is (batches) x (augment + step) on in-memory tensors, so
``ratio_epoch_new_over_old`` (the ratio of the augment+step times) is the epoch-time ratio; the bar is 1.10.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

import pemn
from _common import alternate, emit, machine
from pemn.training.augment import build_train_transform
from pemn.training.data import dataset_info
from pemn.training.models import create_model

RECIPES = {"torchvision_per_image": "convmixer", "kornia_groups8": "convmixer-kornia"}


def _batch(n: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)


def bench_transforms(batch: int, repeats: int, device: torch.device) -> dict:
    info = dataset_info("cifar10")
    x = _batch(batch, device)
    tfs = {name: build_train_transform(recipe, info) for name, recipe in RECIPES.items()}
    ras = {name: next(m for m in tf._pre if type(m).__name__ in ("RandAugment", "_Grouped"))  # the RandAugment
           for name, tf in tfs.items()}
    xf = x.float() / 255
    t_tf = alternate({name: (lambda tf=tf: tf(x)) for name, tf in tfs.items()}, repeats=repeats)
    t_ra = alternate({name: (lambda ra=ra: ra(xf)) for name, ra in ras.items()}, repeats=repeats)
    med_tf = {k: v["median_s"] for k, v in t_tf.items()}
    med_ra = {k: v["median_s"] for k, v in t_ra.items()}
    return {
        "batch": batch, "randaugment_only": t_ra, "whole_recipe": t_tf,
        "images_per_s_recipe": {k: batch / v for k, v in med_tf.items()},
        "ratio_randaugment_new_over_old": med_ra["torchvision_per_image"] / med_ra["kornia_groups8"],
        "ratio_recipe_new_over_old": med_tf["torchvision_per_image"] / med_tf["kornia_groups8"],
    }


def bench_epoch(model_name: str, batch: int, repeats: int, device: torch.device) -> dict:
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    model = pemn.convert_(create_model(model_name), pemn.PEMNConfig(strategy="rp", ratio=1e-3)).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=5e-3)
    x = _batch(batch, device)
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1)).to(device)
    amp = device.type == "cuda"

    def step(tf) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = nn.functional.cross_entropy(model(tf(x)), y)
        loss.backward()
        opt.step()

    tfs = {name: build_train_transform(recipe, info) for name, recipe in RECIPES.items()}
    t = alternate({name: (lambda tf=tf: step(tf)) for name, tf in tfs.items()}, repeats=repeats)
    med = {k: v["median_s"] for k, v in t.items()}
    return {"model": model_name, "batch": batch, "amp": amp, "augment_plus_step": t,
            "ratio_epoch_new_over_old": med["torchvision_per_image"] / med["kornia_groups8"], "bar": 1.10}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    p.add_argument("--batch", type=int, default=512, help="augmentation batch (the recipe's: 512)")
    p.add_argument("--step-batch", type=int, default=None, help="batch of the augment+step timing "
                   "(default: --batch on a GPU, 64 on a CPU, where a ConvMixer-256/8 step at 512 takes minutes)")
    p.add_argument("--model", default="convmixer-256-8")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        args.batch, args.step_batch, args.model, args.repeats = 16, 4, "convmixer-32-2", 2
    step_batch = args.step_batch or (args.batch if device.type == "cuda" else 64)
    return {"benchmark": "augment", "machine": machine(), "device": str(device),
            "transforms": bench_transforms(args.batch, args.repeats, device),
            "epoch": bench_epoch(args.model, step_batch, max(2, args.repeats // 2), device)}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
