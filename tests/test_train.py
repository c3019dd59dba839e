"""The training engine: config resolution, schedule, outputs, checkpoints, resume, signals, NaN, DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import pemn
from conftest import quick_config, quiet
from pemn.training.augment import build_eval_transform
from pemn.training.checkpoint import read_checkpoint
from pemn.training.config import (
    ARTIFACT_FIELDS,
    AUTO_PEMN_FIELDS,
    PEMN_CONFIG_FIELDS,
    PEMN_FIELDS,
    PEMN_STRATEGIES,
    RECIPE_FIELDS,
    RECIPES,
    STRATEGY_TABLE,
    TRAIN_STRATEGIES,
    TrainConfig,
    resolve_config,
)
from pemn.training.data import dataset_info, load_dataset
from pemn.training.engine import NonFiniteLossError, TrainingInterrupted, schedule_lr, train
from pemn.training.evaluation import evaluate
from pemn.training.models import create_model
from pemn.training.prune import load_sparse

SRC = str(Path(pemn.__file__).resolve().parents[1])
TIMING = ("seconds", "images_per_s")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def quick(tmp_path: Path, name: str = "run", **kw: Any) -> TrainConfig:
    """A run of a fraction of a second: tiny-mlp masks on 512 digits."""
    return quick_config(**{"strategy": "mask", "train_subset": 512, "epochs": 2, "batch_size": 32, "lr": 0.05,
                           "out": tmp_path / name, **kw})


def no_tmp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# ---------------------------------------------------------------------------------------------- config


def test_fields_are_simple_json_with_defaults_and_help():
    hints = get_type_hints(TrainConfig)
    simple = {str, int, float, bool, str | None, int | None, float | None, bool | None, list[str] | None}
    for f in dataclasses.fields(TrainConfig):
        assert f.default is not dataclasses.MISSING, f.name
        assert f.metadata.get("help"), f.name
        assert hints[f.name] in simple, (f.name, hints[f.name])
    json.dumps(TrainConfig().to_dict())


def test_default_recipe_equals_dataclass_defaults():
    defaults = TrainConfig()
    assert resolve_config({}) == defaults
    assert {k: getattr(defaults, k) for k in RECIPE_FIELDS} == RECIPES["adamw"]


def test_recipes():
    for name, values in RECIPES.items():
        assert set(values) == set(RECIPE_FIELDS), name
        assert resolve_config({}, recipe=name).recipe == name
    cm = RECIPES["convmixer"]
    assert (cm["optimizer"], cm["lr"], cm["weight_decay"], cm["batch_size"], cm["schedule"], cm["augment"],
            cm["epochs"], cm["amp"], cm["clip_norm"]) == ("adamw", 0.05, 0.005, 512, "paper", "convmixer", 100, None,
                                                           None)
    rs = RECIPES["resnet-sgd"]
    assert (rs["optimizer"], rs["momentum"], rs["weight_decay"], rs["lr"], rs["batch_size"], rs["schedule"],
            rs["augment"], rs["epochs"]) == ("sgd", 0.9, 5e-4, 0.1, 128, "cosine", "flip-crop", 200)


def test_precedence_defaults_recipe_file_overrides(tmp_path):
    cfg = resolve_config({}, recipe="convmixer")
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.model) == (0.05, 512, 100, "mlp")
    file = tmp_path / "cfg.json"
    file.write_text(json.dumps({"lr": 0.02, "epochs": 3, "batch-size": 64, "recipe": "convmixer"}))
    cfg = resolve_config({"epochs": 4}, config_file=file)
    assert (cfg.recipe, cfg.lr, cfg.epochs, cfg.batch_size, cfg.weight_decay) == ("convmixer", 0.02, 4, 64, 0.005)
    cfg = resolve_config({"epochs": 4, "recipe": "resnet-sgd"}, config_file=file)  # explicit recipe wins
    assert (cfg.recipe, cfg.optimizer, cfg.lr, cfg.epochs) == ("resnet-sgd", "sgd", 0.02, 4)
    cfg = resolve_config({"lr": 1}, recipe="mnist")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    # a run's config.json is a valid config file
    file.write_text(json.dumps(quick(tmp_path).to_dict()))
    assert resolve_config({}, config_file=file) == quick(tmp_path)


@pytest.mark.parametrize(("settings", "match"), [
    ({"epoch": 3}, r"unknown setting.*'epoch'.*valid: model, dataset"),
    ({"recipe": "sgd"}, r"unknown recipe 'sgd'; valid: adamw, convmixer, resnet-sgd, mnist"),
    ({"model": "resnet7"}, r"unknown model 'resnet7'.*valid names"),
    ({"dataset": "svhn"}, r"unknown dataset 'svhn'; valid names: digits"),
    ({"strategy": "lora"}, r"unknown strategy 'lora'; valid: dense, mask, one_layer, mp, rp"),
    ({"optimizer": "adam"}, r"valid: adamw, sgd"),
    ({"schedule": "step"}, r"valid: paper, cosine, constant"),
    ({"augment": "autoaugment"}, r"valid: none, flip-crop, .*convmixer"),
    ({"coding": "zip"}, r"valid: packed, entropy"),
    ({"prune": "minimum", "strategy": "dense"}, r"valid: random, magnitude"),
    ({"strategy": "mp", "ratio": 0.1}, r"ratio applies only to strategy 'rp'"),
    ({"strategy": "mask", "prune": "random"}, r"needs strategy 'dense'"),
    ({"strategy": "dense", "compression": 0.9}, r"compression .* needs prune"),
    ({"strategy": "dense", "prune_scope": "global"}, r"prune_scope needs prune"),
    ({"strategy": "dense", "prune": "random", "compression": 1.5}, r"compression must be in \(0, 1\)"),
    ({"strategy": "dense", "keep": 0.3}, r"PEMN option\(s\) \['keep'\] do not apply"),
    ({"strategy": "dense", "ratio": 0.1}, r"ratio applies only"),
    ({"strategy": "dense", "fill": "rand"}, r"\['fill'\]"),
    ({"strategy": "dense", "init": "signed_constant"}, r"\['init'\]"),
    ({"strategy": "dense", "rescale": True}, r"\['rescale'\]"),
    ({"strategy": "dense", "targets": ["Linear"]}, r"\['targets'\]"),
    ({"strategy": "dense", "exclude": ["Linear"]}, r"\['exclude'\]"),
    ({"strategy": "mask", "fill": "rand"}, r"fill='rand' applies only"),
    ({"keep": 1.5}, r"0 < keep <= 1"),
    ({"epochs": "3"}, r"epochs must be int"),
    ({"epochs": 0}, r"epochs must be >= 1"),
    ({"lr": True}, r"lr must be float"),
    ({"lr": 0}, r"lr must be a finite number > 0"),
    ({"targets": [1]}, r"targets must be list"),
    ({"device": "gpu0"}, r"device must be"),
    ({"resume": True}, r"resume needs out"),
])
def test_invalid_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(settings)


def test_more_resolution_errors(tmp_path):
    with pytest.raises(ValueError, match="two recipes"):
        resolve_config({"recipe": "mnist"}, recipe="convmixer")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_config({}, config_file=bad)
    bad.write_text(json.dumps({"lr": 0.1, "learning_rate": 1}))
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['learning_rate'\]"):
        resolve_config({}, config_file=bad)
    with pytest.raises(ValueError, match="cannot read"):
        resolve_config({}, config_file=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_dict({"nope": 1})


def test_to_dict_from_dict_round_trip():
    cfg = resolve_config({"targets": ("Conv2d",), "exclude": "Linear", "strategy": "mp", "recipe": "mnist"})
    assert cfg.targets == ["Conv2d"] and cfg.exclude == ["Linear"]
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == cfg
    assert TrainConfig.from_dict({"batch-size": 7}).batch_size == 7
    assert set(PEMN_FIELDS) <= set(d)


@pytest.mark.parametrize(("optimizer", "key", "expected"), [
    ("adamw", "betas", (0.8, 0.999)), ("sgd", "momentum", 0.8),
])
def test_momentum_applies_to_both_optimizers(optimizer, key, expected):
    """--momentum is SGD's momentum and AdamW's beta1 (it was silently ignored with AdamW)."""
    from pemn.training.engine import _optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    cfg = TrainConfig(strategy="dense", optimizer=optimizer, momentum=0.8)
    assert _optimizer(cfg, torch.nn.Linear(1, 1), params).param_groups[0][key] == expected
    default = _optimizer(TrainConfig(strategy="dense"), torch.nn.Linear(1, 1), params)
    assert default.param_groups[0]["betas"] == torch.optim.AdamW(params).defaults["betas"]  # numerics unchanged


def test_strategy_table_agrees_with_the_core():
    """The training strategies' table says what PEMNConfig enforces: which strategies take a ratio or a fill."""
    assert pemn.config.STRATEGIES == PEMN_STRATEGIES
    assert ("dense", *PEMN_STRATEGIES) == TRAIN_STRATEGIES
    for name in PEMN_STRATEGIES:
        row = STRATEGY_TABLE[name]
        for setting, takes in (({"ratio": 0.1}, row.takes_ratio), ({"fill": "rand"}, row.takes_fill)):
            if takes:
                pemn.PEMNConfig(strategy=name, **setting)
            else:
                with pytest.raises(ValueError, match="applies only"):
                    pemn.PEMNConfig(strategy=name, **setting)
    assert not STRATEGY_TABLE["dense"].pemn and len({r.label for r in STRATEGY_TABLE.values()}) == len(STRATEGY_TABLE)


