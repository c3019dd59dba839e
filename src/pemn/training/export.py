"""Export a (materialized) model to formats other tools read: safetensors state_dicts and ONNX.

Both take a *plain* PyTorch model, e.g. :func:`pemn.materialize` of a loaded PEMN model, so the result
has no pemn classes and no pemn dependency:

- :func:`export_pt` writes the dense ``state_dict`` as a ``.safetensors`` file (never a pickle) plus a
  small JSON sidecar describing how to rebuild the architecture (model name, shape arguments...).
- :func:`export_onnx` writes an ONNX graph with ``torch.onnx.export`` (the torch.export-based "dynamo"
  exporter first, which needs ``onnxscript``; the legacy TorchScript exporter if that fails) and, when
  ``onnxruntime`` is installed, runs the same input through ONNX Runtime and torch and checks that the
  outputs agree.

:func:`export_model_file` is ``pemn export``: a trained model file (any kind the app reads) rebuilt from its app
metadata and written as either; a transformers model as a ``save_pretrained`` directory.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from pemn._version import __version__
from pemn.artifact import load as pemn_load
from pemn.convert import is_converted, materialize
from pemn.errors import PEMNError
from pemn.fileio import atomic_write_bytes
from pemn.layers import MaskedLayer, MaskedWeight
from pemn.stfile import save_bytes
from pemn.training.artifacts import describe_inputs, file_kind_and_app, open_model_file
from pemn.training.data import DatasetInfo, preprocessing
from pemn.training.errors import OptionError
from pemn.training.models import create_model
from pemn.training.workloads import workload_of_app

__all__ = ["ONNX_TOLERANCE", "ExportError", "export_image_model", "export_model_file", "export_onnx",
           "export_preprocessing", "export_pt", "export_transformers", "export_transformers_file", "sidecar_path"]

#: Largest allowed max-abs difference between ONNX Runtime's and torch's outputs.
ONNX_TOLERANCE = 1e-4
_EXTERNAL_DATA_BYTES = 1 << 30


class ExportError(PEMNError):
    """A model could not be exported, or the exported model does not reproduce the torch outputs."""


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON file written next to an exported ``.safetensors`` file (``x.safetensors`` → ``x.json``)."""
    return Path(path).with_suffix(".json")


def export_pt(model: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``model``'s plain dense ``state_dict`` to ``path`` (safetensors) and ``meta`` to a JSON sidecar.

    Load it back with ``model.load_state_dict(safetensors.torch.load_file(path))`` into a model built as
    the sidecar says. Every tensor is stored as its own contiguous copy (safetensors refuses shared
    storage). ``meta`` (JSON-ready) is also stored in the file's safetensors metadata under
    ``"pemn_export"``. Returns ``{"weights": path, "meta": sidecar}``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ExportError(f"export_pt writes safetensors (not a pickle); name the file *.safetensors, "
                          f"got {str(path)!r}")
    if any(isinstance(m, MaskedLayer | MaskedWeight) for m in model.modules()):
        raise ExportError("the model still contains pemn layers; export pemn.materialize(model) instead")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta or {})
    meta.setdefault("format", "safetensors state_dict")
    meta.setdefault("tensors", len(state))
    meta.setdefault("parameters", sum(int(v.numel()) for v in state.values()))
    text = json.dumps(meta, indent=2, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save_bytes(state, metadata={"pemn_export": json.dumps(meta, sort_keys=True)}))
    side = sidecar_path(path)
    atomic_write_bytes(side, (text + "\n").encode())
    return {"weights": path, "meta": side}


def _export_graph(model: nn.Module, example: torch.Tensor, path: Path) -> tuple[str, list[str]]:
    """Run torch.onnx.export, dynamo first; returns the exporter used and why earlier attempts failed."""
    failures: list[str] = []
    # weights inside the .onnx file unless protobuf's 2 GiB limit forces a separate .onnx.data file
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    external = size >= _EXTERNAL_DATA_BYTES
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("dynamo", {"dynamo": True, "external_data": external,
                    "dynamic_shapes": ({0: torch.export.Dim("batch")},)}),
        ("dynamo (static batch)", {"dynamo": True, "external_data": external}),
        ("torchscript", {"dynamo": False, "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}),
    ]
    for name, kwargs in attempts:
        sink = io.StringIO()
        try:
            # the exporters are chatty (progress lines, deprecation and "torchvision not installed" notices)
            with warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_loggers():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                                  verbose=False, **kwargs)
            return name, failures
        except Exception as e:  # each exporter fails in its own ways; try the next one
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            failures.append(f"{name}: {type(e).__name__}: {msg[:300]}")
    raise ExportError("torch.onnx.export failed with every exporter: " + " | ".join(failures))


