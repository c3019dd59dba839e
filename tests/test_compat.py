"""Old API spellings kept under a DeprecationWarning: convert_'s filter_fn in torchao's (module, fqn) order, with
pemn's old (name, module) order recognised by the function's parameters."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
from torch import nn

import pemn
from pemn import PEMNConfig


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))


def _masked(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, pemn.MaskedLinear)]


def _module_fqn(module: nn.Module, fqn: str) -> bool:
    return fqn != "2"


def _module_fqn_annotated(x: nn.Module, y: str) -> bool:  # annotations win over the names
    return y != "2"


def _name_module_annotated(x: str, y: nn.Module) -> bool:
    return x != "2"


def _linear_only(mod: nn.Module, *args: object) -> bool:  # torchao's _is_linear shape
    return isinstance(mod, nn.Linear) and args[0] != "2"


NEW_ORDER: dict[str, Callable[..., bool]] = {
    "named module, fqn": _module_fqn,
    "annotated nn.Module, str": _module_fqn_annotated,
    "lambda mod, fqn": lambda mod, fqn: fqn != "2",
    "lambda m, name": lambda m, name: name != "2",
    "f(mod, *args)": _linear_only,
}
OLD_ORDER: dict[str, Callable[..., bool]] = {
    "lambda name, mod": lambda name, mod: name != "2",
    "lambda n, _": lambda n, _: n != "2",
    "annotated str, nn.Module": _name_module_annotated,
    "lambda a, module": lambda a, module: a != "2",
    "says nothing: lambda a, b": lambda a, b: a != "2",
}


@pytest.mark.parametrize("fn", NEW_ORDER.values(), ids=NEW_ORDER)
def test_torchao_order(fn: Callable[..., bool]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        model = pemn.convert_(_model(), PEMNConfig(strategy="mask"), filter_fn=fn)
    assert _masked(model) == ["0", "3"]


@pytest.mark.parametrize("fn", OLD_ORDER.values(), ids=OLD_ORDER)
def test_old_order_still_works_deprecated(fn: Callable[..., bool]) -> None:
    with pytest.warns(DeprecationWarning, match=r"filter_fn\(module, fqn\) as torchao's quantize_") as record:
        model = pemn.convert_(_model(), PEMNConfig(strategy="mask"), filter_fn=fn)
    assert _masked(model) == ["0", "3"]
    assert record[0].filename == __file__  # the warning points at the caller of convert_


def test_not_callable() -> None:
    with pytest.raises(TypeError, match=r"filter_fn must be callable as filter_fn\(module, fqn\)"):
        pemn.convert_(_model(), PEMNConfig(strategy="mask"), filter_fn="2")  # type: ignore[arg-type]
