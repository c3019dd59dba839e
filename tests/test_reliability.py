"""Reliability under hostile or unlucky conditions (the fast versions of the stress runs in RELIABILITY.md):

1. a fuzzed loader (``benchmarks/fuzz_loader.py``: mutated artifacts are a FormatError or load exactly);
2. ``pemn train`` killed with SIGKILL, also inside its writes, and resumed (``scripts/kill_resume.py``);
3. full disks and read-only targets for ``pemn.save`` and for train's checkpoint / artifact writes (a real
   small tmpfs and a read-only remount where mounting is permitted; an injected failure everywhere);
4. concurrent writers and readers of one artifact path (``scripts/concurrent_save.py``);
5. hostile data directories (what tests/test_data.py does not cover yet).

Single-process artifact corruption cases live in tests/test_artifact_errors.py, data parsing in test_data.py.
"""

from __future__ import annotations

import errno
import functools
import gzip
import io
import json
import os
import pickle
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pemn
from conftest import load_script, quick_config
from pemn import artifact, fileio
from pemn.training import data
from pemn.training.checkpoint import read_checkpoint
from pemn.training.engine import TrainingInterrupted, train
from pemn.training.errors import DatasetError
from test_data import _cifar_batch, _idx_bytes, _write_cifar10, _write_mnist

ROOT = Path(__file__).resolve().parent.parent


fuzz = load_script("benchmarks/fuzz_loader.py")
kill_resume = load_script("scripts/kill_resume.py")
concurrent_save = load_script("scripts/concurrent_save.py")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def _fresh_data_cache() -> Iterator[None]:
    data.clear_cache()
    yield
    data.clear_cache()


@functools.cache
def bases() -> list[Any]:
    return fuzz.build_bases()


def _temp_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(".") and n.endswith(".tmp"))


# ------------------------------------------------------------------------------------- 1. fuzzed loader


def test_fuzz_loader_short() -> None:
    """400 mutated artifacts (the benchmark runs 10,000): every one a FormatError or an exact load."""
    start = time.perf_counter()
    r = fuzz.run(400, seed=20240601, bases=bases())
    failures = r["failures"][:3]
    assert r["inputs"] == 400
    assert r["other_exceptions"] == 0, failures
    assert r["wrong_loads"] == 0, failures
    assert r["model_changed_by_failed_load"] == 0, failures
    assert r["timeouts"] == 0, failures
    assert not r["unpickled_anything"]
    assert r["mutator_errors"] == 0, r["mutator_error_examples"]
    assert r["format_errors"] + r["loaded"] == 400
    assert r["format_errors"] > 300 and r["loaded"] > 0  # the mix the fuzzer is meant to produce
    assert set(r["by_family"]) == set(fuzz.FAMILIES)
    assert r["peak_memory"]["largest_single_load_mib"] < 1024, r["peak_memory"]
    assert time.perf_counter() - start < 60


def test_fuzz_loader_multi_task_files() -> None:
    """300 mutated multi-task files (format version 4, issue 22): task entries, base, head, task tensors."""
    r = fuzz.run(300, seed=20261207, bases=[b for b in bases() if "tasks" in b.name])
    failures = r["failures"][:3]
    assert r["other_exceptions"] == 0 and r["wrong_loads"] == 0, failures
    assert r["model_changed_by_failed_load"] == 0 and r["timeouts"] == 0, failures
    assert r["mutator_errors"] == 0, r["mutator_error_examples"]
    assert r["format_errors"] > 200 and r["loaded"] > 0
    assert r["peak_memory"]["largest_single_load_mib"] < 1024, r["peak_memory"]


