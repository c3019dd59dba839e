"""Load and save time: pemn.load of a ConvMixer-512/8 artifact into a freshly built model vs torch.load +
load_state_dict of the same model's dense fp32 checkpoint (and pemn.save vs torch.save).

    python benchmarks/bench_load.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import pemn
from _common import alternate, emit, machine, quick_flag
from pemn.training.models import create_model


def main(argv: list[str] | None = None) -> dict:
    quick = quick_flag(argv)
    name, repeats = ("convmixer-32-2", 3) if quick else ("convmixer-512-8", 9)
    torch.manual_seed(0)
    model = pemn.convert_(create_model(name), pemn.PEMNConfig(strategy="rp", ratio=1e-3))
    dense = pemn.materialize(model)
    with tempfile.TemporaryDirectory() as d:
        art, ckpt = Path(d) / "m.pemn", Path(d) / "m.pt"
        pemn.save(model, art)
        torch.save(dense.state_dict(), ckpt)
        fresh = [create_model(name) for _ in range(repeats + 1)]  # built outside the timed region
        fresh_dense = create_model(name)
        it = iter(fresh)

        def pemn_load() -> None:
            pemn.load(art, next(it))

        def torch_load() -> None:
            fresh_dense.load_state_dict(torch.load(ckpt, weights_only=True))

        load = alternate({"pemn_load": pemn_load, "torch_load": torch_load}, repeats=repeats)
        save = alternate({"pemn_save": lambda: pemn.save(model, art),
                          "torch_save": lambda: torch.save(dense.state_dict(), ckpt)}, repeats=repeats)
        sizes = {"pemn_bytes": art.stat().st_size, "torch_bytes": ckpt.stat().st_size}
    return {"benchmark": "load_save", "machine": machine(), "model": name, "load": load, "save": save, **sizes,
            "ratio_load_pemn_over_torch": load["pemn_load"]["median_s"] / load["torch_load"]["median_s"],
            "ratio_save_pemn_over_torch": save["pemn_save"]["median_s"] / save["torch_save"]["median_s"],
            "bar_load": 1.0}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
