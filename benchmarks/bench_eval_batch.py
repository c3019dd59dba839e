"""Evaluation batch size on the CPU: test-set evaluation (pemn.training.evaluation.evaluate) of RP-converted
models (ConvMixer-256/8 and ResNet-20 on CIFAR-sized inputs, LeNet-5 on MNIST-sized ones) at several batch sizes,
interleaved, in one process.

    python benchmarks/bench_eval_batch.py [--quick] [--threads N] [--images N] [--models NAME ...] [--batches B ...]

Prints JSON: per model, median seconds per batch size and images/s, and the ratio of the default batch
(DEFAULT_EVAL_BATCH) to the fastest one and of batch 512 to it. This chose pemn.training.evaluation.DEFAULT_EVAL_BATCH.
"""

from __future__ import annotations

import argparse
import sys

import torch

import pemn
from _common import alternate, emit, machine
from pemn.training.evaluation import DEFAULT_EVAL_BATCH, evaluate
from pemn.training.models import create_model

#: model -> (in_channels, image_size) of its dataset
MODELS = {"convmixer-256-8": (3, 32), "resnet20": (3, 32), "lenet5": (1, 28)}
BATCHES = (16, 32, 64, 128, 256, 512)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--images", type=int, default=None, help="images per evaluation (default: 1024; quick: 64)")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    p.add_argument("--batches", nargs="+", type=int, default=None)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    n = args.images or (64 if args.quick else 1024)
    repeats = 1 if args.quick else 3
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or (["lenet5"] if args.quick else list(MODELS))
    batches = tuple(args.batches or ((16, DEFAULT_EVAL_BATCH) if args.quick else BATCHES))
    if DEFAULT_EVAL_BATCH not in batches:
        batches = (*batches, DEFAULT_EVAL_BATCH)
    rows = []
    for name in models:
        channels, size = MODELS[name]
        torch.manual_seed(0)
        model = pemn.convert_(create_model(name, num_classes=10, in_channels=channels, image_size=size),
                              pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=0.5, seed=0)).eval()
        images, labels = torch.randn(n, channels, size, size), torch.randint(0, 10, (n,))
        timings = alternate({f"batch_{b}": (lambda b=b, m=model, x=images, y=labels: evaluate(m, x, y, batch_size=b))
                             for b in batches}, repeats=repeats, warmup=1)
        best = min(timings, key=lambda k: timings[k]["median_s"])
        default = timings[f"batch_{DEFAULT_EVAL_BATCH}"]["median_s"]
        rows.append({"model": name, "input": [channels, size, size],
                     "results": {k: {**t, "images_per_s": n / t["median_s"]} for k, t in timings.items()},
                     "fastest": best, "ratio_default_over_fastest": default / timings[best]["median_s"],
                     "ratio_512_over_default": (timings["batch_512"]["median_s"] / default
                                                if "batch_512" in timings else None)})
    doc = {"benchmark": "eval_batch", "what": f"evaluate() of RP 1e-3 keep 0.5 models on {n} random images, no grad, "
           "eval mode", "machine": machine(), "images": n, "default_eval_batch": DEFAULT_EVAL_BATCH, "models": rows}
    emit(doc)
    return doc


if __name__ == "__main__":
    main()
