"""`import pemn` stays lean: the library does not pull in the CLI, training or plotting stacks, nor start CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_import_is_lean() -> None:
    code = ("import sys, pemn, torch; "
            "heavy = [m for m in ('kornia', 'sklearn', 'matplotlib', 'onnx', 'pemn.training.cli', 'pemn.training', "
            "'transformers') "
            "if m in sys.modules]; "
            "print(heavy, torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[] False", out.stdout


def test_import_layers_are_kept() -> None:
    """The contract of .importlinter (the core, the python -m entry point aside, never imports pemn.training)
    holds: the same check `make lint` and `make test` run."""
    pytest.importorskip("importlinter")
    root = Path(__file__).resolve().parents[1]
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    out = subprocess.run([sys.executable, "-c", code, "--no-logo", "--no-cache"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and "never imports pemn.training KEPT" in out.stdout
