"""Three gateway instances enforce one budget together, on PostgreSQL and on Redis.

The count that matters is the fake upstream's own: what it billed, priced here from its own
token counts. 300 requests at once, spread over the three instances, against a key budget that
affords 50 of them: what the upstream billed never passes the budget, and uses at least 90% of
it (each request reserves its worst case, which is close to what it is billed, so the budget is
not left mostly unspent either).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx

from spendgate.cost import cost_of
from spendgate.ledger import open_ledger
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.testing import FakeUpstream, prompt_tokens_for
from spendgate.usage import Usage

from .conftest import Cluster, SharedLedger, arrivals, config, fire, make_key, priced

MODEL = "gpt-4o-mini"
OUTPUT = 16
#: The default tier named: unnamed, the reservation is at the priority tier's price (the worst an
#: account may be billed), and only about 57% of the budget could be reserved at once.
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": OUTPUT,
    "service_tier": "default",
}
AFFORDS = 50
REQUESTS = 300


def one_request() -> Money:
    """What the fake bills one BODY (its prompt count, OUTPUT tokens), priced apart from the gateway."""
    usage = Usage(input_tokens=prompt_tokens_for("/v1/chat/completions", BODY), output_tokens=OUTPUT)
    return cost_of(usage, Catalog.default().price(MODEL)).total


def test_three_instances_keep_one_key_budget(
    ledger: SharedLedger, fake: FakeUpstream, tmp_path: Path
) -> None:
    key_id, secret = make_key(ledger.url, user="shared")
    limit = Money(one_request().nanos * AFFORDS)
    budget = {"id": "key-cap", "selector": {"key": key_id}, "limit": limit.decimal_str(), "window": "day"}
    with Cluster.start(3, config(fake, ledger.url, budgets=[budget]), tmp_path) as cluster:
        urls = [g.url for g in cluster.gateways]
        statuses = Counter(asyncio.run(fire(urls, secret, BODY, REQUESTS)))
        billed = arrivals(fake)
        spent = priced(billed)
        check = open_ledger(ledger.url, create=False)
        try:
            usage = check.usage("key-cap")
        finally:
            check.close()
    print(  # the figure docs/deploy.md quotes (pytest -s)
        f"\n{ledger.backend}: {statuses[200]} of {REQUESTS} admitted, the upstream billed {spent} of "
        f"{limit} ({spent.nanos / limit.nanos:.1%})"
    )
    assert set(statuses) <= {200, 429}, statuses  # never a 5xx, never a lost answer
    assert statuses[200] == len(billed), (statuses, len(billed))
    assert spent <= limit, f"the upstream billed {spent}, over the budget {limit}"
    assert spent.nanos >= limit.nanos * 9 // 10, f"only {spent} of {limit} used ({statuses})"
    assert usage.spent == spent and usage.reserved == Money(0), usage  # the ledger agrees, to the nano


def test_a_disabled_or_rotated_key_stops_on_every_instance_within_the_cache_bound(
    ledger: SharedLedger, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Keys are read through a 5 s cache (``KeyStore.cache_ttl``): a change made anywhere (here by
    another process, as the admin CLI or another instance would) reaches every instance within it."""
    from spendgate.gateway.keys import open_keystore

    off_id, off_secret = make_key(ledger.url, user="to-disable")
    rot_id, old_secret = make_key(ledger.url, user="to-rotate")
    with Cluster.start(3, config(fake, ledger.url), tmp_path) as cluster:
        urls = [g.url for g in cluster.gateways]

        def status(url: str, secret: str) -> int:
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json=BODY,
                headers={"authorization": f"Bearer {secret}"},
                timeout=10,
            )
            return response.status_code

        assert all(status(u, s) == 200 for u in urls for s in (off_secret, old_secret))  # cached now
        store = open_keystore(ledger.url)
        try:
            store.disable(off_id)
            _, new_secret = store.rotate(rot_id)
        finally:
            store.close()
        changed = time.monotonic()
        assert all(status(u, new_secret) == 200 for u in urls)  # a new secret works at once everywhere
        pending = {(u, s) for u in urls for s in (off_secret, old_secret)}
        deadline = changed + 5.0 + 2.0  # the cache bound, and room for a loaded machine
        while pending and time.monotonic() < deadline:
            pending = {(u, s) for u, s in pending if status(u, s) != 401}
            time.sleep(0.1)
        took = time.monotonic() - changed
    assert not pending, f"still accepted after {took:.1f} s: {pending}"


def test_a_killed_instance_s_reservations_are_charged_when_their_lease_runs_out(
    ledger: SharedLedger, fake: FakeUpstream, tmp_path: Path
) -> None:
    """SIGKILL one instance with requests in flight: nothing it reserved is lost. Another
    instance's lease expiry charges each at its reservation once the (3 s) lease ends."""
    key_id, secret = make_key(ledger.url, user="killed")
    budget = {"id": "killed-cap", "selector": {"key": key_id}, "limit": "10", "window": "day"}
    cfg = config(fake, ledger.url, budgets=[budget], defaults={"max_body_bytes": 65536, "lease": 3})
    held = 5
    with Cluster.start(2, cfg, tmp_path) as cluster:
        doomed, survivor = cluster.gateways

        async def in_flight() -> None:
            headers = {"authorization": f"Bearer {secret}", "x-fake-hold": "never"}
            async with httpx.AsyncClient(timeout=30.0) as http:
                tasks = [
                    asyncio.ensure_future(
                        http.post(f"{doomed.url}/v1/chat/completions", json=BODY, headers=headers)
                    )
                    for _ in range(held)
                ]
                check = open_ledger(ledger.url, create=False)
                try:
                    for _ in range(200):  # bounded: until all are reserved (and held at the fake)
                        if _held(fake, "never") >= held:
                            break
                        await asyncio.sleep(0.05)
                    reserved = check.usage("killed-cap").reserved
                finally:
                    check.close()
                assert reserved.nanos > 0
                os.kill(doomed.proc.pid, signal.SIGKILL)
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(in_flight())
        doomed.proc.wait(10)
        check = open_ledger(ledger.url, create=False)
        try:
            held_amount = check.usage("killed-cap").reserved
            assert held_amount.nanos > 0 and check.usage("killed-cap").spent == Money(0)
            time.sleep(3.2)  # the lease is real time here: the gateways run on the system clock
            other_secret = make_key(ledger.url, user="wakes-expiry")[1]
            response = httpx.post(  # any request on the survivor runs its opportunistic expiry
                f"{survivor.url}/v1/chat/completions",
                json=BODY,
                headers={"authorization": f"Bearer {other_secret}"},
                timeout=10,
            )
            assert response.status_code == 200, response.text
            for _ in range(100):
                if check.usage("killed-cap").reserved == Money(0):
                    break
                time.sleep(0.05)
            after = check.usage("killed-cap")
        finally:
            check.close()
    assert after.reserved == Money(0), after
    assert after.spent == held_amount  # every killed request charged its whole reservation


def _held(fake: FakeUpstream, name: str) -> int:
    """Requests waiting at the fake's gate ``name`` now: reserved, forwarded, not yet answered."""
    stats = httpx.get(fake.root_url + "/_fake/stats", timeout=10).json()
    return int(stats["held"].get(name, 0))
