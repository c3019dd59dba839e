"""Options that reproduce the official PEMN code where pemn's defaults differ: the kept count
(``keep_rounding="paper"``) and the per-layer unique-value count of ``pemn.summary`` with ``fill="rand"``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import pemn
from pemn.errors import FormatError


def official_kept(keep: float, n: int) -> int:
    """edge-popup's GetSubnet as the official code calls it: zero the lowest int((1 - k) * n) scores."""
    return n - int((1 - keep) * n)


@pytest.mark.parametrize(("keep", "n", "exact", "paper"), [
    (0.8, 6400, 5120, 5121),  # the issue's example: (1 - 0.8) * 6400 = 1279.9999999999998
    (0.5, 6400, 3200, 3200),
    (0.5, 3, 2, 2),
    (0.7, 10, 7, 7),  # (1 - 0.7) * 10 = 3.0000000000000004 -> int 3 -> 7
    (0.9, 10, 9, 10),  # (1 - 0.9) * 10 = 0.9999999999999998 -> int 0 -> all 10 kept
    (1.0, 5, 5, 5),
    (1e-9, 100, 1, 1),
])
def test_kept_count_roundings(keep: float, n: int, exact: int, paper: int) -> None:
    assert pemn.kept_count(keep, n) == pemn.kept_count(keep, n, "exact") == exact
    assert pemn.kept_count(keep, n, "paper") == paper == max(1, official_kept(keep, n))


def test_paper_rounding_is_the_official_formula_and_default_unchanged() -> None:
    differ = 0
    for n in (1, 7, 25, 100, 768, 6400, 65536):
        for i in range(1, 100):
            keep = i / 100
            paper = pemn.kept_count(keep, n, "paper")
            assert paper == max(1, official_kept(keep, n))
            assert abs(paper - pemn.kept_count(keep, n)) <= 1
            differ += paper != pemn.kept_count(keep, n)
        assert pemn.kept_count(0.5, n, "paper") == pemn.kept_count(0.5, n)  # the paper's keep: identical
    assert differ > 0  # the two rules really differ somewhere
    with pytest.raises(ValueError, match="rounding"):
        pemn.kept_count(0.5, 10, "floor")


def _converted(**kw) -> nn.Module:
    m = nn.Sequential(nn.Conv2d(4, 16, 10, bias=False), nn.Flatten(), nn.Linear(16, 10, bias=False))
    return pemn.convert_(m, pemn.PEMNConfig(strategy="rp", ratio=0.1, **kw))


def test_config_option_and_serialisation() -> None:
    default = pemn.PEMNConfig()
    assert default.keep_rounding == "exact" and "keep_rounding" not in default.to_dict()  # default JSON unchanged
    assert pemn.PEMNConfig.from_dict(default.to_dict()) == default
    paper = pemn.PEMNConfig(keep=0.8, keep_rounding="paper")
    assert paper.to_dict()["keep_rounding"] == "paper"
    assert pemn.PEMNConfig.from_json(paper.to_json()) == paper
    with pytest.raises(ValueError, match="keep_rounding"):
        pemn.PEMNConfig(keep_rounding="official")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masks_keep_the_official_count(tmp_path: Path, scope: str) -> None:
    """Conv 16x4x10x10 = 6,400 weights at keep 0.8: the official code keeps 5,121, pemn's default 5,120."""
    model = _converted(keep=0.8, keep_rounding="paper", scope=scope)
    default = _converted(keep=0.8, scope=scope)
    counts = [int(mw.current_mask().sum()) for mw in pemn.masked_weights(model).values()]
    counts_default = [int(mw.current_mask().sum()) for mw in pemn.masked_weights(default).values()]
    if scope == "layer":
        assert counts == [5121, official_kept(0.8, 160)] and counts_default == [5120, 128]
    else:
        assert sum(counts) == official_kept(0.8, 6560) and sum(counts_default) == pemn.kept_count(0.8, 6560)
    path = tmp_path / "m.pemn"
    pemn.save(model, path)
    art = pemn.artifact.read(path)
    assert art.config.keep_rounding == "paper"
    back = pemn.load(path, nn.Sequential(nn.Conv2d(4, 16, 10, bias=False), nn.Flatten(), nn.Linear(16, 10, bias=False)))
    assert [int(mw.current_mask().sum()) for mw in pemn.masked_weights(back).values()] == counts


def test_manifest_checks_use_the_artifacts_rounding(tmp_path: Path) -> None:
    """An artifact whose config says 'paper' but whose manifest holds the exact counts (or the reverse) is
    corrupt: the kept counts are checked with the artifact's own rule."""
    from pemn.artifact import _check_manifest

    manifest = [{"name": "0.weight", "shape": [16, 4, 10, 10], "kept": 5121, "bytes": 800}]
    _check_manifest(manifest, pemn.PEMNConfig(keep=0.8, keep_rounding="paper"), "")
    with pytest.raises(FormatError, match="bad manifest entry"):
        _check_manifest(manifest, pemn.PEMNConfig(keep=0.8), "")
    manifest[0]["kept"] = 5120
    _check_manifest(manifest, pemn.PEMNConfig(keep=0.8), "")
    with pytest.raises(FormatError, match="bad manifest entry"):
        _check_manifest(manifest, pemn.PEMNConfig(keep=0.8, keep_rounding="paper"), "")


def test_train_flag(tmp_path: Path) -> None:
    from pemn.training.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--keep", "0.8",
                 "--keep-rounding", "paper", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    art = pemn.artifact.read(out / "model.pemn")
    assert art.config.keep_rounding == "paper" and art.config.keep == 0.8
    for e in art.manifest:
        n = 1
        for s in e["shape"]:
            n *= s
        assert e["kept"] == max(1, official_kept(0.8, n))


@pytest.mark.parametrize(("strategy", "ratio", "fill"), [("rp", 0.1, "rand"), ("rp", 0.01, "rand"),
                                                         ("rp", 0.1, "copy"), ("mp", None, "rand")])
def test_summary_counts_the_values_really_present(strategy: str, ratio: float | None, fill: str) -> None:
    """fill='rand' shuffles the tiled vector, so a layer's prefix holds fewer distinct values than min(n, P)
    (ConvMixer-256/8's patch layer at RP 1e-1, seed 0: 2,492 of 3,072, as the official code would have)."""
    from pemn.training.models import create_model

    model = pemn.convert_(create_model("convmixer-64-2"), pemn.PEMNConfig(strategy=strategy, ratio=ratio, fill=fill))
    s = pemn.summary(model, verbose=False)
    mws = pemn.masked_weights(model)
    for lay in s.layers:
        assert lay.unique_values == torch.unique(mws[lay.name].base()).numel(), lay.name
    assert s.unique_values == sum(src.length for src in next(iter(mws.values())).bank.sources.values())
    if strategy == "rp" and fill == "rand" and ratio == 0.1:  # at 1e-2 every layer's prefix reaches all 41 values
        assert any(lay.unique_values < min(lay.masked_weights, s.unique_values) for lay in s.layers)


@pytest.mark.slow
def test_summary_issue_example() -> None:
    from pemn.training.models import create_model

    model = pemn.convert_(create_model("convmixer-256-8"), pemn.PEMNConfig(strategy="rp", ratio=0.1, fill="rand"))
    patch = pemn.summary(model, verbose=False).layers[0]
    assert (patch.masked_weights, patch.unique_values) == (3072, 2492)
