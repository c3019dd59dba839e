"""CPU threads: the demo run (`pemn train`, an MLP on digits) with 1 and 2 torch threads, on its own and next to
busy processes (one spinning Python process per extra load level), each variant in a fresh process, interleaved.

    python benchmarks/bench_threads.py [--quick] [--busy N]   (--quick: 2 epochs, no busy process)

Prints JSON: median wall seconds per (load, threads) and the ratio 2 threads / 1 thread per load. This is what
chose ``threads=None`` (pemn.training.dist.default_threads): the idle CPUs, at least 1.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine, quick_flag

DEMO = ["-m", "pemn", "train", "--no-progress"]


def _run_demo(threads: int, out: Path, epochs: int) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *DEMO, "--threads", str(threads), "--epochs", str(epochs),
                           "--out", str(out)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"pemn train --threads {threads} failed:\n{done.stderr[-2000:]}")
    return seconds


def _busy(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    quick = quick_flag(args)
    busy_levels = [0] if quick else [0, int(args[args.index("--busy") + 1]) if "--busy" in args else 1]
    repeats, epochs = (1, 2) if quick else (3, 10)
    thread_counts = (1, 2)
    results: dict[str, dict[str, float | list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for busy in busy_levels:
            spinners = _busy(busy)
            try:
                time.sleep(0.5)
                load_before = os.getloadavg()[0]
                times: dict[int, list[float]] = {t: [] for t in thread_counts}
                for r in range(repeats):
                    for t in thread_counts:
                        times[t].append(_run_demo(t, Path(tmp) / f"b{busy}-t{t}-r{r}", epochs))
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
            med = {t: statistics.median(v) for t, v in times.items()}
            results[f"busy_{busy}"] = {"busy_processes": busy, "loadavg_1min_at_start": load_before,
                                       **{f"threads_{t}_median_s": med[t] for t in thread_counts},
                                       **{f"threads_{t}_s": times[t] for t in thread_counts},
                                       "ratio_2_over_1": med[2] / med[1]}
    emit({"benchmark": "threads", "what": f"wall seconds of `pemn train --epochs {epochs}` (the demo: mlp on "
          "digits, rp 1e-3) in a fresh process, including start-up", "machine": machine(), "repeats": repeats,
          "results": results})


if __name__ == "__main__":
    main()
