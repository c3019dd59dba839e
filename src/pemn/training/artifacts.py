"""The trained-model files: their kinds (:data:`KINDS`), the ``app`` metadata that makes each file self-describing,
and :func:`load_model`, which rebuilds the trained model from the file alone.

A run writes one of four kinds of file (the row of :data:`KINDS` says how it is written, read and reported):
``pemn`` (``model.pemn``, format tag ``pemn``: seed, prototype and 1-bit masks, :func:`pemn.save`), ``sparse``
(``model.sparse.safetensors``, tag ``pemn-sparse``: a pruned dense model, :func:`~pemn.training.prune.save_sparse`),
``quant`` (``model.quant.safetensors``, tag ``pemn-quant``: a quantized dense model, packed codes and per-channel
scales, :mod:`pemn.training.quantfile`) and ``dense`` (``model.safetensors``, tag ``pt``: a plain state_dict; any
other safetensors file reads as dense).

Each file carries an ``app`` object (JSON; :func:`pemn.save`'s ``app=`` for ``.pemn`` files, the ``pemn_app``
metadata key of the safetensors files) saying what rebuilds the model and its inputs:

- image classifiers (:func:`image_app`): ``{"kind": "image-classifier", "model": registry name, "model_args":
  {"num_classes", "in_channels", "image_size"}, "preprocessing": {...}}`` (the dataset, its normalisation, the
  input shape and, where the data defines them, the class names: :func:`image_app`);
- character-level language models (:func:`pemn.training.sample.lm_app`): ``{"kind": "char-lm", "model",
  "vocab", "block_size"}``.

Files written before the app metadata existed have none (:func:`read_app` returns None); the CLI then takes the
architecture from ``--model``/``--dataset`` or the ``config.json`` beside the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from pemn.artifact import load as pemn_load
from pemn.artifact import read as pemn_read
from pemn.artifact import save as pemn_save
from pemn.errors import ArchitectureMismatchError, FormatError
from pemn.fileio import atomic_write_bytes
from pemn.stfile import save_bytes
from pemn.summary import summary as pemn_summary
from pemn.training.checkpoint import CHECKPOINT_FORMAT, cpu_copy
from pemn.training.errors import DatasetError, OptionError
from pemn.training.prune import load_sparse, pruning_masks, save_sparse
from pemn.training.quantfile import QUANT_FORMAT, load_quant, quant_info, save_quant

if TYPE_CHECKING:
    from pemn.training.config import TrainConfig
    from pemn.training.data import DatasetInfo

__all__ = ["APP_KEY", "IMAGE_APP_KIND", "KINDS", "ArtifactKind", "OpenedModel", "app_dataset", "app_metadata",
           "describe_inputs", "file_kind_and_app", "image_app", "input_info", "kind_of", "kind_of_file", "load_model",
           "model_args",
           "open_model_file", "read_app", "recorded_data_dir", "run_config"]

#: Metadata key of the app object in the plain safetensors files (dense and pruned models).
APP_KEY = "pemn_app"
#: ``app["kind"]`` of an image classifier.
IMAGE_APP_KIND = "image-classifier"
_SHAPE_ARGS = ("num_classes", "in_channels", "image_size")


# ----------------------------------------------------------------------------------------- writing


def app_metadata(app: dict[str, Any] | None) -> dict[str, str]:
    """The app object as safetensors metadata of a plain (dense, pruned or quantized) model file."""
    return {} if app is None else {APP_KEY: json.dumps(app, sort_keys=True, separators=(",", ":"))}


def _save_pemn(module: nn.Module, path: Path, cfg: TrainConfig, app: dict[str, Any] | None = None) -> dict[str, Any]:
    pemn_save(module, path, coding=cfg.coding, prototype=cfg.prototype, extras_dtype=cfg.extras_dtype,
              fold_norms=cfg.fold_norms, app=app)
    return pemn_summary(path, verbose=False).to_dict()


def _dense_summary(module: nn.Module, path: Path, **extra: Any) -> dict[str, Any]:
    """A plain (dense or pruned) file's summary: its honest ratio is dense float32 bytes / file bytes."""
    dense_bytes = 4 * sum(t.numel() for t in module.state_dict().values() if t.is_floating_point())
    file_bytes = path.stat().st_size
    return {"strategy": "dense", "parameters": sum(p.numel() for p in module.parameters()),
            "dense_bytes": dense_bytes, **extra, "file_bytes": file_bytes, "honest_ratio": dense_bytes / file_bytes}


