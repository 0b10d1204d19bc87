"""Issue 10, section 7: an upstream's connection pool. Requests beyond ``max_connections`` wait for
a place and are then served (not failed); the wait shows in /metrics and in one rate-limited log
line; ``pool_timeout`` bounds it. Real processes (the gateway, the fake upstream); the fake's
``x-fake-hold`` keeps requests at the upstream until the test releases them, so the test counts
requests where they are instead of timing anything."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendgate.gateway.config import parse_settings
from spendgate.gateway.metrics import PoolMetrics
from spendgate.gateway.settings import Upstream
from spendgate.gateway.upstream_client import UpstreamClient, UpstreamPoolTimeoutError
from spendgate.testing import FakeUpstream

from .conftest import SRC, Gateway, _stop, _wait_ready, base_config, start_env, wait_until

BODY: dict[str, Any] = {
    "model": "pooled-gpt",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 3,
}
_names = itertools.count()


def _hold_name(what: str) -> str:
    return f"pool-{what}-{next(_names)}"  # the fake process is shared: a gate of our own


def _start(tmp: Path, up: FakeUpstream) -> tuple[Gateway, str]:
    config = base_config(up, "sqlite:///unused")
    upstreams = {
        **config["upstreams"],
        "pooled": {"kind": "openai", "base_url": up.base_url, "max_connections": 2},
        "tight": {"kind": "openai", "base_url": up.base_url, "max_connections": 1, "pool_timeout": 0},
    }
    routes = [
        {"model": "pooled-gpt", "upstream": "pooled", "upstream_model": "gpt-4o"},
        {"model": "tight-gpt", "upstream": "tight", "upstream_model": "gpt-4o"},
        *config["routes"],
    ]
    gateway, keys = start_env(tmp, up, keys={"alice": {"user": "alice"}}, upstreams=upstreams, routes=routes)
    return gateway, keys["alice"][1]


def _post(gateway: Gateway, secret: str, hold: str, model: str = "pooled-gpt") -> httpx.Response:
    return httpx.post(
        gateway.base_url + "/chat/completions",
        json={**BODY, "model": model},
        headers={"authorization": f"Bearer {secret}", "x-fake-hold": hold},
        timeout=60,
    )


def _pool_samples(gateway: Gateway, upstream: str) -> dict[str, float]:
    """The pool's series of ``upstream`` in /metrics, by sample name (absent: not yet made)."""
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("spendgate_upstream_pool")
        for sample in family.samples
        if sample.labels.get("upstream") == upstream and "le" not in sample.labels
    }


def test_requests_beyond_the_pool_wait_then_succeed(
    tmp_path: Path, up: FakeUpstream, capfd: pytest.CaptureFixture[str]
) -> None:
    gateway, secret = _start(tmp_path, up)
    hold = _hold_name("wait")
    try:
        with ThreadPoolExecutor(6) as pool:
            calls: list[Future[httpx.Response]] = [
                pool.submit(_post, gateway, secret, hold) for _ in range(6)
            ]
            # Two at the upstream (the pool's size), four waiting for a connection.
            assert wait_until(
                lambda: (
                    up.held(hold) == 2
                    and _pool_samples(gateway, "pooled").get("spendgate_upstream_pool_waiting") == 4
                ),
                timeout=30,
            ), (up.held(hold), _pool_samples(gateway, "pooled"))
            assert up.held(hold) == 2  # no third request reached the upstream
            assert not any(call.done() for call in calls)
            up.release(hold)
            answers = [call.result(timeout=60) for call in calls]
        assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
        assert all(r.json()["usage"]["completion_tokens"] == 3 for r in answers)
        samples = _pool_samples(gateway, "pooled")
        assert samples["spendgate_upstream_pool_wait_seconds_count"] == 4  # the four that waited
        assert samples["spendgate_upstream_pool_waiting"] == 0
        assert samples.get("spendgate_upstream_pool_timeouts_total", 0) == 0
    finally:
        gateway.stop()
    # One warning for the four waits: rate-limited, not one per request.
    logged = [line for line in capfd.readouterr().err.splitlines() if "upstream 'pooled'" in line]
    assert len(logged) == 1, logged
    assert "all 2 connections of its pool are in use" in logged[0]
    assert "upstreams.pooled.max_connections" in logged[0]


def test_pool_timeout_fails_without_sending(tmp_path: Path, up: FakeUpstream) -> None:
    """``pool_timeout: 0``: a request that finds the pool full fails at once, and never reaches
    the upstream (nothing billed, its reservation released)."""
    gateway, secret = _start(tmp_path, up)
    hold = _hold_name("timeout")
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_post, gateway, secret, hold, "tight-gpt")
            assert wait_until(lambda: up.held(hold) == 1, timeout=30)
            second = _post(gateway, secret, hold, "tight-gpt")
            assert second.status_code == 504, second.text
            assert second.json()["error"]["code"] == "upstream_timeout"
            assert up.held(hold) == 1  # the second never reached the upstream
            up.release(hold)
            assert first.result(timeout=60).status_code == 200
        samples = _pool_samples(gateway, "tight")
        assert samples["spendgate_upstream_pool_timeouts_total"] == 1
        assert samples["spendgate_upstream_pool_waiting"] == 0
        with gateway.ledger() as ledger:
            assert all(u.reserved.nanos == 0 for u in ledger.list_budgets())
    finally:
        gateway.stop()


