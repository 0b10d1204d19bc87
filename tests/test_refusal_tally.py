"""``RefusalTally`` (a process's refusals, written to the ledger in batches) and the guard's use
of it: every refusal counted once, written when due, at close, never lost to a failed write."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spendgate.clock import ManualClock
from spendgate.errors import BudgetExceededError, CostCapExceededError, RateLimitExceededError
from spendgate.guard import Guard
from spendgate.ledger import LedgerUnavailableError, RefusalCount, open_ledger
from spendgate.money import Money
from spendgate.refusal_tally import RefusalTally

T0 = datetime(2027, 5, 4, 9, 15, 30, tzinfo=UTC)
M0 = T0.replace(second=0)
MINUTE = timedelta(minutes=1)
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 50,
}


class Ticks:
    """A manual monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A RefusalCounts that keeps what it was given, and fails while ``down``."""

    def __init__(self) -> None:
        self.writes: list[dict[tuple[datetime, str, str], int]] = []
        self.down = False

    def add_refusals(self, counts: Mapping[tuple[datetime, str, str], int]) -> None:
        if self.down:
            raise LedgerUnavailableError("down")
        self.writes.append(dict(counts))

    def refusal_counts(self, start: datetime, end: datetime) -> list[RefusalCount]:
        raise NotImplementedError

    def total(self) -> int:
        return sum(sum(w.values()) for w in self.writes)


def test_the_first_refusal_is_written_at_once_then_one_write_an_interval() -> None:
    clock, ticks, store = ManualClock(T0), Ticks(), Store()
    tally = RefusalTally(clock, interval=5, monotonic=ticks)
    assert not tally.due() and tally.flush(store) == 0 and store.writes == []  # nothing: no write
    tally.add("budget", "b")
    assert tally.due() and tally.flush(store) == 1
    assert store.writes == [{(M0, "budget", "b"): 1}]
    for _ in range(50):  # a client retrying in a loop
        tally.add("budget", "b")
    clock.advance(60)  # into the next minute
    tally.add("rate_limit", "rpm")
    assert not tally.due() and tally.pending() == 51
    ticks.now += 4.9
    assert not tally.due()
    ticks.now += 0.1
    assert tally.due() and tally.flush(store) == 51
    assert store.writes[1] == {(M0, "budget", "b"): 50, (M0 + MINUTE, "rate_limit", "rpm"): 1}
    assert tally.pending() == 0 and not tally.due()


def test_a_failed_write_keeps_its_counts() -> None:
    clock, ticks, store = ManualClock(T0), Ticks(), Store()
    tally = RefusalTally(clock, interval=5, monotonic=ticks)
    tally.add("budget", "b")
    store.down = True
    assert tally.flush(store) == 0 and tally.pending() == 1
    tally.add("budget", "b")
    assert not tally.due()  # the next try waits an interval too
    ticks.now += 5
    store.down = False
    assert tally.flush(store) == 2 and store.writes == [{(M0, "budget", "b"): 2}]


def test_an_outage_cannot_grow_the_counts_without_bound() -> None:
    clock, store = ManualClock(T0), Store()
    tally = RefusalTally(clock, interval=0, max_keys=3)
    store.down = True
    for _ in range(5):
        tally.add("budget", "b")
        tally.flush(store)
        clock.advance(60)
    store.down = False
    tally.flush(store)
    assert store.writes == [{(M0 + n * MINUTE, "budget", "b"): 1 for n in (2, 3, 4)}]  # the newest 3


def test_threads_adding_while_others_write_lose_nothing() -> None:
    tally = RefusalTally(ManualClock(T0), interval=0)
    store = Store()
    lock = threading.Lock()

    def add(n: int) -> None:
        for _ in range(n):
            tally.add("budget", "b")

    def write() -> None:
        for _ in range(200):
            with lock:  # Store is a plain list: one writer at a time (a ledger is thread-safe)
                tally.flush(store)

    threads = [threading.Thread(target=add, args=(2000,)) for _ in range(4)] + [
        threading.Thread(target=write)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    tally.flush(store)
    assert store.total() == 8000


def test_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        RefusalTally(ManualClock(T0), interval=-1)


# -- through the guard ------------------------------------------------------------------------


def guard_on(url: str, clock: ManualClock, **options: Any) -> Guard:
    return Guard(
        url,
        budgets=[{"id": "paused", "selector": {"team": "ops"}, "limit": "0", "window": "day"}],
        limits=[{"id": "rpm", "selector": {"team": "web"}, "requests": 1, "per": "1m"}],
        clock=clock,
        **options,
    )


def counts(url: str, clock: ManualClock) -> dict[tuple[str, str], int]:
    ledger = open_ledger(url, clock=clock)
    try:
        rows = ledger.refusal_counts(M0 - MINUTE, M0 + 10 * MINUTE)
    finally:
        ledger.close()
    out: dict[tuple[str, str], int] = {}
    for row in rows:
        out[row.kind, row.subject] = out.get((row.kind, row.subject), 0) + row.count
    return out


def test_the_guard_counts_each_refusal_and_writes_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    clock = ManualClock(T0)
    guard = guard_on(url, clock, refusal_interval=3600)
    try:
        with pytest.raises(BudgetExceededError):
            guard.admit("chat", BODY, attributes={"team": "ops"})
        assert counts(url, clock) == {("budget", "paused"): 1}  # the first: written at once
        for _ in range(3):
            with pytest.raises(BudgetExceededError):
                guard.admit("chat", BODY, attributes={"team": "ops"})
        guard.end(guard.admit("chat", BODY, attributes={"team": "web"}), _not_sent())
        with pytest.raises(RateLimitExceededError):
            guard.admit("chat", BODY, attributes={"team": "web"})
        with pytest.raises(CostCapExceededError):
            guard.admit("chat", BODY, attributes={"team": "dev"}, max_cost=Money(1))
        assert counts(url, clock) == {("budget", "paused"): 1}  # held: the interval is not over
        assert guard.refusals.pending() == 5
    finally:
        guard.close()  # writes what it holds
    assert counts(url, clock) == {("budget", "paused"): 4, ("rate_limit", "rpm"): 1, ("cost_cap", ""): 1}


def test_the_async_shell_writes_when_due(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    clock = ManualClock(T0)
    guard = guard_on(url, clock, refusal_interval=0)  # every refusal written at once

    async def refuse(n: int) -> None:
        for _ in range(n):
            with pytest.raises(BudgetExceededError):
                await guard.admit_async("chat", BODY, attributes={"team": "ops"})

    try:
        asyncio.run(refuse(3))
        assert guard.refusals.pending() == 0
        assert counts(url, clock) == {("budget", "paused"): 3}
    finally:
        guard.close()


def test_a_waiting_request_that_gets_in_is_no_refusal(tmp_path: Path) -> None:
    """Only what the caller is refused counts: a wait that ends admitted counts nothing."""
    clock = ManualClock(T0)
    guard = Guard(
        "memory://",
        budgets=[{"id": "small", "selector": {"team": "a"}, "limit": "0.01", "window": "day"}],
        clock=clock,
        on_exceed="wait",
        max_wait=0,  # no wait possible: refused at once
    )
    with pytest.raises(BudgetExceededError):
        guard.admit("chat", {**BODY, "max_tokens": 100_000}, attributes={"team": "a"})
    assert guard.refusals.pending() == 0  # the first refusal was written
    admitted = guard.admit("chat", BODY, attributes={"team": "a"})
    guard.end(admitted, _not_sent())
    assert [(r.kind, r.subject, r.count) for r in guard.ledger.refusal_counts(M0, M0 + MINUTE)] == [
        ("budget", "small", 1)
    ]
    guard.close()


def _not_sent() -> Any:
    from spendgate.lifecycle import Happened, Report

    return Report(Happened.NOT_SENT)


def test_one_caller_claims_each_write() -> None:
    """A hundred requests refused at once: one of them writes (the others find it claimed)."""
    ticks = Ticks()
    tally = RefusalTally(ManualClock(T0), interval=5, monotonic=ticks)
    assert not tally.claim()  # nothing held
    for _ in range(100):
        tally.add("budget", "b")
    assert [tally.claim() for _ in range(100)].count(True) == 1
    ticks.now += 5
    assert tally.claim() and not tally.claim()
