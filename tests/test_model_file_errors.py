"""Files that are not pemn model files given to ``pemn eval / export / inspect / sample``: a text file, an ONNX
model, a training checkpoint, the user's own model: each one line saying what the file is and what to use."""

from __future__ import annotations

from pathlib import Path

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