def test_fuzz_quantized_loader_short() -> None:
    """300 mutated quantized-model files (--kind quant): every one a FormatError, the base's outputs or exactly
    what an independent decoder reads from the file; never another exception or a model changed by a failure."""
    r = fuzz.run(300, seed=20240601, kind="quant")
    failures = r["failures"][:3]
    assert r["inputs"] == 300 and r["kind"] == "quant"
    assert r["other_exceptions"] == 0, failures
    assert r["wrong_loads"] == 0, failures
    assert r["model_changed_by_failed_load"] == 0, failures
    assert r["timeouts"] == 0 and not r["unpickled_anything"], failures
    assert r["mutator_errors"] == 0, r["mutator_error_examples"]
    assert r["format_errors"] > 200 and r["loaded_breakdown"]["edit_loaded_exactly"] > 0
    assert set(r["by_family"]) == set(fuzz.QUANT_FAMILIES)


@pytest.fixture(scope="module")
def hypothesis_fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return fuzz.Fuzzer(bases(), tmp_path_factory.mktemp("fuzz"), timeout=30)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_fuzz_loader_hypothesis(hypothesis_fuzzer: Any, rng: Any) -> None:
    """The same mutations drawn by hypothesis (which shrinks a failing input to a minimal mutation list). No zlib
    bombs: hypothesis favours small floats, so they would be frequent (test_fuzz_loader_short has them)."""
    bombs = fuzz.ZLIB_BOMB_PROBABILITY
    fuzz.ZLIB_BOMB_PROBABILITY = 0.0
    try:
        inp, family = fuzz.mutate(rng, bases())
    finally:
        fuzz.ZLIB_BOMB_PROBABILITY = bombs
    hypothesis_fuzzer.stats = fuzz.Stats()
    outcome = hypothesis_fuzzer.check(0, inp, family)
    assert not hypothesis_fuzzer.stats.bad(), (outcome, inp.steps, hypothesis_fuzzer.stats.failures)


def test_fuzz_inputs_replay_identically() -> None:
    """``--replay I`` rebuilds input I byte for byte (safetensors' hash-order metadata is canonicalised)."""
    for i in range(40):
        a, _ = fuzz.make_input(7, i, bases())
        b, _ = fuzz.make_input(7, i, bases())
        if not any("torch.save" in s for s in a.steps):  # torch.save writes a random serialization id
            assert a.data == b.data and a.steps == b.steps


# ------------------------------------------------------------------------------------ 2. killed training


@pytest.mark.slow  # a subprocess (or ONNX export), seconds
def test_kill_resume_fast(tmp_path: Path) -> None:
    """Three SIGKILLs -- at a checkpoint write, at the model.pemn write, at a random write -- each followed by
    ``--resume``: nothing corrupt, no temporary file left, and the result bit-identical to an uninterrupted run."""
    args = kill_resume.parse_args(["--kills", "3", "--epochs", "2", "--model", "tiny-mlp", "--seed", "0",
                                   "--workdir", str(tmp_path), "--modes", "checkpoint", "artifact", "write"])
    doc = kill_resume.run(args)
    assert doc["kills"] == 3, doc
    assert doc["resumes_failed"] == 0, doc["problems"]
    assert doc["kills_survived"] == 3, doc
    assert doc["corrupt_files_found"] == 0, doc["problems"]
    assert doc["leftover_temp_files_after_completed_resume"] == 0, doc["problems"]
    assert doc["final_model_identical"], doc["problems"]


def _train_cfg(out: Path, **kw: Any) -> Any:
    return quick_config(**{"epochs": 3, "out": out, **kw})


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    train(_train_cfg(out), log=lambda m: None)
    return out


def _assert_same_run(ref: Path, out: Path) -> None:
    strip, timings = kill_resume._strip, kill_resume.TIMING_FIELDS
    t_ref, m_ref = read_checkpoint(ref / "checkpoint.safetensors")
    t_out, m_out = read_checkpoint(out / "checkpoint.safetensors")
    assert t_ref.keys() == t_out.keys()
    for k in t_ref:
        assert t_ref[k].dtype == t_out[k].dtype and torch.equal(t_ref[k], t_out[k]), k
    assert strip(m_ref["state"], timings) == strip(m_out["state"], timings)
    a, b = artifact.read(ref / "model.pemn"), artifact.read(out / "model.pemn")
    assert a.metadata == b.metadata and a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    metrics = [strip([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()], timings)
               for d in (ref, out)]
    assert metrics[0] == metrics[1]


