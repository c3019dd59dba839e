"""Many tasks on one prototype (issue 22): what a task costs in the file and in memory, and how fast tasks switch.

    python benchmarks/bench_tasks.py [--quick]

Prints one JSON document with three parts, all on LeNet-300-100 (``mlp-300-100``, 784-300-100-10, 266,200 masked
weights, strategy ``mask``, prototype stored as its seed, entropy-coded masks, float16 extras: the Permuted-MNIST
setting of RESULTS.md "Many tasks"):

- ``bytes``: per kept fraction, the bytes one more task adds to a multi-task file (:func:`pemn.save_task`, the file
  size before and after), against the order-0 entropy bound of its masks plus its extras (the bar: at most 300 B
  over), and against SupSup's storage of the same masks (scipy CSC with 16-bit indices: 2 bytes per kept weight plus
  2 per column pointer, data array not counted: a lower bound of SupSup's files) -- ``ratio_csc_over_pemn_masks``
  (the bar: at least 2). Mask sizes of an order-0 coder depend only on a layer's size and kept count, so the masks
  are those of fresh tasks (untrained scores).
- ``memory``: peak and final RSS of a fresh process holding the converted model with 1, 10 and 100 frozen tasks
  (each its own process, so the figures do not mix), the increase per task against the bytes of its bit-packed
  masks and extras, and against a dense fp32 copy of the weights (what N separately stored models would hold).
- ``switch``: ``pemn.set_task`` between two frozen tasks (median of alternated repeats), against swapping the
  weights of a dense model in (``load_state_dict`` of another task's materialised state): ``ratio_set_task_over_
  dense_swap``.
"""

from __future__ import annotations

import gc
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pemn
from _common import alternate, emit, isolated, machine, quick_flag
from pemn.coding import entropy_bits
from pemn.taskfile import task_rows
from pemn.training.models import create_model

MODEL = "mlp-300-100"
SAVE = {"coding": "entropy", "prototype": "seed", "extras_dtype": "float16"}


def _model(keep: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=10, in_channels=1, image_size=28)
    pemn.convert_(model, pemn.PEMNConfig(strategy="mask", keep=keep, init="signed_constant"))
    pemn.freeze_masks(model)
    return model


def csc_bytes(shape: tuple[int, ...], kept: int) -> int:
    """SupSup's mask storage (scipy CSC of the ``[out, in*k*k]`` matrix, 16-bit indices), data array not counted."""
    columns = math.prod(shape[1:])
    return 2 * kept + 2 * (columns + 1)


def task_bytes(keeps: list[float], tasks: int) -> list[dict]:
    rows = []
    for keep in keeps:
        model = _model(keep)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tasks.pemn"
            pemn.save_task(model, path, **SAVE)
            deltas = []
            for i in range(tasks):
                name = f"t{i}"
                pemn.add_task(model, name, activate=True)
                pemn.freeze_masks(model)
                before = path.stat().st_size
                pemn.save_task(model, path, **SAVE)
                deltas.append(path.stat().st_size - before)
            rows_ = task_rows(pemn.artifact.read(path))
        last = rows_[-1]
        mws = pemn.masked_weights(model)
        bound = sum(entropy_bits(mw.numel, int(mw.current_mask().sum())) for mw in mws.values()) / 8
        csc = sum(csc_bytes(mw.shape, int(mw.current_mask().sum())) for mw in mws.values())
        rows.append({
            "keep": keep, "masked_weights": sum(mw.numel for mw in mws.values()),
            "bytes_added_per_task": deltas, "entropy_bound_bytes": round(bound, 1),
            "mask_bytes": last["mask_bytes"], "extras_bytes": last["extras_bytes"],
            "overhead_over_bound_plus_extras": max(deltas) - bound - last["extras_bytes"],
            "meets_300_bytes": max(deltas) <= bound + last["extras_bytes"] + 300,
            "bits_per_weight_per_task": 8 * max(deltas) / sum(mw.numel for mw in mws.values()),
            "supsup_csc_bytes": csc, "ratio_csc_over_pemn_masks": csc / last["mask_bytes"],
            "ratio_csc_over_pemn_task": csc / max(deltas),
        })
    return rows


def hold_tasks(tasks: int, keep: float = 0.08) -> dict:
    """(In a fresh process) the converted model with ``tasks`` frozen tasks; its RSS."""
    from _common import peak_rss_mb
    from pemn._memory import release_freed_memory

    model = _model(keep)
    pemn.rename_task(model, "default", "t0")
    for i in range(1, tasks):
        pemn.add_task(model, f"t{i}", activate=True)
        pemn.freeze_masks(model)
    gc.collect()
    release_freed_memory()
    rss = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    numel = sum(mw.numel for mw in pemn.masked_weights(model).values())
    return {"tasks": len(pemn.tasks(model)), "rss_mb": rss, "peak_so_far_mb": peak_rss_mb(),
            "packed_mask_bytes_per_task": math.ceil(numel / 8),
            "extras_bytes_per_task": sum(p.numel() * p.element_size() for p in model.parameters()),
            "dense_fp32_weight_bytes": 4 * numel}


def memory(counts: list[int]) -> dict:
    runs = [isolated("bench_tasks", "hold_tasks", tasks=n) for n in counts]
    first, last = runs[0], runs[-1]
    per_task = (last["rss_mb"] - first["rss_mb"]) * 2**20 / (last["tasks"] - first["tasks"])
    budget = first["packed_mask_bytes_per_task"] + first["extras_bytes_per_task"]
    return {"runs": runs, "rss_increase_per_task_bytes": per_task,
            "packed_masks_plus_extras_per_task_bytes": budget,
            "ratio_rss_per_task_over_packed": per_task / budget,
            "ratio_dense_copy_over_rss_per_task": first["dense_fp32_weight_bytes"] / max(per_task, 1.0)}


def switch(repeats: int) -> dict:
    model = _model(0.08)
    pemn.add_task(model, "b", activate=True)
    pemn.freeze_masks(model)
    dense = pemn.materialize(model)
    states = [{k: v.clone() for k, v in dense.state_dict().items()}]
    with pemn.using_task(model, "default"):
        states.append({k: v.clone() for k, v in pemn.materialize(model).state_dict().items()})
    names = ["default", "b"]
    flips = {"set_task": 1, "dense_swap": 0}  # each variant alternates between its two tasks

    def set_task() -> None:
        flips["set_task"] ^= 1
        pemn.set_task(model, names[flips["set_task"]])

    def dense_swap() -> None:
        flips["dense_swap"] ^= 1
        dense.load_state_dict(states[flips["dense_swap"]])

    times = alternate({"set_task": set_task, "dense_swap": dense_swap}, repeats=repeats)
    x = torch.randn(1, 1, 28, 28)
    outputs = []
    for name in names:  # switching really switches
        with pemn.using_task(model, name), torch.no_grad():
            outputs.append(model.eval()(x))
    assert not torch.equal(*outputs)
    return {"times": times, "ratio_set_task_over_dense_swap":
            times["set_task"]["median_s"] / times["dense_swap"]["median_s"]}


def main(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    doc = {
        "benchmark": "bench_tasks", "machine": machine(), "model": MODEL, "save": SAVE,
        "bytes": task_bytes([0.08] if quick else [0.05, 0.08, 0.1, 0.2, 0.5], 2 if quick else 3),
        "memory": memory([1, 3] if quick else [1, 10, 100]),
        "switch": switch(5 if quick else 50),
    }
    return doc


if __name__ == "__main__":
    emit(main(quick_flag(None)))