# a value other than the default for every field of PEMNConfig that TrainConfig carries
_PEMN_VALUES = {"ratio": 0.05, "fill": "rand", "keep": 0.3, "init": "signed_constant", "rescale": True,
                "scope": "global", "targets": ["Linear"], "exclude": ["0"], "keep_rounding": "paper",
                "keep_scale": True, "mask_sampling": "bernoulli", "keep_rule": "erk", "gain": True}


def test_pemn_fields_are_the_pemnconfig_fields():
    """TrainConfig builds its PEMNConfig from PEMNConfig's own field list, so a field added to the core reaches
    training (and is refused for dense runs) without being restated."""
    core = {f.name: f for f in dataclasses.fields(pemn.PEMNConfig)}
    assert set(PEMN_CONFIG_FIELDS) == set(core) - {"strategy", "seed"}
    assert set(PEMN_FIELDS) >= set(PEMN_CONFIG_FIELDS) | set(ARTIFACT_FIELDS)
    defaults = TrainConfig()
    for name in PEMN_CONFIG_FIELDS:  # the same defaults (exclude: None and () both mean nothing excluded)
        if name in AUTO_PEMN_FIELDS:  # "auto", resolved by the application (tests/test_sub_bit.py)
            assert getattr(defaults, name) == "auto", name
            continue
        f = core[name]
        core_default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert (getattr(defaults, name) or None) == (core_default or None), name
    assert set(_PEMN_VALUES) >= set(PEMN_CONFIG_FIELDS), "give the new field a non-default value above"
    values = {k: v for k, v in _PEMN_VALUES.items() if k in PEMN_CONFIG_FIELDS}
    for name, value in values.items():  # one at a time: some exclude others (bernoulli and erk need scope layer)
        built = TrainConfig(strategy="rp", seed=7, **{name: value}).pemn_config()
        got = getattr(built, name)
        assert (list(got) if isinstance(got, tuple) else got) == value, name
        assert (built.strategy, built.seed) == ("rp", 7)


