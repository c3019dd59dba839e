"""Evaluation batch size on the CPU: test-set evaluation (pemn.training.evaluation.evaluate) of an RP-converted
ConvMixer-256/8 on CIFAR-sized inputs with batch 100, 128, 256 and 512, interleaved, in one process.

    python benchmarks/bench_eval_batch.py [--quick]

Prints JSON: median seconds per batch size, images/s, and the ratio batch 512 / batch 100 (> 1: 512 is slower).
This chose pemn.training.evaluation.DEFAULT_EVAL_BATCH.
"""

from __future__ import annotations

import sys

import torch

import pemn
from _common import alternate, emit, machine, quick_flag
from pemn.training.evaluation import DEFAULT_EVAL_BATCH, evaluate
from pemn.training.models import create_model

BATCHES = (100, 128, 256, 512)


def main(argv: list[str] | None = None) -> None:
    quick = quick_flag(argv)
    model_name = "convmixer-256-8"
    n, repeats = (512, 1) if quick else (2048, 3)
    torch.manual_seed(0)
    model = pemn.convert_(create_model(model_name, num_classes=10, in_channels=3, image_size=32),
                          pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=0.5, seed=0)).eval()
    images = torch.randn(n, 3, 32, 32)
    labels = torch.randint(0, 10, (n,))
    timings = alternate({f"batch_{b}": (lambda b=b: evaluate(model, images, labels, batch_size=b)) for b in BATCHES},
                        repeats=repeats, warmup=1)
    results = {name: {**t, "images_per_s": n / t["median_s"]} for name, t in timings.items()}
    emit({"benchmark": "eval_batch", "what": f"evaluate() of {model_name} (rp 1e-3, keep 0.5) on {n} random "
          "3x32x32 images, no grad, eval mode", "machine": machine(), "images": n, "results": results,
          "ratio_512_over_100": timings["batch_512"]["median_s"] / timings["batch_100"]["median_s"],
          "default_eval_batch": DEFAULT_EVAL_BATCH})


if __name__ == "__main__":
    main(sys.argv[1:])
