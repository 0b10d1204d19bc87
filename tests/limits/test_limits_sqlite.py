"""Rate limits in the SQLite file: shared by every ledger on it, upgraded into version-2
files, given back exactly from what each reservation took, and pruned. Time is injected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.ledger import Reservation
from spendgate.ledger.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteLedger
from spendgate.limits import BUCKETS, Demand, Limit, LimitRefusal
from spendgate.money import Money

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=10)
K1 = Attributes(key="k1")
CAP = Budget.from_config({"id": "cap", "limit": "10"})


def limit(**config: Any) -> Limit:
    return Limit.from_config(config)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "spend.db"


@pytest.fixture
def opened() -> Iterator[list[SQLiteLedger]]:
    ledgers: list[SQLiteLedger] = []
    yield ledgers
    for ledger in ledgers:
        ledger.close()


def open_on(db: Path, opened: list[SQLiteLedger], clock: ManualClock, **options: Any) -> SQLiteLedger:
    ledger = SQLiteLedger(db, clock=clock, **options)
    opened.append(ledger)
    return ledger


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


# -- the schema: migration 3 -------------------------------------------------------------------


def _version_2_file(db: Path, source: Path) -> None:
    """A file as spendgate wrote it at schema version 2 (the statements of migrations 1 and 2),
    holding what ``source``'s ledger wrote: a budget, its spend, an open and a settled request."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        for statement in MIGRATIONS[0] + MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("ATTACH DATABASE ? AS v3", (str(source),))
        for table in ("budgets", "changes", "spend", "alerts"):
            conn.execute(f"INSERT INTO {table} SELECT * FROM v3.{table}")
        columns = [row[1] for row in conn.execute("PRAGMA main.table_info(requests)")]
        assert "takes" not in columns
        names = ", ".join(columns)
        conn.execute(f"INSERT INTO requests ({names}) SELECT {names} FROM v3.requests")
        conn.execute(
            "UPDATE meta SET value = (SELECT value FROM v3.meta WHERE key = 'budgets_version') "
            "WHERE key = 'budgets_version'"
        )
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE v3")


def test_a_version_2_file_upgrades_in_place(tmp_path: Path, opened: list[SQLiteLedger]) -> None:
    clock = ManualClock(T0)
    source = open_on(tmp_path / "source.db", opened, clock)
    source.put_budget(CAP)
    assert isinstance(source.reserve("open", K1, Money.parse("2"), LEASE), Reservation)
    assert isinstance(source.reserve("done", K1, Money.parse("3"), LEASE), Reservation)
    source.settle("done", Money.parse("1"))
    source.close()
    db = tmp_path / "v2.db"
    _version_2_file(db, tmp_path / "source.db")
    ledger_id = rows(db, "SELECT value FROM meta WHERE key = 'ledger_id'")

    ledger = open_on(db, opened, clock)
    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(6,)]
    assert rows(db, "SELECT value FROM meta WHERE key = 'ledger_id'") == ledger_id  # the same file
    fresh = tmp_path / "fresh.db"
    open_on(fresh, opened, clock).close()
    tables = "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    assert rows(db, tables) == rows(fresh, tables)  # upgraded = created new
    # Migration 3 added takes; 5 (token counts) the two columns after it.
    assert [column[1] for column in rows(db, "PRAGMA table_info(requests)")][-3:] == [
        "takes",
        "input_tokens",
        "output_tokens",
    ]
    # What version 2 wrote is all there and ends as before (an old row took no limit).
    usage = ledger.usage("cap")
    assert (usage.spent, usage.reserved) == (Money.parse("1"), Money.parse("2"))
    assert ledger.settle("done", Money.parse("1")).status == "already_settled"
    ledger.put_limit(limit(id="rpm", requests=1, per="1m"))
    assert ledger.settle("open", Money.parse("2")).status == "settled"
    assert ledger.limit_usage("rpm").used == 0
    assert ledger.usage("cap").spent == Money.parse("3")
    # And the new tables work.
    assert isinstance(ledger.reserve("new", K1, Money.parse("1"), LEASE), Reservation)
    assert isinstance(ledger.reserve("newer", K1, Money.parse("1"), LEASE), LimitRefusal)


