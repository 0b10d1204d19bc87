"""No blocking ledger call on an event loop: every async path (the guard's, both async SDK
wrappers', their streams' endings) reaches the SQLite ledger only through its async calls,
whose lock waits never block the loop. A ledger that records where its blocking calls come
from fails the test if one is made on a thread that runs an event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from spendgate import Guard, wrap
from spendgate.attribution import attribute
from spendgate.errors import BudgetExceededError, RateLimitExceededError
from spendgate.ledger.sqlite import SQLiteLedger
from spendgate.money import Money
from spendgate.testing import FakeUpstream

MESSAGES: Any = [{"role": "user", "content": "Which thread am I on?"}]
OUT = {"x-fake-output-tokens": "6"}


class WatchedLedger(SQLiteLedger):
    """A SQLite ledger whose blocking writes note when they run under a running event loop."""

    blocking_on_loop: list[str]

    def _watch(self, name: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop on this thread: a blocking call is fine here
        self.blocking_on_loop.append(f"{name} on {threading.current_thread().name}")

    def reserve(self, *args: Any, **kwargs: Any) -> Any:
        self._watch("reserve")
        return super().reserve(*args, **kwargs)

    def settle(self, *args: Any, **kwargs: Any) -> Any:
        self._watch("settle")
        return super().settle(*args, **kwargs)

    def release(self, *args: Any, **kwargs: Any) -> Any:
        self._watch("release")
        return super().release(*args, **kwargs)

    def expire_leases(self) -> int:
        self._watch("expire_leases")
        return super().expire_leases()

    def usage(self, *args: Any, **kwargs: Any) -> Any:
        self._watch("usage")
        return super().usage(*args, **kwargs)

    def limit_usage(self, *args: Any, **kwargs: Any) -> Any:
        self._watch("limit_usage")
        return super().limit_usage(*args, **kwargs)


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[Guard]:
    ledger = WatchedLedger(tmp_path / "spend.db")
    ledger.blocking_on_loop = []
    guard = Guard(ledger, budgets=[{"id": "g", "limit": "10"}])
    yield guard
    guard.close()
    ledger.close()


def watched(guard: Guard) -> WatchedLedger:
    assert isinstance(guard.ledger, WatchedLedger)
    return guard.ledger


def run(guard: Guard, scenario: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))
    gc.collect()
    assert watched(guard).blocking_on_loop == []
    assert guard.ledger.usage("g").reserved == Money(0)  # and every call ended


def test_the_watch_itself_sees_a_blocking_call(guard: Guard) -> None:
    async def scenario() -> None:
        with contextlib.suppress(KeyError):
            guard.ledger.release("never-reserved")  # a blocking call on the loop

    asyncio.run(scenario())
    assert watched(guard).blocking_on_loop == ["release on MainThread"]


def test_async_openai_calls_and_streams(guard: Guard, up: FakeUpstream) -> None:
    async def scenario() -> None:
        client = wrap(openai.AsyncOpenAI(base_url=up.base_url, api_key="x", max_retries=0), guard=guard)
        await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=8, extra_headers=OUT
        )
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=8, stream=True, extra_headers=OUT
        )
        async for _ in stream:
            pass
        early = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=8, stream=True, extra_headers=OUT
        )
        async for _ in early:
            break
        await early.close()
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=8, extra_headers=OUT
        )
        raw.parse()  # cached: parsed while the call ended
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=8, extra_headers={"x-fake-error": "500"}
            )
        cut = await client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            max_tokens=8,
            stream=True,
            extra_headers={**OUT, "x-fake-stream-cut-after": "1"},
        )
        with pytest.raises(Exception):  # noqa: B017 - whatever the transport raises
            async for _ in cut:
                pass
        await client.close()

    run(guard, scenario)
    assert len(guard.ledger.query_requests()) == 5  # the refused one was released, not logged


def test_async_anthropic_calls_and_streams(guard: Guard, up: FakeUpstream) -> None:
    async def scenario() -> None:
        client = wrap(anthropic.AsyncAnthropic(base_url=up.root_url, api_key="x", max_retries=0), guard=guard)
        model = "claude-haiku-4-5"
        await client.messages.create(model=model, messages=MESSAGES, max_tokens=8, extra_headers=OUT)
        stream = await client.messages.create(
            model=model, messages=MESSAGES, max_tokens=8, stream=True, extra_headers=OUT
        )
        async for _ in stream:
            pass
        async with client.messages.stream(model=model, messages=MESSAGES, max_tokens=8) as helper:
            async for _ in helper:
                break
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(
                model=model, messages=MESSAGES, max_tokens=8, extra_headers={"x-fake-error": "429"}
            )
        await client.close()

    run(guard, scenario)
    assert sorted(r.status for r in guard.ledger.query_requests()) == ["closed", "ok", "ok"]


def test_async_admission_clamp_and_wait(tmp_path: Path) -> None:
    ledger = WatchedLedger(tmp_path / "spend.db")
    ledger.blocking_on_loop = []
    budget = {"id": "g", "selector": {"team": "*"}, "limit": "0.001", "on_exceed": "clamp"}
    # A short poll: the waiter looks again soon after the release (which sends no wake-up).
    guard = Guard(ledger, budgets=[budget], max_wait=5, poll_interval=0.01)
    body = {"model": "gpt-4o", "messages": MESSAGES}
    small = {**body, "max_tokens": 40}  # fits the budget alone, not beside the clamped one

    async def scenario() -> None:
        with attribute(team="a"):
            clamped = await guard.admit_async("chat", body)  # too big: clamped to fit
            assert clamped.clamped_to is not None
            waiting = asyncio.ensure_future(guard.admit_async("chat", small, on_exceed="wait"))
            for _ in range(50):  # bounded: until it waits in line
                if guard.waiting():
                    break
                await asyncio.sleep(0)
            assert guard.waiting() == 1
            await guard.release_async(clamped)  # frees the budget: the waiter is admitted
            admitted = await waiting
            await guard.release_async(admitted)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert ledger.blocking_on_loop == []
    guard.close()
    ledger.close()


def test_async_waiting_lines_read_the_ledger_off_the_loop(tmp_path: Path) -> None:
    """A request that joins a line others wait in reads the budget's (or limit's) numbers, and
    one that gives up reads them again for its error: both on a thread, not on the loop."""
    ledger = WatchedLedger(tmp_path / "spend.db")
    ledger.blocking_on_loop = []
    # team a waits in the budget's line (it fits one request at a time), team b in the limit's
    budget = {"id": "g", "selector": {"team": "a"}, "limit": "0.001", "on_exceed": "wait"}
    limit = {"id": "rpm", "selector": {"team": "b"}, "requests": 1, "per": "1m", "on_exceed": "wait"}
    guard = Guard(ledger, budgets=[budget], limits=[limit], max_wait=0.2, poll_interval=0.01)
    small = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 40}

    async def line_of(team: str, n: int) -> list[BaseException | Any]:
        with attribute(team=team):
            first = await guard.admit_async("chat", small)  # holds the budget (and the minute's request)
            waiters = [asyncio.ensure_future(guard.admit_async("chat", small)) for _ in range(n)]
            done = await asyncio.gather(*waiters, return_exceptions=True)  # each gives up after max_wait
            await guard.release_async(first)
            return done

    async def scenario() -> None:
        budget_line, limit_line = await asyncio.gather(line_of("a", 3), line_of("b", 3))
        assert all(isinstance(outcome, BudgetExceededError) for outcome in budget_line), budget_line
        assert all(isinstance(outcome, RateLimitExceededError) for outcome in limit_line), limit_line

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert ledger.blocking_on_loop == []
    guard.close()
    ledger.close()
