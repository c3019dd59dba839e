"""The command line as a user meets it before anything runs: help that matches the tool, short usage errors that
name the closest option, one exit code per kind of error (the README's table), ``pemn --version`` without torch."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import run
from pemn.training.cli import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent


def _flag_help(help_text: str, flag: str) -> str:
    """The help paragraph of ``flag`` in argparse's output, joined into one line."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " ") or line.strip() == flag
                 or line.strip().startswith(flag + ","))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 10) or line.strip().startswith("--"):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


# --------------------------------------------------------------------------------------------- help


@pytest.fixture(scope="module")
def train_help() -> str:
    code, stdout, _ = run(["train", "--help"])
    assert code == 0
    return stdout


def test_train_help_says_the_real_defaults(train_help: str) -> None:
    from pemn.registry import type_names
    from pemn.training.config import TrainConfig
    from pemn.training.evaluation import DEFAULT_EVAL_BATCH

    targets = _flag_help(train_help, "--targets")
    assert "Embedding" in targets and "every type in pemn's layer table" in targets  # embeddings are masked
    assert all(name in targets for name in type_names())
    eval_batch = _flag_help(train_help, "--eval-batch-size")
    assert f"(default: {DEFAULT_EVAL_BATCH})" in eval_batch and "a few hundred" not in eval_batch
    variance = _flag_help(train_help, "--variance")
    assert f"(default: {TrainConfig().variance})" in variance
    assert "fan-in-keep with no norm layers" in variance and "paper with BatchNorm" in variance
    amp = _flag_help(train_help, "--amp")
    assert amp.count("default") == 1  # said once, by the field's own help


def test_train_help_is_in_sections_covering_every_option(train_help: str) -> None:
    """Every option sits under one section title (argparse groups), in field order; none under the bare
    'options:' heading but --help itself; the usage line is one line, not 30."""
    from pemn.training.config import FIELD_SECTIONS, TrainConfig, field_sections

    sections = field_sections()
    assert [title for title, _ in sections] == [title for title, _ in FIELD_SECTIONS]
    listed = [name for _, names in sections for name in names]
    assert listed == [f.name for f in dataclasses.fields(TrainConfig)]
    headings = [line[:-1] for line in train_help.splitlines() if line and not line.startswith(" ")
                and line.endswith(":")]
    assert headings[:len(sections) + 1] == ["options", *[title for title, _ in FIELD_SECTIONS]]
    assert all(title.startswith("many tasks") for title in headings[len(sections) + 1:])  # flags of no field
    blocks = re.split(r"^\S.*:$", train_help, flags=re.M)
    assert re.findall(r"^  (-\S+)", blocks[1], flags=re.M) == ["-h,"]  # "options:": only --help
    for (_, names), block in zip(sections, blocks[2:len(sections) + 2], strict=True):
        flags = re.findall(r"^  (--[\w-]+)", block, flags=re.M)
        assert [f for f in flags if f not in ("--recipe", "--config")] == [
            "--" + n.replace("_", "-") for n in names if n != "recipe"]
    assert train_help.splitlines()[0].startswith("usage: pemn train [--recipe NAME]")
    assert not train_help.splitlines()[1].startswith(" ")


# --------------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(("argv", "said"), [
    (["train", "--epoch", "3"], "unrecognized arguments: --epoch 3; did you mean --epochs?"),
    (["train", "--epoch", "3", "--lrr", "1"], "did you mean --epochs for --epoch, --lr for --lrr?"),
    (["eval", "model.pemn", "--batchsize", "8"], "did you mean --batch-size?"),
    (["trian"], "invalid choice: 'trian'"),
    (["train", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    (["train", "--xyzzy"], "unrecognized arguments: --xyzzy"),
])
def test_usage_errors_are_one_short_line(argv: list[str], said: str) -> None:
    code, stdout, err = run(argv)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err, err
    assert said in err and "--help" in err
    if argv[0] == "trian":
        assert "did you mean 'train'?" in err
    if argv[-1] == "--xyzzy":
        assert "did you mean" not in err  # nothing close: no guess