def _save_dense(module: nn.Module, path: Path, cfg: TrainConfig, app: dict[str, Any] | None = None) -> dict[str, Any]:
    state = {k: (cpu_copy(v).float() if v.is_floating_point() else cpu_copy(v)) for k, v in module.state_dict().items()}
    metadata = {"format": "pt", "model": cfg.model, **app_metadata(app)}
    atomic_write_bytes(path, save_bytes(state, metadata=metadata))
    return _dense_summary(module, path)


def _save_sparse(module: nn.Module, path: Path, cfg: TrainConfig,
                 app: dict[str, Any] | None = None) -> dict[str, Any]:
    masks = pruning_masks(module)
    save_sparse(module, masks, path, extra_metadata=app_metadata(app))
    prunable = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return _dense_summary(module, path, prune=cfg.prune, prune_scope=cfg.prune_scope,
                          compression=cfg.effective_compression, prunable_weights=prunable, kept_weights=kept,
                          paper_ratio=1.0 - kept / prunable)


def _save_quant(module: nn.Module, path: Path, cfg: TrainConfig, app: dict[str, Any] | None = None) -> dict[str, Any]:
    assert cfg.quantize is not None
    save_quant(module, path, cfg.quantize, extra_metadata=app_metadata(app))
    info = quant_info(path)
    extra = {k: info[k] for k in ("bits", "quantized_weights", "code_bytes", "scale_bytes", "extras_bytes",
                                  "payload_bytes", "code_bits_per_weight", "bits_per_weight")}
    if cfg.prune is not None:
        kept, total = info["stored_codes"], info["quantized_weights"]
        extra.update(prune=cfg.prune, prune_scope=cfg.prune_scope, compression=cfg.effective_compression,
                     kept_weights=kept, paper_ratio=1.0 - kept / total)
    return _dense_summary(module, path, quantize=cfg.quantize, **extra)


# ----------------------------------------------------------------------------------------- reading


def _load_dense(path: Path, model: nn.Module) -> nn.Module:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{path}: corrupt safetensors file ({_first_line(e)})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing / unexpected keys, other shapes
        raise ArchitectureMismatchError(f"{path}: this dense state_dict does not fit the model: "
                                        f"{_first_line(e)}") from None
    return model


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines)[:500] or type(e).__name__


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of trained-model file: its name, file name, the ``format`` tag of its safetensors metadata, how
    training writes it (``save(module, path, cfg, app=None)`` returns the summary) and how a fresh model loads it
    (``load(path, model)``: FormatError for a corrupt file or one that does not fit), the
    :class:`~pemn.training.outputs.TrainResult` fields that hold its path and size, and a description."""

    name: str
    filename: str
    format: str
    save: Callable[..., dict[str, Any]]
    load: Callable[[Path, nn.Module], nn.Module]
    path_field: str
    bytes_fields: tuple[str, ...]
    description: str


#: The trained-model files, by kind.
KINDS: dict[str, ArtifactKind] = {k.name: k for k in (
    ArtifactKind("pemn", "model.pemn", "pemn", _save_pemn, pemn_load, "artifact", ("artifact_bytes",),
                 "a pemn artifact (seed, prototype, 1-bit masks)"),
    ArtifactKind("sparse", "model.sparse.safetensors", "pemn-sparse", _save_sparse, load_sparse,
                 "weights", ("weights_bytes", "sparse_bytes"), "a pruned model (pemn-sparse)"),
    ArtifactKind("dense", "model.safetensors", "pt", _save_dense, _load_dense, "weights", ("weights_bytes",),
                 "a dense state_dict"),
    ArtifactKind("quant", "model.quant.safetensors", QUANT_FORMAT, _save_quant, load_quant, "weights",
                 ("weights_bytes",), "a quantized model (pemn-quant: packed integer codes, per-channel scales)"),
)}


def kind_of(cfg: TrainConfig) -> ArtifactKind:
    """The kind of file a run of ``cfg`` writes."""
    if cfg.strategy != "dense":
        return KINDS["pemn"]
    if cfg.quantize is not None:
        return KINDS["quant"]
    return KINDS["dense" if cfg.prune is None else "sparse"]


def _metadata(path: Path) -> dict[str, str] | None:
    """The safetensors header metadata of ``path``; None if it is not a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return None


