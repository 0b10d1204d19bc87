"""The budget forecast gauges in /metrics: per budget, never per user; computed on a thread and at
most once a minute of the ledger's clock. In process, on a SQLite ledger on a ``ManualClock``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spendgate.budgets import Attributes, Budget, Window
from spendgate.clock import ManualClock
from spendgate.gateway.app import GatewayState, create_app
from spendgate.gateway.config import parse_settings
from spendgate.gateway.keys import open_keystore
from spendgate.ledger import Ledger, RequestRecord, open_ledger
from spendgate.money import Money

from .inprocess import ADMIN_TOKEN, InProcessGateway, InProcessUpstream, config

pytestmark = pytest.mark.anyio

START = datetime(2027, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)


@contextlib.asynccontextmanager
async def gateway(tmp: Path, clock: ManualClock) -> AsyncIterator[tuple[InProcessGateway, Ledger]]:
    settings = parse_settings(
        config(f"sqlite:///{tmp / 'ledger.db'}", budgets=[]), environ={"SPENDGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    store = open_keystore(settings.ledger)
    ledger = open_ledger(settings.ledger, clock=clock)
    upstream = InProcessUpstream()
    app = create_app(GatewayState.build(settings, keys=store, client=upstream, ledger=ledger))
    gw = InProcessGateway(app, upstream, {})
    try:
        yield gw, ledger
    finally:
        for client in gw._clients:
            await client.aclose()
        await app.aclose()
        await upstream.aclose()
        ledger.close()
        store.close()


def spend(ledger: Ledger, clock: ManualClock, when: datetime, cost: str, **attrs: object) -> None:
    clock.set(when)
    attributes = Attributes.of(**attrs)
    rid = f"{when.isoformat()}-{sorted(attrs.items())}"
    assert ledger.reserve(rid, attributes, Money.usd(cost), lease=60).admitted
    ledger.settle(rid, Money.usd(cost), RequestRecord(rid, attributes, Money.usd(cost), when, when))


def samples(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name) :]] = float(value)
    return out


async def test_forecast_gauges(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with gateway(tmp_path, clock) as (gw, ledger):
        ledger.put_budget(Budget("per-team", {"team": "*"}, Money.usd(1000), Window.calendar("day")))
        ledger.put_budget(Budget("per-user", {"user": "*"}, Money.usd(1000), Window.calendar("day")))
        for hour in range(60):  # $2 an hour of alice (team ml), $1 of bob (team web)
            when = START + H * hour
            if hour == 48:  # made on the third morning: the days before spent $48 each
                ledger.put_budget(Budget("ml", {"team": "ml"}, Money.usd(30), Window.calendar("day")))
            spend(ledger, clock, when, "2", user="alice@example.com", team="ml")
            spend(ledger, clock, when + timedelta(minutes=1), "1", user="bob@example.com", team="web")
        clock.set(START + timedelta(days=2, hours=12))
        text = (await gw.http(base="").get("/metrics")).text
        spent = samples(text, "spendgate_budget_forecast_spend_usd")
        assert spent['{budget="ml",instance=""}'] == 48.0  # $24 so far and $2 an hour to midnight
        assert spent['{budget="per-team",instance="team=ml"}'] == 48.0
        assert spent['{budget="per-team",instance="team=web"}'] == 24.0
        assert set(spent) >= {'{budget="per-user",instance="*"}'}
        assert "example.com" not in text  # a user's id is never a label
        runout = samples(text, "spendgate_budget_runout_seconds")
        assert runout == {'{budget="ml",instance=""}': 3 * 3600.0}  # $30 reached at 15:00
        ratio = samples(text, "spendgate_budget_forecast_ratio")
        assert ratio['{budget="ml",instance=""}'] == 1.6

        # Within a minute of the ledger's clock the gauges are not computed again.
        spend(
            ledger,
            clock,
            START + timedelta(days=2, hours=12, seconds=10),
            "500",
            user="bob@example.com",
            team="web",
        )
        clock.set(START + timedelta(days=2, hours=12, seconds=30))
        again = samples((await gw.http(base="").get("/metrics")).text, "spendgate_budget_forecast_spend_usd")
        assert again == spent
        clock.set(START + timedelta(days=2, hours=12, minutes=1))
        later = samples((await gw.http(base="").get("/metrics")).text, "spendgate_budget_forecast_spend_usd")
        assert later['{budget="per-team",instance="team=web"}'] == pytest.approx(524, abs=0.05)  # $500 once
