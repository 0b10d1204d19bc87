"""Rate limits and pacing in the ledger: one suite over every backend, with an injected clock.

A limit is one more thing the same atomic reservation reserves: a request takes every
matching budget and limit, or none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.conftest import BACKEND_URLS, drop_test_data
from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.errors import PromptTooLargeError, RateLimitExceededError
from spendgate.ledger import Ledger, open_ledger
from spendgate.ledger.base import Refusal, Reservation
from spendgate.limits import BUCKETS, Demand, Limit, LimitRefusal
from spendgate.money import Money

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
USD = Money.parse("1")
LEASE = timedelta(minutes=10)
K1 = Attributes(key="k1")
K2 = Attributes(key="k2")

#: Backends whose ledgers keep rate limits (each registered scheme joins when it does).
LIMIT_BACKENDS: dict[str, Callable[[Path], str]] = {
    name: BACKEND_URLS[name] for name in ("memory", "sqlite", "postgresql", "redis")
}


def limit(**config: Any) -> Limit:
    return Limit.from_config(config)


class Maker:
    def __init__(self, url: str, another: Callable[[str], str] | None = None) -> None:
        self.url = url
        self.opened: list[Ledger] = []
        self._another = another
        self.others: list[str] = []

    def another(self, name: str) -> str:
        """The URL of another ledger of the same backend (a file, schema or key prefix of its own)."""
        assert self._another is not None
        url = self._another(name)
        self.others.append(url)
        return url

    def __call__(
        self, limits: Iterable[Limit] = (), budgets: Iterable[Budget] = (), clock: ManualClock | None = None
    ) -> Ledger:
        ledger = open_ledger(self.url, budgets, clock=clock or ManualClock(T0))
        for each in limits:
            ledger.put_limit(each)
        self.opened.append(ledger)
        return ledger


@pytest.fixture(params=sorted(LIMIT_BACKENDS))
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Maker]:
    build = LIMIT_BACKENDS[request.param]

    def another(name: str) -> str:
        (tmp_path / name).mkdir()
        return build(tmp_path / name)

    maker = Maker(build(tmp_path), another)
    yield maker
    for ledger in maker.opened:
        ledger.close()
    for url in (maker.url, *maker.others):
        drop_test_data(url)


FREE = Money(0)


def reserve(
    ledger: Ledger, rid: str, attrs: Attributes = K1, cost: Money = FREE, **demand: int
) -> Reservation | Refusal | LimitRefusal:
    return ledger.reserve(rid, attrs, cost, LEASE, demand=Demand(cost=cost.nanos, **demand))


def test_requests_per_window_exact_boundaries(make: Maker) -> None:
    clock = ManualClock(T0)
    ledger = make([limit(selector={"key": "*"}, requests=3, per="10s")], clock=clock)
    for i in range(3):
        assert reserve(ledger, f"r{i}").admitted
        ledger.settle(f"r{i}", Money(0))
    refused = reserve(ledger, "r3")
    assert isinstance(refused, LimitRefusal)
    assert refused.used == 3 and refused.requested == 1
    # The first bucket leaves the window one bucket after 10 s: that is the time to retry.
    bucket = timedelta(seconds=10) / BUCKETS
    assert refused.retry_after == pytest.approx((timedelta(seconds=10) + bucket).total_seconds())
    error = refused.to_error()
    assert isinstance(error, RateLimitExceededError) and error.remaining == 0
    assert 'limit "key=k1: 3 requests per 10s"' in str(error)
    clock.advance(timedelta(seconds=10) + bucket - timedelta(microseconds=1))
    assert not reserve(ledger, "r4").admitted
    clock.advance(timedelta(microseconds=1))
    assert reserve(ledger, "r5").admitted
    # Another key has its own count.
    assert reserve(ledger, "other", K2).admitted


def test_tokens_reserve_the_worst_case_and_give_back_the_rest(make: Maker) -> None:
    ledger = make([limit(selector={"key": "*"}, tokens=2000, per="1m")])
    assert reserve(ledger, "a", input_tokens=500, output_tokens=1000).admitted
    refused = reserve(ledger, "b", input_tokens=100, output_tokens=500)
    assert isinstance(refused, LimitRefusal) and refused.used == 1500 and refused.requested == 600
    ledger.settle("a", Money(0), used=Demand(input_tokens=480, output_tokens=20))
    assert ledger.limit_usage("key=*/tokens/1m", {"key": "k1"}).used == 500
    assert reserve(ledger, "b", input_tokens=100, output_tokens=500).admitted
    assert ledger.limit_usage("key=*/tokens/1m", {"key": "k1"}).used == 1100


def test_input_and_output_token_limits_count_their_own_side(make: Maker) -> None:
    ledger = make([limit(input_tokens=1000, per="1m"), limit(output_tokens=100, per="1m")])
    assert reserve(ledger, "a", input_tokens=900, output_tokens=50).admitted
    out = reserve(ledger, "b", input_tokens=10, output_tokens=60)
    assert isinstance(out, LimitRefusal) and out.limit.kind == "output_tokens"
    inp = reserve(ledger, "c", input_tokens=200, output_tokens=1)
    assert isinstance(inp, LimitRefusal) and inp.limit.kind == "input_tokens"


def test_a_settle_above_the_reservation_is_counted(make: Maker) -> None:
    ledger = make([limit(tokens=1000, per="1m")])
    assert reserve(ledger, "a", input_tokens=100, output_tokens=100).admitted
    ledger.settle("a", Money(0), used=Demand(input_tokens=100, output_tokens=700))
    assert ledger.limit_usage("global/tokens/1m").used == 800


def test_usd_per_window(make: Maker) -> None:
    ledger = make([limit(selector={"key": "*"}, usd="1.00", per="1h")])
    assert reserve(ledger, "a", cost=Money.parse("0.75")).admitted
    assert not reserve(ledger, "b", cost=Money.parse("0.50")).admitted
    ledger.settle("a", Money.parse("0.25"))  # no use reported: cost is the settle amount
    assert ledger.limit_usage("key=*/usd/1h", "key=k1").used == Money.parse("0.25").nanos
    assert reserve(ledger, "b", cost=Money.parse("0.50")).admitted


@pytest.mark.parametrize("ending", ["settle", "release", "expire"])
def test_concurrency_is_released_on_every_ending(make: Maker, ending: str) -> None:
    clock = ManualClock(T0)
    ledger = make([limit(selector={"key": "*"}, concurrency=2)], clock=clock)
    assert reserve(ledger, "a").admitted
    assert reserve(ledger, "b").admitted
    refused = reserve(ledger, "c")
    assert isinstance(refused, LimitRefusal) and refused.used == 2 and refused.retry_after == 0.0
    if ending == "settle":
        ledger.settle("a", Money(0))
    elif ending == "release":
        ledger.release("a")
    else:
        clock.advance(LEASE + timedelta(seconds=1))
        assert ledger.expire_leases() == 2
    assert ledger.limit_usage("key=*/concurrency", "key=k1").used == (1 if ending != "expire" else 0)
    assert reserve(ledger, "c").admitted


def test_release_gives_back_tokens_and_cost_but_the_request_was_made(make: Maker) -> None:
    ledger = make([limit(requests=5, per="1m"), limit(tokens=1000, per="1m"), limit(usd="1", per="1m")])
    assert reserve(ledger, "a", cost=Money.parse("0.5"), input_tokens=300, output_tokens=300).admitted
    ledger.release("a")
    assert ledger.limit_usage("global/requests/1m").used == 1
    assert ledger.limit_usage("global/tokens/1m").used == 0
    assert ledger.limit_usage("global/usd/1m").used == 0


def test_an_expired_lease_keeps_its_worst_case_counted(make: Maker) -> None:
    clock = ManualClock(T0)
    ledger = make([limit(tokens=1000, per="1h")], clock=clock)
    assert reserve(ledger, "a", input_tokens=300, output_tokens=300).admitted
    clock.advance(LEASE + timedelta(seconds=1))
    assert ledger.expire_leases() == 1
    assert ledger.limit_usage("global/tokens/1h").used == 600


def test_budgets_and_limits_are_taken_together_or_not_at_all(make: Maker) -> None:
    budget = Budget.from_config({"id": "b", "selector": {"key": "*"}, "limit": "1"})
    ledger = make([limit(selector={"key": "*"}, requests=1, per="1m")], [budget])
    # The budget refuses: the limit is not taken.
    refused = reserve(ledger, "big", cost=Money.parse("2"))
    assert isinstance(refused, Refusal)
    assert ledger.limit_usage("key=*/requests/1m", "key=k1").used == 0
    assert reserve(ledger, "a", cost=Money.parse("0.5")).admitted
    # The limit refuses: the budget is not reserved.
    assert isinstance(reserve(ledger, "b", cost=Money.parse("0.1")), LimitRefusal)
    usage = ledger.usage("b", {"key": "k1"})
    assert usage.reserved == Money.parse("0.5")


def test_prompt_size_is_refused_whatever_the_window(make: Maker) -> None:
    ledger = make([limit(selector={"user": "*"}, prompt_tokens=1000)])
    alice = Attributes(user="alice")
    assert reserve(ledger, "a", alice, input_tokens=1000).admitted
    refused = reserve(ledger, "b", alice, input_tokens=1001)
    assert isinstance(refused, LimitRefusal) and refused.retry_after is None
    error = refused.to_error()
    assert isinstance(error, PromptTooLargeError)
    assert "1,001 prompt tokens" in str(error) and "1,000 prompt tokens" in str(error)
    assert reserve(ledger, "c", Attributes(), input_tokens=10**6).admitted  # no user: not selected


def test_a_request_larger_than_the_limit_never_fits(make: Maker) -> None:
    ledger = make([limit(tokens=100, per="1m")])
    refused = reserve(ledger, "a", input_tokens=80, output_tokens=80)
    assert isinstance(refused, LimitRefusal) and refused.retry_after is None
    assert "larger than the limit on its own" in str(refused.to_error())


def test_limits_administration(make: Maker) -> None:
    ledger = make([limit(id="rpm", selector={"key": "*"}, requests=2, per="1m")])
    assert [each.id for each in ledger.limits()] == ["rpm"]
    assert reserve(ledger, "a").admitted
    # Raising the amount keeps what the window holds.
    ledger.put_limit(limit(id="rpm", selector={"key": "*"}, requests=3, per="1m"))
    assert ledger.limit_usage("rpm", "key=k1").used == 1
    assert ledger.get_limit("rpm").amount == 3
    rows = {(u.limit.id, u.instance): u.used for u in ledger.list_limits()}
    assert rows == {("rpm", "key=k1"): 1}
    assert ledger.remove_limit("rpm") is True
    assert ledger.remove_limit("rpm") is False
    assert ledger.limits() == []
    for i in range(10):
        assert reserve(ledger, f"free{i}").admitted


def test_a_paced_budget_admits_its_share_of_the_window(make: Maker) -> None:
    clock = ManualClock(datetime(2026, 11, 1, tzinfo=UTC))  # a 30-day month: one step a day
    budget = Budget.from_config({"id": "m", "limit": "300", "window": "month", "pace": "even"})
    ledger = make([], [budget], clock=clock)
    spent = 0
    for i in range(20):
        result = reserve(ledger, f"d1-{i}", Attributes(), Money.parse("1"))
        if result.admitted:
            ledger.settle(f"d1-{i}", Money.parse("1"))
            spent += 1
    assert spent == 10  # 1/30 of 300 on day one
    refused = reserve(ledger, "late", Attributes(), Money.parse("1"))
    assert isinstance(refused, Refusal)
    assert refused.retry_after == pytest.approx(86400.0)  # the next step begins tomorrow
    assert "paced" in str(refused.to_error())
    # Day 2 adds its share; by the last day, the whole limit.
    clock.advance(timedelta(days=1))
    assert reserve(ledger, "d2", Attributes(), Money.parse("10")).admitted
    clock.set(datetime(2026, 11, 30, 1, tzinfo=UTC))
    assert reserve(ledger, "last", Attributes(), Money.parse("280")).admitted


def test_without_demand_a_reservation_is_one_request_of_its_estimate(make: Maker) -> None:
    ledger = make([limit(requests=1, per="1m"), limit(usd="1", per="1m")])
    assert ledger.reserve("a", K1, Money.parse("0.6"), LEASE).admitted
    assert ledger.limit_usage("global/usd/1m").used == Money.parse("0.6").nanos
    assert isinstance(ledger.reserve("b", K1, Money(0), LEASE), LimitRefusal)


# -- counts that started over ------------------------------------------------------------------


def test_an_ending_gives_nothing_back_to_counts_that_started_over(make: Maker) -> None:
    """A limit removed and added again, or given another window, counts from zero; requests
    reserved before end without touching the new counts."""
    ledger = make([limit(id="t", tokens=1000, per="1m"), limit(id="c", concurrency=1)])
    assert reserve(ledger, "old", input_tokens=600).admitted
    ledger.put_limit(limit(id="t", tokens=1000, per="2m"))
    assert ledger.remove_limit("c")
    ledger.put_limit(limit(id="c", concurrency=1))
    assert ledger.limit_usage("t").used == 0
    assert reserve(ledger, "new", input_tokens=300).admitted
    ledger.settle("old", Money(0), used=Demand(input_tokens=1))
    assert ledger.limit_usage("t").used == 300
    assert ledger.limit_usage("c").used == 1
    assert isinstance(reserve(ledger, "third"), LimitRefusal)


def test_a_retried_reserve_takes_nothing_twice(make: Maker) -> None:
    ledger = make([limit(requests=5, per="1m"), limit(concurrency=5)])
    first = reserve(ledger, "a", input_tokens=10)
    again = reserve(ledger, "a", input_tokens=10)
    assert first.admitted and again == first
    assert ledger.limit_usage("global/requests/1m").used == 1
    assert ledger.limit_usage("global/concurrency").used == 1


# -- the asyncio calls: the same answers -------------------------------------------------------

CALLS = ["blocking", "asyncio"]
NOTHING = Money(0)
Outcome = tuple[Any, ...]


class Calls:
    """One ledger driven through its blocking calls, or through its asyncio ones (SQLite: the
    event loop's group commit)."""

    def __init__(self, ledger: Ledger, calls: str) -> None:
        self.ledger, self.aio = ledger, calls == "asyncio"

    async def reserve(
        self, rid: str, attrs: Attributes = K1, cost: Money = NOTHING, **demand: int
    ) -> Reservation | Refusal | LimitRefusal:
        wanted = Demand(cost=cost.nanos, **demand)
        if self.aio:
            return await self.ledger.areserve(rid, attrs, cost, LEASE, demand=wanted)
        return self.ledger.reserve(rid, attrs, cost, LEASE, demand=wanted)

    async def settle(self, rid: str, actual: Money = NOTHING, used: Demand | None = None) -> str:
        if self.aio:
            return (await self.ledger.asettle(rid, actual, used=used)).status
        return self.ledger.settle(rid, actual, used=used).status

    async def release(self, rid: str) -> str:
        if self.aio:
            return (await self.ledger.arelease(rid)).status
        return self.ledger.release(rid).status


def outcome(result: Reservation | Refusal | LimitRefusal) -> Outcome:
    """What a reserve answered, comparable across backends and calls."""
    if isinstance(result, Reservation):
        return ("admitted", result.estimate.nanos, len(result.lines))
    if isinstance(result, LimitRefusal):
        return ("limit", result.limit.id, result.instance, result.used, result.requested, result.retry_after)
    return ("budget", result.budget_id, result.paced, result.limit.nanos, result.retry_after)


def drive(scenario: Any, calls: Calls) -> list[Outcome]:
    async def bounded() -> list[Outcome]:
        result: list[Outcome] = await asyncio.wait_for(scenario(calls), timeout=30)
        return result

    return asyncio.run(bounded())


async def tokens_usd_and_endings(calls: Calls) -> list[Outcome]:
    ledger = calls.ledger
    said: list[Outcome] = []

    def used(limit_id: str) -> None:
        said.append(("used", limit_id, ledger.limit_usage(limit_id).used))

    half, tenth, fifth = Money.parse("0.5"), Money.parse("0.1"), Money.parse("0.2")
    said.append(outcome(await calls.reserve("a", cost=half, input_tokens=500, output_tokens=500)))
    said.append(outcome(await calls.reserve("b", cost=tenth, input_tokens=100, output_tokens=500)))
    said.append(("settled", await calls.settle("a", fifth, Demand(input_tokens=480, output_tokens=20))))
    used("global/tokens/1m")
    used("global/usd/1m")
    said.append(outcome(await calls.reserve("b", cost=tenth, input_tokens=100, output_tokens=500)))
    said.append(("released", await calls.release("b")))
    for limit_id in ("global/tokens/1m", "global/usd/1m", "global/requests/1m"):
        used(limit_id)
    said.append(outcome(await calls.reserve("c", input_tokens=100, output_tokens=100)))
    said.append(("settled", await calls.settle("c", Money(0), Demand(input_tokens=100, output_tokens=900))))
    used("global/tokens/1m")
    said.append(outcome(await calls.reserve("d")))
    said.append(("again", await calls.settle("a", fifth)))
    return said


@pytest.mark.parametrize("calls", CALLS)
def test_limits_through_blocking_and_asyncio_calls(make: Maker, calls: str) -> None:
    limits = [limit(requests=3, per="1m"), limit(tokens=1500, per="1m"), limit(usd="1", per="1m")]
    said = drive(tokens_usd_and_endings, Calls(make(limits), calls))
    assert said == [
        ("admitted", Money.parse("0.5").nanos, 0),
        ("limit", "global/tokens/1m", "", 1000, 600, pytest.approx(63.0)),
        ("settled", "settled"),
        ("used", "global/tokens/1m", 500),
        ("used", "global/usd/1m", Money.parse("0.2").nanos),
        ("admitted", Money.parse("0.1").nanos, 0),
        ("released", "released"),
        ("used", "global/tokens/1m", 500),
        ("used", "global/usd/1m", Money.parse("0.2").nanos),
        ("used", "global/requests/1m", 2),
        ("admitted", 0, 0),
        ("settled", "settled"),
        ("used", "global/tokens/1m", 1500),
        ("limit", "global/requests/1m", "", 3, 1, pytest.approx(63.0)),
        ("again", "already_settled"),
    ]


async def concurrency_and_budgets(calls: Calls) -> list[Outcome]:
    ledger = calls.ledger
    said = [outcome(await calls.reserve(f"r{i}", cost=Money.parse("0.25"))) for i in range(3)]
    said.append(("in flight", ledger.limit_usage("key=*/concurrency", "key=k1").used))
    said.append(("released", await calls.release("r0")))
    said.append(("settled", await calls.settle("r1", Money.parse("0.25"))))
    said.append(("in flight", ledger.limit_usage("key=*/concurrency", "key=k1").used))
    said.append(outcome(await calls.reserve("big", cost=Money.parse("0.8"))))  # the budget refuses
    said.append(("in flight", ledger.limit_usage("key=*/concurrency", "key=k1").used))
    said.append(outcome(await calls.reserve("r3", cost=Money.parse("0.25"))))
    said.append(outcome(await calls.reserve("r4", cost=Money.parse("0.25"))))
    # The budget would fit it: the limit refuses.
    said.append(outcome(await calls.reserve("r5", cost=Money.parse("0.25"))))
    usage = ledger.usage("b", {"key": "k1"})
    said.append(("budget", usage.spent.nanos, usage.reserved.nanos))
    return said


@pytest.mark.parametrize("calls", CALLS)
def test_concurrency_and_budgets_through_blocking_and_asyncio_calls(make: Maker, calls: str) -> None:
    budget = Budget.from_config({"id": "b", "selector": {"key": "*"}, "limit": "1"})
    ledger = make([limit(selector={"key": "*"}, concurrency=2)], [budget])
    said = drive(concurrency_and_budgets, Calls(ledger, calls))
    quarter = Money.parse("0.25").nanos
    assert said == [
        ("admitted", quarter, 1),
        ("admitted", quarter, 1),
        ("limit", "key=*/concurrency", "key=k1", 2, 1, 0.0),
        ("in flight", 2),
        ("released", "released"),
        ("settled", "settled"),
        ("in flight", 0),
        ("budget", "b", False, Money.parse("1").nanos, None),
        ("in flight", 0),
        ("admitted", quarter, 1),
        ("admitted", quarter, 1),
        ("limit", "key=*/concurrency", "key=k1", 2, 1, 0.0),
        ("budget", quarter, 2 * quarter),
    ]


async def paced(calls: Calls) -> list[Outcome]:
    clock = calls.ledger.clock
    assert isinstance(clock, ManualClock)
    said = [outcome(await calls.reserve(f"d1-{i}", Attributes(), Money.parse("4"))) for i in range(3)]
    clock.advance(timedelta(days=1))
    said.append(outcome(await calls.reserve("d2", Attributes(), Money.parse("2"))))
    said.append(outcome(await calls.reserve("d2b", Attributes(), Money.parse("11"))))
    return said


@pytest.mark.parametrize("calls", CALLS)
def test_a_paced_budget_through_blocking_and_asyncio_calls(make: Maker, calls: str) -> None:
    clock = ManualClock(datetime(2026, 11, 1, tzinfo=UTC))  # 30 days: one step a day, 10 a step
    budget = Budget.from_config({"id": "m", "limit": "300", "window": "month", "pace": "even"})
    said = drive(paced, Calls(make([], [budget], clock=clock), calls))
    four, ten = Money.parse("4").nanos, Money.parse("10").nanos
    assert said == [
        ("admitted", four, 1),
        ("admitted", four, 1),
        ("budget", "m", True, ten, pytest.approx(86400.0)),
        ("admitted", Money.parse("2").nanos, 1),
        ("budget", "m", True, 2 * ten, pytest.approx(86400.0)),
    ]


def test_reserves_made_at_once_take_exactly_the_limit(make: Maker) -> None:
    """50 asyncio reserves in one go (SQLite: one or a few group-commit batches, in which each
    refused reserve undoes its own budget hold): exactly the limit's amount is admitted."""
    budget = Budget.from_config({"id": "b", "limit": "100"})
    ledger = make([limit(requests=7, per="1m"), limit(concurrency=9)], [budget])

    async def body() -> list[Reservation | Refusal | LimitRefusal]:
        return await asyncio.gather(
            *(ledger.areserve(f"r{i}", K1, USD, LEASE, demand=Demand(cost=USD.nanos)) for i in range(50))
        )

    results = asyncio.run(asyncio.wait_for(body(), 30))
    assert sum(result.admitted for result in results) == 7
    refusals = [result for result in results if isinstance(result, LimitRefusal)]
    assert len(refusals) == 43 and {(r.limit.kind, r.used) for r in refusals} == {("requests", 7)}
    assert ledger.usage("b").reserved == Money(7 * USD.nanos)
    assert ledger.limit_usage("global/concurrency").used == 7


def test_blocking_and_asyncio_calls_agree_on_every_backend(make: Maker) -> None:
    limits = [limit(requests=3, per="1m"), limit(tokens=1500, per="1m"), limit(usd="1", per="1m")]
    said = []
    for calls in CALLS:
        own = Maker(make.another(calls))  # a ledger each
        make.opened.append(ledger := own(limits))
        said.append(drive(tokens_usd_and_endings, Calls(ledger, calls)))
    assert said[0] == said[1]