def kind_of_file(path: str | os.PathLike[str]) -> ArtifactKind:
    """The kind of the model file at ``path``, from its header's ``format`` tag (any other safetensors file is
    ``dense``). FileNotFoundError if there is none; FormatError for a folder or a file that is not safetensors
    (the message says what it is, e.g. a pickle)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such artifact file: {str(path)!r}")
    if path.is_dir():
        raise FormatError(f"{path} is a directory; give the model file inside it (e.g. {path}/model.pemn)")
    meta = _metadata(path)
    if meta is None:
        pemn_read(path)  # not safetensors: pemn's loader says what the file is instead (FormatError)
        raise FormatError(f"{path}: not a safetensors file")  # pragma: no cover - pemn_read raised above
    if meta.get("format") == CHECKPOINT_FORMAT:
        raise FormatError(_not_a_model_file(path, meta))
    by_format = {k.format: k for k in KINDS.values()}
    return by_format.get(meta.get("format", ""), KINDS["dense"])


def _not_a_model_file(checkpoint: Path, meta: dict[str, str]) -> str:
    """What to use instead of a training checkpoint: the model file its run writes (named from the run's config
    in the checkpoint), or, before the run has written it, how to finish the run."""
    from pemn.training.config import TrainConfig
    from pemn.training.engine import resume_command

    try:
        filename = kind_of(TrainConfig.from_dict(json.loads(meta["config"]))).filename
    except (KeyError, TypeError, ValueError):  # a config this version cannot read: the usual kind
        filename = KINDS["pemn"].filename
    model_file = checkpoint.parent / filename
    message = (f"{checkpoint} is a training checkpoint (what pemn train --resume continues from), not a model "
               f"file: use {model_file}")
    if not model_file.exists():
        message += f"; the run has not written it yet: finish it with {resume_command(checkpoint.parent)}"
    return message


def file_kind_and_app(path: str | os.PathLike[str]) -> tuple[ArtifactKind, dict[str, Any] | None]:
    """The kind of the model file a command was given (:func:`kind_of_file`) and its app metadata
    (:func:`read_app`); :class:`~pemn.training.errors.OptionError` for a folder (the run folder instead of the file
    inside it)."""
    path = Path(path)
    if path.is_dir():
        raise OptionError(f"{path} is a directory; give the artifact file inside it (e.g. {path}/model.pemn)")
    kind = kind_of_file(path)
    return kind, read_app(path, kind)


def read_app(path: str | os.PathLike[str], kind: ArtifactKind | None = None) -> dict[str, Any] | None:
    """The app object stored in the model file at ``path`` (see the module doc), or None for a file written
    without one. FormatError if it is corrupt."""
    path = Path(path)
    kind = kind or kind_of_file(path)
    if kind.name == "pemn":
        app: Any = pemn_read(path).app or None  # {}: saved without app=
    else:
        text = (_metadata(path) or {}).get(APP_KEY)
        if text is None:
            return None
        try:
            app = json.loads(text)
        except (ValueError, RecursionError):
            raise FormatError(f"{path}: corrupt {APP_KEY} metadata (not JSON)") from None
    if app is not None and not (isinstance(app, dict) and isinstance(app.get("model"), str)):
        raise FormatError(f"{path}: corrupt app metadata (expected an object naming the model)")
    return app


def image_app(model_name: str, info: DatasetInfo, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The app object of an image classifier trained on ``info``'s data: the registry model and its arguments, and
    how its inputs are made: ``x = (pixels * scale - mean) / std`` per channel on uint8 pixels, NCHW float32 of
    ``input_shape``, plus the class names where the data defines them (``imagefolder``: its sub folders)."""
    pre: dict[str, Any] = {"dataset": info.name, "input_shape": [info.in_channels, info.image_size, info.image_size],
                           "scale": 1 / 255, "mean": [float(m) for m in info.mean],
                           "std": [float(s) for s in info.std]}
    if info.name == "imagefolder" and data_dir is not None:
        from pemn.training.data.folders import imagefolder_classes

        pre["classes"] = imagefolder_classes(Path(data_dir))
    return {"kind": IMAGE_APP_KIND, "model": model_name,
            "model_args": {"num_classes": info.num_classes, "in_channels": info.in_channels,
                           "image_size": info.image_size},
            "preprocessing": pre}


