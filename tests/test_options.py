"""pemn.options: what a declaration generates. PEMNConfig's per-option checks (type, names, range, own check) come
from its declarations in the library's words; a rule across options declared with :class:`pemn.options.Needs`
refuses the option set without what it needs; TrainConfig's declared rules, one row each."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import pytest

from pemn import PEMNConfig
from pemn.options import Bounds, Needs, check_needs, copy_option, field_types, option, option_bounds, option_choices
from pemn.training.config import TrainConfig, resolve_config

PEMN_FIELDS = {f.name: f for f in dataclasses.fields(PEMNConfig)}
KINDS = field_types(PEMNConfig)


@pytest.mark.parametrize(("text", "name", "words"), [
    ("(0, 1]", "keep", "0 < keep <= 1"),
    ("(0, 1)", "ratio", "0 < ratio < 1"),
    ("[0, 2**63)", "seed", "0 <= seed < 2**63"),
    (">= 1", "epochs", "epochs >= 1"),
    ("> 0", "lr", "lr > 0"),
])
def test_bounds_in_words(text: str, name: str, words: str) -> None:
    assert Bounds.parse(text).inequality(name) == words


def _pemn_cases() -> list[tuple[str, Any, str]]:
    """(option, a value its declaration refuses, the message) for every PEMNConfig option with a type, names or
    a range to refuse."""
    cases = []
    for name, f in PEMN_FIELDS.items():
        kind, _ = KINDS[name]
        if kind is bool:
            cases.append((name, 1, rf"^{name} must be a bool, got 1$"))
        elif (choices := option_choices(f)) is not None:
            cases.append((name, "nope", rf"^{name} must be one of {re.escape(repr(choices))}, got 'nope'$"))
        elif (bounds := option_bounds(f)) is not None:
            noun = "a number" if kind is float else "an int"
            context = " for strategy 'rp'" if name == "ratio" else ""
            for bad in (-1, True, "x"):
                cases.append((name, bad, rf"^{name} must be {noun} with {re.escape(bounds.inequality(name))}"
                                         rf"{context}, got {re.escape(repr(bad))}$"))
    return cases


@pytest.mark.parametrize(("name", "value", "message"), _pemn_cases(), ids=[f"{n}={v!r}" for n, v, _ in _pemn_cases()])
def test_pemnconfig_refuses_what_its_declaration_refuses(name: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PEMNConfig(**{name: value})


def test_every_pemnconfig_option_is_checked_or_has_its_own_check() -> None:
    """An option without a type to refuse, names or a range declares its own ``check`` (the layer patterns)."""
    tested = {n for n, _, _ in _pemn_cases()}
    assert set(PEMN_FIELDS) - tested == {"targets", "exclude"}
    for name in ("targets", "exclude"):
        with pytest.raises(ValueError, match=rf"^{name} must be a list of non-empty strings"):
            PEMNConfig(**{name: [""]})
        with pytest.raises(ValueError, match=rf"^{name}: '\(' is neither a layer type nor a valid regex"):
            PEMNConfig(**{name: "("})


def test_pemnconfig_normalises_what_it_accepts() -> None:
    config = PEMNConfig(keep=1, targets="Linear", exclude=None, seed=3)
    assert isinstance(config.keep, float) and config.keep == 1.0
    assert config.targets == ("Linear",) and config.exclude == () and config.ratio == 1e-3


@dataclass
class _Run:
    """A toy declared config: ``scope`` needs ``prune``, ``teacher`` needs a non-text dataset (a message naming
    a value)."""

    prune: str | None = option(None, "prune")
    scope: str = option("layer", "scope", needs=Needs(lambda c: c.prune is not None, "scope needs prune"))
    dataset: str = option("digits", "dataset")
    teacher: str | None = option(None, "teacher", needs=Needs(lambda c: c.dataset != "text",
                                                               lambda c: f"no teacher on {c.dataset!r}"))


@pytest.mark.parametrize(("settings", "message"), [
    ({}, None),
    ({"scope": "layer"}, None),  # the default: nothing is set
    ({"scope": "global", "prune": "random"}, None),
    ({"scope": "global"}, "scope needs prune"),
    ({"dataset": "text"}, None),
    ({"dataset": "text", "teacher": "t"}, "no teacher on 'text'"),
    ({"dataset": "text", "teacher": "t", "scope": "global"}, "scope needs prune"),  # the first in field order
])
def test_needs(settings: dict[str, Any], message: str | None) -> None:
    run = _Run(**settings)
    if message is None:
        check_needs(run)
        return
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_needs(run)


def test_copy_option_keeps_check_and_needs() -> None:
    scope = next(f for f in dataclasses.fields(_Run) if f.name == "scope")
    copied = copy_option(scope, help="other")
    assert copied.metadata["needs"] is scope.metadata["needs"] and copied.metadata["help"] == "other"
    targets = copy_option(PEMN_FIELDS["targets"])
    assert targets.metadata["check"] is PEMN_FIELDS["targets"].metadata["check"]


#: Every rule a TrainConfig option declares (Needs): the option set without what it needs, and the message.
TRAIN_NEEDS = {
    "block_size": ({"block_size": 32}, "block_size is the context of a language model: it applies only to dataset "
                                       "'text'"),
    "ratio": ({"strategy": "mp", "ratio": 0.1}, "ratio applies only to strategy 'rp' (got strategy 'mp'); leave it "
                                                "unset"),
    "teacher": ({"dataset": "text", "model": "gpt-16-2", "teacher": "t.safetensors"},
                "teacher: distillation applies to image classifiers (the teacher is rebuilt for the images' shape); "
                "train the language model without --teacher"),
    "prune": ({"prune": "random"}, "prune is a baseline for dense models: it needs strategy 'dense', got 'rp'"),
    "compression": ({"strategy": "dense", "compression": 0.5}, "compression is the pruned fraction: it needs prune "
                                                               "('random' or 'magnitude')"),
    "prune_scope": ({"strategy": "dense", "prune_scope": "global"}, "prune_scope needs prune ('random' or "
                                                                    "'magnitude')"),
    "quantize": ({"quantize": "int4"}, "quantize is a baseline for dense models: it needs strategy 'dense', got "
                                       "'rp'"),
}


def test_every_declared_train_rule_has_a_row() -> None:
    declared = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("needs") is not None}
    assert declared == set(TRAIN_NEEDS)


@pytest.mark.parametrize("name", list(TRAIN_NEEDS))
def test_a_train_option_without_what_it_needs_is_refused(name: str) -> None:
    settings, message = TRAIN_NEEDS[name]
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        resolve_config(settings)
