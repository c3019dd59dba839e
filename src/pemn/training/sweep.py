"""Sweeps over PEMN strategies and pruning baselines, their results table and the paper's compression figure.

A sweep is a list of :class:`SweepPoint` (see :func:`build_grid`): dense training, the PEMN strategies
(``mask``, ``one_layer``, ``mp``, ``rp`` at several ratios, at several kept fractions) and the pruning
baselines (``random`` / ``magnitude`` at several compressions). :func:`run_sweep` trains each point in this
process with :func:`pemn.training.engine.train`, in its own sub folder of the sweep folder, and appends one row to
``sweep.csv`` as soon as the run ends, so a killed sweep keeps its finished rows and a re-run skips them.
:func:`plot_sweep` draws the paper's figure: test accuracy (best epoch) against the size compression ratio
(%): PEMN points at their paper ratio, pruning baselines at their compression, dense as a horizontal line.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pemn.training.checkpoint import CHECKPOINT_NAME
from pemn.training.config import GRID_FREE_FIELDS, PEMN_FIELDS, PEMN_STRATEGIES, PRUNE_FIELDS, STRATEGY_TABLE
from pemn.training.prune import PRUNE_METHODS

__all__ = [
    "CSV_COLUMNS",
    "CSV_NAME",
    "PEMN_STRATEGIES",
    "PNG_NAME",
    "PRUNE_METHODS",
    "SEEDS_CSV_NAME",
    "SweepPoint",
    "SweepReport",
    "build_grid",
    "check_settings",
    "plot_sweep",
    "read_rows",
    "resolve_points",
    "run_sweep",
    "summarize_seeds",
    "sweep_figure",
    "train_command",
    "write_seed_summary",
]

CSV_NAME = "sweep.csv"
PNG_NAME = "sweep.png"
CSV_COLUMNS = ("strategy", "ratio", "keep", "prune", "compression", "best_acc", "final_acc", "artifact_bytes",
               "paper_ratio", "honest_ratio", "seconds", "command", "seed")
#: The columns of a sweep written before ``--seeds`` (still read; appended to only by seedless points).
LEGACY_COLUMNS = CSV_COLUMNS[:-1]
#: The columns that identify a run (a re-run skips points whose key is already in the CSV).
KEY_COLUMNS = ("strategy", "ratio", "keep", "prune", "compression", "seed")
#: The per-setting summary of a sweep over seeds (:func:`summarize_seeds`).
SEEDS_CSV_NAME = "sweep_seeds.csv"
SEEDS_COLUMNS = ("strategy", "ratio", "keep", "prune", "compression", "seeds", "best_acc_mean", "best_acc_std",
                 "final_acc_mean", "final_acc_std", "artifact_bytes", "paper_ratio", "honest_ratio", "command")
#: The grid's defaults (:func:`build_grid`, ``pemn sweep``).
DEFAULT_RATIOS = (1e-1, 1e-2, 1e-3)
DEFAULT_KEEPS = (0.5,)
DEFAULT_COMPRESSIONS = (0.9, 0.92, 0.94, 0.96)
#: The strategy a pruning baseline trains with (weights are trained, a fraction of them is removed).
PRUNE_STRATEGY = "dense"
#: Keys a sweep sets itself for every point; they cannot also be given as common overrides.
GRID_KEYS = frozenset({"strategy", "ratio", "keep", "prune", "compression", "out", "resume"})
#: Settings that may change between a sweep and its re-run in the same folder (they do not change results).
FREE_KEYS = GRID_FREE_FIELDS
SETTINGS_NAME = "sweep.json"
#: Common options given to the PEMN points only.
PEMN_ONLY_KEYS = frozenset(PEMN_FIELDS) - GRID_KEYS
#: Common options given to the pruning baselines only.
PRUNE_ONLY_KEYS = frozenset(PRUNE_FIELDS) - GRID_KEYS

Log = Callable[[str], None]


def _num(v: float) -> str:
    """A short, exact-enough text for a grid value (``0.01`` → ``0.01``, ``1e-05`` → ``1e-05``)."""
    return f"{float(v):g}"


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep. ``strategy`` is ``"dense"`` for dense training and for pruning baselines."""

    strategy: str
    ratio: float | None = None
    keep: float | None = None
    prune: str | None = None
    compression: float | None = None
    #: the run's seed (``--seeds``); None: the sweep's common setting
    seed: int | None = None

    @property
    def name(self) -> str:
        """The run's sub folder name, e.g. ``rp-r0.01-k0.5``, ``prune-magnitude-c0.9``, ``dense``, ``dense-s1``."""
        if self.prune is not None:
            parts = [f"prune-{self.prune}-c{_num(self.compression or 0)}"]
        else:
            parts = [self.strategy.replace("_", "-")]
            if self.ratio is not None:
                parts.append(f"r{_num(self.ratio)}")
            if self.keep is not None:
                parts.append(f"k{_num(self.keep)}")
        if self.seed is not None:
            parts.append(f"s{self.seed}")
        return "-".join(parts)

    @property
    def kind(self) -> str:
        """``"dense"``, ``"pemn"`` or ``"prune"``."""
        if self.prune is not None:
            return "prune"
        return "dense" if self.strategy == "dense" else "pemn"

    def overrides(self) -> dict[str, Any]:
        """The TrainConfig overrides of this point (only the fields that apply to it)."""
        d: dict[str, Any] = {"strategy": self.strategy}
        for k in ("ratio", "keep", "prune", "compression", "seed"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d

    def key(self) -> tuple[str, ...]:
        return tuple(_norm(getattr(self, k)) for k in KEY_COLUMNS)

    def label(self) -> str:
        """A short figure label: ``Mask``, ``One-layer``, ``MP``, ``RP 1e-2``, ``Random 90%``, ``Dense``."""
        if self.kind == "prune":
            return f"{self.prune} {_num(100 * (self.compression or 0))}%"
        text = STRATEGY_TABLE[self.strategy].label if self.strategy in STRATEGY_TABLE else self.strategy
        if self.ratio is not None:
            text += f" {_ratio_label(self.ratio)}"
        return text


def _ratio_label(r: float) -> str:
    e = math.log10(r) if r > 0 else 0.0
    return f"1e{round(e)}" if r > 0 and abs(e - round(e)) < 1e-9 else _num(r)


def _norm(v: Any) -> str:
    """Canonical text of a key value, equal for ``0.01``, ``"0.01"`` and ``"1e-2"``; ``""`` for None."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | float):
        return repr(float(v))
    text = str(v).strip()
    try:
        return repr(float(text))
    except ValueError:
        return text


def build_grid(
    *,
    strategies: Iterable[str] = PEMN_STRATEGIES,
    ratios: Iterable[float] = DEFAULT_RATIOS,
    keeps: Iterable[float] = DEFAULT_KEEPS,
    dense: bool = True,
    prune: Iterable[str] = PRUNE_METHODS,
    compressions: Iterable[float] = DEFAULT_COMPRESSIONS,
    seeds: Iterable[int] | None = None,
) -> list[SweepPoint]:
    """Every combination: dense (optional), each PEMN strategy × keep (× ratio for those that take one), and each
    pruning method × compression; with ``seeds``, each of them once per seed (seed-major within a setting).
    Duplicates are dropped; the order is dense, PEMN, pruning."""
    seed_list = None if seeds is None else list(dict.fromkeys(int(x) for x in seeds))
    if seed_list is not None and (not seed_list or any(not 0 <= x < 2**63 for x in seed_list)):
        raise ValueError("--seeds needs at least one seed, each in [0, 2**63)")
    strategies, ratios, keeps = list(strategies), [float(r) for r in ratios], [float(k) for k in keeps]
    prune, compressions = list(prune), [float(c) for c in compressions]
    for s in strategies:
        if s not in PEMN_STRATEGIES:
            raise ValueError(f"unknown sweep strategy {s!r}; valid: {', '.join(PEMN_STRATEGIES)} "
                             "(dense is --dense, pruning baselines are --prune)")
    for p in prune:
        if p not in PRUNE_METHODS:
            raise ValueError(f"unknown pruning method {p!r}; valid: {', '.join(PRUNE_METHODS)}")
    if strategies and not keeps:
        raise ValueError("give at least one kept fraction (--keeps) for the PEMN strategies")
    for s in strategies:
        if STRATEGY_TABLE[s].takes_ratio and not ratios:
            raise ValueError(f"strategy {s} needs at least one ratio (--ratios)")
    if prune and not compressions:
        raise ValueError("pruning baselines need at least one compression (--compressions)")
    points: list[SweepPoint] = []
    if dense:
        points.append(SweepPoint("dense"))
    for s in strategies:
        for keep in keeps:
            for r in ratios if STRATEGY_TABLE[s].takes_ratio else [None]:
                points.append(SweepPoint(s, ratio=r, keep=keep))
    for p in prune:
        for c in compressions:
            points.append(SweepPoint(PRUNE_STRATEGY, prune=p, compression=c))
    if seed_list is not None:
        points = [dataclasses.replace(p, seed=x) for p in points for x in seed_list]
    unique = list(dict.fromkeys(points))
    if not unique:
        raise ValueError("the sweep is empty: give strategies, --dense or pruning baselines")
    return unique


# --------------------------------------------------------------------------------------------- the CSV


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def read_rows(csv_path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The complete rows of a sweep CSV (a missing file has none; a torn last line is ignored)."""
    path = Path(csv_path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        if tuple(reader.fieldnames) not in (CSV_COLUMNS, LEGACY_COLUMNS):
            raise ValueError(f"{path} has columns {reader.fieldnames}, not a pemn sweep's {list(CSV_COLUMNS)}; "
                             "use another output folder")
        rows = []
        for row in reader:
            row.setdefault("seed", "")
            if None in row or any(row.get(c) is None for c in CSV_COLUMNS):
                continue  # torn or malformed line
            try:
                float(row["best_acc"])
            except ValueError:
                continue
            rows.append(row)
        return rows


def _append_row(csv_path: Path, row: Mapping[str, Any]) -> None:
    """Append one row (writing the header first for a new file), flushed and fsynced."""
    buf = io.StringIO()
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    columns = CSV_COLUMNS
    if not new:
        with csv_path.open(newline="") as f:
            header = tuple(next(csv.reader(f), []))
        if header == LEGACY_COLUMNS:
            if row.get("seed") is not None:
                raise ValueError(f"{csv_path} was written before --seeds (no seed column); use another folder")
            columns = LEGACY_COLUMNS
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    if new:
        writer.writeheader()
    writer.writerow({c: _cell(row.get(c)) for c in columns})
    text = buf.getvalue()
    if not new:
        with csv_path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a killed writer left a torn line: start on a fresh one
                text = "\n" + text
    with csv_path.open("a", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(_norm(row.get(k) or None) for k in KEY_COLUMNS)


# --------------------------------------------------------------------------------------------- running


def train_command(overrides: Mapping[str, Any], *, recipe: str | None = None,
                  config_file: str | os.PathLike[str] | None = None) -> str:
    """The ``pemn train`` command line that reproduces one run (None values cannot be written and are left out)."""
    args = ["pemn", "train"]
    if config_file is not None:
        args += ["--config", str(config_file)]
    if recipe is not None:
        args += ["--recipe", recipe]
    for k, v in overrides.items():
        flag = "--" + k.replace("_", "-")
        if v is None:
            continue
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list | tuple):
            args += [flag, *map(str, v)]
        elif isinstance(v, float):
            args += [flag, _num(v) if float(_num(v)) == v else repr(v)]
        else:
            args += [flag, str(v)]
    return shlex.join(args)


def _summary_value(summary: Any, name: str) -> Any:
    if summary is None:
        return None
    if isinstance(summary, Mapping):
        return summary.get(name)
    return getattr(summary, name, None)


@dataclass
class SweepReport:
    """What :func:`run_sweep` did: rows written now, points skipped (already in the CSV), failures."""

    csv: Path
    png: Path | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[SweepPoint] = field(default_factory=list)
    failed: list[tuple[SweepPoint, str]] = field(default_factory=list)
    plot_error: str | None = None
    seeds_csv: Path | None = None


def _point_overrides(point: SweepPoint, base: Mapping[str, Any], out_dir: Path, *,
                     resume: bool = False) -> dict[str, Any]:
    bad = sorted(GRID_KEYS & set(base))
    if bad:
        raise ValueError(f"{bad} are set by the sweep grid for every run; give them as grid options instead")
    # options that only mean something for some points apply to those (e.g. --set init=signed_constant is
    # not passed to the dense baselines, fill=rand only to mp / rp)
    common = {k: v for k, v in base.items()
              if not (point.kind != "pemn" and k in PEMN_ONLY_KEYS)
              and not (k == "fill" and not STRATEGY_TABLE[point.strategy].takes_fill)
              and not (point.kind != "prune" and k in PRUNE_ONLY_KEYS)}
    d = {**common, **point.overrides(), "out": str(out_dir / point.name)}
    if resume and (out_dir / point.name / CHECKPOINT_NAME).exists():
        d["resume"] = True  # a run killed with the sweep continues from its checkpoint
    return d


def _settings(base: Mapping[str, Any], recipe: str | None,
              config_file: str | os.PathLike[str] | None) -> dict[str, Any]:
    return {"overrides": {k: v for k, v in sorted(base.items()) if k not in FREE_KEYS},
            "recipe": recipe, "config_file": None if config_file is None else str(config_file)}


def _check_same_settings(out: Path, settings: dict[str, Any]) -> bool:
    """Whether ``out`` already records ``settings``; ValueError if it records other ones (nothing is written)."""
    path = out / SETTINGS_NAME
    if not path.exists():
        return False
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        saved = None
    if saved != settings:
        raise ValueError(f"{out} holds a sweep with other common settings ({saved} in {path}, now {settings}); "
                         "its rows would not be comparable: use another --out, or delete the folder")
    return True


def check_settings(out: Path, base: Mapping[str, Any], recipe: str | None,
                   config_file: str | os.PathLike[str] | None, *, record: bool = True) -> None:
    """Record the sweep's common settings in ``out/sweep.json`` (creating ``out``; not with ``record=False``);
    ValueError if the folder already holds a sweep with other ones (their rows would not be comparable)."""
    settings = _settings(base, recipe, config_file)
    if _check_same_settings(out, settings) or not record:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n")


def resolve_points(points: Sequence[SweepPoint], base_overrides: Mapping[str, Any], out_dir: str | os.PathLike[str],
                   *, recipe: str | None = None, config_file: str | os.PathLike[str] | None = None) -> list[Any]:
    """Resolve every point's TrainConfig up front (ValueError for the first contradictory one), so a bad
    grid fails before any training starts."""
    from pemn.training.config import resolve_config

    configs = []
    for p in points:
        ov = _point_overrides(p, base_overrides, Path(out_dir), resume=True)
        try:
            configs.append(resolve_config(ov, recipe=recipe, config_file=config_file))
        except ValueError as e:
            raise ValueError(f"sweep point {p.name}: {e}") from e
    return configs


def run_sweep(
    points: Sequence[SweepPoint],
    out_dir: str | os.PathLike[str],
    base_overrides: Mapping[str, Any] | None = None,
    *,
    recipe: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    log: Log | None = print,
    keep_going: bool = False,
    plot: bool = True,
    train_fn: Callable[..., Any] | None = None,
) -> SweepReport:
    """Train every point not already in ``out_dir/sweep.csv`` and append its row when it ends.

    ``base_overrides`` (TrainConfig fields such as model, dataset, epochs) apply to every run they mean
    something for (PEMN-only options such as ``init`` are not given to the dense / pruned runs, ``fill`` only
    to mp / rp, ``prune_scope`` only to the pruning baselines); each run
    writes to ``out_dir/<point.name>``, with ``resume=True`` where that folder holds a checkpoint (a run
    killed with the sweep continues from it). The common settings are recorded in ``out_dir/sweep.json``;
    re-running the folder with other ones is a ValueError, since the CSV's rows are keyed by grid point
    only. All configs are resolved before the first run, so a contradictory grid raises ValueError without
    training anything. A run that raises stops the sweep (the exception propagates) unless ``keep_going``,
    which records it in the report and goes on. Finally the figure is drawn to ``out_dir/sweep.png`` from
    every row of the CSV (skipped, with ``plot_error``, if matplotlib is missing). ``train_fn`` replaces
    :func:`pemn.training.engine.train` (for tests).
    """
    out = Path(out_dir)
    base = dict(base_overrides or {})
    # other common settings first: resolving the points reads each run's config.json for --resume
    check_settings(out, base, recipe, config_file, record=False)
    configs = resolve_points(points, base, out, recipe=recipe, config_file=config_file)
    if train_fn is None:
        from pemn.training.engine import train as train_fn
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, base, recipe, config_file)
    csv_path = out / CSV_NAME
    done = {_row_key(r) for r in read_rows(csv_path)}
    report = SweepReport(csv=csv_path, png=None)
    say = log or (lambda _msg: None)
    todo = [(p, c) for p, c in zip(points, configs, strict=True) if p.key() not in done]
    report.skipped = [p for p in points if p.key() in done]
    if report.skipped:
        say(f"sweep: {len(report.skipped)} of {len(points)} runs already in {csv_path}, skipping them")
    for i, (point, cfg) in enumerate(todo, 1):
        say(f"sweep: [{i}/{len(todo)}] {point.name}")
        start = time.perf_counter()
        try:
            result = train_fn(cfg)
        except Exception as e:
            if not keep_going:
                raise
            msg = f"{type(e).__name__}: {e}"
            report.failed.append((point, msg))
            say(f"sweep: {point.name} failed ({msg}); going on")
            continue
        seconds = getattr(result, "seconds", None)
        summary = getattr(result, "summary", None)
        row = {
            "strategy": point.strategy, "ratio": point.ratio, "keep": point.keep, "prune": point.prune,
            "compression": point.compression, "seed": point.seed,
            "best_acc": float(result.best_acc), "final_acc": float(result.final_acc),
            "artifact_bytes": getattr(result, "artifact_bytes", None) or getattr(result, "weights_bytes", None),
            "paper_ratio": _summary_value(summary, "paper_ratio"),
            "honest_ratio": _summary_value(summary, "honest_ratio"),
            "seconds": round(float(seconds if seconds is not None else time.perf_counter() - start), 3),
            "command": train_command(_point_overrides(point, base, out), recipe=recipe, config_file=config_file),
        }
        _append_row(csv_path, row)
        report.rows.append(row)
        say(f"sweep: {point.name}: best {row['best_acc']:.2f}%  final {row['final_acc']:.2f}%  "
            f"{row['artifact_bytes']} B")
    if any(p.seed is not None for p in points):
        report.seeds_csv = write_seed_summary(read_rows(csv_path), out / SEEDS_CSV_NAME)
    if plot:
        try:
            report.png = plot_sweep(read_rows(csv_path), out / PNG_NAME, title=_title(base), chance=_chance(base))
        except ImportError as e:
            report.plot_error = f"no figure: matplotlib is not installed ({e})"
            say(f"sweep: {report.plot_error}")
    return report


def summarize_seeds(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (the key columns but the seed), in first-seen order: how many seeds, the mean and
    sample standard deviation (n - 1; 0 for one seed) of the best- and final-epoch accuracy, the mean file bytes
    and ratios, and the first seed's command."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_row_key(row)[:-1], []).append(row)

    def stats(values: list[float]) -> tuple[float, float]:
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        return mean, math.sqrt(var)

    def mean_of(rs: list[Mapping[str, Any]], col: str) -> float | None:
        vals = [x for x in (_float(r.get(col)) for r in rs) if x is not None]
        return sum(vals) / len(vals) if vals else None

    out = []
    for rs in groups.values():
        best, best_sd = stats([float(r["best_acc"]) for r in rs])
        final, final_sd = stats([float(r["final_acc"]) for r in rs])
        first = rs[0]
        out.append({**{k: first.get(k) for k in KEY_COLUMNS[:-1]},
                    "seeds": " ".join(str(r.get("seed") or "-") for r in rs),
                    "best_acc_mean": best, "best_acc_std": best_sd, "final_acc_mean": final, "final_acc_std": final_sd,
                    "artifact_bytes": mean_of(rs, "artifact_bytes"), "paper_ratio": mean_of(rs, "paper_ratio"),
                    "honest_ratio": mean_of(rs, "honest_ratio"), "command": first.get("command")})
    return out


def write_seed_summary(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write :func:`summarize_seeds` of ``rows`` to ``path`` (a CSV of :data:`SEEDS_COLUMNS`), atomically."""
    from pemn.fileio import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SEEDS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in summarize_seeds(rows):
        writer.writerow({c: _cell(r.get(c)) for c in SEEDS_COLUMNS})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def _title(base: Mapping[str, Any]) -> str | None:
    parts = [str(base[k]) for k in ("model", "dataset") if base.get(k)]
    return " on ".join(parts) if parts else None


# --------------------------------------------------------------------------------------------- the figure


def _float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _point_of(row: Mapping[str, Any]) -> SweepPoint:
    return SweepPoint(str(row.get("strategy") or ""), ratio=_float(row.get("ratio")), keep=_float(row.get("keep")),
                      prune=(row.get("prune") or None), compression=_float(row.get("compression")))


def plot_sweep(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str | None = None,
               chance: float | None = None) -> Path:
    """Draw :func:`sweep_figure` of ``rows`` to ``path`` (PNG)."""
    fig = sweep_figure(rows, title=title, chance=chance)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return path


def _chance(base: Mapping[str, Any]) -> float | None:
    """100 / classes of the sweep's dataset (None if it cannot be told)."""
    from pemn.training.config import TrainConfig
    from pemn.training.data import dataset_info

    try:
        classes = dataset_info(str(base.get("dataset") or TrainConfig.dataset), base.get("data_dir")).num_classes
    except Exception:  # an unreadable dataset folder must not cost the figure
        return None
    return 100.0 / classes if classes else None


#: The figure's x axis: the paper's size compression ratio, and what it measures for each kind of point.
SWEEP_XLABEL = ("Size compression ratio (%) = 1 − stored bits / dense fp32 bits\n"
                "PEMN: 1 − (N + 32·P) / (32·N), N 1-bit mask entries, P prototype floats; "
                "pruning: share of weights removed")


def sweep_figure(rows: Iterable[Mapping[str, Any]], *, title: str | None = None, chance: float | None = None) -> Any:
    """Test accuracy (best epoch) vs size compression ratio (%) of sweep rows, as a matplotlib Figure.

    PEMN runs are placed at their paper ratio (MP/RP joined by one line per kept fraction, Mask/One-layer as
    squares, each point labelled; points at the same place share one label, neighbouring labels alternate above
    and below), pruning baselines at their compression (``x`` random, a larger hollow diamond magnitude, so that
    identical results stay visible), dense runs as a horizontal line and ``chance`` (100 / classes) as a grey one.
    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pemn: dict[float | None, list[tuple[float, float, str, str]]] = {}
    pruned: dict[str, list[tuple[float, float]]] = {}
    dense: list[float] = []
    for row in rows:
        p, acc = _point_of(row), _float(row.get("best_acc"))
        if acc is None:
            continue
        if p.kind == "dense":
            dense.append(acc)
        elif p.kind == "prune" and p.compression is not None:
            pruned.setdefault(p.prune or "", []).append((100 * p.compression, acc))
        elif p.kind == "pemn":
            x = _float(row.get("paper_ratio"))
            if x is not None:
                pemn.setdefault(p.keep, []).append((100 * x, acc, p.label(), p.strategy))
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels: dict[tuple[float, float], list[str]] = {}
    for keep, pts in sorted(pemn.items(), key=lambda kv: kv[0] or 0):
        pts.sort()
        name = "PEMN (ours)" if len(pemn) == 1 else f"PEMN, keep {_num(keep) if keep is not None else '?'}"
        # MP and RP share one prototype filling every layer: one line, as the paper's "Ours"; Mask and
        # One-layer (many more unique values) are separate markers of the same colour
        line = [(x, y) for x, y, _, strategy in pts if strategy in ("mp", "rp")]
        others = [(x, y) for x, y, _, strategy in pts if strategy not in ("mp", "rp")]
        color = None
        if line:
            (handle,) = ax.plot([x for x, _ in line], [y for _, y in line], "o-", label=name, markersize=6)
            color = handle.get_color()
        if others:
            handle = ax.scatter([x for x, _ in others], [y for _, y in others], marker="s", s=36, color=color,
                                label=None if line else name, zorder=3)
        for x, y, text, _ in pts:
            labels.setdefault((round(x, 6), round(y, 6)), []).append(text)
    for i, ((x, y), texts) in enumerate(sorted(labels.items())):
        ax.annotate(", ".join(dict.fromkeys(texts)), (x, y), textcoords="offset points",
                    xytext=(4, 6) if i % 2 == 0 else (4, -13), fontsize=8)
    markers = {"random": ("x", 6, "Random pruning"), "magnitude": ("D", 9, "Minimum (magnitude) pruning")}
    for method, pts in sorted(pruned.items()):
        pts.sort()
        marker, size, name = markers.get(method, ("s", 7, f"{method} pruning"))
        ax.plot([x for x, _ in pts], [y for _, y in pts], linestyle="--", marker=marker, label=name, markersize=size,
                fillstyle="none" if marker != "x" else "full")
    for i, acc in enumerate(dense):
        ax.axhline(acc, color="black", linestyle=":", linewidth=1.2, label="Dense" if i == 0 else None)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="-.", linewidth=1.0, label=f"Chance ({chance:.3g} %)")
    ax.set_xlabel(SWEEP_XLABEL, fontsize=8)
    ax.set_ylabel("Test accuracy (%), best epoch")
    ax.set_title(f"PEMN compression: {title}" if title else "PEMN compression")
    ax.grid(True, alpha=0.3)
    if pemn or pruned or dense:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig
