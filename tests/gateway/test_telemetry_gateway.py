"""Telemetry under the gateway: one SERVER span per request from its one log line (the guard's
fields and the HTTP status), in process on the SDK's in-memory exporters, and from a real
``spendgate serve`` process to a real OTLP/HTTP receiver, flushed when the gateway stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from spendgate.testing import FakeUpstream
from spendgate.testing.otel import InMemoryTelemetry, OtlpReceiver

from .conftest import billed, start_env
from .inprocess import InProcessGateway

CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Hello"}],
    "max_tokens": 5,
}
BUDGETS = [
    {"id": "global", "limit": "100", "window": "day"},
    {"id": "tiny", "selector": {"user": "tiny"}, "limit": "0.001", "window": "day"},
]
#: What changes from run to run, compared apart.
VOLATILE = (
    "spendgate.request.id",
    "spendgate.budget.remaining.usd",
    "spendgate.retry_after.seconds",
    "spendgate.waited.seconds",  # there when admission took over 1 ms (a busy machine)
)


@pytest.fixture
def otel() -> Iterator[InMemoryTelemetry]:
    with InMemoryTelemetry() as memory:
        yield memory


def steady(span: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(span.attributes or {}).items() if k not in VOLATILE}


def cost(body: dict[str, Any], output: int) -> float:
    return float(billed("/v1/chat/completions", body, output).decimal_str())


@pytest.mark.anyio
async def test_ok_refused_upstream_error_and_stream_spans(tmp_path: Path, otel: InMemoryTelemetry) -> None:
    async with InProcessGateway.start(tmp_path, budgets=BUDGETS) as gw:
        alice, tiny = gw.key("alice").id, gw.key("tiny").id
        http = gw.http("alice")
        assert (await http.post("/chat/completions", json=CHAT)).status_code == 200
        refused = await gw.http("tiny").post("/chat/completions", json={**CHAT, "max_tokens": 1000})
        assert refused.status_code == 429
        failed = await http.post("/chat/completions", json=CHAT, headers={"x-fake-error": "500"})
        assert failed.status_code == 500
        streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        assert (await http.post("/chat/completions", json=streamed)).status_code == 200
        assert (await gw.http().post("/chat/completions", json=CHAT)).status_code == 401
    ok, no, error, stream, anonymous = otel.spans()
    for span in (ok, no, error, stream, anonymous):
        assert span.kind is SpanKind.SERVER
    common = {
        "gen_ai.operation.name": "chat",
        "spendgate.endpoint": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.max_tokens": 5,
    }
    got = steady(ok)
    got.pop("spendgate.reserved.usd")
    assert ok.name == "chat gpt-4o" and ok.status.status_code is StatusCode.UNSET
    assert got == {
        **common,
        "spendgate.outcome": "ok",
        "spendgate.action": "settle",
        "http.response.status_code": 200,
        "spendgate.upstream.status_code": 200,
        "spendgate.cost.usd": cost(CHAT, 5),
        "spendgate.budget.ids": ("global",),
        "spendgate.key.id": alice,
        "spendgate.team": "research",
        "gen_ai.usage.input_tokens": got["gen_ai.usage.input_tokens"],
        "gen_ai.usage.output_tokens": 5,
    }
    assert got["gen_ai.usage.input_tokens"] > 0
    assert no.status.status_code is StatusCode.ERROR
    assert steady(no) == {
        **common,
        "gen_ai.request.max_tokens": 1000,
        "spendgate.outcome": "budget_exceeded",
        "error.type": "budget_exceeded",
        "spendgate.action": "refuse",
        "spendgate.reason": "budget_exceeded",
        "http.response.status_code": 429,
        "spendgate.estimate.usd": steady(no)["spendgate.estimate.usd"],
        "spendgate.budget.ids": ("tiny",),
        "spendgate.budget.refused_by": "tiny",
        "spendgate.key.id": tiny,
    }
    assert steady(no)["spendgate.estimate.usd"] > 0.001  # more than the budget's limit
    got = steady(error)
    got.pop("spendgate.reserved.usd")
    assert error.status.status_code is StatusCode.ERROR and error.status.description == "500"
    assert got == {
        **common,
        "spendgate.outcome": "upstream_error",
        "error.type": "500",
        "spendgate.action": "release",
        "spendgate.reason": got["spendgate.reason"],
        "http.response.status_code": 500,
        "spendgate.upstream.status_code": 500,
        "spendgate.cost.usd": 0.0,
        "spendgate.budget.ids": ("global",),
        "spendgate.key.id": alice,
        "spendgate.team": "research",
    }
    assert steady(stream)["spendgate.outcome"] == "ok"
    assert steady(stream)["spendgate.cost.usd"] == cost(CHAT, 5)  # streamed costs the same
    assert steady(stream)["gen_ai.usage.output_tokens"] == 5
    assert anonymous.name == "chat" and steady(anonymous) == {
        "gen_ai.operation.name": "chat",
        "spendgate.endpoint": "chat",
        "spendgate.outcome": "error",
        "error.type": "missing_api_key",
        "http.response.status_code": 401,
    }

    key = frozenset
    base = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.provider.name": "openai",
    }
    requests = otel.metric("spendgate.requests")
    assert requests[key({**base, "spendgate.outcome": "ok"}.items())] == 2
    assert (
        requests[
            key({**base, "spendgate.outcome": "budget_exceeded", "error.type": "budget_exceeded"}.items())
        ]
        == 1
    )
    assert requests[key({**base, "spendgate.outcome": "upstream_error", "error.type": "500"}.items())] == 1
    assert otel.metric("spendgate.cost") == {
        key({**base, "spendgate.outcome": "ok", "spendgate.key.id": alice}.items()): pytest.approx(
            2 * cost(CHAT, 5)
        )
    }
    assert (
        otel.metric("spendgate.tokens")[
            key({**base, "spendgate.outcome": "ok", "gen_ai.token.type": "output"}.items())
        ]
        == 10
    )
    assert sum(otel.metric("gen_ai.server.request.duration").values()) == 5
    assert otel.metric("gen_ai.client.operation.duration") == {}


@pytest.mark.anyio
async def test_a_cut_stream_is_an_error_span_charged_its_bound(
    tmp_path: Path, otel: InMemoryTelemetry
) -> None:
    async with InProcessGateway.start(tmp_path) as gw:
        body = {**CHAT, "max_tokens": 10, "stream": True}
        r = await gw.http("alice").post(
            "/chat/completions", json=body, headers={"x-fake-stream-cut-after": "3"}
        )
        assert r.status_code == 200
        [record] = gw.ledger.query_requests(limit=5)
    [span] = otel.spans()
    got = steady(span)
    assert (got["spendgate.outcome"], got["error.type"], span.status.status_code) == (
        "cut",
        "cut",
        StatusCode.ERROR,
    )
    assert got["spendgate.cost.usd"] == float(record.cost.decimal_str()) > 0
    assert "gen_ai.usage.output_tokens" not in got  # a bound charged is no token count


# -- a real gateway process, a real OTLP/HTTP receiver --------------------------------------------


def test_a_gateway_process_exports_spans_and_metrics_over_otlp(
    tmp_path: Path, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpReceiver() as otlp:
        monkeypatch.setenv("OTLP_TEST_HEADERS", "x-collector-key=k-123")
        telemetry = {
            "endpoint": otlp.url,
            "headers_env": "OTLP_TEST_HEADERS",
            "service_name": "gateway-under-test",
            "export_interval": 600,  # only the flush at the stop exports metrics
        }
        gateway, keys = start_env(tmp_path, up, budgets=BUDGETS, telemetry=telemetry)
        try:
            alice = openai.OpenAI(base_url=gateway.base_url, api_key=keys["alice"][1], max_retries=0)
            alice.chat.completions.create(**CHAT)
            stream = alice.chat.completions.create(
                **CHAT, stream=True, stream_options={"include_usage": True}
            )
            for _ in stream:
                pass
            tiny = openai.OpenAI(base_url=gateway.base_url, api_key=keys["tiny"][1], max_retries=0)
            with pytest.raises(openai.RateLimitError):
                tiny.chat.completions.create(**{**CHAT, "max_tokens": 1000})
            trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
            r = httpx.post(
                gateway.base_url + "/chat/completions",
                json=CHAT,
                headers={
                    "authorization": f"Bearer {keys['alice'][1]}",
                    "traceparent": f"00-{trace_id}-{parent_id}-01",
                },
                timeout=10,
            )
            assert r.status_code == 200
        finally:
            assert gateway.stop() == 0  # SIGTERM: the lifespan shutdown exports what is queued
        spans = otlp.wait_spans(lambda got: len(got) >= 4, timeout=5)
        assert len(spans) == 4
        ok, stream_span, refused, traced = sorted(spans, key=lambda s: s.start_ns)
        assert all(
            s.kind == 2 and s.resource["service.name"] == "gateway-under-test" for s in spans
        )  # SERVER
        assert ok.name == "chat gpt-4o" and ok.attributes["spendgate.outcome"] == "ok"
        assert ok.attributes["spendgate.cost.usd"] == cost(CHAT, 5)
        assert ok.attributes["gen_ai.usage.output_tokens"] == 5
        assert stream_span.attributes["spendgate.cost.usd"] == cost(CHAT, 5)
        assert refused.attributes["spendgate.outcome"] == "budget_exceeded"
        assert refused.attributes["spendgate.budget.refused_by"] == "tiny"
        assert refused.attributes["http.response.status_code"] == 429 and refused.status_code == 2
        assert (traced.trace_id, traced.parent_span_id) == (trace_id, parent_id)  # the client's trace
        assert ok.parent_span_id == ""
        # Metrics: exported once, at the stop (the interval is 10 minutes).
        otlp.wait(lambda: bool(otlp.latest("spendgate.requests")), timeout=5)
        requests = {
            p.attributes["spendgate.outcome"]: p.value for p in otlp.latest("spendgate.requests").values()
        }
        assert requests == {"ok": 3, "budget_exceeded": 1}
        [charged] = otlp.latest("spendgate.cost").values()
        assert charged.value == pytest.approx(3 * cost(CHAT, 5)) and charged.unit == "USD"
        assert charged.attributes["spendgate.key.id"] == keys["alice"][0].id
        tokens = {
            p.attributes["gen_ai.token.type"]: p.value for p in otlp.latest("spendgate.tokens").values()
        }
        assert tokens["output"] == 15
        durations = otlp.latest("gen_ai.server.request.duration")
        assert sum(p.count for p in durations.values()) == 4 and all(
            p.unit == "s" for p in durations.values()
        )
        assert all(headers.get("x-collector-key") == "k-123" for _, headers in otlp.requests)
