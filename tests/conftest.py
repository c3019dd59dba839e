"""Fixtures shared by the test files."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# One CPU thread per test process and per process a test starts (they inherit the environment), unless the caller
# says otherwise: the models here are tiny, and torch's default (a thread per core) makes OpenMP workers wait on
# each other whenever the cores are shared - with other processes, or with the other pytest-xdist worker of
# `make test`: single steps took 10-50x longer on this 2-core machine under load (pemn.training.dist.default_threads
# says the same of `pemn train`). Set before torch is imported, which reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from pemn.training.config import TrainConfig, resolve_config

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # also if a plugin imported torch before this file


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread during a test (restored after it, whatever the test set): the models here are tiny,
    so more threads only add wake-up latency (seconds per file on a busy machine), and in-process runs then
    match the one-thread subprocesses. A test file uses it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: What every quick run shares: an image run is tiny-mlp on scikit-learn's digits (no files), a text run gpt-16-2
#: on the ``input.txt`` in ``text_dir`` with the nanogpt recipe; both on the CPU without a progress bar.
QUICK_IMAGE_RUN: dict[str, Any] = {"model": "tiny-mlp", "dataset": "digits", "progress": False, "device": "cpu"}
QUICK_TEXT_RUN: dict[str, Any] = {"model": "gpt-16-2", "dataset": "text", "block_size": 8, "batch_size": 4,
                                  "steps": 12, "progress": False, "device": "cpu"}


def quick_config(*, text_dir: str | os.PathLike[str] | None = None, **settings: Any) -> TrainConfig:
    """The one factory of a quick training run (a second or less): :data:`QUICK_IMAGE_RUN`, or with ``text_dir``
    :data:`QUICK_TEXT_RUN` reading ``text_dir/input.txt``, with ``settings`` on top (``out`` and ``data_dir`` may
    be paths), resolved by :func:`pemn.training.config.resolve_config`. Test files wrap it with their own presets
    (``from conftest import quick_config``; tests/ is on the path by pyproject's pytest ``pythonpath``)."""
    base = QUICK_IMAGE_RUN if text_dir is None else {**QUICK_TEXT_RUN, "data_dir": str(text_dir)}
    merged = {**base, **settings}
    for key in ("out", "data_dir"):
        if isinstance(merged.get(key), os.PathLike):
            merged[key] = str(merged[key])
    return resolve_config(merged, recipe=None if text_dir is None else "nanogpt")


#: A few lines of Tiny Shakespeare: the corpus of a quick text run (:func:`quick_text_config`).
QUICK_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 4


def quick_text_config(tmp_path: Path, out: str = "run", **settings: Any) -> TrainConfig:
    """:func:`quick_config` of a text run on :data:`QUICK_TEXT` (written once to ``tmp_path/data/input.txt``)
    into ``tmp_path/out``."""
    data_dir = tmp_path / "data"
    if not (data_dir / "input.txt").exists():
        data_dir.mkdir(exist_ok=True)
        (data_dir / "input.txt").write_text(QUICK_TEXT)
    return quick_config(text_dir=data_dir, **{"out": tmp_path / out, **settings})


#: The ``pemn train`` flags of a quick command-line run (the default model on digits, 2 epochs of 256 images).
QUICK_ARGV = ["--epochs", "2", "--train-subset", "256", "--no-progress", "--device", "cpu", "--threads", "1"]

REPO = Path(__file__).resolve().parent.parent


def quick_cli_run(tmp_path: Path, name: str = "img", *extra: str) -> Path:
    """The run folder ``tmp_path/name`` of a one-epoch ``pemn train`` of tiny-mlp (mask) on 128 digits, run in
    this process; ``extra`` flags on top."""
    from cli_run import run

    out = tmp_path / name
    code, _, err = run(["train", "--model", "tiny-mlp", "--strategy", "mask", "--epochs", "1", "--train-subset", "128",
                        "--no-progress", "--device", "cpu", "--threads", "1", "--out", str(out), *extra])
    assert code == 0, err
    return out


def subprocess_env() -> dict[str, str]:
    """The environment of a ``python -m pemn`` child process: this checkout's ``src`` first, one OpenMP thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def quiet(_: str) -> None:
    """A training log that drops every line."""


def load_script(relpath: str, name: str | None = None) -> ModuleType:
    """A script of this repository (``benchmarks/``, ``scripts/``) imported as the module ``name`` (default: its
    file name with a ``_script_`` prefix), once per test session. A script that imports a sibling (the benchmarks'
    ``_common``) needs that sibling loaded under its own name first: ``load_script("benchmarks/_common.py",
    "_common")``."""
    name = name or "_script_" + Path(relpath).stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
