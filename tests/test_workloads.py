"""The workload seam (issue 19 item 1): the table of workloads, which one each model and dataset serves, and the
accelerator beside ``Dist`` (precision, DDP wrapping, the optimizer step)."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import pemn.training.engine
from conftest import quick_config, quick_text_config
from pemn.training.artifacts import IMAGE_APP_KIND, image_app
from pemn.training.config import TrainConfig
from pemn.training.data import dataset_info, dataset_serves, list_datasets
from pemn.training.dist import Accelerator, Dist
from pemn.training.engine import train
from pemn.training.errors import OptionError
from pemn.training.evaluation import EvalRequest
from pemn.training.measure import evaluate_model_file
from pemn.training.models import get_model_spec, list_model_families, list_models
from pemn.training.outputs import TrainResult, report_lines
from pemn.training.sample import APP_KIND as CHAR_LM_APP_KIND
from pemn.training.sample import lm_app
from pemn.training.workloads import (
    RESULT_KEYS,
    WORKLOADS,
    CharLM,
    ImageClassification,
    Workload,
    workload_of_app,
    workload_of_dataset,
    workload_of_file,
)


def test_the_table_is_keyed_by_the_app_kind_its_files_record() -> None:
    assert {IMAGE_APP_KIND: ImageClassification, CHAR_LM_APP_KIND: CharLM} == WORKLOADS
    assert all(key == w.app_kind and issubclass(w, Workload) for key, w in WORKLOADS.items())
    assert workload_of_app(lm_app("gpt-16-2", "ab", 8)) is CharLM
    assert workload_of_app(image_app("lenet5", dataset_info("digits"))) is ImageClassification
    assert workload_of_app({"kind": "transformers", "model": "BertModel"}) is None
    assert workload_of_app(None) is None


@pytest.mark.parametrize("name", list_models() + list_model_families())
def test_every_model_serves_a_workload_of_the_table(name: str) -> None:
    spec = get_model_spec(re.sub(r"<\w+>", "8", name))  # a family at size 8
    assert spec.serves in WORKLOADS
    assert (spec.serves == CHAR_LM_APP_KIND) == name.startswith("gpt-")


@pytest.mark.parametrize("name", list_datasets())
def test_every_dataset_serves_a_workload_of_the_table(name: str) -> None:
    assert dataset_serves(name) in WORKLOADS
    assert (workload_of_dataset(name) is CharLM) == (name == "text")


def test_dataset_spellings_and_unknown_names() -> None:
    assert workload_of_dataset("TEXT") is CharLM and workload_of_dataset("cifar-10") is ImageClassification
    assert dataset_serves("no-such-data") is None
    assert workload_of_dataset("no-such-data") is ImageClassification  # its loader then names the valid ones


@pytest.mark.parametrize(("dataset", "model", "message"), [
    ("text", "lenet5", "dataset 'text' trains a language model"),
    ("digits", "gpt-16-2", "'gpt-16-2' is a language model"),
])
def test_config_refuses_a_model_of_another_workload(dataset: str, model: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quick_config(dataset=dataset, model=model)


def test_config_refuses_a_teacher_for_a_language_model(tmp_path: Path) -> None:
    """Distillation is an image classifier's (the teacher is rebuilt for the images' shape): a language model's run
    with a teacher is one clear error before anything is loaded, not a state_dict mismatch of a rebuilt GPT."""
    (tmp_path / "input.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    with pytest.raises(ValueError, match="teacher: distillation applies to image classifiers"):
        quick_config(text_dir=tmp_path, strategy="rp", ratio=0.1, teacher=str(tmp_path / "dense.safetensors"))


# --------------------------------------------------------------------------------------------- accelerator


def _cpu_dist() -> Dist:
    group = Dist()
    group.setup("cpu")
    return group


def test_accelerator_on_a_cpu_is_float32_and_says_why_amp_is_off() -> None:
    lines: list[str] = []
    accel = Accelerator(_cpu_dist(), True, lines.append)
    assert not accel.amp and accel.scaler is None
    assert lines == ["note: amp needs CUDA; training in float32 on cpu"]
    assert Accelerator(_cpu_dist(), None).amp is False  # auto: CUDA only


def test_accelerator_leaves_a_model_unwrapped_outside_torchrun() -> None:
    model = nn.Linear(3, 2)
    assert Accelerator(_cpu_dist(), False).wrap(model) is model


@pytest.mark.parametrize("clip_norm", [None, 0.01])
def test_accelerator_step_is_backward_clip_step(clip_norm: float | None) -> None:
    """The step equals the plain loop it replaced: backward, ``clip_grad_norm_`` when asked, ``optimizer.step``."""
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 4)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.5), torch.optim.SGD(b.parameters(), lr=0.5)
    Accelerator(_cpu_dist(), False).step(a(x).square().mean(), opt_a, list(a.parameters()), clip_norm)
    b(x).square().mean().backward()
    if clip_norm is not None:
        total = nn.utils.clip_grad_norm_(b.parameters(), clip_norm)
        assert total > clip_norm  # the clip bites
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def _code_words(path: Path) -> set[str]:
    """The names, attributes and string constants of a module's code (docstrings and comments left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    words: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.alias):
            words.add(node.asname or node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.update(re.findall(r"[A-Za-z_-]+", node.value))
    return words


KIND_WORDS = {"corpus", "block_size", "text", "vocab", "lm_app", "image_app", "CharLM", "ImageClassification",
              "IMAGE_APP_KIND", "APP_KIND", "char-lm", "image-classifier", "random_windows", "lm_metrics", "val_loss",
              "bits_per_char", "artifact_val_loss"}


@pytest.mark.parametrize("module", ["engine", "outputs", "measure", "ptq_file"])
def test_the_training_loop_never_asks_which_workload_it_runs(module: str) -> None:
    """Issue 19 item 1: the engine, the run's outputs (TrainResult, the closing report), pemn eval and pemn quantize
    of a file ask the run's (or the file's) workload and hold no branch of their own on the kind of data (a new
    workload is an entry of WORKLOADS, not edits of the loop or the commands)."""
    path = Path(pemn.training.engine.__file__).with_name(f"{module}.py")
    assert _code_words(path) & KIND_WORDS == set()


# --------------------------------------------------------------------------------------------- results and reports

#: result.json's keys before the workloads carried their own metrics (issue 19): kept, in this order, for every run
RESULT_JSON_KEYS = ["out_dir", "artifact", "artifact_bytes", "best_acc", "best_epoch", "final_acc", "epochs_run",
                    "seconds", "summary", "weights", "weights_bytes", "sparse_bytes", "artifact_acc", "teacher_acc",
                    "world_size", "rank", "state_sha256", "val_loss", "bits_per_char", "artifact_val_loss",
                    "steps_run", "note"]


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainResult]:
    """One quick image run and one quick text run, trained once for the tests below."""
    root = tmp_path_factory.mktemp("runs")
    return {"image": train(quick_config(out=root / "image", epochs=1, train_subset=200, eval_subset=100),
                           log=lambda _: None),
            "text": train(quick_text_config(root, out="text"), log=lambda _: None)}


