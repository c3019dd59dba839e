"""The workload seam (issue 19 item 1): the table of workloads, which one each model and dataset serves, and the
accelerator beside ``Dist`` (precision, DDP wrapping, the optimizer step)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import pemn.training.engine
from conftest import quick_config
from pemn.training.artifacts import IMAGE_APP_KIND, image_app
from pemn.training.data import dataset_info, dataset_serves, list_datasets
from pemn.training.dist import Accelerator, Dist
from pemn.training.models import get_model_spec, list_model_families, list_models
from pemn.training.sample import APP_KIND as CHAR_LM_APP_KIND
from pemn.training.sample import lm_app
from pemn.training.workloads import (
    WORKLOADS,
    CharLM,
    ImageClassification,
    Workload,
    workload_of_app,
    workload_of_dataset,
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


def test_the_training_loop_never_asks_which_workload_it_runs() -> None:
    """Issue 19 item 1: the engine asks the run's workload and holds no branch of its own on the kind of data (a
    new workload is an entry of WORKLOADS, not edits of the loop)."""
    engine = Path(pemn.training.engine.__file__)
    kind_words = {"corpus", "block_size", "text", "vocab", "lm_app", "image_app", "CharLM", "ImageClassification",
                  "IMAGE_APP_KIND", "APP_KIND", "char-lm", "image-classifier", "random_windows", "lm_metrics"}
    assert _code_words(engine) & kind_words == set()