def describe_inputs(app: dict[str, Any], data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The full :func:`pemn.training.data.preprocessing` document of an image classifier's inputs, with what its
    app records (normalisation, class names) taking precedence over the dataset's current definition."""
    from pemn.training.data import dataset_info, preprocessing

    recorded = dict(app.get("preprocessing") or {})
    try:
        info = dataset_info(recorded["dataset"], data_dir, image_size=model_args(app).get("image_size"))
        doc = preprocessing(info, data_dir)
    except (KeyError, DatasetError):  # no dataset recorded, or its files are not here (imagefolder)
        doc = {}
    return {**doc, **recorded}


def app_dataset(app: dict[str, Any]) -> str | None:
    """The dataset an image classifier's app says it was trained on (None if it does not say)."""
    pre = app.get("preprocessing")
    name = pre.get("dataset") if isinstance(pre, dict) else None
    return name if isinstance(name, str) else None


def model_args(app: dict[str, Any], where: str = "the artifact") -> dict[str, Any]:
    """The keyword arguments of :func:`~pemn.training.models.create_model` that ``app`` records (FormatError
    if they are malformed)."""
    if app.get("kind") == "char-lm" and "model_args" not in app:
        vocab, block = app.get("vocab"), app.get("block_size")
        if not isinstance(vocab, str) or isinstance(block, bool) or not isinstance(block, int):
            raise FormatError(f"{where}: corrupt language-model metadata (vocab / block_size)")
        return {"num_classes": len(vocab), "block_size": block}
    args = app.get("model_args")
    if not (isinstance(args, dict) and all(isinstance(k, str) for k in args)
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in args.values())):
        raise FormatError(f"{where}: corrupt app metadata (model_args must map names to positive ints)")
    return dict(args)


def input_info(app: dict[str, Any], info: DatasetInfo, data_dir: str | os.PathLike[str] | None = None,
               where: str = "the artifact") -> DatasetInfo:
    """``info`` (the dataset's facts) with the normalisation the model was trained with, after checking that the
    data fits the model: the same shape, and the same class names where both know them. FormatError if the
    metadata is corrupt, ValueError if the data does not fit."""
    args = model_args(app, where)
    for name in _SHAPE_ARGS:
        if name in args and args[name] != getattr(info, name):
            raise ValueError(f"{where} holds a {app['model']} for {name.replace('_', ' ')} {args[name]}, but the "
                             f"{info.name} data has {getattr(info, name)}")
    pre = app.get("preprocessing")
    if pre is None:
        return info
    if not isinstance(pre, dict):
        raise FormatError(f"{where}: corrupt app metadata (preprocessing must be an object)")
    classes = pre.get("classes")
    theirs = image_app(app["model"], info, data_dir)["preprocessing"].get("classes") if classes else None
    if isinstance(classes, list) and theirs is not None and classes != theirs:
        raise ValueError(f"{where} was trained on the classes {_short(classes)}, the {info.name} data has "
                         f"{_short(theirs)}: the labels would not match")
    mean, std = pre.get("mean"), pre.get("std")
    if not all(isinstance(v, list) and len(v) == info.in_channels and all(isinstance(x, int | float) for x in v)
               for v in (mean, std)):
        raise FormatError(f"{where}: corrupt app metadata (mean / std must list one number per channel)")
    return dataclasses.replace(info, mean=tuple(float(x) for x in mean), std=tuple(float(x) for x in std))


