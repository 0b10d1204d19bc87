"""``spendgate serve --workers 2``: a reload replaces the workers (a bad config keeps them), and a
stop lets requests in flight finish and settle. Budgets across workers: test_concurrency.py."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from spendgate.estimate import estimate_request
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.testing.process import FakeUpstream

from .conftest import base_config, billed, served, start_env, wait_until

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
WORKERS = ["--workers", "2"]


def _workers_of(pid: int) -> list[int]:
    """The worker processes uvicorn's supervisor spawned for the gateway ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def test_reload_replaces_the_workers_and_a_bad_config_keeps_them(tmp_path: Path, up: FakeUpstream) -> None:
    listen = {"workers": 2}  # from the config this time, not --workers
    gateway, keys = start_env(tmp_path, up, listen=listen)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=keys["alice"][1], max_retries=0)
    config_path = tmp_path / "gateway.yaml"
    config = base_config(up, gateway.ledger_url, listen=listen)
    first = _workers_of(gateway.proc.pid)
    assert len(first) == 2, first

    try:
        assert not served(client, "my-alias")
        config["routes"] = [{"model": "my-alias", "upstream": "fake", "upstream_model": "gpt-4o-mini"}]
        config_path.write_text(json.dumps(config))
        gateway.proc.send_signal(signal.SIGHUP)
        # Every worker replaced: then every new connection, whichever worker takes it, knows it.
        assert wait_until(lambda: all(served(client, "my-alias") for _ in range(6)), timeout=60), (
            "never reloaded"
        )

        def both_replaced() -> bool:
            now = _workers_of(gateway.proc.pid)
            return len(now) == 2 and not set(now) & set(first)

        assert wait_until(both_replaced, timeout=60), (first, _workers_of(gateway.proc.pid))

        bad: dict[str, Any] = {**config, "budgets": [{"id": "global", "limit": "-1"}]}
        config_path.write_text(json.dumps(bad))
        gateway.proc.send_signal(signal.SIGHUP)
        assert not wait_until(lambda: gateway.proc.poll() is not None, timeout=2), "a bad reload stopped it"
        assert all(served(client, "my-alias") for _ in range(6))  # still the last good settings
    finally:
        assert gateway.stop() == 0


def test_sigterm_lets_every_workers_requests_finish(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, keys = start_env(tmp_path, up, args=WORKERS)
    results: list[Any] = []
    body: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5}

    def call() -> None:
        client = openai.OpenAI(base_url=gateway.base_url, api_key=keys["alice"][1], max_retries=0)
        try:
            results.append(
                client.chat.completions.create(
                    model="gpt-4o",
                    messages=MESSAGES,
                    max_tokens=5,
                    extra_headers={"x-fake-latency-ms": "1500"},
                )
            )
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    callers = [threading.Thread(target=call, daemon=True) for _ in range(6)]
    ledger = gateway.ledger()
    try:
        for caller in callers:
            caller.start()
        all_six = estimate_request("chat", body, catalog=Catalog.default()).amount * 6
        reserved_all = wait_until(lambda: ledger.usage("global").reserved == all_six, timeout=10)
        assert reserved_all, "the six requests were never in flight together"
        gateway.proc.send_signal(signal.SIGTERM)
        for caller in callers:
            caller.join(30)
        assert gateway.proc.wait(30) == 0
        assert len(results) == 6 and all(not isinstance(r, Exception) for r in results), results
        usage = ledger.usage("global")
        assert (usage.spent, usage.reserved) == (billed("/v1/chat/completions", body, 5) * 6, Money(0))
    finally:
        ledger.close()
        gateway.stop()


def test_workers_need_a_config_file() -> None:
    from click.testing import CliRunner

    from spendgate.cli import main

    result = CliRunner().invoke(main, ["serve", "--demo", "--workers", "2"])
    assert result.exit_code != 0
    assert "--workers needs --config" in result.output
