"""The ``pemn`` command line, run in process through ``main([...])`` (plus one ``python -m pemn`` subprocess)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pemn
from cli_run import run
from pemn.training.augment import build_eval_transform
from pemn.training.cli import main
from pemn.training.data import dataset_info, list_datasets, load_dataset
from pemn.training.models import create_model, list_models

TRAIN_ARGS = ["--epochs", "1", "--train-subset", "200", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One real ``pemn train`` (the default mlp / digits / rp) shared by the tests below."""
    out = tmp_path_factory.mktemp("run") / "rp"
    code, stdout, stderr = run(["train", *TRAIN_ARGS, "--out", str(out)])
    assert code == 0, stderr
    artifacts = sorted(out.glob("*.pemn"))
    assert len(artifacts) == 1, list(out.iterdir())
    final = re.search(r"final epoch \(\d+\): ([0-9.]+) %", stdout)
    assert final, stdout
    return {"out": out, "artifact": artifacts[0], "stdout": stdout, "final_acc": float(final.group(1))}


def _test_batch() -> torch.Tensor:
    info = dataset_info("digits")
    images, _ = load_dataset("digits", split="test")
    return build_eval_transform(info)(images[:64])


def _pemn_model(artifact: Path) -> torch.nn.Module:
    return pemn.load(artifact, create_model("mlp", num_classes=10, in_channels=1, image_size=8)).eval()


# --------------------------------------------------------------------------------------------- listings


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == list_models() and lines[-1].startswith("sized families")


def test_datasets_lists_names_with_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_datasets()
    assert all(len(line.split()) > 3 for line in lines)  # a description follows every name


# --------------------------------------------------------------------------------------------- train / inspect / eval


def test_train_writes_artifact_config_and_report(trained: dict[str, object]) -> None:
    out = trained["out"]
    assert isinstance(out, Path)
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "mlp" and config["dataset"] == "digits" and config["epochs"] == 1
    assert config["train_subset"] == 200
    stdout = str(trained["stdout"])
    assert str(trained["artifact"]) in stdout
    assert "best epoch" in stdout and "final epoch" in stdout
    assert "paper ratio" in stdout and "honest ratio" in stdout


def test_inspect_json_and_table(trained: dict[str, object]) -> None:
    code, out, _ = run(["inspect", str(trained["artifact"]), "--json"])
    assert code == 0
    d = json.loads(out)
    assert 0 < d["paper_ratio"] < 1 and d["honest_ratio"] > 0 and d["strategy"] == "rp"
    code, out, _ = run(["inspect", str(trained["artifact"])])
    assert code == 0 and "paper ratio" in out and "honest ratio" in out


def test_eval_matches_the_final_epoch_accuracy(trained: dict[str, object]) -> None:
    code, out, err = run(["eval", str(trained["artifact"]), "--model", "mlp", "--dataset", "digits", "--json",
                          "--device", "cpu"])
    assert code == 0, err
    d = json.loads(out)
    assert d["examples"] == 359
    assert round(d["accuracy"], 2) == trained["final_acc"]
    # --model / --dataset default to the config.json train wrote next to the artifact
    code, out, err = run(["eval", str(trained["artifact"]), "--device", "cpu"])
    assert code == 0, err
    assert f"{trained['final_acc']:.2f} %" in out


@pytest.mark.parametrize(("extra", "weights"), [(["--strategy", "dense"], "model.safetensors"),
                                                 (["--strategy", "dense", "--prune", "magnitude",
                                                   "--compression", "0.9"], "model.sparse.safetensors")])
def test_dense_and_pruned_runs_eval_and_inspect(extra: list[str], weights: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, err = run(["train", *TRAIN_ARGS, *extra, "--out", str(out)])
    assert code == 0, err
    final = float(re.search(r"final epoch \(\d+\): ([0-9.]+) %", stdout).group(1))
    assert f"artifact   {out / weights}" in stdout and "honest ratio" in stdout
    # --model / --dataset come from the config.json next to the weights
    code, out_text, err = run(["eval", str(out / weights), "--json", "--device", "cpu"])
    assert code == 0, err
    assert round(json.loads(out_text)["accuracy"], 2) == final
    code, out_text, err = run(["inspect", str(out / weights), "--json"])
    assert code == 0, err
    assert json.loads(out_text)["kind"] == ("sparse" if "sparse" in weights else "dense")


def test_config_file_and_recipe_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"epochs": 3, "train_subset": 100, "lr": 0.05, "progress": False, "device": "cpu"}))
    out = tmp_path / "run"
    code, _, err = run(["train", "--config", str(cfg), "--recipe", "mnist", "--epochs", "1", "--out", str(out)])
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["recipe"] == "mnist" and saved["epochs"] == 1  # the flag beats the file
    assert saved["lr"] == 0.05 and saved["train_subset"] == 100  # the file beats the recipe
    # a finished run is not silently overwritten
    code, _, err = run(["train", "--config", str(cfg), "--epochs", "1", "--out", str(out)])
    assert code == 6 and "already holds a run" in err
    code, _, err = run(["train", "--config", str(tmp_path / "nope.json")])
    assert code == 2 and "nope.json" in err


# --------------------------------------------------------------------------------------------- export


