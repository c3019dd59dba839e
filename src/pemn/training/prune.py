"""The paper's pruning baselines for DENSE models: "Random" and "Minimum" (magnitude) pruning.

The paper's compression figures (Bai et al., 2022, §2.2 of the notes) compare PEMN against sparse networks
at 90-96 % compression, labelled "Random" and "Minimum". The paper does not say when they were pruned;
this module **prunes at initialisation and then trains** the survivors with the zeros held fixed (the
simplest reading, and the one that costs the same training budget as a PEMN run).

Choices (documented, since the paper gives none):

``magnitude`` ("Minimum")
    the weights with the smallest ``|w|`` are removed. Ties go to the lowest flat index, so the result
    is deterministic.
``random``
    the removed weights are chosen uniformly at random with a seeded CPU generator.

``scope="layer"`` (the default, for both methods) removes the same fraction from every layer: the
per-layer counts are ``floor(compression * n_layer)`` plus the remaining pruned weights handed out by the
largest-remainder method, so the *total* is exactly ``round(compression * N)``. ``scope="global"`` ranks
(or draws from) all Conv/Linear weights together. Global magnitude pruning *at initialisation* is
degenerate with torch's default init (U(±1/sqrt(fan_in))): the layers with the largest fan-in have the
smallest weights and are removed first, e.g. LeNet-5 at 96 % loses its whole first Linear layer (layer
collapse), so the network can no longer learn. Hence the per-layer default.

Masks are kept fixed during training in two ways: the gradient of a pruned weight is zeroed by a tensor
hook (so optimizer state stays zero there), and a forward pre-hook multiplies the weight by its mask
before every forward (so no optimizer, weight decay or manual edit can revive a pruned weight). Each
pruned module holds its mask as a non-persistent buffer ``weight_prune_mask`` (it follows ``.to()`` but
does not change the model's ``state_dict``).

:func:`save_sparse` writes what a pruned model really costs: a safetensors file with only the surviving
values, their positions (int32 flat indices or a 1-bit mask, whichever is smaller per layer) and the
dense extras (biases, norms, buffers). Its size in bytes is the honest size; the paper counts only the
surviving float weights (ratio = sparsity, no index overhead).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from pemn.coding import pack_bits, unpack_bits
from pemn.convert import is_converted, unwrap
from pemn.errors import FormatError
from pemn.stfile import write_file
from pemn.training.checkpoint import load_exact_state

__all__ = [
    "PRUNE_METHODS",
    "PRUNE_SCOPES",
    "load_sparse",
    "prunable_weights",
    "prune_",
    "pruned_count",
    "pruning_masks",
    "read_sparse",
    "remove_pruning_",
    "save_sparse",
]

PRUNE_METHODS = ("random", "magnitude")
PRUNE_SCOPES = ("layer", "global")
PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SPARSE_FORMAT = "pemn-sparse"
SPARSE_FORMAT_VERSION = 1
_MASK_BUFFER = "weight_prune_mask"
_HANDLES = "_pemn_prune_handles"


def pruned_count(compression: float, total: int) -> int:
    """Weights removed out of ``total``: ``round(compression * total)`` (half to even), computed exactly on
    ``compression``'s shortest decimal form (so 0.9 × 10 removes exactly 9)."""
    return round(Fraction(repr(float(compression))) * total)


def prunable_weights(model: nn.Module) -> dict[str, nn.Module]:
    """The Conv/Linear modules whose ``weight`` pruning applies to, keyed by ``"<module>.weight"``."""
    out: dict[str, nn.Module] = {}
    for name, module in unwrap(model).named_modules():
        if isinstance(module, PRUNABLE_TYPES) and isinstance(module._parameters.get("weight"), nn.Parameter):
            out[f"{name}.weight" if name else "weight"] = module
    return out


def _check_args(method: str, compression: float, scope: str) -> None:
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; valid: {', '.join(PRUNE_METHODS)}")
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; valid: {', '.join(PRUNE_SCOPES)}")
    if isinstance(compression, bool) or not isinstance(compression, int | float) or not 0 <= compression < 1:
        raise ValueError(f"compression (the pruned fraction) must be a number with 0 <= compression < 1, "
                         f"got {compression!r}")


def _layer_counts(sizes: list[int], compression: float, n_prune: int) -> list[int]:
    """Per-layer pruned counts: the same fraction everywhere, summing exactly to ``n_prune``."""
    exact = Fraction(repr(float(compression)))
    shares = [exact * n for n in sizes]
    counts = [math.floor(s) for s in shares]
    # largest remainder: the layers with the biggest fractional parts (then the earliest) get one more
    order = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[:n_prune - sum(counts)]:
        counts[i] += 1
    return counts


