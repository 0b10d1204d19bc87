"""The rate-limit model: config, matching, and the sliding window's guarantee (pure, no ledger)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.budgets import Attributes
from spendgate.errors import ConfigError
from spendgate.limits import BUCKETS, Demand, Limit, SlidingWindow, bucket_of, parse_per
from spendgate.money import Money

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_config_reads_each_kind_and_round_trips() -> None:
    cases: list[dict[str, Any]] = [
        {"selector": {"key": "*"}, "requests": 10, "per": "10s"},
        {"selector": {"team": "ml"}, "tokens": 2000, "per": "1m"},
        {"selector": {"user": "*"}, "input_tokens": 5000, "per": "1h"},
        {"output_tokens": 100, "per": "1d"},
        {"selector": {"key": "*"}, "usd": "1.50", "per": "1h", "on_exceed": "wait"},
        {"selector": {"key": "*"}, "concurrency": 4},
        {"selector": {"user": "*"}, "prompt_tokens": 8000, "name": "no huge prompts"},
    ]
    for config in cases:
        limit = Limit.from_config(config)
        assert Limit.from_config(limit.to_config()) == limit
    usd = Limit.from_config(cases[4])
    assert usd.amount == Money.parse("1.50").nanos and usd.per == timedelta(hours=1)
    assert usd.id == "key=*/usd/1h"
    assert Limit.from_config(cases[0]).label("key=k1") == "key=k1: 10 requests per 10s"
    assert Limit.from_config(cases[5]).label() == "key=*: 4 requests in flight"


@pytest.mark.parametrize(
    ("config", "where", "says"),
    [
        ({"requests": 10}, "limits[0].per", "missing"),
        ({"requests": 10, "tokens": 5, "per": "1m"}, "limits[0]", "exactly one"),
        ({"per": "1m"}, "limits[0]", "exactly one"),
        ({"requests": -1, "per": "1m"}, "limits[0].requests", ">= 0"),
        ({"requests": 1.5, "per": "1m"}, "limits[0].requests", "whole number"),
        ({"requests": True, "per": "1m"}, "limits[0].requests", "whole number"),
        ({"requests": 10, "per": "0s"}, "limits[0].per", "positive"),
        ({"requests": 10, "per": "40d"}, "limits[0].per", "31 days"),
        ({"requests": 10, "per": "99999999999999999999d"}, "limits[0].per", "31 days"),
        ({"requests": 10, "per": "fortnight"}, "limits[0].per", "window like"),
        ({"concurrency": 3, "per": "1m"}, "limits[0].per", "no window"),
        ({"prompt_tokens": 3, "on_exceed": "wait"}, "limits[0].on_exceed", "cannot wait"),
        ({"requests": 1, "per": "1m", "on_exceed": "clamp"}, "limits[0].on_exceed", "one of"),
        ({"requests": 1, "per": "1m", "selector": {"planet": "*"}}, "limits[0].selector.planet", "dimension"),
        ({"requests": 1, "per": "1m", "color": "red"}, "limits[0].color", "unknown limit key"),
        ({"usd": "abc", "per": "1m"}, "limits[0].usd", ""),
    ],
)
def test_bad_config_names_the_key_and_the_problem(config: dict[str, object], where: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        Limit.from_config(config)
    assert info.value.key == where
    assert says in str(info.value)


def test_per_units() -> None:
    assert parse_per("10s") == timedelta(seconds=10)
    assert parse_per("5 min") == timedelta(minutes=5)
    assert parse_per("2h") == timedelta(hours=2)
    assert parse_per("1d") == timedelta(days=1)
    assert parse_per(30) == timedelta(seconds=30)


def test_matching_uses_the_budget_selectors() -> None:
    per_key = Limit.from_config({"selector": {"key": "*", "tag": "batch"}, "requests": 1, "per": "1m"})
    assert per_key.matches(Attributes(key="k1", tags=frozenset({"batch"}))) == ("key=k1",)
    assert per_key.matches(Attributes(key="k1")) == ()
    assert per_key.matches(Attributes(tags=frozenset({"batch"}))) == ()


def test_demand_amounts_per_kind() -> None:
    demand = Demand(input_tokens=100, output_tokens=50, cost=7)
    assert [demand.of(k) for k in ("requests", "concurrency", "input_tokens", "prompt_tokens")] == [
        1,
        1,
        100,
        100,
    ]
    assert [demand.of(k) for k in ("output_tokens", "tokens", "usd")] == [50, 150, 7]


def test_the_window_forgets_a_bucket_exactly_when_it_leaves() -> None:
    per = timedelta(seconds=10)
    limit = Limit.from_config({"requests": 3, "per": "10s"})
    window = SlidingWindow(limit.width_us)
    width = timedelta(microseconds=limit.width_us)
    assert width * BUCKETS == per
    start = T0
    window.add(bucket_of(start, limit.width_us), 3)
    assert window.used(start) == 3
    assert window.seconds_until_fits(start, 3, 1) == pytest.approx((per + width).total_seconds())
    # Still counted just before it leaves; gone one bucket past the window.
    assert window.used(start + per + width - timedelta(microseconds=1)) == 3
    assert window.used(start + per + width) == 0
    assert window.seconds_until_fits(start, 3, 4) is None  # never fits: more than the amount


@settings(max_examples=200, deadline=None)
@given(
    amount=st.integers(min_value=1, max_value=20),
    arrivals=st.lists(
        st.tuples(st.integers(min_value=0, max_value=40_000), st.integers(min_value=1, max_value=5)),
        min_size=1,
        max_size=200,
    ),
)
def test_no_span_of_the_window_ever_holds_more_than_the_amount(
    amount: int, arrivals: list[tuple[int, int]]
) -> None:
    """Whatever the arrival times (ms) and sizes, the admitted amounts in any span of ``per``
    stay within the amount: no burst at a window's edge."""
    limit = Limit.from_config({"tokens": amount, "per": "10s"})
    window = SlidingWindow(limit.width_us)
    admitted: list[tuple[int, int]] = []
    for at_ms, need in sorted(arrivals):
        now = T0 + timedelta(milliseconds=at_ms)
        if window.used(now) + need <= amount:
            window.add(bucket_of(now, limit.width_us), need)
            admitted.append((at_ms, need))
    for start_ms, _ in admitted:
        in_span = sum(n for t, n in admitted if start_ms <= t < start_ms + 10_000)
        assert in_span <= amount


