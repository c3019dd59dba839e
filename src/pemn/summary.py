"""Counts, bytes and compression ratios of a converted model or an artifact file."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pemn.artifact import Artifact, parse, read, to_bytes
from pemn.convert import DENSE_WARN_SHARE, DenseReport, DenseTensor, DenseType, dense_report

#: Byte components of a file: ``extras`` are the dense parameters (biases, norm affine...), ``norm_stats`` the
#: persistent buffers (running statistics...) and the folded norms' scale and shift, ``scales`` the int8
#: quantisation parameters, ``header`` the container header and the compressed index.
COMPONENTS = ("masks", "prototype", "extras", "norm_stats", "scales", "header")
_COMPONENT_OF = {"masks": "masks", "prototype": "prototype", "params": "extras", "buffers": "norm_stats",
                 "folds": "norm_stats", "qparams": "scales"}


@dataclass
class LayerSummary:
    name: str
    shape: tuple[int, ...]
    masked_weights: int
    unique_values: int
    kept: int
    kept_fraction: float
    mask_bytes: int
    #: the model its mask was coded with under ``coding="context"`` (:data:`pemn.coding.CONTEXT_MODELS`), else ""
    mask_model: str = ""


@dataclass
class PEMNSummary:
    """What a PEMN model costs.

    ``paper_ratio`` is the paper's size compression ratio ``1 - (N + 32 P) / (32 N)`` (masks at 1 bit, the
    prototype at 32 bits, everything else uncounted). ``honest_ratio`` is the dense fp32 size of the whole
    model (every masked weight, parameter and float buffer at 4 bytes) divided by the artifact's size in
    bytes. For a model (not a file), the bytes are those of the artifact :func:`pemn.save` would write with
    the given ``coding`` and ``prototype`` storage (it is built in memory). Every tensor counts once: a
    weight tied between layers is one masked weight, stored once, and counted once in both sizes.

    ``dense`` says what stayed dense: for a model, by the type of the module holding each tensor (see
    :func:`pemn.dense_report`); for a file, by kind (parameters / buffers), with every tensor of at least
    1 % of the model by name.
    """

    strategy: str
    coding: str
    prototype_storage: str
    masked_weights: int
    unique_values: int
    kept: int
    layers: list[LayerSummary]
    bytes: dict[str, int]
    file_bytes: int
    dense_bytes: int
    paper_ratio: float
    honest_ratio: float
    source: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    dense: DenseReport | None = None
    #: a multi-task file (:mod:`pemn.taskfile`): one row per task (its bytes and keep); the layers are the first
    #: task's, ``bytes`` and ``dense_bytes`` count every task
    tasks: list[dict[str, Any]] = field(default_factory=list)
    #: what the file says about itself (a file's summary): ``pemn_version``, ``torch_version``, ``format_version``
    #: and ``app``, the JSON object its writer stored (``pemn train``: the model, its arguments, the preprocessing)
    recorded: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.masked_weights

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kept_fraction"] = self.kept_fraction
        return d

    def table(self) -> str:
        """A readable per-layer and total table."""
        models = any(lay.mask_model for lay in self.layers)  # a context-coded file: each mask's model
        rows = [f"{'layer':<40} {'shape':<20} {'N':>10} {'P':>8} {'kept':>7} {'mask B':>9}"
                + (" mask model" if models else "")]
        for lay in self.layers:
            rows.append(f"{fit_name(lay.name, 40):<40} {'x'.join(map(str, lay.shape)):<20} {lay.masked_weights:>10,} "
                        f"{lay.unique_values:>8,} {lay.kept_fraction:>7.3f} {lay.mask_bytes:>9,}"
                        + (f" {lay.mask_model}" if models else ""))
        rows.append("-" * len(rows[0]))
        rows.append(f"{'total':<40} {'':<20} {self.masked_weights:>10,} {self.unique_values:>8,} "
                    f"{self.kept_fraction:>7.3f} {self.bytes['masks']:>9,}")
        rows.append("")
        rows.append(f"strategy {self.strategy}, coding {self.coding}, prototype stored as "
                    f"{self.prototype_storage}; unique values P = {self.unique_values:,}")
        parts = ", ".join(f"{k} {self.bytes[k]:,}" for k in COMPONENTS)
        rows.append(f"bytes: {parts}; file {self.file_bytes:,}")
        rows.append(f"{paper_ratio_text(self.paper_ratio)}  |  {honest_ratio_text(self.honest_ratio)} "
                    f"(dense fp32 {self.dense_bytes:,} B / file {self.file_bytes:,} B)")
        if self.dense is not None:
            rows.append(self.dense.table())
        if self.tasks:
            rows.append("")
            rows.append(f"{len(self.tasks)} tasks (the layers above are task {self.tasks[0]['name']!r}'s):")
            rows.append(f"  {'task':<24} {'classes':>7} {'keep':>7} {'mask B':>9} {'bound B':>9} {'extras B':>9} "
                        f"{'total B':>9}")
            for t in self.tasks:
                classes = "-" if t["classes"] is None else str(t["classes"])
                rows.append(f"  {fit_name(t['name'], 24):<24} {classes:>7} {t['kept_fraction']:>7.4f} "
                            f"{t['mask_bytes']:>9,} {t['entropy_bound_bytes']:>9,} {t['extras_bytes']:>9,} "
                            f"{t['data_bytes']:>9,}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        """One line (what a REPL echoes after :func:`summary` has printed the table)."""
        where = f"{self.source!r}, " if self.source else ""
        return (f"<PEMNSummary {where}{self.strategy}: {self.masked_weights:,} masked weights, "
                f"P={self.unique_values:,}, kept {self.kept_fraction:.3f}, {self.file_bytes:,} bytes, "
                f"{paper_ratio_text(self.paper_ratio)}, "
                f"{honest_ratio_text(self.honest_ratio)}; .table() / .to_dict() for details>")


#: What marks a name cut to fit a column: its start is left out, the end (the most specific part) kept.
CUT_MARK = "..."


def fit_name(name: str, width: int) -> str:
    """``name`` if it fits in ``width`` characters, else ``...`` and its last ``width - 3``."""
    return name if len(name) <= width else CUT_MARK + name[len(name) - (width - len(CUT_MARK)):]


def paper_ratio(masked_weights: int, unique_values: int) -> float:
    """The paper's size compression ratio ``1 - (N + 32 P) / (32 N)``."""
    return 1.0 - (masked_weights + 32 * unique_values) / (32 * masked_weights)


