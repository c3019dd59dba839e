"""Issue 13: the variance correction (keep_scale, variance presets and family defaults), keep annealing
(pemn.set_keep_ and the cubic schedule), separate score lr / weight decay, distillation and sweeps over seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import pemn
from conftest import quick_config, quiet
from pemn.artifact import read
from pemn.config import PEMNConfig, kept_count
from pemn.prototype import plan, slice_scale
from pemn.training.config import VARIANCE_DEFAULTS, model_family, resolve_config
from pemn.training.distill import distill_loss, load_teacher
from pemn.training.engine import _optimizer, keep_at, train
from pemn.training.models import create_model
from pemn.training.sweep import SweepPoint, build_grid, read_rows, run_sweep, summarize_seeds


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def quick(tmp_path: Path, name: str = "run", **kw: Any):
    return quick_config(**{"strategy": "rp", "ratio": 0.1, "train_subset": 256, "epochs": 2, "batch_size": 32,
                           "lr": 0.05, "out": tmp_path / name, **kw})


# ------------------------------------------------------------------------------------ variance correction


SHAPES = [(4, 1, 3, 3), (10, 144)]  # fan-ins 9 and 144; the Linear is the largest layer (rp source)


@pytest.mark.parametrize(("rescale", "keep_scale", "keep", "expected"), [
    (False, False, 0.5, [1.0, 1.0]),                                   # the paper: no correction at all
    (True, False, 0.5, [math.sqrt(144 / 9), 1.0]),                     # fan-in (today's rescale)
    (False, True, 0.25, [2.0, 2.0]),                                   # 1/sqrt(keep) only
    (True, True, 0.1, [math.sqrt(144 / 9) / math.sqrt(0.1), 1 / math.sqrt(0.1)]),
])
def test_plan_scales(rescale: bool, keep_scale: bool, keep: float, expected: list[float]) -> None:
    cfg = PEMNConfig(strategy="rp", ratio=0.1, keep=keep, rescale=rescale, keep_scale=keep_scale)
    _, assignments = plan(cfg, SHAPES)
    assert [a.scale for a in assignments] == pytest.approx(expected, rel=1e-12)


def test_paper_scales_are_exactly_one_and_keep_scale_is_validated() -> None:
    _, assignments = plan(PEMNConfig(strategy="mp"), SHAPES)
    assert all(a.scale == 1.0 for a in assignments)  # bit for bit the paper's weights
    with pytest.raises(ValueError, match="keep_scale must be a bool"):
        PEMNConfig(keep_scale=1)  # type: ignore[arg-type]
    assert PEMNConfig.from_dict({"strategy": "rp"}).keep_scale is False  # old artifacts' configs


def test_keep_scale_weights_carry_the_dense_variance() -> None:
    """With both corrections every masked layer's kept weights have std ~ sqrt(2 / fan_in) / sqrt(keep)."""
    model = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256))
    pemn.convert_(model, PEMNConfig(strategy="mp", keep=0.25, rescale=True, keep_scale=True))
    for mw in pemn.masked_weights(model).values():
        assert mw.base().std().item() == pytest.approx(math.sqrt(2 / mw.fan_in) / 0.5, rel=0.15)


@pytest.mark.parametrize(("model", "family"), [("lenet5", "plain"), ("tiny-mlp", "plain"),
                                               ("convmixer-64-4", "bn"), ("resnet20", "bn")])
def test_model_family(model: str, family: str) -> None:
    assert model_family(create_model(model, num_classes=10, in_channels=1 if family == "plain" else 3,
                                     image_size=28 if model == "lenet5" else 32)) == family


def test_variance_presets_and_overrides() -> None:
    lenet = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    base = {"model": "lenet5", "dataset": "mnist", "strategy": "rp"}
    auto = resolve_config(base).pemn_config(lenet)
    preset = {"paper": (False, False), "fan-in": (True, False), "fan-in-keep": (True, True)}
    assert (auto.rescale, auto.keep_scale) == preset[VARIANCE_DEFAULTS["plain"]]
    paper = resolve_config({**base, "variance": "paper"}).pemn_config(lenet)
    assert (paper.rescale, paper.keep_scale) == (False, False)
    mixed = resolve_config({**base, "variance": "fan-in-keep", "keep_scale": False}).pemn_config(lenet)
    assert (mixed.rescale, mixed.keep_scale) == (True, False)  # an explicit field wins over the preset
    with pytest.raises(ValueError, match="unknown variance 'big'"):
        resolve_config({**base, "variance": "big"})
    with pytest.raises(ValueError, match="variance"):
        resolve_config({**base, "strategy": "dense", "variance": "paper"})


