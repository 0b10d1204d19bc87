"""spendgate.Client(rpm=, tpm=, limits=): the seed's simple case, over HTTP against the fake upstream,
with a manual clock (no test waits on wall-clock time)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

import spendgate
from spendgate.client import AsyncClient, Client
from spendgate.clock import ManualClock
from spendgate.errors import ConfigError, RateLimitExceededError
from spendgate.guard import Guard
from spendgate.ledger import open_ledger
from spendgate.limits import Limit
from spendgate.testing import FakeUpstream, prompt_tokens_for
from test_guard import until

from .conftest import requests_total

MESSAGES: Any = [{"role": "user", "content": "Say hello."}]
BODY: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 50}
PROMPT = prompt_tokens_for("chat/completions", BODY)  # what the fake bills
WORST = Guard().prepare("chat", BODY)[2].prompt.tokens + 50  # what the guard reserves: bound + max_tokens
START = "2026-12-02T12:00:00Z"


def make(up: FakeUpstream, **options: Any) -> Client:
    options.setdefault("clock", ManualClock(START))
    return Client(api_key="x", base_url=up.base_url, max_retries=0, **options)


def call(client: Client, **headers: str) -> Any:
    return client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=50, extra_headers=headers or None
    )


def advance(client: Client, seconds: float) -> None:
    clock = client.guard.clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)
    client.guard.poke()


def test_rpm_refuses_the_request_over_the_minute_before_sending(up: FakeUpstream) -> None:
    with make(up, rpm=2) as client:
        up.reset()
        call(client)
        call(client)
        with pytest.raises(RateLimitExceededError) as info:
            call(client)
        err = info.value
        assert (err.limit_id, err.kind, err.amount, err.used, err.per_seconds) == (
            "client/rpm",
            "requests",
            2,
            2,
            60,
        )
        assert err.retry_after is not None and 0 < err.retry_after <= 63
        assert requests_total(up) == 2  # the refused one never left
        [usage] = client.limits_usage()
        assert (usage.limit.id, usage.used, usage.remaining) == ("client/rpm", 2, 0)
        advance(client, 63.1)  # the whole minute, and its oldest bucket, have passed
        call(client)
        assert requests_total(up) == 3


def test_tpm_reserves_the_worst_case_and_keeps_what_was_used(up: FakeUpstream) -> None:
    worst = WORST
    with make(up, tpm=worst + PROMPT + 7, cost_tracking_budget=5) as client:
        call(client, **{"x-fake-output-tokens": "7"})
        [usage] = client.limits_usage()
        assert usage.limit.id == "client/tpm" and usage.limit.kind == "tokens"
        assert usage.used == PROMPT + 7  # settled: the reservation minus what was not used
        call(client)  # fits exactly: PROMPT + 7 + worst; settles PROMPT + 16 (the fake's default)
        assert client.limits_usage()[0].used == 2 * PROMPT + 23
        assert 2 * PROMPT + 23 + worst > worst + PROMPT + 7
        with pytest.raises(RateLimitExceededError, match=f"needs up to {worst} tokens") as info:
            call(client)
        assert info.value.retry_after is not None
        assert client.spent > spendgate.Money(0)  # the budget and the limit live side by side
    with make(up, tpm=worst - 1) as client, pytest.raises(RateLimitExceededError) as info:
        call(client)
    assert info.value.retry_after is None and "larger than the limit on its own" in str(info.value)


def test_wait_mode_holds_the_call_until_the_minute_has_room(up: FakeUpstream) -> None:
    with make(up, rpm=1, on_exceed="wait", max_wait=600) as client:
        call(client)
        answers: list[Any] = []
        thread = threading.Thread(target=lambda: answers.append(call(client)), daemon=True)
        thread.start()
        until(lambda: client.guard.waiting() == 1, "the second call to wait")
        advance(client, 30)
        until(lambda: client.guard.waiting() == 1, "the waiter to look again")
        assert not answers
        advance(client, 33.1)
        until(lambda: len(answers) == 1, "the second call to go")
        thread.join(10)
        assert client.limits_usage()[0].used == 1


def test_wait_gives_up_at_max_wait_and_clamp_mode_raises(up: FakeUpstream) -> None:
    with make(up, rpm=1, on_exceed="wait", max_wait=20) as client:
        call(client)
        errors: list[BaseException] = []

        def second() -> None:
            try:
                call(client)
            except RateLimitExceededError as exc:
                errors.append(exc)

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        until(lambda: client.guard.waiting() == 1, "the second call to wait")
        advance(client, 21)
        until(lambda: bool(errors), "the waiter to give up")
        thread.join(10)
    with make(up, rpm=1, on_exceed="clamp", cost_tracking_budget=5) as client:  # a window cannot be clamped
        call(client)
        with pytest.raises(RateLimitExceededError):
            call(client)


def test_concurrency_through_limits(up: FakeUpstream) -> None:
    hold = f"held-{uuid.uuid4().hex}"
    with make(up, limits=[{"concurrency": 1}]) as client:
        assert client.limit_ids == ("client/global/concurrency",)
        answers: list[Any] = []
        thread = threading.Thread(
            target=lambda: answers.append(call(client, **{"x-fake-hold": hold})), daemon=True
        )
        thread.start()
        until(lambda: up.held(hold) == 1, "the first call to be in flight")
        with pytest.raises(RateLimitExceededError, match="1 of 1 requests in flight already"):
            call(client)
        up.release(hold)
        thread.join(10)
        assert answers and client.limits_usage()[0].used == 0  # released at its ending
        call(client)


def test_limits_take_objects_and_mappings(up: FakeUpstream) -> None:
    mine = Limit("mine", {"user": "*"}, "requests", 1, per=timedelta(seconds=10))
    with make(up, rpm=100, limits=[mine, {"id": "out", "output_tokens": 1000, "per": "1h"}]) as client:
        assert client.limit_ids == ("client/rpm", "mine", "out")
        with spendgate.attribute(user="alice"):
            call(client)
            with pytest.raises(RateLimitExceededError, match="user=alice"):
                call(client)
        with spendgate.attribute(user="bob"):
            call(client)
        ids = sorted((u.limit.id, u.instance) for u in client.limits_usage())
        assert [i for i, _ in ids] == ["client/rpm", "mine", "mine", "out"]


def test_async_client_rpm(up: FakeUpstream) -> None:
    async def scenario() -> None:
        client = AsyncClient(
            api_key="x", base_url=up.base_url, max_retries=0, rpm=1, clock=ManualClock(START)
        )
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
        with pytest.raises(RateLimitExceededError):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
        assert [u.used for u in client.limits_usage()] == [1]
        await client.close()

    asyncio.run(scenario())


def test_clients_on_one_ledger_share_a_limit_only_on_purpose(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    first = Client(api_key="x", ledger=url, rpm=10, tpm=1000)
    with pytest.raises(
        ConfigError, match=r"rpm: .*'client/rpm' \(global: 10 requests per 1m\).*global: 20 requests"
    ):
        Client(api_key="x", ledger=url, rpm=20)
    pool = Client(api_key="x", ledger=url, limits=[{"concurrency": 2}])
    with pytest.raises(ConfigError, match=r"limits\[0\]: .*'client/global/concurrency'"):
        Client(api_key="x", ledger=url, limits=[{"concurrency": 3}])
    same = Client(api_key="x", ledger=url, rpm=10, on_exceed="wait")  # shared on purpose
    apart = Client(api_key="x", ledger=url, rpm=20, budget_id="team-b")
    assert apart.limit_ids == ("team-b/rpm",)
    assert first.guard.ledger.get_limit("client/rpm").amount == 10
    for client in (first, pool, same, apart):
        client.close()


def test_bad_limit_options_are_refused_clearly() -> None:
    bad: Any
    for bad in (0, -1, True, 1.5, "60"):
        with pytest.raises(ConfigError, match="rpm: must be a whole number >= 1"):
            Client(api_key="x", rpm=bad)
    with pytest.raises(ConfigError, match="tpm"):
        Client(api_key="x", tpm=0)
    with pytest.raises(ConfigError, match=r"limits\[0\]"):
        Client(api_key="x", limits=[{"requests": 10}])  # no per
    with pytest.raises(ConfigError, match="limits: must be a list"):
        Client(api_key="x", limits=cast(Any, {"requests": 10, "per": "1m"}))
    ledger = open_ledger("memory://")
    with pytest.raises(ConfigError, match="clock"):
        Client(api_key="x", ledger=ledger, clock=ManualClock(START))
    ledger.close()
