"""spendgate.telemetry in the SDK: one span per request from the request line the guard builds
(ended, refused), the metrics beside it, the config and errors, and no cost when off: the
gateway's side is tests/gateway/test_telemetry_gateway.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.semconv._incubating.attributes import (
    enduser_attributes,
    gen_ai_attributes,
    user_attributes,
)
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.semconv.attributes import error_attributes, http_attributes
from opentelemetry.trace import SpanKind, StatusCode

from spendgate import BudgetExceededError, Guard, logs, telemetry, wrap
from spendgate.gateway.config import GatewayConfigError, parse_settings
from spendgate.money import Money
from spendgate.telemetry import TelemetrySettings, TelemetryUnavailableError, conventions
from spendgate.testing import FakeUpstream
from spendgate.testing.otel import InMemoryTelemetry, OtlpReceiver
from spendgate.usage import Usage

SRC = str(Path(__file__).resolve().parents[1] / "src")
BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "the prompt text"}],
    "max_tokens": 100,
}
BUDGETS = [{"id": "small", "limit": "0.002", "window": "day"}]
BIG = [{"id": "big", "limit": "10", "window": "day"}]


@pytest.fixture
def otel() -> Iterator[InMemoryTelemetry]:
    with InMemoryTelemetry() as memory:
        yield memory


def attrs(span: Any) -> dict[str, Any]:
    """A span's attributes, but the time its admission took (there when above 1 ms: a busy machine)."""
    got = dict(span.attributes or {})
    waited = got.pop("spendgate.waited.seconds", 0.0)
    assert waited < 5
    return got


def key(**items: str) -> frozenset[tuple[str, str]]:
    return frozenset(items.items())


GPT4O = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.provider.name": "openai",
}


def test_the_names_are_the_semantic_conventions() -> None:
    """The names spendgate writes, checked against the installed opentelemetry-semantic-conventions."""
    ga = gen_ai_attributes
    assert conventions.OPERATION == ga.GEN_AI_OPERATION_NAME
    assert conventions.PROVIDER == ga.GEN_AI_PROVIDER_NAME
    assert conventions.REQUEST_MODEL == ga.GEN_AI_REQUEST_MODEL
    assert conventions.REQUEST_MAX_TOKENS == ga.GEN_AI_REQUEST_MAX_TOKENS
    assert conventions.INPUT_TOKENS == ga.GEN_AI_USAGE_INPUT_TOKENS
    assert conventions.OUTPUT_TOKENS == ga.GEN_AI_USAGE_OUTPUT_TOKENS
    assert conventions.CACHE_READ_TOKENS == ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
    assert conventions.CACHE_CREATION_TOKENS == ga.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
    assert conventions.REASONING_TOKENS == ga.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS
    assert conventions.TOKEN_TYPE == ga.GEN_AI_TOKEN_TYPE
    assert conventions.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert conventions.HTTP_STATUS == http_attributes.HTTP_RESPONSE_STATUS_CODE
    assert conventions.USER_ID == user_attributes.USER_ID
    assert conventions.ENDUSER_ID == enduser_attributes.ENDUSER_ID
    operations = {v.value for v in ga.GenAiOperationNameValues}
    assert set(conventions.OPERATIONS.values()) <= operations
    providers = {v.value for v in ga.GenAiProviderNameValues}
    assert set(conventions.PROVIDERS.values()) <= providers
    assert gen_ai_metrics.GEN_AI_SERVER_REQUEST_DURATION == "gen_ai.server.request.duration"
    assert gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION == "gen_ai.client.operation.duration"