def _pruned_positions(scores: torch.Tensor, count: int, method: str, g: torch.Generator) -> torch.Tensor:
    """Flat positions of the ``count`` weights to remove from one flat tensor of |w| values."""
    if method == "magnitude":
        return torch.sort(scores, stable=True).indices[:count]  # ascending; ties: lowest index first
    return torch.randperm(scores.numel(), generator=g)[:count]


def _masks(weights: list[torch.Tensor], method: str, compression: float, scope: str,
           seed: int) -> list[torch.Tensor]:
    sizes = [w.numel() for w in weights]
    n_prune = pruned_count(compression, sum(sizes))
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) % 2**63)
    scores = [w.detach().abs().reshape(-1).to("cpu", torch.float64) for w in weights]
    if scope == "global":
        keep = torch.ones(sum(sizes), dtype=torch.bool)
        keep[_pruned_positions(torch.cat(scores), n_prune, method, g)] = False
        flat = list(keep.split(sizes))
    else:
        flat = []
        for s, count in zip(scores, _layer_counts(sizes, compression, n_prune), strict=True):
            keep = torch.ones(s.numel(), dtype=torch.bool)
            keep[_pruned_positions(s, count, method, g)] = False
            flat.append(keep)
    return [k.reshape(w.shape).clone() for k, w in zip(flat, weights, strict=True)]


def _reapply_hook(module: nn.Module, args: Any) -> None:
    with torch.no_grad():
        module.weight.mul_(module._buffers[_MASK_BUFFER].to(module.weight.dtype))


def _attach(module: nn.Module, mask: torch.Tensor) -> None:
    weight = module.weight
    module.register_buffer(_MASK_BUFFER, mask.to(weight.device), persistent=False)
    with torch.no_grad():
        weight.mul_(module._buffers[_MASK_BUFFER].to(weight.dtype))

    def grad_hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * module._buffers[_MASK_BUFFER].to(grad.dtype)

    handles = [weight.register_hook(grad_hook), module.register_forward_pre_hook(_reapply_hook)]
    setattr(module, _HANDLES, handles)


def prune_(model: nn.Module, method: str, compression: float, *, seed: int = 0,
           scope: str = "layer") -> dict[str, torch.Tensor]:
    """Prune a dense model's Conv/Linear weights in place, once, and keep them pruned while it trains.

    Args:
        model: a dense model (not converted by pemn), possibly wrapped in DDP.
        method: ``"magnitude"`` (smallest ``|w|``; the paper's "Minimum") or ``"random"`` (the paper's
            "Random"). See the module doc.
        compression: the fraction of all Conv/Linear weights set to zero (exactly ``round(c * N)`` of them).
        seed: seeds the random choice (``"random"`` only).
        scope: ``"layer"`` (the same fraction in every layer) or ``"global"`` (all layers ranked together).

    Returns the masks (bool, ``True`` = kept), keyed by weight name (``"0.weight"``), on the weights' devices.
    """
    _check_args(method, compression, scope)
    root = unwrap(model)
    if is_converted(root):
        raise ValueError("pruning applies to dense models; this model is converted by pemn (its weights are masks)")
    modules = prunable_weights(root)
    if not modules:
        raise ValueError("the model has no Conv/Linear weights to prune")
    if any(_MASK_BUFFER in m._buffers for m in modules.values()):
        raise ValueError("this model is already pruned; build a fresh model to prune again")
    masks = _masks([m.weight for m in modules.values()], method, compression, scope, seed)
    out = {}
    for (name, module), mask in zip(modules.items(), masks, strict=True):
        _attach(module, mask)
        out[name] = module._buffers[_MASK_BUFFER]
    return out


def pruning_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks :func:`prune_` attached to ``model`` (empty if it is not pruned)."""
    return {name: m._buffers[_MASK_BUFFER] for name, m in prunable_weights(model).items()
            if _MASK_BUFFER in m._buffers}


def remove_pruning_(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detach the hooks and mask buffers (the zeros stay in the weights); returns the masks."""
    masks = {}
    for name, m in prunable_weights(model).items():
        if _MASK_BUFFER in m._buffers:
            for h in getattr(m, _HANDLES, ()):
                h.remove()
            with contextlib.suppress(AttributeError):
                delattr(m, _HANDLES)
            masks[name] = m._buffers.pop(_MASK_BUFFER)
    return masks


# ---------------------------------------------------------------------------------------------- storage


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


