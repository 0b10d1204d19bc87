"""The alert outbox (``AlertOutbox``), over every backend, with a manual clock.

Redis keeps its outbox in its durable ledger; a threshold crossing reaches it through the
alert dispatcher's subscription, which ``dispatcher`` below stands in for (on the other
backends the settle has written the event already, and the dispatcher's add is a no-op).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from spendgate.alerts.events import AlertEvent, Delivery, reset_event, threshold_event_of
from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.ledger import AlertOutbox, Ledger, Reservation, ThresholdCrossed, open_ledger
from spendgate.money import Money
from spendgate.testing.servers import postgres_test_url

from . import workers
from .conftest import T0, MakeLedger, drop_test_data
from .workers import collect

USD = Money.usd
TEAM = Attributes(team="research")
LEASE = timedelta(seconds=30)


def event(n: int, clock: ManualClock) -> AlertEvent:
    """A distinct event per ``n`` (a reset's id is its change number)."""
    return reset_event(budget_id="b", label="b", instance=None, change=n, now=clock.now())


def seqs(deliveries: list[Delivery]) -> list[int]:
    return [d.seq for d in deliveries]


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.event.id for d in deliveries]


def dispatcher(ledger: Ledger, clock: ManualClock, heard: list[ThresholdCrossed]) -> Callable[[], None]:
    """What the alert dispatcher does with a crossing it hears: add its event to the outbox."""

    def on_crossing(crossed: ThresholdCrossed) -> None:
        heard.append(crossed)
        soft = ledger.get_budget(crossed.budget_id).soft
        ledger.add_alerts([threshold_event_of(crossed, clock.now(), soft=soft)])

    return ledger.subscribe(on_crossing)


def test_every_ledger_is_an_outbox(make_ledger: MakeLedger) -> None:
    assert isinstance(make_ledger(), AlertOutbox)


