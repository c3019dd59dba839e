"""The transformers round trip (issue 21 item 2): a ``.pemn`` file of a converted transformers model records the
model class and config, so ``pemn.load(path)`` rebuilds it with no code (bit-identical outputs), and ``pemn
inspect / export / eval`` work on it; ``save_pretrained`` on a converted model is refused (it used to write a file
whose masked weights ``from_pretrained`` filled with random values, or raise a shared-tensor error on GPT-2),
and ``pemn.materialize(model).save_pretrained(dir)`` is the dense path. Tiny configs of tests/test_any_model.py,
built from config objects (no downloads)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import pemn
from pemn.artifact import read
from pemn.hf import app_of as hf_app_of

transformers = pytest.importorskip("transformers")
import test_any_model as table  # noqa: E402
from cli_run import run  # noqa: E402
from test_any_model import one_thread  # noqa: E402, F401 (its autouse fixture: one torch thread here too)

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["bert", "gpt2", "llama", "t5"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each model converted, trained two steps and saved once: name -> (model in eval mode, path, batch, logits)."""
    out = {}
    for name in NAMES:
        model = table.build(name, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pemn.convert_(model, table.CONFIG)
        batch = table.inputs(table.MODELS[name][1])
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
        model.train()
        for _ in range(2):
            opt.zero_grad()
            table.forward(model, name, batch).pow(2).mean().backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            expected = table.forward(model, name, batch)
        path = pemn.save(model, tmp_path_factory.mktemp(name) / f"{name}.pemn")
        out[name] = (model, path, batch, expected)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_load_without_a_model_rebuilds_it_bit_identically(name: str, saved: dict) -> None:
    model, path, batch, expected = saved[name]
    app = read(path).app
    assert app["kind"] == "transformers" and app["model"] == type(model).__name__
    assert app["transformers_version"] == transformers.__version__ and app["dtype"] == "float32"
    json.dumps(app)  # JSON all the way down
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    loaded = pemn.load(path)
    assert torch.equal(torch.get_rng_state(), rng)  # rebuilding does not touch the caller's RNG
    assert type(loaded) is type(model) and loaded.config.to_diff_dict() == model.config.to_diff_dict()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(table.forward(loaded, name, batch), expected)
    assert list(pemn.masked_weights(loaded)) == list(pemn.masked_weights(model))
    # a file written with an explicit app keeps that app (and then needs the model to load)
    other = pemn.save(model, path.with_name("own-app.pemn"), app={"note": "mine"})
    assert read(other).app == {"note": "mine"}
    with pytest.raises(pemn.FormatError, match=r"does not record an architecture.*pemn\.load\(path, MyModel"):
        pemn.load(other)


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_refused_and_the_dense_path_works(tmp_path: Path, name: str, saved: dict) -> None:
    model, path, batch, expected = saved[name]
    for converted in (model, pemn.load(path)):
        with pytest.raises(pemn.ConversionError, match=r"save_pretrained.*pemn\.save.*materialize"):
            converted.save_pretrained(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    dense = pemn.materialize(model)
    dense.save_pretrained(tmp_path / "dense")
    back, info = type(model).from_pretrained(tmp_path / "dense", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    back.eval()
    with torch.no_grad():
        assert torch.equal(table.forward(back, name, batch), expected)


@pytest.mark.parametrize("writer", ["save", "save_task"])
def test_a_multi_task_file_records_the_config_and_loads_without_the_model(tmp_path: Path, writer: str) -> None:
    """Two tasks on a tiny BERT, written by ``pemn.save`` (all tasks) or task by task with ``pemn.save_task``: the
    file records the class and config like a single-task file, and ``pemn.load(path)`` (all tasks, or
    ``task=``) rebuilds the model with no code, each task's outputs bit-identical to the trained model's."""
    model = table.build("bert", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pemn.convert_(model, table.CONFIG)
    batch = table.inputs(table.MODELS["bert"][1])
    path = tmp_path / "tasks.pemn"
    for task in ("a", "b"):
        pemn.add_task(model, task, activate=True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
        model.train()
        for _ in range(2):
            opt.zero_grad()
            table.forward(model, "bert", batch).pow(2).mean().backward()
            opt.step()
        model.eval()
        pemn.freeze_masks(model)
        if writer == "save_task":
            pemn.save_task(model, path)
    pemn.delete_task(model, "default")
    expected = {}
    for task in ("a", "b"):
        with pemn.using_task(model, task), torch.no_grad():
            expected[task] = table.forward(model, "bert", batch)
    assert not torch.equal(expected["a"], expected["b"])
    if writer == "save":
        pemn.save(model, path)
    app = read(path).app
    assert app["kind"] == "transformers" and app["model"] == "BertForMaskedLM" and app == hf_app_of(model)
    loaded = pemn.load(path)
    assert type(loaded) is type(model) and pemn.tasks(loaded) == ["a", "b"]
    for task in ("a", "b"):
        pemn.set_task(loaded, task)
        one = pemn.load(path, task=task)
        for m in (loaded, one):
            m.eval()
            with torch.no_grad():
                assert torch.equal(table.forward(m, "bert", batch), expected[task]), task


def test_load_without_a_model_refusals(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = pemn.convert_(torch.nn.Sequential(torch.nn.Linear(8, 8)), pemn.PEMNConfig(ratio=0.5))
    path = pemn.save(plain, tmp_path / "plain.pemn")
    assert read(path).app == {}
    with pytest.raises(pemn.FormatError, match=r"does not record an architecture.*pemn\.load\(path, MyModel"):
        pemn.load(path)
    registry = pemn.save(plain, tmp_path / "registry.pemn", app={"kind": "image-classifier", "model": "lenet5"})
    with pytest.raises(pemn.FormatError, match=r"pemn train model \(lenet5\).*load_model"):
        pemn.load(registry)
    for bad, says in [({"model": "os.system"}, "not a model class"), ({"model": "BertConfig"}, "not a model class"),
                      ({"model": "NoSuchModel"}, "not a model class"), ({"config": []}, "corrupt"),
                      ({"dtype": "int8"}, "dtype"), ({"extra": 1}, "corrupt"),
                      ({"config": {"hidden_size": 10, "num_attention_heads": 3}}, "does not build")]:
        app = {"kind": "transformers", "model": "BertModel", "config": {}, **bad}
        with pytest.raises(pemn.FormatError, match=says):
            pemn.load(pemn.save(plain, tmp_path / "bad.pemn", app=app))


@pytest.mark.slow  # the CLI on a transformers file: builds and reloads models, a few seconds
def test_cli_inspect_export_eval(tmp_path: Path, saved: dict) -> None:
    _, path, batch, expected = saved["gpt2"]
    code, out, _ = run(["inspect", str(path)])
    assert code == 0 and "transformer.h.0.attn.c_attn.weight" in out
    code, out, err = run(["export", str(path), "--format", "pt", "-o", str(tmp_path / "gpt2-dense")])
    assert code == 0, err
    assert "from_pretrained" in out and "GPT2LMHeadModel" in out
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2-dense").eval()
    with torch.no_grad():
        assert torch.equal(table.forward(back, "gpt2", batch), expected)
    code, _, err = run(["export", str(path), "--format", "pt", "-o", str(tmp_path / "gpt2-dense")])  # exists: refused
    assert code == 2 and "exists" in err
    code, _, err = run(["export", str(path), "--format", "onnx"])
    assert code == 2 and "transformers" in err and "materialize" in err
    for command in ("eval", "sample"):
        code, _, err = run([command, str(path)])
        assert code == 2 and "GPT2LMHeadModel" in err and "pemn.load" in err, (command, err)


@pytest.mark.slow  # a subprocess running the example, seconds
def test_example_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "transformers_model.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "bit-identical" in out.stdout and (tmp_path / "bert.pemn").exists()
