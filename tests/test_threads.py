"""CPU threads: ``--threads`` of every command, its load-aware default, and the caller's count given back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from cli_run import run
from conftest import QUICK_ARGV, quick_cli_run, quick_text_config, quiet
from pemn.training.engine import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_threads_flag_sets_and_restores_torch_threads(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    code, stdout, err = run(["train", *QUICK_ARGV[:-2], "--threads", "2", "--out", str(tmp_path / "r")])
    assert code == 0, err
    assert "2 CPU threads" in stdout
    assert torch.get_num_threads() == before
    code, stdout, _ = run(["train", *QUICK_ARGV, "--out", str(tmp_path / "s")])
    assert "1 CPU thread," in stdout and "1 epochs" not in stdout


def test_default_threads_follow_the_idle_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from pemn.training import dist

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    for load, want in ((0.0, 4), (5.0, 3), (7.6, 1), (30.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert dist.default_threads() == want, load


@pytest.mark.parametrize("command", ["sample", "export", "eval"])
def test_every_command_takes_threads_with_the_load_aware_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   command: str) -> None:
    """sample, export and eval run with --threads N, else with pemn train's default (dist.default_threads), and
    give the caller's thread count back."""
    import pemn.training.dist as dist
    import pemn.training.export as export
    import pemn.training.sample as sample
    if command == "sample":
        train(quick_text_config(tmp_path, strategy="rp", ratio=0.1), log=quiet)
        argv = ["sample", str(tmp_path / "run" / "model.pemn"), "--tokens", "5"]
        module, name = sample, "sample_text"
    else:
        out = quick_cli_run(tmp_path)
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