def test_add_is_idempotent_by_id(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger(clock=clock)
    e1, e2, e3 = event(1, clock), event(2, clock), event(3, clock)
    assert ledger.add_alerts([]) == []
    assert ledger.add_alerts([e1, e2]) == [e1.id, e2.id]
    assert ledger.add_alerts([e2, e3, e1]) == [e3.id]
    assert ledger.add_alerts([e1, e2, e3]) == []
    # The same event noticed again later (another created_at) is still the same event.
    clock.advance(60)
    assert ledger.add_alerts([event(3, clock)]) == []
    ledger.register_destinations(["hook"])
    assert ledger.claim_deliveries(["hook"], "o", LEASE) == []  # all were added before it registered


def test_a_destination_gets_the_events_added_after_it_registered(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    ledger = make_ledger(clock=clock)
    e1, e2, e3 = event(1, clock), event(2, clock), event(3, clock)
    ledger.add_alerts([e1])
    ledger.register_destinations(["a"])
    ledger.add_alerts([e2])
    ledger.register_destinations(["b", "a"])  # "a" again: still from where it first registered
    ledger.add_alerts([e3])
    ledger.register_destinations(["a", "b"])
    got_a = ledger.claim_deliveries(["a"], "o", LEASE)
    got_b = ledger.claim_deliveries(["b"], "o", LEASE)
    assert ids(got_a) == [e2.id, e3.id]
    assert ids(got_b) == [e3.id]
    assert all(d.event == e for d, e in zip(got_a, [e2, e3], strict=True))  # the event as added
    assert {(d.destination, d.attempt, d.owner, d.claimed_until) for d in got_a + got_b} == {
        ("a", 1, "o", T0 + LEASE),
        ("b", 1, "o", T0 + LEASE),
    }
    assert ledger.claim_deliveries(["unknown"], "o", LEASE) == []
    assert ledger.claim_deliveries([], "o", LEASE) == []


def test_two_owners_never_claim_the_same_delivery(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger(clock=clock)
    ledger.register_destinations(["a", "b"])
    ledger.add_alerts([event(n, clock) for n in range(5)])
    first = ledger.claim_deliveries(["a", "b"], "o1", LEASE, limit=4)
    second = ledger.claim_deliveries(["a", "b"], "o2", LEASE, limit=10)
    assert [(d.seq, d.destination) for d in first] == [(1, "a"), (1, "b"), (2, "a"), (2, "b")]
    assert [(d.seq, d.destination) for d in second] == [(s, dest) for s in (3, 4, 5) for dest in "ab"]
    assert ledger.claim_deliveries(["a", "b"], "o3", LEASE) == []
    assert {d.owner for d in first} == {"o1"} and {d.owner for d in second} == {"o2"}


def test_a_claim_is_claimed_again_only_after_its_lease(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger(clock=clock)
    ledger.register_destinations(["hook"])
    ledger.add_alerts([event(1, clock)])
    [held] = ledger.claim_deliveries(["hook"], "o1", LEASE)
    assert held.attempt == 1
    assert [(r.state, r.claimed_by) for r in ledger.alert_deliveries()] == [("pending", "o1")]
    clock.advance(LEASE - timedelta(microseconds=1))
    assert ledger.claim_deliveries(["hook"], "o2", LEASE) == []
    clock.advance(timedelta(microseconds=1))  # the lease has run out: its sender is presumed dead
    [again] = ledger.claim_deliveries(["hook"], "o2", LEASE)
    assert (again.seq, again.event, again.attempt, again.owner) == (held.seq, held.event, 2, "o2")
    assert again.claimed_until == clock.now() + LEASE


def test_finish_by_a_stale_owner_changes_nothing(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger(clock=clock)
    ledger.register_destinations(["hook"])
    ledger.add_alerts([event(1, clock)])
    [stale] = ledger.claim_deliveries(["hook"], "o1", LEASE)
    clock.advance(LEASE)
    [fresh] = ledger.claim_deliveries(["hook"], "o2", LEASE)
    assert ledger.finish_delivery(stale, "delivered") is False
    [record] = ledger.alert_deliveries()
    assert (record.state, record.attempts, record.delivered_at) == ("pending", 2, None)
    assert ledger.finish_delivery(fresh, "delivered") is True
    assert ledger.finish_delivery(fresh, "failed", error="late") is False  # finished already
    assert ledger.finish_delivery(stale, "failed", error="late") is False
    [record] = ledger.alert_deliveries()
    assert (record.state, record.attempts, record.delivered_at, record.last_error) == (
        "delivered",
        2,
        clock.now(),
        None,
    )
    assert ledger.claim_deliveries(["hook"], "o3", LEASE) == []


def test_a_delivery_made_pending_again_is_due_at_its_retry(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    ledger = make_ledger(clock=clock)
    ledger.register_destinations(["hook"])
    ledger.add_alerts([event(1, clock)])
    [delivery] = ledger.claim_deliveries(["hook"], "o1", LEASE)
    retry_at = clock.now() + timedelta(seconds=90)  # later than the lease
    with pytest.raises(ValueError, match="retry_at"):
        ledger.finish_delivery(delivery, "pending")
    assert ledger.finish_delivery(delivery, "pending", error="HTTP 503", retry_at=retry_at) is True
    [record] = ledger.alert_deliveries()
    assert (record.state, record.attempts, record.next_attempt_at, record.last_error) == (
        "pending",
        1,
        retry_at,
        "HTTP 503",
    )
    clock.advance(LEASE)
    assert ledger.claim_deliveries(["hook"], "o1", LEASE) == []
    clock.set(retry_at - timedelta(microseconds=1))
    assert ledger.claim_deliveries(["hook"], "o2", LEASE) == []
    clock.set(retry_at)
    [again] = ledger.claim_deliveries(["hook"], "o2", LEASE)
    assert (again.seq, again.attempt) == (delivery.seq, 2)


def test_a_failed_delivery_is_retried_from_scratch(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger(clock=clock)
    ledger.register_destinations(["hook", "other"])
    e1 = event(1, clock)
    ledger.add_alerts([e1])
    [delivery] = ledger.claim_deliveries(["hook"], "o1", LEASE)
    assert ledger.finish_delivery(delivery, "failed", error="HTTP 410") is True
    [record] = ledger.alert_deliveries(destination="hook")
    assert (record.state, record.attempts, record.next_attempt_at, record.last_error) == (
        "failed",
        1,
        None,
        "HTTP 410",
    )
    clock.advance(3600)
    assert ledger.claim_deliveries(["hook"], "o1", LEASE) == []
    assert ledger.retry_delivery(e1.id, "other") is False  # never claimed: not failed
    assert ledger.retry_delivery("no-such-event", "hook") is False
    assert ledger.retry_delivery(e1.id, "hook") is True
    assert ledger.retry_delivery(e1.id, "hook") is False  # pending now, not failed
    [record] = ledger.alert_deliveries(destination="hook")
    assert (record.state, record.attempts, record.next_attempt_at) == ("pending", 0, clock.now())
    [again] = ledger.claim_deliveries(["hook"], "o2", LEASE)
    assert (again.event.id, again.attempt, again.owner) == (e1.id, 1, "o2")


def test_deliveries_filtered_and_paged(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger(clock=clock)
    ledger.register_destinations(["a", "b"])
    ledger.add_alerts([event(n, clock) for n in range(5)])
    claimed = {(d.seq, d.destination): d for d in ledger.claim_deliveries(["a", "b"], "o", LEASE, limit=6)}
    assert ledger.finish_delivery(claimed[1, "a"], "delivered")
    assert ledger.finish_delivery(claimed[2, "b"], "failed", error="gone")
    assert ledger.finish_delivery(claimed[3, "a"], "skipped")

    every = ledger.alert_deliveries()
    assert [(r.seq, r.destination) for r in every] == [(s, d) for s in (5, 4, 3, 2, 1) for d in "ab"]
    assert [(r.seq, r.destination) for r in ledger.alert_deliveries(state="delivered")] == [(1, "a")]
    assert [(r.seq, r.destination) for r in ledger.alert_deliveries(state="failed")] == [(2, "b")]
    assert [(r.seq, r.destination) for r in ledger.alert_deliveries(state="skipped")] == [(3, "a")]
    pending_b = ledger.alert_deliveries(state="pending", destination="b")
    assert [r.seq for r in pending_b] == [5, 4, 3, 1]
    assert ledger.alert_deliveries(state="failed", destination="a") == []
    # Paging: each page continues before the last seq of the one before.
    pages: list[list[int]] = []
    before: int | None = None
    while True:
        page = [r.seq for r in ledger.alert_deliveries(destination="a", limit=2, before=before)]
        if not page:
            break
        pages.append(page)
        before = page[-1]
    assert pages == [[5, 4], [3, 2], [1]]
    assert [r.seq for r in ledger.alert_deliveries(limit=3, before=3)] == [2, 2, 1]
    assert [r.event for r in ledger.alert_deliveries(destination="b")] == [
        event(n, clock) for n in (4, 3, 2, 1, 0)
    ]


def test_a_crossed_threshold_is_one_event(make_ledger: MakeLedger, clock: ManualClock) -> None:
    research = Budget("research", {"team": "research"}, USD("10"), thresholds=(50, 100))
    ledger = make_ledger([research], clock=clock)
    ledger.register_destinations(["hook"])
    heard: list[ThresholdCrossed] = []
    if make_ledger.backend == "redis":
        dispatcher(ledger, clock, heard)  # Redis: the outbox hears of crossings this way only
    else:
        ledger.subscribe(heard.append)
    assert isinstance(ledger.reserve("r1", TEAM, USD("6"), 60), Reservation)
    clock.advance(5)
    assert ledger.settle("r1", USD("6")).status == "settled"
    [crossed] = heard
    assert (crossed.budget_id, crossed.threshold, crossed.spent) == ("research", 50, USD("6"))
    expected = threshold_event_of(crossed, clock.now())
    [delivery] = ledger.claim_deliveries(["hook"], "o", LEASE)
    assert delivery.event == expected  # the settle's own event (Redis: the dispatcher's)
    assert delivery.event.kind == "threshold" and delivery.event.details["threshold"] == 50
    assert delivery.event.details["soft"] is False
    assert ledger.finish_delivery(delivery, "delivered")
    # The dispatcher (or another process) adding the same crossing again later adds nothing.
    clock.advance(1)
    assert ledger.add_alerts([threshold_event_of(crossed, clock.now())]) == []
    assert isinstance(ledger.reserve("r2", TEAM, USD("1"), 60), Reservation)
    assert ledger.settle("r2", USD("1")).status == "settled"  # 70%: crosses nothing
    clock.advance(LEASE)
    assert ledger.claim_deliveries(["hook"], "o2", LEASE) == []
    [record] = ledger.alert_deliveries()
    assert (record.event, record.state) == (expected, "delivered")


def test_an_expiry_that_crosses_a_threshold_is_an_event(make_ledger: MakeLedger, clock: ManualClock) -> None:
    research = Budget("research", {"team": "research"}, USD("10"), thresholds=(50,))
    ledger = make_ledger([research], clock=clock)
    ledger.register_destinations(["hook"])
    heard: list[ThresholdCrossed] = []
    if make_ledger.backend == "redis":
        dispatcher(ledger, clock, heard)
    else:
        ledger.subscribe(heard.append)
    assert isinstance(ledger.reserve("r1", TEAM, USD("7"), 10), Reservation)
    clock.advance(11)
    assert ledger.expire_leases() == 1
    [crossed] = heard
    [delivery] = ledger.claim_deliveries(["hook"], "o", LEASE)
    assert delivery.event == threshold_event_of(crossed, clock.now())
    assert delivery.event.details["request_id"] == "r1"


def test_a_soft_budget_admits_past_its_limit_and_says_so(make_ledger: MakeLedger, clock: ManualClock) -> None:
    soft = Budget("research", {"team": "research"}, USD("10"), thresholds=(50, 100), on_exceed="alert")
    assert soft.soft
    ledger = make_ledger([soft], clock=clock)
    ledger.register_destinations(["hook"])
    heard: list[ThresholdCrossed] = []
    if make_ledger.backend == "redis":
        dispatcher(ledger, clock, heard)
    else:
        ledger.subscribe(heard.append)
    for n in range(3):  # 24 USD reserved against a 10 USD limit: every one admitted
        assert isinstance(ledger.reserve(f"r{n}", TEAM, USD("8"), 60), Reservation)
    usage = ledger.usage("research")
    assert (usage.spent, usage.reserved, usage.limit) == (Money(0), USD("24"), USD("10"))
    outcomes = [ledger.settle(f"r{n}", USD("8")) for n in range(3)]
    assert [o.status for o in outcomes] == ["settled"] * 3
    assert [o.remaining for o in outcomes] == [None] * 3  # a soft budget bounds nothing
    assert ledger.usage("research").spent == USD("24")
    assert [(c.threshold, c.spent) for c in heard] == [(50, USD("8")), (100, USD("16"))]
    deliveries = ledger.claim_deliveries(["hook"], "o", LEASE)
    assert [d.event.details["threshold"] for d in deliveries] == [50, 100]
    assert [d.event.details["soft"] for d in deliveries] == [True, True]
    over = deliveries[1].event
    assert over == threshold_event_of(heard[1], clock.now(), soft=True)
    assert "soft budget" in over.summary and over.details["spent"] == "16"


def test_a_postgres_schema_of_version_1_gets_the_outbox(clock: ManualClock) -> None:
    import psycopg
    from psycopg import sql

    from spendgate.ledger.postgres.schema import MIGRATIONS, SCHEMA_VERSION
    from spendgate.ledger.postgres.settings import parse_url

    url = postgres_test_url("outbox")
    settings = parse_url(url)
    try:
        with psycopg.connect(settings.conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(settings.schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.schema)))
            conn.execute(MIGRATIONS[0])
            conn.execute("UPDATE spendgate_schema SET version = 1")
        research = Budget("research", {"team": "research"}, USD("10"), thresholds=(50,))
        ledger = open_ledger(url, [research], clock=clock)
        try:
            ledger.register_destinations(["hook"])
            assert isinstance(ledger.reserve("r1", TEAM, USD("6"), 60), Reservation)
            assert ledger.settle("r1", USD("6")).status == "settled"
            [delivery] = ledger.claim_deliveries(["hook"], "o", LEASE)
            assert delivery.event.details["threshold"] == 50
        finally:
            ledger.close()
        with psycopg.connect(settings.conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.schema)))
            assert conn.execute("SELECT version FROM spendgate_schema").fetchall() == [(SCHEMA_VERSION,)]
            assert SCHEMA_VERSION == 4
    finally:
        drop_test_data(url)


# -- many processes --------------------------------------------------------------------------
ctx = mp.get_context("spawn")
PROCESSES = 4
DELIVERIES = 200
ADDED = 25  # by each process while they claim


@pytest.mark.slow
def test_processes_claim_each_delivery_once(shared_url: str, processes: list[Any]) -> None:
    clock = ManualClock(T0)  # the events are due from T0; the children run on the system clock
    parent = open_ledger(shared_url, clock=clock)
    try:
        parent.register_destinations(["hook"])
        events = [event(n, clock) for n in range(DELIVERIES)]
        assert len(parent.add_alerts(events)) == DELIVERIES
        go, out = ctx.Event(), ctx.Queue()
        for proc in range(PROCESSES):
            child = ctx.Process(
                target=workers.claim_all, args=(shared_url, proc, "hook", ADDED, go, out), daemon=True
            )
            child.start()
            processes.append(child)
        deadline = time.monotonic() + 90
        collect(out, "ready", PROCESSES, deadline)
        go.set()  # all at once: they race to add events, to fan them out and to claim them
        reports = collect(out, "claimed", PROCESSES, deadline)
        total = DELIVERIES + PROCESSES * ADDED
        claimed = [seq for report in reports.values() for seq, _ in report]
        assert sorted(claimed) == list(range(1, total + 1))  # each exactly once, none missed
        assert {attempt for report in reports.values() for _, attempt in report} == {1}
        records = parent.alert_deliveries(limit=1000)
        assert len(records) == total and {r.state for r in records} == {"delivered"}
        assert {r.attempts for r in records} == {1}
    finally:
        parent.close()


def test_a_reset_starts_the_thresholds_again(make_ledger: MakeLedger, clock: ManualClock) -> None:
    research = Budget("research", {"team": "research"}, USD("10"), thresholds=(50,))
    ledger = make_ledger([research], clock=clock)
    ledger.register_destinations(["hook"])
    heard: list[ThresholdCrossed] = []
    if make_ledger.backend == "redis":
        dispatcher(ledger, clock, heard)
    for rid in ("r1", "r2"):
        assert isinstance(ledger.reserve(rid, TEAM, USD("6"), 60), Reservation)
        ledger.settle(rid, USD("6"))
        if rid == "r1":
            ledger.reset("research")
    claimed = ledger.claim_deliveries(["hook"], "o", LEASE)
    # The ledger announces 50% again after the reset: a second crossing, a second event.
    assert [(d.event.kind, d.event.details["threshold"], d.event.details["request_id"]) for d in claimed] == [
        ("threshold", 50, "r1"),
        ("threshold", 50, "r2"),
    ]


def test_the_retention_purge_drops_what_was_sent_and_keeps_what_is_pending(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    if make_ledger.backend == "memory":
        pytest.skip("memory keeps one process's outbox for its lifetime")
    ledger = make_ledger([], clock=clock, retention=timedelta(days=1))
    ledger.register_destinations(["hook"])
    ledger.add_alerts([event(1, clock), event(2, clock)])
    sent, kept = ledger.claim_deliveries(["hook"], "o", LEASE)
    assert ledger.finish_delivery(sent, "delivered")
    assert ledger.finish_delivery(kept, "pending", retry_at=clock.now() + timedelta(days=3))
    clock.advance(timedelta(days=2))
    ledger.add_alerts([event(3, clock)])
    ledger.purge()
    left = {(r.event.id, r.state) for r in ledger.alert_deliveries()}
    assert left == {(kept.event.id, "pending")}  # event 3 is new: kept, its deliveries not made yet
    assert [d.event.id for d in ledger.claim_deliveries(["hook"], "o", LEASE)] == [event(3, clock).id]
