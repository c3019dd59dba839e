"""pemn: Parameter-Efficient Masking Networks (Bai et al., NeurIPS 2022) as a library.

A model's Conv/Linear weights become fixed random values from a tiny shared prototype; each layer learns
only a binary mask. Convert any model with :func:`convert_`, train its scores, and ship it with :func:`save`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

# first: the pemn command's Ctrl-C hook (the command imports torch only once it runs)
from pemn import _interrupt  # noqa: F401
from pemn._version import __version__

#: Where each public name lives. ``import pemn`` imports none of them (nor torch): a name is imported on first use
#: (``pemn.convert_``, ``from pemn import save``), so ``pemn --version`` answers without loading torch.
_EXPORTS = {
    "load": "pemn.artifact", "save": "pemn.artifact",
    "PEMNConfig": "pemn.config", "kept_count": "pemn.config",
    **dict.fromkeys(("DenseReport", "convert_", "dense_report", "freeze_masks", "masked_weights", "materialize",
                     "set_keep_", "tied_weights", "unwrap"), "pemn.convert"),
    **dict.fromkeys(("ArchitectureMismatchError", "ConversionError", "DatasetError", "FormatError", "PEMNError",
                     "PrototypeMismatchError"), "pemn.errors"),
    **dict.fromkeys(("MaskedConv1d", "MaskedConv2d", "MaskedConv3d", "MaskedEmbedding", "MaskedLinear",
                     "MaskedMultiheadAttention", "MaskedWeight"), "pemn.layers"),
    "PrototypeBank": "pemn.prototype",
    "register_layer": "pemn.registry", "unregister_layer": "pemn.registry",
    "PEMNSummary": "pemn.summary", "summary": "pemn.summary",
    "save_task": "pemn.taskfile",
    "Superposition": "pemn.superpose", "infer_task": "pemn.superpose",
    **dict.fromkeys(("active_task", "add_task", "delete_task", "rename_task", "set_task", "tasks", "using_task"),
                    "pemn.taskset"),
}

if TYPE_CHECKING:  # what type checkers and IDEs see (the same names as _EXPORTS; a test checks they agree)
    from pemn.artifact import load, save
    from pemn.config import PEMNConfig, kept_count
    from pemn.convert import (
        DenseReport,
        convert_,
        dense_report,
        freeze_masks,
        masked_weights,
        materialize,
        set_keep_,
        tied_weights,
        unwrap,
    )
    from pemn.errors import (
        ArchitectureMismatchError,
        ConversionError,
        DatasetError,
        FormatError,
        PEMNError,
        PrototypeMismatchError,
    )
    from pemn.layers import (
        MaskedConv1d,
        MaskedConv2d,
        MaskedConv3d,
        MaskedEmbedding,
        MaskedLinear,
        MaskedMultiheadAttention,
        MaskedWeight,
    )
    from pemn.prototype import PrototypeBank
    from pemn.registry import register_layer, unregister_layer
    from pemn.summary import PEMNSummary, summary
    from pemn.superpose import Superposition, infer_task
    from pemn.taskfile import save_task
    from pemn.taskset import active_task, add_task, delete_task, rename_task, set_task, tasks, using_task

__all__ = [
    "ArchitectureMismatchError",
    "ConversionError",
    "DatasetError",
    "DenseReport",
    "FormatError",
    "MaskedConv1d",
    "MaskedConv2d",
    "MaskedConv3d",
    "MaskedEmbedding",
    "MaskedLinear",
    "MaskedMultiheadAttention",
    "MaskedWeight",
    "PEMNConfig",
    "PEMNError",
    "PEMNSummary",
    "PrototypeBank",
    "PrototypeMismatchError",
    "Superposition",
    "__version__",
    "active_task",
    "add_task",
    "convert_",
    "delete_task",
    "dense_report",
    "freeze_masks",
    "infer_task",
    "kept_count",
    "load",
    "masked_weights",
    "materialize",
    "register_layer",
    "rename_task",
    "save",
    "save_task",
    "set_keep_",
    "set_task",
    "summary",
    "tasks",
    "tied_weights",
    "unregister_layer",
    "unwrap",
    "using_task",
]


def __getattr__(name: str) -> object:
    """A public name (imported from its module on first use, then kept here), or a submodule (``pemn.masking``)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """The ``pemn`` module: importing a submodule that shares a public name (``pemn.summary``, the module of
    :func:`summary`) leaves the name to the function, as an eager ``from pemn.summary import summary`` would."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # the import system binding the submodule: pemn.<name> stays the public object
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
