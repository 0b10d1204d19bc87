"""spendgate.Client: the scenario users meet, over HTTP against the fake upstream."""

from __future__ import annotations

import asyncio
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import spendgate
from spendgate.client import AsyncClient, BudgetTooSmallWarning, Client
from spendgate.errors import ConfigError, CostTrackingBudgetExceededError
from spendgate.estimate import estimate_request
from spendgate.money import Money
from spendgate.testing import FakeUpstream

from .conftest import billed, requests_total

MESSAGES: Any = [{"role": "user", "content": "Write a long essay about budgets."}]
BODY: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES}
#: The fake bills this many output tokens per call (under the 16384 the guard reserves).
LONG = {"x-fake-output-tokens": "4000"}


def make(up: FakeUpstream, **options: Any) -> Client:
    options.setdefault("default_headers", LONG)
    return Client(api_key="x", base_url=up.base_url, max_retries=0, **options)


def test_a_1_usd_budget_stops_the_loop_with_the_familiar_error(up: FakeUpstream) -> None:
    client = make(up, cost_tracking_budget=1)
    assert isinstance(client.openai, openai.OpenAI)
    calls = 0
    with pytest.raises(spendgate.BudgetExceededError) as info:
        for _ in range(500):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            calls += 1
    message = str(info.value)
    assert message.startswith("Cost tracking budget exceeded: current usage ")
    assert "of limit 1 USD" in message
    assert isinstance(info.value, CostTrackingBudgetExceededError)
    one = billed("chat", BODY, 4000)
    # Refused when what is left cannot hold one more worst case, and never overshot.
    worst = estimate_request("chat", BODY, catalog=client.guard.catalog, counter=client.guard.counter).amount
    assert calls > 0 and client.spent == one * calls
    assert client.spent + worst > Money.usd(1) >= client.spent
    assert client.remaining == Money.usd(1) - client.spent
    assert info.value.retry_after is None  # a lifetime budget never resets


def test_a_100_usd_budget_runs_on(up: FakeUpstream) -> None:
    client = make(up, cost_tracking_budget=100)
    for _ in range(30):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert client.spent == billed("chat", BODY, 4000) * 30
    assert client.limit == Money.usd(100)


def test_default_model_and_fall_through(up: FakeUpstream) -> None:
    client = make(up, cost_tracking_budget="5", default_model="gpt-4o-mini")
    resp = client.chat.completions.create(messages=MESSAGES)  # type: ignore[call-overload]
    assert resp.model == "gpt-4o-mini"
    assert client.spent == billed("chat", {**BODY, "model": "gpt-4o-mini"}, 4000)
    assert client.models.list().data  # openai.OpenAI's other resources fall through
    with client.with_options(timeout=20) as copy:
        copy.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert client.spent == billed("chat", {**BODY, "model": "gpt-4o-mini"}, 4000) * 2


def test_sqlite_ledger_keeps_spend_across_clients(up: FakeUpstream, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    one = billed("chat", BODY, 4000)
    with make(up, cost_tracking_budget=10, ledger=url) as first:
        for _ in range(3):
            first.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert first.spent == one * 3
    with make(up, cost_tracking_budget=10, ledger=url) as second:
        assert second.spent == one * 3
        second.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert second.spent == one * 4
        assert second.remaining == Money.usd(10) - one * 4


def test_budget_window_and_no_budget(up: FakeUpstream) -> None:
    monthly = make(up, cost_tracking_budget=Decimal("2.50"), budget_window="month")
    usage = monthly.usage()
    assert usage is not None and usage.window_end is not None
    tracking = make(up)  # no budget: spend is tracked, nothing is refused
    tracking.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert tracking.spent == billed("chat", BODY, 4000)
    assert tracking.remaining is None and tracking.usage() is None


def test_a_budget_too_small_for_one_request_warns(up: FakeUpstream) -> None:
    with pytest.warns(BudgetTooSmallWarning) as record:
        client = make(up, cost_tracking_budget="0.01")
    message = str(record[0].message)
    probe = estimate_request(
        "chat",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello! Please answer briefly."}]},
        catalog=client.guard.catalog,
        counter=client.guard.counter,
    )
    affordable = probe.max_output_affordable(Money.usd("0.01"))
    assert message.startswith(f"a 0.01 USD budget affords at most {affordable} output tokens of gpt-4o")
    assert "reserve 16384" in message
    assert record[0].filename == __file__  # points at the caller's line
    # It is a warning, not a wall: small requests still go through.
    client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=50, extra_headers={"x-fake-output-tokens": "50"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(up, cost_tracking_budget=1)  # one worst case (about 0.16 USD) fits: no warning


def test_bad_budgets_are_refused_clearly(up: FakeUpstream) -> None:
    with pytest.raises(spendgate.ConfigError, match=r"cost_tracking_budget: .*finite"):
        make(up, cost_tracking_budget=float("inf"))
    with pytest.raises(TypeError, match="cost_tracking_budget must be USD"):
        make(up, cost_tracking_budget=[1])
    with pytest.raises(spendgate.ConfigError, match="cost_tracking_budget"):
        make(up, cost_tracking_budget="-3")
    with pytest.raises(spendgate.ConfigError, match="budget_window"):
        make(up, cost_tracking_budget=5, budget_window="fortnight")


def test_refusal_happens_before_any_request(up: FakeUpstream) -> None:
    with pytest.warns(BudgetTooSmallWarning):
        client = make(up, cost_tracking_budget="0.001")
    before = requests_total(up)
    with pytest.raises(spendgate.BudgetExceededError, match=r"of limit 0\.001 USD"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert requests_total(up) == before


def test_async_client(up: FakeUpstream) -> None:
    async def main() -> Money:
        async with AsyncClient(
            api_key="x", base_url=up.base_url, cost_tracking_budget=1, default_headers=LONG, max_retries=0
        ) as client:
            assert isinstance(client.openai, openai.AsyncOpenAI)
            with pytest.raises(spendgate.BudgetExceededError, match="of limit 1 USD"):
                for _ in range(500):
                    await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                stream=True,
                max_tokens=10,
                extra_headers={"x-fake-output-tokens": "10"},  # the provider keeps to max_tokens
            )
            assert [c async for c in stream]
            return client.spent

    spent = asyncio.run(main())
    assert spent <= Money.usd(1)


def test_clients_on_one_ledger_share_a_budget_only_on_purpose(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    first = spendgate.Client(api_key="x", cost_tracking_budget=10, ledger=url)
    # A different limit under the same id would silently become the first's limit too.
    with pytest.raises(ConfigError, match="already holds a budget 'client' of 10 USD"):
        spendgate.Client(api_key="x", cost_tracking_budget=100, ledger=url)
    same = spendgate.Client(api_key="x", cost_tracking_budget=10, ledger=url)  # shared on purpose
    apart = spendgate.Client(api_key="x", cost_tracking_budget=100, ledger=url, budget_id="team-b")
    assert first.limit == same.limit == Money.usd("10") and apart.limit == Money.usd("100")
    assert first.guard.ledger.get_budget("client").limit == Money.usd("10")
    for client in (first, same, apart):
        client.close()
