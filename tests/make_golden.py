"""Write the golden artifacts under tests/data/. Run once per format version, never to "fix" a failing test:
those files are what every later pemn must still load bit for bit (tests/test_golden.py).

    .venv/bin/python tests/make_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import cases  # noqa: E402
import pemn  # noqa: E402

GOLDEN = {
    # name: (model, strategy, coding, prototype storage)
    "golden_v1_packed": ("conv2d", "rp", "packed", "values"),
    "golden_v1_entropy_seed": ("mha", "mp_rescale_rand", "entropy", "seed"),
}


def main() -> None:
    for name, (model_name, strategy, coding, storage) in GOLDEN.items():
        model = pemn.convert_(cases.build(model_name), cases.config(strategy))
        x = cases.make_input(model_name)
        cases.train_steps(model, x)
        pemn.save(model, HERE / "data" / f"{name}.pemn", coding=coding, prototype=storage)
        model.eval()
        masks = {f"mask.{n}": mw.current_mask().to(torch.uint8) for n, mw in pemn.masked_weights(model).items()}
        with torch.no_grad():
            save_file({"input": x, "output": model(x), **masks}, HERE / "data" / f"{name}.expected.safetensors")
        print(name, (HERE / "data" / f"{name}.pemn").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