def save_sparse(model: nn.Module, masks: dict[str, torch.Tensor], path: str | os.PathLike[str], *,
                extra_metadata: dict[str, str] | None = None) -> int:
    """Write a pruned model as only what survives, atomically; returns the file's size in bytes.

    Tensors: ``values/<w>`` (float32 surviving values, row-major order), and per layer either
    ``index/<w>`` (int32 flat positions, 4 bytes per survivor) or ``bitmask/<w>`` (1 bit per weight, the
    :func:`pemn.coding.pack_bits` order), whichever is smaller; ``dense/<k>`` for every other
    ``state_dict`` entry (biases, norms, buffers, unpruned weights; floats as float32). The metadata holds
    the format, a manifest and the overall sparsity, plus ``extra_metadata`` (strings the application stores,
    e.g. a language model's vocabulary). Nothing is pickled.
    """
    state = unwrap(model).state_dict()
    tensors: dict[str, torch.Tensor] = {}
    manifest = []
    pruned = total = 0
    for name, mask in masks.items():
        if name not in state:
            raise KeyError(f"mask {name!r} names no entry of the model's state_dict")
        weight = state[name]
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
        flat_mask = mask.detach().reshape(-1).to("cpu", torch.bool)
        n, kept = flat_mask.numel(), int(flat_mask.sum())
        tensors[f"values/{name}"] = _cpu(weight.reshape(-1).to("cpu", torch.float32)[flat_mask])
        if 4 * kept <= (n + 7) // 8:
            tensors[f"index/{name}"] = flat_mask.nonzero().reshape(-1).to(torch.int32).contiguous()
            encoding = "index"
        else:
            tensors[f"bitmask/{name}"] = torch.from_numpy(np.ascontiguousarray(pack_bits(flat_mask.numpy())))
            encoding = "bitmask"
        manifest.append({"name": name, "shape": list(weight.shape), "kept": kept, "encoding": encoding})
        pruned += n - kept
        total += n
    for key, value in state.items():
        if key not in masks:
            t = _cpu(value)
            tensors[f"dense/{key}"] = t.float() if t.is_floating_point() else t
    metadata = {
        "format": SPARSE_FORMAT,
        "format_version": str(SPARSE_FORMAT_VERSION),
        "manifest": json.dumps(manifest, separators=(",", ":")),
        "sparsity": repr(pruned / total if total else 0.0),
    }
    return write_file(path, tensors, metadata, extra_metadata)


def read_sparse(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Parse a :func:`save_sparse` file: ``(state_dict with the zeros filled in, masks)``.

    :class:`~pemn.FormatError` for anything but an intact file of this format (never unpickles)."""
    where = str(path)
    try:
        with safe_open(where, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except SafetensorError as e:
        raise FormatError(f"{where!r} is not a safetensors file ({e}); pemn never unpickles") from None
    if metadata.get("format") != SPARSE_FORMAT:
        raise FormatError(f"{where!r} is not a pemn sparse file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(SPARSE_FORMAT_VERSION):
        raise FormatError(f"{where!r}: unsupported sparse format version {metadata.get('format_version')!r}")
    try:
        return _sparse_state(metadata, tensors, where)
    except FormatError as e:
        if where in str(e):
            raise
        raise FormatError(f"{where!r} is a corrupt pemn sparse file ({e})") from None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, RecursionError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{where!r} is a corrupt pemn sparse file ({detail})") from None


def _sparse_state(metadata: dict[str, str], tensors: dict[str, torch.Tensor],
                  where: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for entry in json.loads(metadata["manifest"]):
        name, shape = entry["name"], tuple(int(d) for d in entry["shape"])
        n = math.prod(shape)
        if entry["encoding"] == "index":
            index = tensors[f"index/{name}"].to(torch.int64)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
                raise FormatError(f"{where!r}: index out of range in {name!r}")
            flat_mask = torch.zeros(n, dtype=torch.bool)
            flat_mask[index] = True
        else:
            flat_mask = torch.from_numpy(unpack_bits(tensors[f"bitmask/{name}"].numpy(), n).copy())
        values = tensors[f"values/{name}"]
        if values.numel() != int(flat_mask.sum()) or values.numel() != entry["kept"]:
            raise FormatError(f"{where!r}: {name!r} holds {values.numel()} values for {entry['kept']} survivors")
        dense = torch.zeros(n, dtype=torch.float32)
        dense[flat_mask] = values
        state[name] = dense.view(shape)
        masks[name] = flat_mask.view(shape)
    for key, value in tensors.items():
        if key.startswith("dense/"):
            state[key[len("dense/"):]] = value
    return state, masks


def load_sparse(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load a :func:`save_sparse` file into ``model`` (a fresh instance of the same architecture).

    The pruned weights get their zeros back; every key and shape must match (``strict``;
    :class:`~pemn.ArchitectureMismatchError` naming the first difference otherwise). The pruning hooks are not
    attached (call :func:`prune_` on the dense model to train it further). Returns ``model``.
    """
    state, _ = read_sparse(path)
    load_exact_state(path, model, state)
    return model
