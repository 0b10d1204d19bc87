"""Malformed input gets a 4xx JSON error in the provider's shape, never a 5xx or plain text, and
leaves nothing reserved (issue 10, section 3).

Each case came from a plain-text 500 (an OpenAI SDK retries those): the body reached the
estimate, the token counter, the JSON encoder or the SQLite binding with a shape they did not
expect. The core refuses such bodies with ``EstimateError``, so the SDK wrappers refuse them too.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from spendgate.estimate import EstimateError, estimate_request
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.tokens import TokenCounter

from .inprocess import InProcessGateway

anyio = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hello"}]
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5}
ANTHROPIC: dict[str, Any] = {"model": "claude-haiku-4-5", "messages": MESSAGES, "max_tokens": 5}
#: Deeper than Python's recursion limit: json.loads itself gives up on it.
DEEP = 3000


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def assert_openai_error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error: dict[str, Any] = r.json()["error"]
    assert set(error) >= {"message", "type", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_anthropic_error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["type"] == "error", body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str)
    return error


def assert_nothing_sent_or_held(gw: InProcessGateway) -> None:
    assert gw.upstream.received == []
    assert gw.ledger.usage("global").reserved == Money(0)


async def post_raw(gw: InProcessGateway, path: str, body: bytes, key: str = "alice") -> httpx.Response:
    return await gw.http(key).post(path, content=body, headers={"content-type": "application/json"})


# -- body shapes the estimate did not expect ---------------------------------------------------


@anyio
@pytest.mark.parametrize("options", ["x", 5, [1, 2], True])
@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
async def test_stream_options_not_an_object(gw: InProcessGateway, path: str, options: object) -> None:
    body = {"model": "gpt-4o", "stream": True, "stream_options": options, "max_tokens": 5}
    body |= {"messages": MESSAGES} if path == "/chat/completions" else {"prompt": "Hello"}
    error = assert_openai_error(await gw.http("alice").post(path, json=body))
    assert error["type"] == "invalid_request_error" and "stream_options" in error["message"]
    assert_nothing_sent_or_held(gw)


@anyio
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/embeddings", {"model": "text-embedding-3-small", "input": 5}, "input"),
        ("/embeddings", {"model": "text-embedding-3-small", "input": {"a": 1}}, "input"),
        ("/completions", {"model": "gpt-4o", "prompt": True, "max_tokens": 5}, "prompt"),
        ("/completions", {"model": "gpt-4o", "prompt": 7, "max_tokens": 5}, "prompt"),
        ("/responses", {"model": "gpt-4o", "input": 5, "max_output_tokens": 5}, "input"),
        ("/chat/completions", {**CHAT, "messages": True}, "messages"),
        ("/chat/completions", {**CHAT, "messages": "Hello"}, "messages"),
        ("/chat/completions", {**CHAT, "tools": 5}, "tools"),
        ("/chat/completions", {**CHAT, "tools": {"type": "function"}}, "tools"),
    ],
)
async def test_input_of_the_wrong_type(
    gw: InProcessGateway, path: str, body: dict[str, Any], field: str
) -> None:
    error = assert_openai_error(await gw.http("alice").post(path, json=body))
    assert error["type"] == "invalid_request_error" and f"'{field}'" in error["message"], error
    assert_nothing_sent_or_held(gw)


@anyio
async def test_anthropic_system_of_the_wrong_type(gw: InProcessGateway) -> None:
    error = assert_anthropic_error(await gw.http("alice").post("/messages", json={**ANTHROPIC, "system": 5}))
    assert error["type"] == "invalid_request_error" and "'system'" in error["message"]
    assert_nothing_sent_or_held(gw)


# -- numbers no ledger can hold ----------------------------------------------------------------


@anyio
@pytest.mark.parametrize(
    "extra",
    [
        {"max_tokens": 1e30},
        {"max_tokens": 10**17},
        {"max_tokens": 10**30},
        {"max_completion_tokens": 10**17},
        {"n": 10**17},
        {"n": 1e30},
        {"n": 10**9, "max_tokens": 10**9},  # each fits; the worst case does not
    ],
)
async def test_counts_too_large(gw: InProcessGateway, extra: dict[str, Any]) -> None:
    error = assert_openai_error(await gw.http("alice").post("/chat/completions", json={**CHAT, **extra}))
    assert error["type"] == "invalid_request_error"
    assert_nothing_sent_or_held(gw)


@anyio
async def test_counts_too_large_anthropic(gw: InProcessGateway) -> None:
    r = await gw.http("alice").post("/messages", json={**ANTHROPIC, "max_tokens": 10**17})
    assert assert_anthropic_error(r)["type"] == "invalid_request_error"
    assert_nothing_sent_or_held(gw)


@anyio
async def test_a_large_but_storable_worst_case_is_a_budget_refusal(gw: InProcessGateway) -> None:
    # 10**9 output tokens of gpt-4o: 10,000 USD, over the 100 USD budget: a 429, not a 400.
    r = await gw.http("alice").post("/chat/completions", json={**CHAT, "max_tokens": 10**9})
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    assert_nothing_sent_or_held(gw)


# -- JSON no one can encode or walk ------------------------------------------------------------


@anyio
@pytest.mark.parametrize(
    "path", ["/chat/completions", "/completions", "/embeddings", "/responses", "/messages"]
)
@pytest.mark.parametrize("where", ["top", "content"])
async def test_json_nested_too_deep(gw: InProcessGateway, path: str, where: str) -> None:
    deep = nested(DEEP)
    if where == "top":
        raw = deep
    else:
        model = "claude-haiku-4-5" if path == "/messages" else "gpt-4o"
        raw = f'{{"model": "{model}", "max_tokens": 5, "messages": [{{"role": "user", "content": {deep}}}]}}'
    r = await post_raw(gw, path, raw.encode())
    error = assert_anthropic_error(r) if path == "/messages" else assert_openai_error(r)
    assert "nested" in error["message"]
    assert_nothing_sent_or_held(gw)


@anyio
@pytest.mark.parametrize("depth", [200, 900])
async def test_json_nested_deep_but_parseable(gw: InProcessGateway, depth: int) -> None:
    # json.loads takes it; the estimate refuses it before any code walks it recursively.
    raw = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x", "metadata": None}]})
    raw = raw.replace("null", nested(depth))
    error = assert_openai_error(await post_raw(gw, "/chat/completions", raw.encode()))
    assert "nested" in error["message"]
    assert_nothing_sent_or_held(gw)


@anyio
@pytest.mark.parametrize(
    ("path", "template"),
    [
        (
            "/chat/completions",
            '{"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "a%sb"}]}',
        ),
        (
            "/chat/completions",
            '{"model": "gpt-4o", "max_tokens": 5, "user": "%s", "messages": [{"role": "user", "content": "a"}]}',
        ),
        (
            "/chat/completions",
            '{"model": "gpt-%s", "max_tokens": 5, "messages": [{"role": "user", "content": "a"}]}',
        ),
        (
            "/chat/completions",
            '{"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "a", "%s": 1}]}',
        ),
        ("/embeddings", '{"model": "text-embedding-3-small", "input": ["%s"]}'),
        (
            "/messages",
            '{"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "%s"}]}',
        ),
    ],
)
@pytest.mark.parametrize("surrogate", ["\\ud800", "\\udfff", "\\ude00\\ud83d"])
async def test_lone_surrogate(gw: InProcessGateway, path: str, template: str, surrogate: str) -> None:
    r = await post_raw(gw, path, (template % surrogate).encode())
    error = assert_anthropic_error(r) if path == "/messages" else assert_openai_error(r)
    assert "surrogate" in error["message"], error
    assert_nothing_sent_or_held(gw)
    assert (await gw.http(base="").get("/metrics")).status_code == 200  # no unencodable label


@anyio
async def test_a_surrogate_pair_is_text(gw: InProcessGateway) -> None:
    raw = b'{"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    r = await post_raw(gw, "/chat/completions", raw)
    assert r.status_code == 200, r.text
    assert json.loads(gw.upstream.received[0].body)["messages"][0]["content"] == "\U0001f600"


# -- unknown routes and wrong methods ----------------------------------------------------------


@anyio
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/chat/completions", 405),
        ("PUT", "/v1/embeddings", 405),
        ("POST", "/v1/files", 404),
        ("GET", "/v1/files", 404),
        ("POST", "/v1/models", 405),
        ("GET", "/nothing", 404),
        ("DELETE", "/healthz", 405),
    ],
)
async def test_unknown_route_or_method_openai(
    gw: InProcessGateway, method: str, path: str, status: int
) -> None:
    r = await gw.http("alice", base="").request(method, path)
    error = assert_openai_error(r, status)
    assert error["type"] == "invalid_request_error" and error["code"] == (
        "method_not_allowed" if status == 405 else "not_found"
    )
    if status == 405:
        assert r.headers["allow"]


@anyio
@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_wrong_method_on_messages_is_anthropic_shaped(gw: InProcessGateway, method: str) -> None:
    r = await gw.http("alice").request(method, "/messages")
    assert assert_anthropic_error(r, 405)["type"] == "invalid_request_error"
    assert r.headers["allow"] == "POST"


@anyio
async def test_head_on_a_get_route_still_answers(gw: InProcessGateway) -> None:
    assert (await gw.http(base="").head("/healthz")).status_code == 200


# -- the admin API -----------------------------------------------------------------------------


@anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/budgets"),
        ("PATCH", "/budgets/global"),
        ("POST", "/budgets/global/reset"),
        ("POST", "/keys"),
    ],
)
async def test_admin_json_nested_too_deep(gw: InProcessGateway, method: str, path: str) -> None:
    r = await gw.admin().request(method, path, content=nested(DEEP).encode())
    error = assert_openai_error(r)
    assert error["code"] == "invalid_json" and "nested" in error["message"]


@anyio
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/budgets", {"id": "big", "limit": "1" * 40}),
        ("POST", "/budgets", {"id": "big", "limit": int("1" * 40)}),
        ("PATCH", "/budgets/global", {"limit": "1" * 40}),
        ("POST", "/keys", {"user": "zed", "budget": "1" * 40}),
    ],
)
async def test_admin_limit_too_large(
    gw: InProcessGateway, method: str, path: str, body: dict[str, Any]
) -> None:
    admin = gw.admin()
    error = assert_openai_error(await admin.request(method, path, json=body))
    assert error["code"] == "invalid_field" and "at most" in error["message"], error
    budgets = {b["id"]: b for b in (await admin.get("/budgets")).json()["data"]}
    assert "big" not in budgets and budgets["global"]["limit"] == "100"
    assert [k["user"] for k in (await admin.get("/keys")).json()["data"] if k["user"] == "zed"] == []


@anyio
async def test_admin_lone_surrogate(gw: InProcessGateway) -> None:
    r = await gw.admin().post("/keys", content=b'{"user": "\\ud800"}')
    error = assert_openai_error(r)
    assert error["code"] == "invalid_json" and "surrogate" in error["message"]


# -- the core refuses them too (every surface: SDK wrappers, Client) ------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("chat", {**CHAT, "stream": True, "stream_options": "x"}),
        ("embeddings", {"model": "text-embedding-3-small", "input": 5}),
        ("completions", {"model": "gpt-4o", "prompt": True, "max_tokens": 5}),
        ("chat", {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}),
        ("chat", {**CHAT, "max_tokens": 10**17}),
        ("chat", {**CHAT, "n": 10**17}),
        ("chat", {**CHAT, "messages": json.loads(nested(500))}),
    ],
)
def test_estimate_refuses(endpoint: Any, body: dict[str, Any]) -> None:
    with pytest.raises(EstimateError):
        estimate_request(endpoint, body, catalog=Catalog.default())


def test_token_counter_refuses_what_it_cannot_measure() -> None:
    counter = TokenCounter(use_env=False, use_tiktoken_cache=False, use_packages=False)
    with pytest.raises(TypeError, match="prompt"):
        counter.count_prompt("gpt-4o", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prompt"):
        counter.count_prompt("gpt-4o", {"a": 1})  # type: ignore[arg-type]
    deep: list[Any] = []
    inner = deep
    for _ in range(DEEP):
        inner.append([])
        inner = inner[0]
    with pytest.raises(ValueError, match="nested"):
        counter.count_messages("gpt-4o", [{"role": "user", "content": [deep]}])
