"""Interrupts and ``--resume``: Ctrl-C reported once and as one line, the printed hint that continues the run
when pasted, flags that disagree with the run, a finished run, and ``--resume`` of a folder with nothing in it."""

from __future__ import annotations

import functools
import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import run
from conftest import QUICK_ARGV, quiet, subprocess_env
from pemn.training import engine
from pemn.training.config import resolve_config
from pemn.training.engine import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _interrupted_run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """``pemn train argv`` stopped after its first epoch (as by Ctrl-C); returns what it printed (the interrupt
    message once: the engine's line)."""
    real = engine.train
    monkeypatch.setattr(engine, "train", functools.partial(real, stop_after_epoch=1))
    code, out, err = run(["train", *argv])
    monkeypatch.setattr(engine, "train", real)
    assert code == 130, err
    assert (out + err).count("training interrupted") == 1, out + err
    return out + err


def test_the_interrupt_hint_works_when_pasted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed command continues the run (settings from config.json, not the defaults) and ends exactly
    where an uninterrupted run ends; a folder name with a space survives the paste."""
    argv = ["--dataset", "digits", "--model", "lenet5", "--strategy", "mask", "--lr", "0.02", "--epochs", "3",
            "--train-subset", "256", "--no-progress", "--device", "cpu", "--threads", "1"]
    ref = tmp_path / "ref"
    assert run(["train", *argv, "--out", str(ref)])[0] == 0
    out = tmp_path / "my run"
    err = _interrupted_run([*argv, "--out", str(out)], monkeypatch)
    hint = re.search(r"Continue with: (.+)$", err.strip())
    assert hint, err
    words = shlex.split(hint.group(1))
    assert words[:2] == ["pemn", "train"] and "--resume" in words
    monkeypatch.chdir(tmp_path)  # pasted in another folder: the path still points at the run
    code, stdout, stderr = run(words[1:])
    assert code == 0, stderr
    assert "resuming" in stdout and "at epoch 2/3" in stdout
    done = json.loads((out / "result.json").read_text())
    want = json.loads((ref / "result.json").read_text())
    assert done["state_sha256"] == want["state_sha256"] and done["epochs_run"] == 3


def test_resume_rejects_a_flag_that_disagrees_with_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r"
    _interrupted_run(["--epochs", "3", "--train-subset", "256", "--no-progress", "--threads", "1", "--out", str(out),
                      "--lr", "0.02"], monkeypatch)
    code, _, err = run(["train", "--resume", "--out", str(out), "--lr", "0.05"])
    assert code == 2
    assert "--lr 0.05 (the run has 0.02)" in err and "config.json" in err and len(err.strip().splitlines()) == 1
    # agreeing flags and free ones (threads, progress, eval batch) are fine
    code, _, err = run(["train", "--resume", "--out", str(out), "--lr", "0.02", "--threads", "1",
                        "--eval-batch-size", "64", "--no-progress"])
    assert code == 0, err


def test_resuming_a_finished_run_says_so(tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert run(["train", *QUICK_ARGV, "--out", str(out)])[0] == 0
    code, stdout, err = run(["train", "--resume", "--out", str(out), "--no-progress"])
    assert code == 0, err
    assert "is of a finished run (2/2 epochs); nothing left to train" in stdout
    assert "at epoch 3" not in stdout


@pytest.mark.parametrize("where", ["main", "import"])
def test_ctrl_c_while_importing_is_one_line(where: str) -> None:
    """Ctrl-C during `pemn`'s start, torch still importing (in main: `import pemn` no longer imports torch, the
    command does once it runs; or a pemn name imported before main): one line, no traceback."""
    code = ("import sys\n"
            "sys.argv[0] = '/usr/local/bin/pemn'\n"
            "class Stop:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Stop())\n"
            "from pemn.training.cli import main\n"
            + ("raise SystemExit(main(['models']))\n" if where == "main" else "from pemn import convert_\n"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         timeout=120)
    assert out.stderr == "pemn: interrupted\n" and out.returncode != 0, out.stderr
    if where == "main":
        assert out.returncode == 130
        return
    # a library user's traceback is left alone
    lib = subprocess.run([sys.executable, "-c", code.replace("'/usr/local/bin/pemn'", "'script.py'")],
                         capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert "Traceback" in lib.stderr and "KeyboardInterrupt" in lib.stderr


@pytest.mark.parametrize(("logged", "rank", "printed"), [(True, "0", False), (False, "0", True), (False, "1", False)])
def test_an_interrupt_is_reported_once(monkeypatch: pytest.MonkeyPatch, logged: bool, rank: str,
                                       printed: bool) -> None:
    """The engine prints TrainingInterrupted's message itself; under torchrun only rank 0 speaks."""
    def interrupted(cfg: object, **_: object) -> None:
        e = engine.TrainingInterrupted("training interrupted (SIGINT) after epoch 1; checkpoint saved",
                                       checkpoint=None, epoch=1, step=0, signum=int(signal.SIGINT))
        e.logged = logged
        raise e

    monkeypatch.setattr(engine, "train", interrupted)
    monkeypatch.setenv("RANK", rank)
    code, _, err = run(["train", "--epochs", "1", "--no-progress"])
    assert code == 130 and (("pemn: training interrupted" in err) == printed), err


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_resume_of_nothing_is_one_line_and_writes_nothing(tmp_path: Path, where: str) -> None:
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
