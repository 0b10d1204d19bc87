"""Costs and headers through the gateway, with the real openai and anthropic SDKs as clients."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import anthropic
import httpx
import openai
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from spendgate.money import Money

from .conftest import Env, billed, usd

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the gateway."}]
AMESSAGES: list[MessageParam] = [{"role": "user", "content": "Say hello to the gateway."}]


def test_chat_cost_and_headers(env: Env) -> None:
    client = openai.OpenAI(base_url=env.gateway.base_url, api_key=env.secret("alice"), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
    completion = raw.parse()
    assert completion.usage is not None and completion.usage.completion_tokens == 10
    expected = billed("chat/completions", {"messages": MESSAGES, "model": "gpt-4o"}, 10)
    assert raw.headers["x-spendgate-cost"] == usd(expected)
    assert raw.headers["x-spendgate-request-id"].startswith("sg-")
    remaining = Decimal(raw.headers["x-spendgate-budget-remaining"])
    # The tightest of the key's budgets is research's 5 USD.
    assert Decimal(0) < remaining <= Decimal(5) - expected.to_decimal()
    with env.gateway.ledger() as ledger:
        [record] = ledger.query_requests(limit=1, key=env.key("alice").id)
        assert record.request_id == raw.headers["x-spendgate-request-id"]
        assert record.cost == expected
        assert record.attributes.team == "research"
        assert ledger.usage("global").reserved == Money(0)


def test_async_endpoints(env: Env) -> None:
    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=env.gateway.base_url, api_key=env.secret("alice"), max_retries=0)
        try:
            text = await client.completions.with_raw_response.create(
                model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=5
            )
            assert text.headers["x-spendgate-cost"] == usd(
                billed("completions", {"prompt": "Once upon a time", "model": "gpt-3.5-turbo-instruct"}, 5)
            )
            emb = await client.embeddings.with_raw_response.create(
                model="text-embedding-3-small", input="hello"
            )
            assert Decimal(emb.headers["x-spendgate-cost"]) > 0
            resp = await client.responses.with_raw_response.create(
                model="gpt-4o", input="Hello there", max_output_tokens=7
            )
            parsed = resp.parse()
            assert parsed.usage is not None and parsed.usage.output_tokens == 7
            assert resp.headers["x-spendgate-cost"] == usd(
                billed("responses", {"input": "Hello there", "model": "gpt-4o"}, 7)
            )
        finally:
            await client.close()

    asyncio.run(run())


def test_anthropic_messages_with_x_api_key(env: Env) -> None:
    client = anthropic.Anthropic(base_url=env.gateway.url, api_key=env.secret("alice"), max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=12
    )
    message = raw.parse()
    assert message.usage.output_tokens == 12
    expected = billed("messages", {"messages": MESSAGES, "model": "claude-haiku-4-5"}, 12)
    assert raw.headers["x-spendgate-cost"] == usd(expected)


def test_models_lists_what_the_key_may_use(env: Env) -> None:
    mini = openai.OpenAI(base_url=env.gateway.base_url, api_key=env.secret("mini"), max_retries=0)
    assert [m.id for m in mini.models.list()] == ["gpt-4o-mini"]
    alice = openai.OpenAI(base_url=env.gateway.base_url, api_key=env.secret("alice"), max_retries=0)
    ids = {m.id for m in alice.models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "down-gpt", "claude-haiku-4-5", "text-embedding-3-small"} <= ids
    assert len(ids) <= 1000


def test_health_ready_metrics(env: Env) -> None:
    with httpx.Client(base_url=env.gateway.url, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 3},
            headers={"authorization": f"Bearer {env.secret('alice')}"},
        )
        text = http.get("/metrics").text
    assert 'spendgate_requests_total{model="gpt-4o",route="chat",status="200"}' in text
    assert 'spendgate_tokens_total{kind="output",model="gpt-4o"}' in text
    assert f'spendgate_cost_usd_total{{key="{env.key("alice").id}",model="gpt-4o"}}' in text
    assert 'spendgate_budget_usage_ratio{budget="research"}' in text
    assert "spendgate_request_duration_seconds_bucket" in text
    assert "spendgate_upstream_duration_seconds_bucket" in text
    assert env.secret("alice") not in text
