"""The declared training options (pemn.training.config): the ``pemn train`` flags generated from them keep every
flag, default, type and help group of the hand-checked set in tests/data/train_flags.json, and docs/options.md is
their generated table.

After adding or changing an option on purpose, rewrite both with
``PEMN_UPDATE_OPTIONS=1 python -m pytest tests/test_train_options.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from pemn.training.cli import build_parser
from pemn.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
FLAGS_FILE = Path(__file__).resolve().parent / "data" / "train_flags.json"
UPDATE = os.environ.get("PEMN_UPDATE_OPTIONS") == "1"


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _flag_rows(parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    """Every option of ``parser`` but --help: its flags, dest, default, type, nargs, metavar, choices, action and
    the help group it is listed under."""
    group_of = {id(a): g.title for g in parser._action_groups for a in g._group_actions}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    rows = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        rows.append({"flags": list(a.option_strings), "dest": a.dest, "default": a.default,
                     "type": getattr(a.type, "__name__", None), "nargs": a.nargs, "metavar": a.metavar,
                     "choices": None if a.choices is None else list(a.choices), "action": type(a).__name__,
                     "group": group_of[id(a)], "help": a.help,
                     "config_default": fields[a.dest].default if a.dest in fields else None})
    return rows


def test_train_flags_are_the_declared_set() -> None:
    rows = _flag_rows(_subparser("train"))
    if UPDATE:
        FLAGS_FILE.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    assert rows == json.loads(FLAGS_FILE.read_text()), "rerun with PEMN_UPDATE_OPTIONS=1 if the change is meant"