def test_resume_removes_stale_temp_files(tmp_path: Path, reference_run: Path) -> None:
    """Regression: a SIGKILL inside atomic_write_bytes leaves ``.NAME.xxxx.tmp``; the resumed run removed none
    of them. Now the run's own stale temporary files go when it starts; other files are left alone."""
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(_train_cfg(out), log=lambda m: None, stop_after_epoch=1)
    stale = [".checkpoint.safetensors.k2x9q1ab.tmp", ".model.pemn.zz_01.tmp", ".metrics.jsonl.a.tmp",
             ".result.json.b.tmp", ".config.json.c.tmp"]
    foreign = [".notes.txt.abc.tmp", "keep.tmp", ".model.pemn.tmp", "checkpoint.safetensors.x.tmp"]
    for name in stale + foreign:
        (out / name).write_bytes(b"partial")
    train(_train_cfg(out, resume=True), log=lambda m: None)
    assert sorted(n for n in os.listdir(out) if n.endswith(".tmp")) == sorted(foreign)
    _assert_same_run(reference_run, out)


def test_resume_rewrites_metrics_left_an_epoch_behind(tmp_path: Path, reference_run: Path) -> None:
    """Regression: a kill after the last epoch's checkpoint but before its metrics.jsonl write left the finished
    run's metrics.jsonl one epoch short for good (a resume found no epoch left to run, so never rewrote it)."""
    out = tmp_path / "run"
    train(_train_cfg(out), log=lambda m: None)
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:-1]))  # as the kill left it
    for name in ("model.pemn", "result.json"):
        (out / name).unlink()
    train(_train_cfg(out, resume=True), log=lambda m: None)
    assert (out / "metrics.jsonl").read_text().splitlines() == [x.rstrip("\n") for x in lines]
    _assert_same_run(reference_run, out)


# --------------------------------------------------------------------------- 3. full disk, read-only targets


def _mount(args: list[str]) -> str:
    """'' if ``mount args`` worked, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    try:
        r = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run mount ({e})"
    return "" if r.returncode == 0 else f"mount {' '.join(args[:3])} is not permitted here ({r.stderr.strip()})"


class Disk:
    """A real small tmpfs: fill it up, make it read-only, and back."""

    def __init__(self, where: Path, size: str) -> None:
        self.where = where
        where.mkdir()
        why = _mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)])
        if why:
            pytest.skip(why)
        self.filler = where / "filler"

    def fill(self) -> None:
        """Write until ENOSPC (unbuffered, so closing does not try again)."""
        with open(self.filler, "ab", buffering=0) as f:
            block = b"\0" * 4096
            while True:
                try:
                    if f.write(block) == 0:
                        break
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, on: bool) -> None:
        why = _mount(["-o", f"remount,{'ro' if on else 'rw'}", str(self.where)])
        if why:
            pytest.skip(why)

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.where)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.where)], capture_output=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Callable[[str], Disk]]:
    made: list[Disk] = []

    def make(size: str = "512k") -> Disk:
        d = Disk(tmp_path / f"tmpfs{len(made)}", size)
        made.append(d)
        return d

    yield make
    for d in made:
        d.unmount()


def _assert_loads_as(path: Path, base: Any) -> None:
    model = pemn.load(path, fuzz.fresh_model(base.model))
    assert torch.equal(fuzz.run_model(model, base.x), base.expected)


def _loaded(base: Any) -> Any:
    return artifact.apply(artifact.parse(base.data), fuzz.fresh_model(base.model))


@pytest.mark.parametrize("failure", ["full_tmpfs", "read_only_remount"])
def test_save_to_full_or_read_only_disk(disk: Callable[[str], Disk], failure: str) -> None:
    """pemn.save onto a real full tmpfs / read-only mount: a clear OSError naming the path, the previous artifact
    intact, no temporary file. (Injected failures are in tests/test_artifact_errors.py.)"""
    d = disk("256k")
    first, second = bases()[0], bases()[4]
    path = pemn.save(_loaded(first), d.where / "model.pemn")
    previous = path.read_bytes()
    if failure == "full_tmpfs":
        d.fill()
        code = errno.ENOSPC
    else:
        d.read_only(True)
        code = errno.EROFS
    try:
        with pytest.raises(OSError) as info:
            pemn.save(_loaded(second), path, coding="entropy")
        assert info.value.errno == code, info.value
        assert str(path) in str(info.value) and os.strerror(code) in str(info.value), str(info.value)
        assert path.read_bytes() == previous
        assert _temp_files(d.where) == []
        _assert_loads_as(path, first)
    finally:
        if failure == "full_tmpfs":
            d.free()
        else:
            d.read_only(False)
    pemn.save(_loaded(second), path, coding="entropy")  # positive control: with room, it is written
    assert artifact.read(path).coding == "entropy" and _temp_files(d.where) == []
    _assert_loads_as(path, second)


def _fail_writes(kind: str, d: Disk | None, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Start making writes fail (returns the undo)."""
    if kind == "full_tmpfs":
        assert d is not None
        d.fill()
        return d.free
    if kind == "read_only_remount":
        assert d is not None
        d.read_only(True)
        return lambda: d.read_only(False)

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(fileio.os, "fsync", fsync)
    return monkeypatch.undo


