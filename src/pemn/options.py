"""Declared options: a dataclass field that carries its own help, choices and bounds.

One line per option (:func:`option`) holds everything said about it; validation (:func:`check_option`), the
command-line flags and the documentation table are generated from these fields, so none of them restates a
default, a list of valid names or a range. :class:`pemn.PEMNConfig` declares its fields this way and
``pemn.training.config.TrainConfig`` reuses them (:func:`copy_option`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Bounds", "check_option", "copy_option", "either", "option", "option_bounds", "option_choices",
           "option_help"]

#: What ``choices`` may be: the valid names, or a function returning them (for tables filled after the declaration).
Choices = Sequence[str] | Callable[[], Sequence[str]]


@dataclass(frozen=True)
class Bounds:
    """The valid range of a number, written as an interval: ``"(0, 1]"``, ``"[0, 2**63)"``, or one side only:
    ``">= 1"``, ``"> 0"``."""

    text: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = True
    high_open: bool = True

    @classmethod
    def parse(cls, text: str) -> Bounds:
        side = re.fullmatch(r"(>=|>|<=|<)\s*(\S+)", text.strip())
        if side:
            op, number = side.group(1), _number(side.group(2))
            if op.startswith(">"):
                return cls(text, low=number, low_open=op == ">")
            return cls(text, high=number, high_open=op == "<")
        interval = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])", text.strip())
        if not interval:
            raise ValueError(f"bounds {text!r}: write an interval like '(0, 1]' or one side like '>= 1'")
        return cls(text, low=_number(interval.group(2)), high=_number(interval.group(3)),
                   low_open=interval.group(1) == "(", high_open=interval.group(4) == ")")

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, kind: type) -> str:
        """The range in words for an error: ``in (0, 1]``, ``>= 1`` or, for a float, ``a finite number > 0``."""
        if self.text[0] in "[(":
            return f"in {self.text}"
        return f"a finite number {self.text}" if kind is float else self.text


def _number(text: str) -> float:
    base, _, power = text.partition("**")
    value = float(base) if "." in base or "e" in base.lower() else int(base)
    return value ** int(power) if power else value


def either(names: Sequence[str]) -> str:
    """``"a, b or c"``: names for a help text."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Choices | None = None,
           bounds: str | None = None, default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A dataclass field declaring an option: its default (or ``default_factory``), its ``help`` (one line for the
    flag and the docs), the names it may take (``choices``) and the range of a number (``bounds``, see
    :class:`Bounds`). ``None`` is always valid for an optional field."""
    metadata = {"help": help, "choices": choices, "bounds": None if bounds is None else Bounds.parse(bounds)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def copy_option(source: dataclasses.Field[Any], **change: Any) -> Any:
    """The option ``source`` (a field of another dataclass, e.g. :class:`pemn.PEMNConfig`'s) declared again with
    the same help, choices, bounds and default, except what ``change`` gives (``default``, ``help``, ``choices``,
    ``bounds``)."""
    meta = dict(source.metadata)
    default = source.default_factory() if source.default_factory is not dataclasses.MISSING else source.default
    bounds = change.get("bounds", meta.get("bounds"))
    return option(change.get("default", default), change.get("help", meta.get("help", "")),
                  choices=change.get("choices", meta.get("choices")),
                  bounds=bounds.text if isinstance(bounds, Bounds) else bounds)


def option_help(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("help", ""))


def option_choices(f: dataclasses.Field[Any]) -> tuple[str, ...] | None:
    """The names field ``f`` may take, or None when any value of its type goes."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def option_bounds(f: dataclasses.Field[Any]) -> Bounds | None:
    bounds = f.metadata.get("bounds")
    return bounds if isinstance(bounds, Bounds) else None


def check_option(f: dataclasses.Field[Any], value: Any, kind: type) -> None:
    """ValueError naming ``f`` if ``value`` (already of type ``kind``, or None) is not one of its choices or not
    within its bounds: ``unknown optimizer 'adam'; valid: adamw, sgd``, ``epochs must be >= 1, got 0``."""
    if value is None:
        return
    choices = option_choices(f)
    if choices is not None and value not in choices:
        raise ValueError(f"unknown {f.name} {value!r}; valid: {', '.join(choices)}")
    bounds = option_bounds(f)
    if bounds is not None and value not in bounds:
        unset = " (or unset)" if f.default is None else ""
        raise ValueError(f"{f.name} must be {bounds.describe(kind)}{unset}, got {value!r}")