def test_export_pt_is_safetensors_with_the_same_outputs(trained: dict[str, object], tmp_path: Path) -> None:
    target = tmp_path / "dense.safetensors"
    code, _, err = run(["export", str(trained["artifact"]), "--model", "mlp", "--dataset", "digits",
                        "--format", "pt", "-o", str(target)])
    assert code == 0, err
    assert target.read_bytes()[:1] != b"\x80"  # not a pickle
    meta = json.loads(target.with_suffix(".json").read_text())
    assert (meta["model"], meta["num_classes"], meta["in_channels"], meta["image_size"]) == ("mlp", 10, 1, 8)
    plain = create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    plain.load_state_dict(load_file(str(target)), strict=True)
    x = _test_batch()
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), _pemn_model(trained["artifact"])(x), atol=1e-6, rtol=0)
    # an honest name is required: --format pt never writes a .pt pickle
    code, _, err = run(["export", str(trained["artifact"]), "--dataset", "digits", "--format", "pt",
                        "-o", str(tmp_path / "m.pt")])
    assert code == 2 and ".safetensors" in err


@pytest.mark.slow  # a subprocess (or ONNX export), seconds
def test_export_onnx_matches_the_pemn_model(trained: dict[str, object], tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript onnxruntime)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    target = tmp_path / "model.onnx"
    code, out, err = run(["export", str(trained["artifact"]), "--dataset", "digits", "--format", "onnx",
                          "-o", str(target)])
    assert code == 0, err
    assert "max abs diff" in out
    x = _test_batch()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        expected = _pemn_model(trained["artifact"])(x)
    assert (got - expected).abs().max() < 1e-4


# --------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--model", "no-such-model"], ["unknown model", "tiny-cnn", "lenet5"]),
        (["train", "--dataset", "no-such-data"], ["unknown dataset", "digits", "cifar10"]),
        (["train", "--strategy", "mp", "--ratio", "0.01"], ["ratio"]),
        (["eval", "x.pemn", "--model", "nope", "--dataset", "digits"], []),  # missing file first
        (["sweep", "--out", "unused", "--strategies", "bogus"], ["bogus", "rp"]),
        (["sweep", "--out", "unused", "--set", "ratio=0.1"], ["ratio"]),
        (["sweep", "--out", "unused", "--set", "no_such_option=1"], ["no_such_option"]),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], expected: list[str], tmp_path: Path) -> None:
    argv = [str(tmp_path / a) if a in ("x.pemn", "unused") else a for a in argv]
    code, out, err = run(argv)
    if argv[0] == "eval":  # the artifact does not exist: a runtime error
        assert code == 5 and "no such artifact" in err
    else:
        assert code == 2, (out, err)
    assert err.startswith("pemn: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for word in expected:
        assert word in err
    assert not any(tmp_path.iterdir())  # nothing was trained or written


def test_unknown_recipe_lists_the_valid_ones() -> None:
    from pemn.training.config import RECIPES

    code, _, err = run(["train", "--recipe", "no-such-recipe"])
    assert code == 2 and err.startswith("pemn: error: ")
    assert all(name in err for name in RECIPES)


@pytest.mark.parametrize("command", ["inspect", "eval", "export"])
def test_missing_artifact(command: str, tmp_path: Path) -> None:
    extra = {"inspect": [], "eval": ["--dataset", "digits"], "export": ["--dataset", "digits", "--format", "pt"]}
    code, _, err = run([command, str(tmp_path / "missing.pemn"), "--model", "tiny-cnn", *extra[command]]
                       if command != "inspect" else [command, str(tmp_path / "missing.pemn")])
    assert code != 0
    assert "no such artifact file" in err and "missing.pemn" in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["flip", "truncate", "junk"])
def test_corrupt_artifact_is_a_format_error(trained: dict[str, object], tmp_path: Path, damage: str) -> None:
    data = bytearray(Path(trained["artifact"]).read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"definitely not an artifact")
    bad = tmp_path / "bad.pemn"
    bad.write_bytes(bytes(data))
    for argv in (["inspect", str(bad)], ["eval", str(bad), "--model", "tiny-cnn", "--dataset", "digits"]):
        code, _, err = run(argv)
        assert code == 3, err
        assert err.startswith("pemn: error: ") and "Traceback" not in err
        assert str(bad) in err and ("corrupt" in err or "not a pemn artifact" in err)


def test_argparse_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["train", "--epochs", "many"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_train_flags_come_from_the_dataclass(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from pemn.training.config import TrainConfig

    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert "--no-progress" in text and "--rescale" in text and "--no-rescale" in text


@pytest.mark.slow  # a subprocess (or ONNX export), seconds
def test_python_dash_m_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "pemn", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "eval", "inspect", "export", "models", "datasets", "sweep"):
        assert command in proc.stdout


@pytest.mark.slow  # a subprocess (or ONNX export), seconds
def test_torchrun_module_entry_point(tmp_path: Path) -> None:
    """What the README promises: `torchrun --nproc_per_node=2 -m pemn train ...` trains with DDP on CPU."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", "-m", "pemn", "train", "--epochs", "1", "--train-subset", "512",
         "--device", "cpu", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2
    assert (out / "model.pemn").exists()
    assert proc.stdout.count("trained mlp on digits") == 1  # only rank 0 reports
