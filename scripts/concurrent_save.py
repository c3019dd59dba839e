"""Two processes save different models to one ``.pemn`` path over and over while a third loads it: every
load must give one of the two models exactly (never a mix, never an error), and the file left at the end
must be one complete, valid artifact.

    python scripts/concurrent_save.py [--saves 50] [--readers 1] [--path DIR/model.pemn]

Prints one JSON document: saves per writer, loads, loads that matched model A / model B, loads that raised
or matched neither (must be 0), the final file's verdict and leftover temporary files (must be 0).
Each process builds both models itself, from fixed seeds (bit-identical in every process), so a reader
checks a load by comparing its outputs on a fixed input with the two expected outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "scripts/concurrent_save.py"
CODINGS = {"A": "entropy", "B": "packed"}  # different codings: different sizes too


def build(which: str) -> Any:
    """Model ``which`` ("A" or "B"): the same architecture, different masks, prototype and extras."""
    import torch
    from torch import nn

    import pemn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    seed = {"A": 1, "B": 2}[which]
    pemn.convert_(model, pemn.PEMNConfig(strategy="rp", ratio=0.01, seed=seed, keep=0.5 if which == "A" else 0.3))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return model.eval()


def fresh() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def probe() -> Any:
    import torch

    return torch.randn(8, 64, generator=torch.Generator().manual_seed(99))


def outputs(model: Any) -> Any:
    import torch

    with torch.no_grad():
        return model.eval()(probe())


def wait_for_go(go: Path) -> None:
    """Say this process is ready (imports done, models built) and wait until every process is."""
    (go.parent / f"{go.name}.ready-{os.getpid()}").write_text("")
    while not go.exists():
        time.sleep(0.001)


def writer(which: str, path: Path, saves: int, go: Path) -> dict[str, Any]:
    import pemn

    model = build(which)
    wait_for_go(go)
    errors = []
    start = time.time()
    for _ in range(saves):
        try:
            pemn.save(model, path, coding=CODINGS[which])
        except Exception:  # a failed save is what is counted
            errors.append(traceback.format_exc(limit=3))
    return {"role": f"writer {which}", "saves": saves, "errors": len(errors), "error_examples": errors[:3],
            "window": [start, time.time()]}


def reader(path: Path, stop_file: Path, go: Path, max_seconds: float) -> dict[str, Any]:
    import torch

    import pemn

    expected = {k: outputs(build(k)) for k in ("A", "B")}
    seen = {"A": 0, "B": 0}
    neither, errors = 0, []
    wait_for_go(go)
    deadline = time.time() + max_seconds
    times = []
    while not stop_file.exists() and time.time() < deadline:
        times.append(time.time())
        try:
            out = outputs(pemn.load(path, fresh()))
        except Exception:  # a failed load is what is counted
            errors.append(traceback.format_exc(limit=3))
            continue
        match = [k for k, v in expected.items() if torch.equal(out, v)]
        if match:
            seen[match[0]] += 1
        else:
            neither += 1
    return {"role": "reader", "loads": seen["A"] + seen["B"] + neither + len(errors), "loads_model_a": seen["A"],
            "loads_model_b": seen["B"], "loads_matching_neither": neither, "load_errors": len(errors),
            "error_examples": errors[:3], "load_times": times}


def _child(argv: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def orchestrate(path: Path, saves: int, readers: int, timeout: float) -> dict[str, Any]:
    """Start the writers and readers (separate processes), wait, and check what is left at ``path``."""
    import torch

    import pemn
    from pemn import artifact

    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    pemn.save(build("A"), path, coding=CODINGS["A"])  # so the readers never find the path missing
    control = Path(tempfile.mkdtemp(prefix="pemn-concurrent-control-"))
    stop, go = control / "stop", control / "go"
    procs = [_child(["--role", "reader", "--path", str(path), "--stop-file", str(stop), "--go-file", str(go),
                     "--timeout", str(timeout)]) for _ in range(readers)]
    writers = [_child(["--role", "writer", "--which", w, "--path", str(path), "--saves", str(saves),
                       "--go-file", str(go)]) for w in ("A", "B")]
    deadline = time.monotonic() + timeout
    while len(list(control.glob("go.ready-*"))) < readers + 2 and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs + writers):
            break
        time.sleep(0.01)
    go.write_text("")
    reports = []
    for p in writers:
        out, err = p.communicate(timeout=timeout)
        reports.append(json.loads(out) if p.returncode == 0 else {"role": "writer", "crashed": err[-2000:]})
    stop.write_text("")
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        reports.append(json.loads(out) if p.returncode == 0 else {"role": "reader", "crashed": err[-2000:]})
    shutil.rmtree(control, ignore_errors=True)
    expected = {k: outputs(build(k)) for k in ("A", "B")}
    try:
        final_out = outputs(pemn.load(path, fresh()))
        final = next((f"model {k}" for k, v in expected.items() if torch.equal(final_out, v)), "neither model")
        artifact.read(path)
    except Exception as e:
        final = f"invalid: {type(e).__name__}: {e}"
    leftovers = sorted(n for n in os.listdir(path.parent) if n.startswith(f".{path.name}.") and n.endswith(".tmp"))
    rs = [r for r in reports if r.get("role") == "reader"]
    ws = [r for r in reports if str(r.get("role", "")).startswith("writer")]
    windows = [r["window"] for r in ws if "window" in r]
    during = sum(any(a <= t <= b for a, b in windows) for r in rs for t in r.pop("load_times", []))
    return {
        "saves_per_writer": saves,
        "writers": 2,
        "readers": readers,
        "save_errors": sum(r.get("errors", 0) for r in ws),
        "crashed_processes": sum("crashed" in r for r in reports),
        "loads": sum(r.get("loads", 0) for r in rs),
        "loads_while_a_writer_was_saving": during,
        "writer_seconds": [round(b - a, 2) for a, b in windows],
        "loads_model_a": sum(r.get("loads_model_a", 0) for r in rs),
        "loads_model_b": sum(r.get("loads_model_b", 0) for r in rs),
        "loads_matching_neither": sum(r.get("loads_matching_neither", 0) for r in rs),
        "load_errors": sum(r.get("load_errors", 0) for r in rs),
        "final_file": final,
        "leftover_temp_files": leftovers,
        "artifact_bytes": {k: len(artifact.to_bytes(build(k), coding=CODINGS[k])) for k in ("A", "B")},
        "seconds": round(time.perf_counter() - t0, 1),
        "reports": reports,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("orchestrate", "writer", "reader"), default="orchestrate")
    parser.add_argument("--which", choices=("A", "B"), default="A")
    parser.add_argument("--path", type=Path, default=None)
    parser.add_argument("--saves", type=int, default=50, help="saves per writer (default 50)")
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--stop-file", type=Path, default=None)
    parser.add_argument("--go-file", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.role == "writer":
        print(json.dumps(writer(args.which, args.path, args.saves, args.go_file)))
        return 0
    if args.role == "reader":
        print(json.dumps(reader(args.path, args.stop_file, args.go_file, args.timeout)))
        return 0
    with tempfile.TemporaryDirectory(prefix="pemn-concurrent-") as tmp:
        path = args.path or Path(tmp) / "model.pemn"
        doc = orchestrate(path, args.saves, args.readers, args.timeout)
    print(json.dumps({"benchmark": "concurrent_save",
                      "command": f"python {SCRIPT} --saves {args.saves} --readers {args.readers}", **doc}, indent=2))
    ok = (doc["save_errors"] == doc["load_errors"] == doc["loads_matching_neither"] == doc["crashed_processes"] == 0
          and doc["final_file"].startswith("model ") and not doc["leftover_temp_files"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
