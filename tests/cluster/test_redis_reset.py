"""A Redis that loses its data never resets spend: the gateways fail closed until a rebuild.

The test runs a Redis server of its own (a child process, no persistence, as the machine's
is), so it may flush it and kill it. Two gateway instances on it, the durable store a
PostgreSQL schema. Spend is made; then Redis is flushed (and, in the other case, killed and
started again empty). Every request gets a 503 naming the cause, ``/readyz`` says not ready:
nothing is admitted against counters at zero. ``spendgate ledger rebuild`` starts Redis over
from the durable log; the budget's spend is back (what was logged) and the same gateway
processes serve again, still within the budget.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner

from gateway.conftest import closed_port
from spendgate.cli import main
from spendgate.ledger import open_ledger
from spendgate.money import Money
from spendgate.testing import FakeUpstream
from spendgate.testing.servers import drop_postgres_schema, postgres_test_url, with_query

from .conftest import Cluster, config, make_key

BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 8,
    "service_tier": "default",
}


class RedisServer:
    """``redis-server`` on a free port, nothing on disk."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = closed_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed (scripts/services.sh installs it)"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        for _ in range(100):  # bounded: until it answers
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("the test's redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _post(url: str, secret: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {secret}"}, timeout=15
    )


@pytest.mark.parametrize("loss", ["flush", "restart"])
def test_a_redis_that_lost_its_data_fails_closed_until_rebuilt(
    own_redis: RedisServer, loss: str, fake: FakeUpstream, tmp_path: Path
) -> None:
    durable = postgres_test_url("reset")
    url = with_query(f"redis://127.0.0.1:{own_redis.port}/0", prefix="reset", durable=durable, timeout="1")
    try:
        key_id, secret = make_key(url, user="reset")
        budget = {"id": "reset", "selector": {"key": key_id}, "limit": "10", "window": "day"}
        with Cluster.start(2, config(fake, url, budgets=[budget]), tmp_path) as cluster:
            urls = [g.url for g in cluster.gateways]
            for i in range(20):
                assert _post(urls[i % 2], secret).status_code == 200
            check = open_ledger(url, create=False)
            try:
                before = check.usage("reset").spent
                assert before.nanos > 0
                assert len(check.query_requests(key=key_id)) == 20  # drained to the durable log
            finally:
                check.close()

            if loss == "flush":
                redis.Redis(port=own_redis.port).flushall()
            else:
                own_redis.kill()
                own_redis.start()  # empty: no persistence
            for i in range(6):
                refused = _post(urls[i % 2], secret)
                assert refused.status_code == 503, refused.text
                assert "ledger" in refused.json()["error"]["message"]
            ready = [httpx.get(u + "/readyz", timeout=10) for u in urls]
            assert {r.status_code for r in ready} == {503}
            assert all("rebuild" in r.json()["reason"] for r in ready), [r.text for r in ready]

            rebuilt = CliRunner().invoke(main, ["ledger", "rebuild", "--yes", "--ledger", url])
            assert rebuilt.exit_code == 0, rebuilt.output
            assert "rebuilt from 20 logged requests" in rebuilt.output

            check = open_ledger(url, create=False)
            try:
                assert check.usage("reset").spent == before  # the logged spend, not zero
            finally:
                check.close()
            served = [_post(urls[i % 2], secret).status_code for i in range(30)]  # the same processes
            assert served.count(200) >= 28 and set(served) <= {200, 503}, served
            check = open_ledger(url, create=False)
            try:
                after = check.usage("reset")
            finally:
                check.close()
        assert after.spent.nanos > before.nanos and after.spent <= Money.usd("10")
    finally:
        drop_postgres_schema(durable)
