"""``pemn inspect``: what a model file holds, as the lines the command prints.

A ``.pemn`` file: its size, what it records about itself (:func:`recorded_rows`: the model, the dataset and its
preprocessing, the method, the tasks, the versions that wrote it) and :func:`pemn.summary`'s table of bytes and
ratios. A dense, pruned or quantized safetensors file (no masks, so no paper ratio): its tensors, stored values,
surviving weights and quantized bytes (:func:`plain_file_info`). :func:`inspect_lines` gives either, as text or as
one JSON document.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open

from pemn.errors import FormatError
from pemn.summary import CUT_MARK
from pemn.summary import summary as pemn_summary
from pemn.training.artifacts import ArtifactKind, file_kind_and_app
from pemn.training.quantfile import quant_info

__all__ = ["compact", "inspect_lines", "plain_file_info", "recorded_rows"]


def compact(value: Any, width: int = 100) -> str:
    """``value`` as one line of JSON, cut to ``width`` characters with a visible ``...``."""
    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= width else text[:width - len(CUT_MARK)] + CUT_MARK


def _numbers(values: Any) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]" if isinstance(values, list) else compact(values)


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and len(e.args) == 1 else str(e).strip()
    text = text or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def recorded_rows(recorded: dict[str, Any], config: dict[str, Any],
                  tasks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What a .pemn file says about itself, as (label, text) rows: the model and its arguments, the dataset and
    its preprocessing (``pemn train``'s app metadata), the method, the tasks, the versions that wrote it; every
    other app key as compact JSON."""
    app = dict(recorded.get("app") or {})
    rows: list[tuple[str, str]] = []
    model, kind = app.pop("model", None), app.pop("kind", None)
    args = app.pop("model_args", None)
    if model is None:
        rows.append(("model", "not recorded (saved without app metadata: rebuild the model in Python and "
                              "pemn.load(path, model))"))
    else:
        described = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in args.items()) if isinstance(args, dict) else ""
        rows.append(("model", f"{model}" + (f" ({described})" if described else "") + (f", {kind}" if kind else "")))
    vocab, block = app.pop("vocab", None), app.pop("block_size", None)
    if isinstance(vocab, str):
        rows.append(("vocabulary", f"{len(vocab)} characters, context {block}: {compact(vocab, 60)}"))
    pre = app.pop("preprocessing", None)
    if isinstance(pre, dict):
        pre = dict(pre)
        rows.append(("dataset", str(pre.pop("dataset", "not recorded"))))
        shape = pre.pop("input_shape", None)
        parts = ["input " + "x".join(map(str, shape))] if isinstance(shape, list) else []
        scale, mean, std = pre.pop("scale", None), pre.pop("mean", None), pre.pop("std", None)
        if mean is not None and std is not None:
            parts.append(f"x = (pixels x {scale:.6g} - mean) / std" if isinstance(scale, int | float) else
                         "x = (pixels - mean) / std")
            parts.append(f"mean {_numbers(mean)}, std {_numbers(std)}")
        classes = pre.pop("classes", None)
        if isinstance(classes, list):
            parts.append(f"{len(classes)} classes {compact(classes, 60)}")
        parts += [f"{k} {compact(v, 60)}" for k, v in pre.items()]
        rows.append(("preprocessing", "; ".join(parts) or "not recorded"))
    method = ", ".join(f"{k} {v}" for k, v in config.items()
                       if k != "strategy" and v is not None and v is not False and v != [])
    rows.append(("method", f"{config.get('strategy', '?')}" + (f": {method}" if method else "")))
    if tasks:
        names = ", ".join(str(t["name"]) for t in tasks)
        rows.append(("tasks", f"{len(tasks)}: {compact(names, 90) if len(names) > 90 else names}"))
    for key in sorted(app):
        rows.append((key, compact(app[key])))
    rows.append(("written by", f"pemn {recorded.get('pemn_version') or '?'} (torch "
                               f"{recorded.get('torch_version') or '?'}), format version "
                               f"{recorded.get('format_version') or '?'}"))
    return rows


