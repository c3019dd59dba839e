"""The run folder of ``pemn train``: locked by its run (a second run refuses, ``--wait`` waits, a killed run
leaves no stale lock), and the system errors of a folder that is a file or cannot be written, each one line."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_run import run
from conftest import QUICK_ARGV, subprocess_env
from pemn.training import engine
from pemn.training.config import resolve_config
from pemn.training.runlock import LOCK_NAME, RunBusyError, RunLock

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_run_lock_refuses_a_second_holder_and_frees_on_release(tmp_path: Path) -> None:
    a = RunLock(tmp_path).acquire()
    with pytest.raises(RunBusyError, match=r"in use by another running pemn train \(pid \d+"):
        RunLock(tmp_path).acquire()
    a.release()
    RunLock(tmp_path).acquire().release()


#: Epochs of the run A that holds the folder in the test below (one second or more each: A evaluates image by image).
EPOCHS_A = 30


@pytest.mark.slow
def test_two_processes_cannot_train_into_the_same_folder(tmp_path: Path) -> None:
    """Run A holds D; run B into D refuses with one line and touches nothing; after A is SIGKILLed the lock is
    gone (no stale lock) and --resume works; --wait waits for a holder instead of refusing."""
    out = tmp_path / "D"
    # A evaluates image by image (slow epochs: it is still training when its first checkpoint is seen) and is
    # stopped there, holding the lock; C resumes its few remaining epochs without evaluating (resume-free settings)
    a = subprocess.Popen([sys.executable, "-m", "pemn", "train", "--epochs", str(EPOCHS_A), "--train-subset", "128",
                          "--eval-batch-size", "1", "--no-progress", "--threads", "1", "--device", "cpu",
                          "--out", str(out)],
                         env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.safetensors").exists():  # A holds the lock and trains
            assert a.poll() is None and time.time() < deadline, a.communicate()
            time.sleep(0.02)
        a.send_signal(signal.SIGSTOP)  # A keeps the lock (a process, stopped mid-run) and spends no CPU
        assert a.poll() is None, a.communicate()
        config_before = (out / "config.json").read_bytes()
        b = subprocess.run([sys.executable, "-m", "pemn", "train", *QUICK_ARGV, "--seed", "1", "--strategy", "mask",
                            "--out", str(out)], env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert b.returncode == 6, b  # the run folder is taken (README, exit codes)
        lines = b.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another running pemn train" in lines[0], b.stderr
        assert f"pid {a.pid}" in lines[0] and "--wait" in lines[0]
        assert (out / "config.json").read_bytes() == config_before  # B wrote nothing
        assert not (out / "model.pemn").exists()
    finally:
        a.send_signal(signal.SIGKILL)
        a.communicate()
    # the kernel dropped A's lock with A: resuming needs no clean-up
    held = RunLock(out).acquire()
    held.release()
    # --wait: C waits while a holder has the folder (until C says so), then runs once it is released
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pemn.training.runlock import RunLock;"
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.readline()",
                               str(out)], env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    c = subprocess.Popen([sys.executable, "-m", "pemn", "train", "--resume", "--wait", "--eval-every", str(EPOCHS_A),
                          "--eval-batch-size", "256", "--out", str(out)],
                         env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert c.stdout is not None
    said = []
    for line in c.stdout:  # C is blocked on the lock: its output stops at the waiting line
        said.append(line)
        if "waiting for the pemn train writing into" in line:
            break
    assert said and "waiting for" in said[-1], said
    assert c.poll() is None and not (out / "result.json").exists()
    holder.communicate("\n", timeout=60)  # released: C goes on
    _, err = c.communicate(timeout=600)
    assert c.returncode == 0, err
    assert json.loads((out / "result.json").read_text())["epochs_run"] == EPOCHS_A


def test_lock_is_released_when_setup_fails(tmp_path: Path) -> None:
    """A run that fails after taking the lock (here: a resume with other settings) leaves the folder free."""
    out = tmp_path / "run"
    assert run(["train", *QUICK_ARGV, "--out", str(out)])[0] == 0
    cfg = resolve_config({"out": str(out), "resume": True, "epochs": 2, "train_subset": 256, "progress": False,
                          "device": "cpu", "threads": 1})
    bad = cfg.__class__.from_dict({**cfg.to_dict(), "lr": 0.5})
    with pytest.raises(ValueError, match="different settings"):
        engine.train(bad)
    RunLock(out).acquire().release()


def test_out_folder_listing_hides_the_lock_file(tmp_path: Path) -> None:
    code, stdout, _ = run(["train", *QUICK_ARGV, "--out", str(tmp_path / "r")])
    assert code == 0
    results = next(line for line in stdout.splitlines() if line.strip().startswith("results"))
    assert "config.json" in results and LOCK_NAME not in results


def test_out_at_an_existing_file_is_one_clear_line(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, err = run(["train", *QUICK_ARGV, "--out", str(f)])
    assert code == 6 and err.strip() == f"pemn: error: --out {str(f)!r} is a file, not a folder; choose a folder " \
                                        "for the run"


def _deny_writes_under(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every new file under ``folder`` fail as in a read-only folder (the tests run as root, which
    ignores permission bits)."""
    import tempfile

    real_open, real_mkstemp = os.open, tempfile.mkstemp

    def inside(p: object) -> bool:
        return str(Path(str(p)).absolute()).startswith(str(folder.absolute()))

    def guarded_open(path: object, flags: int, *a: object, **k: object) -> int:
        if flags & os.O_CREAT and inside(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)  # type: ignore[arg-type]

    def guarded_mkstemp(*a: object, dir: object = None, **k: object) -> tuple[int, str]:
        if dir is not None and inside(dir):
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*a, dir=dir, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(tempfile, "mkstemp", guarded_mkstemp)


def test_read_only_out_folder_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_writes_under(ro, monkeypatch)
    code, _, err = run(["train", *QUICK_ARGV, "--out", str(ro)])
    assert code == 5, err  # a folder that cannot be written
    assert err.strip().splitlines() == [f"pemn: error: cannot write the run folder {str(ro)!r} (Permission denied); "
                                        "choose a writable --out"]


def test_folder_turning_read_only_mid_run_says_the_checkpoint_is_intact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pemn.training import checkpoint

    ref = tmp_path / "ref"
    argv = ["--epochs", "3", "--train-subset", "256", "--no-progress", "--device", "cpu", "--threads", "1"]
    assert run(["train", *argv, "--out", str(ref)])[0] == 0
    out = tmp_path / "r"
    real = checkpoint.atomic_write_bytes
    calls = {"n": 0}

    def failing(path: object, data: bytes) -> Path:
        calls["n"] += 1
        if calls["n"] >= 2:  # the folder becomes read-only after the first epoch's checkpoint
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, data)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", failing)
    code, _, err = run(["train", *argv, "--out", str(out)])
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)
    assert code == 5
    (line,) = err.strip().splitlines()
    assert "Permission denied" in line and "the last checkpoint (after epoch 1) is intact" in line, line
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[:3] == ["pemn", "train", "--resume"]
    code, _, err = run(command[1:])
    assert code == 0, err
    assert json.loads((out / "result.json").read_text())["state_sha256"] == \
        json.loads((ref / "result.json").read_text())["state_sha256"]


def test_config_json_records_an_absolute_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", *QUICK_ARGV, "--epochs", "1", "--data-dir", "data", "--out", "r"])
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["data_dir"]
    assert saved == str(tmp_path / "data") and Path(saved).is_absolute()