def _set_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Add ``metadata`` to the ONNX file's ``metadata_props`` (atomically; external weights stay where they are)."""
    try:
        import onnx
    except ImportError as e:
        raise ExportError(f"writing ONNX metadata needs the onnx package ({e}); pip install onnx") from None
    proto = onnx.load(str(path), load_external_data=False)
    keep = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    atomic_write_bytes(path, proto.SerializeToString())


@contextlib.contextmanager
def _quiet_loggers():
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike[str], *,
                check: bool = True, tolerance: float = ONNX_TOLERANCE,
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Export ``model`` (in eval mode, on CPU) to ONNX at ``path`` and check it with ONNX Runtime.

    ``example_input`` is one batch (``N×C×H×W``); the batch dimension is exported as dynamic where the
    exporter allows it. With ``check=True`` and ``onnxruntime`` importable, the same input is run through
    ONNX Runtime and torch; :class:`ExportError` is raised if their max abs difference is not below
    ``tolerance``. Weights are stored inside the ``.onnx`` file unless the model has 1 GiB or more of them
    (then in ``<path>.data`` next to it). Returns ``{"path", "exporter", "external_data", "checked",
    "max_abs_diff", "tolerance", "reason", "fallbacks"}``; ``checked`` is False (with ``reason``) when
    onnxruntime is not installed. ``metadata`` (text keys and values) goes into the model's ``metadata_props``
    (readable with ``onnx.load(path).metadata_props`` or ONNX Runtime's ``get_modelmeta().custom_metadata_map``);
    it needs the ``onnx`` package.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).cpu()  # export and check on the CPU; the caller's model stays where it is
    was_training = model.training
    model = model.eval()
    example = example_input.detach().to("cpu", torch.float32)
    try:
        with torch.no_grad():
            expected = model(example)
        exporter, fallbacks = _export_graph(model, example, path)
    finally:
        model.train(was_training)
    data_file = path.with_name(path.name + ".data")
    result: dict[str, Any] = {"path": str(path), "exporter": exporter,
                              "external_data": str(data_file) if data_file.exists() else None,
                              "checked": False, "max_abs_diff": None,
                              "tolerance": tolerance, "reason": None, "fallbacks": fallbacks}
    if metadata:
        _set_onnx_metadata(path, metadata)
    try:
        import onnx

        onnx.checker.check_model(str(path))
    except ImportError:
        pass
    except Exception as e:
        raise ExportError(f"{path}: the exported ONNX model is invalid: {e}") from None
    if not check:
        result["reason"] = "check disabled"
        return result
    try:
        import onnxruntime as ort
    except ImportError:
        result["reason"] = "onnxruntime is not installed (pip install onnxruntime)"
        return result
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.numpy()}
    got = torch.from_numpy(session.run(None, feed)[0])
    if got.shape != expected.shape:
        raise ExportError(f"{path}: ONNX Runtime output shape {tuple(got.shape)} != torch {tuple(expected.shape)}")
    diff = float((got - expected).abs().max()) if got.numel() else 0.0
    result.update(checked=True, max_abs_diff=diff)
    if not diff < tolerance:
        raise ExportError(f"{path}: ONNX Runtime and torch outputs differ by {diff:.3g} (max abs), "
                          f"tolerance {tolerance:g}")
    return result


# ----------------------------------------------------------------------------------------- pemn export


