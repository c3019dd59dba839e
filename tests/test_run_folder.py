"""Issue 15: what a new user meets first. Run folders locked by their run, a resume hint that works when pasted,
settings taken from the run on --resume, evaluation that says what it does, thread counts, clear errors."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_run import run
from pemn.training import engine
from pemn.training.config import resolve_config
from pemn.training.runlock import LOCK_NAME, RunBusyError, RunLock

QUICK = ["--epochs", "2", "--train-subset", "256", "--no-progress", "--device", "cpu", "--threads", "1"]
REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# --------------------------------------------------------------------------------------------- 1. run folder lock


def test_run_lock_refuses_a_second_holder_and_frees_on_release(tmp_path: Path) -> None:
    a = RunLock(tmp_path).acquire()
    with pytest.raises(RunBusyError, match=r"in use by another running pemn train \(pid \d+"):
        RunLock(tmp_path).acquire()
    a.release()
    RunLock(tmp_path).acquire().release()


@pytest.mark.slow
def test_two_processes_cannot_train_into_the_same_folder(tmp_path: Path) -> None:
    """Run A holds D; run B into D refuses with one line and touches nothing; after A is SIGKILLed the lock is
    gone (no stale lock) and --resume works; --wait waits for a holder instead of refusing."""
    out = tmp_path / "D"
    a = subprocess.Popen([sys.executable, "-m", "pemn", "train", "--epochs", "300", "--train-subset", "128",
                          "--no-progress", "--threads", "1", "--device", "cpu", "--out", str(out)], env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.safetensors").exists():  # A holds the lock and trains
            assert a.poll() is None and time.time() < deadline, a.communicate()
            time.sleep(0.2)
        config_before = (out / "config.json").read_bytes()
        b = subprocess.run([sys.executable, "-m", "pemn", "train", *QUICK, "--seed", "1", "--strategy", "mask",
                            "--out", str(out)], env=_env(), capture_output=True, text=True, timeout=300)
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
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]);"
                               "from pemn.training.runlock import RunLock; RunLock(sys.argv[1]).acquire();"
                               "print('held', flush=True); sys.stdin.readline()", str(out), str(REPO / "src")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    c = subprocess.Popen([sys.executable, "-m", "pemn", "train", "--resume", "--wait", "--out", str(out)],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    assert json.loads((out / "result.json").read_text())["epochs_run"] == 300


def test_lock_is_released_when_setup_fails(tmp_path: Path) -> None:
    """A run that fails after taking the lock (here: a resume with other settings) leaves the folder free."""
    out = tmp_path / "run"
    assert run(["train", *QUICK, "--out", str(out)])[0] == 0
    cfg = resolve_config({"out": str(out), "resume": True, "epochs": 2, "train_subset": 256, "progress": False,
                          "device": "cpu", "threads": 1})
    bad = cfg.__class__.from_dict({**cfg.to_dict(), "lr": 0.5})
    with pytest.raises(ValueError, match="different settings"):
        engine.train(bad)
    RunLock(out).acquire().release()


def test_out_folder_listing_hides_the_lock_file(tmp_path: Path) -> None:
    code, stdout, _ = run(["train", *QUICK, "--out", str(tmp_path / "r")])
    assert code == 0
    results = next(line for line in stdout.splitlines() if line.strip().startswith("results"))
    assert "config.json" in results and LOCK_NAME not in results


# --------------------------------------------------------------------------------------------- 2. resume


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
    assert run(["train", *QUICK, "--out", str(out)])[0] == 0
    code, stdout, err = run(["train", "--resume", "--out", str(out), "--no-progress"])
    assert code == 0, err
    assert "is of a finished run (2/2 epochs); nothing left to train" in stdout
    assert "at epoch 3" not in stdout


# --------------------------------------------------------------------------------------------- 3. evaluation


def test_eval_subset_and_eval_every(tmp_path: Path) -> None:
    out = tmp_path / "r"
    code, stdout, err = run(["train", *QUICK[:-4], "--epochs", "3", "--device", "cpu", "--threads", "1",
                             "--eval-subset", "50", "--eval-every", "2", "--out", str(out)])
    assert code == 0, err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["test_acc"] is None for m in metrics] == [True, False, False]  # epochs 2 and 3 (the last)
    # accuracies on 50 images are multiples of 2 %
    assert all(abs(m["test_acc"] / 2 - round(m["test_acc"] / 2)) < 1e-9 for m in metrics if m["test_acc"] is not None)
    assert "50 test images" in stdout and "test -" in stdout
    result = json.loads((out / "result.json").read_text())
    assert result["best_epoch"] in (2, 3) and result["artifact_acc"] == result["final_acc"]


def test_evaluation_shows_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain progress lines (no terminal) appear for the per-epoch test and for `pemn eval`."""
    import pemn.training.progress as progress

    monkeypatch.setattr(progress, "PLAIN_PROGRESS_EVERY", 0.0)
    out = tmp_path / "r"
    code, stdout, err = run(["train", "--epochs", "1", "--train-subset", "256", "--device", "cpu", "--threads", "1",
                             "--out", str(out)])
    assert code == 0, err
    assert re.search(r"test after epoch 1/1: [\d,]+/359 images", stdout), stdout
    code, stdout, err = run(["eval", str(out / "model.pemn"), "--batch-size", "100", "--threads", "1"])
    assert code == 0, err
    assert re.search(r"eval \(1 CPU thread\): 100/359 images", err) and "300/359" in err, err


