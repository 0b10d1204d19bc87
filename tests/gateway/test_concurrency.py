"""200 concurrent requests against a budget that affords exactly 50: 50 admitted, 150 refused,
and what the upstream itself billed, priced here, stays within the limit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spendgate.cost import cost_of
from spendgate.estimate import estimate_request
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.testing import FakeUpstream
from spendgate.usage import Usage

from .conftest import Gateway, start_env

N = 200
AFFORDED = 50
MODEL = "gpt-4o-mini"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Count to three."}], "max_tokens": 64}


@pytest.fixture(scope="module")
def own_up() -> Iterator[FakeUpstream]:
    with FakeUpstream.start() as upstream:  # its own stats: only this test's calls
        yield upstream


@pytest.mark.parametrize("workers", [1, 2])
def test_200_concurrent_against_a_budget_of_50(tmp_path: Path, own_up: FakeUpstream, workers: int) -> None:
    """One gateway process, then two sharing the port and the ledger file (``--workers 2``)."""
    before = dict(own_up.stats()["models"].get(MODEL, {}))  # the upstream is shared by both runs
    per_request = estimate_request("chat", BODY, catalog=Catalog.default()).amount
    limit = per_request * AFFORDED
    gateway, keys = start_env(
        tmp_path,
        own_up,
        keys={"load": {"user": "load"}},
        args=["--workers", str(workers)],
        budgets=[{"id": "global", "limit": str(limit.to_decimal()), "window": "day"}],
    )
    try:
        statuses = asyncio.run(asyncio.wait_for(_fire(gateway, keys["load"][1]), timeout=60))
        with gateway.ledger() as ledger:
            usage = ledger.usage("global")
        # Every scrape, whichever worker answers it, counts every worker's requests.
        for _ in range(4):
            text = httpx.get(gateway.url + "/metrics", timeout=10).text
            answered = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("spendgate_requests_total{")
            )
            assert answered == N
    finally:
        assert gateway.stop() == 0
    assert statuses == Counter({200: AFFORDED, 429: N - AFFORDED})
    after = own_up.stats()["models"][MODEL]
    billed = {name: after[name] - before.get(name, 0) for name in after}
    assert billed["requests"] == AFFORDED
    price = Catalog.default().price(MODEL)
    upstream_cost = cost_of(
        Usage(
            input_tokens=billed["prompt_tokens"],
            output_tokens=billed["output_tokens"],
            cache_read_tokens=billed["cached_tokens"],
        ),
        price,
    ).total
    assert Money(0) < upstream_cost <= limit
    assert usage.reserved == Money(0)
    assert usage.spent <= limit


async def _fire(gateway: Gateway, secret: str) -> Counter[int]:
    # Every admitted call is held upstream for 2 s, so all 200 admissions overlap their reservations.
    headers = {"authorization": f"Bearer {secret}", "x-fake-latency-ms": "2000"}
    limits = httpx.Limits(max_connections=N, max_keepalive_connections=N)
    async with httpx.AsyncClient(base_url=gateway.base_url, limits=limits, timeout=30) as http:
        started = time.monotonic()
        responses = await asyncio.gather(
            *(http.post("/chat/completions", json=BODY, headers=headers) for _ in range(N))
        )
        assert time.monotonic() - started < 30
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "budget_exceeded"
    return Counter(r.status_code for r in responses)