# -- the client's pool itself, against the fake process --------------------------------------------


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``check`` in a thread (it may ask the fake over HTTP), bounded: waiting for a state,
    never a timing assertion."""
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_waiters_served_in_order_and_a_cancelled_one_gives_its_place_back(up: FakeUpstream) -> None:
    metrics = PoolMetrics()
    client = UpstreamClient(metrics=metrics)
    upstream = Upstream(name="p", kind="openai", base_url=up.base_url, max_connections=1)
    body = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ).encode()
    hold = _hold_name("client")
    path = "/v1/chat/completions"
    try:
        first = asyncio.ensure_future(client.open(upstream, path, body, [("x-fake-hold", hold)]))
        await _until(lambda: up.held(hold) == 1)
        second = asyncio.ensure_future(client.open(upstream, path, body, []))
        third = asyncio.ensure_future(client.open(upstream, path, body, []))
        await _until(lambda: client.pool_state("p") == (1, 2))
        second.cancel()  # a client that went away while waiting
        with pytest.raises(asyncio.CancelledError):
            await second
        assert client.pool_state("p") == (1, 1)
        await asyncio.to_thread(up.release, hold)
        resp = await first
        assert resp.status_code == 200
        await resp.aread()
        await resp.aclose()  # its place goes to the third, not lost to the cancelled second
        resp3 = await third
        assert resp3.status_code == 200
        await resp3.aread()
        await resp3.aclose()
        assert client.pool_state("p") == (0, 0)
        count = metrics.registry.get_sample_value(
            "spendgate_upstream_pool_wait_seconds_count", {"upstream": "p"}
        )
        assert count == 2  # the cancelled wait counts too
        assert metrics.registry.get_sample_value("spendgate_upstream_pool_waiting", {"upstream": "p"}) == 0

        # A reload that shrinks the pool to nothing free: pool_timeout 0 fails at once, unsent.
        busy = await client.open(upstream, path, body, [])
        tight = Upstream(name="p", kind="openai", base_url=up.base_url, max_connections=1, pool_timeout=0)
        with pytest.raises(UpstreamPoolTimeoutError) as failed:
            await client.open(tight, path, body, [])
        assert failed.value.sent is False
        await busy.aread()
        await busy.aclose()
    finally:
        await client.aclose()


def test_pool_config_keys_and_defaults() -> None:
    upstreams: dict[str, dict[str, Any]] = {
        "a": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1"},
        "b": {
            "kind": "openai",
            "base_url": "http://127.0.0.1:1/v1",
            "max_connections": 8,
            "pool_timeout": 2.5,
        },
    }
    routes = [{"model": "*", "upstream": "a"}]
    settings = parse_settings({"upstreams": upstreams, "routes": routes, "listen": {"max_connections": 3000}})
    a, b = settings.upstreams["a"], settings.upstreams["b"]
    assert (a.max_connections, a.pool_timeout) == (3000, 60.0)  # the process's own cap by default
    assert (b.max_connections, b.pool_timeout) == (8, 2.5)
    assert parse_settings({"upstreams": upstreams, "routes": routes}).upstreams["a"].max_connections == 10_000
    for bad, key in (({"max_connections": 0}, "max_connections"), ({"pool_timeout": -1}, "pool_timeout")):
        with pytest.raises(Exception, match=rf"upstreams\.a\.{key}"):
            parse_settings({"upstreams": {"a": {**upstreams["a"], **bad}}, "routes": routes})


def test_serve_raises_the_open_file_limit_and_warns_when_the_hard_one_is_short(
    tmp_path: Path, up: FakeUpstream
) -> None:
    """A held request takes two descriptors: ``spendgate serve`` raises its soft limit to the hard
    one, and says so when even that holds fewer requests than ``listen.max_connections``."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip("the hard open-file limit here is below the one this test sets")
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(base_config(up, f"sqlite:///{tmp_path / 'ledger.db'}")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
    # The child's limits only: soft 256, hard 4096 (short of 2 x listen.max_connections 10,000).
    limit = 'ulimit -S -n 256 && ulimit -H -n 4096 && exec "$0" "$@"'
    argv = ["sh", "-c", limit, sys.executable, "-m", "spendgate.gateway.server", "--config", str(path)]
    with (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [*argv, "--port", "0"], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
    try:
        _wait_ready(proc, 20.0)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        soft = next(line.split()[3] for line in limits.splitlines() if line.startswith("Max open files"))
        assert soft == "4096"
    finally:
        _stop(proc)
    logged = (tmp_path / "stderr").read_text()
    assert "the open-file limit is 4096: about 1920 requests can be held at once, not the 10000" in logged