@pytest.mark.parametrize("failure", ["full_tmpfs", "read_only_remount", "injected_eio"])
@pytest.mark.parametrize("target", ["checkpoint", "artifact"])
def test_train_write_failure(tmp_path: Path, disk: Callable[[str], Disk], monkeypatch: pytest.MonkeyPatch,
                             reference_run: Path, target: str, failure: str) -> None:
    """train's writes fail mid-run (disk full / remounted read-only / fsync EIO): train raises an OSError naming
    the file, the previous checkpoint (and model.pemn) are intact and parse, no temporary file is left, and once
    the disk is back a --resume finishes bit-identical to an uninterrupted run."""
    d = disk("512k") if failure != "injected_eio" else None
    out = (d.where if d is not None else tmp_path) / "run"
    undo: list[Callable[[], None]] = []
    saved: dict[str, bytes] = {}

    def trigger(message: str) -> None:
        if undo:
            return
        if (target == "checkpoint" and message.startswith("epoch 1/3")) or \
                (target == "artifact" and message.startswith("recipe ")):
            saved.update({n: (out / n).read_bytes() for n in ("checkpoint.safetensors", "model.pemn")
                          if (out / n).exists()})
            undo.append(_fail_writes(failure, d, monkeypatch))

    if target == "artifact":  # a finished run, resumed again: its model.pemn is rewritten and must survive
        train(_train_cfg(out), log=lambda m: None)
    with pytest.raises(OSError) as info:
        train(_train_cfg(out, resume=target == "artifact"), log=trigger)
    undo[0]()
    name = "checkpoint.safetensors" if target == "checkpoint" else "model.pemn"
    assert name in str(info.value), str(info.value)
    assert info.value.errno == {"full_tmpfs": errno.ENOSPC, "read_only_remount": errno.EROFS,
                                "injected_eio": errno.EIO}[failure]
    assert saved and all((out / n).read_bytes() == b for n, b in saved.items()), "a previous file was damaged"
    assert _temp_files(out) == []
    assert read_checkpoint(out / "checkpoint.safetensors")[1]["state"]["epoch"] == (1 if target == "checkpoint" else 3)
    if target == "artifact":
        artifact.read(out / "model.pemn")
    train(_train_cfg(out, resume=True), log=lambda m: None)
    assert _temp_files(out) == []
    _assert_same_run(reference_run, out)


