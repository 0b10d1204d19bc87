"""Gateway processes end to end: the request timeout, /readyz without a ledger, wait mode released
by the admin API, and a virtual key's whole life through the admin API."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from spendgate.guard import Guard
from spendgate.money import Money
from spendgate.testing.process import FakeUpstream

from .conftest import Gateway, base_config, billed, start_env, wait_until

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
AMESSAGES: list[MessageParam] = [{"role": "user", "content": "hello"}]
#: A worst case of about 0.01 USD on gpt-4o: a budget of 1.5 of it affords one such request, not two.
BIG: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 1000}
ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN_ENV = {"SPENDGATE_ADMIN_TOKEN": ADMIN_TOKEN}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _worst_case(body: dict[str, Any]) -> Money:
    """What the gateway reserves for a chat body (the same default catalog, in process)."""
    guard = Guard("memory://")
    try:
        return guard.prepare("chat", body)[2].amount
    finally:
        guard.close()


def _one_and_a_half(amount: Money) -> str:
    return str((amount.to_decimal() * 3 / 2).quantize(Decimal("0.000000001")))


def _client(gateway: Gateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=secret, max_retries=0, timeout=20)


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            out["reply"] = call()
        except Exception as exc:
            out["error"] = exc
        out["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- 1. the request timeout ------------------------------------------------------------------------


def test_request_timeout_answers_504_and_releases(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, keys = start_env(tmp_path, up, defaults={"request_timeout": 0.5})
    client = _client(gateway, keys["alice"][1])
    ledger = gateway.ledger()
    try:
        slow = {"x-fake-latency-ms": "3000"}
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=5, extra_headers=slow
            )
        assert 0.4 < time.monotonic() - started < 2.5
        assert caught.value.status_code == 504
        error = caught.value.response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("server_error", "request_timeout", None)
        assert "request timeout (0.5 s)" in error["message"]

        aclient = anthropic.Anthropic(base_url=gateway.url, api_key=keys["alice"][1], max_retries=0)
        with pytest.raises(anthropic.InternalServerError) as acaught:
            aclient.messages.create(
                model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=5, extra_headers=slow
            )
        assert acaught.value.status_code == 504
        assert acaught.value.response.json()["error"]["type"] == "api_error"

        usage = ledger.usage("global")
        assert (usage.spent, usage.reserved) == (Money(0), Money(0))  # released, nothing charged

        # A stream that already started is ended (with an error event) and settled on what it sent.
        chunks = 0
        stream_headers = {"x-fake-chunk-delay-ms": "100", "x-fake-output-tokens": "50"}
        with pytest.raises(openai.APIError, match="request timeout"):
            for _ in client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=50, stream=True, extra_headers=stream_headers
            ):
                chunks += 1
        assert chunks >= 1
        [record] = ledger.query_requests(limit=5, key=keys["alice"][0].id)
        assert record.status == "cut"
        body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 50}
        assert Money(0) < record.cost < billed("/v1/chat/completions", body, 50)
        assert ledger.usage("global").reserved == Money(0)
    finally:
        ledger.close()
        gateway.stop()


def test_request_timeout_counts_the_admission_wait(tmp_path: Path, up: FakeUpstream) -> None:
    worst = _worst_case(BIG)
    budgets = [{"id": "global", "limit": _one_and_a_half(worst), "window": "day"}]
    defaults = {"request_timeout": 1, "on_exceed": "wait", "max_wait": 5}
    gateway, keys = start_env(tmp_path, up, budgets=budgets, defaults=defaults)
    client = _client(gateway, keys["alice"][1])
    ledger = gateway.ledger()
    try:
        # Spend about 0.7 of the worst case: what is left never affords another one.
        client.chat.completions.create(**BIG, extra_headers={"x-fake-output-tokens": "700"})
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(**BIG)
        waited = time.monotonic() - started
        assert caught.value.status_code == 504, "the wait should end at request_timeout, before max_wait"
        assert caught.value.response.json()["error"]["code"] == "request_timeout"
        assert 0.9 < waited < 3.5
        assert ledger.usage("global").reserved == Money(0)
    finally:
        ledger.close()
        gateway.stop()


# -- 2. /readyz ------------------------------------------------------------------------------------


def test_readyz_is_503_when_the_ledger_cannot_be_read(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, _ = start_env(tmp_path, up)
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            ready = http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            # Root ignores file modes: make the ledger unreadable by overwriting the database, its
            # write-ahead log and shared-memory index in place (the gateway's open handles see it).
            files = [p for p in tmp_path.iterdir() if p.name.startswith("ledger.db")]
            assert any(p.name == "ledger.db" for p in files)
            for path in files:
                with path.open("r+b") as f:
                    f.write(b"\xff" * max(path.stat().st_size, 4096))
            assert wait_until(lambda: http.get("/readyz").status_code == 503, timeout=5)
            down = http.get("/readyz")
            assert down.json()["status"] == "unavailable"
            assert http.get("/healthz").status_code == 200  # alive, just not ready
    finally:
        gateway.stop()


# -- 3. on_exceed: wait -----------------------------------------------------------------------------


def _waiting_gateway(tmp: Path, up: FakeUpstream, max_wait: float) -> tuple[Gateway, str, Money]:
    tmp.mkdir()
    worst = _worst_case(BIG)
    budgets = [{"id": "global", "limit": _one_and_a_half(worst), "window": "day"}]
    config = base_config(up, f"sqlite:///{tmp / 'ledger.db'}", budgets=budgets)
    config["defaults"] = {"on_exceed": "wait", "max_wait": max_wait}
    gateway = Gateway.start(config, tmp / "gateway.yaml", env=ADMIN_ENV)
    with httpx.Client(base_url=gateway.url, headers=ADMIN, timeout=10) as admin:
        made = admin.post("/admin/keys", json={"user": "waiter"})
        assert made.status_code == 201, made.text
    return gateway, made.json()["secret"], worst


def test_wait_mode_is_admitted_by_a_raised_limit_and_gives_up_at_max_wait(
    tmp_path: Path, up: FakeUpstream
) -> None:
    gateway, secret, worst = _waiting_gateway(tmp_path / "long", up, max_wait=5)
    client = _client(gateway, secret)
    ledger = gateway.ledger()
    try:
        holder, held = _in_thread(
            lambda: client.chat.completions.create(**BIG, extra_headers={"x-fake-latency-ms": "4000"})
        )
        assert wait_until(lambda: ledger.usage("global").reserved == worst, timeout=5), "never held"
        waiter, waited = _in_thread(lambda: client.chat.completions.create(**BIG))
        time.sleep(0.5)
        assert waiter.is_alive(), f"the second request did not wait: {waited}"
        assert ledger.usage("global").reserved == worst  # it holds nothing while it waits

        with httpx.Client(base_url=gateway.url, headers=ADMIN, timeout=10) as admin:
            raised = admin.patch("/admin/budgets/global", json={"limit": "10"})
        assert raised.status_code == 200, raised.text
        waiter.join(5)
        assert not waiter.is_alive() and "reply" in waited, waited
        assert holder.is_alive(), "admitted by the raised limit, not by the first request ending"
        holder.join(10)
        assert "reply" in held, held
        assert wait_until(lambda: ledger.usage("global").reserved == Money(0), timeout=5)
    finally:
        ledger.close()
        gateway.stop()

    gateway, secret, _ = _waiting_gateway(tmp_path / "short", up, max_wait=1)
    client = _client(gateway, secret)
    try:
        holder, held = _in_thread(
            lambda: client.chat.completions.create(**BIG, extra_headers={"x-fake-latency-ms": "3000"})
        )
        with gateway.ledger() as ledger:
            assert wait_until(lambda: ledger.usage("global").reserved > Money(0), timeout=5), "never held"
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(**BIG)
        assert 0.9 < time.monotonic() - started < 2.5, "it should wait max_wait, then give up"
        error = caught.value.response.json()["error"]
        assert (error["type"], error["code"]) == ("budget_exceeded", "budget_exceeded")
        assert error["budget"]["id"] == "global"
        retry_after = caught.value.response.headers.get("retry-after")
        assert retry_after is None or retry_after.isdigit()
        holder.join(10)
        assert "reply" in held, held
    finally:
        gateway.stop()


# -- 4. a key's life through the admin API ---------------------------------------------------------


def _status(gateway: Gateway, secret: str, model: str = "gpt-4o-mini") -> int:
    try:
        _client(gateway, secret).chat.completions.create(model=model, messages=MESSAGES, max_tokens=3)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_key_lifecycle_through_the_admin_api(tmp_path: Path, up: FakeUpstream) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    gateway = Gateway.start(base_config(up, ledger_url), tmp_path / "gateway.yaml", env=ADMIN_ENV)
    # Within the key cache's TTL (5 s) plus margin; in practice the admin API clears the cache at once.
    ttl = 7.0
    try:
        with httpx.Client(base_url=gateway.url, headers=ADMIN, timeout=10) as admin:
            made = admin.post(
                "/admin/keys", json={"user": "dave", "team": "ops", "models": ["gpt-4o-mini", "claude-*"]}
            )
            assert made.status_code == 201, made.text
            key_id, secret = made.json()["id"], made.json()["secret"]
            assert secret not in admin.get("/admin/keys").text  # shown once

            assert _status(gateway, secret) == 200
            assert _status(gateway, secret, "gpt-4o") == 403
            listed = sorted(m.id for m in _client(gateway, secret).models.list())
            assert "gpt-4o-mini" in listed and any(m.startswith("claude-") for m in listed)
            assert all(m == "gpt-4o-mini" or m.startswith("claude-") for m in listed), listed

            assert admin.post(f"/admin/keys/{key_id}/disable").json()["state"] == "disabled"
            assert wait_until(lambda: _status(gateway, secret) == 401, timeout=ttl)
            assert admin.post(f"/admin/keys/{key_id}/enable").json()["state"] == "active"
            assert wait_until(lambda: _status(gateway, secret) == 200, timeout=ttl)

            rotated = admin.post(f"/admin/keys/{key_id}/rotate")
            assert rotated.status_code == 200 and rotated.json()["id"] == key_id
            new_secret = rotated.json()["secret"]
            assert new_secret != secret
            assert wait_until(lambda: _status(gateway, secret) == 401, timeout=ttl)
            assert _status(gateway, new_secret) == 200

            expires_at = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
            brief = admin.post("/admin/keys", json={"user": "erin", "expires_at": expires_at})
            assert brief.status_code == 201, brief.text
            brief_secret = brief.json()["secret"]
            assert _status(gateway, brief_secret) == 200
            assert wait_until(lambda: _status(gateway, brief_secret) == 401, timeout=ttl)
            with pytest.raises(openai.AuthenticationError) as caught:
                _client(gateway, brief_secret).chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, max_tokens=3
                )
            assert caught.value.response.json()["error"]["code"] == "expired_api_key"

            # A virtual key never reaches the admin API, not even an active one.
            refused = httpx.get(
                gateway.url + "/admin/keys", headers={"authorization": f"Bearer {new_secret}"}, timeout=10
            )
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_admin_token"
            assert "virtual key" in refused.json()["error"]["message"]
    finally:
        gateway.stop()
