"""transformers' weight tying on a converted model: pemn-aware ``tie_weights`` and ``resize_token_embeddings``
(and a ``save_pretrained`` that refuses).

A transformers model (duck-typed: a class with ``tie_weights`` and ``resize_token_embeddings``) gets, on the
instance, versions of both that keep the ties pemn already holds, make dense ties as transformers does, and
raise :class:`~pemn.errors.ConversionError` instead of replacing a masked weight by a dense one.
:func:`guard_transformers_` installs them after a conversion; :func:`unguard_` takes them off a baked copy.
"""

from __future__ import annotations

import itertools
import re
import types
from collections.abc import Mapping

from torch import nn

from pemn.errors import ConversionError
from pemn.hf import refuse_save_pretrained
from pemn.layers import CHILD_PREFIX, MaskedLayer, MaskedWeight
from pemn.walk import qualified as _qualified

_GUARDED = ("tie_weights", "resize_token_embeddings", "save_pretrained")


def _resolve(owner: nn.Module, name: str) -> tuple[str, object]:
    """What a parameter name of ``owner`` points at: ("masked", MaskedWeight), ("dense", tensor) or
    ("missing", None). Names inside pemn's internals resolve to their MaskedWeight."""
    parts = name.split(".")
    module: nn.Module = owner
    for part in parts[:-1]:
        child = module._modules.get(part)
        if child is None:
            return "missing", None
        if isinstance(child, MaskedWeight):
            return "masked", child
        module = child
    attr = parts[-1]
    if isinstance(module, MaskedLayer) and attr in module.masked_weights():
        return "masked", module.masked_weights()[attr]
    t = module._parameters.get(attr, module._buffers.get(attr))
    return ("dense", (module, attr, t)) if t is not None else ("missing", None)


def _expanded_ties(owner: nn.Module) -> dict[str, str]:
    """transformers' tie mapping ``{target: source}`` of ``owner`` and its sub-models, expanded to parameter
    names as ``PreTrainedModel.get_expanded_tied_weights_keys(all_submodels=True)`` does, but over the
    original model's names (a masked weight under its own name, pemn's internals hidden)."""
    out: dict[str, str] = {}
    for prefix, sub in owner.named_modules(remove_duplicate=False):
        if not callable(getattr(type(sub), "get_expanded_tied_weights_keys", None)):
            continue
        mapping = getattr(sub, "_tied_weights_keys", None)
        if not getattr(getattr(sub, "config", None), "tie_word_embeddings", False) or not mapping:
            continue
        if not isinstance(mapping, Mapping):
            raise ConversionError("tie_weights() on a pemn model needs transformers >= 5 (a dict of tied weight "
                                  "keys); tie the weights before pemn.convert_ instead (the tie then holds)")
        names = [n for n, _ in sub.named_parameters(remove_duplicate=False)]
        names += [n for n, _ in sub.named_buffers(remove_duplicate=False)]
        names = [n for n in names if f".{CHILD_PREFIX}" not in f".{n}"]
        names += [_qualified(m, p) for m, mod in sub.named_modules(remove_duplicate=False)
                  if isinstance(mod, MaskedLayer) for p in mod.masked_weights()]
        for target, source in mapping.items():
            if target in names and source in names:
                pairs: list[tuple[str, str]] = [(target, source)]
            else:
                sources = sorted(n for n in set(names) if re.search("^" + source, n))
                targets = sorted(n for n in set(names) if re.search("^" + target, n))
                if not sources or not targets or len(targets) % len(sources):
                    raise ConversionError(f"cannot expand transformers' tie {target!r} -> {source!r} on this model")
                pairs = list(zip(targets, itertools.cycle(sources)))
            for t, s_ in pairs:
                out[_qualified(prefix, t)] = out.get(_qualified(prefix, s_), _qualified(prefix, s_))
    return out


def _pemn_tie_weights(self: nn.Module, *args, **kwargs) -> None:
    """transformers' ``tie_weights`` on a pemn model: ties pemn already holds are kept (one masked weight
    for all users), dense ties are made as transformers makes them, and a tie that would replace a masked
    weight raises :class:`ConversionError` (nothing is changed then)."""
    todo = []
    for target, source in _expanded_ties(self).items():
        (tk, tv), (sk, sv) = _resolve(self, target), _resolve(self, source)
        if tk == sk == "masked" and tv is sv:
            continue
        if tk == sk == "dense":
            if tv[2] is not sv[2]:
                todo.append((tv[0], tv[1], sv[2]))
            continue
        raise ConversionError(
            f"transformers asks to tie {target} to {source}, but pemn masks {target if tk == 'masked' else source} "
            "and they are not one masked weight: tie the weights before pemn.convert_ (the tie then holds through "
            "conversion, training and saving), or bake the model with pemn.materialize first")
    for module, attr, t in todo:
        setattr(module, attr, t)


def _pemn_resize_token_embeddings(self: nn.Module, new_num_tokens: int | None = None,
                                  pad_to_multiple_of: int | None = None, *args, **kwargs):
    """transformers' ``resize_token_embeddings`` on a pemn model: only the no-op form is allowed."""
    if new_num_tokens is None and pad_to_multiple_of is None:
        return self.get_input_embeddings()
    raise ConversionError("resize_token_embeddings() would replace pemn's masked embeddings by dense ones: resize "
                          "before pemn.convert_ (then convert the resized model)")


_pemn_tie_weights._pemn_guard = True  # type: ignore[attr-defined]
_pemn_resize_token_embeddings._pemn_guard = True  # type: ignore[attr-defined]


def guard_transformers_(root: nn.Module) -> None:
    """Give every transformers model inside ``root`` (duck-typed: it has ``tie_weights`` and
    ``resize_token_embeddings``) pemn-aware versions of both, on the instance, and a ``save_pretrained`` that
    refuses (:func:`pemn.hf.refuse_save_pretrained`)."""
    for module in root.modules():
        if callable(getattr(type(module), "tie_weights", None)) and \
                callable(getattr(type(module), "resize_token_embeddings", None)):
            module.__dict__["tie_weights"] = types.MethodType(_pemn_tie_weights, module)
            module.__dict__["resize_token_embeddings"] = types.MethodType(_pemn_resize_token_embeddings, module)
            if callable(getattr(type(module), "save_pretrained", None)):
                module.__dict__["save_pretrained"] = types.MethodType(refuse_save_pretrained, module)


def unguard_(root: nn.Module) -> None:
    """Take the methods :func:`guard_transformers_` put on the instances of ``root`` off again (a baked copy)."""
    for module in root.modules():
        for attr in _GUARDED:
            if isinstance(module.__dict__.get(attr), types.MethodType) and \
                    getattr(module.__dict__[attr].__func__, "_pemn_guard", False):
                del module.__dict__[attr]


__all__ = ["guard_transformers_", "unguard_"]
