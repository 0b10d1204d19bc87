"""The overview's refusal counts across instances (issue 14): two gateway processes and an SDK
process on one shared ledger refuse requests; any gateway's ``/admin/overview`` counts them all.

Each process adds its refusals up and writes them when a write is due (the first at once), and
what it still holds every ``defaults.refusal_interval`` (the gateway's sweep), at shutdown
(SIGTERM: uvicorn's graceful shutdown), at ``Guard.close()``, and before its own overview."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from spendgate.errors import BudgetExceededError
from spendgate.guard import Guard
from spendgate.testing import FakeUpstream

from .conftest import Cluster, SharedLedger, config, fire, make_key

TOKEN = "admin-" + "r" * 32
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 5,
}
PAUSED = {"id": "paused", "selector": {"team": "ops"}, "limit": "0", "window": "day"}
RPM = {"id": "rpm", "selector": {"team": "web"}, "requests": 1, "per": "1m"}


def cluster_config(fake: FakeUpstream, url: str, interval: float) -> dict[str, Any]:
    made = config(fake, url, budgets=[PAUSED], limits=[RPM], admin_token=TOKEN)
    made["defaults"] = {**made["defaults"], "refusal_interval": interval}
    return made


def refusals(gateway_url: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{gateway_url}/admin/overview", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["refusals"]
    return found


def sdk_refusals(url: str, n: int) -> None:
    """This test's own process as an SDK user: ``n`` requests the paused budget refuses."""
    guard = Guard(url, refusal_interval=3600)
    try:
        for _ in range(n):
            with pytest.raises(BudgetExceededError):
                guard.admit("chat", BODY, attributes={"team": "ops"})
    finally:
        guard.close()  # writes what it holds


def send(cluster: Cluster, ops: str, web: str) -> None:
    urls = [g.url for g in cluster.gateways]
    statuses = Counter(asyncio.run(fire(urls, ops, BODY, 6)))
    assert statuses == {429: 6}, statuses
    web_statuses = Counter(asyncio.run(fire(urls, web, BODY, 4)))
    assert web_statuses == {200: 1, 429: 3}, web_statuses


def test_every_process_s_refusals_reach_every_overview(
    ledger: SharedLedger, fake: FakeUpstream, tmp_path: Path
) -> None:
    """The sweep: a refusal held by the other gateway is written within its interval."""
    _, ops = make_key(ledger.url, team="ops")
    _, web = make_key(ledger.url, team="web")
    with Cluster.start(2, cluster_config(fake, ledger.url, interval=0.5), tmp_path) as cluster:
        send(cluster, ops, web)
        sdk_refusals(ledger.url, 2)
        deadline = time.monotonic() + 15
        for gateway in cluster.gateways:  # each one's overview: the same counts
            while True:
                seen = refusals(gateway.url)
                if (seen["budget"], seen["rate_limit"]) == (8, 3) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert (seen["total"], seen["budget"], seen["rate_limit"], seen["cost_cap"]) == (11, 8, 3, 0), (
                seen
            )
            assert [(t["kind"], t["id"], t["count"]) for t in seen["top"]] == [
                ("budget", "paused", 8),
                ("rate_limit", "rpm", 3),
            ]
            assert sum(seen["per_minute"]["budget"]) == 8


def test_a_gateway_writes_what_it_holds_when_it_stops(tmp_path: Path, fake: FakeUpstream) -> None:
    """With an interval longer than the test, only the first refusal of each process is written
    at once: the rest come from the stopping gateway, the closing guard, and the overview's own
    process."""
    from .conftest import shared_ledger

    ledger = shared_ledger("sqlite")
    try:
        _, ops = make_key(ledger.url, team="ops")
        _, web = make_key(ledger.url, team="web")
        with Cluster.start(2, cluster_config(fake, ledger.url, interval=3600), tmp_path) as cluster:
            first, second = cluster.gateways
            send(cluster, ops, web)
            sdk_refusals(ledger.url, 2)
            assert second.stop() == 0  # SIGTERM: a graceful shutdown writes its counts
            seen = refusals(first.url)
            assert (seen["budget"], seen["rate_limit"]) == (8, 3), seen
    finally:
        ledger.drop()
