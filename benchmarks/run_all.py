"""Run every benchmark and print one JSON document (see BENCHMARKS.md for the figures and the machine).

    python benchmarks/run_all.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, machine

BENCHMARKS = ["bench_train_step", "bench_inference", "bench_memory", "bench_size", "bench_load", "bench_scaling",
              "bench_coding", "bench_quantize"]


def main(argv: list[str] | None = None) -> dict:
    args = sys.argv[1:] if argv is None else argv
    quick = ["--quick"] if "--quick" in args else []
    only = args[args.index("--only") + 1:] if "--only" in args else BENCHMARKS
    doc: dict = {"machine": machine(), "results": {}, "seconds": {}}
    for name in only:
        start = time.perf_counter()
        module = importlib.import_module(name)
        if name == "bench_coding":
            doc["results"][name] = module.run(count=100_000 if quick else 10_000_000)
        else:
            doc["results"][name] = module.main(quick)
        doc["seconds"][name] = time.perf_counter() - start
        print(f"# {name}: {doc['seconds'][name]:.1f} s", file=sys.stderr)
    return doc


if __name__ == "__main__":
    emit(main())
