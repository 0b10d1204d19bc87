"""The request timeout and /readyz without a ledger (gateway processes, end to end); wait mode
released by the admin API and a virtual key's whole life through the admin API (in process)."""

from __future__ import annotations

import asyncio
import time
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
from .inprocess import ADMIN_TOKEN, InProcessGateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
AMESSAGES: list[MessageParam] = [{"role": "user", "content": "hello"}]
#: A worst case of about 0.01 USD on gpt-4o: a budget of 1.5 of it affords one such request, not two.
BIG: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 1000}
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


# -- 1. the request timeout ------------------------------------------------------------------------


def test_request_timeout_answers_504_and_charges_the_reservation(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, keys = start_env(tmp_path, up, defaults={"request_timeout": 0.5})
    client = _client(gateway, keys["alice"][1])
    ledger = gateway.ledger()
    try:
        slow = {"x-fake-latency-ms": "3000"}
        # Each route's first request loads its tokenizer: warmed here, so the timeouts below
        # come while the upstream answers (sent: lost), not during a slow first admission.
        aclient = anthropic.Anthropic(base_url=gateway.url, api_key=keys["alice"][1], max_retries=0)
        for _ in range(20):  # bounded: a loaded machine may take more than 0.5 s for the first
            try:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
                aclient.messages.create(model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=5)
                break
            except (openai.InternalServerError, anthropic.InternalServerError):
                continue  # timed out while loading: the load goes on; the next one finds it done
        warm = ledger.usage("global").spent
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

        with pytest.raises(anthropic.InternalServerError) as acaught:
            aclient.messages.create(
                model="claude-haiku-4-5", messages=AMESSAGES, max_tokens=5, extra_headers=slow
            )
        assert acaught.value.status_code == 504
        assert acaught.value.response.json()["error"]["type"] == "api_error"

        # Sent, and no answer read: the provider may bill it, so each is charged its reserved
        # worst case (never under-count; docs/design.md, the ending table).
        logged = ledger.query_requests(limit=5, key=keys["alice"][0].id)
        lost = [r for r in logged if r.status != "ok"][:2]  # the two slow ones: the newest
        assert [r.status for r in lost] == ["lost", "lost"], [r.status for r in logged]
        usage = ledger.usage("global")
        assert usage.spent == warm + sum((r.cost for r in lost), Money(0)) and usage.reserved == Money(0)
        five = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5}
        assert min(r.cost for r in lost) >= billed("/v1/chat/completions", five, 5)

        # A stream that already started is ended (with an error event): no usage came, so its
        # reservation is charged.
        chunks = 0
        stream_headers = {"x-fake-chunk-delay-ms": "100", "x-fake-output-tokens": "50"}
        with pytest.raises(openai.APIError, match="request timeout"):
            for _ in client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=50, stream=True, extra_headers=stream_headers
            ):
                chunks += 1
        assert chunks >= 1
        [record] = [r for r in ledger.query_requests(limit=10, key=keys["alice"][0].id) if r.status == "cut"]
        assert record.status == "cut"
        body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 50}
        assert record.cost >= billed("/v1/chat/completions", body, 50)
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
        # Spend about 0.7 of the worst case (the worst case is at priority rates: BIG names no
        # tier): what is left never affords another one.
        client.chat.completions.create(
            **BIG, service_tier="priority", extra_headers={"x-fake-output-tokens": "700"}
        )
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


# -- 3. on_exceed: wait (in process: the upstream holds the first request as long as needed) ------


async def _until_waiting(gw: InProcessGateway, count: int) -> None:
    """Until ``count`` requests wait for budget in the guard (no public count yet: its wait lines)."""
    lines = gw.state.guard._lines
    for _ in range(500):
        if lines.waiting() >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{lines.waiting()} requests wait, not {count}")


@pytest.mark.anyio
async def test_wait_mode_is_admitted_by_a_raised_limit(tmp_path: Path) -> None:
    worst = _worst_case(BIG)
    budgets = [{"id": "global", "limit": _one_and_a_half(worst), "window": "day"}]
    defaults = {"on_exceed": "wait", "max_wait": 30}
    async with InProcessGateway.start(
        tmp_path, {"waiter": {"user": "waiter"}}, budgets=budgets, defaults=defaults
    ) as gw:
        client = gw.openai("waiter")
        gw.upstream.hold()
        holder = asyncio.create_task(client.chat.completions.create(**BIG))
        await gw.upstream.wait_for(1)
        assert gw.ledger.usage("global").reserved == worst
        waiter = asyncio.create_task(client.chat.completions.create(**BIG))
        await _until_waiting(gw, 1)
        assert gw.ledger.usage("global").reserved == worst  # it holds nothing while it waits

        raised = await gw.admin().patch("/budgets/global", json={"limit": "10"})
        assert raised.status_code == 200, raised.text
        await gw.upstream.wait_for(2)  # admitted while the first one still holds its reservation
        assert not holder.done()
        gw.upstream.release()
        for task in (holder, waiter):
            assert (await task).usage is not None
        assert gw.ledger.usage("global").reserved == Money(0)