def export_preprocessing(app: dict[str, Any] | None, info: DatasetInfo | None, shape: dict[str, int],
                         data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """How inputs must be prepared for the exported model: what the model file records (its ``app`` metadata), else
    what the dataset says (:func:`pemn.training.data.preprocessing`), else only the input shape."""
    if app is not None and isinstance(app.get("preprocessing"), dict):
        return describe_inputs(app, data_dir)
    if info is not None:
        return preprocessing(info, data_dir)
    return {"input_shape": [shape["in_channels"], shape["image_size"], shape["image_size"]], "layout": "NCHW",
            "dtype": "float32", "note": "normalisation unknown: export with --dataset NAME to record it"}


def _check_pt(out: Path, model_name: str, shape: dict[str, int], reference: nn.Module,
              example: torch.Tensor) -> float:
    """The max abs difference between ``reference`` and the export at ``out`` loaded into a fresh registry model;
    ExportError unless it is below 1e-5."""
    fresh = create_model(model_name, **shape)
    fresh.load_state_dict(load_file(str(out)), strict=True)
    fresh.eval()
    reference.eval()
    with torch.no_grad():
        ref = reference(example.to(next(reference.parameters()).device)).cpu()
        diff = float((fresh(example) - ref).abs().max())
    if not diff < 1e-5:
        raise ExportError(f"{out}: the reloaded export differs from the pemn model by {diff:.3g}")
    return diff


def export_image_model(model: nn.Module, shape: dict[str, int], info: DatasetInfo | None, model_name: str,
                       app: dict[str, Any] | None, *, fmt: str, out: Path, source: Path, source_kind: str,
                       data_dir: str | os.PathLike[str] | None = None,
                       log: Callable[[str], None] = print) -> None:
    """``pemn export`` of a registry image classifier (``model``, loaded from ``source``): materialized into plain
    layers and written as ``fmt`` ``"pt"`` (a safetensors state_dict and its sidecar, checked by reloading it into
    a fresh registry model) or ``"onnx"`` (checked with onnxruntime when installed); each line of the report goes
    to ``log``."""
    plain = materialize(model) if is_converted(model) else model
    plain.eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, shape["in_channels"], shape["image_size"], shape["image_size"], generator=gen)
    pre = export_preprocessing(app, info, shape, data_dir)
    if fmt == "pt":
        meta = {"model": model_name, **shape, "source": str(source), "source_kind": source_kind,
                "pemn_version": __version__,
                "rebuild": f"pemn.training.models.create_model({model_name!r}, num_classes={shape['num_classes']}, "
                           f"in_channels={shape['in_channels']}, image_size={shape['image_size']})"
                           ".load_state_dict(safetensors.torch.load_file(path))"}
        meta.update(preprocessing=pre, **({"dataset": info.name} if info is not None else {}))
        written = export_pt(plain, out, meta)
        diff = _check_pt(out, model_name, shape, model, example)
        log(f"wrote {written['weights']} ({written['weights'].stat().st_size:,} bytes, safetensors state_dict) "
            f"and {written['meta']}")
        log(f"check: reloaded into a fresh {model_name}: max abs diff vs the pemn model {diff:.3g}")
        return
    props = {"pemn.model": model_name, "pemn.source": str(source), "pemn.version": __version__,
             "pemn.preprocessing": json.dumps(pre, sort_keys=True),
             **{f"pemn.{k}": json.dumps(pre[k]) for k in ("input_shape", "scale", "mean", "std", "classes")
                if k in pre}}
    result = export_onnx(plain, example, out, metadata=props)
    log(f"wrote {out} ({out.stat().st_size:,} bytes, ONNX, exporter: {result['exporter']})"
        + (f" with its weights in {result['external_data']}" if result.get("external_data") else ""))
    for note in result.get("fallbacks") or []:
        log(f"note: exporter attempt failed first: {note}")
    if result["checked"]:
        log(f"check: onnxruntime vs torch max abs diff {result['max_abs_diff']:.3g} "
            f"(< {result['tolerance']:g}) on a {tuple(example.shape)} input")
    else:
        log(f"check: skipped ({result['reason']})")