def paper_ratio_text(ratio: float) -> str:
    """``paper ratio 96.80 %``: how every pemn output prints :attr:`PEMNSummary.paper_ratio` (README, "Sizes")."""
    return f"paper ratio {100 * ratio:.2f} %"


def honest_ratio_text(ratio: float) -> str:
    """``honest ratio 25.13x``: how every pemn output prints :attr:`PEMNSummary.honest_ratio`."""
    return f"honest ratio {ratio:.2f}x"


def _dense_fp32_values(entry: list) -> int:
    """How many float values a dense-index entry stands for in the dense model: int8-coded ones count as the
    floats they were, a folded BatchNorm's ``[2, C]`` as its 4·C (γ, β, running mean and variance)."""
    _, kind, dtype, shape = entry[:4]
    if not (dtype.startswith(("float", "bfloat")) or len(entry) == 5):
        return 0
    return math.prod(shape) * (2 if kind.startswith("fold") else 1)  # a whole fold, or one of its two rows


def _unique_in_prefix(config: Any, name: str, source: Any, n: int, cache: dict[str, Any]) -> int:
    """How many of ``source``'s stored values the first ``n`` values a layer reads hold. A layer reads the prefix
    of its source: with plain tiling (``fill="copy"``) or an untiled source, all distinct up to the stored
    length; with ``fill="rand"`` of a tiled (rp) source, position ``k`` holds stored entry ``perm[k] % length``,
    and only the entries the shuffled prefix reaches count (fewer than ``min(n, length)``)."""
    if config.fill != "rand" or source.expanded == source.length:
        return min(n, source.length)
    import numpy as np

    from pemn.prototype import permutation

    if name not in cache:
        cache[name] = permutation(config.seed, source.expanded) % source.length
    return int(np.unique(cache[name][:n]).size)


