"""The README's promises: its quickstart runs as written, and it matches examples/quickstart.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow  # a subprocess (or ONNX export), seconds
def test_readme_quickstart_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart \(Python\)\s+```python\n(.*?)```", text, re.S)
    assert block, "README has no Python quickstart"
    script = tmp_path / "quickstart.py"
    script.write_text(block.group(1))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "paper ratio" in out.stdout and (tmp_path / "model.pemn").exists()


@pytest.mark.slow  # a subprocess, seconds
def test_example_quickstart_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
