"""Rate limits through the Guard: the worst case reserved, the use given back, wait and refuse."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from spendgate.clock import ManualClock
from spendgate.errors import PromptTooLargeError, RateLimitExceededError
from spendgate.guard import Guard
from spendgate.lifecycle import Happened, Report
from spendgate.money import Money
from spendgate.usage import Usage
from test_guard import until

#: 9 prompt tokens (gpt-4, exact) and 100 output tokens at most.
BODY: dict[str, Any] = {
    "model": "gpt-4",
    "messages": [{"role": "user", "content": "hello world"}],
    "max_tokens": 100,
}
PROMPT = 9


def make_guard(*limits: dict[str, Any], ledger: str = "memory://", **options: Any) -> Guard:
    clock = ManualClock("2026-12-02T12:00:00Z")
    options.setdefault("poll_interval", 60.0)  # wake-ups come from endings and poke(), not time
    return Guard(ledger, limits=list(limits), clock=clock, **options)


@pytest.fixture(params=["memory", "sqlite"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"


def test_requests_per_window_refuse_with_retry_after(ledger_url: str) -> None:
    guard = make_guard({"requests": 2, "per": "10s"}, ledger=ledger_url)
    for _ in range(2):
        guard.settle(guard.admit("chat", BODY), Usage(input_tokens=PROMPT, output_tokens=5))
    with pytest.raises(RateLimitExceededError) as info:
        guard.admit("chat", BODY)
    assert info.value.kind == "requests" and info.value.remaining == 0
    assert info.value.retry_after == pytest.approx(10.5)
    guard.clock.advance(10.5)  # type: ignore[attr-defined]
    guard.admit("chat", BODY)


def test_tokens_reserve_the_bound_and_settle_gives_back_the_rest(ledger_url: str) -> None:
    guard = make_guard({"id": "tpm", "tokens": 250, "per": "1m"}, ledger=ledger_url)
    first = guard.admit("chat", BODY)
    assert guard.ledger.limit_usage("tpm").used == PROMPT + 100
    second = guard.admit("chat", BODY)
    with pytest.raises(RateLimitExceededError, match="218 tokens of 250 tokens used"):
        guard.admit("chat", BODY)
    guard.settle(first, Usage(input_tokens=PROMPT, output_tokens=1))
    guard.settle(second, Usage(input_tokens=PROMPT, output_tokens=1))
    assert guard.ledger.limit_usage("tpm").used == 2 * (PROMPT + 1)
    guard.admit("chat", BODY)


def test_an_ending_without_usage_keeps_the_worst_case_counted() -> None:
    guard = make_guard({"id": "tpm", "tokens": 1000, "per": "1m"})
    admission = guard.admit("chat", BODY)
    guard.end(admission, Report(Happened.LOST, detail="timeout"))  # sent, never answered
    assert guard.ledger.limit_usage("tpm").used == PROMPT + 100
    refused = guard.admit("chat", BODY)
    guard.end(refused, Report(Happened.NOT_SENT))  # released: its tokens come back
    assert guard.ledger.limit_usage("tpm").used == PROMPT + 100


def test_a_prompt_over_the_prompt_limit_is_refused_even_in_wait_mode() -> None:
    guard = make_guard({"prompt_tokens": 8}, on_exceed="wait", max_wait=600)
    with pytest.raises(PromptTooLargeError, match="9 prompt tokens"):
        guard.admit("chat", BODY)
    assert guard.waiting() == 0


def test_wait_mode_holds_a_request_until_the_window_has_room() -> None:
    guard = make_guard({"requests": 1, "per": "10s", "on_exceed": "wait"}, max_wait=600)
    guard.admit("chat", BODY)
    admitted: list[str] = []

    def caller() -> None:
        admitted.append(guard.admit("chat", BODY).request_id)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    until(lambda: guard.waiting() == 1, "the caller to wait")
    guard.clock.advance(5)  # type: ignore[attr-defined]
    guard.poke()
    until(lambda: guard.waiting() == 1, "the caller to look again")
    assert not admitted
    guard.clock.advance(5.5)  # type: ignore[attr-defined]
    guard.poke()
    until(lambda: len(admitted) == 1, "the caller to be admitted")
    thread.join(10)


def test_wait_gives_up_at_max_wait_with_the_limit_error() -> None:
    guard = make_guard({"requests": 1, "per": "1h"}, on_exceed="wait", max_wait=30)
    guard.admit("chat", BODY)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            guard.admit("chat", BODY)
        except RateLimitExceededError as exc:
            errors.append(exc)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    until(lambda: guard.waiting() == 1, "the caller to wait")
    guard.clock.advance(31)  # type: ignore[attr-defined]
    guard.poke()
    until(lambda: bool(errors), "the caller to give up")
    thread.join(10)
    assert guard.waiting() == 0


def test_a_concurrency_waiter_goes_when_a_request_in_flight_ends() -> None:
    guard = make_guard({"selector": {"user": "*"}, "concurrency": 1, "on_exceed": "wait"}, max_wait=600)
    first = guard.admit("chat", BODY, attributes={"user": "alice"})
    guard.admit("chat", BODY, attributes={"user": "bob"})  # another user: not held up
    admitted: list[str] = []

    def caller() -> None:
        admitted.append(guard.admit("chat", BODY, attributes={"user": "alice"}).request_id)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    until(lambda: guard.waiting() == 1, "alice's second request to wait")
    guard.settle(first, Usage(input_tokens=PROMPT, output_tokens=3))  # no clock move, no poke
    until(lambda: len(admitted) == 1, "the waiter to be admitted when the first ended")
    thread.join(10)


def test_async_wait_and_cancellation_hold_nothing() -> None:
    async def scenario() -> None:
        guard = make_guard({"id": "c", "concurrency": 1, "on_exceed": "wait"}, max_wait=600)
        first = await guard.admit_async("chat", BODY)
        waiter = asyncio.create_task(guard.admit_async("chat", BODY))
        while guard.waiting() == 0:
            await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert guard.waiting() == 0
        assert guard.ledger.limit_usage("c").used == 1
        await guard.aend(first, Report(Happened.COMPLETE, usage=Usage(input_tokens=PROMPT, output_tokens=1)))
        assert guard.ledger.limit_usage("c").used == 0

    asyncio.run(scenario())


def test_usd_limit_counts_the_settled_cost() -> None:
    guard = make_guard({"id": "usd", "usd": "0.01", "per": "1h"})
    admission = guard.admit("chat", BODY)
    assert guard.ledger.limit_usage("usd").used == admission.reserved.nanos
    cost = guard.settle(admission, Usage(input_tokens=PROMPT, output_tokens=10))
    assert guard.ledger.limit_usage("usd").used == cost.total.nanos


def test_limits_and_budgets_together_from_the_guard() -> None:
    guard = Guard(
        "memory://",
        budgets=[{"id": "b", "limit": "1"}],
        limits=[{"id": "rpm", "requests": 1, "per": "1m"}],
        clock=ManualClock("2026-12-02T12:00:00Z"),
    )
    guard.admit("chat", BODY)
    with pytest.raises(RateLimitExceededError):
        guard.admit("chat", BODY)
    assert guard.ledger.usage("b").reserved == Money(6_270_000)  # the refused one reserved nothing


def test_a_newcomer_does_not_overtake_a_limit_waiter() -> None:
    guard = make_guard({"id": "rpm", "requests": 1, "per": "10s", "on_exceed": "wait"}, max_wait=600)
    guard.admit("chat", BODY)
    order: list[str] = []

    def caller(name: str) -> None:
        guard.admit("chat", BODY, request_id=name)
        order.append(name)

    first = threading.Thread(target=caller, args=("first",), daemon=True)
    first.start()
    until(lambda: guard.waiting() == 1, "the first caller to wait")
    guard.clock.advance(10.5)  # type: ignore[attr-defined]  # room now, but the first has not looked
    second = threading.Thread(target=caller, args=("second",), daemon=True)
    second.start()
    until(lambda: guard.waiting() == 2, "the newcomer to queue behind the first")
    assert order == []
    guard.poke()
    until(lambda: order == ["first"], "the first caller to be admitted first")
    guard.clock.advance(10.5)  # type: ignore[attr-defined]
    guard.poke()
    until(lambda: order == ["first", "second"], "then the newcomer")
    first.join(10)
    second.join(10)
