"""Self-describing model files (pemn.training.artifacts): every kind a run writes records the registry model, its
arguments and the input preprocessing, so `pemn eval FILE --data-dir D` and `pemn export FILE` need nothing else;
files written without that metadata keep working with --model / --dataset or their config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

import pemn
from cli_run import run
from conftest import quick_config
from pemn.errors import ArchitectureMismatchError, FormatError
from pemn.training.artifacts import (
    APP_KEY,
    IMAGE_APP_KIND,
    KINDS,
    image_app,
    input_info,
    kind_of_file,
    load_model,
    open_model_file,
    read_app,
)
from pemn.training.data import dataset_info
from pemn.training.engine import train
from pemn.training.models import create_model

RUNS = {  # kind -> the settings of a run that writes it
    "pemn": {"strategy": "rp", "ratio": 0.1},
    "dense": {"strategy": "dense"},
    "sparse": {"strategy": "dense", "prune": "magnitude", "compression": 0.9},
    "quant": {"strategy": "dense", "quantize": "int4"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny run per kind; each model file is then moved away from its run folder (no config.json beside)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    done = {}
    try:
        for kind, settings in RUNS.items():
            cfg = quick_config(**{"epochs": 1, "train_subset": 256, "batch_size": 64, "out": root / kind, **settings})
            result = train(cfg, log=lambda _m: None)
            alone = root / "alone" / kind
            alone.mkdir(parents=True)
            moved = alone / KINDS[kind].filename
            (root / kind / KINDS[kind].filename).rename(moved)
            done[kind] = {"path": moved, "result": result}
    finally:
        torch.set_num_threads(threads)
    return done


@pytest.mark.parametrize("kind", list(RUNS))
def test_every_kind_records_its_architecture_and_inputs(runs: dict[str, Any], kind: str) -> None:
    path = runs[kind]["path"]
    assert kind_of_file(path) is KINDS[kind]
    app = read_app(path)
    info = dataset_info("digits")
    assert app == {"kind": IMAGE_APP_KIND, "model": "tiny-mlp",
                   "model_args": {"num_classes": 10, "in_channels": 1, "image_size": 8},
                   "preprocessing": {"dataset": "digits", "input_shape": [1, 8, 8], "scale": 1 / 255,
                                     "mean": list(info.mean), "std": list(info.std)}}
    assert len(json.dumps(app)) < 300  # a few hundred bytes: pemn files are small
    model, got_kind, _ = load_model(path)
    assert got_kind is KINDS[kind] and not model.training
    x = torch.randn(4, 1, 8, 8)
    reference = runs[kind]["result"].model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("kind", list(RUNS))
def test_eval_and_export_need_only_the_file(runs: dict[str, Any], kind: str, tmp_path: Path) -> None:
    path = runs[kind]["path"]
    assert not (path.parent / "config.json").exists()
    code, out, err = run(["eval", str(path), "--json", "--device", "cpu"])
    assert code == 0, err
    d = json.loads(out)
    assert (d["kind"], d["model"], d["dataset"]) == (kind, "tiny-mlp", "digits")
    assert round(d["accuracy"], 6) == round(runs[kind]["result"].final_acc, 6)
    dest = tmp_path / "plain.safetensors"
    code, out, err = run(["export", str(path), "--format", "pt", "-o", str(dest)])
    assert code == 0, err
    sidecar = json.loads(dest.with_suffix(".json").read_text())
    assert sidecar["model"] == "tiny-mlp" and sidecar["num_classes"] == 10
    assert (sidecar.get("preprocessing") or sidecar)["mean"] == list(dataset_info("digits").mean)


def test_model_flags_must_agree_with_the_file(runs: dict[str, Any]) -> None:
    path = str(runs["pemn"]["path"])
    code, _, err = run(["eval", path, "--model", "mlp", "--device", "cpu"])
    assert code == 2 and "holds a tiny-mlp, not a mlp" in err
    code, _, err = run(["export", path, "--format", "pt", "--num-classes", "7", "-o", "x.safetensors"])
    assert code == 2 and "num classes 10, not 7" in err
    code, _, err = run(["eval", path, "--dataset", "cifar10", "--device", "cpu"])
    assert code == 2 and "in channels 1" in err and len(err.strip().splitlines()) == 1


def test_files_without_app_metadata_keep_working(tmp_path: Path) -> None:
    """A .pemn saved without app= (as every file before it) loads with --model/--dataset or its config.json."""
    torch.manual_seed(0)
    model = create_model("tiny-mlp", num_classes=10, in_channels=1, image_size=8)
    pemn.convert_(model, pemn.PEMNConfig(strategy="mask"))
    (tmp_path / "old").mkdir()
    path = pemn.save(model, tmp_path / "old" / "model.pemn")
    assert read_app(path) is None
    with pytest.raises(ValueError, match="does not record its architecture"):
        load_model(path)
    code, out, err = run(["eval", str(path), "--model", "tiny-mlp", "--dataset", "digits", "--json"])
    assert code == 0, err
    assert json.loads(out)["model"] == "tiny-mlp"
    code, _, err = run(["eval", str(path)])
    assert code == 2 and "give --model" in err
    # the application's function under the CLI: a ValueError (the CLI's usage error) names what to give
    with pytest.raises(ValueError, match=r"explicitly \(missing --num-classes, --in-channels, --image-size\)"):
        open_model_file(path, None, model="tiny-mlp")
    opened = open_model_file(path, None, model="tiny-mlp", shape={"num_classes": 10, "in_channels": 1,
                                                                  "image_size": 8})
    assert (opened.name, opened.dataset, opened.info, opened.shape["num_classes"]) == ("tiny-mlp", None, None, 10)
    (path.parent / "config.json").write_text(json.dumps({"model": "tiny-mlp", "dataset": "digits"}))
    code, out, err = run(["eval", str(path), "--json"])
    assert code == 0, err
    assert json.loads(out)["kind"] == "pemn"
    (path.parent / "config.json").write_text(json.dumps({"model": "tiny-mlp", "dataset": "digits",
                                                         "data_dir": str(tmp_path / "recorded")}))
    opened = open_model_file(path, None)  # everything from the run's config.json, its data folder too
    assert (opened.name, opened.dataset, opened.info.name) == ("tiny-mlp", "digits", "digits")
    assert opened.data_dir == str(tmp_path / "recorded") and not opened.model.training
    assert open_model_file(path, None, data_dir="mine").data_dir == "mine"  # --data-dir wins


def _with_metadata(path: Path, out: Path, **changes: str | None) -> Path:
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for k, v in changes.items():
        if v is None:
            metadata.pop(k, None)
        else:
            metadata[k] = v
    out.write_bytes(st_save(tensors, metadata=metadata))
    return out


@pytest.mark.parametrize(("value", "error", "match"), [
    ("{not json", FormatError, "not JSON"),
    ('["a list"]', FormatError, "naming the model"),
    ('{"model": "tiny-mlp", "model_args": {"num_classes": "ten"}}', FormatError, "model_args"),
    ('{"model": "tiny-mlp", "model_args": {"num_classes": 3, "in_channels": 1, "image_size": 8}}',
     ArchitectureMismatchError, "does not fit"),
    ('{"model": "no-such-model", "model_args": {"num_classes": 10}}', ValueError, "unknown model"),
])
def test_corrupt_app_metadata(runs: dict[str, Any], tmp_path: Path, value: str, error: type, match: str) -> None:
    bad = _with_metadata(runs["dense"]["path"], tmp_path / "bad.safetensors", **{APP_KEY: value})
    with pytest.raises(error, match=match):
        load_model(bad)
    code, _, err = run(["eval", str(bad), "--device", "cpu"])
    assert code == (2 if error is ValueError else 3), err  # a name nothing has, or a file that cannot be used
    assert err.startswith("pemn: error: ") and len(err.strip().splitlines()) == 1


def test_kind_of_file() -> None:
    pickle = Path(__file__).parent / "data"
    with pytest.raises(FormatError, match="directory"):
        kind_of_file(pickle)
    with pytest.raises(FileNotFoundError, match="no such artifact"):
        kind_of_file(pickle / "no-such.pemn")


def test_input_info_checks_the_data_fits(tmp_path: Path) -> None:
    info = dataset_info("digits")
    app = image_app("tiny-mlp", info)
    assert input_info(app, info) == info
    other = {**app, "preprocessing": {**app["preprocessing"], "mean": [0.5], "std": [0.25]}}
    assert (input_info(other, info).mean, input_info(other, info).std) == ((0.5,), (0.25,))  # the file's wins
    assert "classes" not in app["preprocessing"]  # digits' labels are fixed; imagefolder's come from the data
    with pytest.raises(ValueError, match="in channels 3"):
        input_info(image_app("tiny-mlp", dataset_info("cifar10")), info)
    broken = {**app, "preprocessing": {**app["preprocessing"], "mean": [0.1, 0.2]}}
    with pytest.raises(FormatError, match="one number per channel"):
        input_info(broken, info)
    for folder, classes in (("a", ("cat", "dog")), ("b", ("cat", "fox")), ("c", ("cat", "dog"))):
        for c in classes:
            (tmp_path / folder / "train" / c).mkdir(parents=True)
    trained = image_app("tiny-cnn", dataset_info("imagefolder", tmp_path / "a", image_size=16), tmp_path / "a")
    assert trained["preprocessing"]["classes"] == ["cat", "dog"]
    same = dataset_info("imagefolder", tmp_path / "c", image_size=16)
    assert input_info(trained, same, tmp_path / "c") == same
    with pytest.raises(ValueError, match="labels would not match"):
        input_info(trained, dataset_info("imagefolder", tmp_path / "b", image_size=16), tmp_path / "b")


@pytest.mark.parametrize("settings", [{"strategy": "dense"}, {"strategy": "rp", "ratio": 0.1}],
                         ids=["dense", "pemn"])
def test_a_narrow_model_rebuilds_from_its_file(tmp_path: Path, settings: dict[str, Any]) -> None:
    """The width is part of the registry name the file records: eval and export rebuild the narrow network."""
    cfg = quick_config(**{"model": "lenet5-w25", "epochs": 1, "train_subset": 128, "batch_size": 64, "threads": 1,
                          "out": tmp_path / "run", **settings})
    result = train(cfg, log=lambda _m: None)
    path = Path(result.artifact or result.weights)
    alone = tmp_path / path.name
    path.rename(alone)
    assert read_app(alone)["model"] == "lenet5-w25"
    model, _, _ = load_model(alone)
    assert model.features[0].out_channels == 2 and model.classifier[0].out_features == 30
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    code, out, err = run(["eval", str(alone), "--json", "--device", "cpu"])
    assert code == 0, err
    assert json.loads(out)["model"] == "lenet5-w25"
    assert round(json.loads(out)["accuracy"], 6) == round(result.final_acc, 6)
    code, _, err = run(["export", str(alone), "--format", "pt", "-o", str(tmp_path / "plain.safetensors")])
    assert code == 0, err
