"""Benchmark pemn.coding: size and speed of packed vs entropy-coded masks. Prints one JSON document.

Throughput (``*_mb_per_s``) is counted in mask elements, i.e. megabytes of the numpy bool mask
(1 byte per element) handled per second, so packed and entropy numbers are directly comparable.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pemn.coding import decode_entropy, encode_entropy, entropy_bits, pack_bits, unpack_bits

FRACTIONS = (0.5, 0.3, 0.1, 0.05)


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def bench(count: int, fraction: float, repeats: int, seed: int) -> dict[str, Any]:
    kept = round(count * fraction)
    mask = np.zeros(count, dtype=bool)
    mask[np.random.default_rng(seed).permutation(count)[:kept]] = True
    mb = count / 1e6

    pack_s, packed = _median_seconds(lambda: pack_bits(mask), repeats)
    unpack_s, unpacked = _median_seconds(lambda: unpack_bits(packed, count), repeats)
    enc_s, coded = _median_seconds(lambda: encode_entropy(mask, kept), repeats)
    dec_s, decoded = _median_seconds(lambda: decode_entropy(coded, count, kept), repeats)
    assert np.array_equal(unpacked, mask) and np.array_equal(decoded, mask)

    ideal_bytes = entropy_bits(count, kept) / 8
    return {
        "fraction": fraction,
        "kept": kept,
        "packed_bytes": int(packed.size),
        "entropy_bytes": int(coded.size),
        "ideal_bytes": round(ideal_bytes, 1),
        "entropy_over_ideal": round(coded.size / ideal_bytes, 6),
        "entropy_over_packed": round(coded.size / packed.size, 4),
        "packed": {
            "encode_s": _sig(pack_s),
            "decode_s": _sig(unpack_s),
            "encode_mb_per_s": _sig(mb / pack_s),
            "decode_mb_per_s": _sig(mb / unpack_s),
        },
        "entropy": {
            "encode_s": _sig(enc_s),
            "decode_s": _sig(dec_s),
            "encode_mb_per_s": _sig(mb / enc_s),
            "decode_mb_per_s": _sig(mb / dec_s),
        },
    }


def run(count: int = 10_000_000, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """The benchmark document for masks of ``count`` elements (used by run_all.py)."""
    return {
        "benchmark": "pemn.coding",
        "count": count,
        "repeats": repeats,
        "timing": "median seconds; mb_per_s = mask elements (1 byte each as numpy bool) / 1e6 / s",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "constriction": importlib.metadata.version("constriction"),
        "machine": platform.machine(),
        "results": [bench(count, f, repeats, seed) for f in FRACTIONS],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000_000, help="mask length (default 10M)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.count, args.repeats, args.seed), indent=2))


if __name__ == "__main__":
    main()