def test_the_result_carries_the_workloads_metrics_and_result_json_keeps_its_keys(
        finished_runs: dict[str, TrainResult]) -> None:
    """TrainResult declares no workload's fields: a language model's val_loss etc. are its workload's metrics
    (still attributes, and still result.json's keys in their old place, null for an image run)."""
    assert {f.name for f in dataclasses.fields(TrainResult)} & set(CharLM.result_keys) == set()
    assert CharLM.result_keys == RESULT_KEYS and ImageClassification.result_keys == ()
    for kind, result in finished_runs.items():
        saved = json.loads((result.out_dir / "result.json").read_text())
        assert list(saved) == RESULT_JSON_KEYS, kind
        assert list(result.metrics) == list(RESULT_KEYS)
        for key in RESULT_KEYS:
            assert saved[key] == result.metrics[key] == getattr(result, key)
    image, text = finished_runs["image"], finished_runs["text"]
    assert image.val_loss is None and image.metrics == dict.fromkeys(RESULT_KEYS)
    assert text.val_loss is not None and text.artifact_val_loss == text.val_loss
    assert math.isclose(text.bits_per_char, text.val_loss / math.log(2))
    with pytest.raises(AttributeError, match="no attribute or metric 'val_los'"):
        _ = text.val_los


def test_the_closing_report_takes_its_measured_lines_from_the_workload(
        finished_runs: dict[str, TrainResult]) -> None:
    for kind, workload in (("image", ImageClassification), ("text", CharLM)):
        result = finished_runs[kind]
        cfg = TrainConfig.from_dict(json.loads((result.out_dir / "config.json").read_text()))
        lines = report_lines(cfg, result)
        own = workload.report_lines(cfg, result)
        assert own and all(line in lines for line in own)
        assert lines.index(own[0]) == 4  # after the blank line, what was trained, the artifact and the folder
    text = finished_runs["text"]
    assert CharLM.report_lines(TrainConfig.from_dict(json.loads((text.out_dir / "config.json").read_text())),
                               text)[0].startswith(f"  val loss   {text.val_loss:.4f} nats/char")