# ------------------------------------------------------------------------------------------- keep annealing


def test_set_keep_changes_counts_and_scales_and_restores_exactly() -> None:
    cfg = PEMNConfig(strategy="rp", ratio=0.1, keep=0.2, rescale=True, keep_scale=True)
    model = pemn.convert_(_net(), cfg)
    fresh = {n: (mw.kept, mw.scale) for n, mw in pemn.masked_weights(model).items()}
    pemn.set_keep_(model, 0.8)
    for mw in pemn.masked_weights(model).values():
        assert mw.kept == kept_count(0.8, mw.numel)
        assert int(mw.current_mask().sum()) == mw.kept
        assert mw.scale == slice_scale(cfg, mw.bank.sources[mw.source].fan_in, mw.fan_in, 0.8)
    pemn.set_keep_(model, 0.2)
    assert {n: (mw.kept, mw.scale) for n, mw in pemn.masked_weights(model).items()} == fresh


def test_set_keep_global_scope_and_errors() -> None:
    model = pemn.convert_(_net(), PEMNConfig(strategy="mask", keep=0.1, scope="global"))
    total = sum(mw.numel for mw in pemn.masked_weights(model).values())
    pemn.set_keep_(model, 0.5)
    model(torch.randn(2, 1, 8, 8))
    assert sum(int(mw.current_mask().sum()) for mw in pemn.masked_weights(model).values()) == kept_count(0.5, total)
    for bad in (0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="0 < keep <= 1"):
            pemn.set_keep_(model, bad)  # type: ignore[arg-type]
    pemn.freeze_masks(model)
    with pytest.raises(ValueError, match="frozen"):
        pemn.set_keep_(model, 0.5)


# Issue 21 item 1: a model whose keep was changed by set_keep_ saves a file that loads bit-identically (the
# file records the keep the masks were chosen with), and summary() works on it.
SET_KEEP_CONFIGS = {
    "mask": {"strategy": "mask"},
    "one_layer": {"strategy": "one_layer", "keep_scale": True},
    "mp": {"strategy": "mp", "rescale": True},
    "rp": {"strategy": "rp", "ratio": 0.1, "keep_scale": True, "rescale": True},
    "rp_global": {"strategy": "rp", "ratio": 0.1, "scope": "global"},
    "rp_paper_rounding": {"strategy": "rp", "ratio": 0.1, "keep_rounding": "paper", "keep": 0.8},
}


@pytest.mark.parametrize("keep", [0.3, 0.1, 0.77, 1.0, 0.5])
@pytest.mark.parametrize("name", sorted(SET_KEEP_CONFIGS))
def test_set_keep_then_save_loads_bit_identically(tmp_path: Path, name: str, keep: float) -> None:
    cfg = PEMNConfig(**SET_KEEP_CONFIGS[name])
    model = pemn.convert_(_net(), cfg)
    pemn.set_keep_(model, keep)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model(x)  # global scope: the masks are chosen on the first forward
    s = pemn.summary(model, verbose=False)
    assert s.kept == sum(int(mw.current_mask().sum()) for mw in pemn.masked_weights(model).values())
    path = pemn.save(model, tmp_path / "x.pemn")
    torch.manual_seed(123)
    loaded = pemn.load(path, _net())
    model.eval()
    loaded.eval()
    assert torch.equal(model(x), loaded(x))
    for (n, a), (m, b) in zip(pemn.masked_weights(model).items(), pemn.masked_weights(loaded).items(), strict=True):
        assert n == m and torch.equal(a.current_mask(), b.current_mask()) and a.scale == b.scale
    assert pemn.summary(path, verbose=False).kept == s.kept
    assert read(path).config.keep == keep
    # the loaded model is what convert_ with the new keep and these masks gives: set_keep_ back restores it
    pemn.set_keep_(model, cfg.keep)
    assert pemn.summary(model, verbose=False).kept == sum(
        int(mw.current_mask().sum()) for mw in pemn.masked_weights(model).values())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_save_refuses_masks_its_config_cannot_describe(tmp_path: Path, scope: str) -> None:
    """A mask count the recorded config does not give (a layer's kept count edited by hand) is refused before
    anything is written, with the reason; summary() says the same; the file already at the path is intact."""
    model = pemn.convert_(_net(), PEMNConfig(strategy="rp", ratio=0.1, scope=scope))
    model(torch.randn(2, 1, 8, 8))
    path = pemn.save(model, tmp_path / "x.pemn")
    before = path.read_bytes()
    if scope == "layer":
        next(iter(pemn.masked_weights(model).values())).kept = 3
    else:
        topk = next(iter(pemn.masked_weights(model).values())).bank.global_topk
        topk.total_kept, topk._key = 2, None
    for attempt in (lambda: pemn.save(model, path), lambda: pemn.summary(model, verbose=False)):
        with pytest.raises(pemn.FormatError, match=r"cannot save: .*nothing was written"):
            attempt()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.pemn"]


