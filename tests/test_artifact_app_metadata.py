"""The application metadata a ``.pemn`` file carries (``pemn.save(..., app=...)``): read back as written, empty
when none was given, and refused before writing when it is not plain JSON (a NaN)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

import pemn
from pemn import artifact


def test_app_metadata_round_trips_and_refuses_what_json_cannot_hold(tmp_path: Path) -> None:
    m = pemn.convert_(nn.Sequential(nn.Linear(4, 3)), pemn.PEMNConfig())
    p = pemn.save(m, tmp_path / "a.pemn", app={"model": "mlp", "args": {"hidden": 3}})
    assert artifact.read(p).app == {"model": "mlp", "args": {"hidden": 3}}
    assert artifact.read(pemn.save(m, tmp_path / "b.pemn")).app == {}
    with pytest.raises(ValueError):
        pemn.save(m, tmp_path / "c.pemn", app={"x": float("nan")})
