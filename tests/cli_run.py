"""Run the ``pemn`` command line in this process and capture what it prints (shared by the CLI tests)."""

from __future__ import annotations

import contextlib
import io

from pemn.training.cli import main


def run(argv: list[str]) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``pemn ARGV``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()