@pytest.mark.parametrize("name", PEMN_CONFIG_FIELDS + ARTIFACT_FIELDS)
def test_every_pemn_field_is_refused_for_dense(name):
    value = {**_PEMN_VALUES, "coding": "entropy", "prototype": "seed", "extras_dtype": "float16",
             "fold_norms": True}[name]
    with pytest.raises(ValueError, match=rf"(PEMN option\(s\) \['{name}'\] do not apply|ratio applies only)"):
        TrainConfig(strategy="dense", **{name: value})


# -------------------------------------------------------------------------------------------- schedule


def test_paper_schedule_knots_exact():
    lr = 0.05
    for epochs in (1, 2, 3, 5, 7, 10, 25, 100):
        # the default: knots at 0.4 E and 0.8 E; --paper (whole_epoch_knots): the official code's whole epochs
        for whole, knots in ((False, [0, epochs * 2 / 5, epochs * 4 / 5, epochs]),
                             (True, [0, epochs * 2 // 5, epochs * 4 // 5, epochs])):
            for t in np.linspace(0, epochs, 97).tolist() + [float(k) for k in knots] + [epochs + 1.0]:
                expected = float(np.interp(t, knots, [0, lr, lr / 20, 0]))
                assert schedule_lr("paper", lr, epochs, t, whole_epoch_knots=whole) == expected, (epochs, t)
    assert [schedule_lr("paper", lr, 100, t) for t in (0, 40, 80, 100)] == [0.0, lr, lr / 20, 0.0]
    assert [schedule_lr("paper", lr, 10, t) for t in (0, 4, 8, 10)] == [0.0, lr, lr / 20, 0.0]
    assert schedule_lr("paper", lr, 10, 2) == lr / 2
    assert schedule_lr("cosine", 0.1, 10, 0) == 0.1 and schedule_lr("cosine", 0.1, 10, 10) == 0.0
    assert schedule_lr("cosine", 0.1, 10, 5) == pytest.approx(0.05)
    assert schedule_lr("constant", 0.1, 10, 7.3) == 0.1


def test_schedule_is_applied_per_iteration(tmp_path, monkeypatch):
    seen: list[float] = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    # 5 epochs x 4 steps: knots 2 and 4 fall on the last iteration of epochs 2 and 4
    cfg = quick(tmp_path, model="tiny-mlp", train_subset=128, batch_size=32, epochs=5, lr=0.04)
    result = train(cfg, log=quiet)
    steps = 4
    assert len(seen) == 5 * steps
    assert seen == [schedule_lr("paper", 0.04, 5, (i + 1) / steps) for i in range(len(seen))]
    assert seen[2 * steps - 1] == 0.04 and seen[4 * steps - 1] == 0.04 / 20 and seen[-1] == 0.0
    assert seen[0] == 0.04 * (1 / steps) / 2
    metrics = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in metrics] == [seen[(e + 1) * steps - 1] for e in range(5)]


# --------------------------------------------------------------------------------------------- running


def test_pemn_run_outputs(tmp_path):
    lines: list[str] = []
    cfg = quick(tmp_path, epochs=3)
    result = train(cfg, log=lines.append)
    out = tmp_path / "run"
    assert result.out_dir == out
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.jsonl", "checkpoint.safetensors",
                                                 "model.pemn", "result.json"}
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert set(metrics[0]) == {"epoch", "lr", "train_loss", "train_acc", "test_acc", "seconds", "images_per_s"}
    assert result.final_acc == metrics[-1]["test_acc"]
    assert result.best_acc == max(m["test_acc"] for m in metrics)
    assert metrics[result.best_epoch - 1]["test_acc"] == result.best_acc
    assert result.best_acc > 40  # ten classes: chance is 10 %
    assert result.epochs_run == 3 and result.seconds > 0
    assert result.artifact == out / "model.pemn" and result.artifact_bytes == result.artifact.stat().st_size
    assert result.artifact_acc == result.final_acc
    assert result.summary["strategy"] == "mask" and result.summary["file_bytes"] == result.artifact_bytes
    saved = json.loads((out / "result.json").read_text())
    assert saved["best_acc"] == result.best_acc and saved["final_acc"] == result.final_acc
    assert "best_acc is the highest per-epoch test accuracy" in saved["note"]
    # the artifact reproduces the final model
    info = dataset_info("digits")
    images, labels = load_dataset("digits", split="test")
    model = pemn.load(result.artifact, create_model("tiny-mlp", num_classes=10, in_channels=1, image_size=8))
    assert evaluate(model, images, labels, transform=build_eval_transform(info)) == result.final_acc
    text = "\n".join(lines)
    assert "best test accuracy" in text and "final-epoch accuracy" in text and "img/s" in text and "ETA" in text
    assert no_tmp_files(out)


def test_rp_tiny_mlp_and_default_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = quick(tmp_path, model="tiny-mlp", strategy="rp", ratio=0.05, epochs=1, out=None)
    result = train(cfg, log=quiet)
    assert result.out_dir.parent == Path("runs")
    assert result.out_dir.name.endswith("-tiny-mlp-digits-rp")
    assert (result.out_dir / "model.pemn").exists()
    assert result.summary["unique_values"] == int(0.05 * 64 * 16) + 1


def test_dense_run_writes_safetensors(tmp_path):
    result = train(quick(tmp_path, strategy="dense", lr=0.01, epochs=3), log=quiet)
    assert result.artifact is None and result.artifact_bytes is None
    assert result.weights == tmp_path / "run" / "model.safetensors"
    state = load_file(str(result.weights))
    assert all(v.dtype == torch.float32 for v in state.values())
    model = create_model("tiny-mlp", num_classes=10, in_channels=1, image_size=8)
    model.load_state_dict(state)
    images, labels = load_dataset("digits", split="test")
    acc = evaluate(model, images, labels, transform=build_eval_transform(dataset_info("digits")))
    assert acc == result.final_acc == result.artifact_acc
    assert result.best_acc > 50
    assert result.summary["dense_bytes"] == 4 * sum(v.numel() for v in state.values())


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_prune_run(tmp_path, method):
    # the mlp, not tiny-mlp: the file's few hundred bytes of metadata would dominate a 1,200-weight model
    cfg = quick(tmp_path, model="mlp", strategy="dense", prune=method, compression=0.9, lr=0.01)
    result = train(cfg, log=quiet)
    path = tmp_path / "run" / "model.sparse.safetensors"
    assert result.weights == path and result.sparse_bytes == result.weights_bytes == path.stat().st_size
    model = load_sparse(path, create_model("mlp", num_classes=10, in_channels=1, image_size=8))
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.9 * sum(w.numel() for w in weights))
    assert result.artifact_acc == result.final_acc
    assert result.summary["kept_weights"] == sum(w.numel() for w in weights) - zeros
    assert result.summary["paper_ratio"] == pytest.approx(0.9, abs=1e-3)
    assert result.sparse_bytes < result.summary["dense_bytes"] / 3


