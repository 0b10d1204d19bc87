"""Streams pass through unbuffered, hide the usage chunk the guard added, and always settle."""

from __future__ import annotations

import asyncio
import time

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam
from openai.types.completion_usage import CompletionUsage

from spendgate.money import Money

from .conftest import Env, billed, wait_until

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Stream me a few tokens."}]
AMESSAGES: list[MessageParam] = [{"role": "user", "content": "Stream me a few tokens."}]


def _last_cost(env: Env, key: str) -> tuple[Money, str]:
    with env.gateway.ledger() as ledger:
        [record] = ledger.query_requests(limit=1, key=env.key(key).id)
        return record.cost, record.status


def _reserved(env: Env) -> Money:
    with env.gateway.ledger() as ledger:
        return ledger.usage("global").reserved


def test_streamed_cost_equals_plain_cost_and_usage_chunk_is_hidden(env: Env) -> None:
    client = openai.OpenAI(base_url=env.gateway.base_url, api_key=env.secret("alice"), max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=9)
    plain, _ = _last_cost(env, "alice")
    chunks = list(
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=9, stream=True)
    )
    streamed, status = _last_cost(env, "alice")
    assert streamed == plain == billed("chat/completions", {"model": "gpt-4o", "messages": MESSAGES}, 9)
    assert status == "ok"
    # The client did not ask for usage: no chunk carries it, and none is empty of choices.
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok " * 9


def test_usage_chunk_kept_when_the_client_asked(env: Env) -> None:
    async def run() -> list[CompletionUsage | None]:
        client = openai.AsyncOpenAI(base_url=env.gateway.base_url, api_key=env.secret("alice"), max_retries=0)
        try:
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
            return [chunk.usage async for chunk in stream]
        finally:
            await client.close()

    usages = [u for u in asyncio.run(run()) if u is not None]
    assert len(usages) == 1 and usages[0].completion_tokens == 4


def test_anthropic_stream_cost_equals_plain(env: Env) -> None:
    client = anthropic.Anthropic(base_url=env.gateway.url, api_key=env.secret("alice"), max_retries=0)
    client.messages.create(model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=6)
    plain, _ = _last_cost(env, "alice")
    with client.messages.stream(model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=6) as stream:
        text = stream.get_final_text()
    assert text == "tok " * 6
    streamed, _ = _last_cost(env, "alice")
    assert streamed == plain


def test_responses_stream_settles(env: Env) -> None:
    client = openai.OpenAI(base_url=env.gateway.base_url, api_key=env.secret("alice"), max_retries=0)
    events = list(client.responses.create(model="gpt-4o", input="Hi", max_output_tokens=5, stream=True))
    assert events[-1].type == "response.completed"
    cost, status = _last_cost(env, "alice")
    assert status == "ok" and cost == billed("responses", {"model": "gpt-4o", "input": "Hi"}, 5)


def test_stream_is_not_buffered(env: Env) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 20, "stream": True}
    headers = {"authorization": f"Bearer {env.secret('alice')}", "x-fake-chunk-delay-ms": "100"}
    with httpx.Client(timeout=10) as http:
        started = time.monotonic()
        with http.stream("POST", env.gateway.base_url + "/chat/completions", json=body, headers=headers) as r:
            lines = r.iter_lines()
            first = next(lines)
            first_at = time.monotonic() - started
            for _ in lines:
                pass
        total = time.monotonic() - started
    assert first.startswith("data: ")
    assert first_at < total / 2  # the first event came long before the last (20 x 100 ms)


def test_client_disconnect_charges_the_reservation(env: Env) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 200, "stream": True}
    headers = {"authorization": f"Bearer {env.secret('alice')}", "x-fake-chunk-delay-ms": "20"}
    url = env.gateway.base_url + "/chat/completions"
    # Leaving the block closes the connection mid-stream.
    with httpx.Client(timeout=10) as http, http.stream("POST", url, json=body, headers=headers) as r:
        request_id = r.headers["x-spendgate-request-id"]
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)

    def settled() -> bool:
        with env.gateway.ledger() as ledger:
            records = ledger.query_requests(limit=5, key=env.key("alice").id)
        return any(r.request_id == request_id for r in records)

    assert wait_until(settled, 5.0), "the cut stream was never settled"
    with env.gateway.ledger() as ledger:
        [record] = [
            r for r in ledger.query_requests(limit=5, key=env.key("alice").id) if r.request_id == request_id
        ]
        assert record.status == "closed"
        # No usage came: hidden reasoning and the served tier are unknown, so the reserved
        # worst case is charged (never under-count), at least what 200 tokens would bill.
        assert record.cost >= billed("chat/completions", body, 200)
    assert wait_until(lambda: _reserved(env) == Money(0), 5.0)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_upstream_cut_settles_partial(env: Env, kind: str) -> None:
    headers = {"x-fake-stream-cut-after": "3"}
    if kind == "openai":
        client = openai.OpenAI(base_url=env.gateway.base_url, api_key=env.secret("alice"), max_retries=0)
        with pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=50, stream=True, extra_headers=headers
            ):
                pass
    else:
        aclient = anthropic.Anthropic(base_url=env.gateway.url, api_key=env.secret("alice"), max_retries=0)
        with pytest.raises(anthropic.APIError):
            for _ in aclient.messages.create(
                model="claude-haiku-4-5",
                messages=AMESSAGES,
                max_tokens=50,
                stream=True,
                extra_headers=headers,
            ):
                pass
    cost, status = _last_cost(env, "alice")
    assert status == "cut" and cost > Money(0)
    assert _reserved(env) == Money(0)