@pytest.mark.parametrize(("t", "expected"), [
    (0.0, 0.9), (0.25, 0.1 + 0.8 * 0.5**3), (0.5, 0.1), (0.75, 0.1), (1.0, 0.1),
])
def test_keep_schedule_is_cubic(tmp_path: Path, t: float, expected: float) -> None:
    cfg = quick(tmp_path, keep=0.1, keep_start=0.9, keep_anneal=0.5)
    assert keep_at(cfg, t) == pytest.approx(expected)
    assert keep_at(quick(tmp_path, keep=0.1), t) == 0.1  # no annealing: always keep


@pytest.mark.parametrize(("kw", "message"), [
    ({"keep": 0.3, "keep_start": 0.2}, "keep_start anneals down to keep"),
    ({"keep_start": 0.9, "keep_anneal": 0.0}, "keep_anneal"),
    ({"score_lr": 0.0}, "score_lr must be"),
    ({"score_weight_decay": -1.0}, "score_weight_decay must be"),
    ({"distill_temperature": 0.0}, "distill_temperature"),
    ({"distill_weight": 1.5}, "distill_weight"),
])
def test_bad_method_settings(tmp_path: Path, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quick(tmp_path, **kw)


def test_annealed_run_saves_exactly_the_target_count(tmp_path: Path) -> None:
    result = train(quick(tmp_path, keep=0.1, keep_start=0.6, keep_anneal=0.5, epochs=3), log=quiet)
    metrics = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["keep"] > 0.1 and metrics[-1]["keep"] == 0.1
    assert result.best_epoch >= 2  # epoch 1 (still annealing, a larger mask) is no candidate for the best
    art = pemn.artifact.read(result.artifact)
    assert [e["kept"] for e in art.manifest] == art.config.kept_counts([tuple(e["shape"]) for e in art.manifest])
    assert art.config.keep == 0.1 and art.config.keep_rule == "erk"  # the sub-bit default (keep_rule auto)
    assert result.artifact_acc == result.final_acc


# ----------------------------------------------------------------------------------------- param groups


def test_score_groups(tmp_path: Path) -> None:
    cfg = quick(tmp_path, weight_decay=0.01, score_lr=0.2, score_weight_decay=0.0)
    model = pemn.convert_(create_model("tiny-mlp", num_classes=10, in_channels=1, image_size=8),
                          cfg.pemn_config())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(cfg, model, params)
    extras, scores = opt.param_groups
    ids = {id(mw.scores) for mw in pemn.masked_weights(model).values()}
    assert {id(p) for p in scores["params"]} == ids and not ids & {id(p) for p in extras["params"]}
    assert (scores["lr_scale"], scores["weight_decay"]) == (pytest.approx(4.0), 0.0)
    assert (extras["lr_scale"], extras["weight_decay"]) == (1.0, 0.01)
    assert len(_optimizer(quick(tmp_path), model, params).param_groups) == 1  # AdamW, no score options: one group


# ----------------------------------------------------------------------------------------------- distill


def test_distill_loss_formula() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    ce = nn.functional.cross_entropy(s, y)
    assert distill_loss(s, t, ce, 4.0, 0.0) == ce
    assert distill_loss(s, s, ce, 4.0, 1.0).abs() < 1e-6
    p_t = torch.softmax(t / 2, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 2, 1))).sum(1).mean()
    assert distill_loss(s, t, ce, 2.0, 0.3).item() == pytest.approx((0.7 * ce + 0.3 * 4 * kl).item(), rel=1e-5)


def test_teacher_errors(tmp_path: Path) -> None:
    kw = {"num_classes": 10, "in_channels": 1, "image_size": 8, "device": torch.device("cpu")}
    with pytest.raises(ValueError, match="does not exist"):
        load_teacher(tmp_path / "none.safetensors", **kw)
    (tmp_path / "junk").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_teacher(tmp_path / "junk", **kw)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="names no model"):
        load_teacher(tmp_path / "other.safetensors", **kw)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bad.safetensors"), metadata={"format": "pt", "model": "tiny-mlp"})
    with pytest.raises(ValueError, match="does not fit"):
        load_teacher(tmp_path / "bad.safetensors", **kw)