def test_an_sdk_request_is_one_client_span_with_its_cost(otel: InMemoryTelemetry) -> None:
    guard = Guard("memory://", budgets=BUDGETS)
    admission = guard.admit("chat", BODY, attributes={"user": "ann", "team": "research", "tags": ["x"]})
    guard.settle(admission, Usage(input_tokens=10, output_tokens=20, cache_read_tokens=4))
    guard.close()
    [span] = otel.spans()
    assert span.name == "chat gpt-4o" and span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert attrs(span) == {
        **GPT4O,
        "spendgate.endpoint": "chat",
        "spendgate.request.id": admission.request_id,
        "gen_ai.request.max_tokens": 100,
        "spendgate.outcome": "ok",
        "spendgate.action": "settle",
        # 6 x 2.5 + 4 x 1.25 + 20 x 10 per 1M tokens
        "spendgate.cost.usd": 0.00022,
        "spendgate.reserved.usd": float(admission.reserved.decimal_str()),
        "spendgate.budget.remaining.usd": 0.00178,
        "spendgate.budget.ids": ("small",),
        "spendgate.team": "research",
        "spendgate.tags": ("x",),
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 4,
    }
    assert repr(attrs(span)["spendgate.cost.usd"]) == "0.00022"  # the exact decimal, from the double
    assert "ann" not in repr(attrs(span))  # people's ids only with capture_user


def test_a_budget_refusal_is_an_error_span_naming_the_budget(otel: InMemoryTelemetry) -> None:
    guard = Guard("memory://", budgets=BUDGETS)
    with pytest.raises(BudgetExceededError) as info:
        guard.admit("chat", {**BODY, "max_tokens": 1000})
    guard.close()
    [span] = otel.spans()
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "budget_exceeded"
    got = attrs(span)
    assert got.pop("spendgate.retry_after.seconds") == pytest.approx(info.value.retry_after, abs=1)
    assert got == {
        **GPT4O,
        "spendgate.endpoint": "chat",
        "spendgate.request.id": got["spendgate.request.id"],
        "gen_ai.request.max_tokens": 1000,
        "spendgate.outcome": "budget_exceeded",
        "error.type": "budget_exceeded",
        "spendgate.action": "refuse",
        "spendgate.reason": "budget_exceeded",
        "spendgate.estimate.usd": float(info.value.requested.decimal_str()),
        "spendgate.budget.remaining.usd": 0.002,
        "spendgate.budget.ids": ("small",),
        "spendgate.budget.refused_by": "small",
    }
    assert "spendgate.cost.usd" not in got and "gen_ai.usage.input_tokens" not in got


def test_metrics_count_requests_cost_and_tokens_without_ids(otel: InMemoryTelemetry) -> None:
    guard = Guard("memory://", budgets=BUDGETS)
    for _ in range(2):
        admission = guard.admit("chat", BODY, attributes={"user": "ann", "customer": "c-1", "key": "k1"})
        guard.settle(admission, Usage(input_tokens=10, output_tokens=20))
    with pytest.raises(BudgetExceededError):
        guard.admit("chat", {**BODY, "max_tokens": 1000}, attributes={"user": "ann"})
    guard.close()
    ok = {**GPT4O, "spendgate.outcome": "ok"}
    refused = {**GPT4O, "spendgate.outcome": "budget_exceeded", "error.type": "budget_exceeded"}
    assert otel.metric("spendgate.requests") == {key(**ok): 2, key(**refused): 1}
    assert otel.metric("spendgate.cost") == {key(**ok, **{"spendgate.key.id": "k1"}): pytest.approx(0.00045)}
    assert otel.metric("spendgate.tokens") == {
        key(**ok, **{"gen_ai.token.type": "input"}): 20,
        key(**ok, **{"gen_ai.token.type": "output"}): 40,
    }
    assert otel.metric("gen_ai.client.operation.duration") == {key(**ok): 2, key(**refused): 1}
    every = repr(list(otel.points()))
    assert "ann" not in every and "c-1" not in every and "sg-" not in every


def test_user_ids_go_on_spans_only_when_asked_and_never_on_metrics() -> None:
    with InMemoryTelemetry(capture_user=True) as otel:
        guard = Guard("memory://", budgets=BUDGETS)
        admission = guard.admit("chat", BODY, attributes={"user": "ann", "customer": "c-1"})
        guard.settle(admission, Usage(input_tokens=10, output_tokens=20))
        guard.close()
        [span] = otel.spans()
        assert attrs(span)["user.id"] == "ann" and attrs(span)["enduser.id"] == "c-1"
        every = repr(list(otel.points()))
        assert "ann" not in every and "c-1" not in every


