"""The same model saved twice gives the same bytes, also from two processes (safetensors' own writer orders its
metadata by a per-process hash map: pemn.stfile canonicalises the header)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pemn.stfile import save_bytes

REPO = Path(__file__).resolve().parent.parent

SAVE = """
import sys, torch, pemn
from torch import nn
for path, coding, extras_dtype in zip(*[iter(sys.argv[1:])] * 3):  # one (file, coding, extras dtype) per case
    torch.manual_seed(0)
    model = pemn.convert_(nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Linear(32, 10)),
                          pemn.PEMNConfig(strategy="rp", ratio=0.1, keep=0.5, seed=0))
    pemn.save(model, path, coding=coding, extras_dtype=None if extras_dtype == "none" else extras_dtype,
              app={"model": "x", "kwargs": {"a": 1, "b": [2, 3]}})
"""

CASES = [("packed", "none"), ("entropy", "int8")]


@pytest.fixture(scope="module")
def saved_by_two_processes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], list[str]]:
    """Each case of :data:`CASES` saved by two fresh processes (each saves every case): case -> the two files'
    sha256."""
    folder = tmp_path_factory.mktemp("determinism")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for i in range(2):
        argv = [arg for n, (coding, dtype) in enumerate(CASES)
                for arg in (str(folder / f"m{n}_{i}.pemn"), coding, dtype)]
        subprocess.run([sys.executable, "-c", SAVE, *argv], check=True, env=env, capture_output=True, timeout=120)
    return {case: [hashlib.sha256((folder / f"m{n}_{i}.pemn").read_bytes()).hexdigest() for i in range(2)]
            for n, case in enumerate(CASES)}


@pytest.mark.slow  # two fresh processes (for all cases)
@pytest.mark.parametrize(("coding", "extras_dtype"), CASES)
def test_artifact_bytes_do_not_depend_on_the_process(saved_by_two_processes: dict[tuple[str, str], list[str]],
                                                     coding: str, extras_dtype: str) -> None:
    digests = saved_by_two_processes[coding, extras_dtype]
    assert digests[0] == digests[1]


def test_save_bytes_sorts_the_metadata_and_stays_readable() -> None:
    from safetensors.torch import load

    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "m": torch.ones(5, dtype=torch.uint8)}
    metadata = {f"key{i:02d}": f"value {i} é \"quoted\"" for i in range(30, 0, -1)}
    data = save_bytes(tensors, metadata)
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n].decode()
    assert [header.index(f'"key{i:02d}"') for i in range(1, 31)] == sorted(header.index(f'"key{i:02d}"')
                                                                           for i in range(1, 31))
    assert n % 8 == 0 and save_bytes(tensors, dict(reversed(metadata.items()))) == data
    back = load(data)
    assert set(back) == {"w", "m"} and torch.equal(back["w"], tensors["w"])
