"""``pemn inspect``: what the file records (model, dataset, preprocessing, method, tasks, the pemn that wrote it),
layer names cut with a visible mark, and the two size measures printed one way everywhere (README, "Sizes")."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import pemn
from cli_run import run
from pemn.summary import CUT_MARK, fit_name, honest_ratio_text, paper_ratio_text

LONG = "encoder_with_a_rather_long_descriptive_name"


def _long_named_model() -> nn.Module:
    inner = nn.Sequential(nn.Linear(8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))
    return nn.Sequential(nn.Flatten(), nn.ModuleDict({LONG: inner}))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _long_named_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.body[0](x)
        return self.body[1][LONG](flat)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A file as pemn train writes it (app metadata of the registry mlp on digits), one saved from Python with no
    app, one with a long layer name, and a file of two tasks."""
    from pemn.training.artifacts import image_app
    from pemn.training.data import dataset_info
    from pemn.training.models import create_model

    root = tmp_path_factory.mktemp("inspect")
    cfg = pemn.PEMNConfig(strategy="rp", ratio=0.1, keep=0.5, seed=3)
    app = image_app("mlp", dataset_info("digits"))
    out = {"train": pemn.save(pemn.convert_(create_model("mlp", num_classes=10, in_channels=1, image_size=8), cfg),
                              root / "train.pemn", app=app),
           "python": pemn.save(pemn.convert_(_Net(), cfg), root / "python.pemn"),
           "long": pemn.save(pemn.convert_(_Net(), cfg), root / "long.pemn",
                             app={"model": "my-net", "note": "x" * 300})}
    tasks = pemn.convert_(_Net(), cfg)
    pemn.add_task(tasks, "digits-even")
    pemn.add_task(tasks, "digits-odd")
    out["tasks"] = pemn.save(tasks, root / "tasks.pemn")
    return {k: Path(v) for k, v in out.items()}


def _recorded(stdout: str) -> dict[str, str]:
    block = stdout.split("recorded in the file:\n", 1)[1].split("\n\n", 1)[0]
    return {line[2:16].strip(): line[17:] for line in block.splitlines()}


def test_inspect_shows_what_the_file_records(files: dict[str, Path]) -> None:
    code, stdout, err = run(["inspect", str(files["train"])])
    assert code == 0, err
    rec = _recorded(stdout)
    assert rec["model"] == "mlp (image size 8, in channels 1, num classes 10), image-classifier"
    assert rec["dataset"] == "digits"
    assert rec["preprocessing"].startswith("input 1x8x8; x = (pixels x 0.00392157 - mean) / std; mean [")
    assert rec["method"].startswith("rp: ratio 0.1,") and "keep 0.5" in rec["method"] and "seed 3" in rec["method"]
    assert rec["written by"] == f"pemn {pemn.__version__} (torch {torch.__version__}), format version 1"
    code, stdout, _ = run(["inspect", str(files["train"]), "--json"])
    recorded = json.loads(stdout)["recorded"]
    assert recorded["pemn_version"] == pemn.__version__ and recorded["app"]["model"] == "mlp"
    assert recorded["app"]["preprocessing"]["dataset"] == "digits" and recorded["format_version"] == 1


def test_inspect_of_a_file_saved_without_app_metadata_says_so(files: dict[str, Path]) -> None:
    code, stdout, err = run(["inspect", str(files["python"])])
    assert code == 0, err
    rec = _recorded(stdout)
    assert rec["model"].startswith("not recorded") and "pemn.load(path, model)" in rec["model"]
    assert "dataset" not in rec and rec["written by"].startswith(f"pemn {pemn.__version__}")


def test_inspect_lists_the_tasks_and_other_app_keys(files: dict[str, Path]) -> None:
    code, stdout, err = run(["inspect", str(files["tasks"])])
    assert code == 0, err
    assert _recorded(stdout)["tasks"] == "3: default, digits-even, digits-odd"  # the converted model's own first
    code, stdout, err = run(["inspect", str(files["long"])])
    rec = _recorded(stdout)
    assert rec["model"] == "my-net" and rec["note"].endswith(CUT_MARK) and len(rec["note"]) == 100


def test_long_layer_names_are_cut_with_a_visible_mark(files: dict[str, Path]) -> None:
    code, stdout, err = run(["inspect", str(files["long"])])
    assert code == 0, err
    rows = [line for line in stdout.splitlines() if line.endswith(tuple("0123456789")) and "weight" in line]
    names = [f"1.{LONG}.0.weight", f"1.{LONG}.2.weight"]
    assert all(len(n) > 40 for n in names) and len(rows) == 2
    for name, row in zip(names, rows, strict=True):
        assert row.startswith(CUT_MARK + name[-37:] + " ")  # the end (the most specific part) kept, marked
    header = next(line for line in stdout.splitlines() if line.startswith("layer"))
    assert all(row.index(" 32x64 " if ".0." in row else " 10x32 ") == header.index(" shape ") for row in rows)
    assert fit_name("short.weight", 40) == "short.weight" and len(fit_name("x" * 99, 24)) == 24


