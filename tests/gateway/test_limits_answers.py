"""What the gateway answers when a rate limit refuses: 429 with Retry-After and OpenAI's
``x-ratelimit-*`` headers (Anthropic's too on /v1/messages) and a body naming the limit, 400 for
a prompt over a ``prompt_tokens`` limit, 400 for a request over its own ``x-spendgate-max-cost``;
the limit metrics. In process, on a SQLite ledger whose clock the test moves (``ManualClock``):
the windows' arithmetic is exact."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from spendgate.clock import ManualClock
from spendgate.gateway.app import GatewayState, create_app
from spendgate.gateway.config import parse_settings
from spendgate.gateway.keys import open_keystore
from spendgate.gateway.proxy import go_duration
from spendgate.ledger import open_ledger
from spendgate.limits import BUCKETS

from .inprocess import ADMIN_TOKEN, DEFAULT_KEYS, InProcessGateway, InProcessUpstream, config

pytestmark = pytest.mark.anyio

#: A whole second, and so a whole bucket of every window here: retry times are exact.
START = "2027-03-01T00:00:00Z"
CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 20,
}


@contextlib.asynccontextmanager
async def limited(tmp: Path, clock: ManualClock, **overrides: Any) -> AsyncIterator[InProcessGateway]:
    """``InProcessGateway.start`` with the ledger on ``clock``."""
    settings = parse_settings(
        config(f"sqlite:///{tmp / 'ledger.db'}", **overrides), environ={"SPENDGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    store = open_keystore(settings.ledger)
    made = {name: store.create(name=name, **spec) for name, spec in DEFAULT_KEYS.items()}
    ledger = open_ledger(settings.ledger, clock=clock)
    upstream = InProcessUpstream()
    app = create_app(GatewayState.build(settings, keys=store, client=upstream, ledger=ledger))
    gw = InProcessGateway(app, upstream, made)
    try:
        yield gw
    finally:
        for client in gw._clients:
            await client.aclose()
        await app.aclose()
        await upstream.aclose()
        ledger.close()
        store.close()


def window_retry(per_seconds: int) -> float:
    """A window's wait from a request at the start of a bucket: its bucket leaves the window
    when the current one is BUCKETS + 1 later."""
    return per_seconds * (BUCKETS + 1) / BUCKETS


async def metrics_text(gw: InProcessGateway) -> str:
    response = await gw.http(base="").get("/metrics")
    assert response.status_code == 200
    return response.text


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_requests_limit_answers_429_with_openai_headers(tmp_path: Path) -> None:
    clock = ManualClock(START)
    limits = [{"id": "alice-rpm", "selector": {"user": "alice"}, "requests": 2, "per": "10s"}]
    async with limited(tmp_path, clock, limits=limits) as gw:
        client = gw.openai("alice")
        for _ in range(2):
            await client.chat.completions.create(**CHAT)
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(**CHAT)
        err = info.value
        headers = err.response.headers
        retry = window_retry(10)  # 10.5 s
        assert headers["retry-after"] == str(math.ceil(retry)) == "11"
        assert headers["retry-after-ms"] == "10500"
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"] == "10.5s"
        assert "x-should-retry" not in headers
        assert "x-ratelimit-limit-tokens" not in headers
        body = err.response.json()["error"]
        assert (body["type"], body["code"]) == ("rate_limit_exceeded", "rate_limit_exceeded")
        assert "Rate limit exceeded" in body["message"] and "alice-rpm" not in body["message"]
        limit = body["limit"]
        assert limit["id"] == "alice-rpm" and limit["kind"] == "requests"
        assert (limit["amount"], limit["used"], limit["remaining"], limit["requested"]) == (
            "2",
            "2",
            "0",
            "1",
        )
        assert (limit["per_seconds"], limit["retry_after"]) == (10, retry)
        assert limit["selector"] == {"user": "alice"}
        assert len(gw.upstream.received) == 2  # the refused one never reached the upstream

        # Another user is not counted under alice's limit.
        await gw.openai("tiny").embeddings.create(model="text-embedding-3-small", input="x")

        text = await metrics_text(gw)
        assert metric(text, "spendgate_limit_refusals_total", limit="alice-rpm", kind="requests") == 1.0
        assert metric(text, "spendgate_limit_used", limit="alice-rpm", kind="requests") == 2.0
        assert metric(text, "spendgate_limit_usage_ratio", limit="alice-rpm", kind="requests") == 1.0
        assert metric(text, "spendgate_refusals_total", reason="rate_limit") == 1.0

        clock.advance(retry - 0.001)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(**CHAT)
        clock.advance(0.001)  # exactly when the 429 said: admitted
        await client.chat.completions.create(**CHAT)


async def test_a_limit_nothing_fits_answers_429_without_retry_after(tmp_path: Path) -> None:
    clock = ManualClock(START)
    limits = [
        {"id": "paused", "selector": {"user": "alice"}, "requests": 0, "per": "1m"},
        {"id": "tiny-usd", "selector": {"user": "tiny"}, "usd": "0.000001", "per": "1h"},
    ]
    async with limited(tmp_path, clock, limits=limits) as gw:
        response = await gw.http("alice").post("/chat/completions", json=CHAT)
        assert response.status_code == 429
        assert "retry-after" not in response.headers and "x-ratelimit-reset-requests" not in response.headers
        assert response.headers["x-ratelimit-limit-requests"] == "0"
        assert response.headers["x-should-retry"] == "false"  # the SDKs' own: do not retry
        limit = response.json()["error"]["limit"]
        assert (limit["id"], limit["retry_after"]) == ("paused", None)
        assert "larger than the limit on its own" in response.json()["error"]["message"]

        # A USD rate: no OpenAI header has a USD field; the body says it all.
        response = await gw.http("tiny").post("/chat/completions", json=CHAT)
        assert response.status_code == 429, response.text
        assert not [name for name in response.headers if name.startswith("x-ratelimit-")]
        assert "retry-after" not in response.headers
        limit = response.json()["error"]["limit"]
        assert (limit["id"], limit["kind"], limit["per_seconds"]) == ("tiny-usd", "usd", 3600)
        assert limit["limit"] == "$0.000001"
        assert gw.upstream.received == []


async def test_usd_limit_that_fits_later_says_when(tmp_path: Path) -> None:
    clock = ManualClock(START)
    limits = [{"id": "usd-rate", "selector": {"user": "alice"}, "usd": "0.0008", "per": "1m"}]
    async with limited(tmp_path, clock, limits=limits) as gw:
        http = gw.http("alice")
        assert (await http.post("/chat/completions", json=CHAT)).status_code == 200
        # gpt-4o: the first request cost ~0.0002 USD (its worst case ~0.0004); a bigger one
        # fits the rate alone but not on top of it.
        big = {**CHAT, "max_tokens": 40}
        response = await http.post("/chat/completions", json=big)
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"] == str(math.ceil(window_retry(60))) == "63"
        limit = response.json()["error"]["limit"]
        assert limit["kind"] == "usd" and limit["amount"] == "0.0008"  # USD, as the admin API says it
        assert Decimal("0") < Decimal(limit["used"]) < Decimal("0.0008")
        clock.advance(window_retry(60))
        assert (await http.post("/chat/completions", json=big)).status_code == 200


async def test_tokens_limit_answers_with_token_headers_on_both_apis(tmp_path: Path) -> None:
    clock = ManualClock(START)
    limits = [{"id": "alice-tpm", "selector": {"user": "alice"}, "tokens": 1000, "per": "1m"}]
    async with limited(tmp_path, clock, limits=limits) as gw:
        gw.upstream.hold()  # the first request holds its worst case: 600 output + its prompt
        first = asyncio.ensure_future(
            gw.http("alice").post("/chat/completions", json={**CHAT, "max_tokens": 600})
        )
        await gw.upstream.wait_for(1)
        held = gw.ledger.limit_usage("alice-tpm").used
        assert held > 600

        with pytest.raises(openai.RateLimitError) as info:
            await gw.openai("alice").chat.completions.create(**{**CHAT, "max_tokens": 500})
        headers = info.value.response.headers
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert headers["x-ratelimit-remaining-tokens"] == str(1000 - held)
        assert headers["x-ratelimit-reset-tokens"] == "1m3s"
        assert headers["retry-after"] == "63"
        assert "x-ratelimit-limit-requests" not in headers
        limit = info.value.response.json()["error"]["limit"]
        assert (limit["kind"], limit["used"]) == ("tokens", str(held))

        # The Anthropic API: its error shape and its own rate-limit headers.
        with pytest.raises(anthropic.RateLimitError) as refused:
            await gw.anthropic("alice").messages.create(
                model="claude-sonnet-4-5", max_tokens=500, messages=[{"role": "user", "content": "hi"}]
            )
        payload = refused.value.response.json()
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "rate_limit_exceeded"
        assert payload["error"]["limit"]["id"] == "alice-tpm"
        headers = refused.value.response.headers
        assert headers["anthropic-ratelimit-tokens-limit"] == "1000"
        assert headers["anthropic-ratelimit-tokens-remaining"] == str(1000 - held)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", headers["anthropic-ratelimit-tokens-reset"])
        assert headers["x-ratelimit-limit-tokens"] == "1000"

        gw.upstream.release()
        assert (await first).status_code == 200
        # Settled: the fake's 16 output tokens replace the 600 reserved; the rest is given back.
        assert gw.ledger.limit_usage("alice-tpm").used < 100
        await gw.openai("alice").chat.completions.create(**{**CHAT, "max_tokens": 500})


async def test_concurrency_limit_answers_429_and_frees_when_the_call_ends(tmp_path: Path) -> None:
    clock = ManualClock(START)
    limits = [{"id": "one-at-a-time", "selector": {"user": "alice"}, "concurrency": 1}]
    async with limited(tmp_path, clock, limits=limits) as gw:
        gw.upstream.hold()
        first = asyncio.ensure_future(gw.http("alice").post("/chat/completions", json=CHAT))
        await gw.upstream.wait_for(1)
        with pytest.raises(openai.RateLimitError) as info:
            await gw.openai("alice").chat.completions.create(**CHAT)
        headers = info.value.response.headers
        assert headers["x-ratelimit-limit-requests"] == "1"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"] == "0s"  # as soon as the one in flight ends
        assert headers["retry-after"] == "1"  # never "retry now": no busy loop
        assert "retry-after-ms" not in headers
        limit = info.value.response.json()["error"]["limit"]
        assert (limit["kind"], limit["used"], limit["per_seconds"]) == ("concurrency", "1", None)
        text = await metrics_text(gw)
        assert metric(text, "spendgate_limit_used", limit="one-at-a-time", kind="concurrency") == 1.0

        gw.upstream.release()
        assert (await first).status_code == 200
        await gw.openai("alice").chat.completions.create(**CHAT)  # no clock moved: released at the end
        text = await metrics_text(gw)
        assert metric(text, "spendgate_limit_used", limit="one-at-a-time", kind="concurrency") == 0.0
        assert (
            metric(text, "spendgate_limit_refusals_total", limit="one-at-a-time", kind="concurrency") == 1.0
        )


async def test_prompt_over_a_prompt_tokens_limit_answers_400(tmp_path: Path) -> None:
    clock = ManualClock(START)
    limits = [{"id": "short-prompts", "selector": {"key": "*"}, "prompt_tokens": 50}]
    async with limited(tmp_path, clock, limits=limits) as gw:
        await gw.openai("alice").chat.completions.create(**CHAT)
        long = {**CHAT, "messages": [{"role": "user", "content": "word " * 200}]}
        with pytest.raises(openai.BadRequestError) as info:
            await gw.openai("alice").chat.completions.create(**long)
        body = info.value.response.json()["error"]
        assert (body["type"], body["code"], body["param"]) == (
            "invalid_request_error",
            "prompt_too_large",
            "messages",
        )
        assert body["prompt_tokens"] > 50 and body["limit"]["requested"] == str(body["prompt_tokens"])
        assert body["limit"]["id"] == "short-prompts" and body["limit"]["amount"] == "50"
        assert "Prompt too large" in body["message"]
        assert "retry-after" not in info.value.response.headers

        with pytest.raises(anthropic.BadRequestError) as refused:
            await gw.anthropic("alice").messages.create(
                model="claude-sonnet-4-5",
                max_tokens=10,
                messages=[{"role": "user", "content": "word " * 200}],
            )
        payload = refused.value.response.json()
        assert (payload["type"], payload["error"]["code"]) == ("error", "prompt_too_large")
        text = await metrics_text(gw)
        assert (
            metric(text, "spendgate_limit_refusals_total", limit="short-prompts", kind="prompt_tokens") == 2.0
        )
        assert metric(text, "spendgate_refusals_total", reason="prompt_too_large") == 2.0
        # A wildcard limit: its instances are keys, never labels; no use gauge for it.
        assert metric(text, "spendgate_limit_used", limit="short-prompts") is None
        assert len(gw.upstream.received) == 1


async def test_wildcard_limit_counts_per_key_and_labels_only_its_id(tmp_path: Path) -> None:
    clock = ManualClock(START)
    limits = [{"id": "per-key", "selector": {"key": "*"}, "requests": 1, "per": "1m"}]
    async with limited(tmp_path, clock, limits=limits) as gw:
        for name in ("alice", "tiny"):
            assert (await gw.http(name).post("/chat/completions", json=CHAT)).status_code == 200
        for name in ("alice", "tiny"):
            response = await gw.http(name).post("/chat/completions", json=CHAT)
            assert response.status_code == 429
            assert response.json()["error"]["limit"]["selector"] == {"key": gw.key(name).id}
        text = await metrics_text(gw)
        assert metric(text, "spendgate_limit_refusals_total", limit="per-key", kind="requests") == 2.0
        limit_lines = [line for line in text.splitlines() if "spendgate_limit_" in line]
        assert limit_lines and not [line for line in limit_lines if "key_" in line]


async def test_paced_budget_refusal_is_429_with_retry_after(tmp_path: Path) -> None:
    clock = ManualClock(START)
    budgets = [
        {"id": "global", "limit": "100", "window": "day"},
        {"id": "paced", "selector": {"user": "alice"}, "limit": "0.009", "window": "month", "pace": "even"},
    ]
    async with limited(tmp_path, clock, budgets=budgets) as gw:
        http = gw.http("alice")
        # March 2027 in 30 steps of 31/30 days: on its first day the budget allows 1/30 of its
        # limit (0.0003 USD): one request of this size (a worst case of 0.0002 USD) and not two.
        body = {**CHAT, "max_tokens": 10}
        assert (await http.post("/chat/completions", json=body)).status_code == 200
        response = await http.post("/chat/completions", json=body)
        assert response.status_code == 429, response.text
        error = response.json()["error"]
        assert (error["code"], error["budget"]["paced"]) == ("budget_exceeded", True)
        retry = error["budget"]["retry_after"]
        step = timedelta(days=31 / 30).total_seconds()
        assert retry == step  # the next step, not the month's end
        assert response.headers["retry-after"] == str(math.ceil(retry))
        clock.advance(retry)
        assert (await http.post("/chat/completions", json=body)).status_code == 200
        assert "x-ratelimit-limit-requests" not in response.headers


async def test_max_cost_header_caps_the_request_and_is_never_forwarded(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with limited(tmp_path, clock) as gw:
        http = gw.http("alice")
        ok = await http.post("/chat/completions", json=CHAT, headers={"x-spendgate-max-cost": "0.50"})
        assert ok.status_code == 200, ok.text
        assert "x-spendgate-max-cost" not in gw.upstream.received[-1].headers
        assert not [h for h in gw.upstream.received[-1].headers if h.lower().startswith("x-spendgate")]

        big = {**CHAT, "max_tokens": 4000}  # gpt-4o: up to ~0.04 USD
        response = await http.post("/chat/completions", json=big, headers={"x-spendgate-max-cost": "0.001"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("cost_cap_exceeded", "x-spendgate-max-cost")
        assert error["cost_cap"]["max_cost_usd"] == "0.001"
        assert "x-spendgate-max-cost" in error["message"]
        assert error["cost_cap"]["max_output_tokens_affordable"] is not None
        assert len(gw.upstream.received) == 1

        # Through the SDK, as a default header.
        capped = openai.AsyncOpenAI(
            base_url=gw.openai("alice").base_url,
            api_key=gw.secret("alice"),
            max_retries=0,
            http_client=gw._sdk_client(),
            default_headers={"x-spendgate-max-cost": "0.001"},
        )
        with pytest.raises(openai.BadRequestError) as info:
            await capped.chat.completions.create(**big)
        assert info.value.code == "cost_cap_exceeded"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "empty"),
        ("lots", "cannot read"),
        ("-1", "negative"),
        ("NaN", ""),
        ("1" * 70, "too long"),
    ],
)
async def test_a_bad_max_cost_header_is_a_clear_400(tmp_path: Path, value: str, words: str) -> None:
    async with limited(tmp_path, ManualClock(START)) as gw:
        response = await gw.http("alice").post(
            "/chat/completions", json=CHAT, headers={"x-spendgate-max-cost": value}
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_max_cost", "x-spendgate-max-cost")
        assert "x-spendgate-max-cost is the most this request may cost, in USD" in error["message"]
        assert words.lower() in error["message"].lower()
        assert gw.upstream.received == []


async def test_two_different_max_cost_headers_are_refused(tmp_path: Path) -> None:
    async with limited(tmp_path, ManualClock(START)) as gw:
        response = await gw.http("alice").post(
            "/chat/completions",
            json=CHAT,
            headers=[("x-spendgate-max-cost", "1"), ("x-spendgate-max-cost", "2")],
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_max_cost"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "1ms"),
        (0.25, "250ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (10.5, "10.5s"),
        (63, "1m3s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (86400 + 1.25, "24h0m1.25s"),
    ],
)
def test_reset_headers_use_openais_duration_format(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
