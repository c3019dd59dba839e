"""The README's promises: its quickstart runs as written, and it matches examples/quickstart.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow  # a subprocess (or ONNX export), seconds
def test_readme_quickstart_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart \(Python\)\s+```python\n(.*?)```", text, re.S)
    assert block, "README has no Python quickstart"
    script = tmp_path / "quickstart.py"
    script.write_text(block.group(1))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "paper ratio" in out.stdout and (tmp_path / "model.pemn").exists()


@pytest.mark.slow  # a subprocess, seconds
def test_example_quickstart_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def _readme_commands() -> list[list[str]]:
    """The ``pemn ...`` command lines of README's bash blocks (continuations joined, comments dropped), as words
    after ``pemn`` (``torchrun ... -m pemn`` included)."""
    import shlex

    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" #")[0], comments=True)
            if "pemn" in words[:1] or words[:1] == ["torchrun"]:
                commands.append(words[words.index("pemn") + 1:])
    return commands


def test_readme_commands_are_valid() -> None:
    """Issue 15: README's commands hold as written: each parses, and each `pemn train` resolves to a valid
    TrainConfig (unknown flags, values or contradictions fail here, not in a user's first minute)."""
    from pemn.cli import _resolve, _train_overrides, build_parser

    commands = _readme_commands()
    assert sum(c[0] == "train" for c in commands) >= 5 and any(c[0] == "sweep" for c in commands)
    parser = build_parser()
    for words in commands:
        try:
            args = parser.parse_args(words)
        except SystemExit as e:
            raise AssertionError(f"README command does not parse: pemn {' '.join(words)}") from e
        if words[0] == "train":
            cfg = _resolve(_train_overrides(args), recipe=args.recipe, config_file=args.config)
            assert cfg.model == vars(args).get("model", cfg.model) and cfg.dataset == vars(args).get("dataset",
                                                                                                     cfg.dataset)



def test_readme_layout_names_every_module() -> None:
    """README's layout section matches the tree: every module of the core, the application and its data/ package
    is named there (a module added without a line in the layout fails here), and every module its table names for
    the application is in src/pemn/training/ (none that is gone)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout: the library and the application"):]
    section = section[:section.index("\n## ", 3)]
    named = {Path(w).stem for w in re.findall(r"`([\w./]+)`", section)}
    src = ROOT / "src" / "pemn"
    modules = {p.stem for folder in (src, src / "training", src / "training" / "data") for p in folder.glob("*.py")
               if p.stem != "__init__"}
    assert modules - named == set(), "modules missing from README's layout section"
    table = {w for row in re.findall(r"^\| (.+?) \|", section, re.M) for w in re.findall(r"`([a-z_]+)/?`", row)}
    training = src / "training"
    gone = {w for w in table if not (training / f"{w}.py").is_file() and not (training / w).is_dir()}
    assert table and not gone, f"README's layout table names modules that are not in the tree: {sorted(gone)}"