def test_the_span_joins_the_callers_trace(otel: InMemoryTelemetry) -> None:
    guard = Guard("memory://", budgets=BUDGETS)
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle a question") as parent:
        guard.settle(guard.admit("chat", BODY), Usage(input_tokens=10, output_tokens=20))
    guard.close()
    llm, outer = otel.spans()
    assert llm.parent is not None and llm.parent.span_id == parent.get_span_context().span_id
    assert llm.context.trace_id == outer.context.trace_id


def test_the_openai_wrapper_reports_ok_stream_and_provider_errors(
    otel: InMemoryTelemetry, up: FakeUpstream
) -> None:
    client = wrap(openai.OpenAI(base_url=up.base_url, api_key="sk-test", max_retries=0), budgets=BIG)
    client.chat.completions.create(**BODY)
    stream = client.chat.completions.create(**BODY, stream=True, stream_options={"include_usage": True})
    for _ in stream:
        pass
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**BODY, extra_headers={"x-fake-error": "500"})
    with pytest.raises(openai.APIConnectionError):
        wrap(
            openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
        ).chat.completions.create(**BODY)
    ok, streamed, failed, unsent = (attrs(s) for s in otel.spans())
    assert ok["spendgate.outcome"] == streamed["spendgate.outcome"] == "ok"
    assert ok["spendgate.cost.usd"] == streamed["spendgate.cost.usd"] > 0  # streamed costs the same
    assert streamed["gen_ai.usage.output_tokens"] == ok["gen_ai.usage.output_tokens"]
    assert (failed["spendgate.outcome"], failed["error.type"], failed["spendgate.action"]) == (
        "upstream_error",
        "upstream_error",
        "release",
    )
    assert failed["spendgate.cost.usd"] == 0.0
    assert (unsent["spendgate.outcome"], unsent["error.type"]) == ("not_sent", "not_sent")


def test_a_failing_exporter_never_fails_the_request(caplog: pytest.LogCaptureFixture) -> None:
    def broken(fields: dict[str, Any], headers: object) -> None:
        raise RuntimeError("collector on fire")

    logs.observer = broken
    try:
        guard = Guard("memory://", budgets=BUDGETS)
        cost = guard.settle(guard.admit("chat", BODY), Usage(input_tokens=10, output_tokens=20))
        guard.close()
    finally:
        logs.observer = None
    assert cost.total == Money.usd("0.000225")
    assert "telemetry failed on a request line" in caplog.text


def test_shutdown_turns_it_off_and_a_second_enable_replaces_the_first() -> None:
    with InMemoryTelemetry() as first:
        assert telemetry.enabled() and logs.observer is not None
        with InMemoryTelemetry() as second:
            guard = Guard("memory://")
            guard.settle(guard.admit("chat", BODY), Usage(input_tokens=1))
            guard.close()
            assert first.spans() == [] and len(second.spans()) == 1
    assert not telemetry.enabled() and logs.observer is None


def test_enable_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "available", lambda: False)
    with pytest.raises(TelemetryUnavailableError, match=r"pip install 'spendgate\[otel\]'"):
        telemetry.enable(endpoint="http://127.0.0.1:4318")
    assert logs.observer is None


# -- the gateway's config --------------------------------------------------------------------

