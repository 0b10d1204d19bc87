"""The refusal counts (``RefusalCounts``) over every backend, with a manual clock; and several
processes adding to the same minutes at once (SQLite file, PostgreSQL)."""

from __future__ import annotations

import multiprocessing as mp
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from spendgate.clock import ManualClock
from spendgate.ledger import RefusalCount, RefusalCounts, open_ledger

from . import workers
from .conftest import T0, MakeLedger
from .workers import collect

MINUTE = timedelta(minutes=1)
M0 = T0  # a whole minute


def test_every_ledger_keeps_refusal_counts(make_ledger: MakeLedger) -> None:
    assert isinstance(make_ledger(), RefusalCounts)


def test_counts_add_up_and_read_by_minute(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    assert ledger.refusal_counts(M0 - MINUTE, M0 + 10 * MINUTE) == []
    ledger.add_refusals({(M0, "budget", "team-ml"): 2, (M0, "rate_limit", "rpm"): 1})
    ledger.add_refusals({(M0, "budget", "team-ml"): 3, (M0 + MINUTE, "budget", "team-ml"): 1})
    ledger.add_refusals({(M0 + 2 * MINUTE, "cost_cap", ""): 4, (M0, "budget", "a-first"): 1})
    ledger.add_refusals({})  # nothing: no write
    assert ledger.refusal_counts(M0, M0 + 3 * MINUTE) == [
        RefusalCount(M0, "budget", "a-first", 1),
        RefusalCount(M0, "budget", "team-ml", 5),
        RefusalCount(M0, "rate_limit", "rpm", 1),
        RefusalCount(M0 + MINUTE, "budget", "team-ml", 1),
        RefusalCount(M0 + 2 * MINUTE, "cost_cap", "", 4),
    ]
    # [start, end): the end's minute is out, the start's in
    assert [r.minute for r in ledger.refusal_counts(M0 + MINUTE, M0 + 2 * MINUTE)] == [M0 + MINUTE]
    # another time zone names the same minute
    east = M0.astimezone(timezone(timedelta(hours=5, minutes=30)))
    ledger.add_refusals({(east, "rate_limit", "rpm"): 1})
    [rpm] = [r for r in ledger.refusal_counts(M0, M0 + MINUTE) if r.kind == "rate_limit"]
    assert rpm.count == 2 and rpm.minute == M0 and rpm.minute.tzinfo == UTC


@pytest.mark.parametrize(
    ("key", "count", "error"),
    [
        ((M0 + timedelta(seconds=1), "budget", "b"), 1, ValueError),  # not a whole minute
        ((M0.replace(tzinfo=None), "budget", "b"), 1, ValueError),  # no time zone
        ((M0, "auth", "b"), 1, ValueError),  # not a kind the ledger counts
        ((M0, "budget", 7), 1, TypeError),
        ((M0, "budget", "b"), -1, ValueError),
        ((M0, "budget", "b"), True, ValueError),
        ((M0, "budget", "b"), 1.5, ValueError),
    ],
)
def test_a_bad_count_writes_nothing(
    make_ledger: MakeLedger, key: Any, count: Any, error: type[Exception]
) -> None:
    ledger = make_ledger()
    with pytest.raises(error):
        ledger.add_refusals({(M0, "budget", "good"): 1, key: count})
    assert ledger.refusal_counts(M0 - MINUTE, M0 + MINUTE) == []
    ledger.add_refusals({(M0, "budget", "zero"): 0})  # a zero is no row
    assert ledger.refusal_counts(M0 - MINUTE, M0 + MINUTE) == []


def test_the_retention_purge_drops_old_minutes(make_ledger: MakeLedger) -> None:
    clock = ManualClock(M0)
    ledger = make_ledger(clock=clock, retention=timedelta(days=1))
    ledger.add_refusals({(M0, "budget", "old"): 1})
    clock.advance(timedelta(days=1, minutes=2))
    ledger.add_refusals({(refusal_now(clock), "budget", "new"): 1})
    ledger.purge()
    rows = ledger.refusal_counts(M0 - MINUTE, clock.now() + MINUTE)
    assert [(r.subject, r.count) for r in rows] == [("new", 1)]


def refusal_now(clock: ManualClock) -> datetime:
    return clock.now().replace(second=0, microsecond=0)


# -- many processes --------------------------------------------------------------------------
ctx = mp.get_context("spawn")
PROCESSES = 4
BATCHES = 40


@pytest.mark.slow
def test_processes_adding_to_the_same_minutes_lose_nothing(shared_url: str, processes: list[Any]) -> None:
    parent = open_ledger(shared_url, clock=ManualClock(M0))
    try:
        parent.add_refusals({(M0, "budget", "b"): 1})  # the file or schema exists before they start
        go, out = ctx.Event(), ctx.Queue()
        for proc in range(PROCESSES):
            child = ctx.Process(
                target=workers.add_refusal_batches, args=(shared_url, proc, BATCHES, M0, go, out), daemon=True
            )
            child.start()
            processes.append(child)
        deadline = time.monotonic() + 90
        collect(out, "ready", PROCESSES, deadline)
        go.set()
        collect(out, "added", PROCESSES, deadline)
        rows = {(r.minute, r.kind, r.subject): r.count for r in parent.refusal_counts(M0, M0 + 3 * MINUTE)}
        # each batch: b +1 and l +2 in the first minute, b +1 in the next (in another order per process)
        assert rows == {
            (M0, "budget", "b"): 1 + PROCESSES * BATCHES,
            (M0, "rate_limit", "l"): 2 * PROCESSES * BATCHES,
            (M0 + MINUTE, "budget", "b"): PROCESSES * BATCHES,
        }
    finally:
        parent.close()
