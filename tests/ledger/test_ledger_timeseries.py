"""``RequestLog.usage_timeseries`` over every backend (see conftest.py), on a manual clock."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import pytest

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.ledger import Ledger, RequestRecord, Reservation, UsagePoint
from spendgate.ledger.timeseries import MAX_BUCKETS
from spendgate.money import Money

from .conftest import T0, MakeLedger

USD = Money.usd
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ALICE = Attributes(key="vk-a", user="alice", team="research", model="gpt-4o", tags=frozenset({"batch"}))
BOB = Attributes(
    key="vk-b", user="bob", team="research", model="gpt-4o-mini", tags=frozenset({"batch", "eval"})
)
ANON = Attributes(model="gpt-4o")  # no user, no tag


def log(
    ledger: Ledger,
    clock: ManualClock,
    request_id: str,
    attrs: Attributes,
    cost: str,
    usage: Mapping[str, int] | None = None,
) -> None:
    """A request reserved now and settled a second later at ``cost`` with ``usage``."""
    started = clock.now()
    assert isinstance(ledger.reserve(request_id, attrs, USD("5"), 60), Reservation)
    clock.advance(1)
    record = RequestRecord(request_id, attrs, USD(cost), started, clock.now(), usage=dict(usage or {}))
    ledger.settle(request_id, USD(cost), record)
    clock.advance(-1)


def point(
    start: datetime, group: str | None, cost: str, requests: int, tin: int = 0, tout: int = 0
) -> UsagePoint:
    return UsagePoint(start, group, USD(cost), requests, tin, tout)


@pytest.fixture
def day(make_ledger: MakeLedger, clock: ManualClock) -> Ledger:
    """Six logged requests over a day (one expired, one released), from T0 (12:00 UTC)."""
    ledger = make_ledger([Budget.from_config({"id": "g", "limit": "1000"})], clock)
    log(ledger, clock, "a1", ALICE, "0.10", {"input_tokens": 100, "output_tokens": 10})
    clock.advance(timedelta(minutes=30))
    log(
        ledger, clock, "b1", BOB, "0.20", {"input_tokens": 200, "output_tokens": 20, "cache_read_tokens": 150}
    )
    clock.advance(timedelta(minutes=40))  # 13:10
    log(ledger, clock, "a2", ALICE, "0.000000001", {"input_tokens": 1})
    assert isinstance(ledger.reserve("dead", ANON, USD("0.75"), 60), Reservation)  # 13:10, expires
    assert isinstance(ledger.reserve("gone", ALICE, USD("9"), 60), Reservation)  # released: costs nothing
    ledger.release("gone")
    clock.set(T0 + timedelta(hours=3))  # 15:00 exactly: a bucket's first instant
    log(ledger, clock, "n1", ANON, "0.05", {"input_tokens": 7, "output_tokens": 3})
    ledger.expire_leases()
    clock.set(T0 + timedelta(days=1, hours=1))  # the next day, 13:00
    log(ledger, clock, "b2", BOB, "1", {"output_tokens": 1000, "reasoning_tokens": 900})
    return ledger


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_hourly_buckets_leave_empty_ones_out(day: Ledger) -> None:
    points = day.usage_timeseries(T0, T0 + 2 * DAY, HOUR)
    assert points == [
        point(at(0), None, "0.30", 2, 300, 30),  # cache reads are part of input_tokens, not added
        point(at(1), None, "0.750000001", 2, 1, 0),  # the expired lease: its estimate, no tokens
        point(at(3), None, "0.05", 1, 7, 3),
        point(at(25), None, "1", 1, 0, 1000),  # reasoning is part of output_tokens
    ]


def test_daily_buckets_start_at_midnight_utc(day: Ledger) -> None:
    midnight = T0.replace(hour=0)
    points = day.usage_timeseries(T0, T0 + 2 * DAY, DAY)
    assert points == [
        point(midnight, None, "1.100000001", 5, 308, 33),
        point(midnight + DAY, None, "1", 1, 0, 1000),
    ]
    # Any time zone names the same instants; the points are in UTC.
    plus_five = timezone(timedelta(hours=5))
    assert day.usage_timeseries(T0.astimezone(plus_five), (T0 + 2 * DAY).astimezone(plus_five), DAY) == points
    # A bucket need not divide a day: 90 minutes from the epoch.
    odd = day.usage_timeseries(T0, T0 + DAY, timedelta(minutes=90))
    assert [(p.start, p.requests) for p in odd] == [(at(0), 4), (at(3), 1)]  # 12:00-13:30, 15:00-16:30


def test_the_range_is_start_inclusive_end_exclusive(day: Ledger) -> None:
    assert day.usage_timeseries(at(0), at(3), HOUR)[-1].start == at(1)  # n1 starts at 3h: left out
    assert [p.start for p in day.usage_timeseries(at(3), at(4), HOUR)] == [at(3)]
    # A start inside a bucket: the bucket is counted from there, still named by its start.
    partial = day.usage_timeseries(at(0.25), at(2), HOUR)
    assert partial == [point(at(0), None, "0.20", 1, 200, 20), point(at(1), None, "0.750000001", 2, 1, 0)]
    assert day.usage_timeseries(at(5), at(6), HOUR) == []


def test_grouped_by_a_dimension(day: Ledger) -> None:
    by_user = day.usage_timeseries(T0, T0 + DAY, HOUR, by="user")
    assert by_user == [
        point(at(0), "alice", "0.10", 1, 100, 10),
        point(at(0), "bob", "0.20", 1, 200, 20),
        point(at(1), None, "0.75", 1),  # no user: group None, ordered first
        point(at(1), "alice", "0.000000001", 1, 1, 0),
        point(at(3), None, "0.05", 1, 7, 3),
    ]
    by_model = day.usage_timeseries(T0, T0 + 2 * DAY, DAY, by="model")
    assert [(p.group, p.cost, p.requests) for p in by_model] == [
        ("gpt-4o", USD("0.900000001"), 4),
        ("gpt-4o-mini", USD("0.20"), 1),
        ("gpt-4o-mini", USD("1"), 1),
    ]
    by_key = day.usage_timeseries(T0, T0 + 2 * DAY, 2 * DAY, by="key")
    assert [(p.group, p.cost) for p in by_key] == [
        (None, USD("0.80")),
        ("vk-a", USD("0.100000001")),
        ("vk-b", USD("1.20")),
    ]
    by_team = day.usage_timeseries(T0, T0 + DAY, DAY, by="team")
    assert [(p.group, p.requests) for p in by_team] == [(None, 2), ("research", 3)]


def test_grouped_by_tag_counts_once_per_tag(day: Ledger) -> None:
    points = day.usage_timeseries(T0, T0 + DAY, DAY, by="tag")
    assert [(p.group, p.cost, p.requests, p.input_tokens) for p in points] == [
        (None, USD("0.80"), 2, 7),  # untagged
        ("batch", USD("0.300000001"), 3, 301),
        ("eval", USD("0.20"), 1, 200),
    ]
    # The same totals as usage_by, which counts each tag the same way.
    assert {p.group: p.cost for p in points if p.group} == day.usage_by("tag", T0, T0 + DAY)


def test_filters(day: Ledger) -> None:
    alice = day.usage_timeseries(T0, T0 + 2 * DAY, DAY, user="alice")
    assert alice == [point(T0.replace(hour=0), None, "0.100000001", 2, 101, 10)]
    evals = day.usage_timeseries(T0, T0 + 2 * DAY, HOUR, tag="eval")
    assert [(p.start, p.cost) for p in evals] == [(at(0), USD("0.20")), (at(25), USD("1"))]
    both = day.usage_timeseries(T0, T0 + 2 * DAY, DAY, by="user", tag="batch", team="research")
    assert [(p.group, p.requests) for p in both] == [("alice", 2), ("bob", 1), ("bob", 1)]
    tagged = day.usage_timeseries(T0, T0 + 2 * DAY, DAY, by="tag", key="vk-b")
    assert [(p.group, p.requests) for p in tagged] == [("batch", 1), ("eval", 1), ("batch", 1), ("eval", 1)]
    assert day.usage_timeseries(T0, T0 + 2 * DAY, DAY, user="nobody") == []


def test_the_sum_of_the_points_is_the_log(day: Ledger) -> None:
    points = day.usage_timeseries(T0, T0 + 2 * DAY, HOUR, by="user")
    records = day.query_requests(T0, T0 + 2 * DAY)
    assert sum(p.requests for p in points) == len(records) == 6
    assert sum((p.cost for p in points), Money(0)) == sum((r.cost for r in records), Money(0))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((T0, T0, HOUR), {}, "before"),
        ((T0 + HOUR, T0, HOUR), {}, "before"),
        ((T0, T0 + DAY, timedelta(0)), {}, "positive whole number of seconds"),
        ((T0, T0 + DAY, -HOUR), {}, "positive whole number of seconds"),
        ((T0, T0 + DAY, timedelta(seconds=1.5)), {}, "positive whole number of seconds"),
        ((T0, T0 + 2 * DAY, timedelta(seconds=1)), {}, f"at most {MAX_BUCKETS}"),
        ((T0.replace(tzinfo=None), T0 + DAY, HOUR), {}, "timezone-aware"),
        ((T0, T0 + DAY, HOUR), {"by": "colour"}, "unknown grouping dimension 'colour'"),
        ((T0, T0 + DAY, HOUR), {"colour": "red"}, "unknown filter dimension 'colour'"),
    ],
)
def test_bad_arguments(
    make_ledger: MakeLedger, args: tuple[object, ...], kwargs: dict[str, str], message: str
) -> None:
    ledger = make_ledger()
    with pytest.raises(ValueError, match=message):
        ledger.usage_timeseries(*args, **kwargs)  # type: ignore[arg-type]


def test_the_bucket_limit_is_inclusive(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    second = timedelta(seconds=1)
    assert ledger.usage_timeseries(T0, T0 + MAX_BUCKETS * second, second) == []
    with pytest.raises(ValueError, match="buckets"):
        ledger.usage_timeseries(T0, T0 + MAX_BUCKETS * second + timedelta(microseconds=1), second)
    with pytest.raises(TypeError, match="bucket"):
        ledger.usage_timeseries(T0, T0 + DAY, 3600)  # type: ignore[arg-type]


def test_a_sqlite_file_of_schema_4_gets_its_token_columns_filled(tmp_path: object) -> None:
    """Migration 5 fills the new columns from the usage JSON of requests logged before it."""
    import sqlite3
    from pathlib import Path

    from spendgate.ledger import open_ledger

    assert isinstance(tmp_path, Path)
    path = tmp_path / "old.db"
    clock = ManualClock(T0)
    ledger = open_ledger(f"sqlite:///{path}", clock=clock)
    attrs = Attributes(user="alice")
    assert isinstance(ledger.reserve("r1", attrs, Money.usd("1"), 60), Reservation)
    record = RequestRecord(
        "r1", attrs, Money.usd("1"), T0, T0, usage={"input_tokens": 70, "output_tokens": 9}
    )
    ledger.settle("r1", Money.usd("1"), record)
    ledger.close()
    with sqlite3.connect(path) as conn:  # as a file written before migration 5 holds it
        conn.execute("UPDATE requests SET input_tokens = NULL, output_tokens = NULL")
        conn.execute("PRAGMA user_version = 4")
    conn.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE requests DROP COLUMN input_tokens")
        conn.execute("ALTER TABLE requests DROP COLUMN output_tokens")
        conn.execute("DROP TABLE refusal_counts")  # migration 6's
    conn.close()
    ledger = open_ledger(f"sqlite:///{path}", clock=clock, create=False)
    [point] = ledger.usage_timeseries(T0 - timedelta(hours=1), T0 + timedelta(hours=1), timedelta(hours=1))
    assert (point.requests, point.input_tokens, point.output_tokens) == (1, 70, 9)
    ledger.close()
