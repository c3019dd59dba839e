"""Issue 21, items 4-10: behaviour that was wrong or silent. The paper schedule of short runs, text runs' progress
and --eval-subset, the thread default of every command, --resume of nothing, the data folder a run recorded,
files that are not model files, and the headline example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import quick_config
from pemn.training.config import resolve_config
from pemn.training.engine import schedule_lr, train

REPO = Path(__file__).resolve().parent.parent
MNIST = Path("/work/shared/data/mnist")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------------------------- 4. paper schedule


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


# --------------------------------------------------------------------------------------------- 5. text runs

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 4


def _text_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "input.txt").write_text(TEXT)
    return data


def _text_cfg(tmp_path: Path, out: str = "run", **kw: Any) -> Any:
    return quick_config(text_dir=_text_dir(tmp_path), **{"strategy": "rp", "ratio": 0.1, "out": tmp_path / out, **kw})


def test_text_progress_counts_characters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    import pemn.training.progress as progress

    monkeypatch.setattr(progress, "PLAIN_PROGRESS_EVERY", 0.0)
    lines: list[str] = []
    train(_text_cfg(tmp_path, progress=True), log=lines.append)
    shown = [m.groups() for line in lines if (m := re.search(r"epoch \d/2: ([\d,]+)/([\d,]+) (\w+)", line))]
    # 9 steps of 4 windows of 8 characters in epoch 1, then 3 steps: characters against characters
    assert shown[0] == ("32", "288", "characters") and shown[8] == ("288", "288", "characters"), lines
    assert shown[-1] == ("96", "96", "characters")
    assert all(int(done.replace(",", "")) <= int(total.replace(",", "")) for done, total, _ in shown)
    assert not any("images" in line for line in lines), lines


def test_text_eval_subset_is_honoured(tmp_path: Path) -> None:
    """--eval-subset N: the first N validation characters are predicted, every epoch and for the saved model;
    pemn eval --eval-subset does the same."""
    from cli_run import run
    from pemn.training.sample import build_lm
    from pemn.training.text import evaluate_lm, load_text

    lines: list[str] = []
    result = train(_text_cfg(tmp_path, eval_subset=20), log=lines.append)
    corpus = load_text(tmp_path / "data", 8)
    assert corpus.val.numel() > 21
    model, _ = build_lm(tmp_path / "run" / "model.pemn")
    sub = evaluate_lm(model, corpus.val[:21], 8)
    assert sub["characters"] == 20 and result.val_loss == sub["val_loss"] != evaluate_lm(model, corpus.val, 8)[
        "val_loss"]
    assert any("evaluation: the first 20 of 32 validation characters" in line for line in lines), lines
    assert not any("test images" in line for line in lines), lines
    done = [line for line in lines if line.startswith("done")]
    assert "the first 20 of 32 validation characters" in done[0] and "whole validation split" not in done[0]
    code, out, err = run(["eval", str(tmp_path / "run" / "model.pemn"), "--eval-subset", "20", "--json"])
    assert code == 0, err
    got = json.loads(out)
    assert got["characters"] == 20 and got["val_loss"] == result.val_loss


# --------------------------------------------------------------------------------------------- 6. threads


def _digits_run(tmp_path: Path, name: str = "img", *extra: str) -> Path:
    from cli_run import run

    out = tmp_path / name
    code, _, err = run(["train", "--model", "tiny-mlp", "--strategy", "mask", "--epochs", "1", "--train-subset", "128",
                        "--no-progress", "--device", "cpu", "--threads", "1", "--out", str(out), *extra])
    assert code == 0, err
    return out


@pytest.mark.parametrize("command", ["sample", "export", "eval"])
def test_every_command_takes_threads_with_the_load_aware_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   command: str) -> None:
    """sample, export and eval run with --threads N, else with pemn train's default (dist.default_threads), and
    give the caller's thread count back."""
    import pemn.training.dist as dist
    import pemn.training.export as export
    import pemn.training.sample as sample
    from cli_run import run

    if command == "sample":
        train(_text_cfg(tmp_path), log=quiet)
        argv = ["sample", str(tmp_path / "run" / "model.pemn"), "--tokens", "5"]
        module, name = sample, "sample_text"
    else:
        out = _digits_run(tmp_path)
        argv = ([command, str(out / "model.pemn")] +
                (["--format", "pt", "-o", str(tmp_path / "x.safetensors")] if command == "export" else []))
        module, name = (export, "export_pt") if command == "export" else (dist, "set_threads")
    seen: list[int] = []
    original = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        got = original(*args, **kwargs)
        seen.append(torch.get_num_threads())
        return got

    monkeypatch.setattr(module, name, spy)
    monkeypatch.setattr(dist, "default_threads", lambda: 3)
    before = torch.get_num_threads()
    for flags, want in (([], 3), (["--threads", "2"], 2)):
        code, _, err = run([*argv, *flags])
        assert code == 0, err
        assert seen[-1] == want and torch.get_num_threads() == before, (flags, seen)
    code, _, err = run([*argv, "--threads", "0"])
    assert code == 2 and err.strip() == "pemn: error: --threads must be >= 1, got 0"
    from pemn.training.cli import build_parser

    helptext = " ".join(build_parser()._subparsers._group_actions[0].choices[command].format_help().split())
    assert "--threads N CPU threads (default: as pemn train" in helptext


