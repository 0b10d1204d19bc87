"""The forecast alert: a budget whose spend rate runs it out before its window ends is
announced once per window, from a real request log (memory and a SQLite file), manual clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spendgate.alerts import AlertDispatcher, WebhookDestination
from spendgate.alerts.forecasts import forecast_alerts
from spendgate.budgets import Attributes, Budget, Window
from spendgate.clock import ManualClock
from spendgate.ledger import Ledger, Reservation, open_ledger
from spendgate.money import Money
from spendgate.testing.webhooks import WebhookReceiver

MONTH = datetime(2026, 3, 1, tzinfo=UTC)
TEAM = Attributes(team="research")


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver()
    yield hook
    hook.close()


def hourly(ledger: Ledger, clock: ManualClock, days: int, usd_per_hour: str) -> None:
    for hour in range(days * 24):
        clock.set(MONTH + timedelta(hours=hour, minutes=30))
        rid = f"h{hour}"
        held = ledger.reserve(rid, TEAM, Money.parse(usd_per_hour), 600)
        assert isinstance(held, Reservation)
        ledger.settle(rid, Money.parse(usd_per_hour))


def test_a_budget_on_course_to_run_out_is_announced_once(url: str, receiver: WebhookReceiver) -> None:
    clock = ManualClock(MONTH)
    budget = Budget(
        "research", {"team": "research"}, Money.parse("100"), Window.parse("month"), thresholds=(90,)
    )
    ledger = open_ledger(url, [budget], clock=clock)
    d = AlertDispatcher(
        ledger,
        [WebhookDestination("ops", receiver.url, timeout=2.0)],
        forecaster=forecast_alerts,
        forecast_interval=600,
    )
    d.listen()
    d.step()
    hourly(ledger, clock, 10, "0.25")  # $6 a day: $60 by day 10, about $186 by the month's end
    clock.set(MONTH + timedelta(days=10))
    d.step()
    (post,) = receiver.accepted
    body = post.json()
    assert body["type"] == "budget.forecast" and body["spent"] == "60"
    runs_out = datetime.fromisoformat(body["runs_out_at"].replace("Z", "+00:00"))
    # $40 left at $6 a day: about 6.7 days from now (within a day), well before 1 April.
    assert abs(runs_out - (clock.now() + timedelta(days=40 / 6))) < timedelta(days=1)
    assert body["window_end"] == "2026-04-01T00:00:00Z"
    clock.advance(3600)
    d.step()
    assert len(receiver.accepted) == 1  # once per window


def test_a_budget_on_course_to_last_is_not_announced(url: str) -> None:
    clock = ManualClock(MONTH)
    budget = Budget("research", {"team": "research"}, Money.parse("1000"), Window.parse("month"))
    ledger = open_ledger(url, [budget], clock=clock)
    hourly(ledger, clock, 5, "0.25")
    clock.set(MONTH + timedelta(days=5))
    assert forecast_alerts(ledger, clock.now()) == []
