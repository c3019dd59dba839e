"""Declared options: a dataclass field that carries its own help, choices and bounds.

One line per option (:func:`option`) holds everything said about it; validation, the command-line flags and the
documentation table are generated from these fields, so none of them restates a default, a list of valid names or
a range. :class:`pemn.PEMNConfig` declares its fields this way (checked by :func:`checked_value`) and
``pemn.training.config.TrainConfig`` reuses them (:func:`copy_option`; checked by :func:`check_option`). A rule
"this option, once set, needs that one" is declared on the option too (:class:`Needs`, :func:`check_needs`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

__all__ = ["Bounds", "Needs", "check_needs", "check_option", "checked_value", "copy_option", "either", "field_types",
           "option", "option_bounds", "option_choices", "option_help"]

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

    def inequality(self, name: str) -> str:
        """The range as written about ``name``: ``0 < keep <= 1``, ``0 <= seed < 2**63``, ``epochs >= 1``."""
        interval = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])", self.text.strip())
        if interval is None:
            return f"{name} {self.text.strip()}"
        low, high = ("<" if open_ else "<=" for open_ in (self.low_open, self.high_open))
        return f"{interval.group(2)} {low} {name} {high} {interval.group(3)}"

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


@dataclass(frozen=True)
class Needs:
    """A rule across options, declared on the option it is about: once that option is set (differs from its
    default), ``holds(config)`` must be true, else ValueError(``message``, or ``message(config)`` for one that names
    the config's values). :func:`check_needs` applies them."""

    holds: Callable[[Any], bool]
    message: str | Callable[[Any], str]


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Choices | None = None,
           bounds: str | None = None, check: Callable[[Any], object] | None = None, needs: Needs | None = None,
           default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A dataclass field declaring an option: its default (or ``default_factory``), its ``help`` (one line for the
    flag and the docs), the names it may take (``choices``), the range of a number (``bounds``, see
    :class:`Bounds`), a ``check`` of a value no list or range describes (it raises ValueError naming the problem)
    and what the option ``needs`` of the others once set (:class:`Needs`). ``None`` is always valid for an optional
    field."""
    metadata = {"help": help, "choices": choices, "bounds": None if bounds is None else Bounds.parse(bounds),
                "check": check, "needs": needs}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def copy_option(source: dataclasses.Field[Any], **change: Any) -> Any:
    """The option ``source`` (a field of another dataclass, e.g. :class:`pemn.PEMNConfig`'s) declared again with
    the same help, choices, bounds, check, needs and default, except what ``change`` gives (any of these)."""
    meta = dict(source.metadata)
    default = source.default_factory() if source.default_factory is not dataclasses.MISSING else source.default
    bounds = change.get("bounds", meta.get("bounds"))
    return option(change.get("default", default), change.get("help", meta.get("help", "")),
                  choices=change.get("choices", meta.get("choices")),
                  bounds=bounds.text if isinstance(bounds, Bounds) else bounds,
                  check=change.get("check", meta.get("check")), needs=change.get("needs", meta.get("needs")))


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


_FIELD_TYPES: dict[type, dict[str, tuple[type, bool]]] = {}


def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """``{field: (type, optional)}`` of the dataclass ``cls``: type is bool, int, float, str, list or tuple (of
    str); optional says whether None is allowed."""
    if cls not in _FIELD_TYPES:
        kinds = {}
        for key, hint in get_type_hints(cls).items():
            args = get_args(hint)
            optional = get_origin(hint) in (Union, types.UnionType) and type(None) in args
            if optional:
                (hint,) = [a for a in args if a is not type(None)]
            base = get_origin(hint) or hint
            if base not in (bool, int, float, str, list, tuple):  # pragma: no cover - every field has one of these
                raise TypeError(f"unsupported field type {hint!r} of {key}")
            kinds[key] = (base, optional)
        _FIELD_TYPES[cls] = kinds
    return _FIELD_TYPES[cls]


def checked_value(f: dataclasses.Field[Any], value: Any, kind: type, optional: bool, context: str = "") -> Any:
    """``value`` of field ``f`` (declared of type ``kind``) checked against its declaration and normalised (an int
    as a float; a str, a list or, for a field that is not optional, None as a tuple), or ValueError in the
    library's words: ``gain must be a bool, got 1``, ``keep must be a number with 0 < keep <= 1, got 2``, ``scope
    must be one of ('layer', 'global'), got 'x'`` (``context`` follows the range: `` for strategy 'rp'``); then
    the field's ``check``."""
    if value is None and optional:
        return None
    name, bounds, choices = f.name, option_bounds(f), option_choices(f)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, got {value!r}")
    elif kind in (int, float):
        number = not isinstance(value, bool) and isinstance(value, int | float if kind is float else int)
        if not number or (bounds is not None and value not in bounds):
            range_ = "" if bounds is None else f" with {bounds.inequality(name)}"
            raise ValueError(f"{name} must be {'a number' if kind is float else 'an int'}{range_}{context}, "
                             f"got {value!r}")
        value = kind(value)
    elif choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    elif kind in (list, tuple) and (value is None or isinstance(value, str | list | tuple)):
        value = kind(() if value is None else (value,) if isinstance(value, str) else value)  # None: none
    check = f.metadata.get("check")
    if check is not None:
        check(value)
    return value


def check_option(f: dataclasses.Field[Any], value: Any, kind: type) -> None:
    """ValueError naming ``f`` if ``value`` (already of type ``kind``, or None) is not one of its choices, not
    within its bounds or fails its ``check``: ``unknown optimizer 'adam'; valid: adamw, sgd``, ``epochs must be
    >= 1, got 0``."""
    if value is None:
        return
    choices = option_choices(f)
    if choices is not None and value not in choices:
        raise ValueError(f"unknown {f.name} {value!r}; valid: {', '.join(choices)}")
    bounds = option_bounds(f)
    if bounds is not None and value not in bounds:
        unset = " (or unset)" if f.default is None else ""
        raise ValueError(f"{f.name} must be {bounds.describe(kind)}{unset}, got {value!r}")
    check = f.metadata.get("check")
    if check is not None:
        check(value)


def check_needs(config: Any) -> None:
    """ValueError with the message of the first option (in field order) of the dataclass ``config`` that is set
    while what it :class:`Needs` does not hold."""
    for f in dataclasses.fields(config):
        needs = f.metadata.get("needs")
        if needs is not None and getattr(config, f.name) != f.default and not needs.holds(config):
            raise ValueError(needs.message(config) if callable(needs.message) else needs.message)
