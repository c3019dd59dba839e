"""The Hugging Face transformers round trip: a ``.pemn`` file of a transformers model records what rebuilds it.

:func:`pemn.save` of a converted transformers model (one of the model classes ``transformers`` exports, e.g.
``BertForMaskedLM``) stores, as the file's ``app`` object (JSON, covered by the integrity hash; never a pickle)::

    {"kind": "transformers", "model": "BertForMaskedLM", "config": {...}, "transformers_version": "5.0.0",
     "dtype": "float32", "attn_implementation": "sdpa"}

``config`` is the model config as transformers itself saves it (``config.to_json_string(use_diff=True)``:
the values that differ from the class defaults). ``pemn.load(path)`` with no model then rebuilds the
architecture (``Class(Class.config_class.from_dict(config))``, torch's global RNG untouched) and installs the
masks and dense state into it, bit-identical to the saved model. transformers is imported only for such files.

A converted model's ``save_pretrained`` is refused (:func:`refuse_save_pretrained`): transformers would write the
masked weights as missing, and ``from_pretrained`` would then initialise them at random.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from pemn.errors import ConversionError, FormatError

#: ``app["kind"]`` of a transformers model.
APP_KIND = "transformers"
_KEYS = {"kind", "model", "config", "transformers_version", "dtype", "attn_implementation"}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        return None
    return transformers


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (duck-typed: transformers is not imported)."""
    return type(model).__module__.startswith("transformers.") and callable(
        getattr(getattr(model, "config", None), "to_json_string", None))


def app_of(model: nn.Module) -> dict[str, Any] | None:
    """The app object that rebuilds ``model`` (see the module doc), or None if it is not a model class that
    ``transformers`` exports under its own name (a remote-code or user subclass: pass the model to load)."""
    if not is_transformers_model(model):
        return None
    transformers = _transformers()
    cls = type(model)
    if transformers is None or getattr(transformers, cls.__name__, None) is not cls:
        return None
    try:
        config = json.loads(model.config.to_json_string(use_diff=True))
    except (TypeError, ValueError):  # a config holding something JSON cannot say: the file needs the model to load
        return None
    floating = next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), torch.float32)
    app: dict[str, Any] = {"kind": APP_KIND, "model": cls.__name__, "config": config,
                           "transformers_version": transformers.__version__,
                           "dtype": str(floating).removeprefix("torch.")}
    attn = getattr(model.config, "_attn_implementation", None)
    if isinstance(attn, str):
        app["attn_implementation"] = attn
    return app


def build(app: dict[str, Any], where: str = "the artifact") -> nn.Module:
    """A freshly built (random) transformers model of the architecture ``app`` records, in train mode as
    transformers builds it. FormatError if the record is malformed or names no transformers model class;
    ImportError (with what to install) if transformers is missing."""
    if not (isinstance(app, dict) and app.get("kind") == APP_KIND and set(app) <= _KEYS
            and isinstance(app.get("model"), str) and isinstance(app.get("config"), dict)):
        raise FormatError(f"{where}: corrupt transformers metadata (expected kind, model class name and config)")
    transformers = _transformers()
    if transformers is None:
        raise ImportError(f"{where} holds a transformers {app['model']}: install transformers "
                          f"(pip install transformers; it was saved with {app.get('transformers_version')}) "
                          "to rebuild it, or pass a freshly built model to pemn.load")
    cls = getattr(transformers, app["model"], None) if app["model"].isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise FormatError(f"{where}: {app['model']!r} is not a model class of transformers "
                          f"{transformers.__version__} (saved with {app.get('transformers_version')})")
    dtype = getattr(torch, str(app.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise FormatError(f"{where}: corrupt transformers metadata (dtype {app.get('dtype')!r})")
    try:
        config = cls.config_class.from_dict(app["config"])
        if "attn_implementation" in app:
            config._attn_implementation = app["attn_implementation"]
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten; the caller's RNG is not touched
            torch.manual_seed(0)
            model = cls(config)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise FormatError(f"{where}: its transformers config does not build a {app['model']} with transformers "
                          f"{transformers.__version__} (saved with {app.get('transformers_version')}): "
                          f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
    return model.to(dtype) if dtype != torch.float32 else model


def refuse_save_pretrained(self: nn.Module, *args: Any, **kwargs: Any) -> None:
    """transformers' ``save_pretrained`` on a pemn model: refused (it would save the masked weights as missing,
    and ``from_pretrained`` would fill them with random values)."""
    raise ConversionError(
        "save_pretrained() cannot save a pemn model: transformers would leave out every masked weight, and "
        "from_pretrained would initialise them at random. Save the small file with pemn.save(model, 'model.pemn') "
        "(pemn.load('model.pemn') rebuilds the model, no code needed), or a dense transformers checkpoint with "
        "pemn.materialize(model).save_pretrained(directory)")


refuse_save_pretrained._pemn_guard = True  # type: ignore[attr-defined]