def test_what_a_reservation_took_is_on_its_row(db: Path, opened: list[SQLiteLedger]) -> None:
    clock = ManualClock(T0)
    ledger = open_on(db, opened, clock)
    ledger.put_limit(limit(id="tpm", selector={"key": "*"}, tokens=1000, per="1m"))
    ledger.put_limit(limit(id="inflight", concurrency=5))
    demand = Demand(input_tokens=100, output_tokens=50, cost=0)
    assert isinstance(ledger.reserve("a", K1, Money(0), LEASE, demand=demand), Reservation)
    assert isinstance(ledger.reserve("free", Attributes(), Money(0), LEASE), Reservation)
    (takes,) = rows(db, "SELECT takes FROM requests WHERE request_id = 'a'")[0]
    tpm, inflight = (ledger._catalog.limits[i].generation for i in ("tpm", "inflight"))
    bucket = ((T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) // (60_000_000 // BUCKETS)
    assert json.loads(takes) == [["tpm", tpm, "key=k1", bucket, 150], ["inflight", inflight, "", 0, 1]]
    # A request that matches no windowed limit still takes its place in flight.
    assert json.loads(rows(db, "SELECT takes FROM requests WHERE request_id = 'free'")[0][0]) == [
        ["inflight", inflight, "", 0, 1]
    ]
    assert rows(db, "SELECT limit_id, instance, bucket, amount FROM limit_buckets") == [
        ("tpm", "key=k1", bucket, 150)
    ]
    assert rows(db, "SELECT * FROM limit_flight") == [("inflight", "", 2)]


def test_no_limit_no_take(db: Path, opened: list[SQLiteLedger]) -> None:
    ledger = open_on(db, opened, ManualClock(T0))
    ledger.put_limit(limit(selector={"team": "research"}, requests=1, per="1m"))
    assert isinstance(ledger.reserve("a", K1, Money(0), LEASE), Reservation)
    assert rows(db, "SELECT takes FROM requests") == [(None,)]
    assert rows(db, "SELECT count(*) FROM limit_buckets") == [(0,)]


# -- every ledger on the file enforces the same limits ----------------------------------------


def test_limits_are_shared_by_every_ledger_on_the_file(db: Path, opened: list[SQLiteLedger]) -> None:
    clock = ManualClock(T0)
    one, two = open_on(db, opened, clock), open_on(db, opened, clock)
    assert two.limits() == []
    one.put_limit(limit(id="rpm", selector={"key": "*"}, requests=2, per="1m"))
    assert [each.id for each in two.limits()] == ["rpm"]  # seen at its next transaction
    assert isinstance(one.reserve("a", K1, Money(0), LEASE), Reservation)
    assert isinstance(two.reserve("b", K1, Money(0), LEASE), Reservation)
    refused = one.reserve("c", K1, Money(0), LEASE)
    assert isinstance(refused, LimitRefusal) and refused.used == 2  # both ledgers' requests count
    # A raised amount reaches the other ledger, counts kept.
    two.put_limit(limit(id="rpm", selector={"key": "*"}, requests=3, per="1m"))
    assert one.get_limit("rpm").amount == 3
    assert one.limit_usage("rpm", "key=k1").used == 2
    assert isinstance(one.reserve("c", K1, Money(0), LEASE), Reservation)
    # Putting the same definition again (every process starts with the same config) changes nothing.
    version = rows(db, "SELECT value FROM meta WHERE key = 'limits_version'")
    one.put_limit(limit(id="rpm", selector={"key": "*"}, requests=3, per="1m"))
    assert rows(db, "SELECT value FROM meta WHERE key = 'limits_version'") == version
    # Removed by one: the other stops enforcing at once, and the counts are gone.
    assert two.remove_limit("rpm") is True
    assert one.limits() == [] and one.remove_limit("rpm") is False
    assert isinstance(one.reserve("d", K1, Money(0), LEASE), Reservation)
    assert rows(db, "SELECT count(*) FROM limit_buckets") == [(0,)]
    with pytest.raises(KeyError, match="rpm"):
        one.get_limit("rpm")
    with pytest.raises(KeyError):
        one.limit_usage("rpm")


def test_limits_outlive_the_ledger(db: Path, opened: list[SQLiteLedger]) -> None:
    clock = ManualClock(T0)
    first = open_on(db, opened, clock)
    first.put_limit(limit(id="b", tokens=100, per="1h"))
    first.put_limit(limit(id="a", requests=5, per="1h"))
    assert isinstance(first.reserve("r", K1, Money(0), LEASE, Demand(input_tokens=60)), Reservation)
    first.close()
    again = open_on(db, opened, clock)
    assert [each.id for each in again.limits()] == ["b", "a"]  # in the order added, as memory
    assert again.limit_usage("b").used == 60
    assert again.settle("r", Money(0), used=Demand(input_tokens=10)).status == "settled"
    assert again.limit_usage("b").used == 10


def test_a_reservation_gives_back_only_to_the_counts_it_took_from(
    db: Path, opened: list[SQLiteLedger]
) -> None:
    """Counts that started over (another window, or removed and added again) get nothing from
    reservations made before: memory's old counters are simply gone; here the take's generation
    says so."""
    clock = ManualClock(T0)
    ledger = open_on(db, opened, clock)
    ledger.put_limit(limit(id="t", tokens=1000, per="1m"))
    ledger.put_limit(limit(id="c", concurrency=1))
    assert isinstance(ledger.reserve("old", K1, Money(0), LEASE, Demand(input_tokens=600)), Reservation)
    ledger.put_limit(limit(id="t", tokens=1000, per="2m"))  # another window: counts start over
    ledger.remove_limit("c")
    ledger.put_limit(limit(id="c", concurrency=1))
    assert ledger.limit_usage("t").used == 0
    assert isinstance(ledger.reserve("new", K1, Money(0), LEASE, Demand(input_tokens=300)), Reservation)
    ledger.release("old")  # would give back 600 tokens and one in flight to the old counts
    assert ledger.limit_usage("t").used == 300
    assert ledger.limit_usage("c").used == 1
    assert isinstance(ledger.reserve("third", K1, Money(0), LEASE), LimitRefusal)


# -- pruning ---------------------------------------------------------------------------------


def bucket_rows(db: Path, instance: str | None = None) -> int:
    if instance is None:
        return int(rows(db, "SELECT count(*) FROM limit_buckets")[0][0])
    return int(rows(db, "SELECT count(*) FROM limit_buckets WHERE instance = ?", instance)[0][0])


def test_buckets_that_leave_the_window_are_pruned(db: Path, opened: list[SQLiteLedger]) -> None:
    clock = ManualClock(T0)
    ledger = open_on(db, opened, clock, purge_interval=timedelta(hours=1))
    ledger.put_limit(limit(selector={"key": "*"}, requests=1000, per="10s"))
    width = timedelta(seconds=10) / BUCKETS
    # A busy instance: a request in every bucket for 10 windows keeps at most a window of rows.
    for i in range(10 * BUCKETS):
        assert isinstance(ledger.reserve(f"busy{i}", K1, Money(0), LEASE), Reservation)
        ledger.settle(f"busy{i}", Money(0))
        assert bucket_rows(db, "key=k1") <= BUCKETS + 1
        clock.advance(width)
    # Instances no request names again keep their last window until the scheduled purge.
    for i in range(50):
        assert isinstance(
            ledger.reserve(f"once{i}", Attributes(key=f"once{i}"), Money(0), LEASE), Reservation
        )
        ledger.settle(f"once{i}", Money(0))
    assert bucket_rows(db) == 50 + bucket_rows(db, "key=k1")
    clock.advance(timedelta(seconds=10) + width)
    assert ledger.purge() >= 0
    assert bucket_rows(db) == 0
    # The windows read the same after pruning: nothing counted there any more.
    assert all(usage.used == 0 for usage in ledger.list_limits())


def test_the_scheduled_purge_prunes_buckets_and_idle_counts(db: Path, opened: list[SQLiteLedger]) -> None:
    clock = ManualClock(T0)
    ledger = open_on(db, opened, clock, purge_interval=timedelta(minutes=1))
    ledger.put_limit(limit(selector={"user": "*"}, requests=10, per="1s"))
    ledger.put_limit(limit(selector={"user": "*"}, concurrency=10))
    assert isinstance(ledger.reserve("first", Attributes(), Money(0), LEASE), Reservation)
    ledger.settle("first", Money(0))  # a process's first settle purges: the next is a minute on
    for i in range(20):
        user = Attributes(user=f"u{i}")
        assert isinstance(ledger.reserve(f"r{i}", user, Money(0), LEASE), Reservation)
        ledger.settle(f"r{i}", Money(0))
    assert bucket_rows(db) == 20
    assert rows(db, "SELECT count(*), sum(in_flight) FROM limit_flight") == [(20, 0)]
    clock.advance(timedelta(minutes=1))
    # A settle runs the purge once it is due (the schedule the request log already has).
    assert isinstance(ledger.reserve("late", Attributes(user="late"), Money(0), LEASE), Reservation)
    ledger.settle("late", Money(0))
    assert bucket_rows(db) == 1 and bucket_rows(db, "user=late") == 1
    assert rows(db, "SELECT count(*) FROM limit_flight") == [(0,)]


def test_the_async_purge_prunes_too(db: Path, opened: list[SQLiteLedger]) -> None:
    clock = ManualClock(T0)
    ledger = open_on(db, opened, clock, purge_interval=timedelta(minutes=1))
    ledger.put_limit(limit(selector={"user": "*"}, requests=10, per="1s"))

    async def body() -> None:
        for i in range(5):
            assert isinstance(
                await ledger.areserve(f"r{i}", Attributes(user=f"u{i}"), Money(0), LEASE), Reservation
            )
            await ledger.asettle(f"r{i}", Money(0))
        clock.advance(timedelta(minutes=2))
        await ledger.asettle("r0", Money(0))  # a batch: the purge is queued after it
        for _ in range(100):
            await asyncio.sleep(0)

    asyncio.run(asyncio.wait_for(body(), 30))
    assert bucket_rows(db) == 0
