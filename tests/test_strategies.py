"""pemn.strategies: the one table of PEMN strategies that PEMNConfig, prototype.plan and the application read."""

from __future__ import annotations

import pytest

import pemn
from pemn import strategies
from pemn.prototype import plan
from pemn.strategies import STRATEGY_TABLE, Strategy, stored_length
from pemn.training.config import STRATEGY_TABLE as TRAIN_STRATEGY_TABLE

SHAPES = [(4, 3), (8, 3), (4, 3), (2, 2)]


def test_the_table_is_the_papers() -> None:
    assert tuple(STRATEGY_TABLE) == pemn.config.STRATEGIES == ("mask", "one_layer", "mp", "rp")
    owners = {name: s.planner(SHAPES, [12, 24, 12, 4]) for name, s in STRATEGY_TABLE.items()}
    assert owners == {"mask": [0, 1, 2, 3], "one_layer": [0, 1, 0, 3], "mp": [1, 1, 1, 1], "rp": [1, 1, 1, 1]}
    assert [n for n, s in STRATEGY_TABLE.items() if s.takes_ratio] == ["rp"]
    assert [n for n, s in STRATEGY_TABLE.items() if s.takes_fill] == ["mp", "rp"]
    assert pemn.PEMNConfig().ratio == STRATEGY_TABLE["rp"].default_ratio == 1e-3
    assert stored_length(STRATEGY_TABLE["rp"], 0.1, 24) == 3 and stored_length(STRATEGY_TABLE["mp"], None, 24) == 24
    assert stored_length(STRATEGY_TABLE["rp"], 0.99, 4) == 4  # never more than the expanded length


def test_the_application_derives_its_table() -> None:
    """The training strategies are dense plus the core's rows, label, ratio and fill taken from the core."""
    assert list(TRAIN_STRATEGY_TABLE) == ["dense", *STRATEGY_TABLE]
    for name, s in STRATEGY_TABLE.items():
        row = TRAIN_STRATEGY_TABLE[name]
        assert (row.label, row.pemn, row.takes_ratio, row.takes_fill) == (s.label, True, s.takes_ratio, s.takes_fill)


def test_a_new_row_reaches_config_and_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A strategy added to the table is validated by PEMNConfig and planned by plan() from that row alone."""
    def last(shapes: object, numels: list[int]) -> list[int]:
        return [len(numels) - 1] * len(numels)

    monkeypatch.setitem(STRATEGY_TABLE, "tail", Strategy("tail", "Tail", last, takes_ratio=True, default_ratio=0.5))
    config = pemn.PEMNConfig(strategy="tail")
    assert config.ratio == 0.5
    sources, assignments = plan(config, SHAPES)
    assert list(sources) == ["s3"] and sources["s3"].length == 3 and {a.source for a in assignments} == {"s3"}
    with pytest.raises(ValueError, match=r"fill='rand' applies only to strategies 'mp' and 'rp', not 'tail'"):
        pemn.PEMNConfig(strategy="tail", fill="rand")
    with pytest.raises(ValueError, match=r"ratio applies only to strategies 'rp' and 'tail' \(got ratio=0.1 with "
                                         r"strategy 'mask'\)"):
        pemn.PEMNConfig(strategy="mask", ratio=0.1)


@pytest.mark.parametrize(("setting", "message"), [
    ({"strategy": "nope"}, r"strategy must be one of \('mask', 'one_layer', 'mp', 'rp'\), got 'nope'"),
    ({"strategy": "mp", "ratio": 0.1}, r"ratio applies only to strategy 'rp' \(got ratio=0.1 with strategy 'mp'\); "
                                       r"leave it unset"),
    ({"strategy": "one_layer", "fill": "rand"}, r"fill='rand' applies only to strategies 'mp' and 'rp', not "
                                                r"'one_layer'"),
    ({"strategy": "rp", "ratio": 1.5}, r"ratio must be a number with 0 < ratio < 1 for strategy 'rp', got 1.5"),
])
def test_messages_unchanged(setting: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pemn.PEMNConfig(**setting)


def test_strategy_names() -> None:
    assert strategies.strategy_names(["rp"]) == "strategy 'rp'"
    assert strategies.strategy_names(["a", "b", "c"]) == "strategies 'a', 'b' and 'c'"
