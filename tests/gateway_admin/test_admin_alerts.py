"""``/admin/alerts`` (deliveries: filters, paging, retry) and ``spendgate alerts`` on a real
SQLite ledger, with deliveries made by a real dispatcher against a real local receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from spendgate.alerts import AlertDispatcher, LogDestination, RetryPolicy, WebhookDestination
from spendgate.alerts.events import reset_event
from spendgate.cli import main
from spendgate.clock import ManualClock
from spendgate.gateway.admin import OPENAPI, create_admin_app
from spendgate.gateway.keys import open_keystore
from spendgate.ledger import Ledger, open_ledger
from spendgate.testing.webhooks import WebhookReceiver

TOKEN = "admin-" + "y" * 26
T0 = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver(mode="fail")
    yield hook
    hook.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'spend.db'}"


@pytest.fixture
def ledger(url: str, receiver: WebhookReceiver) -> Iterator[Ledger]:
    """Five alerts: delivered to the log; to a receiver that fails, the first given up on."""
    clock = ManualClock(T0)
    made = open_ledger(url, clock=clock)
    open_keystore(url).close()
    d = AlertDispatcher(
        made,
        [WebhookDestination("ops", receiver.url, timeout=2.0), LogDestination("log")],
        retry=RetryPolicy(max_attempts=2, backoff=10, max_backoff=10),
    )
    d.step()
    made.add_alerts(
        [reset_event(budget_id=f"b{i}", label=f"b{i}", instance=None, change=i, now=T0) for i in range(5)]
    )
    d.step()  # every "ops" delivery fails once: pending
    clock.advance(20)
    d.step()  # ...and twice: failed
    yield made
    made.close()


@pytest.fixture
def client(url: str, ledger: Ledger) -> Iterator[TestClient]:
    keys = open_keystore(url, cache_ttl=0)
    app = create_admin_app(keys=keys, ledger=ledger, admin_token=lambda: TOKEN)
    yield TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    keys.close()


def test_list_filter_and_page(client: TestClient) -> None:
    everything = client.get("/alerts").json()
    assert len(everything["data"]) == 10 and everything["next_before"] is None
    assert [r["event"]["budget_id"] for r in everything["data"][:2]] == ["b4", "b4"]  # newest first
    failed = client.get("/alerts", params={"state": "failed"}).json()["data"]
    assert {(r["destination"], r["state"], r["attempts"]) for r in failed} == {("ops", "failed", 2)}
    assert all("HTTP 503" in r["last_error"] for r in failed) and len(failed) == 5
    logged = client.get("/alerts", params={"destination": "log"}).json()["data"]
    assert {r["state"] for r in logged} == {"delivered"} and all(r["delivered_at"] for r in logged)
    # Pages end with whole events: 3 asked, the third's other delivery would be cut: 2 given.
    seen: list[tuple[int, str]] = []
    params: dict[str, str | int] = {"limit": 3}
    for _ in range(10):
        page = client.get("/alerts", params=params).json()
        seen += [(r["seq"], r["destination"]) for r in page["data"]]
        if page["next_before"] is None:
            break
        params = {"limit": 3, "before": page["next_before"]}
    assert seen == [(r["seq"], r["destination"]) for r in everything["data"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "lost"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"before": "-1"}, "before"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_queries_are_400s(client: TestClient, params: dict[str, str], field: str) -> None:
    r = client.get("/alerts", params=params)
    assert r.status_code == 400 and field in r.json()["error"]["message"], r.text


def test_retry_a_failed_delivery(client: TestClient, ledger: Ledger, receiver: WebhookReceiver) -> None:
    failed = client.get("/alerts", params={"state": "failed"}).json()["data"][0]
    event_id = failed["event"]["id"]
    r = client.post("/alerts/retry", json={"event_id": event_id, "destination": "ops"})
    assert r.status_code == 200 and r.json()["state"] == "pending", r.text
    again = client.post("/alerts/retry", json={"event_id": event_id, "destination": "ops"})
    assert again.status_code == 404  # no longer failed
    bodies: list[object] = [{}, {"event_id": event_id}, {"event_id": 3, "destination": "ops"}, []]
    for body in bodies:
        assert client.post("/alerts/retry", json=body).status_code == 400
    assert client.post("/alerts/retry", content=b"{not json").status_code == 400
    (pending,) = ledger.alert_deliveries(state="pending")
    assert pending.event.id == event_id and pending.attempts == 0


def test_without_the_admin_token_nothing(url: str, ledger: Ledger) -> None:
    keys = open_keystore(url, cache_ttl=0)
    try:
        app = create_admin_app(keys=keys, ledger=ledger, admin_token=lambda: TOKEN)
        assert TestClient(app).get("/alerts").status_code == 401
        assert TestClient(app).post("/alerts/retry", json={}).status_code == 401
    finally:
        keys.close()


def test_documented_in_openapi() -> None:
    assert {"/alerts", "/alerts/retry"} <= set(OPENAPI["paths"])


def test_cli_list_and_retry(url: str, ledger: Ledger) -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["alerts", "list", "--ledger", url, "--state", "failed", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert len(rows) == 5 and {r["state"] for r in rows} == {"failed"}
    text = runner.invoke(main, ["alerts", "list", "--ledger", url, "--limit", "2"])
    assert text.exit_code == 0 and text.output.count("failed ") == 1 and "HTTP 503" in text.output
    event_id = rows[0]["event"]["id"]
    done = runner.invoke(main, ["alerts", "retry", event_id, "ops", "--ledger", url])
    assert done.exit_code == 0 and "pending" in done.output
    again = runner.invoke(main, ["alerts", "retry", event_id, "ops", "--ledger", url])
    assert again.exit_code == 4 and "no failed delivery" in again.output


def test_cli_test_sends_to_each_destination(tmp_path: Path) -> None:
    hook = WebhookReceiver()
    try:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            json.dumps(
                {
                    "ledger": f"sqlite:///{tmp_path / 'x.db'}",
                    "upstreams": {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                    "routes": [{"model": "gpt-*", "upstream": "fake"}],
                    "alerts": {
                        "destinations": [{"name": "ops", "url": hook.url}, {"name": "log", "type": "log"}]
                    },
                }
            )
        )
        result = CliRunner().invoke(main, ["alerts", "test", "--config", str(config)])
        assert result.exit_code == 0, result.output
        assert "ops (webhook): ok" in result.output and "log (log): ok" in result.output
        (post,) = hook.accepted
        assert post.json()["test"] is True
        hook.mode = "fail"
        failed = CliRunner().invoke(main, ["alerts", "test", "--config", str(config)])
        assert failed.exit_code == 4 and "HTTP 503" in failed.output
    finally:
        hook.close()