def test_steady_use_reaches_most_of_the_amount() -> None:
    """One request every 100 ms against 10 per 10 s for a minute: at least 90% of the amount per
    period is used (the bucketed window is at most one bucket longer than per: 10.5 s here)."""
    limit = Limit.from_config({"requests": 10, "per": "10s"})
    window = SlidingWindow(limit.width_us)
    admitted = 0
    for step in range(600):
        now = T0 + timedelta(milliseconds=100 * step)
        if window.used(now) + 1 <= 10:
            window.add(bucket_of(now, limit.width_us), 1)
            admitted += 1
    assert admitted >= 0.9 * 60


# --- pacing -----------------------------------------------------------------------------------------


def test_a_paced_month_allows_a_thirtieth_a_day_and_carries_forward() -> None:
    from spendgate.budgets import Budget, Pace, Window

    budget = Budget.from_config({"limit": "300", "window": "month", "pace": "even"})
    assert budget.pace == Pace()
    start = datetime(2026, 11, 1, tzinfo=UTC)  # November: 30 days, one step a day
    end = datetime(2026, 12, 1, tzinfo=UTC)
    usd = Money.parse("1").nanos
    assert budget.allowance(start, start, end) == 10 * usd
    assert budget.allowance(start + timedelta(hours=23, minutes=59), start, end) == 10 * usd
    assert budget.allowance(start + timedelta(days=1), start, end) == 20 * usd  # day 1 unspent: carried
    assert budget.allowance(end - timedelta(microseconds=1), start, end) == 300 * usd
    pace = budget.pace
    assert pace is not None
    assert pace.seconds_until(15 * usd, 300 * usd, start, end, start) == 86400.0
    assert pace.seconds_until(301 * usd, 300 * usd, start, end, start) is None
    # An unpaced budget allows its whole limit at once.
    assert Budget.from_config({"limit": "300", "window": "month"}).allowance(start, start, end) == 300 * usd
    # A fixed step and a burst.
    burst = Budget.from_config({"limit": "100", "window": "day", "pace": {"step": "6h", "burst": "10%"}})
    day = datetime(2026, 12, 2, tzinfo=UTC)
    assert burst.allowance(day, day, day + timedelta(days=1)) == 35 * usd  # 1/4 + 10%
    assert burst.to_config()["pace"] == {"burst": "10%", "step": "6h"}
    assert Budget.from_config(burst.to_config()) == burst
    assert Window.parse("day").resets


@pytest.mark.parametrize(
    ("pace", "says"),
    [
        ("fast", "'even' or a mapping"),
        ({"step": 5}, "duration"),
        ({"burst": "x"}, "whole percent"),
        ({"speed": 1}, "unknown pace key"),
        ({"burst": "150%"}, "0 to 100"),
    ],
)
def test_bad_pace_config(pace: object, says: str) -> None:
    from spendgate.budgets import Budget

    with pytest.raises(ConfigError) as info:
        Budget.from_config({"limit": "1", "window": "day", "pace": pace})
    assert info.value.key == "budgets[0].pace" and says in str(info.value)


def test_a_budget_that_never_resets_cannot_be_paced() -> None:
    from spendgate.budgets import Budget

    with pytest.raises(ConfigError, match="window that resets"):
        Budget.from_config({"limit": "1", "pace": "even"})
