"""Language-model training step: one AdamW step of ``gpt-128-4`` (nanoGPT's CPU setting: context 64, batch 12,
vocabulary 65) trained dense vs masked by pemn (mask and rp 1e-3, keep 0.5), timed alternately in one process.

    python benchmarks/bench_lm_step.py [--quick] [--threads N] [--selection-bound]

``--selection-bound`` adds ``pemn_mask_no_selection``: the mask model's step with the per-weight threshold
selection replaced by a fixed threshold (every other pass of the masked product unchanged; the masks are then not
the top-k, so this is not a training variant): the ratio any faster exact selection could reach at best.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

import pemn
import pemn.masking
from _common import alternate, emit, machine, quick_flag
from pemn.training.models import create_model


def make_step(model: nn.Module, batch: int, block: int, vocab: int) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, block), generator=g)
    y = torch.randint(0, vocab, (batch, block), generator=g)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        nn.functional.cross_entropy(logits.view(-1, vocab), y.view(-1)).backward()
        opt.step()

    return step


@contextmanager
def _no_selection() -> Iterator[None]:
    """While open, the masked product skips its selection: a fixed threshold and no tie (the passes over the
    weight, the comparison included, cost what they cost with the exact threshold; only the selection is gone)."""
    selection = pemn.masking._kth_smallest_in_place
    pemn.masking._kth_smallest_in_place = lambda magnitudes, rank: (0.01, False)
    try:
        yield
    finally:
        pemn.masking._kth_smallest_in_place = selection


def _without_selection(step: Callable[[], None]) -> Callable[[], None]:
    def timed() -> None:
        with _no_selection():
            step()
    return timed


def bench(model_name: str, batch: int, block: int, vocab: int, repeats: int, selection_bound: bool = False) -> dict:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return create_model(model_name, num_classes=vocab, block_size=block)

    dense = build()
    variants = {"dense": make_step(dense, batch, block, vocab)}
    configs = {"pemn_mask": pemn.PEMNConfig(strategy="mask", keep=0.5, seed=0),
               "pemn_rp": pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=0.5, seed=0)}
    for name, cfg in configs.items():
        variants[name] = make_step(pemn.convert_(build(), cfg), batch, block, vocab)
    if selection_bound:  # a model of its own: the same config as pemn_mask, timed without the selection
        variants["pemn_mask_no_selection"] = _without_selection(
            make_step(pemn.convert_(build(), configs["pemn_mask"]), batch, block, vocab))
    t = alternate(variants, repeats=repeats, warmup=3)
    med = {k: v["median_s"] for k, v in t.items()}
    cpu = {k: v["median_thread_s"] for k, v in t.items()}
    masked = pemn.masked_weights(pemn.convert_(build(), pemn.PEMNConfig(strategy="mask")))
    bound = {}
    if selection_bound:
        bound = {"ratio_mask_no_selection_over_dense": med["pemn_mask_no_selection"] / med["dense"],
                 "ratio_mask_no_selection_over_dense_cpu": cpu["pemn_mask_no_selection"] / cpu["dense"]}
    return {
        "model": model_name, "batch": batch, "block_size": block, "vocab": vocab, "timings": t,
        "masked_weights": sum(mw.numel for mw in masked.values()),
        "masked_layers": sorted(masked),
        "dense_parameters": sum(p.numel() for p in dense.parameters()),
        "tokens_per_s": {k: batch * block / v for k, v in med.items()},
        "ratio_mask_over_dense": med["pemn_mask"] / med["dense"],
        "ratio_rp_over_dense": med["pemn_rp"] / med["dense"],
        # the same from the thread's CPU time (a shared machine's waits left out)
        "ratio_mask_over_dense_cpu": cpu["pemn_mask"] / cpu["dense"],
        "ratio_rp_over_dense_cpu": cpu["pemn_rp"] / cpu["dense"],
        **bound,
        "bar": 1.15,
    }


def main(argv: list[str] | None = None) -> dict:
    args = sys.argv[1:] if argv is None else list(argv)
    if "--threads" in args:
        torch.set_num_threads(int(args[args.index("--threads") + 1]))
    if quick_flag(args):
        cases = [("gpt-32-2", 4, 16, 65, 3)]
    else:
        cases = [("gpt-128-4", 12, 64, 65, 30)]
    bound = "--selection-bound" in args
    return {"benchmark": "lm_train_step", "machine": machine(),
            "results": [bench(*case, selection_bound=bound) for case in cases]}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
