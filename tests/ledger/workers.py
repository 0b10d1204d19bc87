"""Child-process bodies for the multi-process ledger tests (importable under 'spawn')."""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from typing import Any

from spendgate.budgets import Attributes
from spendgate.ledger import Reservation, open_ledger
from spendgate.money import Money

TEAM = Attributes(team="research")


def actual_for(request_id: str, estimate: int) -> int:
    """A deterministic actual cost below the estimate, different per request."""
    return estimate - 1 - sum(request_id.encode()) % 1000


def contend(url: str, proc: int, threads: int, estimate: int, go: Any, settle_go: Any, out: Any) -> None:
    """``threads`` threads each try one reservation at once; after ``settle_go`` they settle.

    Every admitted request is settled (every fifth is released instead, as a failed
    call), and every settlement is retried once; the report lists what each got.
    """
    ledger = open_ledger(url, busy_timeout=60)
    start = threading.Barrier(threads)
    got: dict[str, bool] = {}
    lock = threading.Lock()
    out.put(("ready", proc, None))
    if not go.wait(60):
        return

    def reserve(index: int) -> None:
        request_id = f"p{proc}-t{index}"
        start.wait(30)
        result = ledger.reserve(
            request_id, Attributes(team="research", user=f"u{proc}"), Money(estimate), 600
        )
        with lock:
            got[request_id] = isinstance(result, Reservation)

    run_threads(reserve, threads)
    out.put(("reserved", proc, dict(got)))
    if not settle_go.wait(60):
        return
    settled: dict[str, tuple[str, int, str]] = {}
    admitted = sorted(request_id for request_id, ok in got.items() if ok)
    settle_start = threading.Barrier(max(len(admitted), 1))

    def settle(index: int) -> None:
        request_id = admitted[index]
        settle_start.wait(30)
        first: str
        retry: str
        if index % 5 == 4:
            first = ledger.release(request_id).status
            retry = ledger.release(request_id).status
            charged = 0
        else:
            actual = actual_for(request_id, estimate)
            outcome = ledger.settle(request_id, Money(actual))
            first, charged = outcome.status, outcome.charged.nanos
            retry = ledger.settle(request_id, Money(actual)).status
        with lock:
            settled[request_id] = (first, charged, retry)

    run_threads(settle, len(admitted))
    out.put(("settled", proc, settled))
    ledger.close()


def run_threads(body: Any, count: int) -> None:
    workers = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)


def hold_and_wait(
    url: str, path: str, count: int, estimate: int, lease: float, mid_transaction: bool, out: Any
) -> None:
    """Reserve ``count`` requests, optionally stop inside a write transaction, then wait to be killed."""
    ledger = open_ledger(url)
    ids = []
    for index in range(count):
        request_id = f"doomed-{index}"
        result = ledger.reserve(request_id, TEAM, Money(estimate), lease)
        assert isinstance(result, Reservation)
        ids.append(request_id)
    if mid_transaction:
        # Die holding the write lock with a half-done change.
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE spend SET spent = spent + 1000000000000")
    out.put(ids)
    time.sleep(60)  # SIGKILL arrives long before this ends


def collect(out: Any, kind: str, count: int, deadline: float) -> dict[int, Any]:
    """What ``count`` worker processes put on ``out`` as ``(kind, proc, payload)``, by proc;
    AssertionError when they have not all reported by ``deadline`` (monotonic)."""
    got: dict[int, Any] = {}
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {len(got)}/{count} workers reported {kind!r} in time")
        try:
            message, proc, payload = out.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        assert message == kind, (message, proc)
        got[proc] = payload
    return got


def claim_all(url: str, proc: int, destination: str, add: int, go: Any, out: Any) -> None:
    """Claim deliveries to ``destination`` a few at a time, finishing each as delivered, until
    none is left pending, adding one of ``add`` events of its own before each claim; report
    the ``(seq, attempt)`` of each delivery this process claimed."""
    from datetime import timedelta

    from spendgate.alerts.events import reset_event

    ledger = open_ledger(url, busy_timeout=60)
    out.put(("ready", proc, None))
    if not go.wait(60):
        return
    claimed: list[tuple[int, int]] = []
    deadline = time.monotonic() + 60
    added = 0
    while time.monotonic() < deadline:
        if added < add:
            change = 1_000_000 * (proc + 1) + added
            new = reset_event(budget_id="b", label="b", instance=None, change=change, now=ledger.clock.now())
            assert ledger.add_alerts([new]) == [new.id]
            added += 1
        batch = ledger.claim_deliveries([destination], f"p{proc}", timedelta(minutes=10), limit=3)
        for delivery in batch:
            claimed.append((delivery.seq, delivery.attempt))
            assert ledger.finish_delivery(delivery, "delivered")
        if batch or added < add:
            continue
        fanned_out = ledger.alert_deliveries(destination=destination, limit=1)
        if fanned_out and not ledger.alert_deliveries(state="pending", destination=destination, limit=1):
            break  # every delivery exists and none is pending: all delivered
    out.put(("claimed", proc, claimed))
    ledger.close()


def add_refusal_batches(url: str, proc: int, batches: int, minute: Any, go: Any, out: Any) -> None:
    """Add ``batches`` batches of refusal counts to the same minutes as the other processes
    (b +1 and l +2 at ``minute``, b +1 the minute after), each in its own key order."""
    from datetime import timedelta

    ledger = open_ledger(url, busy_timeout=60)
    out.put(("ready", proc, None))
    if not go.wait(60):
        return
    later = minute + timedelta(minutes=1)
    items = [((minute, "budget", "b"), 1), ((minute, "rate_limit", "l"), 2), ((later, "budget", "b"), 1)]
    for n in range(batches):
        turned = items[(n + proc) % 3 :] + items[: (n + proc) % 3]
        ledger.add_refusals(dict(turned))
    out.put(("added", proc, None))
    ledger.close()