def _short(names: list[Any]) -> str:
    return ", ".join(map(str, names[:6])) + (f", ... ({len(names)})" if len(names) > 6 else "")


def load_model(path: str | os.PathLike[str], *, model: str | None = None,
               shape: dict[str, int] | None = None) -> tuple[nn.Module, ArtifactKind, dict[str, Any] | None]:
    """The trained model stored at ``path``, in eval mode, with its kind and app metadata.

    The architecture is the registry model the file names, built with the arguments it records; ``model`` and
    ``shape`` (``num_classes``/``in_channels``/``image_size``) give it for files written without app metadata
    (and must agree with it otherwise). FormatError if the file is corrupt or does not fit; ValueError if
    ``model``/``shape`` contradict the file.
    """
    from pemn.training.models import create_model

    path = Path(path)
    kind = kind_of_file(path)
    app = read_app(path, kind)
    if app is not None:
        if model is not None and model != app["model"]:
            raise ValueError(f"{path} holds a {app['model']}, not a {model}; leave out --model")
        args = model_args(app, str(path))
        if shape is not None:
            differ = {k: (args[k], v) for k, v in shape.items() if k in args and args[k] != v}
            if differ:
                raise ValueError(f"{path} holds a {app['model']} with "
                                 + ", ".join(f"{k.replace('_', ' ')} {a}, not {b}" for k, (a, b) in differ.items()))
        name = app["model"]
    elif model is None or shape is None:
        raise ValueError(f"{path} does not record its architecture (it was written without app metadata); give "
                         "--model and --dataset (or the input shape)")
    else:
        name, args = model, dict(shape)
    net = create_model(name, **args)
    kind.load(path, net)
    return net.eval(), kind, app


# ----------------------------------------------------------------------------------------- opening for eval / export


