"""`import pemn` stays lean: the library does not pull in the CLI, training or plotting stacks, nor start CUDA."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_lean() -> None:
    code = ("import sys, pemn, torch; "
            "heavy = [m for m in ('kornia', 'sklearn', 'matplotlib', 'onnx', 'pemn.cli', 'pemn.training', "
            "'transformers') "
            "if m in sys.modules]; "
            "print(heavy, torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[] False", out.stdout