def export_transformers(path: Path, app: dict[str, Any], out: Path, *, log: Callable[[str], None] = print) -> None:
    """A transformers model's dense export: ``save_pretrained`` of the materialized model (rebuilt from the file at
    ``path``, :func:`pemn.load` with no model) into the directory ``out``, checked by reloading it with
    ``from_pretrained`` (every tensor equal); RuntimeError if transformers is missing."""
    try:
        rebuilt = pemn_load(path)
    except ImportError as e:  # transformers is not installed
        raise RuntimeError(str(e)) from None
    dense = materialize(rebuilt)
    dense.save_pretrained(out)
    back = type(dense).from_pretrained(out).eval()
    mine, theirs = dense.state_dict(), back.state_dict()
    differ = sorted(k for k in mine if k not in theirs or not torch.equal(mine[k], theirs[k]))
    if differ or set(theirs) - set(mine):
        raise ExportError(f"{out}: from_pretrained does not give back the exported model ({differ[:3]})")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log(f"wrote {out}/ ({size:,} bytes: a transformers save_pretrained directory, dense {app['model']})")
    log(f"check: transformers.{app['model']}.from_pretrained({str(out)!r}) gives back all {len(mine):,} tensors "
        "exactly")


def export_model_file(artifact: str | os.PathLike[str], *, fmt: str, output: str | os.PathLike[str] | None = None,
                      model: str | None = None, dataset: str | None = None, data_dir: str | None = None,
                      shape: dict[str, int | None] | None = None, log: Callable[[str], None] = print) -> Path:
    """``pemn export``: the model file at ``artifact`` rebuilt (its app metadata, else ``model``/``dataset``/
    ``shape`` or the run's config.json: :func:`pemn.training.artifacts.open_model_file`) and written as ``fmt``
    (:func:`export_image_model`) to ``output`` (default: beside it, ``<stem>.dense.safetensors`` or
    ``<stem>.onnx``); a transformers model: :func:`export_transformers_file`. Returns what was written.
    :class:`~pemn.training.errors.OptionError` for a model export does not write, an output name of the wrong
    kind or one that would overwrite the file, or options that contradict it."""
    path = Path(artifact)
    kind, app = file_kind_and_app(path)
    workload = workload_of_app(app)
    if workload is not None and not workload.exportable:
        raise OptionError(f"{path} holds {workload.holds}; pemn export writes image classifiers (NCHW float input)")
    if (app or {}).get("kind") == "transformers":
        assert app is not None
        return export_transformers_file(path, app, fmt=fmt, output=output, log=log)
    suffix = ".onnx" if fmt == "onnx" else ".safetensors"
    out = Path(output) if output else path.with_name(path.stem + (".dense" if suffix != ".onnx" else "") + suffix)
    if out.suffix != suffix:
        raise OptionError(f"--format {fmt} writes a {suffix} file (a safetensors state_dict, never a pickle), "
                          f"so name the output *{suffix}, not {out.name!r}")
    if out.resolve() == path.resolve():
        raise OptionError(f"the output {out} would overwrite the artifact; give another -o")
    opened = open_model_file(artifact, app, model=model, dataset=dataset, data_dir=data_dir, shape=shape, data=False)
    export_image_model(opened.model, opened.shape, opened.info, opened.name, app, fmt=fmt, out=out, source=path,
                       source_kind=kind.name, data_dir=opened.data_dir, log=log)
    return out


def export_transformers_file(path: Path, app: dict[str, Any], *, fmt: str,
                             output: str | os.PathLike[str] | None = None,
                             log: Callable[[str], None] = print) -> Path:
    """``pemn export`` of a transformers model's file (:func:`export_transformers`) into ``output`` (default:
    ``<stem>.dense`` beside it), a new ``save_pretrained`` directory; OptionError for ``fmt`` onnx or an existing
    output."""
    if fmt != "pt":
        raise OptionError(f"{path} holds a transformers {app['model']}; pemn export writes it as a transformers "
                          "directory (--format pt). For ONNX, export pemn.materialize(pemn.load(FILE)) with "
                          "torch.onnx.export or optimum, giving the inputs your task uses")
    out = Path(output) if output else path.with_name(path.stem + ".dense")
    if out.exists():
        raise OptionError(f"the output {out} exists; give a new directory with -o (a transformers model exports "
                          "as a save_pretrained directory: config.json + model.safetensors)")
    export_transformers(path, app, out, log=log)
    return out
