"""``spendgate alerts``: the outbox's deliveries, a failed one made due again, and a test alert
sent to each configured destination (docs/alerts.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import click

from spendgate.alerts.events import DELIVERY_STATES, AlertEvent, DeliveryState
from spendgate.gateway.cli_admin import EXIT_BAD_INPUT, echo_json, fail, ledger_options, opened_ledger

__all__ = ["alerts_group"]


@click.group("alerts")
def alerts_group() -> None:
    """Alert deliveries: list them, retry a failed one, send a test alert."""


@alerts_group.command("list")
@click.option(
    "--state", type=click.Choice(DELIVERY_STATES), default=None, help="Only deliveries in this state."
)
@click.option("--destination", default=None, help="Only deliveries to this destination.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
def alerts_list_cmd(
    state: str | None,
    destination: str | None,
    limit: int,
    as_json: bool,
    ledger_url: str | None,
    config_path: str | None,
) -> None:
    """Deliveries, newest alert first."""
    with opened_ledger(ledger_url, config_path) as ledger:
        records = ledger.alert_deliveries(
            state=cast(DeliveryState | None, state), destination=destination, limit=limit
        )
    if as_json:
        echo_json([r.to_data() for r in records])
        return
    if not records:
        click.echo("no alert deliveries")
        return
    for r in records:
        when = r.delivered_at or r.next_attempt_at or r.event.created_at
        extra = f"  ({r.last_error})" if r.last_error and r.state != "delivered" else ""
        click.echo(
            f"{r.state:<9} {r.destination:<16} {when:%Y-%m-%d %H:%M:%S}Z  attempts {r.attempts}  "
            f"{r.event.summary}{extra}"
        )
        click.echo(f"          id {r.event.id}")


@alerts_group.command("retry")
@click.argument("event_id")
@click.argument("destination")
@ledger_options
def alerts_retry_cmd(
    event_id: str, destination: str, ledger_url: str | None, config_path: str | None
) -> None:
    """Make a failed delivery due again now (a running gateway sends it within seconds)."""
    with opened_ledger(ledger_url, config_path) as ledger:
        if not ledger.retry_delivery(event_id, destination):
            fail(f"no failed delivery of {event_id!r} to {destination!r}", EXIT_BAD_INPUT)
    click.echo(f"{event_id} to {destination}: pending")


@alerts_group.command("test")
@click.option(
    "--config", "config_path", metavar="FILE", required=True, help="The gateway config (its alerts:)."
)
def alerts_test_cmd(config_path: str) -> None:
    """Send one test alert to each destination of the config, now, and say how each went.

    Not recorded in the outbox: it checks URLs, secrets and receivers."""
    from spendgate.gateway.config import GatewayConfigError, load_settings

    try:
        settings = load_settings(config_path)
    except GatewayConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    now = datetime.now(UTC)
    event = AlertEvent(
        id=f"test:{int(now.timestamp() * 1_000_000)}",
        kind="threshold",
        budget_id="spendgate-test",
        label="spendgate test alert",
        instance={},
        window_start=None,
        window_end=None,
        created_at=now,
        summary="Test alert from `spendgate alerts test`: this destination works",
        details={"threshold": 0, "spent": "0", "limit": "0", "request_id": "", "soft": False, "test": True},
    )
    failed = 0
    for spec in settings.alerts.destinations:
        sent = spec.build().send(event, now)
        failed += not sent.ok
        click.echo(f"{spec.name} ({spec.type}): " + ("ok" if sent.ok else f"failed: {sent.error}"))
    if failed:
        raise SystemExit(EXIT_BAD_INPUT)