class _FakeBar:
    """Stands in for tqdm: records what the training loop shows."""

    bars: ClassVar[list[_FakeBar]] = []

    def __init__(self, *, total: int, desc: str, **_kw: Any) -> None:
        self.total, self.desc, self.n, self.postfix, self.closed = total, desc, 0, {}, False
        _FakeBar.bars.append(self)

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = kw

    def close(self) -> None:
        self.closed = True


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    """On a terminal each epoch gets a bar that counts every trained image and shows the loss, and is closed."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=_FakeBar))
    monkeypatch.setattr(_FakeBar, "bars", [])
    train(quick(tmp_path, progress=True, epochs=2), log=quiet)  # 512 images, batch 32: 16 steps per epoch
    epochs = [b for b in _FakeBar.bars if b.desc.startswith("epoch")]
    assert [(b.desc, b.total, b.n) for b in epochs] == [("epoch 1/2", 512, 512), ("epoch 2/2", 512, 512)]
    assert all(b.closed for b in _FakeBar.bars) and all(float(b.postfix["loss"]) > 0 for b in epochs)
    _FakeBar.bars.clear()
    train(quick(tmp_path, "quiet", progress=False, epochs=1), log=quiet)
    assert _FakeBar.bars == []  # progress=False: no bar


def test_plain_progress_lines_without_tqdm(tmp_path, monkeypatch):
    monkeypatch.setattr("pemn.training.progress.PLAIN_PROGRESS_EVERY", 0.0)  # a line after every step
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    lines: list[str] = []
    train(quick(tmp_path, "plain", progress=True, epochs=1), log=lines.append)
    counts = [line.split(": ", 1)[1].split(" images")[0] for line in lines if line.startswith("  epoch 1/1: ")]
    assert counts == [f"{32 * k}/512" for k in range(1, 17)]  # one line per step, counting every image
    assert all("img/s" in line and "ETA" in line for line in lines if line.startswith("  epoch"))


def test_evaluate_counts_top1_and_restores_mode():
    torch.manual_seed(0)
    model = create_model("tiny-mlp", num_classes=10, in_channels=1, image_size=8)
    images, labels = load_dataset("digits", split="test")
    transform = build_eval_transform(dataset_info("digits"))
    with torch.no_grad():
        expected = 100.0 * float((model.eval()(transform(images)).argmax(1) == labels).sum()) / len(labels)
    model.train()
    assert evaluate(model, images, labels, transform=transform, batch_size=100) == expected
    assert evaluate(model, images, labels, transform=transform, batch_size=7) == expected  # any batching
    assert model.training
    model.eval()
    assert evaluate(model, images, labels, transform=transform) == expected and not model.training
    assert evaluate(model, images[:0], labels[:0], transform=None) == 0.0
    always = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # predicts one class for everything
    with torch.no_grad():
        always[1].weight.zero_()
        always[1].bias.copy_(torch.eye(10)[3])
    assert evaluate(always, images, labels, transform=transform) == 100.0 * float((labels == 3).sum()) / len(labels)


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_is_safetensors_not_pickle(tmp_path, monkeypatch):
    with pytest.raises(TrainingInterrupted):
        train(quick(tmp_path, epochs=2), log=quiet, stop_after_epoch=1)
    path = tmp_path / "run" / "checkpoint.safetensors"
    data = path.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    assert data[8:9] == b"{" and not data.startswith(b"PK") and b"\x80\x02" not in data[:2]
    meta = header["__metadata__"]
    assert meta["format"] == "pemn-checkpoint"
    names = set(header) - {"__metadata__"}
    assert "rng/cpu" in names and any(n.startswith("model/") and n.endswith(".scores") for n in names)
    assert {"optim/0/exp_avg", "optim/0/exp_avg_sq", "optim/0/step"} <= names
    _tensors, meta = read_checkpoint(path)
    assert meta["state"]["epoch"] == 1 and meta["state"]["step"] == 0
    assert meta["config"] == quick(tmp_path, epochs=2).to_dict()

    def forbidden(*args, **kwargs):
        raise AssertionError("the checkpoint loader must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    result = train(quick(tmp_path, epochs=2, resume=True), log=quiet)
    assert result.epochs_run == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="never unpickles"):
        read_checkpoint(bad)
    # a checkpoint whose metadata lost its config: one clear ValueError, not a KeyError from deep inside
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for broken in ({k: v for k, v in meta.items() if k != "config"}, {**meta, "state": "{not json"}):
        save_file(tensors, str(bad), metadata=broken)
        with pytest.raises(ValueError, match="corrupt pemn training checkpoint"):
            read_checkpoint(bad)


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def same_safetensors(a: Path, b: Path) -> None:
    """Equal tensors and metadata (safetensors writes its metadata map in no fixed order, so not bytes)."""
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert fa.metadata() == fb.metadata()
    assert a.stat().st_size == b.stat().st_size


def metrics_of(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("stop", [{"stop_after_epoch": 1}, {"stop_after_step": 6}],
                         ids=["after-epoch", "mid-epoch"])
def test_resume_equals_uninterrupted(tmp_path, stop):
    kw = {"model": "tiny-cnn", "strategy": "rp", "ratio": 0.2, "epochs": 3, "augment": "flip-crop",
          "train_subset": 160, "batch_size": 32}
    straight = train(quick(tmp_path, "a", **kw), log=quiet)
    with pytest.raises(TrainingInterrupted) as info:
        train(quick(tmp_path, "b", **kw), log=quiet, **stop)
    assert info.value.checkpoint == tmp_path / "b" / "checkpoint.safetensors"
    assert not (tmp_path / "b" / "model.pemn").exists() and not (tmp_path / "b" / "result.json").exists()
    if "stop_after_step" in stop:  # stopped inside epoch 2 (5 steps per epoch)
        assert (info.value.epoch, info.value.step) == (1, 1)
        assert "in epoch 2/3 after step 1 of 5;" in str(info.value)
        assert read_checkpoint(info.value.checkpoint)[1]["state"]["step"] == 1
    resumed = train(quick(tmp_path, "b", **kw, resume=True, progress=True), log=quiet)
    state_equal(straight.model, resumed.model)
    assert metrics_of(tmp_path / "a") == metrics_of(tmp_path / "b")
    same_safetensors(tmp_path / "a" / "model.pemn", tmp_path / "b" / "model.pemn")
    assert (straight.best_acc, straight.final_acc, straight.state_sha256) == (
        resumed.best_acc, resumed.final_acc, resumed.state_sha256)


def test_resume_checks(tmp_path):
    with pytest.raises(TrainingInterrupted):
        train(quick(tmp_path, epochs=2), log=quiet, stop_after_epoch=1)
    with pytest.raises(ValueError, match=r"these differ: --lr 0.1 \(the run has 0.05\)"):
        train(quick(tmp_path, epochs=2, lr=0.1, resume=True), log=quiet)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(quick(tmp_path, epochs=2), log=quiet)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):  # tests/test_interrupt_and_resume.py
        train(quick(tmp_path, "fresh", epochs=1, resume=True), log=quiet)
    # a run stopped before its first checkpoint (only its config.json) starts again with its settings
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.json").write_text(json.dumps(quick(tmp_path, "early", epochs=1).to_dict()))
    lines: list[str] = []
    result = train(quick(tmp_path, "early", epochs=1, resume=True), log=lines.append)
    assert result.epochs_run == 1 and any("starting it again from scratch" in line for line in lines)


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    cfg = quick(tmp_path, strategy="dense", optimizer="sgd", lr=1e30, schedule="constant", train_subset=128)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1/2, step 2/4.*Lower the learning rate") as info:
        train(cfg, log=quiet)
    assert isinstance(info.value, RuntimeError)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} == {"config.json"}  # nothing half-written, no model


def test_signal_in_process_saves_and_restores_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)

    def log(line: str) -> None:
        if line.startswith("epoch 1/"):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="SIGTERM") as info:
        train(quick(tmp_path, epochs=3), log=log)
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before
    _tensors, meta = read_checkpoint(info.value.checkpoint)
    assert meta["state"]["epoch"] == 1
    result = train(quick(tmp_path, epochs=3, resume=True), log=quiet)
    assert result.epochs_run == 3


SIGTERM_CHILD = """
import sys
from pemn.training.config import resolve_config
from pemn.training.engine import TrainingInterrupted, train
cfg = resolve_config({"model": "tiny-cnn", "dataset": "digits", "strategy": "mask", "epochs": 500,
                      "batch_size": 32, "device": "cpu", "progress": True, "out": sys.argv[1]})