def _tensor_table(path: Path) -> tuple[dict[str, str], dict[str, list[int]], dict[str, str]]:
    """``(metadata, shapes, dtypes)`` of a safetensors file's header; FormatError for a malformed one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            shapes = {k: list(t.get_shape()) for k, t in tensors.items()}
            dtypes = {k: str(t.get_dtype()) for k, t in tensors.items()}
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise FormatError(f"{path}: corrupt safetensors file ({_one_line(e)})") from None
    return meta, shapes, dtypes


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def plain_file_info(path: str | os.PathLike[str], kind: ArtifactKind) -> dict[str, Any]:
    """What a dense / pruned / quantized safetensors file holds (``pemn inspect --json``): ``path``, ``kind``,
    ``file_bytes``, ``tensors``, ``stored_values``, ``metadata`` (the header's, less the pruned file's manifest);
    a quantized file's ``quantized`` (:func:`pemn.training.quantfile.quant_info`); a pruned file's
    ``kept_weights``, ``prunable_weights`` and ``sparsity`` (where its manifest is readable)."""
    path = Path(path)
    meta, shapes, _ = _tensor_table(path)
    info: dict[str, Any] = {"path": str(path), "kind": kind.name, "file_bytes": path.stat().st_size,
                            "tensors": len(shapes), "stored_values": sum(_numel(s) for s in shapes.values()),
                            "metadata": {k: v for k, v in meta.items() if k != "manifest"}}
    if kind.name == "quant":
        info["quantized"] = quant_info(path)
    if kind.name == "sparse" and "manifest" in meta:
        try:
            manifest = json.loads(meta["manifest"])
            kept = sum(int(e["kept"]) for e in manifest)
            prunable = sum(_numel(e["shape"]) for e in manifest)
            info.update(kept_weights=kept, prunable_weights=prunable,
                        sparsity=1 - kept / prunable if prunable else None)
        except (ValueError, KeyError, TypeError):
            pass
    return info


def _plain_lines(path: Path, kind: ArtifactKind, info: dict[str, Any]) -> list[str]:
    """The text of :func:`plain_file_info`: what the file is, its counts and bytes, one line per tensor."""
    _, shapes, dtypes = _tensor_table(path)
    lines = [f"{path}  ({info['file_bytes']:,} bytes): {kind.description}, not a pemn artifact (no masks or "
             "prototype)",
             f"{info['tensors']} tensors, {info['stored_values']:,} stored values"
             + (f"; {info['kept_weights']:,} of {info['prunable_weights']:,} prunable weights survive "
                f"(sparsity {100 * info['sparsity']:.2f} %)" if info.get("sparsity") is not None else "")]
    q = info.get("quantized")
    if q is not None:
        pruned = (f", {q['stored_codes']:,} survivors in {q['pruned_layers']} pruned layers"
                  if q["pruned_layers"] else "")
        lines.append(f"{q['method']}: {q['quantized_weights']:,} weights in {q['layers']} layers at "
                     f"{q['code_bits_per_weight']:.3f} code bits per weight ({', '.join(q['codings'])} codes{pruned}; "
                     f"whole file {q['bits_per_weight']:.3f} bits per weight); bytes: "
                     f"codes {q['code_bytes']:,} + scales {q['scale_bytes']:,} + extras {q['extras_bytes']:,} = "
                     f"payload {q['payload_bytes']:,}; index and header {q['file_bytes'] - q['payload_bytes']:,}")
    lines += [f"  {k:<40} {'x'.join(map(str, shapes[k])) or 'scalar':<20} {dtypes[k]}" for k in sorted(shapes)]
    return lines


def inspect_lines(artifact: str | os.PathLike[str], *, as_json: bool = False) -> list[str]:
    """What ``pemn inspect`` prints for the model file at ``artifact`` (see the module doc); ``as_json``: one
    indented JSON document (:meth:`pemn.summary.Summary.to_dict` of a .pemn file, :func:`plain_file_info` of any
    other). :class:`~pemn.training.errors.OptionError` for a folder, FormatError for a file that is no model."""
    path = Path(artifact)
    kind, _ = file_kind_and_app(path)
    if kind.name != "pemn":
        info = plain_file_info(path, kind)
        return [json.dumps(info, indent=2)] if as_json else _plain_lines(path, kind, info)
    s = pemn_summary(path, verbose=False)
    if as_json:
        return [json.dumps(s.to_dict(), indent=2, default=str)]
    return [f"{path}  ({s.file_bytes:,} bytes)", "recorded in the file:",
            *(f"  {label:<14} {text}" for label, text in recorded_rows(s.recorded, s.config, s.tasks)),
            "", s.table()]
