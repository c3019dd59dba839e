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

import cases  # tests/ is on the path: this script's folder (python tests/make_golden.py) or pytest's pythonpath
import pemn

HERE = Path(__file__).parent

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
    # format version 3: version 2's layout with the index compressed against a preset dictionary
    "golden_v3_fold_int8": ("conv2d", "rp", "packed", "values", {"fold_norms": True, "extras_dtype": "int8"}),
    "golden_v3_int8_entropy_seed": ("mha", "rp", "entropy", "seed", {"fold_norms": True, "extras_dtype": "int8"}),
    # format version 3's row-wise fold: a BatchNorm of 16 channels whose folded scale spans 0.3..10 (float16) and
    # whose shift int8 holds within the bound, stored as fold.scale float16 + fold.shift int8
    "golden_v3_fold_rows": ("conv2d_bn16", "rp", "packed", "values", {"fold_norms": True, "extras_dtype": "int8"}),
    # the same three files with the index compressed against the core's dictionary (issue 19: the first one, which
    # the files above name, also held strings of the training application; it is read, no longer written)
    "golden_v3_core_fold_int8": ("conv2d", "rp", "packed", "values", {"fold_norms": True, "extras_dtype": "int8"}),
    "golden_v3_core_int8_entropy_seed": ("mha", "rp", "entropy", "seed", {"fold_norms": True,
                                                                         "extras_dtype": "int8"}),
    "golden_v3_core_fold_rows": ("conv2d_bn16", "rp", "packed", "values", {"fold_norms": True,
                                                                          "extras_dtype": "int8"}),
    # coding="context" (issue 23's coder): a classifier whose masks keep unequal shares per row and column, so its
    # masks take the rows-cols and rows models; a version 1 file and a version 3 one (int8 extras, seed)
    "golden_v1_context": ("mlp_structured", "rp", "context", "values", {}),
    "golden_v3_context_int8_seed": ("mlp_structured", "rp", "context", "seed", {"extras_dtype": "int8"}),
}
#: the golden files whose index is compressed against artifact.FIRST_INDEX_DICTIONARY (the other version 3 ones:
#: artifact.INDEX_DICTIONARY)
FIRST_DICTIONARY = ("golden_v3_fold_int8", "golden_v3_int8_entropy_seed", "golden_v3_fold_rows")

#: models of the golden files beyond tests/cases.py's table (name -> (builder, input shape))
EXTRA_MODELS = {
    "conv2d_bn16": (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                                torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                                torch.nn.Linear(16, 4)), (2, 3, 6, 6)),
    "mlp_structured": (lambda: torch.nn.Sequential(torch.nn.Linear(96, 40), torch.nn.ReLU(), torch.nn.Linear(40, 24),
                                                   torch.nn.ReLU(), torch.nn.Linear(24, 4)), (3, 96)),
}


def build(model_name: str, seed: int = 0) -> torch.nn.Module:
    if model_name in EXTRA_MODELS:
        torch.manual_seed(seed)
        return EXTRA_MODELS[model_name][0]()
    return cases.build(model_name, seed=seed)


def make_input(model_name: str) -> torch.Tensor:
    if model_name in EXTRA_MODELS:
        return torch.randn(EXTRA_MODELS[model_name][1], generator=torch.Generator().manual_seed(1))
    return cases.make_input(model_name)


def _prepare(name: str, model: torch.nn.Module) -> None:
    """Put the trained model into the state its golden file is about."""
    if "_context" in name:  # scores scaled per row and per column: masks with the structure the row models code
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for i, mw in enumerate(pemn.masked_weights(model).values()):
                rows, cols = mw.shape
                row = torch.rand(rows, 1, generator=g) * 2.5 + 0.2
                col = torch.where(torch.rand(1, cols, generator=g) < 0.4, 0.3, 1.5) if i != 1 else torch.ones(1, cols)
                mw.scores.copy_(torch.rand(rows, cols, generator=g) * row * col)  # the second layer: rows only
    if name.endswith("_fold_rows"):
        bn = model[1]
        with torch.no_grad():
            bn.running_var.copy_(torch.logspace(-2, 1, 16))  # scale 1/σ: 0.3 .. 10
            bn.running_mean.copy_(torch.linspace(-0.05, 0.05, 16))


def dense_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state the artifact holds besides masks and prototype (what is not inside a MaskedWeight)."""
    prefixes = tuple(n + "." for n, m in model.named_modules() if isinstance(m, pemn.MaskedWeight))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def main(names: list[str]) -> None:
    for name, (model_name, strategy, coding, storage, options) in GOLDEN.items():
        path = HERE / "data" / f"{name}.pemn"
        if (names and name not in names) or (not names and path.exists()):
            continue
        model = pemn.convert_(build(model_name), cases.config(strategy))
        x = make_input(model_name)
        cases.train_steps(model, x)
        _prepare(name, model)
        pemn.save(model, path, coding=coding, prototype=storage, **options)
        model.eval()
        expected = {f"mask.{n}": mw.current_mask().to(torch.uint8) for n, mw in pemn.masked_weights(model).items()}
        if options:  # lossy options: the reference is the file as loaded now, its dense state exactly
            model = pemn.load(path, build(model_name, seed=5)).eval()
            expected.update({f"dense.{k}": v.clone() for k, v in dense_state(model).items()})
        with torch.no_grad():
            save_file({"input": x, "output": model(x), **expected}, HERE / "data" / f"{name}.expected.safetensors")
        print(name, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
