"""Several gateway processes on one shared ledger (PostgreSQL, or Redis beside PostgreSQL).

SQLite joins where the instances share a machine (one file). Each gateway is a separate ``spendgate.gateway.server`` process with its own config file, all
naming the same ledger URL, in front of a fake upstream process of the test's own (its stats and
arrivals are this test's alone). The ledger gets a schema (and key prefix) of its own, dropped
at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.conftest import Gateway, gateway_config
from spendgate.cost import cost_of
from spendgate.gateway.keys import open_keystore
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.testing import FakeUpstream
from spendgate.testing.servers import (
    drop_postgres_schema,
    drop_redis_prefix,
    postgres_test_url,
    redis_test_url,
)
from spendgate.usage import Usage

BACKENDS = ("sqlite", "postgresql", "redis")


@dataclass
class SharedLedger:
    """A ledger URL every instance names, and what to drop afterwards."""

    backend: str
    url: str
    durable: str | None = None  # Redis's durable store (a PostgreSQL schema)

    def drop(self) -> None:
        if self.backend == "redis":
            drop_redis_prefix(self.url)
        if self.durable is not None:
            drop_postgres_schema(self.durable)
        if self.backend == "postgresql":
            drop_postgres_schema(self.url)


def shared_ledger(backend: str, *, postgres: str | None = None, redis: str | None = None) -> SharedLedger:
    """A fresh shared ledger; ``postgres``/``redis`` override the servers' URLs (a proxy's)."""
    pg = postgres_test_url("cluster")
    if postgres is not None:
        pg = pg.replace("127.0.0.1:5432", postgres, 1)
    if backend == "postgresql":
        return SharedLedger(backend, pg)
    if backend == "sqlite":  # several instances on one machine share a file
        import tempfile

        return SharedLedger(backend, f"sqlite:///{tempfile.mkdtemp()}/cluster.db")
    url = redis_test_url(pg, "cluster")
    if redis is not None:
        url = url.replace("127.0.0.1:6379", redis, 1)
    return SharedLedger(backend, url, durable=pg)


@pytest.fixture(params=BACKENDS)
def ledger(request: pytest.FixtureRequest) -> Iterator[SharedLedger]:
    made = shared_ledger(request.param)
    yield made
    made.drop()


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """A fake upstream of this test's own: its arrivals are this test's requests only."""
    with FakeUpstream.start() as upstream:
        yield upstream


class Cluster:
    """Gateways started together (in parallel: each loads its tokenizer and catalog)."""

    def __init__(self, gateways: Sequence[Gateway]) -> None:
        self.gateways = list(gateways)

    @classmethod
    def start(
        cls, n: int, config: dict[str, Any], tmp: Path, args: Sequence[str] = ("--log-level", "warning")
    ) -> Cluster:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            futures = [
                pool.submit(Gateway.start, config, tmp / f"gateway-{i}.yaml", None, args) for i in range(n)
            ]
            started: list[Gateway] = []
            errors: list[BaseException] = []
            for future in futures:
                try:
                    started.append(future.result())
                except BaseException as exc:
                    errors.append(exc)
        if errors:
            for gateway in started:
                gateway.stop()
            raise errors[0]
        return cls(started)

    def stop(self) -> None:
        for gateway in self.gateways:
            if gateway.proc.poll() is None:
                gateway.stop()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def config(fake: FakeUpstream, url: str, **extra: Any) -> dict[str, Any]:
    """One gateway's config on the shared ledger (every instance gets the same one)."""
    return gateway_config(fake.root_url, url, **extra)


def make_key(url: str, **attributes: Any) -> tuple[str, str]:
    """A virtual key in the shared store: (its id, its secret)."""
    store = open_keystore(url)
    try:
        key, secret = store.create(**attributes)
    finally:
        store.close()
    return key.id, secret


def arrivals(fake: FakeUpstream) -> list[list[Any]]:
    """``[arrived, model, prompt_tokens, output_tokens]`` per answer the fake billed."""
    found: list[list[Any]] = httpx.get(fake.root_url + "/_fake/arrivals", timeout=10).json()["arrivals"]
    return found


def priced(rows: Sequence[Sequence[Any]]) -> Money:
    """What the fake billed, priced here from its own token counts (not the ledger's)."""
    catalog = Catalog.default()
    total = 0
    for _, model, prompt, output in rows:
        total += cost_of(Usage(input_tokens=prompt, output_tokens=output), catalog.price(model)).total.nanos
    return Money(total)


async def fire(
    urls: Sequence[str], secret: str, body: dict[str, Any], n: int, headers: dict[str, str] | None = None
) -> list[int]:
    """``n`` requests at once, spread over ``urls`` in turn; their statuses (0: no answer)."""
    sent = {"authorization": f"Bearer {secret}", **(headers or {})}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:

        async def one(i: int) -> int:
            try:
                response = await http.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions", json=body, headers=sent
                )
            except httpx.HTTPError:
                return 0
            return response.status_code

        async with asyncio.timeout(120):
            return list(await asyncio.gather(*(one(i) for i in range(n))))
