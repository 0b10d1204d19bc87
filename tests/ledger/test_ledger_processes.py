"""Many processes on one SQLite ledger: no overshoot, no lost or doubled settlement, no leaked hold."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.ledger import Ledger, Reservation, open_ledger
from spendgate.money import Money

from . import workers
from .conftest import MakeLedger
from .workers import collect

PROCESSES = 8
THREADS = 50
AFFORDABLE = 100  # K: the budget fits exactly this many estimates
ESTIMATE = Money.usd("0.37").nanos

ctx = mp.get_context("spawn")


def research_budget(limit_nanos: int) -> Budget:
    return Budget("research", {"team": "research"}, Money(limit_nanos), thresholds=(50, 100))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'spend.db'}"


class Sampler:
    """Reads the budget from the parent while the children race; records every overshoot."""

    def __init__(self, ledger: Ledger, limit: int) -> None:
        self.ledger, self.limit = ledger, limit
        self.samples = 0
        self.violations: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if the test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            usage = self.ledger.usage("research")
            if usage.spent.nanos + usage.reserved.nanos > self.limit:
                self.violations.append((usage.spent.nanos, usage.reserved.nanos))
            self.samples += 1
            time.sleep(0.002)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.slow
def test_many_processes_never_overshoot(sqlite_url: str, processes: list[Any]) -> None:
    limit = AFFORDABLE * ESTIMATE
    parent = open_ledger(sqlite_url, [research_budget(limit)])
    go, settle_go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    for proc in range(PROCESSES):
        child = ctx.Process(
            target=workers.contend,
            args=(sqlite_url, proc, THREADS, ESTIMATE, go, settle_go, out),
            daemon=True,
        )
        child.start()
        processes.append(child)
    deadline = time.monotonic() + 90
    collect(out, "ready", PROCESSES, deadline)

    with Sampler(parent, limit) as during_reserve:
        go.set()
        reserved = collect(out, "reserved", PROCESSES, deadline)
    attempts = {rid: ok for report in reserved.values() for rid, ok in report.items()}
    admitted = sorted(rid for rid, ok in attempts.items() if ok)
    assert len(attempts) == PROCESSES * THREADS
    assert len(admitted) == AFFORDABLE  # exactly K, not one more, not one less
    usage = parent.usage("research")
    assert (usage.spent.nanos, usage.reserved.nanos) == (0, AFFORDABLE * ESTIMATE)
    # Independently of the ledger's counters: what the workers were given fits the limit.
    assert len(admitted) * ESTIMATE <= limit

    with Sampler(parent, limit) as during_settle:
        settle_go.set()
        settled = collect(out, "settled", PROCESSES, deadline)
    outcomes = {rid: result for report in settled.values() for rid, result in report.items()}
    assert sorted(outcomes) == admitted  # every admitted request ended, once
    expected_spent = 0
    for rid, (first, charged, retry) in outcomes.items():
        assert (first, retry) in {("settled", "already_settled"), ("released", "already_released")}, rid
        if first == "settled":
            assert charged == workers.actual_for(rid, ESTIMATE)
        expected_spent += charged
    usage = parent.usage("research")
    assert (usage.spent.nanos, usage.reserved.nanos) == (expected_spent, 0)  # nothing lost, nothing doubled
    logged = parent.query_requests(limit=10_000, team="research")
    assert sorted(r.request_id for r in logged) == sorted(r for r, o in outcomes.items() if o[0] == "settled")
    assert sum(r.cost.nanos for r in logged) == expected_spent
    assert during_reserve.samples > 0 and during_settle.samples > 0
    assert during_reserve.violations == [] and during_settle.violations == []


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("mid_transaction", [False, True], ids=["idle", "inside-a-transaction"])
def test_killed_holder_is_charged_after_its_lease(
    sqlite_url: str, tmp_path: Path, processes: list[Any], mid_transaction: bool
) -> None:
    count, lease = 3, 30.0
    estimate = Money.usd("1.5").nanos
    start = datetime.now(UTC)
    # The parent's clock: the child runs on the system clock, the parent jumps past its leases.
    clock = ManualClock(start)
    parent = open_ledger(sqlite_url, [research_budget(100 * estimate)], clock=clock)
    out = ctx.Queue()
    child = ctx.Process(
        target=workers.hold_and_wait,
        args=(sqlite_url, str(tmp_path / "spend.db"), count, estimate, lease, mid_transaction, out),
        daemon=True,
    )
    child.start()
    processes.append(child)
    ids = out.get(timeout=60)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL

    usage = parent.usage("research")
    assert (usage.spent.nanos, usage.reserved.nanos) == (0, count * estimate)  # the half-done change is gone
    assert parent.expire_leases() == 0  # leases still running
    clock.set(datetime.now(UTC) + timedelta(seconds=lease + 1))
    assert parent.expire_leases() == count
    usage = parent.usage("research")
    assert (usage.spent.nanos, usage.reserved.nanos) == (count * estimate, 0)
    logged = {r.request_id: (r.status, r.cost.nanos) for r in parent.query_requests()}
    assert logged == {rid: ("expired", estimate) for rid in ids}
    # The ledger is writable again: the dead process's lock went with it.
    result = parent.reserve("after", Attributes(team="research"), Money(estimate), 60)
    assert isinstance(result, Reservation)
    assert parent.settle("after", Money(estimate)).status == "settled"


def test_threads_in_one_process(make_ledger: MakeLedger) -> None:
    """Both backends: 16 threads x 25 attempts against a budget that fits exactly 60."""
    options: dict[str, Any] = {"busy_timeout": 30} if make_ledger.backend == "sqlite" else {}
    ledger = make_ledger([research_budget(60 * ESTIMATE)], **options)
    barrier = threading.Barrier(16)
    admitted: list[str] = []
    lock = threading.Lock()

    def body(thread: int) -> None:
        barrier.wait(30)
        for attempt in range(25):
            request_id = f"t{thread}-{attempt}"
            result = ledger.reserve(request_id, Attributes(team="research"), Money(ESTIMATE), 600)
            if isinstance(result, Reservation):
                with lock:
                    admitted.append(request_id)

    workers.run_threads(body, 16)
    assert len(admitted) == 60
    for request_id in admitted:
        ledger.settle(request_id, Money(ESTIMATE - 1))
    usage = ledger.usage("research")
    assert (usage.spent.nanos, usage.reserved.nanos) == (60 * (ESTIMATE - 1), 0)