@pytest.mark.anyio
async def test_wait_mode_gives_up_at_max_wait(tmp_path: Path) -> None:
    worst = _worst_case(BIG)
    budgets = [{"id": "global", "limit": _one_and_a_half(worst), "window": "day"}]
    defaults = {"on_exceed": "wait", "max_wait": 0.3}
    async with InProcessGateway.start(
        tmp_path, {"waiter": {"user": "waiter"}}, budgets=budgets, defaults=defaults
    ) as gw:
        client = gw.openai("waiter")
        gw.upstream.hold()
        holder = asyncio.create_task(client.chat.completions.create(**BIG))
        await gw.upstream.wait_for(1)
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**BIG)
        assert time.monotonic() - started >= 0.3, "it should wait max_wait, then give up"
        error = caught.value.response.json()["error"]
        assert (error["type"], error["code"]) == ("budget_exceeded", "budget_exceeded")
        assert error["budget"]["id"] == "global"
        retry_after = caught.value.response.headers.get("retry-after")
        assert retry_after is None or retry_after.isdigit()
        assert len(gw.upstream.received) == 1
        gw.upstream.release()
        assert (await holder).usage is not None


# -- 4. a key's life through the admin API (in process) --------------------------------------------


async def _status(gw: InProcessGateway, secret: str, model: str = "gpt-4o-mini") -> int:
    try:
        await gw.openai(api_key=secret).chat.completions.create(model=model, messages=MESSAGES, max_tokens=3)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


@pytest.mark.anyio
async def test_key_lifecycle_through_the_admin_api(tmp_path: Path) -> None:
    # The admin API and the proxy share one key store: a change is seen by the next request.
    async with InProcessGateway.start(tmp_path, {}) as gw:
        admin = gw.admin()
        made = await admin.post(
            "/keys", json={"user": "dave", "team": "ops", "models": ["gpt-4o-mini", "claude-*"]}
        )
        assert made.status_code == 201, made.text
        key_id, secret = made.json()["id"], made.json()["secret"]
        assert secret not in (await admin.get("/keys")).text  # shown once

        assert await _status(gw, secret) == 200
        assert await _status(gw, secret, "gpt-4o") == 403
        listed = sorted([m.id async for m in gw.openai(api_key=secret).models.list()])
        assert "gpt-4o-mini" in listed and any(m.startswith("claude-") for m in listed)
        assert all(m == "gpt-4o-mini" or m.startswith("claude-") for m in listed), listed

        assert (await admin.post(f"/keys/{key_id}/disable")).json()["state"] == "disabled"
        assert await _status(gw, secret) == 401
        assert (await admin.post(f"/keys/{key_id}/enable")).json()["state"] == "active"
        assert await _status(gw, secret) == 200

        rotated = await admin.post(f"/keys/{key_id}/rotate")
        assert rotated.status_code == 200 and rotated.json()["id"] == key_id
        new_secret = rotated.json()["secret"]
        assert new_secret != secret
        assert await _status(gw, secret) == 401
        assert await _status(gw, new_secret) == 200

        # A virtual key never reaches the admin API, not even an active one.
        refused = await gw.admin(new_secret).get("/keys")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_admin_token"
        assert "virtual key" in refused.json()["error"]["message"]
        assert await _status(gw, new_secret) == 200


# -- 5. the admin API of a real process ------------------------------------------------------------


def test_admin_api_of_a_process_serves_a_key_it_made(tmp_path: Path, up: FakeUpstream) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    gateway = Gateway.start(base_config(up, ledger_url), tmp_path / "gateway.yaml", env=ADMIN_ENV)
    try:
        with httpx.Client(base_url=gateway.url, headers=ADMIN, timeout=10) as admin:
            made = admin.post("/admin/keys", json={"user": "dave", "models": ["gpt-4o-mini"]})
            assert made.status_code == 201, made.text
            secret = made.json()["secret"]
            client = _client(gateway, secret)
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=3)
            assert reply.usage is not None
            assert admin.get("/admin/requests").json()["data"][0]["attributes"]["user"] == "dave"
            refused = httpx.get(gateway.url + "/admin/keys", headers={"authorization": f"Bearer {secret}"})
            assert refused.status_code == 401
    finally:
        gateway.stop()