try:
    train(cfg, log=lambda line: print(line, flush=True))
except TrainingInterrupted as e:
    print("CLEAN EXIT", e.epoch, e.step, flush=True)
    sys.exit(e.exit_code)
"""


@pytest.mark.slow  # a subprocess (or ONNX export), seconds
def test_sigterm_subprocess(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(SIGTERM_CHILD)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env())
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.safetensors").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the child never finished an epoch"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "Traceback" not in stderr and "CLEAN EXIT" in stdout and "checkpoint saved" in stdout
    tensors, meta = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["state"]["epoch"] >= 1 and any(k.startswith("model/") for k in tensors)
    assert no_tmp_files(out) and not (out / "model.pemn").exists()
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == meta["state"]["epoch"] == len(meta["state"]["history"])


# ------------------------------------------------------------------------------------------ distributed


DDP_CHILD = """
import hashlib, json, os, sys
import torch
import torch.distributed as dist
import pemn
from pemn.training.config import resolve_config
from pemn.training.engine import train

own_group = sys.argv[3] == "caller"  # else train() initialises (and destroys) the process group itself
if own_group:
    dist.init_process_group("gloo")
cfg = resolve_config({"model": "tiny-cnn", "dataset": "digits", "strategy": "rp", "ratio": 0.1, "epochs": 1,
                      "batch_size": 64, "lr": 0.05, "device": "cpu", "progress": False, "out": sys.argv[1]})
