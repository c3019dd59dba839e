"""Kill ``pemn train`` with SIGKILL at random moments -- many of them inside checkpoint and artifact writes --
resume it with ``--resume`` each time, and check that it ends bit-identical to an uninterrupted run.

    python scripts/kill_resume.py [--kills 24] [--seed 0] [--epochs 6] [--model mlp] [--dataset digits]

Prints one JSON document. First an uninterrupted reference run (the same ``pemn train`` command line, run
in this process with one thread, as the children have); then cycles: each cycle trains the same settings
into a fresh folder, killing the process 3 to 8 times (``--kills`` in all) and restarting it with
``--resume`` each time, then lets the run finish and compares the folder with the reference.

Kill moments, drawn at random with ``--seed`` (or taken in turn from ``--modes``):

- ``write``: at the creation of the n-th temporary file of the process (n random over the writes still to
  come: config.json, checkpoint.safetensors and metrics.jsonl every epoch, model.pemn, result.json);
- ``checkpoint`` / ``artifact``: at the creation of the temporary file of the next (or a later)
  ``checkpoint.safetensors`` / of ``model.pemn`` (``artifact`` when no epoch is left to run);
- ``epoch_line``: as soon as an ``epoch N/E`` line appears on stdout (right after that epoch's writes);
- ``random``: a quarter of them at a random time in the first 3 s (imports, data loading, model building,
  config.json), the rest at a random time after the process's first line, within the time the reference
  run took from its first line to its end (training, evaluation, the writes).

A temporary file is seen the moment it is created through inotify (Linux; elsewhere by polling), and the
kill is sent at once. A kill "landed in a write" when the writer's temporary file (``.NAME.*.tmp``) is
still there after the process died: it was killed between creating it and renaming it into place.

After every kill every file in the folder except those temporary files must parse (the checkpoint with
``pemn.training.checkpoint.read_checkpoint``, ``model.pemn`` with ``pemn.artifact.read``, the JSON files); after a
resume that completes, no temporary file may be left. At the end of each cycle, compared with the
reference: every tensor of the final checkpoint (``torch.equal``), the model.pemn content (parsed: its
metadata and every tensor; safetensors writes the metadata in hash order, so bytes may differ), the
metrics (timings excepted) and result.json (timings and paths excepted).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "scripts/kill_resume.py"
TEMP = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")  # atomic_write_bytes: mkstemp(prefix=".NAME.", suffix=".tmp")
TIMING_FIELDS = {"seconds", "images_per_s", "train_seconds", "elapsed"}
MODES = ("write", "write", "checkpoint", "checkpoint", "artifact", "epoch_line", "random")


# ------------------------------------------------------------------------------------------ watching


class DirWatch:
    """Names created in a folder, reported as soon as they appear (inotify; polling where it is missing)."""

    IN_CREATE = 0x100
    IN_MOVED_TO = 0x80

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1
        self.seen: set[str] = set(os.listdir(directory))
        libc_name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(libc_name or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0 and libc.inotify_add_watch(fd, str(directory).encode(), self.IN_CREATE | self.IN_MOVED_TO) >= 0:
                self.fd = fd
            elif fd >= 0:
                os.close(fd)
        except (OSError, AttributeError):
            self.fd = -1

    @property
    def kind(self) -> str:
        return "inotify" if self.fd >= 0 else "polling"

    def wait(self, timeout: float) -> list[str]:
        """Names created since the last call, waiting at most ``timeout`` seconds for the first."""
        if self.fd >= 0:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return []
            names = []
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return []
            pos = 0
            while pos + 16 <= len(buf):
                _, _, _, length = struct.unpack_from("iIII", buf, pos)
                names.append(buf[pos + 16:pos + 16 + length].rstrip(b"\0").decode(errors="replace"))
                pos += 16 + length
            return names
        deadline = time.monotonic() + timeout
        while True:
            now = set(os.listdir(self.directory))
            new = sorted(now - self.seen)
            self.seen |= now
            if new or time.monotonic() >= deadline:
                return new
            time.sleep(0.0005)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LineWatch(threading.Thread):
    """Reads a process's stdout into ``lines``; ``event`` is set at the first line matching ``pattern``."""

    def __init__(self, stream: Any, pattern: re.Pattern[str] | None) -> None:
        super().__init__(daemon=True)
        self.stream, self.pattern = stream, pattern
        self.lines: list[str] = []
        self.event = threading.Event()

    def run(self) -> None:
        for line in self.stream:
            self.lines.append(line)
            if self.pattern is not None and self.pattern.search(line):
                self.event.set()
        self.event.set()  # end of output


# ------------------------------------------------------------------------------------------ checking


def temp_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if TEMP.match(n))


