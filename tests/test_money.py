from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendgate.money import Money, MoneyError, femto_to_nano_ceil, rate_to_nanos_per_million


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        (100, 100_000_000_000),
        ("100", 100_000_000_000),
        ("100 USD", 100_000_000_000),
        ("100usd", 100_000_000_000),
        ("$0.50", 500_000_000),
        ("$ 1,250.75", 1_250_750_000_000),
        (".25", 250_000_000),
        ("0.000000001", 1),
        (Decimal("1.5"), 1_500_000_000),
        (Money(42), 42),
        ("0", 0),
    ],
)
def test_parse(text: object, nanos: int) -> None:
    assert Money.parse(text) == Money(nanos)


def test_finer_than_a_nano_rounds_up() -> None:
    assert Money.parse("0.0000000001") == Money(1)
    assert Money.parse(Decimal("1.0000000001")) == Money(1_000_000_001)


@pytest.mark.parametrize(
    "bad", ["NaN", Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), "abc", "", "1.2.3", "$-"]
)
def test_refuses_non_numbers(bad: object) -> None:
    with pytest.raises(MoneyError):
        Money.parse(bad)


@pytest.mark.parametrize("bad", ["-1", -5, Decimal("-0.01"), "-$3"])
def test_refuses_negative_by_default(bad: object) -> None:
    with pytest.raises(MoneyError, match="negative"):
        Money.parse(bad, what="limit")
    assert Money.parse(bad, allow_negative=True).nanos < 0


def test_reads_a_float_as_its_shortest_decimal_and_refuses_bool() -> None:
    assert Money.parse(0.1) == Money.parse("0.1")  # what a person typed, exactly
    with pytest.raises(MoneyError, match="finite"):
        Money.parse(float("nan"))
    with pytest.raises(MoneyError):
        Money.parse(True)
    with pytest.raises(MoneyError):
        Money(1.5)  # type: ignore[arg-type]


def test_error_names_the_value() -> None:
    with pytest.raises(MoneyError, match=r"budgets\[0\]\.limit"):
        Money.parse("ten dollars", what="budgets[0].limit")


def test_format_for_people() -> None:
    assert Money.parse("1.5").format() == "$1.50"
    assert Money.parse("1234567.891").format() == "$1,234,567.891"
    assert Money.parse("0.000125").format() == "$0.000125"
    assert Money(0).format() == "$0.00"
    assert Money.parse("-2", allow_negative=True).format() == "-$2.00"
    assert str(Money.parse("100")) == "100 USD"
    assert str(Money.parse("0.5")) == "0.5 USD"


def test_arithmetic_exact() -> None:
    a = Money.parse("0.1")
    assert a + a + a == Money.parse("0.3")
    assert (a * 3) - Money.parse("0.3") == Money(0)
    assert 3 * a == a * 3
    assert -a < a
    assert sorted([Money(3), Money(1), Money(2)]) == [Money(1), Money(2), Money(3)]
    assert Money(5).to_decimal() == Decimal("0.000000005")


def test_immutable_and_hashable() -> None:
    m = Money(1)
    with pytest.raises(AttributeError):
        m.nanos = 2
    assert {Money(1), Money(1)} == {Money(1)}


def test_rates() -> None:
    assert rate_to_nanos_per_million("2.50") == 2_500_000_000
    assert rate_to_nanos_per_million(Decimal("0.0375")) == 37_500_000
    assert rate_to_nanos_per_million("$0.1") == 100_000_000
    assert rate_to_nanos_per_million(2.5) == 2_500_000_000
    with pytest.raises(MoneyError, match="finite"):
        rate_to_nanos_per_million(float("inf"))
    with pytest.raises(MoneyError, match="negative"):
        rate_to_nanos_per_million("-1")
    with pytest.raises(MoneyError):
        rate_to_nanos_per_million("inf")


@given(st.integers(min_value=0, max_value=10**30))
def test_femto_ceil_is_smallest_cover(femto: int) -> None:
    nanos = femto_to_nano_ceil(femto)
    assert nanos * 10**6 >= femto
    assert (nanos - 1) * 10**6 < femto or femto == 0


@given(st.decimals(min_value=0, max_value=10**9, allow_nan=False, allow_infinity=False, places=12))
def test_parse_never_understates(value: Decimal) -> None:
    assert Money.parse(value).to_decimal() >= value


def test_decimal_str_for_json_and_headers() -> None:
    assert Money(0).decimal_str() == "0"
    assert Money.parse("1").decimal_str() == "1"
    assert Money.parse("0.03002").decimal_str() == "0.03002"
    assert Money(1).decimal_str() == "0.000000001"
    assert Money.parse("1000").decimal_str() == "1000"
