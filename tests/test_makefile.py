"""The Makefile installs what each target needs and no more: `make demo` the command line's extra, `make test`
the test stack besides (one stamp per extra); and the demo never imports the test stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_STACK = ("pytest", "hypothesis", "onnx", "onnxscript", "onnxruntime", "transformers", "importlinter", "ruff",
              "xdist", "execnet")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _plan(target: str, venv: Path) -> list[str]:
    """The commands ``make TARGET`` would run with its virtual environment at ``venv`` (a dry run)."""
    # under `make test` the environment says MAKELEVEL/MAKEFLAGS, and the nested make would print its directory
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={venv}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return [line for line in out.stdout.splitlines() if line and not line.startswith("#")]


def _installs(plan: list[str]) -> list[str]:
    return [line.split("pip install", 1)[1] for line in plan if "pip install" in line]


def test_demo_installs_only_the_cli_extra(tmp_path: Path) -> None:
    plan = _plan("demo", tmp_path / ".venv")
    installs = _installs(plan)
    assert len(installs) == 2 and installs[0].endswith("torch==2.13.0") and installs[1].endswith('-e ".[cli]"')
    assert not any("test" in i for i in installs) and plan[-1].endswith("/bin/pemn train")


def test_test_installs_the_test_stack_once_and_the_cli_stamp_is_reused(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    installs = _installs(_plan("test", venv))
    assert [i.rsplit(" ", 1)[-1] for i in installs] == ["torch==2.13.0", '".[cli]"', '".[cli,test]"']
    venv.mkdir()
    (venv / ".pemn-cli").touch()  # after `make demo`: the test target adds the test stack only
    assert [i.rsplit(" ", 1)[-1] for i in _installs(_plan("test", venv))] == ['".[cli,test]"']
    assert _installs(_plan("demo", venv)) == []
    (venv / ".pemn-test").touch()
    assert _installs(_plan("test", venv)) == []
    assert _plan("test", venv)[-1].endswith("pytest -q -n auto --dist worksteal")  # one worker per CPU
    for stamp in (".pemn-cli", ".pemn-test"):  # installed before pyproject.toml last changed: both are redone
        os.utime(venv / stamp, (946684800, 946684800))
    assert len(_installs(_plan("test", venv))) == 3


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow  # a subprocess that trains one epoch
def test_the_demo_imports_nothing_of_the_test_stack(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pemn", "train", "--epochs", "1",
                           "--train-subset", "64", "--no-progress", "--threads", "1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "sklearn" in imported and not imported & set(TEST_STACK), sorted(imported & set(TEST_STACK))