# --------------------------------------------------------------------------------------------- exit codes


def _raising(error: BaseException):
    def train(cfg: object) -> None:
        raise error
    return train


def _exit_cases(tmp_path: Path) -> dict[str, tuple[list[str], object]]:
    """kind -> (argv, an error pemn train raises instead of training, or None to run the command as it is)."""
    from pemn.training.engine import NonFiniteLossError, RunWriteError
    from pemn.training.runlock import RunBusyError
    from pemn.training.text import VocabularyError

    junk = tmp_path / "junk.pemn"
    junk.write_text("not a model")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "empty").mkdir()
    quick = ["train", "--no-progress", "--threads", "1"]
    return {
        "diverged": (quick, NonFiniteLossError("the training loss became nan")),
        "unknown option": (["train", "--epoch", "1"], None),
        "unknown model": (["train", "--model", "no-such-model"], None),
        "corrupt model file": (["inspect", str(junk)], None),
        "missing dataset": ([*quick, "--dataset", "mnist", "--data-dir", str(tmp_path / "empty"),
                             "--out", str(tmp_path / "r")], None),
        "prompt outside the vocabulary": (quick, VocabularyError("'é' is not in the model's vocabulary")),
        "missing file": (["inspect", str(tmp_path / "missing.pemn")], None),
        "unwritable run folder": (quick, RunWriteError("cannot write into the run folder", 28)),
        "out is a file": ([*quick, "--out", str(a_file)], None),
        "run folder busy": (quick, RunBusyError("another pemn train is writing into it")),
    }


EXPECTED_CODES = {"diverged": 1, "unknown option": 2, "unknown model": 2, "corrupt model file": 3,
                  "missing dataset": 4, "prompt outside the vocabulary": 4, "missing file": 5,
                  "unwritable run folder": 5, "out is a file": 6, "run folder busy": 6}


