"""The Guard's lifecycle on the memory ledger: raise, wait (fair, bounded, cancellable), clamp, settle, release."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spendgate.attribution import attribute
from spendgate.clock import ManualClock
from spendgate.errors import BudgetExceededError, ConfigError
from spendgate.guard import Guard
from spendgate.lifecycle import Happened, Report
from spendgate.money import Money
from spendgate.usage import Usage

BODY: dict[str, Any] = {
    "model": "gpt-4",
    "messages": [{"role": "user", "content": "hello world"}],
    "max_tokens": 100,
}
ONE = Money(6_270_000)  # the estimate of BODY: 9 prompt tokens x $30/1M + 100 x $60/1M


def make_guard(limit: Money, **options: Any) -> Guard:
    clock = ManualClock("2026-11-28T12:00:00Z")
    budget = {"id": "team", "selector": {"team": "a"}, "limit": str(limit.to_decimal()), "window": "day"}
    options.setdefault("poll_interval", 60.0)  # wake-ups come from ledger events and poke(), not time
    return Guard("memory://", budgets=[budget], clock=clock, **options)


def until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Bounded poll for another thread's progress (never a fixed sleep)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def test_admit_sets_the_cap_and_settles_exactly() -> None:
    guard = make_guard(Money.usd("1"))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    with attribute(team="a", user="alice"):
        adm = guard.admit("chat", body)
    assert "max_completion_tokens" not in body  # the caller's dict is never changed
    assert adm.request["max_completion_tokens"] == 16384  # reserved for the model's max output: capped at it
    assert adm.attributes.user == "alice" and adm.attributes.model == "gpt-4o"
    assert guard.ledger.usage("team").reserved == adm.reserved
    cost = guard.settle(adm, Usage(input_tokens=10, output_tokens=20))
    assert cost.total == Money(225_000)  # 10*2.5 + 20*10 per 1M
    guard.settle(adm, Usage(input_tokens=10, output_tokens=20))  # a retry changes nothing
    usage = guard.ledger.usage("team")
    assert (usage.spent, usage.reserved) == (Money(225_000), Money(0))
    assert guard.ledger.query_requests()[0].cost == Money(225_000)


def test_stream_asks_for_usage_once() -> None:
    guard = make_guard(Money.usd("1"))
    adm = guard.admit("chat", {**BODY, "stream": True}, attributes={"team": "a"})
    assert adm.request["stream_options"] == {"include_usage": True} and adm.added_stream_usage
    asked = guard.admit("chat", {**BODY, "stream": True, "stream_options": {"include_usage": True}})
    assert not asked.added_stream_usage


def test_release_frees_the_reservation() -> None:
    guard = make_guard(ONE)
    adm = guard.admit("chat", BODY, attributes={"team": "a"})
    with pytest.raises(BudgetExceededError):
        guard.admit("chat", BODY, attributes={"team": "a"})
    guard.release(adm, "upstream 500")
    guard.release(adm, "again")  # idempotent
    assert guard.ledger.usage("team").reserved == Money(0)
    guard.admit("chat", BODY, attributes={"team": "a"})


def test_raise_names_the_budget() -> None:
    guard = make_guard(ONE)
    guard.admit("chat", BODY, attributes={"team": "a"})
    with pytest.raises(BudgetExceededError) as info:
        guard.admit("chat", BODY, attributes={"team": "a"})
    err = info.value
    assert str(err).startswith("Cost tracking budget exceeded: current usage 100% of limit 0.00627 USD")
    assert 'budget "team=a, daily"' in str(err)
    assert "this request needs up to 0.00627 USD; resets 2026-11-29T00:00:00Z" in str(err)
    assert err.retry_after == 12 * 3600
    assert err.budget_id == "team"


def test_clamp_lowers_max_tokens_to_what_is_left() -> None:
    guard = make_guard(ONE + Money(600_000), on_exceed="clamp", min_output_tokens=5)
    guard.admit("chat", BODY, attributes={"team": "a"})
    adm = guard.admit("chat", BODY, attributes={"team": "a"})
    # $0.0006 left: (600000e-9 - 9*30e-6) / 60e-6 = 5.5 -> 5 tokens
    assert adm.clamped_to == 5 and adm.request["max_tokens"] == 5
    assert guard.ledger.usage("team").available == Money(600_000 - adm.reserved.nanos)
    with pytest.raises(BudgetExceededError):  # nothing worth min_output_tokens is left
        guard.admit("chat", BODY, attributes={"team": "a"})


def test_a_request_that_can_never_fit_does_not_wait() -> None:
    guard = make_guard(Money(1000), on_exceed="wait")
    started = time.monotonic()
    with pytest.raises(BudgetExceededError):
        guard.admit("chat", BODY, attributes={"team": "a"})
    assert time.monotonic() - started < 5
    assert guard.waiting() == 0


def test_wait_serves_threads_in_arrival_order() -> None:
    guard = make_guard(ONE, on_exceed="wait", max_wait=600)
    guard.admit("chat", BODY, attributes={"team": "a"})  # the budget is now full
    admitted: list[int] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        guard.admit("chat", BODY, attributes={"team": "a"}, request_id=f"r{i}")
        with lock:
            admitted.append(i)

    threads = []
    for i in range(20):
        t = threading.Thread(target=caller, args=(i,), daemon=True)
        t.start()
        threads.append(t)
        until(lambda i=i: guard.waiting() == i + 1, f"caller {i} to queue")  # type: ignore[misc]
    limit = ONE
    for served in range(1, 21):
        limit = limit + ONE
        guard.ledger.set_limit("team", limit)  # room for exactly one more: the head of the line
        until(lambda served=served: len(admitted) == served, f"{served} admitted")  # type: ignore[misc]
        assert guard.waiting() == 20 - served
    assert admitted == list(range(20))
    for t in threads:
        t.join(10)
    usage = guard.ledger.usage("team")
    assert usage.spent + usage.reserved <= usage.limit


def test_wait_gives_up_at_max_wait_and_holds_nothing() -> None:
    guard = make_guard(ONE, on_exceed="wait", max_wait=30)
    guard.admit("chat", BODY, attributes={"team": "a"})
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            guard.admit("chat", BODY, attributes={"team": "a"})
        except BudgetExceededError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    until(lambda: guard.waiting() == 3, "3 waiters")
    guard.clock.advance(29)  # type: ignore[attr-defined]
    guard.poke()
    time.sleep(0.05)  # give woken waiters a chance to (wrongly) give up early
    assert guard.waiting() == 3 and not errors
    guard.clock.advance(2)  # type: ignore[attr-defined]
    guard.poke()
    until(lambda: len(errors) == 3, "all three to give up")
    assert guard.waiting() == 0
    assert guard.ledger.usage("team").reserved == ONE  # only the first request's reservation


def test_window_reset_admits_a_waiter() -> None:
    guard = make_guard(ONE, on_exceed="wait", max_wait=24 * 3600)
    first = guard.admit("chat", BODY, attributes={"team": "a"})
    guard.settle(first, Usage(input_tokens=9, output_tokens=100))
    done = threading.Event()

    def caller() -> None:
        guard.admit("chat", BODY, attributes={"team": "a"})
        done.set()

    t = threading.Thread(target=caller, daemon=True)
    t.start()
    until(lambda: guard.waiting() == 1, "the waiter")
    guard.clock.set("2026-11-29T00:00:01Z")  # type: ignore[attr-defined]
    guard.poke()
    assert done.wait(10)


def test_async_waiters_in_order_and_cancellation_holds_nothing() -> None:
    async def scenario() -> list[int]:
        guard = make_guard(ONE, on_exceed="wait", max_wait=600)
        await guard.admit_async("chat", BODY, attributes={"team": "a"})
        order: list[int] = []

        async def caller(i: int) -> None:
            await guard.admit_async("chat", BODY, attributes={"team": "a"}, request_id=f"a{i}")
            order.append(i)

        tasks = []
        for i in range(20):
            tasks.append(asyncio.create_task(caller(i)))
            for _ in range(100):
                await asyncio.sleep(0)
                if guard.waiting() == i + 1:
                    break
        assert guard.waiting() == 20
        tasks[5].cancel()  # a cancelled waiter leaves its line and reserves nothing
        await asyncio.gather(tasks[5], return_exceptions=True)
        assert guard.waiting() == 19
        guard.ledger.set_limit("team", ONE * 21)
        await asyncio.wait_for(asyncio.gather(*(t for i, t in enumerate(tasks) if i != 5)), 10)
        usage = guard.ledger.usage("team")
        assert usage.reserved == ONE * 20  # the first plus 19 waiters; none for the cancelled one
        return order

    order = asyncio.run(scenario())
    assert order == [i for i in range(20) if i != 5]


def test_newcomers_do_not_overtake_waiters() -> None:
    guard = make_guard(ONE, on_exceed="wait", max_wait=600)
    guard.admit("chat", BODY, attributes={"team": "a"})
    granted: list[str] = []
    reserve = guard.ledger.reserve

    def recording_reserve(request_id: str, *args: Any, **kwargs: Any) -> Any:
        result = reserve(request_id, *args, **kwargs)
        if result.admitted:
            granted.append(request_id)  # in the admitting thread, before the line moves on
        return result

    guard.ledger.reserve = recording_reserve  # type: ignore[method-assign]
    first = threading.Thread(
        target=lambda: guard.admit("chat", BODY, attributes={"team": "a"}, request_id="first"), daemon=True
    )
    first.start()
    until(lambda: guard.waiting() == 1, "first waiter")
    small = {**BODY, "max_tokens": 1}  # 9*30 + 1*60 per 1M = $0.00033: fits before `first` would
    second = threading.Thread(
        target=lambda: guard.admit("chat", small, attributes={"team": "a"}, request_id="second"), daemon=True
    )
    second.start()
    until(lambda: guard.waiting() == 2, "second waiter")
    guard.ledger.set_limit("team", ONE + ONE + Money(330_000))
    until(lambda: len(granted) == 2, "both admitted")
    assert granted == ["first", "second"]


def test_structured_log(caplog: pytest.LogCaptureFixture) -> None:
    guard = make_guard(Money.usd("1"))
    with caplog.at_level(logging.INFO, logger="spendgate.requests"):
        adm = guard.admit("chat", BODY, attributes={"team": "a", "user": "bob"})
        guard.settle(adm, Usage(input_tokens=9, output_tokens=50))
    record = next(r for r in caplog.records if hasattr(r, "spendgate"))
    fields = record.spendgate
    assert fields["request_id"] == adm.request_id
    assert fields["attributes"] == {"team": "a", "user": "bob", "model": "gpt-4"}
    assert fields["cost_usd"]["total"] == "0.00327"  # 9*30 + 50*60 per 1M
    assert fields["tokens"] == {"input_tokens": 9, "output_tokens": 50}
    assert fields["budget_remaining_usd"] == "0.99673"  # from the settle's own transaction
    assert fields["decision"] == "ok" and fields["action"] == "settle"


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match="on_exceed"):
        Guard("memory://", on_exceed="explode")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_wait"):
        Guard("memory://", max_wait=-1)
    with pytest.raises(ConfigError, match=r"budgets\[0\]\.limit"):
        Guard("memory://", budgets=[{"id": "x", "limit": "-5"}])


@pytest.mark.parametrize("ledger", ["memory", "sqlite"])
def test_async_admit_and_settle_through_the_ledgers_async_calls(ledger: str, tmp_path: Path) -> None:
    url = "memory://" if ledger == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"
    clock = ManualClock("2026-11-28T12:00:00Z")
    budget = {"id": "team", "selector": {"team": "a"}, "limit": str((ONE * 3).to_decimal()), "window": "day"}
    guard = Guard(url, budgets=[budget], clock=clock)

    async def scenario() -> list[Any]:
        with attribute(team="a"):
            admissions = await asyncio.gather(
                *(guard.admit_async("chat", BODY) for _ in range(3)), return_exceptions=True
            )
            refused = await asyncio.gather(guard.admit_async("chat", BODY), return_exceptions=True)
        adm = admissions[0]
        assert not isinstance(adm, BaseException)
        cost = await guard.settle_async(adm, Usage(input_tokens=9, output_tokens=10))
        assert adm.ended == "settled" and adm.outcome is not None
        # What the budget has left after this settle, read by the settle itself.
        assert adm.outcome.remaining == ONE * 3 - cost.total - ONE * 2
        again = await guard.settle_async(adm, Usage(input_tokens=9, output_tokens=10))
        assert again == cost  # idempotent: the second call changes nothing
        return [*admissions, *refused]

    results = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert isinstance(results[-1], BudgetExceededError)
    assert guard.ledger.usage("team", {"team": "a"}).reserved == ONE * 2
    guard.close()


def test_async_endings_land_even_when_their_caller_is_cancelled(tmp_path: Path) -> None:
    clock = ManualClock("2026-11-28T12:00:00Z")
    budget = {"id": "team", "selector": {"team": "a"}, "limit": "10", "window": "day"}
    guard = Guard(f"sqlite:///{tmp_path / 'spend.db'}", budgets=[budget], clock=clock)

    async def scenario() -> list[Any]:
        with attribute(team="a"):
            adms = [await guard.admit_async("chat", BODY) for _ in range(4)]
        endings = [
            guard.settle_async(adms[0], Usage(input_tokens=9, output_tokens=10)),
            guard.aend(adms[1], Report(Happened.CLOSED)),
            guard.settle_reserved_async(adms[2], "no usage in the test"),
            guard.release_async(adms[3], "test"),
        ]
        tasks = [asyncio.ensure_future(e) for e in endings]
        await asyncio.sleep(0)  # each ran up to its first suspension: its write is queued
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        for _ in range(100):  # bounded: let the queued batch run
            await asyncio.sleep(0)
        return adms

    adms = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [a.ended for a in adms] == ["settled", "settled", "settled", "released"]
    ledger = guard.ledger
    assert ledger.open_reservations() == 0  # type: ignore[attr-defined]
    records = {r.request_id: r for r in ledger.query_requests()}
    assert {records[a.request_id].status for a in adms[:3]} == {"ok", "closed", "unread"}
    assert adms[3].request_id not in records  # released: nothing charged
    assert records[adms[2].request_id].cost == ONE  # the whole reservation
    usage = ledger.usage("team", {"team": "a"})
    assert usage.reserved == Money(0)
    assert usage.spent == sum((records[a.request_id].cost for a in adms[:3]), Money(0))
    guard.close()


def test_an_async_ending_the_ledger_refuses_leaves_the_admission_open(tmp_path: Path) -> None:
    guard = make_guard(Money.usd("1"))

    async def scenario() -> None:
        with attribute(team="a"):
            adm = await guard.admit_async("chat", BODY)
        guard.ledger.release(adm.request_id)  # ended behind the guard's back
        guard.ledger.purge()
        adm.request_id = "sg-unknown"
        with pytest.raises(KeyError):
            await guard.settle_async(adm, Usage(input_tokens=9, output_tokens=10))
        assert adm.ended is None  # not ended: the caller may still release it (or the lease ends it)

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("ledger", ["memory", "sqlite"])
def test_async_clamp_and_wait_go_through_the_async_ledger(ledger: str, tmp_path: Path) -> None:
    url = "memory://" if ledger == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"
    clock = ManualClock("2026-11-28T12:00:00Z")
    limit = ONE + Money(600_000)
    budget = {"id": "team", "selector": {"team": "a"}, "limit": str(limit.to_decimal()), "window": "day"}
    guard = Guard(url, budgets=[budget], clock=clock, min_output_tokens=5, poll_interval=60.0)

    async def scenario() -> None:
        with attribute(team="a"):
            first = await guard.admit_async("chat", BODY)
            clamped = await guard.admit_async("chat", BODY, on_exceed="clamp")
            assert clamped.clamped_to == 5 and clamped.request["max_tokens"] == 5
            waiting = asyncio.ensure_future(guard.admit_async("chat", BODY, on_exceed="wait"))
            for _ in range(1000):  # bounded: until it stands in line
                if guard.waiting():
                    break
                await asyncio.sleep(0)
            assert guard.waiting() == 1 and not waiting.done()
            guard.ledger.set_limit("team", limit + ONE)  # a raised limit wakes the line
            admitted = await asyncio.wait_for(waiting, 10)
            assert admitted.reserved == ONE
            for adm in (first, clamped, admitted):
                await guard.release_async(adm)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    usage = guard.ledger.usage("team", {"team": "a"})
    assert (usage.spent, usage.reserved) == (Money(0), Money(0))
    guard.close()


@pytest.mark.parametrize("happened", [Happened.COMPLETE, Happened.CUT, Happened.LOST])
def test_a_bound_charged_is_logged_with_parts_that_sum_to_it(happened: Happened) -> None:
    from decimal import Decimal

    guard = make_guard(Money.usd("1"))
    adm = guard.admit("chat", BODY, attributes={"team": "a"})
    known = Usage(input_tokens=5, output_tokens=1) if happened is Happened.CUT else None
    ended = guard.end(adm, Report(happened, known=known))
    [record] = guard.ledger.query_requests()
    parts = sum((Decimal(v) for v in record.breakdown_strings().values()), Decimal(0))
    assert record.cost == ended.charged == Money.from_femto_ceil(int(parts * 10**15))
    if known is None:
        assert ended.charged == adm.reserved  # the whole reservation
    else:
        assert ended.charged == adm.estimate.with_prompt(5) < adm.reserved


def test_a_cut_stream_of_a_request_with_server_tools_is_charged_its_whole_reservation() -> None:
    """message_start's prompt does not count a search that ran before the cut: never charge
    the known prompt alone when hosted tools may have run."""
    guard = Guard("memory://", clock=ManualClock("2026-11-28T12:00:00Z"))
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "find it"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        "stream": True,
    }
    admission = guard.admit("messages", body)
    ended = guard.end(admission, Report(Happened.CUT, known=Usage(input_tokens=12)))
    assert ended.charged == admission.reserved
    plain = guard.admit("messages", {**body, "tools": []})
    partial = guard.end(plain, Report(Happened.CUT, known=Usage(input_tokens=12)))
    assert partial.charged < plain.reserved  # without tools the known prompt is trusted