def test_sizes_are_printed_one_way_everywhere(files: dict[str, Path], tmp_path: Path) -> None:
    """README "Sizes": the paper ratio as a percentage with two decimals, the honest ratio as a factor with two:
    in pemn inspect, pemn train's log and report, and the summary's one-line repr."""
    summary = pemn.summary(files["train"], verbose=False)
    paper, honest = paper_ratio_text(summary.paper_ratio), honest_ratio_text(summary.honest_ratio)
    assert re.fullmatch(r"paper ratio \d+\.\d\d %", paper) and re.fullmatch(r"honest ratio \d+\.\d\dx", honest)
    code, stdout, _ = run(["inspect", str(files["train"])])
    assert f"{paper}  |  {honest} (dense fp32" in stdout and paper in repr(summary) and honest in repr(summary)
    code, stdout, err = run(["train", "--epochs", "1", "--train-subset", "64", "--no-progress", "--device", "cpu",
                             "--threads", "1", "--ratio", "0.1", "--out", str(tmp_path / "run")])
    assert code == 0, err
    found = re.findall(r"(paper|honest) ratio ([^ ,;)]+(?: %)?)", stdout + err)
    assert sorted({kind for kind, _ in found}) == ["honest", "paper"] and len(found) >= 4, stdout + err
    for kind, value in found:  # the log's "done" line and the report
        assert re.fullmatch(r"\d+\.\d\d %" if kind == "paper" else r"\d+\.\d\dx", value), (kind, value)


# --------------------------------------------------------------------------------------------- the report's functions


@pytest.mark.parametrize(("app", "config", "tasks", "expected"), [
    ({}, {"strategy": "rp", "ratio": 0.1, "fold_norms": False}, [],
     [("model", "not recorded (saved without app metadata: rebuild the model in Python and pemn.load(path, model))"),
      ("method", "rp: ratio 0.1")]),
    ({"kind": "char-lm", "model": "gpt-16-2", "vocab": "ab\n", "block_size": 8}, {"strategy": "mask"}, [],
     [("model", "gpt-16-2, char-lm"), ("vocabulary", '3 characters, context 8: "ab\\n"'), ("method", "mask")]),
    ({"kind": "image-classifier", "model": "lenet5", "model_args": {"num_classes": 10},
      "preprocessing": {"dataset": "mnist", "input_shape": [1, 28, 28], "scale": 1 / 255, "mean": [0.1307],
                        "std": [0.3081], "classes": ["0", "1"], "layout": "NCHW"}, "note": {"a": 1}},
     {"strategy": "one_layer", "keep": 0.5}, [{"name": "permuted-0"}, {"name": "permuted-1"}],
     [("model", "lenet5 (num classes 10), image-classifier"), ("dataset", "mnist"),
      ("preprocessing", 'input 1x28x28; x = (pixels x 0.00392157 - mean) / std; mean [0.1307], std [0.3081]; '
                        '2 classes ["0", "1"]; layout "NCHW"'),
      ("method", "one_layer: keep 0.5"), ("tasks", "2: permuted-0, permuted-1"), ("note", '{"a": 1}')]),
])
def test_recorded_rows(app: dict[str, Any], config: dict[str, Any], tasks: list[dict[str, Any]],
                       expected: list[tuple[str, str]]) -> None:
    """What a .pemn file says about itself, row by row (pemn inspect prints them under "recorded in the file")."""
    from pemn.training.inspect_report import recorded_rows

    recorded = {"app": app, "pemn_version": "9.9", "torch_version": "2.x", "format_version": 4}
    assert recorded_rows(recorded, config, tasks) == [*expected,
                                                      ("written by", "pemn 9.9 (torch 2.x), format version 4")]


def test_plain_file_info_counts_values_and_survivors(tmp_path: Path) -> None:
    """A dense or pruned safetensors file (no masks): its tensors, stored values and, for a pruned file, the
    surviving fraction from its manifest; the JSON of pemn inspect --json and the text of pemn inspect."""
    from safetensors.torch import save_file

    from pemn.training.artifacts import KINDS
    from pemn.training.inspect_report import inspect_lines, plain_file_info

    dense, sparse = tmp_path / "model.safetensors", tmp_path / "model.sparse.safetensors"
    tensors = {"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2), "step": torch.zeros(())}
    save_file(tensors, str(dense), metadata={"format": "pt"})
    manifest = json.dumps([{"name": "fc.weight", "shape": [2, 3], "kept": 3}])
    save_file(tensors, str(sparse), metadata={"format": "pemn-sparse", "manifest": manifest})
    info = plain_file_info(dense, KINDS["dense"])
    assert info == {"path": str(dense), "kind": "dense", "file_bytes": dense.stat().st_size, "tensors": 3,
                    "stored_values": 9, "metadata": {"format": "pt"}}
    info = plain_file_info(sparse, KINDS["sparse"])
    assert (info["kept_weights"], info["prunable_weights"], info["sparsity"]) == (3, 6, 0.5)
    assert "manifest" not in info["metadata"]
    assert json.loads("".join(inspect_lines(sparse, as_json=True))) == info
    lines = inspect_lines(sparse)
    assert lines[1] == "3 tensors, 9 stored values; 3 of 6 prunable weights survive (sparsity 50.00 %)"
    assert lines[2:] == [f"  {'fc.bias':<40} {'2':<20} F32", f"  {'fc.weight':<40} {'2x3':<20} F32",
                         f"  {'step':<40} {'scalar':<20} F32"]


def test_inspect_lines_refuses_a_folder(tmp_path: Path) -> None:
    from pemn.training.errors import OptionError
    from pemn.training.inspect_report import inspect_lines

    with pytest.raises(OptionError, match=r"is a directory; give the artifact file inside it \(e.g. .*model.pemn\)"):
        inspect_lines(tmp_path)