def check_files(directory: Path) -> list[str]:
    """The files of ``directory`` (temporary files excepted) that do not parse, each with why."""
    import pemn.artifact
    from pemn.training.checkpoint import read_checkpoint

    bad = []
    for name in sorted(os.listdir(directory)):
        path = directory / name
        if TEMP.match(name) or not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                read_checkpoint(path) if name == "checkpoint.safetensors" else _safetensors(path)
            elif name.endswith(".pemn"):
                pemn.artifact.read(path)
            elif name.endswith(".jsonl"):
                for line in path.read_text().splitlines():
                    json.loads(line)
            elif name.endswith(".json"):
                json.loads(path.read_text())
        except Exception as e:  # any failure to parse is what is counted
            bad.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
    return bad


def _safetensors(path: Path) -> None:
    from safetensors.torch import load_file

    load_file(str(path))


def _strip(obj: Any, drop: set[str]) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [_strip(v, drop) for v in obj]
    return obj


def compare_runs(ref: Path, run: Path) -> list[str]:
    """How ``run`` differs from the reference folder (empty: identical up to timings and paths)."""
    import torch

    import pemn.artifact
    from pemn.training.checkpoint import read_checkpoint

    diffs = []
    names_ref = sorted(n for n in os.listdir(ref) if not TEMP.match(n))
    names_run = sorted(n for n in os.listdir(run) if not TEMP.match(n))
    if names_ref != names_run:
        diffs.append(f"files differ: {names_ref} vs {names_run}")
    t_ref, m_ref = read_checkpoint(ref / "checkpoint.safetensors")
    t_run, m_run = read_checkpoint(run / "checkpoint.safetensors")
    if t_ref.keys() != t_run.keys():
        diffs.append("checkpoint tensor names differ")
    diffs += [f"checkpoint tensor {k} differs" for k in t_ref
              if k in t_run and not (t_ref[k].dtype == t_run[k].dtype and torch.equal(t_ref[k], t_run[k]))]
    if _strip(m_ref["state"], TIMING_FIELDS) != _strip(m_run["state"], TIMING_FIELDS):
        diffs.append("checkpoint state (timings excepted) differs")
    drop = {"out", "resume"}
    if _strip(m_ref["config"], drop) != _strip(m_run["config"], drop):
        diffs.append("checkpoint config differs")
    if (ref / "model.pemn").exists():
        a, b = pemn.artifact.read(ref / "model.pemn"), pemn.artifact.read(run / "model.pemn")
        same = a.metadata == b.metadata and a.tensors.keys() == b.tensors.keys() and all(
            a.tensors[k].dtype == b.tensors[k].dtype and torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
        if not same:
            diffs.append("model.pemn content differs")
    metrics = [_strip([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()], TIMING_FIELDS)
               for d in (ref, run)]
    if metrics[0] != metrics[1]:
        diffs.append(f"metrics.jsonl differs ({len(metrics[0])} vs {len(metrics[1])} epochs)")
    drop = TIMING_FIELDS | {"out_dir", "artifact", "weights", "source"}
    results = [_strip(json.loads((d / "result.json").read_text()), drop) for d in (ref, run)]
    if results[0] != results[1]:
        diffs.append("result.json (timings and paths excepted) differs: "
                     + ", ".join(k for k in results[0] if results[0][k] != results[1].get(k)))
    return diffs


# ------------------------------------------------------------------------------------------ running


@dataclass
class Figures:
    kills: int = 0
    kills_by_mode: dict[str, int] = field(default_factory=dict)
    kills_landed_in_write: int = 0
    landed_in: dict[str, int] = field(default_factory=dict)
    processes_started: int = 0
    resumes_from_checkpoint: int = 0
    resumes_failed: int = 0
    corrupt_files: int = 0
    leftover_temp_files_after_completed_resume: int = 0
    cycles: int = 0
    cycles_identical: int = 0
    kill_after_finish: int = 0  # the process had already exited when the kill was due
    missed_by_mode: dict[str, int] = field(default_factory=dict)
    kills_survived: int = 0  # kills after which the next process resumed and did not fail on its own
    problems: list[str] = field(default_factory=list)


def train_command(args: argparse.Namespace, out: Path, *, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pemn", "train", "--model", args.model, "--dataset", args.dataset,
           "--epochs", str(args.epochs), "--seed", str(args.seed), "--device", "cpu", "--no-progress",
           "--out", str(out)]
    if args.train_subset:
        cmd += ["--train-subset", str(args.train_subset)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    cmd += args.extra
    return cmd + (["--resume"] if resume else [])


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def reference_run(args: argparse.Namespace, out: Path) -> float:
    """The uninterrupted run: the same ``pemn train`` command line, in this process (one thread, as the
    children have), which saves a process start. Returns its seconds after its first line of output."""
    import contextlib
    import io

    import torch

    from pemn.training.cli import main as pemn_main

    class Clock(io.StringIO):
        first: float | None = None

        def write(self, text: str) -> int:
            if self.first is None:
                self.first = time.perf_counter()
            return super().write(text)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clock = Clock()
    try:
        with contextlib.redirect_stdout(clock):
            rc = pemn_main(train_command(args, out, resume=False)[3:])
    finally:
        torch.set_num_threads(threads)
    if rc != 0:
        raise RuntimeError(f"the reference run failed with exit code {rc}")
    return time.perf_counter() - (clock.first or time.perf_counter())


def writes_per_run(epochs_left: int) -> int:
    return 1 + 2 * epochs_left + 2  # config.json; checkpoint + metrics per epoch; model.pemn + result.json


def epochs_done(out: Path) -> int:
    try:
        from pemn.training.checkpoint import read_checkpoint

        return int(read_checkpoint(out / "checkpoint.safetensors")[1]["state"]["epoch"])
    except Exception:  # no checkpoint yet
        return 0


def attempt(args: argparse.Namespace, out: Path, mode: str | None, rng: random.Random, run_seconds: float,
            fig: Figures) -> tuple[int | None, str, str | None]:
    """Start (or resume) the run; kill it per ``mode`` (None: let it finish). Returns (exit code or None if
    killed, the kill's description, the mode used)."""
    had_checkpoint = (out / "checkpoint.safetensors").exists()
    watch = DirWatch(out)
    pattern = None
    target_epoch = 0
    done = epochs_done(out)
    if mode in ("checkpoint", "epoch_line") and done >= args.epochs:
        mode = "artifact"  # no epoch is left to run: only config.json, model.pemn and result.json get written
    startup = mode == "random" and rng.random() < 0.25
    if mode == "epoch_line":
        target_epoch = done + rng.randint(1, args.epochs - done)
        pattern = re.compile(rf"^epoch {target_epoch}/")
    elif mode == "random" and not startup:
        pattern = re.compile(r"^pemn train: ")  # logged once the data is loaded and the model built
    # the first process of a cycle starts the run: `--resume` of a folder holding no run is an error
    resume = had_checkpoint or (out / "config.json").exists()
    proc = subprocess.Popen(train_command(args, out, resume=resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env(), cwd=str(ROOT))
    fig.processes_started += 1
    fig.resumes_from_checkpoint += had_checkpoint
    lines = LineWatch(proc.stdout, pattern)
    lines.start()
    err_lines: list[str] = []
    err_reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    err_reader.start()
    what = ""
    try:
        if mode is None:
            proc.wait(timeout=args.timeout)
        elif mode == "random":
            if startup:  # anywhere in start-up: imports, data loading, model building, config.json
                delay = rng.uniform(0.0, 3.0)
                what = f"random, {delay:.2f} s after the start"
            else:  # anywhere in training, evaluation and the writes
                lines.event.wait(timeout=args.timeout)
                delay = rng.uniform(0.0, run_seconds)
                what = f"random, {delay:.2f} s after the first line"
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        elif mode == "epoch_line":
            what = f"epoch_line {target_epoch}"
            lines.event.wait(timeout=args.timeout)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        else:
            left = args.epochs - epochs_done(out)
            if mode == "write":
                n = rng.randint(1, writes_per_run(left))
                prefix = ""
            elif mode == "checkpoint":
                n = rng.randint(1, max(left, 1))
                prefix = ".checkpoint.safetensors."
            else:
                n = 1
                prefix = ".model.pemn."
            what = f"{mode} #{n}"
            count = 0
            deadline = time.monotonic() + args.timeout
            while proc.poll() is None and time.monotonic() < deadline:
                created = [x for x in watch.wait(0.05) if TEMP.match(x) and x.startswith(prefix)]
                count += len(created)
                if count >= n:
                    os.kill(proc.pid, signal.SIGKILL)
                    what += f" ({created[-1]})"
                    break
            else:
                if proc.poll() is None:  # nothing to kill at: stop it anyway
                    os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=args.timeout)
    finally:
        watch.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lines.join(timeout=5)
        err_reader.join(timeout=5)
    killed = rc == -signal.SIGKILL
    if mode is not None and not killed:
        fig.kill_after_finish += 1
        fig.missed_by_mode[mode] = fig.missed_by_mode.get(mode, 0) + 1
    if not killed and rc != 0:
        fig.resumes_failed += 1
        fig.problems.append(f"run exited with {rc} on its own ({what or 'no kill'}): {''.join(err_lines)[-800:]}")
    return (None if killed else rc), what, mode


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="pemn-kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "reference"
    start = time.perf_counter()
    after_first_line = reference_run(args, ref)
    ref_seconds = time.perf_counter() - start
    modes = args.modes or MODES
    fig = Figures()
    watch_kind = DirWatch(work).kind
    while fig.kills < args.kills:
        if fig.cycles > args.kills + 2:  # every cycle ended in a failed run: report it instead of looping forever
            fig.problems.append(f"gave up after {fig.cycles} cycles with {fig.kills} of {args.kills} kills")
            break
        fig.cycles += 1
        out = work / f"cycle-{fig.cycles}"
        out.mkdir()
        after_kill = False
        cycle_end = fig.kills + (args.kills if args.modes else rng.randint(3, 8))  # then let the run finish
        while True:
            mode = (modes[fig.kills % len(modes)] if args.modes else modes[rng.randrange(len(modes))]) \
                if fig.kills < min(args.kills, cycle_end) else None
            before = set(temp_files(out))
            rc, what, mode = attempt(args, out, mode, rng, after_first_line, fig)
            fig.kills_survived += after_kill and rc in (None, 0)
            after_kill = rc is None
            if rc is None:  # killed
                fig.kills += 1
                fig.kills_by_mode[mode] = fig.kills_by_mode.get(mode, 0) + 1
                temps = sorted(set(temp_files(out)) - before)  # this process's, not an earlier one's
                if temps:
                    fig.kills_landed_in_write += 1
                    for t in temps:
                        name = TEMP.match(t)["name"]  # type: ignore[index]
                        fig.landed_in[name] = fig.landed_in.get(name, 0) + 1
                bad = check_files(out)
                fig.corrupt_files += len(bad)
                fig.problems += [f"after kill {fig.kills} ({what}): corrupt {b}" for b in bad]
                continue
            if rc != 0:
                break  # counted as a failed resume; start the next cycle
            leftover = temp_files(out)
            fig.leftover_temp_files_after_completed_resume += len(leftover)
            if leftover:
                fig.problems.append(f"cycle {fig.cycles}: temporary files left after the run completed: {leftover}")
            bad = check_files(out)
            fig.corrupt_files += len(bad)
            fig.problems += [f"cycle {fig.cycles} completed: corrupt {b}" for b in bad]
            diffs = compare_runs(ref, out)
            fig.cycles_identical += not diffs
            fig.problems += [f"cycle {fig.cycles} vs the reference: {d}" for d in diffs]
            break
    seconds = time.perf_counter() - t0
    doc = {
        "kills": fig.kills,
        "kills_survived": fig.kills_survived,
        "kills_by_mode": fig.kills_by_mode,
        "kills_landed_in_write": fig.kills_landed_in_write,
        "landed_in_write_of": fig.landed_in,
        "kills_due_after_the_process_had_exited": fig.kill_after_finish,
        "kills_due_after_exit_by_mode": fig.missed_by_mode,
        "processes_started": fig.processes_started,
        "resumes_from_a_checkpoint": fig.resumes_from_checkpoint,
        "resumes_failed": fig.resumes_failed,
        "corrupt_files_found": fig.corrupt_files,
        "leftover_temp_files_after_completed_resume": fig.leftover_temp_files_after_completed_resume,
        "cycles": fig.cycles,
        "cycles_identical_to_reference": fig.cycles_identical,
        "final_model_identical": fig.cycles > 0 and fig.cycles_identical == fig.cycles,
        "reference_run_seconds": round(ref_seconds, 2),
        "reference_seconds_after_first_line": round(after_first_line, 2),
        "seconds": round(seconds, 1),
        "watch": watch_kind,
        "workdir": str(work),
        "problems": fig.problems[:40],
    }
    return doc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24, help="SIGKILLs in all (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="training seed and kill-schedule seed")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a new temporary folder)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds any one process may take")
    parser.add_argument("--modes", nargs="+", choices=sorted(set(MODES)), default=None,
                        help="kill moments to use in turn (default: drawn at random from all of them)")
    parser.add_argument("extra", nargs="*", help="more `pemn train` flags (after --)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run(args)
    command = f"python {SCRIPT} --kills {args.kills} --seed {args.seed} --epochs {args.epochs} --model {args.model} " \
              f"--dataset {args.dataset}" + (f" --train-subset {args.train_subset}" if args.train_subset else "") \
              + (f" --data-dir {args.data_dir}" if args.data_dir else "") \
              + (f" --modes {' '.join(args.modes)}" if args.modes else "")
    print(json.dumps({"benchmark": "kill_resume", "command": command, **doc}, indent=2))
    ok = (doc["resumes_failed"] == 0 and doc["corrupt_files_found"] == 0 and doc["final_model_identical"]
          and doc["leftover_temp_files_after_completed_resume"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
