"""Write the golden artifacts under tests/data/. Run once per format version, never to "fix" a failing test:
those files are what every later pemn must still load bit for bit (tests/test_golden.py). Only the files
that do not exist yet are written (name them to rewrite them on purpose).

    .venv/bin/python tests/make_golden.py [NAME ...]
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
    # name: (model, strategy, coding, prototype storage, other pemn.save options)
    "golden_v1_packed": ("conv2d", "rp", "packed", "values", {}),
    "golden_v1_entropy_seed": ("mha", "mp_rescale_rand", "entropy", "seed", {}),
    # format version 2: a folded BatchNorm and int8 conv / linear biases; int8 LayerNorm and attention biases
    # (nothing to fold there)
    "golden_v2_fold_int8": ("conv2d", "rp", "packed", "values", {"fold_norms": True, "extras_dtype": "int8"}),
    "golden_v2_int8_entropy_seed": ("mha", "rp", "entropy", "seed", {"fold_norms": True, "extras_dtype": "int8"}),
    # the error-bounded int8 rule (same format version 2): the biases int8 (within the bound), the folded
    # BatchNorm float16 (int8 is not) in the same file
    "golden_v2_int8_bounded": ("conv2d", "rp", "packed", "values", {"fold_norms": True, "extras_dtype": "int8"}),
    # format version 3: version 2's layout with the index compressed against the preset INDEX_DICTIONARY
    "golden_v3_fold_int8": ("conv2d", "rp", "packed", "values", {"fold_norms": True, "extras_dtype": "int8"}),
    "golden_v3_int8_entropy_seed": ("mha", "rp", "entropy", "seed", {"fold_norms": True, "extras_dtype": "int8"}),
}


def dense_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state the artifact holds besides masks and prototype (what is not inside a MaskedWeight)."""
    prefixes = tuple(n + "." for n, m in model.named_modules() if isinstance(m, pemn.MaskedWeight))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def main(names: list[str]) -> None:
    for name, (model_name, strategy, coding, storage, options) in GOLDEN.items():
        path = HERE / "data" / f"{name}.pemn"
        if (names and name not in names) or (not names and path.exists()):
            continue
        model = pemn.convert_(cases.build(model_name), cases.config(strategy))
        x = cases.make_input(model_name)
        cases.train_steps(model, x)
        pemn.save(model, path, coding=coding, prototype=storage, **options)
        model.eval()
        expected = {f"mask.{n}": mw.current_mask().to(torch.uint8) for n, mw in pemn.masked_weights(model).items()}
        if options:  # lossy options: the reference is the file as loaded now, its dense state exactly
            model = pemn.load(path, cases.build(model_name, seed=5)).eval()
            expected.update({f"dense.{k}": v.clone() for k, v in dense_state(model).items()})
        with torch.no_grad():
            save_file({"input": x, "output": model(x), **expected}, HERE / "data" / f"{name}.expected.safetensors")
        print(name, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
