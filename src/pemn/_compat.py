"""Old spellings of the public API that keep working under a :class:`DeprecationWarning`.

``convert_(model, config, filter_fn=f)`` calls ``f(module, fqn)``, torchao's order (``quantize_``'s
``filter_fn``). pemn used to call ``f(name, module)``; such a function is recognised by its parameters and still
called that way, with a warning. Which order a function takes is read from its first two positional parameters:

- annotations win: the first annotated ``str`` (or the second a module) is the old order; the first annotated a
  module (or the second ``str``) is torchao's;
- else names: a first parameter named like a name (``name``, ``n``, ``fqn``...) or a second named like a module
  (``module``, ``mod``, ``m``...) is the old order; a first named like a module or a second like a name is
  torchao's;
- a function with fewer than two positional parameters (``f(module, *args)``), or one that cannot be inspected,
  is torchao's; a function that says nothing either way (``lambda a, b: ...``) or contradicts itself keeps the
  old order, so no existing caller changes behaviour, and is warned about too.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["module_fqn_filter"]

_NAME_PARAMS = frozenset({"name", "n", "fqn", "qualname", "path", "key", "module_name", "layer_name"})
_MODULE_PARAMS = frozenset({"module", "mod", "m", "layer", "submodule", "child"})
_STR_ANNOTATIONS = frozenset({"str"})
_MODULE_ANNOTATIONS = frozenset({"Module", "nn.Module", "torch.nn.Module", "torch.nn.modules.module.Module"})


def _is_str(annotation: Any) -> bool:
    return annotation is str or (isinstance(annotation, str) and annotation in _STR_ANNOTATIONS)


def _is_module(annotation: Any) -> bool:
    if isinstance(annotation, type):
        return issubclass(annotation, nn.Module)
    return isinstance(annotation, str) and annotation in _MODULE_ANNOTATIONS


def _takes_name_first(fn: Callable[..., Any]) -> bool | None:
    """True: ``fn(name, module)`` (the old order); False: ``fn(module, fqn)``; None: its parameters do not say."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return False
    if len(params) < 2:
        return False
    first, second = params[0], params[1]
    empty = inspect.Parameter.empty
    if first.annotation is not empty or second.annotation is not empty:
        old = _is_str(first.annotation) or _is_module(second.annotation)
        new = _is_module(first.annotation) or _is_str(second.annotation)
        if old != new:
            return old
    old = first.name in _NAME_PARAMS or second.name in _MODULE_PARAMS
    new = first.name in _MODULE_PARAMS or second.name in _NAME_PARAMS
    return old if old != new else None


def module_fqn_filter(filter_fn: Callable[..., bool] | None, *, stacklevel: int = 3
                      ) -> Callable[[nn.Module, str], bool] | None:
    """``filter_fn`` as a ``(module, fqn) -> bool`` function: itself when it takes torchao's order, else a
    wrapper that swaps the arguments, after a :class:`DeprecationWarning` (see the module doc)."""
    if filter_fn is None:
        return None
    if not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable as filter_fn(module, fqn), got {type(filter_fn).__name__}")
    name_first = _takes_name_first(filter_fn)
    if name_first is False:
        return filter_fn
    said = "takes (name, module)" if name_first else "does not say its order in its parameters"
    warnings.warn(
        f"filter_fn {said}: pemn calls it as filter_fn(name, module), the old order, which is deprecated; "
        "write filter_fn(module, fqn) as torchao's quantize_ does (name the parameters module and fqn, or "
        "annotate them nn.Module and str)", DeprecationWarning, stacklevel=stacklevel)

    def swapped(module: nn.Module, fqn: str) -> bool:
        return filter_fn(fqn, module)

    return swapped
