"""Alerts delivered once across processes: a budget crossing 50/80/100% with 3 SDK processes
and a gateway of 2 workers sharing one ledger, each running an alert dispatcher, and one real
local webhook receiver started by the test. Each threshold is accepted exactly once per
window, also while the receiver is down for a while (retried with backoff) and when the
process sending an alert is killed mid-delivery (another takes it over after its lease and
sends the same webhook-id)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.alert_senders import sender
from cluster.conftest import Cluster, SharedLedger, config, fire, make_key, shared_ledger
from spendgate.ledger import open_ledger
from spendgate.money import Money
from spendgate.testing import FakeUpstream
from spendgate.testing.webhooks import Post, WebhookReceiver

LIMIT = Money.parse("0.01")
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture(params=["sqlite", "postgresql"])
def shared(request: pytest.FixtureRequest) -> Iterator[SharedLedger]:
    made = shared_ledger(request.param)
    yield made
    made.drop()


def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def thresholds(posts: list[Post]) -> list[int]:
    return [p.json()["threshold"] for p in posts if p.json()["type"] == "budget.threshold"]


def test_each_threshold_once_across_processes_outage_and_a_kill(
    shared: SharedLedger, fake: FakeUpstream, tmp_path: Path
) -> None:
    hook = WebhookReceiver(mode="fail")  # down from the start
    budget = {"id": "research", "selector": {"team": "research"}, "limit": str(LIMIT.to_decimal()),
              "window": "day", "thresholds": [50, 80, 100]}  # fmt: skip
    alerts = {
        "destinations": [{"name": "ops", "type": "webhook", "url": hook.url, "timeout": 1}],
        "retry": {"max_attempts": 100, "backoff": 0.3, "max_backoff": 1},
        "poll_interval": 0.2,
        "lease": 3,
    }
    cfg = config(fake, shared.url, budgets=[budget], alerts=alerts)
    ctx = multiprocessing.get_context("spawn")
    out: Any = ctx.Queue()
    queues: dict[str, Any] = {}
    procs: dict[str, Any] = {}
    pids: dict[str, int] = {}
    ledger = open_ledger(shared.url, [])
    try:
        with Cluster.start(1, cfg, tmp_path, ("--log-level", "warning", "--workers", "2")) as cluster:
            _, secret = make_key(shared.url, team="research")
            for i in range(3):
                name = f"sdk{i}"
                queues[name] = ctx.Queue()
                procs[name] = ctx.Process(target=sender, args=(shared.url, hook.url, name, queues[name], out))
                procs[name].start()
            for _ in range(3):
                kind, name, pid = out.get(timeout=60)
                assert kind == "ready"
                pids[name] = pid

            def spent() -> Money:
                return sum((u.spent for u in ledger.list_budgets() if u.budget_id == "research"), Money(0))

            def top_up(percent: int) -> None:
                """Spend up to ``percent`` of the limit, shared by the live SDK processes."""
                need = LIMIT.nanos * percent // 100 - spent().nanos
                live = [n for n in queues if procs[n].is_alive()]
                each, rest = divmod(need, len(live))  # in exact shares: 100% is the limit itself
                for i, name in enumerate(live):
                    queues[name].put(("spend", str(Money(each + (rest if i == 0 else 0)).to_decimal())))
                for _ in live:
                    kind, _, admitted = out.get(timeout=30)
                    assert kind == "spent" and admitted

            urls = [g.url for g in cluster.gateways]
            # 1. The receiver is down while 50% is crossed: tried again and again, accepted once.
            statuses = asyncio.run(fire(urls, secret, BODY, 6))
            assert statuses == [200] * 6
            top_up(55)
            until(lambda: thresholds(hook.posts).count(50) >= 2, "50% tried while the receiver is down")
            assert not hook.accepted
            hook.mode = "ok"
            until(lambda: thresholds(hook.accepted) == [50], "50% accepted once the receiver is up")

            # 2. 80% crossed; whoever sends it is killed mid-delivery (the receiver holds it).
            hook.mode = "hold"
            top_up(85)
            until(lambda: any(p.answered is None for p in hook.posts), "80% arriving")
            (held,) = [r for r in ledger.alert_deliveries(state="pending") if r.claimed_by]
            assert held.event.details["threshold"] == 80
            holder = int(held.claimed_by.split(":")[1]) if held.claimed_by else 0
            assert holder not in (0, os.getpid())
            os.kill(holder, signal.SIGKILL)
            hook.mode = "ok"
            hook.release()  # the held request is dropped unanswered: not accepted
            until(lambda: thresholds(hook.accepted) == [50, 80], "80% taken over after the lease")
            tries_80 = [p for p in hook.posts if p.json().get("threshold") == 80]
            assert len(tries_80) >= 2 and len({p.headers["webhook-id"] for p in tries_80}) == 1

            # 3. 100%: crossed, then the gateway refuses (and says so, once).
            top_up(100)
            statuses = asyncio.run(fire(urls, secret, BODY, 4))
            assert 429 in statuses
            until(lambda: thresholds(hook.accepted) == [50, 80, 100], "100% accepted")
            until(
                lambda: [p.json()["type"] for p in hook.accepted].count("budget.refusing") == 1,
                "refusals announced",
            )
            time.sleep(1.5)  # several dispatch rounds of every sender: nothing more arrives
            assert thresholds(hook.accepted) == [50, 80, 100]
            assert set(hook.accepted_ids.values()) == {1}
            assert {r.state for r in ledger.alert_deliveries()} == {"delivered"}
            for name, q in queues.items():
                if procs[name].is_alive():
                    q.put(("stop",))
    finally:
        for proc in procs.values():
            proc.join(15)
            if proc.is_alive():
                proc.kill()
        ledger.close()
        hook.close()