def test_one_eval_batch_default_everywhere() -> None:
    from pemn.training.cli import build_parser
    from pemn.training.config import TrainConfig
    from pemn.training.evaluation import DEFAULT_EVAL_BATCH, evaluate

    assert TrainConfig().eval_batch_size == DEFAULT_EVAL_BATCH
    assert inspect.signature(evaluate).parameters["batch_size"].default == DEFAULT_EVAL_BATCH
    helptext = build_parser()._subparsers._group_actions[0].choices["eval"].format_help()  # type: ignore[union-attr]
    assert f"default: {DEFAULT_EVAL_BATCH}" in " ".join(helptext.split())


# --------------------------------------------------------------------------------------------- 4. threads


def test_threads_flag_sets_and_restores_torch_threads(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    code, stdout, err = run(["train", *QUICK[:-2], "--threads", "2", "--out", str(tmp_path / "r")])
    assert code == 0, err
    assert "2 CPU threads" in stdout
    assert torch.get_num_threads() == before
    code, stdout, _ = run(["train", *QUICK, "--out", str(tmp_path / "s")])
    assert "1 CPU thread," in stdout and "1 epochs" not in stdout


def test_default_threads_follow_the_idle_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from pemn.training import dist

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    for load, want in ((0.0, 4), (5.0, 3), (7.6, 1), (30.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert dist.default_threads() == want, load


# --------------------------------------------------------------------------------------------- 5. tiny prototypes


@pytest.mark.parametrize(("ratio", "warns"), [(1e-3, True), (1e-2, True), (0.05, False)])
def test_convert_warns_when_the_prototype_has_a_handful_of_values(ratio: float, warns: bool) -> None:
    import warnings

    import pemn
    from pemn.training.models import create_model

    model = create_model("tiny-cnn", num_classes=10, in_channels=1, image_size=8)  # largest layer: 288 weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pemn.convert_(model, pemn.PEMNConfig(strategy="rp", ratio=ratio, keep=0.5, seed=0))
    found = [str(w.message) for w in caught if "prototype has only" in str(w.message)]
    assert bool(found) == warns, found
    if warns:
        n = int(ratio * 288) + 1
        assert f"only {n} value" in found[0] and "ratio >= 0.024" in found[0] and "ratio=0.1: 29 values" in found[0]


def test_cli_prints_the_tiny_prototype_warning_as_one_line(tmp_path: Path) -> None:
    code, stdout, err = run(["train", *QUICK, "--model", "tiny-cnn", "--out", str(tmp_path / "r")])
    assert code == 0, err
    assert stdout.splitlines()[0].startswith("warning: the rp prototype has only 1 value (ratio 0.001")
    assert "1 prototype value," in stdout and "Warning" not in err


def test_help_names_the_real_default_model() -> None:
    from pemn.training.config import TrainConfig

    code, stdout, _ = run(["--help"])
    assert code == 0
    assert f"default: {TrainConfig().model} on {TrainConfig().dataset}" in stdout and "tiny-cnn" not in stdout


# --------------------------------------------------------------------------------------------- 6. export


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("first_use") / "run"
    code, _, err = run(["train", *QUICK, "--out", str(out)])
    assert code == 0, err
    return out


def _apply(pre: dict, raw: torch.Tensor) -> torch.Tensor:
    """The exported description applied literally to uint8 pixels."""
    c = len(pre["mean"])
    mean = torch.tensor(pre["mean"]).view(1, c, 1, 1)
    std = torch.tensor(pre["std"]).view(1, c, 1, 1)
    return (raw.float() * pre["scale"] - mean) / std


def test_pt_export_sidecar_carries_the_exact_preprocessing(digits_run: Path) -> None:
    from pemn.training.augment import build_eval_transform
    from pemn.training.data import dataset_info, load_dataset

    code, _, err = run(["export", str(digits_run / "model.pemn"), "--format", "pt"])
    assert code == 0, err
    side = json.loads((digits_run / "model.dense.json").read_text())
    pre = side["preprocessing"]
    assert pre["input_shape"] == [1, 8, 8] and pre["classes"] == [str(i) for i in range(10)]
    assert "0..16" in pre["pixels"] and "255 / 16" in pre["pixels"] and "(pixels / 255" not in json.dumps(side)
    images, _ = load_dataset("digits", split="test")
    assert torch.allclose(_apply(pre, images[:32]), build_eval_transform(dataset_info("digits"))(images[:32]),
                          atol=1e-6)
    mode = (digits_run / "model.dense.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask(), oct(mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_onnx_export_carries_the_preprocessing_in_metadata_props(digits_run: Path) -> None:
    onnx = pytest.importorskip("onnx")
    out = digits_run / "m.onnx"
    code, _, err = run(["export", str(digits_run / "model.pemn"), "--format", "onnx", "-o", str(out)])
    assert code == 0, err
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    pre = json.loads(props["pemn.preprocessing"])
    assert props["pemn.model"] == "mlp" and json.loads(props["pemn.input_shape"]) == [1, 8, 8]
    assert pre["mean"] == [0.3055] and abs(pre["scale"] - 1 / 255) < 1e-12 and len(pre["classes"]) == 10


@pytest.mark.parametrize(("name", "n_classes"), [("mnist", 10), ("fashion-mnist", 10), ("cifar10", 10),
                                                 ("cifar100", 100)])
def test_preprocessing_of_each_dataset_matches_the_eval_transform(name: str, n_classes: int) -> None:
    from pemn.training.augment import build_eval_transform
    from pemn.training.data import dataset_info, preprocessing

    info = dataset_info(name)
    pre = preprocessing(info)
    assert len(pre["classes"]) == n_classes and len(set(pre["classes"])) == n_classes
    raw = torch.randint(0, 256, (4, info.in_channels, info.image_size, info.image_size), dtype=torch.uint8)
    assert torch.allclose(_apply(pre, raw), build_eval_transform(info)(raw), atol=1e-5)


# --------------------------------------------------------------------------------------------- 7. system errors


def test_out_at_an_existing_file_is_one_clear_line(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, err = run(["train", *QUICK, "--out", str(f)])
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
    code, _, err = run(["train", *QUICK, "--out", str(ro)])
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


def _write_idx(path: Path, array: np.ndarray, *, mtime: float = 0.0) -> None:
    import gzip

    import numpy as np

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _idx_folder(folder: Path, labels_test: np.ndarray) -> Path:
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (len(labels_test), 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels_test)
    return folder


def test_another_datasets_idx_files_are_refused(tmp_path: Path) -> None:
    import numpy as np

    from pemn.errors import DatasetError
    from pemn.training.data import clear_cache, load_dataset

    clear_cache()
    balanced = np.repeat(np.arange(10), 1000)  # Fashion-MNIST's test split: 1,000 of every class
    digits = np.concatenate([np.full(n, c) for c, n in enumerate((980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                                                  1009))])  # MNIST's test counts
    fashion = _idx_folder(tmp_path / "f", balanced)
    mnist = _idx_folder(tmp_path / "m", digits)
    assert load_dataset("fashion-mnist", fashion, split="test")[1].bincount().tolist() == [1000] * 10
    assert load_dataset("mnist", mnist, split="test")[1].shape == (10000,)
    with pytest.raises(DatasetError, match=r"not Fashion-MNIST's files .* 892..1,135 per class: MNIST's digits"):
        load_dataset("fashion-mnist", mnist, split="test")
    with pytest.raises(DatasetError, match=r"not MNIST's files .*exactly 1,000 images of every class"):
        load_dataset("mnist", fashion, split="test")
    # a subset (not an official file) is not judged
    small = _idx_folder(tmp_path / "s", digits[:500])
    assert load_dataset("fashion-mnist", small, split="test")[1].shape == (500,)


REAL_MNIST = Path("/work/shared/data/mnist")


@pytest.mark.skipif(not (REAL_MNIST / "t10k-labels-idx1-ubyte.gz").exists() and
                    not (REAL_MNIST / "t10k-labels-idx1-ubyte").exists(), reason="no MNIST files here")
def test_real_mnist_as_fashion_is_refused_but_a_recompressed_copy_loads(tmp_path: Path) -> None:
    import gzip

    from pemn.training.data import clear_cache, load_dataset

    clear_cache()
    copy = tmp_path / "copy"
    copy.mkdir()
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        src = REAL_MNIST / f"{base}.gz"
        data = gzip.decompress(src.read_bytes()) if src.exists() else (REAL_MNIST / base).read_bytes()
        with open(copy / f"{base}.gz", "wb") as raw, gzip.GzipFile(filename=base, mode="wb", fileobj=raw,
                                                                   mtime=1234567890, compresslevel=1) as f:
            f.write(data)  # another gzip header and compression level, the same content
        if src.exists():
            assert (copy / f"{base}.gz").read_bytes() != src.read_bytes()
    x, y = load_dataset("mnist", copy, split="test")
    want_x, want_y = load_dataset("mnist", REAL_MNIST, split="test")
    assert torch.equal(x, want_x) and torch.equal(y, want_y)
    from pemn.errors import DatasetError

    with pytest.raises(DatasetError, match=r"not Fashion-MNIST's files"):
        load_dataset("fashion-mnist", REAL_MNIST, split="test")


# --------------------------------------------------------------------------------------------- 8. smaller items


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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.stderr == "pemn: interrupted\n" and out.returncode != 0, out.stderr
    if where == "main":
        assert out.returncode == 130
        return
    # a library user's traceback is left alone
    lib = subprocess.run([sys.executable, "-c", code.replace("'/usr/local/bin/pemn'", "'script.py'")],
                         capture_output=True, text=True, env=_env(), timeout=120)
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


def test_options_are_not_abbreviated() -> None:
    code, _, err = run(["train", "--epoch", "1"])
    assert code == 2 and "unrecognized arguments: --epoch 1" in err


def test_models_lists_sized_families_and_refuses_an_empty_match() -> None:
    code, stdout, _ = run(["models", "convmixer*"])
    assert code == 0 and "convmixer-<dim>-<depth>" in stdout.splitlines()[-1]
    code, stdout, err = run(["models", "x*"])
    assert code == 2 and stdout == "" and "no model name matches 'x*'" in err


def test_sweep_data_dir_reaches_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pemn.training.sweep as sweep

    seen: list[dict] = []

    def fake(points: object, out: object, base: dict, **_: object) -> object:
        seen.append(base)
        raise SystemExit(0)

    monkeypatch.setattr(sweep, "run_sweep", fake)
    with pytest.raises(SystemExit):
        run(["sweep", "--strategies", "rp", "--ratios", "0.1", "--no-dense", "--prune", "--data-dir", "D",
             "--out", str(tmp_path / "s")])
    assert seen[0]["data_dir"] == "D"
    code, _, err = run(["sweep", "--data-dir", "D", "--set", "data_dir=E", "--out", str(tmp_path / "s")])
    assert code == 2 and "--data-dir and --set data_dir=... disagree" in err


def test_summary_echoes_one_line_in_a_repl() -> None:
    import pemn

    model = pemn.convert_(torch.nn.Sequential(torch.nn.Linear(64, 32)), pemn.PEMNConfig(ratio=0.1))
    text = repr(pemn.summary(model, verbose=False))
    assert "\n" not in text and text.startswith("<PEMNSummary rp: 2,048 masked weights, P=205") and "x;" in text


def test_eval_and_inspect_say_first_that_a_file_is_no_artifact(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n" * 4)
    code, _, err = run(["eval", str(text)])
    assert code == 3 and "not a pemn artifact: this looks like a text file" in err and "--model" not in err
    fake_onnx = tmp_path / "m.onnx"  # an ONNX protobuf starts with field 1 (ir_version) and names its producer
    fake_onnx.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.13.0" + bytes(range(256)) * 8)
    code, _, err = run(["inspect", str(fake_onnx)])
    assert code == 3 and "looks like an ONNX model" in err and "header length" not in err, err


def test_missing_mnist_files_are_all_named(tmp_path: Path) -> None:
    from pemn.errors import DatasetError
    from pemn.training.data import clear_cache, load_dataset

    clear_cache()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as train_error:
        load_dataset("mnist", empty, split="train")
    message = str(train_error.value)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        assert name in message, message
    with pytest.raises(DatasetError) as test_error:  # evaluation needs (and names) the test files only
        load_dataset("mnist", empty, split="test")
    assert "t10k-images" in str(test_error.value) and "train-images" not in str(test_error.value)


def test_config_json_records_an_absolute_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", *QUICK, "--epochs", "1", "--data-dir", "data", "--out", "r"])
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["data_dir"]
    assert saved == str(tmp_path / "data") and Path(saved).is_absolute()