result = train(cfg, log=lambda line: print(line, flush=True))
rank = int(os.environ["RANK"])
h = hashlib.sha256()
for name, mw in sorted(pemn.masked_weights(result.model).items()):
    h.update(name.encode())
    h.update(mw.current_mask().numpy().tobytes())
if own_group:
    digest = torch.tensor(list(h.digest()), dtype=torch.uint8)
    gathered = [torch.empty_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, digest)
    assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks disagree on the masks"
else:
    assert not dist.is_initialized()
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world": result.world_size, "mask_sha256": h.hexdigest(), "state": result.state_sha256,
               "final": result.final_acc, "artifact": str(result.artifact)}, f)
del result
if own_group:
    dist.barrier()
    dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a subprocess (or ONNX export), seconds
@pytest.mark.parametrize("group", ["caller", "train"])
def test_torchrun_two_processes(tmp_path, group):
    """A real 2-process gloo run: same masks everywhere, all-reduced metrics, only rank 0 writes."""
    script = tmp_path / "ddp_child.py"
    script.write_text(DDP_CHILD)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", str(script), str(out), str(tmp_path), group],
        capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in results] == [0, 1] and {r["world"] for r in results} == {2}
    assert results[0]["mask_sha256"] == results[1]["mask_sha256"] and results[0]["state"] == results[1]["state"]
    assert results[0]["final"] == results[1]["final"]
    assert results[0]["artifact"] == str(out / "model.pemn") and results[1]["artifact"] == "None"
    # only rank 0 wrote (and logged) anything
    assert proc.stdout.count("pemn train:") == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    saved = json.loads((out / "result.json").read_text())
    assert saved["world_size"] == 2 and saved["final_acc"] == results[0]["final"]
    _tensors, meta = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["state"]["world_size"] == 2
    # 1438 digits: 719 per rank, 32 per rank and step -> 22 full steps + one of 15
    assert meta["state"]["steps_per_epoch"] == 23
    assert (out / "model.pemn").exists() and no_tmp_files(out)


