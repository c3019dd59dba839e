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
torch.manual_seed(0)
model = pemn.convert_(nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Linear(32, 10)),
                      pemn.PEMNConfig(strategy="rp", ratio=0.1, keep=0.5, seed=0))
pemn.save(model, sys.argv[1], coding=sys.argv[2], extras_dtype=None if sys.argv[3] == "none" else sys.argv[3],
          app={"model": "x", "kwargs": {"a": 1, "b": [2, 3]}})
"""


@pytest.mark.slow  # two fresh processes per case
@pytest.mark.parametrize(("coding", "extras_dtype"), [("packed", "none"), ("entropy", "int8")])
def test_artifact_bytes_do_not_depend_on_the_process(tmp_path: Path, coding: str, extras_dtype: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    digests = []
    for i in range(2):
        path = tmp_path / f"m{i}.pemn"
        subprocess.run([sys.executable, "-c", SAVE, str(path), coding, extras_dtype], check=True, env=env,
                       capture_output=True, timeout=120)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
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