@pytest.mark.parametrize("kind", list(EXPECTED_CODES))
def test_one_exit_code_per_kind_of_error(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pemn.training import engine

    argv, error = _exit_cases(tmp_path)[kind]
    if error is not None:
        monkeypatch.setattr(engine, "train", _raising(error))
    code, _, err = run(argv)
    assert code == EXPECTED_CODES[kind], err
    assert err.startswith(("pemn: error: ", "pemn train: error: ")) and len(err.strip().splitlines()) == 1, err
    assert any(c == code for c, _, _ in EXIT_CODES)


def test_readme_documents_the_exit_codes() -> None:
    """The README's table is EXIT_CODES, row by row (and the signal / pipe codes under it)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Exit codes"):]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, flags=re.M)
    assert [(int(c), kind) for c, kind in rows[:len(EXIT_CODES)]] == [(c, kind) for c, kind, _ in EXIT_CODES]
    assert "128 + N" in section and "141" in section


# --------------------------------------------------------------------------------------------- --version


@pytest.mark.slow  # two subprocesses
def test_version_answers_without_importing_torch() -> None:
    from pemn import __version__

    code = ("import sys; from pemn.training.cli import main; assert main(['--version']) == 0; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'safetensors') or "
            "m.startswith('pemn.training.') and m not in ('pemn.training.cli', 'pemn.training.progress', "
            "'pemn.training.errors')]; "
            "print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"pemn {__version__}", "[]"]
    # the command itself: -X importtime lists every module the interpreter imported
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pemn", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == f"pemn {__version__}\n", proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "pemn.training.cli" in imported and not {m for m in imported if m.split(".")[0] in ("torch", "numpy")}


def test_the_library_names_resolve_lazily() -> None:
    """``import pemn`` imports its public names on first use: each is its module's own object, and every name
    of ``__all__`` resolves (the TYPE_CHECKING imports and the lazy table agree)."""
    import importlib

    import pemn

    for name in pemn.__all__:
        value = getattr(pemn, name)
        if name != "__version__":
            assert value is getattr(importlib.import_module(pemn._EXPORTS[name]), name)
    assert set(pemn._EXPORTS) | {"__version__"} == set(pemn.__all__)
    source = (ROOT / "src" / "pemn" / "__init__.py").read_text()
    typed = source[source.index("if TYPE_CHECKING:"):source.index("__all__ = [")]
    assert all(re.search(rf"\b{name}\b", typed) for name in pemn._EXPORTS)
    assert pemn.masking.topk_mask is importlib.import_module("pemn.masking").topk_mask  # submodules too
    importlib.import_module("pemn.summary")  # a submodule named like a function leaves the name to the function
    assert callable(pemn.summary) and pemn.summary is importlib.import_module("pemn.summary").summary
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = pemn.nope


def test_help_names_the_real_default_model() -> None:
    from pemn.training.config import TrainConfig

    code, stdout, _ = run(["--help"])
    assert code == 0
    assert f"default: {TrainConfig().model} on {TrainConfig().dataset}" in stdout and "tiny-cnn" not in stdout


def test_options_are_not_abbreviated() -> None:
    code, _, err = run(["train", "--epoch", "1"])
    assert code == 2 and "unrecognized arguments: --epoch 1" in err


def test_models_lists_sized_families_and_refuses_an_empty_match() -> None:
    code, stdout, _ = run(["models", "convmixer*"])
    assert code == 0 and "convmixer-<dim>-<depth>" in stdout.splitlines()[-1]
    code, stdout, err = run(["models", "x*"])
    assert code == 2 and stdout == "" and "no model name matches 'x*'" in err


# --------------------------------------------------------------------------------------------- a thin command line

CLI = ROOT / "src" / "pemn" / "training" / "cli.py"
#: what the command line may import at its top: the standard library and these torch-free modules
TOP_IMPORTS = {"pemn._version", "pemn.errors", "pemn.training.progress", "pemn.training.errors"}
#: libraries of the work itself: the command line never imports them (it calls the application's functions)
WORK_LIBRARIES = {"torch", "numpy", "safetensors", "onnx", "onnxruntime", "transformers", "PIL", "matplotlib"}
#: the most lines a command function, or a helper beside them, may have (parse, call, print, exit code)
COMMAND_LINES, HELPER_LINES = 25, 20


def _imported_modules(node: ast.AST) -> set[str]:
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module:
            found.add(n.module)
    return found


def test_the_cli_is_argument_parsing_that_calls_named_functions() -> None:
    """Issue 19 item 4: pemn.training.cli holds no application logic. It imports no library of the work (torch,
    safetensors...) anywhere and only torch-free modules at its top; each ``_cmd_<command>`` is short and calls a
    function of the application (imported from pemn.training inside it) whose result it prints; a helper beside them
    is short glue; only the parser builders and main may be long."""
    tree = ast.parse(CLI.read_text())
    top = {m for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom) for m in _imported_modules(n)}
    assert {m for m in top if m.split(".")[0] == "pemn"} <= TOP_IMPORTS
    assert {m.split(".")[0] for m in top if m.split(".")[0] != "pemn"} <= set(sys.stdlib_module_names)
    assert {m.split(".")[0] for m in _imported_modules(tree)} & WORK_LIBRARIES == set()
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    commands = {name: f for name, f in functions.items() if name.startswith("_cmd_")}
    assert set(commands) >= {"_cmd_train", "_cmd_eval", "_cmd_sample", "_cmd_inspect", "_cmd_export",
                             "_cmd_quantize", "_cmd_models", "_cmd_datasets", "_cmd_sweep"}
    for name, f in functions.items():
        lines = f.end_lineno - f.lineno + 1
        if name in commands:
            assert lines <= COMMAND_LINES, f"{name} has {lines} lines: move its work into the application"
            local = {a.asname or a.name for n in ast.walk(f) if isinstance(n, ast.ImportFrom)
                     and (n.module or "").startswith("pemn.training.") for a in n.names}
            called = {n.func.id for n in ast.walk(f) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            assert local & called, f"{name} calls no function of the application"
        elif name not in ("build_parser", "main") and not name.startswith("_add_"):
            assert lines <= HELPER_LINES, f"{name} has {lines} lines: the command line holds no work of its own"
