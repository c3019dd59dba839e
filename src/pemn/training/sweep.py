"""Sweeps over PEMN strategies and the baselines a user would pick instead, their results table and figure.

A sweep is a list of :class:`SweepPoint` (see :func:`build_grid`): dense training, the PEMN strategies
(``mask``, ``one_layer``, ``mp``, ``rp`` at several ratios, at several kept fractions), the pruning baselines
(``random`` / ``magnitude`` at several compressions), the quantized baselines (``--quantize binary`` ..., and
pruning plus quantized survivors: Deep Compression), each at one or more widths of the model (narrow dense models:
:func:`pemn.training.models.model_at_width`). :func:`run_sweep` trains each point in this process with
:func:`pemn.training.engine.train`, in its own sub folder of the sweep folder, and rewrites ``sweep.csv``
(atomically) as soon as the run ends, so a killed sweep keeps its finished rows and a re-run skips them.

Every row holds the saved file's real size (``bytes``) and bits per weight (of the whole file), whether it is on
the Pareto front of the workload's primary metric vs bytes (``on_front``; the metric is the saved file's accuracy,
its final epoch, or a language model's validation loss: :func:`front_metric`), and, for a PEMN row, the best
baseline of at most its bytes by that metric and the differences to it (:func:`annotate_rows`). Under a byte budget
(``pemn sweep --max-bytes N``, :func:`budget_report`) the best file of at most N bytes by that metric and the best
of each method are marked in the ``budget`` column and written to ``sweep_budget.json``. :func:`plot_sweep` draws
that metric against file bytes (log axis, one marker family per method, the front drawn) or, with ``x="ratio"``,
the paper's figure against the size compression ratio.
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
    "BUDGET_NAME",
    "CSV_COLUMNS",
    "CSV_NAME",
    "FIGURE_AXES",
    "PEMN_STRATEGIES",
    "PNG_NAME",
    "PRUNE_METHODS",
    "SEEDS_CSV_NAME",
    "SweepPoint",
    "SweepReport",
    "annotate_rows",
    "apply_budget",
    "budget_lines",
    "budget_report",
    "build_grid",
    "bytes_figure",
    "check_max_bytes",
    "check_settings",
    "fill_from_run_folders",
    "front_metric",
    "plot_sweep",
    "ratio_figure",
    "read_rows",
    "resolve_points",
    "run_sweep",
    "seed_summary_lines",
    "stored_budget",
    "summarize_seeds",
    "sweep_figure",
    "train_command",
    "write_seed_summary",
]

CSV_NAME = "sweep.csv"
PNG_NAME = "sweep.png"
#: ``val_loss``: a language model's validation loss of the saved file (nats per character; empty for images);
#: ``bytes``: the saved file's size; ``bits_per_weight``: 8 × bytes (the whole file) / the model's
#: Conv/Linear/Embedding weights; ``on_front``: no other row has at most its bytes and a better score in the
#: workload's primary metric (:func:`front_metric`: the accuracy of the saved file, or a language model's validation
#: loss); ``baseline``..``val_loss_vs_baseline``: for a PEMN row, the best non-PEMN row of at most its bytes by that
#: metric (its run folder, bytes, accuracy, validation loss) and this row's accuracy and loss minus that one's
#: (:func:`annotate_rows`); ``budget``: where the sweep has a byte budget (``--max-bytes``, :func:`budget_report`),
#: one of :data:`BUDGET_MARKS`, else empty.
CSV_COLUMNS = ("strategy", "ratio", "keep", "prune", "compression", "quantize", "width", "seed", "model", "best_acc",
               "final_acc", "val_loss", "bytes", "bits_per_weight", "paper_ratio", "honest_ratio", "on_front",
               "baseline", "baseline_bytes", "baseline_acc", "baseline_val_loss", "acc_vs_baseline",
               "val_loss_vs_baseline", "budget", "seconds", "command")
#: The columns of sweeps written by earlier versions (still read; the next run rewrites them with CSV_COLUMNS).
OLD_COLUMNS = (
    # before val_loss (a language model's primary metric), with the byte budget's column
    ("strategy", "ratio", "keep", "prune", "compression", "quantize", "width", "seed", "model", "best_acc",
     "final_acc", "bytes", "bits_per_weight", "paper_ratio", "honest_ratio", "on_front", "baseline",
     "baseline_bytes", "baseline_acc", "acc_vs_baseline", "budget", "seconds", "command"),
    ("strategy", "ratio", "keep", "prune", "compression", "best_acc", "final_acc", "artifact_bytes",
     "paper_ratio", "honest_ratio", "seconds", "command", "seed"),
    ("strategy", "ratio", "keep", "prune", "compression", "best_acc", "final_acc", "artifact_bytes",
     "paper_ratio", "honest_ratio", "seconds", "command"),
    # before the byte budget and val_loss
    ("strategy", "ratio", "keep", "prune", "compression", "quantize", "width", "seed", "model", "best_acc",
     "final_acc", "bytes", "bits_per_weight", "paper_ratio", "honest_ratio", "on_front", "baseline",
     "baseline_bytes", "baseline_acc", "acc_vs_baseline", "seconds", "command"),
)
#: The columns of a sweep written before ``--seeds``.
LEGACY_COLUMNS = OLD_COLUMNS[2]
#: The columns that identify a run (a re-run skips points whose key is already in the CSV).
KEY_COLUMNS = ("strategy", "ratio", "keep", "prune", "compression", "quantize", "width", "seed")
#: The columns :func:`annotate_rows` derives from all the rows (rewritten whenever a row is added).
DERIVED_COLUMNS = ("on_front", "baseline", "baseline_bytes", "baseline_acc", "baseline_val_loss", "acc_vs_baseline",
                   "val_loss_vs_baseline", "budget")
#: The primary metric of a sweep's rows (what the front and the best baseline are chosen by): the accuracy of the
#: saved file (higher is better), or, for a language model, its validation loss (lower is better; the next-character
#: accuracy is still reported). :func:`front_metric` tells which one a sweep's rows have.
FRONT_METRICS = {"final_acc": 1.0, "val_loss": -1.0}
#: The ``budget`` column under a byte budget: the best file (by :func:`front_metric`) of at most that many bytes (the
#: smaller file on a tie), the best of its method (:attr:`SweepPoint.method`) that is not the best overall, another
#: file that fits, a file over the budget (rows without the metric or bytes: empty).
BUDGET_MARKS = ("best", "method best", "fits", "over")
#: The byte budget's report (:func:`budget_report`), written next to ``sweep.csv`` by ``--max-bytes``.
BUDGET_NAME = "sweep_budget.json"
#: The per-setting summary of a sweep over seeds (:func:`summarize_seeds`).
SEEDS_CSV_NAME = "sweep_seeds.csv"
SEEDS_COLUMNS = ("strategy", "ratio", "keep", "prune", "compression", "quantize", "width", "model", "seeds",
                 "best_acc_mean", "best_acc_std", "final_acc_mean", "final_acc_std", "val_loss_mean", "val_loss_std",
                 "bytes", "bits_per_weight", "paper_ratio", "honest_ratio", "command")
#: What the figure's x axis measures: the file's bytes (log scale), or the paper's size compression ratio.
FIGURE_AXES = ("bytes", "ratio")
#: The grid's defaults (:func:`build_grid`, ``pemn sweep``).
DEFAULT_RATIOS = (1e-1, 1e-2, 1e-3)
DEFAULT_KEEPS = (0.5,)
DEFAULT_COMPRESSIONS = (0.9, 0.92, 0.94, 0.96)
#: The strategy a pruning baseline trains with (weights are trained, a fraction of them is removed).
PRUNE_STRATEGY = "dense"
#: Keys a sweep sets itself for every point; they cannot also be given as common overrides.
GRID_KEYS = frozenset({"strategy", "ratio", "keep", "prune", "compression", "quantize", "out", "resume"})
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
    #: ``--quantize``: a quantized dense model (with ``prune``: Deep Compression's quantized survivors)
    quantize: str | None = None
    #: the model's width as a multiple of the sweep's model (:func:`~pemn.training.models.model_at_width`);
    #: None: the sweep's model itself
    width: float | None = None

    @property
    def name(self) -> str:
        """The run's sub folder name, e.g. ``rp-r0.01-k0.5``, ``prune-magnitude-c0.9``, ``dense``, ``dense-s1``,
        ``quant-binary``, ``dense-w0.25``, ``prune-magnitude-c0.9-ternary``."""
        if self.prune is not None:
            parts = [f"prune-{self.prune}-c{_num(self.compression or 0)}"]
            if self.quantize is not None:
                parts.append(self.quantize)
        elif self.quantize is not None:
            parts = [f"quant-{self.quantize}"]
        else:
            parts = [self.strategy.replace("_", "-")]
            if self.ratio is not None:
                parts.append(f"r{_num(self.ratio)}")
            if self.keep is not None:
                parts.append(f"k{_num(self.keep)}")
        if self.width is not None:
            parts.append(f"w{_num(self.width)}")
        if self.seed is not None:
            parts.append(f"s{self.seed}")
        return "-".join(parts)

    @property
    def kind(self) -> str:
        """``"dense"``, ``"pemn"``, ``"prune"`` or ``"quant"`` (quantized, also pruned and quantized)."""
        if self.quantize is not None:
            return "quant"
        if self.prune is not None:
            return "prune"
        return "dense" if self.strategy == "dense" else "pemn"

    @property
    def method(self) -> str:
        """The figure's marker family: ``RP``, ``Mask`` ..., ``Dense``, ``Random pruning``, ``binary QAT``,
        ``PTQ int8``, ``Deep Compression (magnitude, ternary)``."""
        if self.kind == "quant":
            q = self.quantize or ""
            if self.prune is not None:
                return f"Deep Compression ({self.prune}, {q})"
            return f"PTQ {q.removeprefix('ptq-')}" if q.startswith("ptq-") else f"{q} QAT"
        if self.kind == "prune":
            return f"{(self.prune or '').capitalize()} pruning"
        if self.kind == "dense":
            return "Dense"
        return STRATEGY_TABLE[self.strategy].label if self.strategy in STRATEGY_TABLE else self.strategy

    def overrides(self) -> dict[str, Any]:
        """The TrainConfig overrides of this point (only the fields that apply to it; the width is the caller's:
        it changes the model name)."""
        d: dict[str, Any] = {"strategy": self.strategy}
        for k in ("ratio", "keep", "prune", "compression", "quantize", "seed"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d

    def key(self) -> tuple[str, ...]:
        return tuple(_norm(getattr(self, k)) for k in KEY_COLUMNS)

    def label(self) -> str:
        """A short figure label: ``Mask``, ``One-layer``, ``MP``, ``RP 1e-2``, ``random 90%``, ``Dense``,
        ``binary``, ``Dense ×0.25``."""
        if self.kind == "prune":
            text = f"{self.prune} {_num(100 * (self.compression or 0))}%"
        elif self.kind == "quant":
            text = self.quantize or ""
            if self.prune is not None:
                text = f"{self.prune} {_num(100 * (self.compression or 0))}% {text}"
        else:
            text = STRATEGY_TABLE[self.strategy].label if self.strategy in STRATEGY_TABLE else self.strategy
            if self.ratio is not None:
                text += f" {_ratio_label(self.ratio)}"
            if self.kind == "pemn" and self.keep is not None and self.keep != 0.5:
                text += f" k{_num(self.keep)}"
        if self.width is not None:
            text += f" ×{_num(self.width)}"
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
    quantize: Iterable[str] = (),
    prune_quantize: Iterable[str] = (),
    widths: Iterable[float] | None = None,
) -> list[SweepPoint]:
    """Every combination: dense (optional), each PEMN strategy × keep (× ratio for those that take one), each
    pruning method × compression, each ``quantize`` method (a quantized dense model) and each pruning method ×
    compression × ``prune_quantize`` method (Deep Compression); each of them at every one of ``widths`` (multiples
    of the sweep's model width; 1 is the model itself) and, with ``seeds``, once per seed (seed-major within a
    setting). Duplicates are dropped; the order is dense, PEMN, pruning, quantized, Deep Compression, width-major."""
    from pemn.training.quantize import PRUNED_METHODS, QUANTIZE_METHODS

    seed_list = None if seeds is None else list(dict.fromkeys(int(x) for x in seeds))
    if seed_list is not None and (not seed_list or any(not 0 <= x < 2**63 for x in seed_list)):
        raise ValueError("--seeds needs at least one seed, each in [0, 2**63)")
    strategies, ratios, keeps = list(strategies), [float(r) for r in ratios], [float(k) for k in keeps]
    prune, compressions = list(prune), [float(c) for c in compressions]
    quantize, prune_quantize = list(quantize), list(prune_quantize)
    width_list: list[float | None] = [None]
    if widths is not None:
        ws = [float(w) for w in widths]
        if not ws or any(not (math.isfinite(w) and w > 0) for w in ws):
            raise ValueError(f"--widths needs at least one width, each a positive number (1 = the model), got {ws}")
        width_list = list(dict.fromkeys(None if w == 1 else w for w in ws))
    for q in quantize:
        if q not in QUANTIZE_METHODS:
            raise ValueError(f"unknown quantization {q!r}; valid: {', '.join(QUANTIZE_METHODS)}")
    for q in prune_quantize:
        if q not in PRUNED_METHODS:
            raise ValueError(f"Deep Compression quantizes the survivors with {', '.join(PRUNED_METHODS)}, not {q!r}")
    if prune_quantize and not prune:
        raise ValueError("--prune-quantize quantizes pruned models: give the pruning methods (--prune)")
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
    points += [SweepPoint(PRUNE_STRATEGY, quantize=q) for q in quantize]
    points += [SweepPoint(PRUNE_STRATEGY, prune=p, compression=c, quantize=q)
               for p in prune for c in compressions for q in prune_quantize]
    points = [dataclasses.replace(p, width=w) for w in width_list for p in points]
    if seed_list is not None:
        points = [dataclasses.replace(p, seed=x) for p in points for x in seed_list]
    unique = list(dict.fromkeys(points))
    if not unique:
        raise ValueError("the sweep is empty: give strategies, --dense, pruning or quantized baselines")
    return unique


# --------------------------------------------------------------------------------------------- the CSV


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def read_rows(csv_path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The complete rows of a sweep CSV, each with every one of :data:`CSV_COLUMNS` (a missing file has none; a
    torn last line is ignored; a sweep written by an earlier version reads with its ``artifact_bytes`` as
    ``bytes`` and the newer columns empty)."""
    path = Path(csv_path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        header = tuple(reader.fieldnames)
        if header != CSV_COLUMNS and header not in OLD_COLUMNS:
            raise ValueError(f"{path} has columns {reader.fieldnames}, not a pemn sweep's {list(CSV_COLUMNS)}; "
                             "use another output folder")
        rows = []
        for row in reader:
            if None in row or any(row.get(c) is None for c in header):
                continue  # torn or malformed line
            try:
                float(row["best_acc"])
            except ValueError:
                continue
            if "artifact_bytes" in row:
                row["bytes"] = row.pop("artifact_bytes")
            rows.append({c: row.get(c) or "" for c in CSV_COLUMNS})
        return rows


def _write_rows(csv_path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` (all of them, with :data:`CSV_COLUMNS`) to ``csv_path`` atomically: a kill leaves the old
    file or the new one, never a torn one."""
    from pemn.fileio import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in CSV_COLUMNS})
    atomic_write_bytes(csv_path, buf.getvalue().encode())


def _row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(_norm(row.get(k) or None) for k in KEY_COLUMNS)


def front_metric(rows: Iterable[Mapping[str, Any]]) -> str:
    """The primary metric of a sweep's rows (a key of :data:`FRONT_METRICS`): ``"val_loss"`` where any row has a
    validation loss (a language model's sweep: its rows all have one), else ``"final_acc"``."""
    return "val_loss" if any(_float(r.get("val_loss")) is not None for r in rows) else "final_acc"


def _measured(rows: list[dict[str, Any]], metric: str) -> list[tuple[float, float, dict[str, Any]]]:
    """``(bytes, score, row)`` for every row of ``rows`` with ``metric`` and ``bytes`` (the rows themselves, not
    copies), the score signed so that higher is better (:data:`FRONT_METRICS`)."""
    if metric not in FRONT_METRICS:
        raise ValueError(f"the front's metric is one of {', '.join(FRONT_METRICS)}, not {metric!r}")
    sign = FRONT_METRICS[metric]
    return [(b, sign * a, r) for r in rows
            if (a := _float(r.get(metric))) is not None and (b := _float(r.get("bytes"))) is not None]


def annotate_rows(rows: Iterable[Mapping[str, Any]], max_bytes: int | None = None,
                  metric: str | None = None) -> list[dict[str, Any]]:
    """``rows`` with the :data:`DERIVED_COLUMNS` (re)computed from all of them (``budget`` under ``max_bytes``:
    :func:`budget_report`'s choice, one of :data:`BUDGET_MARKS`; empty without a budget).

    The score is ``metric`` (default :func:`front_metric` of the rows): ``final_acc`` (the saved file's accuracy,
    its final epoch; higher is better) or ``val_loss`` (a language model's validation loss of the saved file;
    lower is better); the size is ``bytes``; rows lacking either are left out of both. ``on_front``: no other row
    has at most its bytes and a better score, or fewer bytes and the same score (the Pareto front of the metric vs
    bytes; identical rows are both on it). For every PEMN row (``baseline`` ... ``val_loss_vs_baseline``): the
    best-scoring row of another kind (dense, narrow, pruned, quantized) of at most its bytes (the smaller file on a
    tie): its run folder, bytes, accuracy and validation loss, and this row's accuracy and validation loss minus
    that one's (each where both rows have it); empty where no baseline is that small.
    """
    metric = front_metric(rows := list(rows)) if metric is None else metric
    out = [dict(r) for r in rows]
    for r in out:
        for c in DERIVED_COLUMNS:
            r[c] = None
    measured = _measured(out, metric)
    for nbytes, score, r in measured:
        r["on_front"] = not any(b <= nbytes and s >= score and (b < nbytes or s > score) for b, s, _ in measured)
    baselines = [(b, s, r) for b, s, r in measured if _point_of(r).kind != "pemn"]
    for nbytes, _, r in measured:
        if _point_of(r).kind != "pemn":
            continue
        fits = [(s, -b, other) for b, s, other in baselines if b <= nbytes]
        if fits:
            _, neg_bytes, best = max(fits, key=lambda t: (t[0], t[1]))
            acc, loss = _float(r.get("final_acc")), _float(r.get("val_loss"))
            best_acc, best_loss = _float(best.get("final_acc")), _float(best.get("val_loss"))
            r.update(baseline=_point_of(best).name, baseline_bytes=int(-neg_bytes), baseline_acc=best_acc,
                     baseline_val_loss=best_loss,
                     acc_vs_baseline=None if acc is None or best_acc is None else round(acc - best_acc, 6),
                     val_loss_vs_baseline=None if loss is None or best_loss is None else round(loss - best_loss, 6))
    if max_bytes is not None:
        best_row, per_method = _budget_choice(measured, max_bytes)
        for nbytes, _score, r in measured:
            r["budget"] = ("best" if r is best_row else "method best" if any(r is m for m in per_method.values())
                           else "fits" if nbytes <= max_bytes else "over")
    return out


def check_max_bytes(max_bytes: Any) -> int:
    """``max_bytes`` as a positive whole number of bytes; ValueError (what is wrong, what to give) otherwise."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"the byte budget must be a positive whole number of bytes, got {max_bytes!r}")
    return max_bytes


def _budget_choice(measured: list[tuple[float, float, dict[str, Any]]],
                   max_bytes: int) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """The best-scoring row of at most ``max_bytes`` (``measured``: (bytes, score, row), the score higher is better;
    the smaller file on a tie, then the first row), and per method (first-seen order, every method of the rows) the
    same among its rows, None where none fits."""
    def better(a: tuple[float, float, dict[str, Any]], b: tuple[float, float, dict[str, Any]] | None) -> bool:
        return b is None or a[1] > b[1] or (a[1] == b[1] and a[0] < b[0])

    best: tuple[float, float, dict[str, Any]] | None = None
    methods: dict[str, tuple[float, float, dict[str, Any]] | None] = {}
    for entry in measured:
        method = _point_of(entry[2]).method
        methods.setdefault(method, None)
        if entry[0] > max_bytes:
            continue
        if better(entry, methods[method]):
            methods[method] = entry
        if better(entry, best):
            best = entry
    per_method = {m: e[2] for m, e in methods.items() if e is not None}
    return (best[2] if best else None), per_method


def _budget_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    point = _point_of(row)
    bits = _float(row.get("bits_per_weight"))
    return {"run": point.name, "method": point.method, "label": point.label(), "model": row.get("model") or None,
            "final_acc": _float(row.get("final_acc")), "val_loss": _float(row.get("val_loss")),
            "bytes": int(float(row["bytes"])), "bits_per_weight": bits, "command": row.get("command") or None}


def budget_report(rows: Iterable[Mapping[str, Any]], max_bytes: int) -> dict[str, Any]:
    """The files of a sweep under a byte budget: the best file of at most ``max_bytes`` by the sweep's primary
    metric (``accuracy``: :func:`front_metric`, ``final_acc`` the saved file's accuracy or a language model's
    ``val_loss``, lower is better; the smaller file on a tie), and per method (:attr:`SweepPoint.method`) its best
    file of at most ``max_bytes`` (None where the method has none that small), each as its run folder, method,
    label, model, accuracy, validation loss, bytes, bits per weight and command; ``fits``: how many files are that
    small; ``smallest``: the smallest file (what a budget must allow at least). Rows without the metric or bytes are
    left out.
    """
    check_max_bytes(max_bytes)
    metric = front_metric(rows := list(rows))
    measured = _measured([dict(r) for r in rows], metric)
    best, per_method = _budget_choice(measured, max_bytes)
    methods: dict[str, Any] = {}
    for _b, _a, r in measured:
        method = _point_of(r).method
        methods.setdefault(method, _budget_entry(per_method[method]) if method in per_method else None)
    smallest = min(measured, key=lambda e: (e[0], -e[1]))[2] if measured else None
    return {"max_bytes": max_bytes, "accuracy": metric, "files": len(measured),
            "fits": sum(1 for b, _a, _r in measured if b <= max_bytes),
            "best": _budget_entry(best) if best is not None else None, "methods": methods,
            "smallest": _budget_entry(smallest) if smallest is not None else None}


def budget_lines(report: Mapping[str, Any]) -> list[str]:
    """:func:`budget_report` as the lines ``pemn sweep --max-bytes`` prints."""
    def text(e: Mapping[str, Any]) -> str:
        bits = f", {e['bits_per_weight']:g} bits/weight" if e.get("bits_per_weight") is not None else ""
        loss = f", val loss {e['val_loss']:.4f}" if e.get("val_loss") is not None else ""
        return f"{e['run']} ({e['label']}): {e['final_acc']:.2f} %{loss} in {e['bytes']:,} B{bits}"

    n = report["max_bytes"]
    if report["best"] is None:
        small = report["smallest"]
        return [f"sweep: no file of at most {n:,} B" + (f" (the smallest: {text(small)})" if small else
                                                        " (the sweep has no finished runs)")]
    lines = [f"sweep: the best file of at most {n:,} B ({report['fits']} of {report['files']} fit): "
             f"{text(report['best'])}", "sweep: the best of each method of at most that:"]
    for method, e in report["methods"].items():
        lines.append(f"  {method}: {text(e) if e is not None else 'none that small'}")
    return lines


def stored_budget(out: Path) -> int | None:
    """The byte budget recorded in ``out``'s ``sweep_budget.json`` (None without one; ValueError if it is not one)."""
    path = out / BUDGET_NAME
    if not path.is_file():
        return None
    try:
        return check_max_bytes(json.loads(path.read_text())["max_bytes"])
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ValueError(f"{path} is not a pemn sweep budget ({e}); delete it or give --max-bytes") from None


def apply_budget(out_dir: str | os.PathLike[str], max_bytes: int) -> dict[str, Any]:
    """Annotate ``out_dir/sweep.csv``'s ``budget`` column under ``max_bytes`` and write :func:`budget_report` to
    ``out_dir/sweep_budget.json`` (both atomically; later runs in the folder keep this budget until another is
    given); returns the report. ValueError for a folder without a sweep."""
    from pemn.fileio import atomic_write_bytes

    check_max_bytes(max_bytes)
    out = Path(out_dir)
    csv_path = out / CSV_NAME
    if not csv_path.is_file():
        raise ValueError(f"{out} holds no {CSV_NAME}: run the sweep first")
    rows = annotate_rows(fill_from_run_folders(read_rows(csv_path), out), max_bytes)
    _write_rows(csv_path, rows)
    report = budget_report(rows, max_bytes)
    atomic_write_bytes(out / BUDGET_NAME, (json.dumps(report, indent=2) + "\n").encode())
    return report


def _header(csv_path: Path) -> tuple[str, ...]:
    with csv_path.open(newline="") as f:
        return tuple(next(csv.reader(f), []))


def fill_from_run_folders(rows: list[dict[str, Any]], out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Complete rows of an earlier version's sweep from their run folders in ``out``, where those are still there:
    ``bits_per_weight`` (and ``model``) from the saved file, a language model's ``val_loss`` from the run's
    ``result.json`` (the saved model's)."""
    from pemn.training.artifacts import KINDS
    from pemn.training.outputs import RESULT_NAME

    out = Path(out)
    for r in rows:
        point = _point_of(r)
        if not r.get("val_loss"):
            try:
                result = json.loads((out / point.name / RESULT_NAME).read_text())
            except (OSError, ValueError):
                result = None
            loss = _float(result.get("val_loss")) if isinstance(result, dict) else None
            if loss is not None:
                r["val_loss"] = loss
        if r.get("bits_per_weight") or not _float(r.get("bytes")):
            continue
        kind = {"dense": "dense", "prune": "sparse", "quant": "quant"}.get(point.kind, "pemn")
        path = out / point.name / KINDS[kind].filename
        if not path.is_file():
            continue
        model, weights = _model_of_file(path)
        if weights:
            r["bits_per_weight"] = round(8 * float(r["bytes"]) / weights, 4)
        r["model"] = r.get("model") or model or ""
    return rows


def _model_of_file(path: Path) -> tuple[str | None, int | None]:
    """The registry model a saved file names, and its Conv/Linear/Embedding (and attention in-projection) weights:
    what ``bits_per_weight`` divides by. A pemn file counts its masked weights; the others rebuild the registry
    model the file names (no weights are loaded). None for what the file does not say."""
    from pemn.training.artifacts import kind_of_file, model_args, read_app
    from pemn.training.models import create_model
    from pemn.training.quantize import quantizable_weights

    try:
        kind = kind_of_file(path)
        app = read_app(path, kind) or {}
        name = app.get("model") if isinstance(app.get("model"), str) else None
        if kind.name == "pemn":
            from pemn.summary import summary as pemn_summary

            return name, int(pemn_summary(path, verbose=False).masked_weights)
        if name is None:
            return None, None
        import torch

        with torch.random.fork_rng(devices=[]):
            model = create_model(name, **model_args(app, str(path)))
        return name, sum(getattr(module, attr).numel() for module, attr in quantizable_weights(model).values())
    except (OSError, ValueError):
        return None, None


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
    #: :func:`budget_report` of the whole CSV under the sweep's byte budget (``max_bytes``), None without one
    budget: dict[str, Any] | None = None


def _point_overrides(point: SweepPoint, base: Mapping[str, Any], out_dir: Path, *, resume: bool = False,
                     model: str | None = None) -> dict[str, Any]:
    """The point's TrainConfig overrides; ``model`` is the sweep's model (needed by a point with a width)."""
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
    if point.width is not None:
        from pemn.training.models import model_at_width

        if model is None:
            raise ValueError(f"sweep point {point.name}: a width needs the sweep's model")
        d["model"] = model_at_width(model, point.width)
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


#: Settings in which two seeds of one grid point may differ (the seed itself, and what does not change results).
SEED_FREE_FIELDS = frozenset({"seed", "out", "resume", "eval_every", "eval_subset"}) | GRID_FREE_FIELDS


def _seed_settings(cfg: Any, model: Any) -> dict[str, Any]:
    """``cfg``'s settings that every seed of its grid point must share, with what "auto" picks resolved
    (``keep_rule``, ``init``; ``gain`` and ``variance`` by the family of ``model``, the point's fresh network,
    where there is one)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in SEED_FREE_FIELDS}
    settings["keep_rule"] = cfg.resolved_keep_rule()
    settings["init"] = cfg.resolved_init()
    if model is not None:
        settings["gain"] = cfg.resolved_gain(model)
        settings["variance"] = cfg.resolved_variance(model)
    return settings


def _fresh_network(cfg: Any) -> Any:
    """The point's freshly initialised network (what its "auto" settings are decided by), or None where it cannot
    be built without its data (a text dataset whose folder is missing)."""
    from pemn.training.data import dataset_info
    from pemn.training.workloads import workload_of_dataset

    try:
        return workload_of_dataset(cfg.dataset).build_model(cfg, dataset_info(cfg.dataset, cfg.data_dir))
    except (OSError, ValueError):  # pemn.errors.DatasetError is a ValueError
        return None


def check_earlier_seeds(out: Path, todo: Sequence[tuple[SweepPoint, Any]]) -> None:
    """ValueError (before anything trains) if a run already in ``out`` of a point to be trained, another seed of
    it, recorded other settings than this build would train the point with: typically a default that changed
    since an earlier pemn wrote the folder (rows keyed by grid point would then mix two settings as seeds of
    one). A run folder without a readable ``config.json`` is not compared."""
    from pemn.training.config import RUN_CONFIG_NAME, recorded_config, setting_text

    earlier = {}
    for row in read_rows(out / CSV_NAME):
        point = _point_of(row)
        earlier.setdefault(dataclasses.replace(point, seed=None), []).append(point)
    for point, cfg in todo:
        network = now = None  # built once per point, when an earlier seed is there to compare with
        for other in earlier.get(dataclasses.replace(point, seed=None), []):
            try:
                recorded = recorded_config(out / other.name / RUN_CONFIG_NAME)
            except (OSError, ValueError):
                continue
            if now is None:
                network = _fresh_network(cfg)
                now = _seed_settings(cfg, network)
            before = _seed_settings(recorded, network)
            differ = [k for k in now if before.get(k) != now[k]]
            if differ:
                was = ", ".join(f"{k}={setting_text(before.get(k), ',')}" for k in differ)
                will = ", ".join(f"{k}={setting_text(now[k], ',')}" for k in differ)
                asks = " ".join(f"{k}={setting_text(before.get(k), ',')}" for k in differ)
                raise ValueError(
                    f"{out / other.name} trained with {was}; this build would train {point.name} with {will} "
                    f"(pemn's defaults changed since, or other settings were given): the seeds would not be "
                    f"comparable. Use another --out (with --set {asks} to train as it did)")


def _sweep_model(base: Mapping[str, Any], recipe: str | None, config_file: str | os.PathLike[str] | None) -> str:
    """The sweep's model: ``base``'s, else the one its recipe / config file / the defaults give."""
    if base.get("model"):
        return str(base["model"])
    from pemn.training.config import resolve_config

    common = {k: v for k, v in base.items() if k not in PEMN_ONLY_KEYS | PRUNE_ONLY_KEYS}
    return resolve_config({**common, "strategy": PRUNE_STRATEGY}, recipe=recipe, config_file=config_file).model


def resolve_points(points: Sequence[SweepPoint], base_overrides: Mapping[str, Any], out_dir: str | os.PathLike[str],
                   *, recipe: str | None = None, config_file: str | os.PathLike[str] | None = None) -> list[Any]:
    """Resolve every point's TrainConfig up front (ValueError for the first contradictory one), so a bad
    grid fails before any training starts."""
    from pemn.training.config import resolve_config

    configs = []
    model = _sweep_model(base_overrides, recipe, config_file) if any(p.width is not None for p in points) else None
    for p in points:
        try:
            ov = _point_overrides(p, base_overrides, Path(out_dir), resume=True, model=model)
        except ValueError as e:
            raise ValueError(f"sweep point {p.name}: {e}") from e
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
    figure_x: str = "bytes",
    train_fn: Callable[..., Any] | None = None,
    max_bytes: int | None = None,
) -> SweepReport:
    """Train every point not already in ``out_dir/sweep.csv`` and append its row when it ends.

    ``base_overrides`` (TrainConfig fields such as model, dataset, epochs) apply to every run they mean something
    for (PEMN-only options such as ``init`` are not given to the dense / pruned runs, ``fill`` only to mp / rp,
    ``prune_scope`` only to the pruning baselines); each run writes to ``out_dir/<point.name>``, with
    ``resume=True`` where that folder holds a checkpoint (a run killed with the sweep continues from it). The common
    settings are recorded in ``out_dir/sweep.json``; re-running the folder with other ones is a ValueError, since
    the CSV's rows are keyed by grid point only; so is a new seed of a point whose earlier seed recorded other
    settings (:func:`check_earlier_seeds`: a default changed since an earlier pemn wrote the folder). All configs
    are resolved before the first run, so a contradictory grid raises ValueError without training anything. A run
    that raises stops the sweep (the exception propagates) unless ``keep_going``, which records it in the report and
    goes on. Each finished run rewrites the CSV with every row's :func:`annotate_rows` columns (a CSV of an earlier
    version is rewritten with the new columns too). Finally the figure is drawn to ``out_dir/sweep.png`` from every
    row of the CSV (:func:`sweep_figure`, x axis ``figure_x``; skipped, with ``plot_error``, if matplotlib is
    missing). ``train_fn`` replaces :func:`pemn.training.engine.train` (for tests). ``max_bytes``: a byte budget
    (:func:`apply_budget`: the CSV's ``budget`` column and ``sweep_budget.json``, in ``report.budget``); None: the
    folder's earlier budget, if any.
    """
    if figure_x not in FIGURE_AXES:
        raise ValueError(f"figure_x must be one of {', '.join(FIGURE_AXES)}, got {figure_x!r}")
    out = Path(out_dir)
    max_bytes = check_max_bytes(max_bytes) if max_bytes is not None else stored_budget(out)
    base = dict(base_overrides or {})
    # other common settings first: resolving the points reads each run's config.json for --resume
    check_settings(out, base, recipe, config_file, record=False)
    configs = resolve_points(points, base, out, recipe=recipe, config_file=config_file)
    if train_fn is None:
        from pemn.training.engine import train as train_fn
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, base, recipe, config_file)
    csv_path = out / CSV_NAME
    model = _sweep_model(base, recipe, config_file) if any(p.width is not None for p in points) else None
    done = {_row_key(r) for r in read_rows(csv_path)}
    report = SweepReport(csv=csv_path, png=None)
    say = log or (lambda _msg: None)
    todo = [(p, c) for p, c in zip(points, configs, strict=True) if p.key() not in done]
    check_earlier_seeds(out, todo)
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
        saved = getattr(result, "artifact", None) or getattr(result, "weights", None)
        nbytes = getattr(result, "artifact_bytes", None) or getattr(result, "weights_bytes", None)
        weights = _summary_value(summary, "masked_weights")
        if saved is not None and Path(saved).is_file():
            nbytes = Path(saved).stat().st_size  # the file's real size
            weights = _model_of_file(Path(saved))[1] or weights
        row = {
            "strategy": point.strategy, "ratio": point.ratio, "keep": point.keep, "prune": point.prune,
            "compression": point.compression, "quantize": point.quantize, "width": point.width, "seed": point.seed,
            "model": cfg.model, "best_acc": float(result.best_acc), "final_acc": float(result.final_acc),
            "val_loss": _float(getattr(result, "val_loss", None)), "bytes": nbytes,
            "bits_per_weight": round(8 * nbytes / weights, 4) if nbytes and weights else None,
            "paper_ratio": _summary_value(summary, "paper_ratio"),
            "honest_ratio": _summary_value(summary, "honest_ratio"),
            "seconds": round(float(seconds if seconds is not None else time.perf_counter() - start), 3),
            "command": train_command(_point_overrides(point, base, out, model=model), recipe=recipe,
                                     config_file=config_file),
        }
        _write_rows(csv_path, annotate_rows(fill_from_run_folders([*read_rows(csv_path), row], out), max_bytes))
        report.rows.append(row)
        loss = "" if row["val_loss"] is None else f"  val loss {row['val_loss']:.4f}"
        say(f"sweep: {point.name}: best {row['best_acc']:.2f}%  final {row['final_acc']:.2f}%{loss}  {row['bytes']} B")
    if any(p.seed is not None for p in points):
        report.seeds_csv = write_seed_summary(read_rows(csv_path), out / SEEDS_CSV_NAME)
    if csv_path.exists() and _header(csv_path) != CSV_COLUMNS:  # a sweep of an earlier version: the new columns
        _write_rows(csv_path, annotate_rows(fill_from_run_folders(read_rows(csv_path), out), max_bytes))
    if max_bytes is not None and csv_path.exists():
        report.budget = apply_budget(out, max_bytes)
    if plot:
        try:
            report.png = plot_sweep(read_rows(csv_path), out / PNG_NAME, title=_title(base), chance=_chance(base),
                                    x=figure_x)
        except ImportError as e:
            report.plot_error = f"no figure: matplotlib is not installed ({e})"
            say(f"sweep: {report.plot_error}")
    return report


def summarize_seeds(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (the key columns but the seed), in first-seen order: how many seeds, the mean and
    sample standard deviation (n - 1; 0 for one seed) of the best- and final-epoch accuracy and of a language
    model's validation loss (None for images), the mean file bytes,
    bits per weight and ratios, and the first seed's model and command."""
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
        losses = [x for x in (_float(r.get("val_loss")) for r in rs) if x is not None]
        loss, loss_sd = stats(losses) if losses else (None, None)
        first = rs[0]
        out.append({**{k: first.get(k) for k in KEY_COLUMNS[:-1]},
                    "seeds": " ".join(str(r.get("seed") or "-") for r in rs),
                    "best_acc_mean": best, "best_acc_std": best_sd, "final_acc_mean": final, "final_acc_std": final_sd,
                    "val_loss_mean": loss, "val_loss_std": loss_sd,
                    "model": first.get("model"), "bytes": mean_of(rs, "bytes"),
                    "bits_per_weight": mean_of(rs, "bits_per_weight"), "paper_ratio": mean_of(rs, "paper_ratio"),
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
    seed = _float(row.get("seed"))
    return SweepPoint(str(row.get("strategy") or ""), ratio=_float(row.get("ratio")), keep=_float(row.get("keep")),
                      prune=(row.get("prune") or None), compression=_float(row.get("compression")),
                      seed=None if seed is None else int(seed), quantize=(row.get("quantize") or None),
                      width=_float(row.get("width")))


def plot_sweep(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str | None = None,
               chance: float | None = None, x: str = "bytes") -> Path:
    """Draw :func:`sweep_figure` of ``rows`` to ``path`` (PNG)."""
    fig = sweep_figure(rows, title=title, chance=chance, x=x)
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


#: The paper figure's x axis: the size compression ratio, and what it measures for each kind of point.
SWEEP_XLABEL = ("Size compression ratio (%) = 1 − stored bits / dense fp32 bits\n"
                "PEMN: 1 − (N + 32·P) / (32·N), N 1-bit mask entries, P prototype floats; "
                "pruning: share of weights removed")


def sweep_figure(rows: Iterable[Mapping[str, Any]], *, title: str | None = None, chance: float | None = None,
                 x: str = "bytes") -> Any:
    """The sweep's figure as a matplotlib Figure: ``x="bytes"`` (:func:`bytes_figure`: accuracy vs file bytes,
    the front drawn) or ``x="ratio"`` (:func:`ratio_figure`: the paper's accuracy vs size compression ratio)."""
    if x == "bytes":
        return bytes_figure(rows, title=title, chance=chance)
    if x == "ratio":
        return ratio_figure(rows, title=title, chance=chance)
    raise ValueError(f"the figure's x axis is one of {', '.join(FIGURE_AXES)}, not {x!r}")


#: Marker of each method family of :func:`bytes_figure` (PEMN strategies filled, baselines hollow); others cycle.
_PEMN_MARKERS = {"RP": "o", "MP": "s", "Mask": "^", "One-layer": "v"}
_BASELINE_MARKERS = ("D", "x", "P", "h", "*", "<", ">", "p", "X", "d", "8", "H", "+", "1", "2", "3", "4")


def bytes_figure(rows: Iterable[Mapping[str, Any]], *, title: str | None = None, chance: float | None = None) -> Any:
    """The sweep's primary metric (:func:`front_metric`: test accuracy of the saved file, final epoch; a language
    model's validation loss, lower is better) vs the file's size in bytes (log axis), one marker family per method
    (:attr:`SweepPoint.method`: PEMN strategies filled, baselines hollow or line markers), the Pareto front
    (:func:`annotate_rows`) as a black step line with its points labelled, and ``chance`` (a percentage: accuracy
    figures only) as a grey line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)
    metric = front_metric(rows)
    table = annotate_rows(rows, metric=metric)
    families: dict[str, list[tuple[float, float]]] = {}
    front: list[tuple[float, float, str]] = []
    for row in table:
        nbytes, acc = _float(row.get("bytes")), _float(row.get(metric))
        if nbytes is None or acc is None:
            continue
        p = _point_of(row)
        families.setdefault(p.method, []).append((nbytes, acc))
        if row.get("on_front"):
            front.append((nbytes, acc, p.label()))
    fig = Figure(figsize=(8.0, 5.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pemn_methods = {STRATEGY_TABLE[s].label for s in PEMN_STRATEGIES}
    others = iter(_BASELINE_MARKERS)
    for method in sorted(families, key=lambda m: (m not in pemn_methods, m)):
        pts = sorted(families[method])
        if method in pemn_methods:
            marker, fill = _PEMN_MARKERS.get(method, "o"), "full"
            name = f"PEMN {method}"
        else:
            marker, fill, name = next(others, "o"), "none", method
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none", marker=marker, fillstyle=fill,
                markersize=8 if fill == "full" else 9, label=name)
    if front:
        front.sort()
        xs = [f[0] for f in front]
        ys = [f[1] for f in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1.0, linestyle="--", label="Pareto front", zorder=1)
        for i, (fx, fy, text) in enumerate(front):
            ax.annotate(text, (fx, fy), textcoords="offset points", xytext=(4, 6) if i % 2 == 0 else (4, -13),
                        fontsize=7)
    if chance is not None and metric == "final_acc":
        ax.axhline(chance, color="grey", linestyle="-.", linewidth=1.0, label=f"Chance ({chance:.3g} %)")
    if families:
        ax.set_xscale("log")
    ax.set_xlabel("File size (bytes of the saved model file, log scale)")
    if metric == "val_loss":
        ax.set_ylabel("Validation loss (nats per character) of the saved file, lower is better")
        what = "Validation loss vs bytes"
    else:
        ax.set_ylabel("Test accuracy (%) of the saved file (final epoch)")
        what = "Accuracy vs bytes"
    ax.set_title(f"{what}: {title}" if title else what)
    ax.grid(True, which="both", alpha=0.3)
    if families:
        ax.legend(loc="best", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def ratio_figure(rows: Iterable[Mapping[str, Any]], *, title: str | None = None, chance: float | None = None) -> Any:
    """Test accuracy (best epoch) vs size compression ratio (%) of sweep rows, as a matplotlib Figure (the paper's
    figure; quantized and narrow baselines have no paper ratio and are left out).

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
        if acc is None or (p.kind != "pemn" and p.width is not None):
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


def seed_summary_lines(csv_path: str | os.PathLike[str]) -> list[str]:
    """One line per setting of a sweep with ``seeds``: its grid values and the mean ± std of the best and final
    accuracies over the seeds (:func:`summarize_seeds` of the rows in ``csv_path``)."""
    lines = []
    for r in summarize_seeds(read_rows(csv_path)):
        what = " ".join(f"{k} {r[k]}" for k in ("strategy", "ratio", "keep", "prune", "compression", "quantize",
                                                 "width") if r[k])
        loss = "" if r["val_loss_mean"] is None else f"  val loss {r['val_loss_mean']:.4f} ± {r['val_loss_std']:.4f}"
        lines.append(f"  {what}: best {r['best_acc_mean']:.2f} ± {r['best_acc_std']:.2f}  final "
                     f"{r['final_acc_mean']:.2f} ± {r['final_acc_std']:.2f}{loss}  (seeds {r['seeds']})")
    return lines