def summarize(art: Artifact) -> PEMNSummary:
    """The summary of a parsed artifact."""
    from pemn.prototype import plan

    by_component = dict.fromkeys(COMPONENTS, 0)
    for name, t in art.tensors.items():
        if art.tasks and name.startswith("tasks."):  # a multi-task file: tasks.<i>.masks, tasks.<i>.params...
            name = name.split(".", 2)[2]
        component = _COMPONENT_OF.get(name.split(".")[0])
        if component:
            by_component[component] += t.numel() * t.element_size()
    by_component["header"] = art.file_bytes - sum(by_component.values())
    shapes = [tuple(e["shape"]) for e in art.manifest]
    sources, assignments = plan(art.config, shapes)
    permutations: dict[str, Any] = {}
    layers = []
    for e, shape, assign in zip(art.manifest, shapes, assignments, strict=True):
        n = math.prod(shape)
        unique = _unique_in_prefix(art.config, assign.source, sources[assign.source], n, permutations)
        model = e.get("model", "order0") if art.coding == "context" else ""
        layers.append(LayerSummary(e["name"], shape, n, unique, e["kept"], e["kept"] / n, e["bytes"], model))
    n_total = sum(lay.masked_weights for lay in layers)
    p_total = sum(s.length for s in sources.values())
    dense_numel = sum(_dense_fp32_values(e) for e in art.dense)
    dense_bytes = 4 * (n_total + dense_numel) * max(1, len(art.tasks))  # every task is a model
    by_kind: dict[str, list[int]] = {}
    large = []
    for e in art.dense:
        values = _dense_fp32_values(e)
        if values:
            entry = by_kind.setdefault({"param": "parameters", "buffer": "buffers"}.get(e[1], "folded norms"), [0, 0])
            entry[0] += 1
            entry[1] += values
            if values >= DENSE_WARN_SHARE * (n_total + dense_numel):
                large.append(DenseTensor(e[0], e[1], values, values / (n_total + dense_numel), "stored dense",
                                         tuple(e[3])))
    total = n_total + dense_numel
    kinds = sorted((DenseType(k, n, v, v / total) for k, (n, v) in by_kind.items()), key=lambda d: -d.elements)
    return PEMNSummary(
        strategy=art.config.strategy, coding=art.coding, prototype_storage=art.prototype_storage,
        masked_weights=n_total, unique_values=p_total, kept=sum(lay.kept for lay in layers), layers=layers,
        bytes=by_component, file_bytes=art.file_bytes, dense_bytes=dense_bytes,
        paper_ratio=paper_ratio(n_total, p_total), honest_ratio=dense_bytes / art.file_bytes,
        config=art.config.to_dict(), dense=DenseReport(total, n_total, kinds, sorted(large, key=lambda d: -d.elements)),
        tasks=_task_rows(art), recorded=_recorded(art))


def _recorded(art: Artifact) -> dict[str, Any]:
    """What a file records about itself: the versions that wrote it, and its writer's app object."""
    meta = art.metadata
    return {"pemn_version": meta.get("pemn_version"), "torch_version": meta.get("torch_version"),
            "format_version": art.format_version, "app": dict(art.app)}


def _task_rows(art: Artifact) -> list[dict[str, Any]]:
    if not art.tasks:
        return []
    from pemn.taskfile import task_rows

    return task_rows(art)


def summary(model_or_path: nn.Module | str | os.PathLike[str], *, coding: str = "packed",
            prototype: str = "values", extras_dtype: str | None = None, fold_norms: bool = False,
            verbose: bool = True) -> PEMNSummary:
    """Summarise a converted model (as the artifact it would save to) or an artifact file.

    Prints the table unless ``verbose=False``; returns the :class:`PEMNSummary` either way.
    """
    if isinstance(model_or_path, nn.Module):
        result = summarize(parse(to_bytes(model_or_path, coding=coding, prototype=prototype,
                                         extras_dtype=extras_dtype, fold_norms=fold_norms)))
        result.dense = dense_report(model_or_path)
        result.recorded = {}  # a model in memory: no file records anything yet
    else:
        result = summarize(read(model_or_path))
        result.source = str(Path(model_or_path))
    if verbose:
        print(result.table())
    return result
