"""Issue 10, section 4: bounded /metrics labels and its token, the forwarded-header allowlist,
the admin token a non-loopback gateway needs, and the connection limits (slowloris)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from spendgate.gateway.app import GatewayState, create_app
from spendgate.gateway.config import GatewayConfigError, parse_settings
from spendgate.gateway.settings import GatewaySettings, exposure_problem, is_loopback_host
from spendgate.testing import FakeUpstream

from .conftest import SRC, Gateway, base_config
from .inprocess import GATEWAY, InProcessGateway, InProcessUpstream, config

pytestmark = pytest.mark.anyio

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


# -- /metrics ------------------------------------------------------------------------------------


async def test_metrics_labels_stay_bounded_for_made_up_model_names(tmp_path: Path) -> None:
    async with InProcessGateway.start(tmp_path) as gw:
        http, metrics = gw.http("alice"), gw.http(base="")
        assert (await http.post("/chat/completions", json={"model": "gpt-4o", **CHAT})).status_code == 200
        before = len((await metrics.get("/metrics")).content)
        names = [f"gpt-{secrets.token_hex(1000)}" for _ in range(20)]  # 2 KB each, routed by `gpt-*`
        for name in names:
            await http.post("/chat/completions", json={"model": name, **CHAT})  # no price: 400
            await http.post("/messages", json={"model": name, **CHAT})  # wrong endpoint: 400
        text = (await metrics.get("/metrics")).text
        assert not any(name in text for name in names)
        assert 'model="other"' in text and 'model="gpt-4o"' in text
        assert len(text) - before < 5000  # a few new series, not 40 names of 2 KB each


async def test_metrics_budget_labels_hold_no_end_user_id(tmp_path: Path) -> None:
    budgets = [{"id": "per-customer", "selector": {"customer": "*"}, "limit": "10", "window": "day"}]
    async with InProcessGateway.start(tmp_path, budgets=budgets) as gw:
        for user in ("alice@example.com", "bob@example.com"):
            body = {"model": "gpt-4o", "user": user, **CHAT}
            assert (await gw.http("alice").post("/chat/completions", json=body)).status_code == 200
        text = (await gw.http(base="").get("/metrics")).text
        assert "example.com" not in text
        ratios = [line for line in text.splitlines() if line.startswith("spendgate_budget_usage_ratio{")]
        assert len(ratios) == 1 and ratios[0].startswith(
            'spendgate_budget_usage_ratio{budget="per-customer"}'
        )


async def test_metrics_token_protects_metrics(tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    settings = parse_settings(
        config(f"sqlite:///{tmp_path / 'ledger.db'}", metrics_token_env="METRICS_TOKEN"),
        environ={"METRICS_TOKEN": token},
    )
    upstream = InProcessUpstream()
    app = create_app(GatewayState.build(settings, client=upstream))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=GATEWAY) as client:
            assert (await client.get("/metrics")).status_code == 401
            wrong = await client.get("/metrics", headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_metrics_token"
            right = await client.get("/metrics", headers={"authorization": f"Bearer {token}"})
            assert right.status_code == 200 and "spendgate_requests" in right.text
    finally:
        await app.aclose()
        await upstream.aclose()


def test_metrics_token_env_must_be_set(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match="metrics_token_env"):
        parse_settings(config("memory://", metrics_token_env="METRICS_TOKEN"), environ={})


# -- forwarded headers ---------------------------------------------------------------------------


async def test_only_allowlisted_client_headers_reach_the_upstream(tmp_path: Path) -> None:
    async with InProcessGateway.start(tmp_path) as gw:
        headers = {
            "x-goog-api-key": "AIza-secret",
            "api-key": "azure-secret",
            "x-custom-thing": "1",
            "x-forwarded-for": "10.0.0.1",
            "connection": "keep-alive, openai-beta, x-stainless-lang",
            "keep-alive": "timeout=5",
            "openai-beta": "assistants=v2",
            "x-stainless-lang": "python",
            "x-stainless-retry-count": "0",
            "openai-organization": "org-1",
            "openai-project": "proj-1",
            "idempotency-key": "abc",
        }
        r = await gw.http("alice").post(
            "/chat/completions", json={"model": "gpt-4o", **CHAT}, headers=headers
        )
        assert r.status_code == 200, r.text
        sent = {name.lower(): value for name, value in gw.upstream.received[-1].headers.items()}
        for dropped in ("x-goog-api-key", "api-key", "x-custom-thing", "x-forwarded-for", "keep-alive"):
            assert dropped not in sent
        assert "openai-beta" not in sent and "x-stainless-lang" not in sent  # named in Connection:
        assert sent["x-stainless-retry-count"] == "0"
        assert sent["openai-organization"] == "org-1" and sent["openai-project"] == "proj-1"
        assert sent["idempotency-key"] == "abc"
        assert "AIza-secret" not in str(sent) and "azure-secret" not in str(sent)


# -- the admin token beyond loopback -------------------------------------------------------------


def test_weak_admin_token_is_refused_beyond_loopback_only() -> None:
    weak = GatewaySettings(admin_token="a")
    strong = GatewaySettings(admin_token="x" * 32)
    for host in ("0.0.0.0", "::", "192.168.1.20", "gateway.example.com"):
        problem = exposure_problem(weak, host)
        assert problem is not None and "at least 32" in problem
        assert exposure_problem(strong, host) is None
    for host in ("127.0.0.1", "::1", "[::1]", "localhost"):
        assert is_loopback_host(host) and exposure_problem(weak, host) is None
    assert exposure_problem(GatewaySettings(), "0.0.0.0") is None  # admin API off


def test_serve_refuses_to_start_with_a_weak_admin_token_on_all_interfaces(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        '{"ledger": "memory://", "listen": {"host": "0.0.0.0", "port": 0},'
        ' "upstreams": {"local": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},'
        ' "routes": [{"model": "*", "upstream": "local"}]}'
    )
    env = {**os.environ, "SPENDGATE_ADMIN_TOKEN": "a", "PYTHONPATH": SRC}
    argv = [sys.executable, "-m", "spendgate.gateway.server", "--config", str(path)]
    done = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to start" in done.stderr and "at least 32" in done.stderr
    assert "ready" not in done.stdout


# -- connection limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "key"),
    [
        ({"header_timeout": 0}, "listen.header_timeout"),
        ({"keep_alive_timeout": "soon"}, "listen.keep_alive_timeout"),
        ({"max_connections": 0}, "listen.max_connections"),
    ],
)
def test_listen_limits_are_validated(listen: dict[str, Any], key: str) -> None:
    with pytest.raises(GatewayConfigError, match=key):
        parse_settings(config("memory://", listen=listen), environ={})


def test_listen_limits_are_read() -> None:
    listen = {"header_timeout": 2.5, "keep_alive_timeout": 7, "max_connections": 50}
    settings = parse_settings(config("memory://", listen=listen), environ={})
    assert (settings.header_timeout, settings.keep_alive_timeout, settings.max_connections) == (2.5, 7.0, 50)


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (reads until EOF; fails past ``seconds``)."""
    sock.settimeout(seconds)
    started = time.monotonic()
    while sock.recv(4096):
        pass
    return time.monotonic() - started


@pytest.fixture
def limited(up: FakeUpstream, tmp_path: Path) -> Any:
    listen = {"header_timeout": 0.5, "keep_alive_timeout": 0.5}
    cfg = base_config(up, f"sqlite:///{tmp_path / 'ledger.db'}", listen=listen)
    gateway = Gateway.start(cfg, tmp_path / "gw.yaml")
    yield gateway
    gateway.stop()


def test_a_connection_that_sends_nothing_is_closed(limited: Gateway) -> None:
    host, port = limited.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        assert _closed_within(sock, 5.0) < 3.0


def test_a_connection_that_dribbles_its_headers_is_closed(limited: Gateway) -> None:
    host, port = limited.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        assert _closed_within(sock, 5.0) < 3.0


def test_an_idle_keep_alive_connection_is_closed(limited: Gateway) -> None:
    host, port = limited.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5.0)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert _closed_within(sock, 5.0) < 3.0
