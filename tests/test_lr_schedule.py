"""The learning-rate schedule: ``paper`` equals the official PEMN code when five divides the epochs, short runs
warm up to lr (step knots; ``--paper`` keeps whole-epoch knots), and a two-epoch MNIST run learns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import quick_config, quiet
from pemn.training.config import resolve_config
from pemn.training.engine import schedule_lr, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


MNIST = Path("/work/shared/data/mnist")


def _official(epochs: int, steps: int, lr: float) -> np.ndarray:
    """The official PEMN code's learning rate at every iteration: np.interp over whole-epoch knots."""
    t = np.array([e + (s + 1) / steps for e in range(epochs) for s in range(steps)])
    return np.interp(t, [0, epochs * 2 // 5, epochs * 4 // 5, epochs], [0, lr, lr / 20, 0])


@pytest.mark.parametrize("epochs", [5, 10, 200])
@pytest.mark.parametrize("steps", [98, 391])  # CIFAR-10 at batch 512 and 128
def test_paper_schedule_equals_the_official_code_when_five_divides_the_epochs(epochs: int, steps: int) -> None:
    lr = 0.05
    want = _official(epochs, steps, lr).tolist()
    for knots in (False, True):
        got = [schedule_lr("paper", lr, epochs, e + (s + 1) / steps, whole_epoch_knots=knots)
               for e in range(epochs) for s in range(steps)]
        assert got == want  # bit for bit, every step


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 8])
def test_paper_schedule_of_a_short_run_warms_up_to_lr(epochs: int) -> None:
    """The knots sit at 0.4 E and 0.8 E (between steps): 1- and 2-epoch runs reach lr; --paper keeps the official
    whole-epoch knots (at 1 and 2 epochs: no warm-up at all)."""
    lr, steps = 0.01, 100
    ts = [e + (s + 1) / steps for e in range(epochs) for s in range(steps)]
    lrs = [schedule_lr("paper", lr, epochs, t) for t in ts]
    assert max(lrs) == pytest.approx(lr) and lrs[0] < lr / 10
    assert lrs.index(max(lrs)) == round(0.4 * epochs * steps) - 1
    assert schedule_lr("paper", lr, epochs, 0.8 * epochs) == pytest.approx(lr / 20)
    official = _official(epochs, steps, lr).tolist()
    assert [schedule_lr("paper", lr, epochs, t, whole_epoch_knots=True) for t in ts] == official


def _step_lrs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> list[float]:
    seen: list[float] = []
    original = torch.optim.AdamW.step

    def step(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    train(quick_config(**{"strategy": "mask", "train_subset": 320, "batch_size": 32, "lr": 0.04, "out": out, **kw}),
          log=quiet)
    return seen


def test_training_uses_step_knots_and_paper_keeps_whole_epochs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    lrs = _step_lrs(tmp_path, monkeypatch, epochs=2)  # 2 x 10 steps: peak after step 8 (0.8 epochs)
    assert len(lrs) == 20 and lrs[7] == pytest.approx(0.04) and max(lrs) == lrs[7]
    assert lrs[15] == pytest.approx(0.04 / 20) and lrs[-1] == 0.0
    paper = _step_lrs(tmp_path, monkeypatch, epochs=2, paper=True)
    assert paper == _official(2, 10, 0.04).tolist() and paper[0] > 0.9 * 0.04  # the official rule: no warm-up


@pytest.mark.slow  # real MNIST, ~10 s
@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason="needs the MNIST files")
def test_two_epoch_lenet5_on_mnist_learns(tmp_path: Path) -> None:
    """The issue's command stayed at chance (11 %) with whole-epoch knots."""
    cfg = resolve_config({"model": "lenet5", "dataset": "mnist", "data_dir": str(MNIST), "epochs": 2,
                          "train_subset": 4096, "progress": False, "device": "cpu", "out": str(tmp_path / "r")})
    result = train(cfg, log=quiet)
    assert result.final_acc > 80.0, result.final_acc
    assert json.loads((tmp_path / "r" / "result.json").read_text())["final_acc"] == result.final_acc
