"""Quantized baselines: one training step with quantization-aware training (each method) vs the same model trained
dense, in the same process, and the load time of a quantized file (``pemn-quant``) vs the dense ``model.safetensors``
of the same model, as ``pemn eval`` loads them (a fresh model built outside the timed region).

    python benchmarks/bench_quantize.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from _common import alternate, emit, machine, quick_flag
from pemn.training.models import create_model
from pemn.training.quantfile import load_quant, save_quant
from pemn.training.quantize import QAT_METHODS, quantize_

#: The QAT methods timed (int2 costs what int4 does: the same clipping search).
STEP_METHODS = ("binary", "ternary", "int4", "int8")


def _model(name: str, shape: tuple[int, int, int], method: str | None) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=shape[0], image_size=shape[1])
    if method is not None:
        quantize_(model, method)
    return model


def make_step(model: nn.Module, batch: int, shape: tuple[int, int, int]) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def bench_step(name: str, shape: tuple[int, int, int], batch: int, repeats: int) -> dict:
    variants = {"dense": make_step(_model(name, shape, None), batch, shape)}
    for method in STEP_METHODS:
        variants[method] = make_step(_model(name, shape, method), batch, shape)
    t = alternate(variants, repeats=repeats)
    dense = t["dense"]["median_s"]
    return {"model": name, "batch": batch, "timings": t,
            "ratio_over_dense": {m: t[m]["median_s"] / dense for m in STEP_METHODS}}


def bench_load(name: str, shape: tuple[int, int, int], repeats: int) -> dict:
    out: dict = {"model": name}
    with tempfile.TemporaryDirectory() as d:
        dense_path = Path(d) / "model.safetensors"
        dense = _model(name, shape, None)
        save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, str(dense_path))
        out["dense_bytes"] = dense_path.stat().st_size
        variants = {}
        fresh = {m: [_model(name, shape, None) for _ in range(repeats + 1)] for m in ("dense", "binary", "int4")}
        it = {m: iter(v) for m, v in fresh.items()}
        variants["dense"] = lambda: next(it["dense"]).load_state_dict(load_file(str(dense_path)))
        for method in ("binary", "int4"):
            path = Path(d) / f"{method}.quant.safetensors"
            save_quant(_model(name, shape, method), path, method)
            out[f"{method}_bytes"] = path.stat().st_size
            variants[method] = (lambda p=path, m=method: load_quant(p, next(it[m])))
        t = alternate(variants, repeats=repeats)
    dense = t["dense"]["median_s"]
    out.update(timings=t, ratio_load_over_dense={m: t[m]["median_s"] / dense for m in ("binary", "int4")})
    return out


def main(argv: list[str] | None = None) -> dict:
    quick = quick_flag(argv)
    if quick:
        steps = [("tiny-cnn", (1, 8, 8), 16, 2)]
        loads = [("tiny-cnn", (1, 8, 8), 2)]
    else:
        steps = [("lenet5", (1, 28, 28), 128, 9), ("resnet20", (3, 32, 32), 64, 5)]
        loads = [("resnet20", (3, 32, 32), 9), ("lenet5", (1, 28, 28), 9)]
    assert set(STEP_METHODS) <= set(QAT_METHODS)
    return {"benchmark": "quantize", "machine": machine(),
            "train_step": [bench_step(*c) for c in steps], "load": [bench_load(*c) for c in loads]}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
