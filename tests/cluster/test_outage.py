"""The ledger server goes away under load, and comes back: fail closed, then resume by itself.

The gateways reach the server through a ``TcpProxy`` the test cuts (connections reset, new ones
refused: what a stopped server looks like from the client) or stalls (connections accepted,
nothing answered: a hung server or a partition), so the servers every other test shares keep
running. While the ledger is gone every request gets a 503 within the ledger's short timeout,
``/readyz`` says not ready, and nothing reaches the upstream that the ledger did not reserve;
once it is back the same gateway processes serve again. In the end every answer the upstream
billed is in the ledger: settled, or charged at its reservation when its lease ran out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spendgate.gateway.keys import KeyStore
from spendgate.ledger import open_ledger
from spendgate.ledger.memory import MemoryKeyStorage
from spendgate.money import Money
from spendgate.testing import FakeUpstream
from spendgate.testing.servers import with_query
from spendgate.testing.tcpproxy import TcpProxy

from .conftest import Cluster, SharedLedger, arrivals, config, make_key, priced, shared_ledger

TIMEOUT = 1.0  # the ledger URL's timeout: how long a request may wait on a server that is gone
LEASE = 3  # seconds: what the settles lost in the outage hold until their leases end
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 8,
    "service_tier": "default",
}
SERVERS = {"postgresql": ("127.0.0.1", 5432), "redis": ("127.0.0.1", 6379)}


@pytest.fixture(params=sorted(SERVERS))
def behind_proxy(request: pytest.FixtureRequest) -> Iterator[tuple[SharedLedger, TcpProxy]]:
    """A shared ledger whose hot server (PostgreSQL, or Redis) is reached through a proxy."""
    backend: str = request.param
    with TcpProxy(*SERVERS[backend]) as proxy:
        address = f"127.0.0.1:{proxy.port}"
        made = (
            shared_ledger(backend, postgres=address)
            if backend == "postgresql"
            else shared_ledger(backend, redis=address)
        )
        made.url = with_query(made.url, timeout=f"{TIMEOUT:g}")
        try:
            yield made, proxy
        finally:
            proxy.restore()
            made.drop()


async def _load(
    urls: list[str], secret: str, stop: asyncio.Event, seen: list[tuple[float, int, float]]
) -> None:
    """One client sending again at once after each answer until ``stop``: (sent, status, seconds)."""
    async with httpx.AsyncClient(timeout=30.0) as http:
        for i in range(10_000):  # bounded; the phases end it long before
            if stop.is_set():
                return
            sent = time.monotonic()
            try:
                response = await http.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions",
                    json=BODY,
                    headers={"authorization": f"Bearer {secret}"},
                )
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            seen.append((sent, status, time.monotonic() - sent))
            if status == 503:
                await asyncio.sleep(0.05)


async def _ready(urls: list[str]) -> set[int]:
    """Each instance's ``/readyz`` status (a failure shows their answers)."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        answers = [await http.get(url + "/readyz") for url in urls]
    _ready.last = [a.text for a in answers]  # type: ignore[attr-defined]
    return {a.status_code for a in answers}


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_the_ledger_server_gone_mid_load(
    behind_proxy: tuple[SharedLedger, TcpProxy], fault: str, fake: FakeUpstream, tmp_path: Path
) -> None:
    ledger, proxy = behind_proxy
    key_id, secret = make_key(ledger.url, user="outage")
    budget = {"id": "outage", "selector": {"key": key_id}, "limit": "100", "window": "day"}
    cfg = config(fake, ledger.url, budgets=[budget], defaults={"max_body_bytes": 65536, "lease": LEASE})
    with Cluster.start(2, cfg, tmp_path) as cluster:
        urls = [g.url for g in cluster.gateways]

        async def run() -> dict[str, list[tuple[float, int, float]]]:
            phases: dict[str, list[tuple[float, int, float]]] = {"before": [], "during": [], "after": []}
            for phase, seen in phases.items():
                if phase == "during":
                    proxy.cut() if fault == "cut" else proxy.stall()
                    await asyncio.sleep(TIMEOUT + 0.5)  # requests already past the ledger finish
                elif phase == "after":
                    proxy.restore()
                stop = asyncio.Event()
                clients = [asyncio.ensure_future(_load(urls, secret, stop, seen)) for _ in range(4)]
                if phase == "during":
                    await asyncio.sleep(2.5)
                    assert await _ready(urls) == {503}, _ready.last  # type: ignore[attr-defined]
                elif phase == "after":
                    for _ in range(100):  # bounded: until both instances serve again
                        if {s for _, s, _ in seen[-8:]} == {200} and len(seen) >= 8:
                            break
                        await asyncio.sleep(0.1)
                    for _ in range(50):  # readiness is probed at most once a second: poll, as a balancer does
                        if await _ready(urls) == {200}:
                            break
                        await asyncio.sleep(0.1)
                    assert await _ready(urls) == {200}, _ready.last  # type: ignore[attr-defined]
                else:
                    await asyncio.sleep(1.0)
                stop.set()
                async with asyncio.timeout(30):
                    await asyncio.gather(*clients)
            return phases

        phases = asyncio.run(run())
        before, during, after = (Counter(s for _, s, _ in phases[p]) for p in ("before", "during", "after"))
        assert set(before) == {200}, before
        # While it is gone: only 503s, each within the ledger's timeout (and some room).
        assert set(during) == {503}, during
        slowest = max(took for _, _, took in phases["during"])
        # The bound: the ledger's pool wait and one statement (2 x timeout), or a key lookup that
        # missed its cache (KeyStore.read_timeout), and room for a loaded machine.
        bound = max(2 * TIMEOUT + 0.5, KeyStore(MemoryKeyStorage()).read_timeout) + 1.0
        assert slowest < bound, f"a request waited {slowest:.2f} s for a ledger that was gone"
        assert after[200] > 0 and set(after) <= {200, 503}, after  # the same processes serve again
        billed = arrivals(fake)
        # Every billed answer is in the ledger: settled, or held and charged when its lease ends.
        time.sleep(LEASE + 0.3)
        wake = httpx.post(
            f"{urls[0]}/v1/chat/completions",
            json=BODY,
            headers={"authorization": f"Bearer {secret}"},
            timeout=10,
        )
        assert wake.status_code == 200, wake.text  # runs the lease expiry of both instances' leftovers
        check = open_ledger(ledger.url.replace(f"127.0.0.1:{proxy.port}", _direct(ledger)), create=False)
        try:
            for _ in range(100):
                usage = check.usage("outage")
                if usage.reserved == Money(0):
                    break
                time.sleep(0.05)
            logged = check.query_requests(limit=100_000, key=key_id)
        finally:
            check.close()
    assert usage.reserved == Money(0), usage
    # Every billed answer settled (+1: the wake-up request). A reserve whose answer was lost in
    # the outage (it reached the server only when the proxy let it through) is charged at its
    # lease's end: over, never under, what was billed.
    settled = [r for r in logged if r.status != "expired"]
    assert len(settled) == len(billed) + 1, (len(settled), len(billed))
    assert usage.spent.nanos >= priced(billed).nanos  # never under what the upstream billed


def _direct(ledger: SharedLedger) -> str:
    return "127.0.0.1:5432" if ledger.backend == "postgresql" else "127.0.0.1:6379"
