"""The PEMN strategies as one table: name → planner, whether it takes a ratio, whether it takes a fill.

:class:`~pemn.PEMNConfig` validates against it, :func:`pemn.prototype.plan` plans with it and the application's
strategy table (:mod:`pemn.training.config`) is derived from it, so a strategy's facts are written here once.

A strategy's planner says, for the weights of a model (in ``named_modules()`` order, a shared weight once), which
weight's random stream each one takes its values from (its *owner*); the bank then holds one source per owner
(see :mod:`pemn.prototype` for how a source's values are made):

- ``mask``: every weight its own stream (plain edge-popup: no sharing).
- ``one_layer``: every weight the stream of the first weight of the same shape.
- ``mp``: every weight the stream of the largest weight (the first one on ties).
- ``rp``: as ``mp``, but the source stores only ``int(ratio * numel) + 1`` values, tiled to ``numel``.

A strategy that takes a ratio stores that fraction of its sources (:func:`stored_length`); one that takes a fill
accepts ``fill="rand"`` (its tiled source shuffled by a seeded permutation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["STRATEGIES", "STRATEGY_TABLE", "Strategy", "stored_length", "strategy_names"]

#: ``planner(shapes, numels) -> owners``: for every weight, the index of the weight whose stream it uses.
Planner = Callable[[Sequence[tuple[int, ...]], Sequence[int]], list[int]]


@dataclass(frozen=True)
class Strategy:
    """A PEMN strategy: its name, its label in figures and tables, its planner (see the module doc), whether it
    takes ``ratio`` (with the default used when it is unset) and whether it takes ``fill``."""

    name: str
    label: str
    planner: Planner
    takes_ratio: bool = False
    default_ratio: float | None = None
    takes_fill: bool = False


def _own(shapes: Sequence[tuple[int, ...]], numels: Sequence[int]) -> list[int]:
    return list(range(len(shapes)))


def _first_of_shape(shapes: Sequence[tuple[int, ...]], numels: Sequence[int]) -> list[int]:
    first: dict[tuple[int, ...], int] = {}
    return [first.setdefault(tuple(s), i) for i, s in enumerate(shapes)]


def _largest(shapes: Sequence[tuple[int, ...]], numels: Sequence[int]) -> list[int]:
    j = max(range(len(shapes)), key=lambda i: (numels[i], -i))
    return [j] * len(shapes)


#: Every PEMN strategy, in the order the docs and the CLI list them.
STRATEGY_TABLE: dict[str, Strategy] = {s.name: s for s in (
    Strategy("mask", "Mask", _own),
    Strategy("one_layer", "One-layer", _first_of_shape),
    Strategy("mp", "MP", _largest, takes_fill=True),
    Strategy("rp", "RP", _largest, takes_ratio=True, default_ratio=1e-3, takes_fill=True),
)}
STRATEGIES = tuple(STRATEGY_TABLE)


def stored_length(strategy: Strategy, ratio: float | None, numel: int) -> int:
    """How many values a source of ``numel`` expanded values stores: all of them, or with a ratio
    ``min(numel, int(ratio * numel) + 1)``."""
    if not strategy.takes_ratio:
        return numel
    if ratio is None:
        raise ValueError(f"strategy {strategy.name!r} needs a ratio")
    return min(numel, int(ratio * numel) + 1)


def strategy_names(names: Sequence[str]) -> str:
    """``"strategy 'rp'"`` or ``"strategies 'mp' and 'rp'"``: the strategies a setting applies to, for messages."""
    quoted = [repr(n) for n in names]
    if len(quoted) == 1:
        return f"strategy {quoted[0]}"
    return f"strategies {', '.join(quoted[:-1])} and {quoted[-1]}"