# ------------------------------------------------------------------------------------------------ slow


MNIST_DIR = Path("/work/shared/data")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PEMN_SLOW") != "1", reason="set PEMN_SLOW=1 to run the MNIST run (minutes)")
def test_mnist_rp_reaches_97(tmp_path):
    data_dir = os.environ.get("PEMN_DATA_DIR", str(MNIST_DIR))
    cfg = resolve_config({"model": "lenet5", "dataset": "mnist", "data_dir": data_dir, "strategy": "rp",
                          "ratio": 1e-3, "rescale": True, "out": str(tmp_path / "mnist"), "progress": False},
                         recipe="mnist")
    torch.set_num_threads(int(os.environ.get("PEMN_THREADS", "2")))
    result = train(cfg)
    print(f"MNIST lenet5 RP 1e-3: best {result.best_acc:.2f}% final {result.final_acc:.2f}% in {result.seconds:.0f} s")
    assert result.final_acc >= 97.0, result
    assert result.summary["unique_values"] == int(1e-3 * 400 * 120) + 1


def test_module_namespace_is_clean():
    import pemn.training.engine as t

    assert isinstance(t, types.ModuleType)
    for name in t.__all__:
        assert hasattr(t, name)


def _to_legacy_names(checkpoint: Path) -> None:
    """Rewrite a checkpoint as the code before the `pemn_<param>` child names wrote it (`<param>_masked`)."""
    import re

    from safetensors.torch import save_file

    with safe_open(str(checkpoint), "pt") as f:
        meta = f.metadata()
        names = list(f.keys())  # a safe_open handle, not a dict
        tensors = {re.sub(r"(^|\.)pemn_(\w+)\.", r"\1\2_masked.", k): f.get_tensor(k) for k in names}
    assert any(k.endswith("weight_masked.scores") for k in tensors)
    save_file(tensors, str(checkpoint), metadata=meta)


def test_a_checkpoint_with_the_old_child_names_resumes(tmp_path):
    """Checkpoints written before masked weights became `pemn_<param>` children still resume, exactly."""
    straight = train(quick(tmp_path, "a", epochs=2), log=quiet)
    with pytest.raises(TrainingInterrupted):
        train(quick(tmp_path, "b", epochs=2), log=quiet, stop_after_epoch=1)
    _to_legacy_names(tmp_path / "b" / "checkpoint.safetensors")
    resumed = train(quick(tmp_path, "b", epochs=2, resume=True), log=quiet)
    assert resumed.state_sha256 == straight.state_sha256


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingInterrupted):
        train(quick(tmp_path, "b", epochs=2), log=quiet, stop_after_epoch=1)
    path = tmp_path / "b" / "checkpoint.safetensors"
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        names = list(f.keys())  # a safe_open handle, not a dict
        tensors = {k: f.get_tensor(k) for k in names if not k.endswith(".bias")}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"does not fit this model .*missing: .*bias"):
        train(quick(tmp_path, "b", epochs=2, resume=True), log=quiet)
