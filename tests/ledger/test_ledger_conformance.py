"""The ledger contract, run against every registered backend (see conftest.py)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.errors import BudgetExceededError, ConfigError
from spendgate.gateway.settings import VirtualKey
from spendgate.ledger import (
    BudgetAdmin,
    BudgetChanged,
    KeyStorage,
    Ledger,
    Refusal,
    RequestIdReusedError,
    RequestLog,
    RequestRecord,
    Reservation,
    Reservations,
    ThresholdCrossed,
    UnknownReservationError,
    backend_for,
    known_schemes,
    open_key_storage,
    open_ledger,
)
from spendgate.limits import LimitRefusal
from spendgate.money import Money

from .conftest import ALIASES, BACKEND_URLS, SHARED, T0, MakeLedger

USD = Money.usd
ALICE = Attributes(user="alice", team="research", model="gpt-4o")
BOB = Attributes(user="bob", team="research", model="gpt-4o")


def budget(**config: Any) -> Budget:
    config.setdefault("limit", "10")
    return Budget.from_config(config)


def admitted(result: Reservation | Refusal | LimitRefusal) -> Reservation:
    assert isinstance(result, Reservation), result
    return result


def refused(result: Reservation | Refusal | LimitRefusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def spent_reserved(ledger: Ledger, budget_id: str, instance: Any = None, **kw: Any) -> tuple[Money, Money]:
    usage = ledger.usage(budget_id, instance, **kw)
    return usage.spent, usage.reserved


# -- the registry ---------------------------------------------------------------------


def test_every_registered_backend_is_tested() -> None:
    schemes = set(known_schemes()) - set(ALIASES)
    assert schemes <= set(BACKEND_URLS), "add a URL for the new backend to conftest.BACKEND_URLS"


def test_unknown_url_scheme_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        open_ledger("mongodb://user:secret@localhost:27017/0")
    message = str(info.value)
    assert info.value.key == "ledger"
    assert "memory://" in message and "sqlite://" in message
    assert "secret" not in message  # credentials are never echoed
    with pytest.raises(ConfigError):
        open_ledger("spend.db")


def test_the_ledger_is_each_protocol(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    for part in (Reservations, BudgetAdmin, RequestLog):
        assert isinstance(ledger, part)


# -- key storage: the gateway's virtual keys, where the backend has them -----------------------


def test_key_storage(make_ledger: MakeLedger) -> None:
    if backend_for(make_ledger.url).keys is None:
        pytest.skip("this backend stores no virtual keys")
    ledger = make_ledger([budget(id="b")])
    storage = open_key_storage(make_ledger.url, clock=ManualClock(T0))
    assert isinstance(storage, KeyStorage)
    key = VirtualKey(
        id="key_0123456789abcdef",
        hint="sg-abcd…",
        attributes=Attributes(key="key_0123456789abcdef", user="alice", tags=frozenset({"x", "y"})),
        models=("gpt-4o", "claude-*"),
        expires_at=T0 + timedelta(days=1),
        created_at=T0,
        name="alice's key",
    )
    other_id = "key_fedcba9876543210"  # a key's attributes carry its id (the gateway's KeyStore sets it)
    other = VirtualKey(id=other_id, hint="sg-wxyz…", attributes=Attributes(key=other_id), created_at=T0)
    storage.insert(key, "h1")
    storage.insert(other, "h2")
    assert storage.by_hash("h1") == (key, "h1")
    assert storage.by_hash("nope") is None
    assert storage.by_id(key.id) == key and storage.by_id("key_none") is None
    assert {k.id for k in storage.all()} == {key.id, other.id}
    assert storage.set_disabled(key.id, True) and storage.by_id(key.id) == replace(key, disabled=True)
    assert not storage.set_disabled("key_none", True)
    assert storage.set_secret(key.id, "h3", "sg-efgh…")
    assert storage.by_hash("h1") is None
    assert storage.by_hash("h3") == (replace(key, disabled=True, hint="sg-efgh…"), "h3")
    assert not storage.set_secret("key_none", "h4", "sg-…")
    if make_ledger.backend in SHARED:  # another process on the same URL sees the keys
        again = open_key_storage(make_ledger.url, clock=ManualClock(T0))
        assert again.by_id(other.id) == other
        again.close()
    assert storage.remove(other.id) and not storage.remove(other.id)
    assert [k.id for k in storage.all()] == [key.id]
    # The ledger in the same store is unaffected.
    admitted(ledger.reserve("r1", ALICE, USD("1"), 60))
    assert ledger.usage("b").reserved == USD("1")
    storage.close()


# -- reserve: all or nothing ------------------------------------------------------------


def test_all_or_nothing_across_budgets(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(
        [budget(id="global", limit="10"), budget(id="research", selector={"team": "research"}, limit="5")]
    )
    first = admitted(ledger.reserve("r1", ALICE, USD("4"), 60))
    assert {line.budget_id for line in first.lines} == {"global", "research"}
    refusal = refused(ledger.reserve("r2", BOB, USD("2"), 60))
    assert refusal.budget_id == "research"
    # Nothing of the refused request stuck to the budget that had room.
    assert spent_reserved(ledger, "global") == (USD("0"), USD("4"))
    assert spent_reserved(ledger, "research") == (USD("0"), USD("4"))
    # A request the research budget does not match is only checked against global.
    admitted(ledger.reserve("r3", Attributes(team="infra"), USD("6"), 60))
    refusal = refused(ledger.reserve("r4", Attributes(team="infra"), USD("0.01"), 60))
    assert refusal.budget_id == "global"


def test_exact_fit_is_admitted_one_nano_more_is_not(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b", limit="1")])
    admitted(ledger.reserve("a", ALICE, Money(999_999_999), 60))
    refused(ledger.reserve("b", ALICE, Money(2), 60))
    admitted(ledger.reserve("c", ALICE, Money(1), 60))
    assert ledger.usage("b").reserved == USD("1")


def test_no_matching_budget_admits_with_no_lines(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="research", selector={"team": "research"})])
    result = admitted(ledger.reserve("r1", Attributes(team="infra"), USD("1000"), 60))
    assert result.lines == ()
    assert ledger.settle("r1", USD("999")).status == "settled"


def test_same_request_id(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b")])
    first = admitted(ledger.reserve("r1", ALICE, USD("1"), 60))
    # A retried reserve (same id, attributes, estimate) gets the same reservation back.
    again = admitted(ledger.reserve("r1", ALICE, USD("1"), 60))
    assert again.request_id == first.request_id and again.lines == first.lines
    assert again.expires_at == first.expires_at
    assert ledger.usage("b").reserved == USD("1")
    with pytest.raises(RequestIdReusedError):
        ledger.reserve("r1", ALICE, USD("2"), 60)
    with pytest.raises(RequestIdReusedError):
        ledger.reserve("r1", BOB, USD("1"), 60)
    ledger.settle("r1", USD("1"))
    with pytest.raises(RequestIdReusedError, match="already settled"):
        ledger.reserve("r1", ALICE, USD("1"), 60)


def test_bad_arguments(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b")])
    with pytest.raises(ValueError, match="negative"):
        ledger.reserve("r", ALICE, USD("-1"), 60)
    with pytest.raises(TypeError):
        ledger.reserve("r", ALICE, 1.5, 60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease"):
        ledger.reserve("r", ALICE, USD("1"), 0)


# -- settle and release -------------------------------------------------------------------


def test_settle_is_idempotent(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b")])
    admitted(ledger.reserve("r1", ALICE, USD("3"), 60))
    first = ledger.settle("r1", USD("1.25"))
    assert (first.status, first.charged, first.estimate) == ("settled", USD("1.25"), USD("3"))
    assert first.overshoot == USD("0")
    retry = ledger.settle("r1", USD("1.25"))
    assert (retry.status, retry.charged) == ("already_settled", USD("1.25"))
    other = ledger.settle("r1", USD("2"))  # a confused retry changes nothing either
    assert (other.status, other.charged) == ("already_settled", USD("1.25"))
    assert spent_reserved(ledger, "b") == (USD("1.25"), USD("0"))
    assert len(ledger.query_requests()) == 1


def test_settle_above_the_estimate_is_charged_and_reported(
    make_ledger: MakeLedger, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = make_ledger([budget(id="b", limit="10")])
    admitted(ledger.reserve("r1", ALICE, USD("2"), 60))
    with caplog.at_level(logging.WARNING, logger="spendgate.ledger"):
        outcome = ledger.settle("r1", USD("2.5"))
    assert outcome.charged == USD("2.5")
    assert outcome.overshoot == USD("0.5")
    assert "above its reserved estimate" in caplog.text
    assert ledger.usage("b").spent == USD("2.5")


def test_release(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b", limit="5")])
    admitted(ledger.reserve("r1", ALICE, USD("5"), 60))
    refused(ledger.reserve("r2", ALICE, USD("1"), 60))
    assert ledger.release("r1").status == "released"
    assert spent_reserved(ledger, "b") == (USD("0"), USD("0"))
    assert ledger.release("r1").status == "already_released"
    late = ledger.settle("r1", USD("1"))  # ended once: a settle after release charges nothing
    assert (late.status, late.charged) == ("released", USD("0"))
    admitted(ledger.reserve("r2", ALICE, USD("5"), 60))
    ledger.settle("r2", USD("4"))
    assert ledger.release("r2").status == "settled"
    assert ledger.usage("b").spent == USD("4")
    assert [r.request_id for r in ledger.query_requests()] == ["r2"]  # released requests cost nothing


def test_unknown_request_id(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b")])
    with pytest.raises(UnknownReservationError):
        ledger.settle("nope", USD("1"))
    with pytest.raises(UnknownReservationError):
        ledger.release("nope")


# -- leases --------------------------------------------------------------------------------


def test_lease_expiry_charges_the_reservation(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger([budget(id="b", limit="10")], clock)
    admitted(ledger.reserve("dead", ALICE, USD("3"), timedelta(seconds=30)))
    admitted(ledger.reserve("alive", ALICE, USD("1"), timedelta(seconds=300)))
    clock.advance(29)
    assert ledger.expire_leases() == 0
    clock.advance(1)
    assert ledger.expire_leases() == 1
    assert spent_reserved(ledger, "b") == (USD("3"), USD("1"))
    assert ledger.expire_leases() == 0
    late = ledger.settle("dead", USD("0.5"))  # never under-count: the expiry charge stays
    assert (late.status, late.charged) == ("expired", USD("3"))
    assert ledger.release("dead").status == "expired"
    assert ledger.settle("alive", USD("1")).status == "settled"
    assert spent_reserved(ledger, "b") == (USD("4"), USD("0"))
    statuses = {r.request_id: (r.status, r.cost) for r in ledger.query_requests()}
    assert statuses == {"dead": ("expired", USD("3")), "alive": ("ok", USD("1"))}


def test_reserve_expires_leases_on_its_own(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger([budget(id="b", limit="10")], clock)
    admitted(ledger.reserve("dead", ALICE, USD("3"), 30))
    clock.advance(60)
    admitted(ledger.reserve("next", ALICE, USD("1"), 30))
    assert spent_reserved(ledger, "b") == (USD("3"), USD("1"))


# -- windows -------------------------------------------------------------------------------


def test_window_rollover(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger([budget(id="daily", limit="10", window="day")], clock)
    admitted(ledger.reserve("r1", ALICE, USD("8"), 60))
    ledger.settle("r1", USD("8"))
    refused(ledger.reserve("r2", ALICE, USD("3"), 60))
    clock.set(datetime(2026, 3, 11, 0, 0, tzinfo=UTC))
    usage = ledger.usage("daily")
    assert (usage.spent, usage.window_start) == (USD("0"), datetime(2026, 3, 11, tzinfo=UTC))
    admitted(ledger.reserve("r2", ALICE, USD("3"), 60))
    assert ledger.usage("daily", at=T0).spent == USD("8")  # the old window keeps its spend


def test_settled_in_the_next_window_is_charged_to_its_own(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    clock.set(datetime(2026, 3, 10, 23, 59, 30, tzinfo=UTC))
    ledger = make_ledger([budget(id="daily", limit="10", window="day")], clock)
    reservation = admitted(ledger.reserve("r1", ALICE, USD("4"), 120))
    assert reservation.lines[0].window_start == datetime(2026, 3, 10, tzinfo=UTC)
    clock.advance(60)  # 00:00:30 the next day
    assert ledger.usage("daily").reserved == USD("0")  # the new window starts empty
    ledger.settle("r1", USD("2"))
    assert spent_reserved(ledger, "daily") == (USD("0"), USD("0"))
    assert spent_reserved(ledger, "daily", at=datetime(2026, 3, 10, 12, tzinfo=UTC)) == (USD("2"), USD("0"))


def test_every_n_minutes_window(make_ledger: MakeLedger, clock: ManualClock) -> None:
    window = {"every": "30m", "anchor": "2026-01-01T00:10:00Z"}
    ledger = make_ledger([budget(id="b", limit="1", window=window)], clock)
    usage = ledger.usage("b")
    assert (usage.window_start, usage.window_end) == (
        datetime(2026, 3, 10, 11, 40, tzinfo=UTC),
        datetime(2026, 3, 10, 12, 10, tzinfo=UTC),
    )
    admitted(ledger.reserve("r1", ALICE, USD("1"), 60))
    ledger.settle("r1", USD("1"))
    refusal = refused(ledger.reserve("r2", ALICE, USD("1"), 60))
    assert refusal.retry_after == 600.0
    clock.advance(600)
    admitted(ledger.reserve("r2", ALICE, USD("1"), 60))


def test_month_boundary_in_berlin(make_ledger: MakeLedger, clock: ManualClock) -> None:
    clock.set(datetime(2026, 1, 31, 22, 59, 59, tzinfo=UTC))  # 23:59:59 CET, still January
    config = {"calendar": "month", "timezone": "Europe/Berlin"}
    ledger = make_ledger([budget(id="monthly", limit="10", window=config)], clock)
    admitted(ledger.reserve("jan", ALICE, USD("10"), 60))
    ledger.settle("jan", USD("10"))
    refusal = refused(ledger.reserve("x", ALICE, USD("1"), 60))
    assert refusal.resets_at == datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
    assert refusal.retry_after == 1.0
    clock.advance(1)  # midnight in Berlin: February
    usage = ledger.usage("monthly")
    assert (usage.spent, usage.window_start, usage.window_end) == (
        USD("0"),
        datetime(2026, 1, 31, 23, 0, tzinfo=UTC),
        datetime(2026, 2, 28, 23, 0, tzinfo=UTC),
    )
    admitted(ledger.reserve("feb", ALICE, USD("10"), 60))
    # March has the spring DST change: April starts at 22:00 UTC (CEST, +02:00).
    clock.set(datetime(2026, 3, 31, 21, 59, 59, tzinfo=UTC))
    assert ledger.usage("monthly").window_end == datetime(2026, 3, 31, 22, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "start", "end"),
    [
        # Spring forward on 2026-03-08: a 23-hour day.
        (
            datetime(2026, 3, 8, 12, tzinfo=UTC),
            datetime(2026, 3, 8, 5, tzinfo=UTC),
            datetime(2026, 3, 9, 4, tzinfo=UTC),
        ),
        # Fall back on 2026-11-01: a 25-hour day.
        (
            datetime(2026, 11, 1, 12, tzinfo=UTC),
            datetime(2026, 11, 1, 4, tzinfo=UTC),
            datetime(2026, 11, 2, 5, tzinfo=UTC),
        ),
    ],
)
def test_daily_window_across_dst_in_new_york(
    make_ledger: MakeLedger, clock: ManualClock, day: datetime, start: datetime, end: datetime
) -> None:
    clock.set(start)
    config = {"calendar": "day", "timezone": "America/New_York"}
    ledger = make_ledger([budget(id="daily", limit="10", window=config)], clock)
    admitted(ledger.reserve("first-minute", ALICE, USD("4"), 60))
    ledger.settle("first-minute", USD("4"))
    clock.set(end - timedelta(microseconds=1))  # the last instant of the same local day
    admitted(ledger.reserve("last-instant", ALICE, USD("6"), 60))
    ledger.settle("last-instant", USD("6"))
    usage = ledger.usage("daily")
    assert (usage.window_start, usage.window_end, usage.spent) == (start, end, USD("10"))
    assert ledger.usage("daily", at=day).spent == USD("10")
    clock.set(end)  # local midnight: a new day
    usage = ledger.usage("daily")
    assert (usage.window_start, usage.spent) == (end, USD("0"))
    admitted(ledger.reserve("next-day", ALICE, USD("10"), 60))


# -- limits --------------------------------------------------------------------------------


def test_raise_and_lower_a_limit(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b", limit="5")])
    changes: list[BudgetChanged] = []
    ledger.on_change(changes.append)
    admitted(ledger.reserve("r1", ALICE, USD("4"), 60))
    refused(ledger.reserve("r2", ALICE, USD("2"), 60))
    ledger.set_limit("b", USD("6"))
    assert changes == [BudgetChanged("b", "limit", USD("6"), USD("5"))]
    admitted(ledger.reserve("r2", ALICE, USD("2"), 60))
    ledger.set_limit("b", USD("3"))  # below what is already held: nothing more fits
    refusal = refused(ledger.reserve("r3", ALICE, USD("0.01"), 60))
    assert refusal.limit == USD("3")
    assert ledger.get_budget("b").limit == USD("3")
    assert ledger.usage("b").limit == USD("3")
    with pytest.raises(KeyError):
        ledger.set_limit("nope", USD("1"))


def test_reset(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="per-user", selector={"user": "*"}, limit="5", window="month")])
    for request_id, who in (("a", ALICE), ("b", BOB)):
        admitted(ledger.reserve(request_id, who, USD("4"), 60))
        ledger.settle(request_id, USD("4"))
    admitted(ledger.reserve("held", ALICE, USD("1"), 60))
    changes: list[BudgetChanged] = []
    ledger.on_change(changes.append)
    ledger.reset("per-user", {"user": "alice"})
    assert changes[-1].kind == "reset" and changes[-1].instance == "user=alice"
    # Spend is zeroed, the open reservation is still held.
    assert spent_reserved(ledger, "per-user", {"user": "alice"}) == (USD("0"), USD("1"))
    assert spent_reserved(ledger, "per-user", {"user": "bob"}) == (USD("4"), USD("0"))
    ledger.reset("per-user")
    assert spent_reserved(ledger, "per-user", "user=bob") == (USD("0"), USD("0"))
    admitted(ledger.reserve("c", BOB, USD("5"), 60))


def test_put_and_remove_budgets_at_run_time(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b", limit="5")])
    admitted(ledger.reserve("r1", ALICE, USD("5"), 60))
    ledger.settle("r1", USD("5"))
    assert ledger.remove_budget("b") is True
    assert ledger.remove_budget("b") is False
    assert ledger.budgets() == []
    admitted(ledger.reserve("r2", ALICE, USD("100"), 60))  # nothing enforces now
    ledger.put_budget(budget(id="b", limit="6", window="none"))
    refusal = refused(ledger.reserve("r3", ALICE, USD("2"), 60))  # spend so far is kept
    assert (refusal.spent, refusal.limit) == (USD("5"), USD("6"))
    ledger.put_budget(budget(id="team", selector={"team": "research"}, limit="1"))
    assert sorted(b.id for b in ledger.budgets()) == ["b", "team"]
    assert refused(ledger.reserve("r4", ALICE, USD("1.5"), 60)).budget_id in {"b", "team"}


def test_delete_budget_lets_requests_in_flight_end_and_keeps_their_cost(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(
        [budget(id="team", selector={"team": "research"}, limit="10"), budget(id="other", limit="100")]
    )
    admitted(ledger.reserve("done", ALICE, USD("2"), 60))
    ledger.settle("done", USD("2"))
    admitted(ledger.reserve("a", ALICE, USD("3"), 60))
    admitted(ledger.reserve("b", BOB, USD("1"), 60))
    changes: list[BudgetChanged] = []
    ledger.on_change(changes.append)
    deleted = ledger.delete_budget("team")
    # What was in flight against it: told, not cancelled.
    assert (deleted.budget_id, deleted.in_flight, deleted.reserved) == ("team", 2, USD("4"))
    assert changes[-1].kind == "remove" and changes[-1].budget_id == "team"
    assert [b.id for b in ledger.budgets()] == ["other"]
    admitted(ledger.reserve("c", ALICE, USD("50"), 60))  # no longer enforced
    # The requests in flight end as usual: charged (to the request log and the kept spend) once.
    assert ledger.settle("a", USD("2.5")).status == "settled"
    assert ledger.release("b").status == "released"
    assert ledger.usage("other").spent == USD("2.5") + USD("2")
    assert ledger.usage("other").reserved == USD("50")  # only "c" is still open
    with pytest.raises(KeyError, match="no budget 'team'"):
        ledger.delete_budget("team")
    assert ledger.remove_budget("team") is False
    # Deleting is not resetting: the id back in the same window continues from its spend.
    ledger.put_budget(budget(id="team", selector={"team": "research"}, limit="10"))
    assert spent_reserved(ledger, "team") == (USD("4.5"), USD("0"))
    assert ledger.delete_budget("other").in_flight == 1  # "c"


def test_check_writable(make_ledger: MakeLedger) -> None:
    import asyncio

    ledger = make_ledger([budget(id="b")])
    ledger.check_writable()

    async def probe() -> None:
        try:
            await ledger.acheck_writable()
        finally:
            # Before the loop ends: PostgreSQL's async pool belongs to it, and one left open
            # can hold asyncio.run's shutdown up on Python 3.11 (it hung a CI run once).
            await ledger.aclose()

    asyncio.run(probe())
    admitted(ledger.reserve("r", ALICE, USD("1"), 60))  # a probe holds nothing


# -- selectors -------------------------------------------------------------------------------


def test_wildcard_selector_makes_a_budget_per_user(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="per-user", selector={"user": "*"}, limit="5", window="day")])
    admitted(ledger.reserve("a1", ALICE, USD("4"), 60))
    admitted(ledger.reserve("b1", BOB, USD("4"), 60))
    refusal = refused(ledger.reserve("a2", ALICE, USD("2"), 60))
    assert refusal.instance == {"user": "alice"}
    assert refusal.selector == {"user": "alice"}
    assert refusal.label == "user=alice, daily"
    # No user: the per-user budget does not apply.
    assert admitted(ledger.reserve("anon", Attributes(team="research"), USD("50"), 60)).lines == ()
    listed = {(u.budget_id, u.instance_key): u.reserved for u in ledger.list_budgets()}
    assert listed == {("per-user", "user=alice"): USD("4"), ("per-user", "user=bob"): USD("4")}
    with pytest.raises(ValueError, match="instance"):
        ledger.usage("per-user")


def test_wildcard_with_exact_dimension(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="research-users", selector={"team": "research", "user": "*"}, limit="1")])
    admitted(ledger.reserve("x", Attributes(team="infra", user="alice"), USD("5"), 60))
    admitted(ledger.reserve("a", ALICE, USD("1"), 60))
    refusal = refused(ledger.reserve("b", ALICE, USD("1"), 60))
    assert refusal.selector == {"team": "research", "user": "alice"}
    assert ledger.usage("research-users", {"user": "alice", "team": "research"}).reserved == USD("1")


def test_tag_selectors(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(
        [
            budget(id="batch", selector={"tag": "batch"}, limit="3"),
            budget(id="per-tag", selector={"tag": "*"}, limit="5"),
        ]
    )
    tagged = Attributes(user="alice", tags=frozenset({"batch", "nightly"}))
    reservation = admitted(ledger.reserve("r1", tagged, USD("3"), 60))
    assert sorted((line.budget_id, line.instance) for line in reservation.lines) == [
        ("batch", ""),
        ("per-tag", "tag=batch"),
        ("per-tag", "tag=nightly"),
    ]
    refused(ledger.reserve("r2", Attributes(tags=frozenset({"batch"})), USD("1"), 60))
    # Only "nightly" is touched: the batch budget does not match, per-tag tag=nightly has 2 left.
    admitted(ledger.reserve("r3", Attributes(tags=frozenset({"nightly"})), USD("2"), 60))
    refusal = refused(
        ledger.reserve("r4", Attributes(tags=frozenset({"interactive", "nightly"})), USD("1"), 60)
    )
    assert (refusal.budget_id, refusal.instance) == ("per-tag", {"tag": "nightly"})
    assert ledger.usage("per-tag", {"tag": "interactive"}).reserved == USD("0")  # all or nothing
    assert admitted(ledger.reserve("r5", Attributes(user="bob"), USD("100"), 60)).lines == ()


# -- thresholds ------------------------------------------------------------------------------


def test_threshold_events_once_per_window(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger([budget(id="b", limit="10", window="day", thresholds=[50, 80, 100])], clock)
    events: list[ThresholdCrossed] = []
    ledger.subscribe(events.append)

    def spend(request_id: str, amount: str) -> None:
        admitted(ledger.reserve(request_id, ALICE, USD(amount), 60))
        ledger.settle(request_id, USD(amount))

    spend("r1", "4")
    assert events == []
    spend("r2", "1")  # exactly 50%
    assert [e.threshold for e in events] == [50]
    assert (events[0].spent, events[0].limit, events[0].request_id) == (USD("5"), USD("10"), "r2")
    spend("r3", "0.5")
    spend("r4", "4.5")  # 100%: crosses 80 and 100 at once
    assert [e.threshold for e in events] == [50, 80, 100]
    ledger.set_limit("b", USD("20"))
    spend("r5", "6")  # 80% of the new limit again: already announced this window
    assert [e.threshold for e in events] == [50, 80, 100]
    clock.set(datetime(2026, 3, 11, 1, tzinfo=UTC))
    spend("r6", "10")
    assert [e.threshold for e in events] == [50, 80, 100, 50]
    assert events[-1].window_start == datetime(2026, 3, 11, tzinfo=UTC)


def test_threshold_on_expiry_and_per_instance(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger([budget(id="u", selector={"user": "*"}, limit="10", thresholds=[50])], clock)
    events: list[ThresholdCrossed] = []
    ledger.subscribe(events.append)
    admitted(ledger.reserve("a", ALICE, USD("6"), 30))
    admitted(ledger.reserve("b", BOB, USD("6"), 300))
    clock.advance(31)
    ledger.expire_leases()
    assert [(e.instance, e.threshold, e.request_id) for e in events] == [({"user": "alice"}, 50, "a")]
    ledger.settle("b", USD("5"))
    assert [e.instance for e in events] == [{"user": "alice"}, {"user": "bob"}]


def test_a_failing_subscriber_does_not_break_settle(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b", limit="1")])

    def broken(event: ThresholdCrossed) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = ledger.subscribe(broken)
    admitted(ledger.reserve("r1", ALICE, USD("1"), 60))
    assert ledger.settle("r1", USD("1")).status == "settled"
    unsubscribe()


# -- refusal -----------------------------------------------------------------------------------


def test_refusal_fields_and_message(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger(
        [budget(id="research", selector={"team": "research"}, limit="100", window="month")], clock
    )
    admitted(ledger.reserve("r1", ALICE, USD("80"), 60))
    ledger.settle("r1", USD("78"))
    admitted(ledger.reserve("r2", ALICE, USD("20"), 60))
    refusal = refused(ledger.reserve("r3", BOB, USD("3.2"), 60))
    assert refusal.budget_id == "research"
    assert refusal.label == "team=research, monthly"
    assert refusal.selector == {"team": "research"}
    assert refusal.instance == {}
    assert (refusal.spent, refusal.reserved, refusal.limit, refusal.needed) == (
        USD("78"),
        USD("20"),
        USD("100"),
        USD("3.2"),
    )
    assert refusal.available == USD("2")
    assert refusal.resets_at == datetime(2026, 4, 1, tzinfo=UTC)
    assert refusal.retry_after == (datetime(2026, 4, 1, tzinfo=UTC) - T0).total_seconds()
    error = refusal.to_error()
    assert isinstance(error, BudgetExceededError)
    assert str(error) == (
        "Cost tracking budget exceeded: current usage 98% of limit 100 USD "
        '(budget "team=research, monthly"); this request needs up to 3.20 USD; '
        "resets 2026-04-01T00:00:00Z"
    )
    assert (error.budget_id, error.selector, error.requested) == (
        "research",
        {"team": "research"},
        USD("3.2"),
    )
    assert error.retry_after == refusal.retry_after


def test_refusal_without_window(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="total", limit="1", name="Lifetime cap")])
    refusal = refused(ledger.reserve("r1", ALICE, USD("2"), 60))
    assert (refusal.resets_at, refusal.retry_after) == (None, None)
    assert refusal.label == "Lifetime cap: global, total"
    assert "resets" not in str(refusal.to_error())


def test_a_refusal_carries_the_budget_s_own_policy(make_ledger: MakeLedger) -> None:
    """The guard decides raise/wait/clamp from the refusal itself: no second read of the ledger
    (a network round trip on PostgreSQL and Redis) on the refusal path."""
    ledger = make_ledger([budget(id="w", limit="1", on_exceed="wait"), budget(id="r", limit="5")])
    assert refused(ledger.reserve("r1", ALICE, USD("2"), 60)).on_exceed == "wait"
    ledger.set_limit("w", USD("10"))
    refusal = refused(ledger.reserve("r2", ALICE, USD("6"), 60))
    assert (refusal.budget_id, refusal.on_exceed) == ("r", "raise")


# -- usage ---------------------------------------------------------------------------------------


def test_usage_and_list(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(
        [budget(id="global", limit="100", window="month"), budget(id="u", selector={"user": "*"}, limit="10")]
    )
    admitted(ledger.reserve("r1", ALICE, USD("4"), 60))
    ledger.settle("r1", USD("2.5"))
    admitted(ledger.reserve("r2", ALICE, USD("1"), 60))
    usage = ledger.usage("global")
    assert (usage.spent, usage.reserved, usage.limit, usage.percent) == (USD("2.5"), USD("1"), USD("100"), 3)
    assert (usage.window_start, usage.window_end) == (
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 4, 1, tzinfo=UTC),
    )
    assert usage.label == "global, monthly"
    listed = [(u.budget_id, u.instance, u.spent) for u in ledger.list_budgets()]
    assert listed == [("global", {}, USD("2.5")), ("u", {"user": "alice"}, USD("2.5"))]
    with pytest.raises(KeyError):
        ledger.usage("nope")


# -- the request log -------------------------------------------------------------------------------


def test_request_log_pages(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger([budget(id="g", limit="1000")], clock)
    # Seven requests: three share a start instant (ties go by request id), one is released.
    for request_id in ("a", "b", "c", "d", "e", "f", "x"):
        admitted(ledger.reserve(request_id, ALICE, USD("1"), 60))
        if request_id not in ("c", "d"):
            clock.advance(10)  # c, d and e start at the same instant
    for request_id in ("a", "b", "c", "d", "e", "f"):
        ledger.settle(request_id, USD("0.5"))
    ledger.release("x")
    everything = [r.request_id for r in ledger.query_requests()]
    assert everything == ["f", "c", "d", "e", "b", "a"]
    pages, after = [], None
    for _ in range(10):  # bounded
        page = ledger.query_requests(limit=2, after=after, user="alice")
        pages.append([r.request_id for r in page])
        if len(page) < 2:
            break
        after = page[-1].request_id
    assert pages == [["f", "c"], ["d", "e"], ["b", "a"], []]
    assert [r.request_id for r in ledger.query_requests(after="d", limit=10)] == ["e", "b", "a"]
    with pytest.raises(UnknownReservationError):
        ledger.query_requests(after="x")  # released: not in the log
    with pytest.raises(UnknownReservationError):
        ledger.query_requests(after="nope")


def test_request_log_query_aggregate_and_retention(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger([budget(id="g", limit="1000")], clock, retention=timedelta(days=7))
    people = {
        "r1": Attributes(user="alice", team="research", model="gpt-4o", tags=frozenset({"batch"})),
        "r2": Attributes(user="bob", team="research", model="gpt-4o-mini"),
        "r3": Attributes(user="alice", key="vk-1", tags=frozenset({"batch", "eval"})),
    }
    for i, (request_id, attrs) in enumerate(people.items()):
        admitted(ledger.reserve(request_id, attrs, USD("1"), 60))
        clock.advance(10)
        record = RequestRecord(
            request_id=request_id,
            attributes=attrs,
            cost=USD(f"0.{i + 1}"),
            started_at=clock.now(),
            finished_at=clock.now(),
            model="gpt-4o-2024-08-06" if i == 0 else None,
            usage={"input_tokens": 100 * (i + 1), "output_tokens": 5},
            breakdown={"input": USD("0.05"), "output": Decimal("0.05")}
            if i == 0
            else {"input": f"0.{i + 1}"},
        )
        ledger.settle(request_id, USD(f"0.{i + 1}"), record)
        clock.advance(3600)
    records = ledger.query_requests()
    assert [r.request_id for r in records] == ["r3", "r2", "r1"]  # newest first
    first = records[-1]
    assert first.started_at == T0 and first.finished_at == T0 + timedelta(seconds=10)
    assert (first.model, first.cost, first.status) == ("gpt-4o-2024-08-06", USD("0.1"), "ok")
    assert first.usage == {"input_tokens": 100, "output_tokens": 5}
    assert first.breakdown == {"input": "0.05", "output": "0.05"}
    assert first.attributes == people["r1"]
    assert [r.request_id for r in ledger.query_requests(user="alice")] == ["r3", "r1"]
    assert [r.request_id for r in ledger.query_requests(tag="batch", user="alice")] == ["r3", "r1"]
    assert [r.request_id for r in ledger.query_requests(key="vk-1")] == ["r3"]
    assert [
        r.request_id for r in ledger.query_requests(T0 + timedelta(minutes=30), T0 + timedelta(hours=2))
    ] == ["r2"]
    assert len(ledger.query_requests(limit=1)) == 1
    assert ledger.usage_by("user") == {"alice": USD("0.4"), "bob": USD("0.2")}
    assert ledger.usage_by("tag") == {"batch": USD("0.4"), "eval": USD("0.3")}
    assert ledger.usage_by("model", start=T0, end=T0 + timedelta(hours=1)) == {"gpt-4o": USD("0.1")}
    with pytest.raises(ValueError, match="dimension"):
        ledger.query_requests(colour="red")
    with pytest.raises(ValueError, match="dimension"):
        ledger.usage_by("colour")
    # Retention: a week later the first two are gone, by the schedule or by purge().
    clock.set(T0 + timedelta(days=7, minutes=90))
    ledger.purge()
    assert [r.request_id for r in ledger.query_requests()] == ["r3"]
    clock.advance(timedelta(days=1))
    ledger.purge()
    assert ledger.query_requests() == []
    assert ledger.usage_by("user") == {}


def test_request_log_keeps_each_request_s_estimate(make_ledger: MakeLedger, clock: ManualClock) -> None:
    ledger = make_ledger([budget(id="g", limit="1000")], clock)
    admitted(ledger.reserve("with-record", ALICE, USD("1.25"), 60))
    admitted(ledger.reserve("bare", BOB, USD("0.000000007"), 60))
    admitted(ledger.reserve("dead", BOB, USD("3"), 5))
    clock.advance(1)
    record = RequestRecord("with-record", ALICE, USD("0.5"), T0, clock.now(), usage={"input_tokens": 3})
    ledger.settle("with-record", USD("0.5"), record)
    ledger.settle("bare", USD("0.000000002"))
    clock.advance(10)
    ledger.expire_leases()
    logged = {r.request_id: (r.cost, r.estimate) for r in ledger.query_requests()}
    assert logged == {
        "with-record": (USD("0.5"), USD("1.25")),
        "bare": (USD("0.000000002"), USD("0.000000007")),
        "dead": (USD("3"), USD("3")),  # an expired lease is charged its estimate
    }


def test_request_record_refuses_float_breakdown(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="g")])
    admitted(ledger.reserve("r1", ALICE, USD("1"), 60))
    record = RequestRecord("r1", ALICE, USD("1"), T0, T0, breakdown={"input": 0.1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="breakdown"):
        ledger.settle("r1", USD("1"), record)
    assert ledger.settle("r1", USD("1")).status == "settled"


# -- shared backends: several ledgers (processes) on one store -------------------------------------


def test_changes_reach_other_instances(make_ledger: MakeLedger) -> None:
    if make_ledger.backend not in SHARED:
        pytest.skip("state is per ledger object")
    first = make_ledger([budget(id="b", limit="5")])
    second = make_ledger([budget(id="b", limit="5")])
    heard: list[BudgetChanged] = []
    second.on_change(heard.append)
    admitted(first.reserve("r1", ALICE, USD("5"), 60))
    refused(second.reserve("r2", ALICE, USD("1"), 60))
    first.set_limit("b", USD("7"))
    admitted(second.reserve("r2", ALICE, USD("1"), 60))  # sees the raised limit at once
    assert heard == [BudgetChanged("b", "limit", USD("7"), USD("5"))]
    # A restart with the same config keeps the limit set at run time...
    third = make_ledger([budget(id="b", limit="5")])
    assert third.get_budget("b").limit == USD("7")
    # ...until the configured limit itself changes.
    make_ledger([budget(id="b", limit="8")])
    second.refresh()
    assert second.get_budget("b").limit == USD("8")
    assert heard[-1] == BudgetChanged("b", "put", USD("8"), USD("7"))
    third.reset("b")
    second.refresh()
    assert heard[-1].kind == "reset"


def test_a_paused_budget_reaches_other_instances(make_ledger: MakeLedger) -> None:
    """A limit of 0, configured or set at run time, is read back by another instance (it was
    once written as '0E-9', which no instance could read: every start after it failed)."""
    if make_ledger.backend not in SHARED:
        pytest.skip("state is per ledger object")
    first = make_ledger([budget(id="zero", limit="0"), budget(id="b", limit="5")])
    first.set_limit("b", USD("0"))
    second = make_ledger([budget(id="zero", limit="0"), budget(id="b", limit="5")])
    second.refresh()
    assert second.get_budget("zero").limit == USD("0") and second.get_budget("b").limit == USD("0")
    refused(second.reserve("r1", ALICE, USD("0.01"), 60))


def test_thresholds_once_across_instances(make_ledger: MakeLedger) -> None:
    if make_ledger.backend not in SHARED:
        pytest.skip("state is per ledger object")
    ledgers = [make_ledger([budget(id="b", limit="10", thresholds=[50, 90])]) for _ in range(3)]
    heard: list[tuple[int, int]] = []
    for index, ledger in enumerate(ledgers):
        ledger.subscribe(lambda e, i=index: heard.append((i, e.threshold)))  # type: ignore[misc]
    for n in range(10):
        ledger = ledgers[n % 3]
        admitted(ledger.reserve(f"r{n}", ALICE, USD("1"), 60))
        ledger.settle(f"r{n}", USD("1"))
    assert heard == [(4 % 3, 50), (8 % 3, 90)]  # the 5th and 9th settles crossed them, once
