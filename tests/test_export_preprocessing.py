"""Exported dense models carry their exact input preprocessing (the .pt sidecar, ONNX metadata_props), equal
to the evaluation transform of every dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cli_run import run
from conftest import QUICK_ARGV

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("first_use") / "run"
    code, _, err = run(["train", *QUICK_ARGV, "--out", str(out)])
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
