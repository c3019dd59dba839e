"""pemn: Parameter-Efficient Masking Networks (Bai et al., NeurIPS 2022) as a library.

A model's Conv/Linear weights become fixed random values from a tiny shared prototype; each layer learns
only a binary mask. Convert any model with :func:`convert_`, train its scores, and ship it with :func:`save`.
"""

# first: the pemn command's Ctrl-C hook, before the imports below (which take a second or two)
from pemn import _interrupt  # noqa: F401
from pemn._version import __version__
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

