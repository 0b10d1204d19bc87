"""Config limits at start and on reload: put into the ledger at start; on reload a changed limit
is replaced (its window's counts kept), a new one added, and one the config no longer has
removed, while limits made through the admin API stay. In process (``GatewayState.successor``
and ``swap``, what SIGHUP runs) and once through a real process and SIGHUP."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import openai
import pytest

from spendgate.clock import ManualClock
from spendgate.gateway.config import parse_settings
from spendgate.limits import Limit
from spendgate.testing.process import FakeUpstream

from .conftest import base_config, start_env, wait_until
from .inprocess import ADMIN_TOKEN, config
from .test_limits_answers import CHAT, START, limited


def settings_with(tmp: Path, limits: list[dict[str, Any]]) -> Any:
    return parse_settings(
        config(f"sqlite:///{tmp / 'ledger.db'}", limits=limits),
        environ={"SPENDGATE_ADMIN_TOKEN": ADMIN_TOKEN},
    )


@pytest.mark.anyio
async def test_reload_adds_changes_and_removes_config_limits(tmp_path: Path) -> None:
    clock = ManualClock(START)
    first = [
        {"id": "alice-rpm", "selector": {"user": "alice"}, "requests": 2, "per": "1m"},
        {"id": "gone-soon", "selector": {"user": "tiny"}, "requests": 0, "per": "1m"},
    ]
    async with limited(tmp_path, clock, limits=first) as gw:
        assert {each.id for each in gw.ledger.limits()} == {"alice-rpm", "gone-soon"}
        # One the admin API made: not the config's to remove.
        gw.ledger.put_limit(Limit.from_config({"id": "by-admin", "requests": 1000, "per": "1h"}))
        assert (await gw.http("alice").post("/chat/completions", json=CHAT)).status_code == 200
        assert (await gw.http("tiny").post("/chat/completions", json=CHAT)).status_code == 429

        second = [
            {"id": "alice-rpm", "selector": {"user": "alice"}, "requests": 1, "per": "1m"},  # lowered
            {"id": "bob-concurrency", "selector": {"user": "bob"}, "concurrency": 4},  # new
        ]
        old = gw.app.state
        new = old.successor(settings_with(tmp_path, second))
        gw.app.swap(new)

        assert {each.id for each in gw.ledger.limits()} == {"alice-rpm", "bob-concurrency", "by-admin"}
        assert gw.ledger.get_limit("alice-rpm").amount == 1
        # The window's count survived the change: alice's one request already fills the new amount.
        assert gw.ledger.limit_usage("alice-rpm").used == 1
        response = await gw.http("alice").post("/chat/completions", json=CHAT)
        assert response.status_code == 429 and response.json()["error"]["limit"]["amount"] == "1"
        assert (await gw.http("tiny").post("/chat/completions", json=CHAT)).status_code == 200


def test_sighup_reload_removes_and_adds_limits(tmp_path: Path, up: FakeUpstream) -> None:
    limits = [{"id": "alice-once", "selector": {"user": "alice"}, "requests": 1, "per": "1h"}]
    gateway, keys = start_env(tmp_path, up, limits=limits)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=keys["alice"][1], max_retries=0)
    config_path = tmp_path / "gateway.yaml"
    settings = base_config(up, gateway.ledger_url)

    def admitted() -> bool:
        try:
            client.chat.completions.create(**CHAT)
        except openai.RateLimitError:
            return False
        return True

    try:
        assert admitted()
        assert not admitted()

        config_path.write_text(json.dumps(settings))  # no limits: alice-once goes
        gateway.proc.send_signal(signal.SIGHUP)
        assert wait_until(admitted, timeout=10), "the reload did not remove the limit"
        ledger = gateway.ledger()
        try:
            assert ledger.limits() == []
        finally:
            ledger.close()

        back = [{"id": "alice-zero", "selector": {"user": "alice"}, "requests": 0, "per": "1m"}]
        config_path.write_text(json.dumps({**settings, "limits": back}))
        gateway.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: not admitted(), timeout=10), "the reload did not add the limit"
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**CHAT)
        assert info.value.response.json()["error"]["limit"]["id"] == "alice-zero"

        bad = {**settings, "limits": [{"id": "x", "requests": 1}]}  # no per: refused, old kept
        config_path.write_text(json.dumps(bad))
        gateway.proc.send_signal(signal.SIGHUP)
        assert not wait_until(lambda: gateway.proc.poll() is not None, timeout=1)
        assert not admitted()
    finally:
        gateway.stop()
