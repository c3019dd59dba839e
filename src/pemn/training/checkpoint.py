"""Training checkpoints: one safetensors file (``checkpoint.safetensors``) holding the model's state, the
optimizer state flattened to tensors, the RNG states and, as JSON metadata, the run's config and
bookkeeping. Written atomically; read without ever unpickling."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from pemn._version import __version__
from pemn.convert import unwrap
from pemn.errors import ArchitectureMismatchError, FormatError
from pemn.fileio import atomic_write_bytes
from pemn.stfile import save_bytes

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "CHECKPOINT_VERSION", "cpu_copy", "load_checkpoint",
           "load_exact_state", "read_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "pemn-checkpoint"
CHECKPOINT_VERSION = 1


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy of ``t``."""
    return t.detach().to("cpu", copy=True).contiguous()


def load_exact_state(path: str | os.PathLike[str], model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` (a plain state_dict read from the model file at ``path``) into ``model`` when every key and
    shape matches (:class:`~pemn.ArchitectureMismatchError` naming the first differences otherwise, the model
    untouched); tensors take the model's dtypes."""
    root = unwrap(model)
    own = root.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ArchitectureMismatchError(
            f"{str(path)!r} does not fit the model: "
            + "; ".join(f"{what} {keys[:5]}{' ...' if len(keys) > 5 else ''}"
                        for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys))
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise ArchitectureMismatchError(f"{str(path)!r} does not fit the model: {key!r} has shape "
                                            f"{tuple(value.shape)} in the file, {tuple(own[key].shape)} in the model")
    root.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` as tensors ``optim/<param index>/<key>`` plus a JSON-ready rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        scalars[str(index)] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = cpu_copy(value)
            else:
                json.dumps(value)  # TypeError for anything that is not plain JSON
                scalars[str(index)][key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                         optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, t in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = t
    fresh = optimizer.state_dict()["param_groups"]
    if len(fresh) != len(meta["param_groups"]):
        raise ValueError("the checkpoint's optimizer has a different number of parameter groups")
    groups = []
    for saved, now in zip(meta["param_groups"], fresh, strict=True):
        g = dict(saved)
        for k, v in now.items():  # JSON turned tuples (Adam's betas) into lists
            if isinstance(v, tuple) and isinstance(g.get(k), list):
                g[k] = tuple(g[k])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse a training checkpoint: ``(tensors, {"config": dict, "state": dict, ...})``. Never unpickles."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError) as e:
        raise FormatError(f"{str(path)!r} is not a readable safetensors checkpoint ({e}); pemn never unpickles "
                         "(torch.save checkpoints are not supported)") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(f"{str(path)!r} is not a pemn training checkpoint (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(CHECKPOINT_VERSION):
        raise FormatError(f"{str(path)!r}: unsupported checkpoint version {metadata.get('format_version')!r}")
    meta = {k: v for k, v in metadata.items() if k not in ("config", "state")}
    try:
        meta["config"] = json.loads(metadata["config"])
        meta["state"] = json.loads(metadata["state"])
    except (KeyError, ValueError, RecursionError) as e:
        raise FormatError(f"{str(path)!r} is a corrupt pemn training checkpoint (bad or missing {e}); "
                         "start the run again without --resume") from None
    return tensors, meta



def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, device: torch.device, config: dict[str, Any],
                    state: dict[str, Any]) -> Path:
    """Write ``path`` atomically: ``model``'s state_dict, the optimizer, the RNG states (CPU, and CUDA on
    ``device``), the scaler and the JSON-ready ``config`` and ``state`` (the caller's bookkeeping)."""
    tensors = {f"model/{k}": cpu_copy(v) for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    tensors["rng/cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    state = {**state, "optimizer": opt_meta, "scaler": scaler.state_dict() if scaler is not None else None}
    metadata = {"format": CHECKPOINT_FORMAT, "format_version": str(CHECKPOINT_VERSION),
                "pemn_version": __version__, "torch_version": torch.__version__,
                "config": json.dumps(config), "state": json.dumps(state)}
    atomic_write_bytes(path, save_bytes(tensors, metadata=metadata))
    return path


#: A masked weight's child in checkpoints written before it was named ``pemn_<param>``: ``<param>_masked``.
_LEGACY_CHILD = re.compile(r"(^|\.)([A-Za-z_]\w*?)_masked\.")


def _current_names(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with the masked-weight names of older checkpoints (``conv.weight_masked.scores``) renamed to the
    current ones (``conv.pemn_weight.scores``) where that is a name of the model; everything else unchanged."""
    out = {}
    for name, value in state.items():
        if name not in expected:
            renamed = _LEGACY_CHILD.sub(lambda m: f"{m.group(1)}pemn_{m.group(2)}.", name)
            name = renamed if renamed in expected else name
        out[name] = value
    return out


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, device: torch.device, config: dict[str, Any],
                    free_fields: tuple[str, ...]) -> dict[str, Any]:
    """Restore ``path`` into ``model``, ``optimizer``, the RNGs and ``scaler``; returns the saved state.

    ValueError if the saved config differs from ``config`` in a field outside ``free_fields`` (a field the
    checkpoint does not record is an option newer than it, left at its default).
    """
    tensors, meta = read_checkpoint(path)
    saved = meta["config"]
    differ = sorted(k for k in config if k not in free_fields and k in saved and saved[k] != config[k])
    if differ:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {config[k]!r}" for k in differ)
        raise ValueError(f"cannot resume {str(path)!r} with different settings ({detail}); resume with the "
                         "settings of the interrupted run (its config.json)")
    state = meta["state"]
    model_state = _current_names({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")},
                                 set(model.state_dict()))
    missing = sorted(set(model.state_dict()) - set(model_state))
    unexpected = sorted(set(model_state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"the checkpoint {str(path)!r} does not fit this model ("
                         + "; ".join(f"{what}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                                     for what, names in (("missing", missing), ("unexpected", unexpected)) if names)
                         + "): it was written by another model or configuration; start a new run in another --out")
    model.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"], optimizer))
    torch.set_rng_state(tensors["rng/cpu"])
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state
