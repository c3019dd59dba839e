"""The README's promises: its quickstart is examples/quickstart.py, runs without a warning and gives the figures
README states."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_readme_quickstart_is_the_example() -> None:
    """README's quickstart is examples/quickstart.py after its docstring, so running one runs both."""
    block = re.search(r"## Quickstart \(Python\)\s+```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None, "README has no Python quickstart"
    example = (ROOT / "examples" / "quickstart.py").read_text()
    assert example.split('"""', 2)[2].lstrip("\n") == block.group(1)


@pytest.mark.slow  # a subprocess, seconds
def test_quickstart_warns_nothing_and_gives_the_figures_readme_states(tmp_path: Path) -> None:
    """Issue 21 item 10: the headline example runs with every warning an error (the library's tiny-prototype
    warning among them); the file's bytes and ratios are the ones README states, and the held-out accuracy is that
    of a model that learned."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-W", "error", str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    readme = " ".join((ROOT / "README.md").read_text().split())
    claim = re.search(r"held-out accuracy of ([\d.]+) % and the summary: a \*\*([\d,]+)-byte file, honest ratio "
                      r"([\d.]+)×\*\* \(dense fp32 ([\d,]+) B; paper ratio ([\d.]+ %)\)", readme)
    assert claim is not None, "README does not state the quickstart's figures"
    acc, file_bytes, honest, dense, paper = claim.groups()
    assert (tmp_path / "model.pemn").stat().st_size == int(file_bytes.replace(",", ""))
    assert f"file {file_bytes} B" in done.stdout and f"paper ratio {paper}" in done.stdout, done.stdout
    assert f"honest ratio {honest}x (dense fp32 {dense} B" in done.stdout and float(honest) > 20, done.stdout
    got = re.search(r"held-out accuracy ([\d.]+)%", done.stdout)
    assert got is not None and float(got.group(1)) > 90 and abs(float(got.group(1)) - float(acc)) < 1.5, done.stdout


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
    from pemn.training.cli import _resolve, _train_overrides, build_parser

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
