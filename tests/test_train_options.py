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
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from pemn import PEMNConfig
from pemn.config import pemn_option
from pemn.options import Bounds, option_bounds, option_choices, option_help
from pemn.training.cli import build_parser
from pemn.training.config import AUTO_PEMN_FIELDS, PEMN_CONFIG_FIELDS, TrainConfig, field_type, resolve_config

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


def test_options_doc_is_current() -> None:
    from pemn.training.flags import options_markdown

    doc = ROOT / "docs" / "options.md"
    if UPDATE:
        doc.write_text(options_markdown())
    assert doc.read_text() == options_markdown(), "run: python -m pemn.training.flags docs/options.md"


def _outside(bounds: Bounds, kind: type) -> list[Any]:
    """Values just outside ``bounds`` (and, for a float, the non-finite ones)."""
    step = 1 if kind is int else 0.5
    bad: list[Any] = [float("nan"), float("inf")] if kind is float else []
    if math.isfinite(bounds.low):
        bad.append(kind(bounds.low) if bounds.low_open else kind(bounds.low - step))
    if math.isfinite(bounds.high):
        bad.append(kind(bounds.high) if bounds.high_open else kind(bounds.high + step))
    return bad


_OWN = [f for f in dataclasses.fields(TrainConfig) if f.name not in PEMN_CONFIG_FIELDS or f.name in AUTO_PEMN_FIELDS]
_BOUNDED = [(f.name, v) for f in _OWN if (b := option_bounds(f)) for v in _outside(b, field_type(f.name)[0])]


@pytest.mark.parametrize(("name", "value"), _BOUNDED, ids=[f"{n}={v}" for n, v in _BOUNDED])
def test_a_value_outside_the_declared_bounds_is_refused(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be .*, got {re.escape(repr(value))}$"):
        resolve_config({name: value})


@pytest.mark.parametrize("name", [f.name for f in _OWN if option_choices(f) is not None])
def test_a_name_outside_the_declared_choices_is_refused(name: str) -> None:
    valid = option_choices(next(f for f in _OWN if f.name == name))
    assert valid
    with pytest.raises(ValueError, match=rf"^unknown {name} 'nope'; valid: {re.escape(', '.join(valid))}$"):
        resolve_config({name: "nope"})


def test_every_bounded_option_is_tested() -> None:
    """The declarations this file checks: a new bound or choice list is picked up by the two tests above."""
    assert {n for n, _ in _BOUNDED} >= {"epochs", "lr", "momentum", "compression", "seed", "keep_anneal", "threads"}


@pytest.mark.parametrize("name", [n for n in PEMN_CONFIG_FIELDS if n not in AUTO_PEMN_FIELDS])
def test_the_pemn_options_are_pemnconfigs(name: str) -> None:
    """TrainConfig's PEMN options are declared once, by PEMNConfig: same choices and bounds (help and default
    only where the training run means more, e.g. rescale unset = from variance; the "auto" ones add "auto")."""
    own = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    core = {f.name: f for f in dataclasses.fields(PEMNConfig)}[name]
    assert option_choices(own) == option_choices(core)
    assert option_bounds(own) == option_bounds(core)
    assert option_help(own).startswith(option_help(core)) or name == "targets"


def test_pemn_option_names_a_missing_option() -> None:
    with pytest.raises(ValueError, match="PEMNConfig has no option 'kep'; its options: strategy, ratio"):
        pemn_option("kep")


@pytest.mark.parametrize(("text", "inside", "outside"), [
    ("(0, 1]", [1e-9, 1.0], [0.0, 1.5, float("nan"), float("inf")]),
    ("[0, 2**63)", [0, 2**63 - 1], [-1, 2**63]),
    (">= 1", [1, 10**9], [0, -1]),
    ("> 0", [1e-300], [0.0, float("inf")]),
])
def test_bounds(text: str, inside: list[float], outside: list[float]) -> None:
    bounds = Bounds.parse(text)
    assert all(v in bounds for v in inside) and not any(v in bounds for v in outside)


def test_bounds_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match=r"write an interval like '\(0, 1\]'"):
        Bounds.parse("0..1")
