import pytest
from torch import nn

import pemn
from pemn import artifact


def test_app_roundtrip(tmp_path):
    m = pemn.convert_(nn.Sequential(nn.Linear(4, 3)), pemn.PEMNConfig())
    p = pemn.save(m, tmp_path / "a.pemn", app={"model": "mlp", "args": {"hidden": 3}})
    assert artifact.read(p).app == {"model": "mlp", "args": {"hidden": 3}}
    assert artifact.read(pemn.save(m, tmp_path / "b.pemn")).app == {}
    with pytest.raises(ValueError):
        pemn.save(m, tmp_path / "c.pemn", app={"x": float("nan")})
