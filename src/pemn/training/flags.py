"""The ``pemn train`` flags and the options table of docs/options.md, both generated from :class:`TrainConfig`'s
declared options (:func:`pemn.options.option`: default, help, choices, bounds), section by section
(:func:`~pemn.training.config.field_sections`).

``python -m pemn.training.flags docs/options.md`` rewrites the table (tests/test_train_options.py checks it is
current).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from pemn.options import option_bounds, option_choices, option_help
from pemn.training.config import RECIPE_FIELDS, RECIPES, TrainConfig, field_sections, field_type

__all__ = ["add_train_flags", "flag_help", "flag_kwargs", "flag_name", "options_markdown"]

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_DEFAULT_RECIPE = _FIELDS["recipe"].default


def flag_name(name: str) -> str:
    """``--keep-start`` for the option ``keep_start``."""
    return "--" + name.replace("_", "-")


def flag_kwargs(name: str, base: type) -> dict[str, Any]:
    """argparse keywords for an option of type ``base`` (:func:`~pemn.training.config.field_type`): bool →
    --x/--no-x, list → nargs="+", else that type."""
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if base is list:
        return {"nargs": "+", "type": str, "metavar": name.upper()}
    return {"type": base, "metavar": name.upper()}


def _default_text(name: str) -> str | None:
    """What the help adds about the default (None when the help says it itself or there is none to say)."""
    help_text = option_help(_FIELDS[name]).lower()
    if "default:" in help_text or "(default " in help_text:
        return None
    default = _FIELDS[name].default
    if name in RECIPE_FIELDS:
        return f"the recipe's; {default} with {_DEFAULT_RECIPE}"
    return None if default is None else str(default)


def flag_help(name: str) -> str:
    """The option's help with its default: ``peak learning rate (default: the recipe's; 0.01 with adamw)``."""
    said = _default_text(name)
    text = option_help(_FIELDS[name])
    return text if said is None else f"{text} (default: {said})".strip()


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` option, in a help group per section, defaults suppressed (so only what is
    typed overrides the recipe and the config file); ``recipe`` is ``--recipe``, beside ``--config``."""
    for title, names in field_sections():
        group = parser.add_argument_group(title)
        if "recipe" in names:  # the recipe and the config file are where these come from
            group.add_argument("--recipe", default=None, metavar="NAME", help=f"a named recipe ({', '.join(RECIPES)}; "
                               f"default: {_DEFAULT_RECIPE}): sets every option of this section you do not type")
            group.add_argument("--config", default=None, metavar="FILE.json", help="a JSON file of training options "
                               "(between the recipe and the flags)")
        for name in names:
            if name != "recipe":
                group.add_argument(flag_name(name), dest=name, default=argparse.SUPPRESS,
                                   help=flag_help(name).replace("%", "%%"), **flag_kwargs(name, field_type(name)[0]))


def _valid_text(name: str) -> str:
    base, optional = field_type(name)
    f = _FIELDS[name]
    choices, bounds = option_choices(f), option_bounds(f)
    if choices is not None:
        text = ", ".join(f"`{c}`" for c in choices)
    elif bounds is not None:
        text = f"{base.__name__} {bounds.describe(base).removeprefix('a finite number ')}"
    else:
        text = {bool: f"`{flag_name(name)}` / `--no-{flag_name(name)[2:]}`", list: "one or more words"}.get(
            base, base.__name__)
    return f"{text}, or unset" if optional and base is not bool else text


def options_markdown() -> str:
    """docs/options.md: every ``pemn train`` option, section by section: flag, default, valid values, help."""
    lines = ["# pemn train options", "",
             "Generated from `TrainConfig`'s declarations (src/pemn/training/config.py; the PEMN options come from",
             "`PEMNConfig`, src/pemn/config.py) by `python -m pemn.training.flags docs/options.md`: edit those, not "
             "this file.",
             "Each option is a flag of `pemn train`, a key of a `--config` JSON file and of `pemn sweep --set "
             "key=value`;",
             "settings resolve as defaults < `--recipe` < `--config` < the flags you type.", ""]
    for title, names in field_sections():
        lines += [f"## {title[0].upper()}{title[1:]}", "", "| flag | default | valid | what it sets |",
                  "|---|---|---|---|"]
        if "recipe" in names:
            lines.append("| `--config FILE.json` | none | a JSON object of these options | the settings between the "
                         "recipe and the flags |")
        for name in names:
            default = _FIELDS[name].default
            shown = "unset" if default is None else f"`{default}`"
            if name in RECIPE_FIELDS:
                shown = f"the recipe's ({shown} with {_DEFAULT_RECIPE})"
            flag = "--recipe" if name == "recipe" else flag_name(name)
            cells = [f"`{flag}`", shown, _valid_text(name), option_help(_FIELDS[name])]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pemn.training.flags docs/options.md", file=sys.stderr)
        return 2
    path = Path(args[0])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(options_markdown())
    tmp.replace(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
