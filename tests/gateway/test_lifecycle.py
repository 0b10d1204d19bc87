"""A gateway process's life: graceful stop with requests in flight, and SIGHUP reloads."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from spendgate.money import Money
from spendgate.testing.process import FakeUpstream

from .conftest import base_config, billed, served, start_env, wait_until

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def test_sigterm_lets_requests_in_flight_finish_and_settle(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, keys = start_env(tmp_path, up)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=keys["alice"][1], max_retries=0)
    result: dict[str, Any] = {}

    def call() -> None:
        result["reply"] = client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=5, extra_headers={"x-fake-latency-ms": "1500"}
        )

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    ledger = gateway.ledger()
    try:
        assert wait_until(lambda: ledger.usage("global").reserved > Money(0), timeout=10), "never reserved"
        gateway.proc.send_signal(signal.SIGTERM)
        caller.join(30)
        assert result["reply"].choices, "the in-flight request did not finish"
        assert gateway.proc.wait(30) == 0
        usage = ledger.usage("global")
        body: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5}
        assert (usage.spent, usage.reserved) == (billed("/v1/chat/completions", body, 5), Money(0))
    finally:
        ledger.close()
        gateway.stop()


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, keys = start_env(tmp_path, up)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=keys["alice"][1], max_retries=0)
    config_path = tmp_path / "gateway.yaml"
    config = base_config(up, gateway.ledger_url)
    try:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="my-alias", messages=MESSAGES, max_tokens=3)

        config["routes"] = [{"model": "my-alias", "upstream": "fake", "upstream_model": "gpt-4o-mini"}]
        config_path.write_text(json.dumps(config))
        gateway.proc.send_signal(signal.SIGHUP)

        assert wait_until(lambda: served(client, "my-alias"), timeout=10), "the reload never took effect"

        bad: dict[str, Any] = {**config, "budgets": [{"id": "global", "limit": "-1"}]}
        config_path.write_text(json.dumps(bad))
        gateway.proc.send_signal(signal.SIGHUP)
        assert not wait_until(lambda: gateway.proc.poll() is not None, timeout=1), "a bad reload stopped it"
        assert served(client, "my-alias")  # still the last good settings
    finally:
        gateway.stop()


def test_asyncio_loop_and_exact_remaining_header(tmp_path: Path, up: FakeUpstream) -> None:
    """``--loop asyncio`` serves as uvloop does; the remaining header is the settle's own figure."""
    budgets = [{"id": "global", "limit": "2", "window": "day"}]
    gateway, keys = start_env(tmp_path, up, budgets=budgets, args=["--loop", "asyncio"])
    client = openai.OpenAI(base_url=gateway.base_url, api_key=keys["alice"][1], max_retries=0)
    try:
        spent = Money(0)
        for output in (3, 4):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=output
            )
            body: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES}
            cost = billed("/v1/chat/completions", body, output)
            spent = spent + cost
            assert raw.headers["x-spendgate-cost"] == cost.decimal_str()
            assert raw.headers["x-spendgate-budget-remaining"] == (Money.usd("2") - spent).decimal_str()
    finally:
        assert gateway.stop() == 0


def test_loop_choice() -> None:
    import uvloop  # a dependency of the gateway extra on this platform

    from spendgate.gateway.server import loop_factory

    assert loop_factory("asyncio") is None  # asyncio's own
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