def test_distilled_run_reports_the_teacher(tmp_path: Path) -> None:
    dense = train(quick(tmp_path, "teacher", strategy="dense", ratio=None), log=quiet)
    lines: list[str] = []
    student = train(quick(tmp_path, "student", teacher=str(dense.weights), distill_weight=0.7), log=lines.append)
    assert student.teacher_acc == dense.final_acc  # the teacher file scores what its run's last epoch did
    assert json.loads((student.out_dir / "result.json").read_text())["teacher_acc"] == dense.final_acc
    assert any("distilling from" in line for line in lines)


# ---------------------------------------------------------------------------------------------- seeds


def test_grid_over_seeds() -> None:
    grid = build_grid(strategies=["rp"], ratios=[0.1], dense=True, prune=[], seeds=[0, 1, 1, 2])
    assert [p.name for p in grid] == ["dense-s0", "dense-s1", "dense-s2", "rp-r0.1-k0.5-s0", "rp-r0.1-k0.5-s1",
                                      "rp-r0.1-k0.5-s2"]
    assert grid[4].overrides()["seed"] == 1
    assert SweepPoint("dense").name == "dense"  # without seeds: the old names
    with pytest.raises(ValueError, match="seeds"):
        build_grid(strategies=["rp"], seeds=[])


def test_sweep_over_seeds_summarizes_mean_and_std(tmp_path: Path) -> None:
    def fake(cfg: Any) -> SimpleNamespace:
        acc = {0: 50.0, 1: 52.0, 2: 54.0}[cfg.seed] + (10 if cfg.strategy == "dense" else 0)
        return SimpleNamespace(best_acc=acc, final_acc=acc - 1, artifact_bytes=100, seconds=0.1,
                               summary={"paper_ratio": 0.9, "honest_ratio": 2.0})

    grid = build_grid(strategies=["rp"], ratios=[0.1], dense=True, prune=[], seeds=[0, 1, 2])
    report = run_sweep(grid, tmp_path, {"model": "tiny-cnn", "dataset": "digits"}, log=None, plot=False,
                       train_fn=fake)
    assert report.seeds_csv is not None and report.seeds_csv.exists()
    summary = summarize_seeds(read_rows(report.csv))
    assert [(r["strategy"], r["seeds"]) for r in summary] == [("dense", "0 1 2"), ("rp", "0 1 2")]
    assert summary[1]["best_acc_mean"] == pytest.approx(52.0) and summary[1]["best_acc_std"] == pytest.approx(2.0)
    assert summary[0]["final_acc_mean"] == pytest.approx(61.0)
    again = run_sweep(grid, tmp_path, {"model": "tiny-cnn", "dataset": "digits"}, log=None, plot=False,
                      train_fn=fake)
    assert len(again.skipped) == 6 and not again.rows


def test_legacy_csv_without_seed_column_is_read(tmp_path: Path) -> None:
    from pemn.training.sweep import LEGACY_COLUMNS

    path = tmp_path / "sweep.csv"
    path.write_text(",".join(LEGACY_COLUMNS) + "\nrp,0.1,0.5,,,50.0,49.0,100,0.9,2.0,1.0,pemn train\n")
    (row,) = read_rows(path)
    assert row["seed"] == "" and summarize_seeds([row])[0]["best_acc_std"] == 0.0


@pytest.mark.parametrize(("kw", "expected"), [
    ({}, None),                                                          # AdamW: one group (the paper)
    ({"optimizer": "sgd"}, (10 * 0.05, 0.0)),                            # SGD: the scores' measured default
    ({"optimizer": "sgd", "paper": True}, None),                         # --paper: the paper's one group
    ({"optimizer": "sgd", "score_lr": 0.1}, (0.1, 0.0)),                 # explicit settings win
    ({"score_weight_decay": 0.0, "weight_decay": 0.01}, (0.05, 0.0)),
    ({"optimizer": "sgd", "strategy": "dense", "ratio": None}, None),    # dense: no scores
])
def test_score_settings(tmp_path: Path, kw: dict[str, Any], expected: Any) -> None:
    assert quick(tmp_path, **kw).score_settings() == expected


def test_paper_flag_picks_the_paper_variance() -> None:
    lenet = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    cfg = resolve_config({"model": "lenet5", "dataset": "mnist", "strategy": "rp", "paper": True})
    assert cfg.resolved_variance(lenet) == "paper"
    assert resolve_config({"model": "lenet5", "dataset": "mnist", "paper": True,
                           "variance": "fan-in"}).resolved_variance(lenet) == "fan-in"
