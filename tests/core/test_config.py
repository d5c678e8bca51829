"""ue_core.config.from_dict checks every value against its field's type: a wrong one is a one-line error
naming the key, the value and what is expected, before any dataclass (or torch) sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from ue_core.config import from_dict, to_dict
from ue_core.defences import DefenceConfig
from ue_core.efficacy import ProbeConfig
from ue_core.errors import InvalidInputError
from ue_core.methods.beo import BEOConfig
from ue_core.methods.em import EMConfig
from ue_core.methods.lsp import LSPConfig
from ue_core.methods.random_noise import RandomNoiseConfig
from ue_core.methods.tap import TAPConfig
from ue_core.pga import Budget


@dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    rule: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    count: int = 1
    flag: bool = False
    name: str = "x"
    size: int | None = None
    sizes: tuple[int, ...] = ()
    pair: tuple[float, float] = (0.0, 1.0)
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def test_values_of_the_right_type_are_read():
    config = from_dict(Outer, {"count": 3, "flag": True, "name": "y", "size": None, "sizes": [1, 2],
                               "pair": ["1/2", 1], "inner": {"rate": "8/255", "rule": "b"},
                               "maybe": {"rate": 2}, "extra": {"any": [1]}})
    assert config == Outer(3, True, "y", None, (1, 2), (0.5, 1), Inner(8 / 255, "b"), Inner(2), {"any": [1]})
    assert from_dict(Outer, {"sizes": 4, "size": 5, "inner": {"rate": "1e-3"}}) == Outer(
        size=5, sizes=(4,), inner=Inner(rate=1e-3))  # one value stands for a list of one


@pytest.mark.parametrize("data, message", [
    ({"count": 1.5}, "config.count: expected an integer, got 1.5"),
    ({"count": True}, "config.count: expected an integer, got True"),
    ({"count": "abc"}, "config.count: expected an integer, got 'abc'"),
    ({"count": [1]}, "config.count: expected an integer, got [1]"),
    ({"flag": "yes"}, "config.flag: expected true or false, got 'yes'"),
    ({"name": 3}, "config.name: expected a string, got 3"),
    ({"size": "big"}, "config.size: expected an integer or null, got 'big'"),
    ({"sizes": [1, "a"]}, "config.sizes[1]: expected an integer, got 'a'"),
    ({"sizes": {"a": 1}}, "config.sizes: expected an integer, or a list of such values, got {'a': 1}"),
    ({"pair": [1]}, "config.pair: expected a list of 2 values, each a number or a fraction like 8/255, "
                    "got [1]"),
    ({"inner": {"rate": "8/0"}}, "config.inner.rate: expected a number or a fraction like 8/255, got '8/0'"),
    ({"inner": {"rate": "x"}}, "config.inner.rate: expected a number or a fraction like 8/255, got 'x'"),
    ({"inner": {"rate": False}}, "config.inner.rate: expected a number or a fraction like 8/255, got False"),
    ({"inner": {"rule": "c"}}, "config.inner.rule: expected one of a, b, got 'c'"),
    ({"inner": 3}, "config.inner: expected a mapping of keys to values, got 3"),
    ({"maybe": "x"}, "config.maybe: expected a mapping of keys to values or null, got 'x'"),
    ({"maybe": {"rate": None}}, "config.maybe.rate: expected a number or a fraction like 8/255, got None"),
    ({"extra": [1]}, "config.extra: expected a mapping of keys to values, got [1]"),
])
def test_a_value_of_another_type_is_one_line_naming_key_value_and_type(data, message):
    with pytest.raises(InvalidInputError) as error:
        from_dict(Outer, data)
    assert str(error.value) == message


def test_the_path_starts_where_the_caller_says():
    with pytest.raises(InvalidInputError, match=r"^budget\.norm: expected one of linf, l2, l0, got 'l3'$"):
        from_dict(Budget, {"norm": "l3"}, "budget")


@pytest.mark.parametrize("cls", [BEOConfig, Budget, DefenceConfig, ProbeConfig, EMConfig, TAPConfig,
                                 RandomNoiseConfig, LSPConfig])
def test_every_config_reads_back_its_own_dict(cls):
    assert from_dict(cls, to_dict(cls())) == cls()