# ------------------------------------------------------------------------------------- 4. concurrent use


@pytest.mark.slow  # a subprocess (or ONNX export), seconds
def test_concurrent_writers_and_reader(tmp_path: Path) -> None:
    """Two processes save different models to one path 20 times each while a third loads it: every load is one
    of the two models exactly, none fails, and one complete artifact is left with no temporary file."""
    doc = concurrent_save.orchestrate(tmp_path / "shared" / "model.pemn", saves=20, readers=1, timeout=240)
    detail = {k: v for k, v in doc.items() if k != "reports"}
    assert doc["crashed_processes"] == 0, doc["reports"]
    assert doc["save_errors"] == 0 and doc["load_errors"] == 0, doc["reports"]
    assert doc["loads_matching_neither"] == 0, detail
    assert doc["loads"] > 0, detail
    assert doc["final_file"] in ("model A", "model B"), detail
    assert doc["leftover_temp_files"] == [], detail


# ---------------------------------------------------------------------------------- 5. hostile data dirs


def _runstring() -> Callable[..., Any]:
    from numpy.testing._private.utils import runstring  # exec() in disguise: a classic numpy pickle gadget

    return runstring


GADGETS: dict[str, Callable[[Path], Any]] = {
    # name: a payload that creates ``marker`` when unpickled by plain pickle (except getattr: refused alone)
    "numpy_runstring": lambda m: _GadgetArgs(_runstring(), (f"open({str(m)!r}, 'w').close()", {})),
    "nested_pickle_loads": lambda m: _GadgetArgs(pickle.loads, (pickle.dumps(_GadgetArgs(open, (str(m), "w"))),)),
    "io_open": lambda m: _GadgetArgs(open, (str(m), "w")),
    "subprocess_call": lambda m: _GadgetArgs(subprocess.call, (["touch", str(m)],)),
    "builtins_getattr": lambda m: _GadgetArgs(getattr, ("", "join")),
}


class _GadgetArgs:
    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


@pytest.mark.parametrize("gadget", GADGETS)
def test_cifar_pickle_gadgets_refused(tmp_path: Path, gadget: str) -> None:
    """Globals beyond os.system / eval / exec (covered in test_data.py): numpy's own exec gadget, a nested
    unrestricted pickle.loads, subprocess, builtins -- refused by name, nothing executed."""
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    marker = tmp_path / "pwned"
    batch = _cifar_batch(4, 1)
    batch[b"data"] = GADGETS[gadget](marker)
    blob = pickle.dumps(batch, protocol=2)
    (folder / "data_batch_2").write_bytes(blob)
    with pytest.raises(DatasetError, match=r"data_batch_2: refused to unpickle the global") as info:
        data.load_dataset("cifar10", tmp_path)
    assert "nothing was executed" in str(info.value)
    assert not marker.exists()
    if gadget != "builtins_getattr":  # positive control: plain pickle does run it
        loaded = pickle.loads(blob)
        getattr(loaded[b"data"], "close", lambda: None)()
        assert marker.exists()


def test_cifar_pickle_declaring_a_huge_array(tmp_path: Path) -> None:
    """An allowed _reconstruct whose shape declares 6 TB (the bytes hold 2 images): refused, nothing allocated."""
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    blob = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    shape = b"K\x02M\x00\x0c\x86"  # the tuple (2, 3072)
    assert blob.count(shape) == 1
    (folder / "test_batch").write_bytes(blob.replace(shape, b"J\xff\xff\xff\x7fM\x00\x0c\x86"))
    before = fuzz.vm_hwm_kib()
    with pytest.raises(DatasetError, match=r"test_batch: corrupt or truncated CIFAR pickle"):
        data.load_dataset("cifar10", tmp_path, split="test")
    assert fuzz.vm_hwm_kib() - before < 256 * 1024


