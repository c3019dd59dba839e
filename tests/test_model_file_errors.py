"""Files that are not pemn model files given to ``pemn eval / export / inspect / sample``: a text file, an ONNX
model, a training checkpoint, the user's own model: each one line saying what the file is and what to use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cli_run import run
from conftest import quick_cli_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_eval_and_inspect_say_first_that_a_file_is_no_artifact(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n" * 4)
    code, _, err = run(["eval", str(text)])
    assert code == 3 and "not a pemn artifact: this looks like a text file" in err and "--model" not in err
    fake_onnx = tmp_path / "m.onnx"  # an ONNX protobuf starts with field 1 (ir_version) and names its producer
    fake_onnx.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.13.0" + bytes(range(256)) * 8)
    code, _, err = run(["inspect", str(fake_onnx)])
    assert code == 3 and "looks like an ONNX model" in err and "header length" not in err, err


@pytest.mark.parametrize("command", ["eval", "export", "inspect", "sample"])
def test_a_checkpoint_is_named_with_the_model_file_to_use(tmp_path: Path, command: str) -> None:
    out = quick_cli_run(tmp_path)
    checkpoint = out / "checkpoint.safetensors"
    argv = [command, str(checkpoint)] + (["--format", "pt"] if command == "export" else [])
    code, stdout, err = run(argv)
    assert code == 3 and stdout == "", stdout  # a file that is not a usable model file
    assert err == (f"pemn: error: {checkpoint} is a training checkpoint (what pemn train --resume continues from), "
                   f"not a model file: use {out / 'model.pemn'}\n")
    # a run that has not finished yet has no model file: the message says how to finish it
    (out / "model.pemn").unlink()
    code, _, err = run(argv)
    assert code == 3 and len(err.strip().splitlines()) == 1
    assert err.strip().endswith(f"the run has not written it yet: finish it with pemn train --resume --out {out}")


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_file_of_the_users_own_model_says_how_to_load_it_in_python(tmp_path: Path, command: str) -> None:
    import pemn
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    pemn.convert_(model, pemn.PEMNConfig(strategy="mask"))
    path = tmp_path / "mine.pemn"
    pemn.save(model, path)
    code, stdout, err = run([command, str(path)] + (["--format", "pt"] if command == "export" else []))
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"pemn.load({str(path)!r}, model)" in lines[0], err
    assert "records no registry model" in lines[0] and not lines[0].startswith("pemn: error: give --model")


# ------------------------------------------------------------------------------------- the application's refusals


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model file of a quick image run and of a quick text run."""
    from conftest import quick_text_config
    from pemn.training.engine import train

    root = tmp_path_factory.mktemp("files")
    train(quick_text_config(root, out="lm"), log=lambda _: None)
    return {"image": quick_cli_run(root) / "model.pemn", "lm": root / "lm" / "model.pemn"}


def _export(path: Path, **options: object) -> None:
    from pemn.training.export import export_model_file

    export_model_file(path, **{"fmt": "pt", "log": lambda _: None, **options})


def _sample(path: Path, **options: object) -> None:
    from pemn.training.sample import sample_file

    sample_file(str(path), **{"prompt": "F", "tokens": 3, **options})


@pytest.mark.parametrize(("call", "file", "options", "message"), [
    (_export, "lm", {}, "holds a language model; pemn export writes image classifiers"),
    (_export, "image", {"output": "x.onnx"}, r"--format pt writes a \.safetensors file .* not 'x.onnx'"),
    (_export, "image", {"fmt": "onnx", "output": "x.safetensors"}, r"name the output \*\.onnx"),
    (_export, "image", {"model": "lenet5"}, "lenet5"),  # a model that contradicts the file
    (_sample, "lm", {"tokens": -1}, "--tokens must be >= 0, got -1"),
    (_sample, "lm", {"temperature": float("nan")}, r"--temperature must be >= 0 \(0: greedy\), got nan"),
    (_sample, "lm", {"top_k": 0}, "--top-k must be >= 1, got 0"),
    (_sample, "lm", {"prompt": ""}, "--prompt must hold at least one character"),
    (_sample, "lm", {"device": "tpu"}, "--device: "),
])
def test_what_the_commands_functions_refuse_is_an_option_error(model_files: dict[str, Path], call: Any, file: str,
                                                               options: dict[str, object], message: str) -> None:
    """pemn export's and pemn sample's application functions refuse a request they cannot run with OptionError
    (the command line's exit code 2), before writing anything."""
    from pemn.training.errors import OptionError

    path = model_files[file]
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(OptionError, match=message):
        call(path, **{k: (str(path.parent / v) if k == "output" else v) for k, v in options.items()})
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_export_and_sample_return_what_they_wrote(model_files: dict[str, Path]) -> None:
    from pemn.training.export import export_model_file
    from pemn.training.sample import sample_file

    lines: list[str] = []
    out = export_model_file(model_files["image"], fmt="pt", log=lines.append)
    assert out == model_files["image"].with_name("model.dense.safetensors") and out.is_file()
    assert lines[0].startswith(f"wrote {out} (") and lines[1].startswith("check: reloaded into a fresh tiny-mlp")
    record = sample_file(str(model_files["lm"]), "F", tokens=5, temperature=0)
    assert record["text"].startswith("F") and len(record["text"]) == 6 and record["model"] == "gpt-16-2"
    assert record == {**record, "prompt": "F", "tokens": 5, "temperature": 0, "top_k": None, "seed": 0}
