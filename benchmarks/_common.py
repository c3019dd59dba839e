"""Shared helpers for the benchmark scripts: alternating timers, isolated runs for peak memory, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def alternate(variants: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Time each variant ``repeats`` times, interleaved (A B C A B C ...) after ``warmup`` rounds, so that
    drift in the machine's speed hits every variant alike. Returns median/min seconds per variant, and the median
    CPU time of this thread (``median_thread_s``: with one torch thread, the step's own work, without the time
    other processes held the CPU)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.thread_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.thread_time() - start_cpu)
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "median_thread_s": statistics.median(cpu[name]),
                   "repeats": len(ts)} for name, ts in times.items()}


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (MiB).

    Linux's VmHWM belongs to the process image, so a child started by fork+exec starts afresh; getrusage's
    ru_maxrss would carry over the parent's peak at the time of the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def isolated(module: str, func: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``module.func(**kwargs)`` in a fresh Python process and return its JSON result, to which the
    child adds its own ``peak_rss_mb``. A fresh process is the only honest way to measure peak memory."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import importlib;"
        "from _common import peak_rss_mb;"
        f"r = getattr(importlib.import_module({module!r}), {func!r})(**json.loads(sys.argv[2]));"
        "r['peak_rss_mb'] = peak_rss_mb(); print('RESULT ' + json.dumps(r))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), json.dumps(kwargs)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"isolated {module}.{func}({kwargs}) failed:\n{out.stderr[-3000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2, sort_keys=False))


def quick_flag(argv: list[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--quick" in args
