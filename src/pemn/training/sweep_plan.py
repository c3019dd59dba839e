"""``pemn sweep``'s request: every run checked and resolved before the first one, and the lines the command reports.

:func:`plan_sweep` turns the command's options into the grid's points and the settings every run shares (``--set
KEY=VALUE`` pairs with ``--model``/``--dataset``/``--epochs``/``--data-dir`` on top), checked against the sweep
folder's recorded settings and byte budget, each point's training config resolved (:mod:`pemn.training.sweep`
trains them). :func:`sweep_lines` and :func:`budget_only_lines` are what the command prints after a sweep and for
a byte budget over a folder's finished runs. A request that cannot be run is an
:class:`~pemn.training.errors.OptionError` (the command line's exit code 2), raised before anything is trained.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pemn.training.config import parse_settings
from pemn.training.errors import OptionError
from pemn.training.progress import plural
from pemn.training.sweep import (
    BUDGET_NAME,
    GRID_KEYS,
    SweepPoint,
    SweepReport,
    apply_budget,
    budget_lines,
    build_grid,
    check_settings,
    resolve_points,
    seed_summary_lines,
    stored_budget,
)

__all__ = ["GRID_OPTIONS", "SHARED_FLAGS", "budget_only_lines", "plan_sweep", "sweep_lines"]

#: The grid's options (:func:`pemn.training.sweep.build_grid`'s arguments), by their ``pemn sweep`` flag names.
GRID_OPTIONS = ("strategies", "ratios", "keeps", "dense", "prune", "compressions", "seeds", "quantize",
                "prune_quantize", "widths")
#: The training options ``pemn sweep`` has flags of (the others go through ``--set``).
SHARED_FLAGS = ("model", "dataset", "epochs", "data_dir")


def _shared_settings(settings: Sequence[str], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The training options every run shares: ``settings`` (``KEY=VALUE`` texts) with ``flags`` (None: not
    given) on top; OptionError for a key the grid sets or a flag and a setting that disagree."""
    try:
        base = parse_settings(settings)
    except ValueError as e:
        raise OptionError(f"--set {e}") from None
    clash = sorted(GRID_KEYS & set(base))
    if clash:
        raise OptionError(f"--set {', '.join(clash)}: set by the sweep grid for every run; use the grid options "
                          "(--strategies, --ratios, --keeps, --prune, --compressions, --quantize, --out)")
    for key in SHARED_FLAGS:
        value = flags.get(key)
        if value is not None:
            if key in base and base[key] != value:
                raise OptionError(f"--{key.replace('_', '-')} and --set {key}=... disagree")
            base[key] = value
    return base


def plan_sweep(out: str | os.PathLike[str], *, settings: Sequence[str] = (), flags: Mapping[str, Any] | None = None,
               grid: Mapping[str, Any] | None = None, recipe: str | None = None,
               config_file: str | None = None, max_bytes: int | None = None) -> tuple[list[SweepPoint], dict[str, Any]]:
    """``(points, shared settings)`` of a sweep into ``out``: the grid of ``grid`` (:data:`GRID_OPTIONS`, as
    :func:`~pemn.training.sweep.build_grid` takes them) and the settings of :func:`_shared_settings`; every point's
    config resolved, the folder's recorded settings (and, without ``max_bytes``, its byte budget) checked, nothing
    written. OptionError for anything that would make a run fail to start."""
    base = _shared_settings(settings, flags or {})
    grid = dict(grid or {})
    try:
        if grid.get("seeds") is not None and "seed" in base:
            raise ValueError("--seeds and --set seed=... disagree: give the seeds with --seeds only")
        points = build_grid(**grid)
    except ValueError as e:
        raise OptionError(str(e)) from None
    if config_file is not None and not Path(config_file).is_file():
        raise OptionError(f"no config file at {config_file!r}")
    try:
        check_settings(Path(out), base, recipe, config_file, record=False)
        if max_bytes is None:
            stored_budget(Path(out))  # a folder's earlier budget applies again: refuse a broken one now
        resolve_points(points, base, out, recipe=recipe, config_file=config_file)
    except (ValueError, TypeError) as e:
        raise OptionError(str(e)) from None
    return points, base


def _budget_lines(report: Mapping[str, Any], out: str | os.PathLike[str]) -> list[str]:
    return [*budget_lines(report), f"sweep: budget in {Path(out) / BUDGET_NAME} and sweep.csv's budget column"]


def budget_only_lines(out: str | os.PathLike[str], max_bytes: int) -> list[str]:
    """``pemn sweep --max-bytes N`` with no grid: the budget over ``out``'s finished runs
    (:func:`~pemn.training.sweep.apply_budget`, which marks and records it), as lines; OptionError for a folder
    without a sweep."""
    try:
        report = apply_budget(out, max_bytes)
    except ValueError as e:
        raise OptionError(str(e)) from None
    return _budget_lines(report, out)


def sweep_lines(report: SweepReport, out: str | os.PathLike[str]) -> list[str]:
    """What ``pemn sweep`` prints when the runs are done: the counts, the figure, the per-seed summary, the byte
    budget (the failed runs' errors are the command's to print)."""
    lines = [f"sweep: {plural(len(report.rows), 'run')} done, {len(report.skipped)} already in {report.csv}"
             + (f", {len(report.failed)} failed" if report.failed else "")]
    if report.png is not None:
        lines.append(f"sweep: figure {report.png}")
    if report.seeds_csv is not None:
        lines.append(f"sweep: mean ± std over seeds ({report.seeds_csv}):")
        lines += seed_summary_lines(report.csv)
    if report.budget is not None:
        lines += _budget_lines(report.budget, out)
    return lines