def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_truncated() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[:300]


IMAGES: dict[str, Callable[[], bytes]] = {
    "zero_bytes.png": lambda: b"",
    "random_bytes.jpg": lambda: np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
    "text.jpeg": lambda: b"not an image\n" * 20,
    "truncated.jpg": _jpeg_truncated,
    "corrupt_pixel_data.png": lambda: _png(4, 4, b"this is not a zlib stream"),
    "decompression_bomb.png": lambda: _png(100_000, 100_000, zlib.compress(b"")),  # 10^10 pixels in ~70 bytes
}


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", IMAGES)
def test_imagefolder_bad_images_named(tmp_path: Path, name: str, split: str) -> None:
    """Unreadable, foreign, truncated and bomb images: a DatasetError naming the file, fast, nothing huge
    allocated. (test_data.py covers a truncated PNG in train/.)"""
    pytest.importorskip("PIL")
    from PIL import Image

    for s in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / s / cls).mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / s / cls / "ok.png")
    bad = tmp_path / split / "b" / name
    bad.write_bytes(IMAGES[name]())
    before, start = fuzz.vm_hwm_kib(), time.perf_counter()
    with pytest.raises(DatasetError, match=r"unreadable or truncated image") as info:
        data.load_dataset("imagefolder", tmp_path, split=split, image_size=8)
    assert str(bad) in str(info.value)
    assert time.perf_counter() - start < 10 and fuzz.vm_hwm_kib() - before < 256 * 1024


IDX_LIES: dict[str, tuple[Callable[[bytes], bytes], bool, str]] = {
    # name: (edit of the raw train-images IDX bytes, gzip the result, what the message must say)
    "float_data_type": (lambda r: r[:2] + b"\x0d" + r[3:], True, r"data type 0x0d is not unsigned byte"),
    "header_cut_mid_dims": (lambda r: r[:9], False, r"truncated IDX header|claims"),
    "zero_dimensions": (lambda r: r[:3] + b"\x00", True, r"declares 0 dimensions"),
    "raw_trailing_bytes": (lambda r: r + b"\0" * 7, False, r"claims .* but the file holds"),
    "gz_trailing_bytes": (lambda r: r + b"\0" * 7, True, r"trailing data"),
    "dims_28x27": (lambda r: r[:12] + struct.pack(">I", 27) + r[16:16 + 12 * 28 * 27], True,
                   r"images are \(28, 27\), mnist images are 28x28"),
    "dims_overflow_u32": (lambda r: r[:4] + b"\xff" * 12 + r[16:], False, r"claims"),
    "gz_bad_crc": (lambda r: r, True, r"corrupt or truncated"),
}


@pytest.mark.parametrize("kind", IDX_LIES)
def test_idx_header_lies_named(tmp_path: Path, kind: str) -> None:
    """IDX headers that lie in ways test_data.py does not try: each a DatasetError naming the file."""
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    edit, gz, match = IDX_LIES[kind]
    raw = edit(path.read_bytes())
    path.unlink()
    if gz:
        blob = bytearray(gzip.compress(raw, mtime=0))
        if kind == "gz_bad_crc":
            blob[-8] ^= 0xFF  # the stored CRC-32
        path = tmp_path / "train-images-idx3-ubyte.gz"
        path.write_bytes(bytes(blob))
    else:
        path.write_bytes(raw)
    with pytest.raises(DatasetError, match=match) as info:
        data.load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value)


def test_idx_reference_files_load(tmp_path: Path) -> None:
    """Positive control for the table above: the unedited synthetic files load."""
    _write_mnist(tmp_path, gz=False)
    x, y = data.load_dataset("mnist", tmp_path)
    assert x.shape == (12, 1, 28, 28) and y.shape == (12,)
    assert _idx_bytes(np.zeros(3, np.uint8))[:4] == b"\x00\x00\x08\x01"