BASE = {
    "ledger": "memory://",
    "upstreams": {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    "routes": [{"model": "gpt-*", "upstream": "fake"}],
}


def test_the_telemetry_section_is_read() -> None:
    assert parse_settings(BASE).telemetry is None
    assert parse_settings({**BASE, "telemetry": {"enabled": False}}).telemetry is None
    settings = parse_settings(
        {
            **BASE,
            "telemetry": {
                "endpoint": "http://127.0.0.1:4318",
                "headers_env": "OTLP_HEADERS",
                "service_name": "gw-eu",
                "capture_user": True,
                "metrics": False,
                "export_interval": 5,
            },
        },
        environ={"OTLP_HEADERS": "x-api-key=s%3Dcret, X-Team = ops"},
    )
    assert settings.telemetry == TelemetrySettings(
        endpoint="http://127.0.0.1:4318",
        headers={"x-api-key": "s=cret", "x-team": "ops"},
        service_name="gw-eu",
        capture_user=True,
        traces=True,
        metrics=False,
        export_interval=5.0,
    )
    assert "cret" not in repr(settings.telemetry)  # headers carry keys: never shown


@pytest.mark.parametrize(
    ("section", "environ", "message"),
    [
        ({"endpont": "http://x"}, {}, "telemetry.endpont: unknown key; did you mean 'endpoint'?"),
        ({"endpoint": "collector:4318"}, {}, "telemetry.endpoint: must be an http(s) URL"),
        ({"enabled": "yes"}, {}, "telemetry.enabled: must be true or false"),
        (
            {"headers_env": "OTLP_HEADERS"},
            {},
            "telemetry.headers_env: environment variable OTLP_HEADERS is not set",
        ),
        ({"headers_env": "H"}, {"H": "no-equals-sign"}, "telemetry.headers_env: H must be name=value pairs"),
        ({"export_interval": 0}, {}, "telemetry.export_interval: must be a positive number of seconds"),
        ([], {}, "telemetry: must be a mapping"),
    ],
)
def test_a_bad_telemetry_section_names_the_key(section: Any, environ: dict[str, str], message: str) -> None:
    with pytest.raises(
        GatewayConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    ):
        parse_settings({**BASE, "telemetry": section}, environ=environ)


def test_the_section_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("spendgate.gateway.config.telemetry_available", lambda: False)
    with pytest.raises(
        GatewayConfigError, match=r"telemetry: needs OpenTelemetry.*pip install 'spendgate\[otel\]'"
    ):
        parse_settings({**BASE, "telemetry": {"endpoint": "http://127.0.0.1:4318"}})
    assert parse_settings({**BASE, "telemetry": {"enabled": False}}).telemetry is None  # off: no need


# -- no cost when off ----------------------------------------------------------------------------

_OFF = """
import logging, sys
logging.basicConfig(level=logging.INFO)  # request lines on: the path telemetry would share
import spendgate, spendgate.telemetry
from spendgate import Guard
from spendgate.usage import Usage
from spendgate.gateway.app import create_app, GatewayState
from spendgate.gateway.config import parse_settings
parse_settings({"ledger": "memory://", "upstreams": {"f": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                "routes": [{"model": "gpt-*", "upstream": "f"}], "telemetry": {"enabled": False}})
guard = Guard("memory://", budgets=[{"id": "b", "limit": "1", "window": "day"}])
guard.settle(guard.admit("chat", {"model": "gpt-4o", "messages": [], "max_tokens": 5}), Usage(input_tokens=1))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))
"""


def test_opentelemetry_is_not_even_imported_when_off() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + textwrap.dedent(_OFF)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout.splitlines()[-1]) == []
    assert "spendgate request" in out.stderr  # the request line was written all the same


def test_the_receiver_decodes_what_the_sdk_exports() -> None:
    """``enable(endpoint=)``: the OTLP/HTTP exporters of its own, into a real local receiver;
    ``shutdown`` exports what is queued."""
    with OtlpReceiver() as otlp:
        telemetry.enable(endpoint=otlp.url, service_name="sdk-app", headers={"x-api-key": "k1"})
        try:
            guard = Guard("memory://", budgets=BUDGETS)
            guard.settle(guard.admit("chat", BODY), Usage(input_tokens=10, output_tokens=20))
            guard.close()
        finally:
            telemetry.shutdown()
        [span] = otlp.wait_spans(lambda spans: len(spans) >= 1)
        assert span.name == "chat gpt-4o" and span.kind == 3  # CLIENT
        assert span.attributes["spendgate.cost.usd"] == 0.000225
        assert span.resource["service.name"] == "sdk-app"
        otlp.wait(lambda: bool(otlp.latest("spendgate.cost")))
        [cost] = otlp.latest("spendgate.cost").values()
        assert cost.value == pytest.approx(0.000225) and cost.unit == "USD"
        assert all(headers.get("x-api-key") == "k1" for _, headers in otlp.requests)


def test_logging_below_info_still_feeds_telemetry(otel: InMemoryTelemetry) -> None:
    assert not logs.REQUESTS.isEnabledFor(logging.INFO)
    guard = Guard("memory://", budgets=BUDGETS)
    guard.settle(guard.admit("chat", BODY), Usage(input_tokens=10, output_tokens=20))
    guard.close()
    assert len(otel.spans()) == 1