# --------------------------------------------------------------------------------------------- 7. --resume of nothing


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_resume_of_nothing_is_one_line_and_writes_nothing(tmp_path: Path, where: str) -> None:
    from cli_run import run

    out = tmp_path / "TYPO"
    if where == "empty":
        out.mkdir()
    code, stdout, err = run(["train", "--resume", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert code == 5 and stdout == "", stdout  # a file that is not there (README, exit codes)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pemn: error: --resume: nothing to resume in"), err
    assert "check the --out folder" in lines[0] and "leave out --resume" in lines[0]
    assert (not out.exists()) if where == "missing" else list(out.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="nothing to resume in"):  # the Python API says the same
        train(resolve_config({"resume": True, "out": str(out), "progress": False, "device": "cpu"}), log=quiet)
    assert (not out.exists()) if where == "missing" else list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------- 8. recorded data folder


def _image_folder(root: Path) -> Path:
    PIL = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 100, size=(64, 64, 3), dtype=np.uint8) + 120 * c  # the classes differ
                PIL.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.parametrize(("kind", "extra", "filename"), [
    ("pemn", ["--strategy", "mask"], "model.pemn"),
    ("dense", ["--strategy", "dense"], "model.safetensors"),
    ("sparse", ["--strategy", "dense", "--prune", "magnitude"], "model.sparse.safetensors"),
])
def test_eval_finds_the_data_folder_the_run_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
                                                     extra: list[str], filename: str) -> None:
    """Every kind of run: --data-dir, else the folder the run recorded (config.json beside the file), else
    $PEMN_DATA_DIR or ./data: the rule text runs already followed."""
    from cli_run import run

    data = _image_folder(tmp_path / "pictures")
    out = tmp_path / "run"
    code, _, err = run(["train", "--model", "tiny-mlp", "--dataset", "imagefolder", "--data-dir", str(data),
                        "--epochs", "2", "--no-progress", "--device", "cpu", "--threads", "1", "--out", str(out),
                        *extra])
    assert code == 0, err
    final = json.loads((out / "result.json").read_text())["final_acc"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("PEMN_DATA_DIR", raising=False)
    code, stdout, err = run(["eval", str(out / filename), "--json", "--threads", "1"])
    assert code == 0, err
    assert json.loads(stdout)["accuracy"] == final and json.loads(stdout)["examples"] == 12
    code, _, err = run(["eval", str(out / filename), "--data-dir", str(elsewhere), "--threads", "1"])
    assert code == 4 and str(elsewhere) in err  # an explicit --data-dir wins (and has no data: exit code 4)


# --------------------------------------------------------------------------------------------- 9. not model files


@pytest.mark.parametrize("command", ["eval", "export", "inspect", "sample"])
def test_a_checkpoint_is_named_with_the_model_file_to_use(tmp_path: Path, command: str) -> None:
    from cli_run import run

    out = _digits_run(tmp_path)
    checkpoint = out / "checkpoint.safetensors"
    argv = [command, str(checkpoint)] + (["--format", "pt"] if command == "export" else [])
    code, stdout, err = run(argv)
    assert code == 3 and stdout == "", stdout  # a file that is not a usable model file
    assert err == (f"pemn: error: {checkpoint} is a training checkpoint (what pemn train --resume continues from), "
                   f"not a model file: use {out / 'model.pemn'}\n")
    # a run that has not finished yet has no model file: the message says how to finish it
    (out / "model.pemn").unlink()
    code, _, err = run(argv)
    assert code == 3 and len(err.strip().splitlines()) == 1
    assert err.strip().endswith(f"the run has not written it yet: finish it with pemn train --resume --out {out}")


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_file_of_the_users_own_model_says_how_to_load_it_in_python(tmp_path: Path, command: str) -> None:
    import pemn
    from cli_run import run

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    pemn.convert_(model, pemn.PEMNConfig(strategy="mask"))
    path = tmp_path / "mine.pemn"
    pemn.save(model, path)
    code, stdout, err = run([command, str(path)] + (["--format", "pt"] if command == "export" else []))
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"pemn.load({str(path)!r}, model)" in lines[0], err
    assert "records no registry model" in lines[0] and not lines[0].startswith("pemn: error: give --model")