# --------------------------------------------------------------------------------------------- pemn eval of a file


@pytest.mark.parametrize(("app", "dataset", "expected"), [
    ({"kind": "image-classifier", "model": "lenet5"}, None, ImageClassification),
    ({"kind": "char-lm", "model": "gpt-16-2"}, "mnist", CharLM),  # the file's kind wins over the data named
    ({"kind": "transformers", "model": "BertModel"}, None, None),  # no workload measures it
    ({"model": "lenet5"}, None, ImageClassification),  # app metadata without a kind: an image classifier's
    (None, "TEXT", CharLM),  # no app metadata: the dataset named says
    (None, None, ImageClassification),
])
def test_the_workload_that_measures_a_file(app: dict[str, Any] | None, dataset: str | None,
                                           expected: type[Workload] | None) -> None:
    assert workload_of_file(app, dataset) is expected


def test_evaluate_model_file_asks_the_files_workload(finished_runs: dict[str, TrainResult]) -> None:
    """pemn eval's application function: the image file's top-1 test accuracy and the text file's validation loss
    equal what training measured on the saved file; lines and a JSON record come back, nothing is printed."""
    from pemn.training.artifacts import file_kind_and_app

    image, text = finished_runs["image"], finished_runs["text"]
    path = str(image.artifact)
    kind, app = file_kind_and_app(path)
    report = evaluate_model_file(EvalRequest(path, kind, app, eval_subset=100, device="cpu", log=lambda _: None))
    assert report.record == {"artifact": path, "kind": "pemn", "model": "tiny-mlp", "dataset": "digits",
                             "split": "test", "examples": 100, "accuracy": image.artifact_acc}
    assert report.lines == [f"{path}: test accuracy {image.artifact_acc:.2f} % (top-1, 100 digits test images, "
                            "tiny-mlp, pemn weights)"]
    path = str(text.artifact)
    kind, app = file_kind_and_app(path)
    report = evaluate_model_file(EvalRequest(path, kind, app, device="cpu"))
    assert report.record["val_loss"] == text.val_loss and report.record["split"] == "validation"
    assert report.lines[0].startswith(f"{path}: validation loss {text.val_loss:.4f} nats/char")
    with pytest.raises(OptionError, match="--device: "):
        evaluate_model_file(EvalRequest(path, kind, app, device="tpu"))
    with pytest.raises(OptionError, match="holds a transformers BertModel; pemn eval measures"):
        evaluate_model_file(EvalRequest(path, kind, {"kind": "transformers", "model": "BertModel"}))
