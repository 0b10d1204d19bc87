"""Budgets, selectors and windows, without a ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.budgets import (
    DIMENSIONS,
    Attributes,
    Budget,
    Window,
    instance_key,
    parse_instance_key,
)
from spendgate.clock import ManualClock, SystemClock
from spendgate.errors import ConfigError
from spendgate.money import Money

# -- config errors name the key -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"limit": "-5"}, "budgets[3].limit", "negative"),
        ({"limit": -5}, "budgets[3].limit", "negative"),
        ({"limit": "NaN"}, "budgets[3].limit", "cannot read"),
        ({"limit": float("nan")}, "budgets[3].limit", "finite"),
        ({"limit": Decimal("NaN")}, "budgets[3].limit", "finite"),
        ({"limit": float("inf")}, "budgets[3].limit", "finite"),
        ({"limit": -1.5}, "budgets[3].limit", "negative"),
        ({"limit": "a lot"}, "budgets[3].limit", "cannot read"),
        ({"limit": None}, "budgets[3].limit", "expected an amount"),
        ({"selector": {"department": "x"}}, "budgets[3].selector.department", "unknown dimension"),
        ({"selector": {"tags": "x"}}, "budgets[3].selector.tags", "unknown dimension"),
        ({"selector": {"user": ""}}, "budgets[3].selector.user", "non-empty"),
        ({"selector": ["user"]}, "budgets[3].selector", "mapping"),
        ({"window": "fortnight"}, "budgets[3].window", "unknown window"),
        ({"window": {"calendar": "year"}}, "budgets[3].window", "calendar must be"),
        ({"window": {"every": "0m"}}, "budgets[3].window", "positive"),
        ({"window": {"every": "5 parsecs"}}, "budgets[3].window", "period"),
        ({"window": {"every": "1h", "anchor": "yesterday"}}, "budgets[3].window", "anchor"),
        ({"window": {"calendar": "day", "when": "x"}}, "budgets[3].window", "unknown window key"),
        (
            {"window": {"calendar": "day", "timezone": "Mars/Olympus"}},
            "budgets[3].window.timezone",
            "time zone",
        ),
        ({"window": "day", "timezone": "Europe/Berlinn"}, "budgets[3].timezone", "time zone"),
        ({"thresholds": [0, 50]}, "budgets[3].thresholds", "1 to 100"),
        ({"thresholds": [150]}, "budgets[3].thresholds", "1 to 100"),
        ({"thresholds": ["lots"]}, "budgets[3].thresholds", "whole percent"),
        ({"thresholds": [50.5]}, "budgets[3].thresholds", "whole percent"),
        ({"thresholds": [50, 50]}, "budgets[3].thresholds", "twice"),
        ({"thresholds": 50}, "budgets[3].thresholds", "list"),
        ({"on_exceed": "explode"}, "budgets[3].on_exceed", "raise, wait, clamp"),
        ({"id": ""}, "budgets[3].id", "non-empty"),
        ({"colour": "red"}, "budgets[3].colour", "unknown budget key"),
    ],
)
def test_bad_budget_config_names_the_key(change: dict[str, Any], key: str, words: str) -> None:
    config: dict[str, Any] = {"id": "b", "selector": {"team": "research"}, "limit": "100", "window": "month"}
    config.update(change)
    with pytest.raises(ConfigError) as info:
        Budget.from_config(config, where="budgets[3]")
    assert info.value.key == key
    assert words in info.value.problem
    assert str(info.value).startswith(f"{key}: ")


def test_missing_limit() -> None:
    with pytest.raises(ConfigError) as info:
        Budget.from_config({"selector": {}})
    assert info.value.key == "budgets[0].limit"


def test_budget_config_round_trip() -> None:
    config = {
        "id": "research",
        "name": "Research",
        "selector": {"user": "*", "team": "research"},
        "limit": "$1,250.50",
        "window": {"calendar": "week", "timezone": "Asia/Kolkata"},
        "thresholds": ["90%", 50, Decimal(80)],
        "on_exceed": "wait",
    }
    budget = Budget.from_config(config)
    assert budget.limit == Money.usd("1250.50")
    assert budget.thresholds == (50, 80, 90)
    assert list(budget.selector) == ["user", "team"]  # dimension order
    assert budget.wildcards == ("user",)
    assert Budget.from_config(budget.to_config()) == budget
    assert budget.label({"user": "alice"}) == "Research: user=alice, team=research, weekly (Asia/Kolkata)"
    with pytest.raises(TypeError):
        budget.selector["user"] = "bob"  # type: ignore[index]


def test_defaults_and_shorthands() -> None:
    budget = Budget.from_config({"limit": 100})
    assert (budget.id, budget.window, budget.thresholds, budget.on_exceed) == (
        "global/total",
        Window.none(),
        (50, 80, 90, 100),
        "raise",
    )
    assert Budget.from_config(
        {"limit": "5", "window": "daily", "timezone": "Europe/Berlin"}
    ).window == Window.parse({"calendar": "day", "timezone": "Europe/Berlin"})
    assert (
        Budget.from_config({"limit": "5", "selector": {"team": "ml"}, "window": "month"}).id
        == "team=ml/monthly"
    )


# -- attributes and matching -------------------------------------------------------------------


def test_attributes_of_validates() -> None:
    attrs = Attributes.of(user="alice", tags=["a", "b"], tag="c", model=None)
    assert attrs == Attributes(user="alice", tags=frozenset({"a", "b", "c"}))
    assert Attributes.of(tags="solo").tags == frozenset({"solo"})
    with pytest.raises(ValueError, match="unknown request attribute 'department'"):
        Attributes.of(department="x")
    with pytest.raises(ValueError, match="non-empty"):
        Attributes.of(user="")
    with pytest.raises(ValueError, match="user"):
        Attributes.of(user=42)
    with pytest.raises(ValueError, match="tags"):
        Attributes.of(tags=[""])
    assert attrs.to_dict() == {"user": "alice", "tags": ["a", "b", "c"]}


@pytest.mark.parametrize(
    ("selector", "attrs", "keys"),
    [
        ({}, Attributes(), ("",)),
        ({"team": "ml"}, Attributes(team="ml", user="a"), ("",)),
        ({"team": "ml"}, Attributes(team="infra"), ()),
        ({"team": "ml"}, Attributes(), ()),
        ({"user": "*"}, Attributes(user="alice"), ("user=alice",)),
        ({"user": "*"}, Attributes(team="ml"), ()),
        ({"team": "ml", "user": "*"}, Attributes(team="ml", user="a"), ("user=a",)),
        ({"user": "*", "model": "*"}, Attributes(user="a", model="m"), ("user=a,model=m",)),
        ({"tag": "batch"}, Attributes(tags=frozenset({"batch", "x"})), ("",)),
        ({"tag": "batch"}, Attributes(tags=frozenset({"x"})), ()),
        ({"tag": "*"}, Attributes(tags=frozenset({"b", "a"})), ("tag=a", "tag=b")),
        ({"tag": "*"}, Attributes(), ()),
        ({"user": "*", "tag": "*"}, Attributes(user="u", tags=frozenset({"t"})), ("user=u,tag=t",)),
        ({"user": "*"}, Attributes(user="a,b=c%"), ("user=a%2Cb%3Dc%25",)),
    ],
)
def test_matches(selector: dict[str, str], attrs: Attributes, keys: tuple[str, ...]) -> None:
    budget = Budget("b", selector, Money.usd("1"))
    assert budget.matches(attrs) == keys
    for key in keys:
        assert instance_key(parse_instance_key(key)) == key


@given(st.dictionaries(st.sampled_from(DIMENSIONS), st.text(min_size=1), max_size=4))
def test_instance_key_round_trip(values: dict[str, str]) -> None:
    assert parse_instance_key(instance_key(values)) == values


def test_instance_key_checks_the_wildcards() -> None:
    budget = Budget("b", {"team": "ml", "user": "*"}, Money.usd("1"))
    assert budget.instance_key({"user": "a"}) == "user=a"
    assert budget.instance_key({"user": "a", "team": "ml"}) == "user=a"
    with pytest.raises(ValueError, match="instance"):
        budget.instance_key(None)
    with pytest.raises(ValueError, match="no wildcard dimension 'team'"):
        budget.instance_key({"user": "a", "team": "infra"})


# -- windows ------------------------------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("window", "now", "start", "end"),
    [
        ("hour", "2026-03-10T12:34:56Z", "2026-03-10T12:00:00Z", "2026-03-10T13:00:00Z"),
        ("day", "2026-03-10T00:00:00Z", "2026-03-10T00:00:00Z", "2026-03-11T00:00:00Z"),
        ("week", "2026-03-15T23:59:59Z", "2026-03-09T00:00:00Z", "2026-03-16T00:00:00Z"),  # Sunday
        ("week", "2026-03-16T00:00:00Z", "2026-03-16T00:00:00Z", "2026-03-23T00:00:00Z"),  # Monday
        ("month", "2026-12-31T23:59:59Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ("month", "2028-02-29T12:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
        # Half-hour offsets: a calendar hour in India starts at :30 UTC.
        ({"calendar": "hour", "timezone": "Asia/Kolkata"}, "2026-03-10T12:10:00Z", "2026-03-10T11:30:00Z",
         "2026-03-10T12:30:00Z"),
        # New York, fall back: 01:00-02:00 local happens twice, and is two hourly windows.
        ({"calendar": "hour", "timezone": "America/New_York"}, "2026-11-01T05:30:00Z", "2026-11-01T05:00:00Z",
         "2026-11-01T06:00:00Z"),
        ({"calendar": "hour", "timezone": "America/New_York"}, "2026-11-01T06:30:00Z", "2026-11-01T06:00:00Z",
         "2026-11-01T07:00:00Z"),
        ({"calendar": "day", "timezone": "America/New_York"}, "2026-03-08T12:00:00Z", "2026-03-08T05:00:00Z",
         "2026-03-09T04:00:00Z"),
        ({"calendar": "week", "timezone": "Europe/Berlin"}, "2026-03-29T12:00:00Z", "2026-03-22T23:00:00Z",
         "2026-03-29T22:00:00Z"),
        # Santiago skips midnight when DST starts (2026-09-06 00:00 -> 01:00): the day starts at the jump.
        ({"calendar": "day", "timezone": "America/Santiago"}, "2026-09-06T12:00:00Z", "2026-09-06T04:00:00Z",
         "2026-09-07T03:00:00Z"),
        ({"every": "90m"}, "1970-01-01T02:00:00Z", "1970-01-01T01:30:00Z", "1970-01-01T03:00:00Z"),
        ({"every": "1d", "anchor": "2026-01-01T06:00:00"}, "2026-03-10T05:59:59Z", "2026-03-09T06:00:00Z",
         "2026-03-10T06:00:00Z"),
        ({"every": "2h", "anchor": "2026-01-01T00:00:00", "timezone": "Europe/Berlin"}, "2026-01-01T00:00:00Z",
         "2025-12-31T23:00:00Z", "2026-01-01T01:00:00Z"),
    ],
)  # fmt: skip
def test_window_bounds(window: object, now: str, start: str, end: str) -> None:
    assert Window.parse(window).bounds(at(now)) == (at(start), at(end))


def test_window_none() -> None:
    window = Window.parse("none")
    start, end = window.bounds(at("2026-03-10T00:00:00Z"))
    assert end is None and start == datetime(1970, 1, 1, tzinfo=UTC)
    assert not window.resets and window.label() == "total"


@pytest.mark.parametrize(
    ("text", "label", "config"),
    [
        ("month", "monthly", "month"),
        ("Daily", "daily", "day"),
        ({"calendar": "day", "timezone": "Europe/Berlin"}, "daily (Europe/Berlin)",
         {"calendar": "day", "timezone": "Europe/Berlin"}),
        ({"every": "30 minutes"}, "every 30m", {"every": "30m"}),
        ("2h", "every 2h", {"every": "2h"}),
        ({"every": "1d", "anchor": "2026-01-01T00:00:00Z"}, "every 1d from 2026-01-01T00:00:00Z",
         {"every": "1d", "anchor": "2026-01-01T00:00:00Z"}),
    ],
)  # fmt: skip
def test_window_labels_and_config(text: object, label: str, config: object) -> None:
    window = Window.parse(text)
    assert window.label() == label
    assert window.to_config() == config
    assert Window.parse(window.to_config()) == window


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
]


@settings(max_examples=300, deadline=None)
@given(
    unit=st.sampled_from(["hour", "day", "week", "month"]),
    zone=st.sampled_from(ZONES),
    now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)),
)
def test_calendar_windows_tile_time(unit: str, zone: str, now: datetime) -> None:
    """Every instant is in exactly one window: start <= now < end, and windows touch end to start."""
    window = Window.parse({"calendar": unit, "timezone": zone})
    start, end = window.bounds(now)
    assert end is not None
    assert start <= now < end
    assert Window.parse({"calendar": unit, "timezone": zone}).bounds(end)[0] == end
    assert (
        Window.parse({"calendar": unit, "timezone": zone}).bounds(start - timedelta(microseconds=1))[1]
        == start
    )
    assert timedelta(minutes=30) <= end - start <= timedelta(days=32)


def test_manual_clock() -> None:
    clock = ManualClock("2026-03-10T12:00:00Z")
    assert clock.now() == datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert clock.advance(90) == datetime(2026, 3, 10, 12, 1, 30, tzinfo=UTC)
    clock.advance(timedelta(hours=1))
    clock.set(datetime(2027, 1, 1, 1, tzinfo=UTC))
    assert clock.now().tzinfo == UTC
    with pytest.raises(ValueError, match="time zone"):
        clock.set(datetime(2027, 1, 1))
    assert SystemClock().now().tzinfo == UTC


def _transitions(zone_name: str, year: int) -> list[datetime]:
    """The instants the zone's UTC offset changes in ``year`` (found hour by hour, then to the second)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(zone_name)
    found = []
    t = datetime(year, 1, 1, tzinfo=UTC)
    while t.year == year:
        nxt = t + timedelta(hours=1)
        if t.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            lo, hi = t, nxt
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).utcoffset() == nxt.astimezone(zone).utcoffset():
                    hi = mid
                else:
                    lo = mid
            found.append(hi)
        t = nxt
    return found


@pytest.mark.parametrize("zone", [z for z in ZONES if z not in ("UTC", "Asia/Kolkata")])
def test_calendar_windows_tile_across_dst_transitions(zone: str) -> None:
    transitions = _transitions(zone, 2026)
    assert transitions, zone
    for unit in ("hour", "day", "week", "month"):
        for transition in transitions:
            for offset in range(-5400, 5400, 397):
                now = transition + timedelta(seconds=offset)
                window = Window.parse({"calendar": unit, "timezone": zone})
                start, end = window.bounds(now)
                assert end is not None
                assert start <= now < end, (unit, now)
                assert Window.parse({"calendar": unit, "timezone": zone}).bounds(end)[0] == end
                before = start - timedelta(microseconds=1)
                assert Window.parse({"calendar": unit, "timezone": zone}).bounds(before)[1] == start
