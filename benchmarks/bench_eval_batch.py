"""Evaluation batch size on the CPU: test-set evaluation (pemn.training.evaluation.evaluate) of RP-converted
models (ConvMixer-256/8 and ResNet-20 on CIFAR-sized inputs, LeNet-5 on MNIST-sized ones) at several batch sizes,
interleaved, in one process.

    python benchmarks/bench_eval_batch.py [--quick] [--threads N] [--images N] [--models NAME ...] [--batches B ...]

Prints JSON: per model, median seconds per batch size and images/s, and the ratio of the default batch
(DEFAULT_EVAL_BATCH) to the fastest one and of batch 512 to it. This chose pemn.training.evaluation.DEFAULT_EVAL_BATCH.
"""

from __future__ import annotations

import sys

import torch

import pemn
from _common import alternate, emit, machine, quick_flag
from pemn.training.evaluation import DEFAULT_EVAL_BATCH, evaluate
from pemn.training.models import create_model

#: model -> (in_channels, image_size) of its dataset
MODELS = {"convmixer-256-8": (3, 32), "resnet20": (3, 32), "lenet5": (1, 28)}
BATCHES = (16, 32, 64, 128, 256, 512)


def _values(argv: list[str], flag: str) -> list[str]:
    if flag not in argv:
        return []
    out = []
    for word in argv[argv.index(flag) + 1:]:
        if word.startswith("--"):
            break
        out.append(word)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = quick_flag(argv)
    n, repeats = (64, 1) if quick else (1024, 3)
    n = int((_values(argv, "--images") or [n])[0])
    if _values(argv, "--threads"):
        torch.set_num_threads(int(_values(argv, "--threads")[0]))
    models = _values(argv, "--models") or (["lenet5"] if quick else list(MODELS))
    batches = tuple(int(b) for b in _values(argv, "--batches")) or ((16, DEFAULT_EVAL_BATCH) if quick else BATCHES)
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