def run_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` ``pemn train`` wrote next to the model file at ``path`` ({} if there is none or it is
    unreadable)."""
    try:
        loaded = json.loads((Path(path).parent / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def recorded_data_dir(path: str | os.PathLike[str], dataset: str | None,
                      data_dir: str | None = None) -> str | None:
    """The data folder for the model file at ``path``, one rule for every kind of file: ``data_dir`` if given, else
    the folder the run recorded (the config.json beside the file) when ``dataset`` is the run's, else None
    ($PEMN_DATA_DIR or ./data)."""
    if data_dir is not None or dataset is None:
        return data_dir
    from pemn.training.data import find_dataset

    cfg = run_config(path)
    recorded, ran_on = cfg.get("data_dir"), cfg.get("dataset")
    if isinstance(recorded, str) and isinstance(ran_on, str) and find_dataset(ran_on) == find_dataset(dataset):
        return recorded
    return None


@dataclass(frozen=True)
class OpenedModel:
    """A model file opened for ``pemn eval`` / ``export`` / ``quantize`` (:func:`open_model_file`)."""

    #: the model, in eval mode
    model: nn.Module
    #: ``num_classes`` / ``in_channels`` / ``image_size``
    shape: dict[str, int]
    #: the data it is measured on (with the model's normalisation), None when no dataset is known
    info: DatasetInfo | None
    #: the registry model name
    name: str
    #: the dataset name it was given or the file (or its run's config.json) records, else None
    dataset: str | None
    #: the data folder to read ``dataset`` from (None: $PEMN_DATA_DIR or ./data)
    data_dir: str | None


def _dataset_name(name: str) -> None:
    """ValueError (a usage error, not missing data) if ``name`` spells no dataset."""
    from pemn.training.data import canonical_name

    try:
        canonical_name(name)
    except DatasetError as e:
        raise ValueError(str(e)) from None


def _no_registry_model(path: Path) -> ValueError:
    if kind_of_file(path).name == "pemn":  # most likely pemn.save of the user's model
        return ValueError(f"{path} records no registry model (a file pemn.save wrote from your own model, with no "
                          "config.json of a pemn train run beside it): load it in Python with "
                          f"pemn.load({str(path)!r}, model) on a fresh instance of the model you saved; for a file "
                          "of a registry model, give --model NAME")
    return ValueError(f"{path} records no registry model: give --model NAME (see pemn models), or load it in Python "
                      "into the model it was saved from")


def open_model_file(path: str | os.PathLike[str], app: dict[str, Any] | None, *, model: str | None = None,
                    dataset: str | None = None, data_dir: str | None = None,
                    shape: dict[str, int | None] | None = None, data: bool = True) -> OpenedModel:
    """The model file at ``path`` (whose app metadata is ``app``, :func:`read_app`) loaded for measuring or export.

    The file's app metadata gives the architecture, the dataset (with ``data``, the default for ``dataset``) and its
    normalisation (``model``/``shape`` must agree with it; ``dataset`` may name other data of the same shape); a
    file written without it takes ``model``/``dataset``/``shape``, else the config.json beside it. ``shape`` holds
    the explicit ``num_classes``/``in_channels``/``image_size`` (None: not given). FormatError for a file that
    cannot be used, DatasetError for data that is not there, :class:`~pemn.training.errors.OptionError` (a
    ValueError) for arguments that contradict the file or name nothing.
    """
    try:
        return _open_model_file(Path(path), app, model=model, dataset=dataset, data_dir=data_dir, shape=shape,
                                data=data)
    except (FormatError, DatasetError, OptionError):
        raise
    except ValueError as e:  # model / dataset / shape contradict the file, or name nothing
        raise OptionError(str(e) or type(e).__name__) from None


def _open_model_file(path: Path, app: dict[str, Any] | None, *, model: str | None, dataset: str | None,
                     data_dir: str | None, shape: dict[str, int | None] | None, data: bool) -> OpenedModel:
    from pemn.training.data import dataset_info
    from pemn.training.models import get_model_spec

    explicit = {k: v for k, v in (shape or {}).items() if k in _SHAPE_ARGS and v is not None}
    if app is None:
        if model is None or (dataset is None and "num_classes" not in explicit):
            recorded = run_config(path)
            if model is None and isinstance(recorded.get("model"), str):
                model = recorded["model"]
            if dataset is None and "num_classes" not in explicit and isinstance(recorded.get("dataset"), str):
                dataset = recorded["dataset"]
            if model is None:
                raise _no_registry_model(path)
        data_dir = recorded_data_dir(path, dataset, data_dir)
        info = None
        if dataset is not None:
            _dataset_name(dataset)
            info = dataset_info(dataset, data_dir, image_size=explicit.get("image_size"))
            args = {"num_classes": info.num_classes, "in_channels": info.in_channels, "image_size": info.image_size}
            args.update(explicit)
        else:
            missing = [k for k in _SHAPE_ARGS if k not in explicit]
            if missing:
                flags = ", ".join("--" + k.replace("_", "-") for k in missing)
                raise ValueError(f"give --dataset NAME, or the input shape explicitly (missing {flags})")
            args = {k: int(v) for k, v in explicit.items()}
        get_model_spec(model)
        loaded, _, _ = load_model(path, model=model, shape=args)
        return OpenedModel(loaded, args, info, model, dataset, data_dir)
    loaded, _, _ = load_model(path, model=model, shape=explicit or None)
    args = model_args(app, str(path))
    if dataset is None and data:
        dataset = app_dataset(app)
    info = None
    if dataset is not None:
        _dataset_name(dataset)
        data_dir = recorded_data_dir(path, dataset, data_dir)
        info = dataset_info(dataset, data_dir)
        if info.name == "imagefolder":  # its image size is the model's choice
            info = dataset_info(dataset, data_dir, image_size=args.get("image_size"))
        info = input_info(app, info, data_dir, str(path))
    return OpenedModel(loaded, args, info, app["model"], dataset, data_dir)
