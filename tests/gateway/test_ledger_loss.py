"""The gateway never starts its ledger over silently, and /readyz proves the write path.

A real gateway process whose ledger files are deleted under it; the in-process app (the ASGI app
``spendgate serve`` runs, on a real SQLite file and a ``ManualClock``) for /readyz's probe, its
rate limit and files made unwritable with ``chattr +i`` (root ignores modes; skipped where the
attribute cannot be set), and for the admin API's refusal to delete a budget of the config.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ledger.test_ledger_file import immutable
from spendgate.clock import ManualClock
from spendgate.gateway.app import GatewayApp, GatewayState, create_app
from spendgate.gateway.config import parse_settings
from spendgate.ledger import Ledger, open_ledger
from spendgate.testing.process import FakeUpstream

from .conftest import start_env, wait_until
from .inprocess import GATEWAY, InProcessGateway, InProcessUpstream, config

anyio = pytest.mark.anyio
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


def _probes(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'probes'").fetchone()[0])


def test_deleted_ledger_fails_closed_and_is_not_started_over(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, keys = start_env(tmp_path, up)
    db = tmp_path / "ledger.db"
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            auth = {"authorization": f"Bearer {keys['alice'][1]}"}
            assert http.post("/v1/chat/completions", json=BODY, headers=auth).status_code == 200
            assert http.get("/readyz").json() == {"status": "ready", "ledger": "writable"}
            for path in tmp_path.glob("ledger.db*"):  # rm ledger.db*
                path.unlink()
            # Requests are refused (fail closed), not served into a deleted file.
            refused = http.post("/v1/chat/completions", json=BODY, headers=auth)
            assert refused.status_code == 503, refused.text
            assert "ledger is unavailable" in refused.json()["error"]["message"]
            # /readyz probes at most once a second (the process runs on the system clock).
            assert wait_until(lambda: http.get("/readyz").status_code == 503, timeout=5)
            down = http.get("/readyz")
            assert down.json()["ledger"] == "LedgerReplacedError"
            assert "was deleted or replaced while in use" in down.json()["reason"]
            assert http.get("/healthz").status_code == 200
        assert not db.exists(), "the running gateway made a new, empty ledger"
    finally:
        gateway.stop()
    assert not db.exists()


@contextlib.asynccontextmanager
async def _gateway(tmp_path: Path, clock: ManualClock) -> AsyncIterator[tuple[GatewayApp, httpx.AsyncClient]]:
    """The gateway app on ``tmp_path/ledger.db`` with a ledger on ``clock``."""
    settings = parse_settings(config(f"sqlite:///{tmp_path / 'ledger.db'}"), environ={})
    ledger: Ledger = open_ledger(settings.ledger, settings.budgets, clock=clock)
    upstream = InProcessUpstream()
    app = create_app(GatewayState.build(settings, client=upstream, ledger=ledger))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=GATEWAY) as http:
            yield app, http
    finally:
        await app.aclose()
        await upstream.aclose()
        ledger.close()


@anyio
async def test_readyz_probes_a_write_at_most_once_a_second(tmp_path: Path) -> None:
    clock = ManualClock("2026-03-10T12:00:00Z")
    db = tmp_path / "ledger.db"
    async with _gateway(tmp_path, clock) as (_, http):
        before = _probes(db)
        for _ in range(5):
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert _probes(db) == before + 1  # one committed probe; the others reuse its answer
        with immutable(db, Path(f"{db}-wal")):
            # Within the second: the last answer stands (a load balancer cannot hammer the writer).
            assert (await http.get("/readyz")).status_code == 200
            clock.advance(1)
            down = await http.get("/readyz")
            assert down.status_code == 503, down.text
            assert down.json()["status"] == "unavailable"
            assert "not writable" in down.json()["reason"]
        assert (await http.get("/readyz")).status_code == 503  # still the cached answer
        clock.advance(1)
        assert (await http.get("/readyz")).status_code == 200
        assert _probes(db) == before + 2  # the failed probe committed nothing


@anyio
async def test_readyz_fails_while_no_write_can_commit(tmp_path: Path) -> None:
    clock = ManualClock("2026-03-10T12:00:00Z")
    db = tmp_path / "ledger.db"
    async with _gateway(tmp_path, clock) as (app, http):
        assert (await http.get("/readyz")).status_code == 200
        app.state.readiness.timeout = 0.2  # seconds of real time the probe may take
        # Another process's stuck transaction: the files look writable, but no commit gets through.
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            clock.advance(1)
            down = await http.get("/readyz")
            assert down.status_code == 503, down.text
            assert down.json()["reason"] == "the ledger did not commit a probe write within 0.2 s"
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        clock.advance(1)
        assert (await http.get("/readyz")).status_code == 200


@anyio
async def test_the_admin_api_does_not_delete_a_budget_of_the_config(tmp_path: Path) -> None:
    async with InProcessGateway.start(tmp_path) as gw:
        admin = gw.admin()
        refused = await admin.delete("/budgets/global")  # conftest's config defines "global"
        assert refused.status_code == 409, refused.text
        assert "defined in the gateway's config" in refused.json()["error"]["message"]
        made = await admin.post("/budgets", json={"id": "extra", "limit": "5"})
        assert made.status_code == 201, made.text
        deleted = await admin.delete("/budgets/extra")
        assert deleted.json() == {"id": "extra", "deleted": True, "in_flight": 0, "reserved": "0"}
        assert [b.id for b in gw.ledger.budgets()] == ["global"]
