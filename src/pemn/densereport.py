"""What a converted model keeps dense: :class:`DenseReport` (by module type, and every large tensor with why).

:func:`pemn.convert_` leaves one on the model (``model.pemn_dense_report``); :func:`dense_report` recomputes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from pemn.layers import MaskedLayer, MaskedWeight
from pemn.prototype import PrototypeBank
from pemn.registry import lookup
from pemn.selection import USER_CHOICES
from pemn.walk import masked_weights, qualified, unwrap

#: a dense tensor at least this share of the model, left dense without being asked to, is warned about
DENSE_WARN_SHARE = 0.01
#: the attribute of a converted model holding the report of its conversion
REPORT_ATTR = "pemn_dense_report"


@dataclass
class DenseType:
    """The dense tensors (parameters and float buffers) held by modules of one type."""

    module_type: str
    tensors: int
    elements: int
    share: float


@dataclass
class DenseTensor:
    name: str
    module_type: str
    elements: int
    share: float
    reason: str
    shape: tuple[int, ...] = ()

    @property
    def warned(self) -> bool:
        """Worth a warning: a matrix or larger (not a bias or norm vector, which PEMN keeps dense by design)
        that the user did not ask to keep dense."""
        return len(self.shape) >= 2 and self.reason not in USER_CHOICES


@dataclass
class DenseReport:
    """What a converted model keeps dense, each tensor counted once.

    ``total_elements`` is the model's size in elements (masked weights + dense parameters + float buffers);
    ``by_type`` groups the dense tensors by the type of the module holding them (largest first); ``large``
    lists every dense tensor of at least 1 % of the model with why it stayed dense.
    """

    total_elements: int
    masked_elements: int
    by_type: list[DenseType] = field(default_factory=list)
    large: list[DenseTensor] = field(default_factory=list)

    @property
    def dense_elements(self) -> int:
        return self.total_elements - self.masked_elements

    def table(self) -> str:
        total = max(1, self.total_elements)
        rows = [f"dense (not masked): {self.dense_elements:,} of {self.total_elements:,} elements "
                f"({self.dense_elements / total:.1%})"]
        for t in self.by_type:
            rows.append(f"  {t.module_type:<38} {t.tensors:>5} tensors {t.elements:>12,} {t.share:>7.2%}")
        for t in self.large:
            rows.append(f"  >= 1%: {t.name} ({t.module_type}, {t.elements:,}, {t.share:.1%}): {t.reason}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def _reason(module: nn.Module, dense_reason: dict[int, str]) -> str:
    if id(module) in dense_reason:
        return dense_reason[id(module)]
    if isinstance(module, MaskedLayer):
        return "an extra of a masked layer (bias...)"
    if lookup(module) is None:
        return f"a parameter of a {type(module).__name__}, not a layer type pemn masks (pemn.register_layer adds one)"
    return "not selected"


def dense_report(model: nn.Module, dense_reason: dict[int, str] | None = None) -> DenseReport:
    """What ``model`` (converted) keeps dense; see :class:`DenseReport`."""
    root = unwrap(model)
    dense_reason = dense_reason or {}
    masked = sum(mw.numel for mw in masked_weights(root).values())
    seen: set[int] = set()
    held: list[tuple[str, nn.Module, torch.Tensor]] = []
    modules = dict(root.named_modules())
    for mname, module in modules.items():
        if isinstance(module, MaskedWeight | PrototypeBank):
            continue
        owner = module
        if isinstance(module, parametrize.ParametrizationList):  # x.parametrizations.weight: x holds them
            owner = modules.get(mname.rsplit(".", 2)[0] if mname.count(".") >= 2 else "", module)
        tensors = [(n, p) for n, p in module._parameters.items() if p is not None]
        tensors += [(n, b) for n, b in module._buffers.items() if b is not None and b.is_floating_point()
                    and n not in module._non_persistent_buffers_set]
        for n, t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                held.append((qualified(mname, n), owner, t))
    total = masked + sum(t.numel() for _, _, t in held)
    by_type: dict[str, list[int]] = {}
    large = []
    for qname, module, t in held:
        kind = module.__dict__.get("_pemn_original_class", type(module)).__name__
        entry = by_type.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += t.numel()
        if total and t.numel() >= DENSE_WARN_SHARE * total:
            large.append(DenseTensor(qname, kind, t.numel(), t.numel() / total, _reason(module, dense_reason),
                                     tuple(t.shape)))
    types_ = [DenseType(k, n, e, e / max(1, total)) for k, (n, e) in by_type.items()]
    types_.sort(key=lambda d: -d.elements)
    large.sort(key=lambda d: -d.elements)
    return DenseReport(total, masked, types_, large)


__all__ = ["DENSE_WARN_SHARE", "REPORT_ATTR", "DenseReport", "DenseTensor", "DenseType", "dense_report"]
