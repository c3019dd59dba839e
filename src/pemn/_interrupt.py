"""The ``pemn`` command's hook for a Ctrl-C that escapes it: while Python is still importing torch (before
:func:`pemn.training.cli.main` runs, which handles interrupts itself) it is one line, not a traceback through the
import machinery. Installed by ``pemn/__init__`` first, and only when this process is the command."""

from __future__ import annotations

import itertools
import os
import sys
from types import TracebackType


def started_as_command() -> bool:
    """Whether this process is the ``pemn`` command (its console script, ``python -m pemn``, torchrun's workers)."""
    argv = getattr(sys, "orig_argv", None) or []
    return os.path.basename(sys.argv[0] if sys.argv else "") == "pemn" or any(
        pair == ("-m", "pemn") for pair in itertools.pairwise(argv))


_previous = sys.excepthook


def one_line_interrupt(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook`` of the command: ``pemn: interrupted`` for KeyboardInterrupt, the usual report else."""
    if issubclass(kind, KeyboardInterrupt) and os.environ.get("RANK", "0") == "0":
        sys.stderr.write("pemn: interrupted\n")
    elif not issubclass(kind, KeyboardInterrupt):
        _previous(kind, value, tb)


if started_as_command():
    sys.excepthook = one_line_interrupt
