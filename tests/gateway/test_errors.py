"""Every error status the gateway answers, in the provider's shape, with no reservation left open.

In process (``gw``, inprocess.py) for the gateway's own logic; the last section runs a real
gateway process for what the in-process upstream replaces: aiohttp's unreachable-host and read
timeout errors over real sockets.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from spendgate.money import Money

from .conftest import Env
from .inprocess import InProcessGateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
AMESSAGES: list[MessageParam] = [{"role": "user", "content": "Hello"}]
CHAT = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5}

anyio = pytest.mark.anyio


async def _chat(client: openai.AsyncOpenAI, headers: dict[str, str] | None = None) -> ChatCompletion:
    return await client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=5, extra_headers=headers
    )


def _nothing_held(gw: InProcessGateway) -> None:
    assert gw.ledger.usage("global").reserved == Money(0)


@anyio
async def test_400_malformed_json_and_missing_model(gw: InProcessGateway) -> None:
    http = gw.http("alice")
    r = await http.post("/chat/completions", content=b'{"model": "gpt-4o", ')
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]
    r = await http.post("/chat/completions", json={"messages": MESSAGES})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = await http.post("/chat/completions", json=[1, 2])
    assert r.status_code == 400
    assert gw.upstream.received == []


@anyio
async def test_400_unknown_price_names_the_model(gw: InProcessGateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai().chat.completions.create(model="mystery-model-9", messages=MESSAGES, max_tokens=5)
    assert "mystery-model-9" in info.value.message


@anyio
async def test_401_missing_unknown_disabled_expired_key(gw: InProcessGateway) -> None:
    r = await gw.http().post("/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as info:
        await _chat(gw.openai(api_key="sk-not-a-key"))
    assert "sk-not-a-key" not in str(info.value.body)
    with pytest.raises(openai.AuthenticationError) as info:
        await _chat(gw.openai("off"))
    assert "disabled" in info.value.message
    # The admin API refuses a past expiry; the store itself takes one.
    _, expired = gw.store.create(user="erin", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError) as info:
        await _chat(gw.openai(api_key=expired))
    assert info.value.code == "expired_api_key"
    assert gw.upstream.received == []


@anyio
async def test_401_in_anthropic_shape(gw: InProcessGateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        await gw.anthropic(api_key="sk-ant-wrong").messages.create(
            model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=5
        )
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"


@anyio
async def test_403_model_not_allowed(gw: InProcessGateway) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        await _chat(gw.openai("mini"))
    assert "gpt-4o" in info.value.message


@anyio
async def test_404_unrouted_model(gw: InProcessGateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await gw.openai().chat.completions.create(model="llama-unrouted", messages=MESSAGES, max_tokens=5)
    assert info.value.code == "model_not_found"


@anyio
async def test_404_and_405_wrong_endpoint_or_method(gw: InProcessGateway) -> None:
    http = gw.http("alice")
    assert (await http.post("/nope", json=CHAT)).status_code == 404
    assert (await http.get("/chat/completions")).status_code == 405  # the path exists: POST only
    assert (await http.put("/messages", json=CHAT)).status_code == 405
    assert (await http.post("/models", json={})).status_code == 405
    assert gw.upstream.received == []
    assert gw.ledger.query_requests(limit=5) == []


@anyio
async def test_413_body_too_large(gw: InProcessGateway) -> None:
    http = gw.http("alice")
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 70_000}], "max_tokens": 5}
    r = await http.post("/chat/completions", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is checked while reading
        yield b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 4096
        yield b'"}]}'

    r = await http.post("/chat/completions", content=chunks())
    assert r.status_code == 413
    assert gw.upstream.received == []


@anyio
async def test_502_upstream_down_releases(gw: InProcessGateway) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(model="down-gpt", messages=MESSAGES, max_tokens=5)
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_unreachable"
    _nothing_held(gw)


@anyio
async def test_504_upstream_timeout_releases(gw: InProcessGateway) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(
            model="slow-gpt", messages=MESSAGES, max_tokens=5, extra_headers={"x-fake-latency-ms": "3000"}
        )
    assert info.value.status_code == 504
    _nothing_held(gw)


@anyio
async def test_provider_errors_pass_through(gw: InProcessGateway) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await _chat(gw.openai(), {"x-fake-error": "429"})
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.code == "rate_limit_exceeded"  # the provider's body, not ours
    with pytest.raises(openai.BadRequestError):
        await _chat(gw.openai(), {"x-fake-error": "400"})
    with pytest.raises(openai.InternalServerError):
        await _chat(gw.openai(), {"x-fake-error": "500"})
    with pytest.raises(anthropic.InternalServerError) as ainfo:
        await gw.anthropic().messages.create(
            model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=5, extra_headers={"x-fake-error": "503"}
        )
    assert isinstance(ainfo.value.body, dict) and ainfo.value.body["error"]["type"] == "overloaded_error"
    _nothing_held(gw)
    assert gw.ledger.usage("global").spent == Money(0)


@anyio
async def test_429_budget_exceeded(tmp_path_factory: pytest.TempPathFactory) -> None:
    budgets = [
        {"id": "global", "limit": "100", "window": "day"},
        {"id": "tiny", "selector": {"user": "tiny"}, "limit": "0.001", "window": "day"},
    ]
    async with InProcessGateway.start(tmp_path_factory.mktemp("gw"), budgets=budgets) as gw:
        client = gw.openai("tiny")
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)
        response = info.value.response
        body = response.json()
        assert body["error"]["type"] == "budget_exceeded" and body["error"]["code"] == "budget_exceeded"
        assert body["error"]["message"].startswith("Cost tracking budget exceeded")
        budget = body["error"]["budget"]
        assert budget["id"] == "tiny" and budget["limit_usd"].startswith("0.001")
        # Retry-After: whole seconds, rounded up, until the daily window resets.
        resets = datetime.fromisoformat(budget["resets_at"])
        left = (resets - datetime.now(UTC)).total_seconds()
        retry_after = int(response.headers["retry-after"])
        assert retry_after == math.ceil(budget["retry_after"])
        assert abs(retry_after - left) < 60
        assert gw.upstream.received == []
        # A request that fits is still admitted.
        ok = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
        assert ok.usage is not None

        with pytest.raises(anthropic.RateLimitError) as ainfo:
            await gw.anthropic("tiny").messages.create(
                model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=4000
            )
        abody = ainfo.value.body
        assert isinstance(abody, dict) and abody["error"]["type"] == "budget_exceeded"
        assert "retry-after" in ainfo.value.response.headers
        _nothing_held(gw)


@anyio
async def test_readyz_and_healthz(gw: InProcessGateway) -> None:
    root = gw.http(base="")
    assert (await root.get("/healthz")).json() == {"status": "ok"}
    assert (await root.get("/readyz")).json()["status"] == "ready"


# -- through a real process: aiohttp's own errors ------------------------------------------------


@pytest.fixture
def http(env: Env) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env.gateway.base_url, timeout=10) as client:
        yield client


def _client(env: Env, name: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=env.gateway.base_url, api_key=env.secret(name), max_retries=0)


def _no_open_reservations(env: Env) -> None:
    with env.gateway.ledger() as ledger:
        assert ledger.usage("global").reserved == Money(0)


def test_process_502_closed_port_and_504_read_timeout(env: Env) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        _client(env).chat.completions.create(model="down-gpt", messages=MESSAGES, max_tokens=5)
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_unreachable"
    with pytest.raises(openai.APIStatusError) as info:
        _client(env).chat.completions.create(
            model="slow-gpt", messages=MESSAGES, max_tokens=5, extra_headers={"x-fake-latency-ms": "3000"}
        )
    assert info.value.status_code == 504
    _no_open_reservations(env)


def test_process_401_and_provider_error(env: Env, http: httpx.Client) -> None:
    r = http.post("/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.RateLimitError) as info:
        _client(env).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=5, extra_headers={"x-fake-error": "429"}
        )
    assert info.value.response.headers["retry-after"] == "1"
    _no_open_reservations(env)
