"""Every error status the gateway answers, in the provider's shape, with no reservation left open."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from spendgate.money import Money

from .conftest import Env

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
AMESSAGES: list[MessageParam] = [{"role": "user", "content": "Hello"}]
CHAT = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5}


def _chat(client: openai.OpenAI, headers: dict[str, str] | None = None) -> ChatCompletion:
    return client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=5, extra_headers=headers
    )


@pytest.fixture
def http(env: Env) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env.gateway.base_url, timeout=10) as client:
        yield client


def _auth(env: Env, name: str = "alice") -> dict[str, str]:
    return {"authorization": f"Bearer {env.secret(name)}"}


def _no_open_reservations(env: Env) -> None:
    with env.gateway.ledger() as ledger:
        assert ledger.usage("global").reserved == Money(0)


def _client(env: Env, name: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=env.gateway.base_url, api_key=env.secret(name), max_retries=0)


def test_400_malformed_json_and_missing_model(env: Env, http: httpx.Client) -> None:
    r = http.post("/chat/completions", content=b'{"model": "gpt-4o", ', headers=_auth(env))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]
    r = http.post("/chat/completions", json={"messages": MESSAGES}, headers=_auth(env))
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = http.post("/chat/completions", json=[1, 2], headers=_auth(env))
    assert r.status_code == 400


def test_400_unknown_price_names_the_model(env: Env) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _client(env).chat.completions.create(model="mystery-model-9", messages=MESSAGES, max_tokens=5)
    assert "mystery-model-9" in info.value.message


def test_401_missing_unknown_disabled_key(env: Env, http: httpx.Client) -> None:
    r = http.post("/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as info:
        _chat(openai.OpenAI(base_url=env.gateway.base_url, api_key="sk-not-a-key", max_retries=0))
    assert "sk-not-a-key" not in str(info.value.body)
    with pytest.raises(openai.AuthenticationError) as info:
        _chat(_client(env, "off"))
    assert "disabled" in info.value.message


def test_401_in_anthropic_shape(env: Env) -> None:
    client = anthropic.Anthropic(base_url=env.gateway.url, api_key="sk-ant-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=5)
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"


def test_403_model_not_allowed(env: Env) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        _chat(_client(env, "mini"))
    assert "gpt-4o" in info.value.message


def test_404_unrouted_model(env: Env) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        _client(env).chat.completions.create(model="llama-unrouted", messages=MESSAGES, max_tokens=5)
    assert info.value.code == "model_not_found"


def test_413_body_too_large(env: Env, http: httpx.Client) -> None:
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 70_000}], "max_tokens": 5}
    r = http.post("/chat/completions", json=big, headers=_auth(env))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is checked while reading
        yield b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 4096
        yield b'"}]}'

    r = http.post("/chat/completions", content=chunks(), headers=_auth(env))
    assert r.status_code == 413


def test_502_upstream_down_releases(env: Env) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        _client(env).chat.completions.create(model="down-gpt", messages=MESSAGES, max_tokens=5)
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_unreachable"
    _no_open_reservations(env)


def test_504_upstream_timeout_releases(env: Env) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        _client(env).chat.completions.create(
            model="slow-gpt", messages=MESSAGES, max_tokens=5, extra_headers={"x-fake-latency-ms": "3000"}
        )
    assert info.value.status_code == 504
    _no_open_reservations(env)


def test_provider_errors_pass_through(env: Env) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        _chat(_client(env), {"x-fake-error": "429"})
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.code == "rate_limit_exceeded"  # the provider's body, not ours
    with pytest.raises(openai.InternalServerError):
        _chat(_client(env), {"x-fake-error": "500"})
    _no_open_reservations(env)


def test_429_budget_exceeded(env: Env) -> None:
    client = _client(env, "tiny")
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)
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
    # A request that fits is still admitted.
    ok = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert ok.usage is not None


def test_budget_429_in_anthropic_shape(env: Env) -> None:
    client = anthropic.Anthropic(base_url=env.gateway.url, api_key=env.secret("tiny"), max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=4000)
    body = info.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "budget_exceeded"
    assert "retry-after" in info.value.response.headers


def test_readyz_fails_when_ledger_gone(env: Env) -> None:
    # Only the happy path here: the ledger is a local file; see test_proxy for 200.
    with httpx.Client(base_url=env.gateway.url, timeout=5) as http:
        assert http.get("/readyz").status_code == 200
