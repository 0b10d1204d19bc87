"""Prometheus gauges of the budget forecasts (``spendgate.forecasting``), computed off the event
loop and at most every ``interval`` seconds of the ledger's clock.

    spendgate_budget_forecast_spend_usd{budget, instance}   expected spend at the window's end
    spendgate_budget_forecast_ratio{budget, instance}       that over the limit
    spendgate_budget_runout_seconds{budget, instance}       seconds until the expected run-out
                                                             (absent: not within the window; 0: spent)

Label values stay bounded and never carry a person's id: ``instance`` is ``""`` for a budget
without wildcards, the instance key (``team=ml``) for a budget whose wildcards are all
organisational (team, project, model, tag), and ``"*"`` for a budget with a wildcard over
people or credentials (user, customer, key): one series, its instance that runs out first (else
the one expected highest over its limit). A forecast reads the request log, so a refresh reads
at most ``PER_BUDGET`` instances of each wildcard budget, the most used first, and
``MAX_FORECASTS`` in all, through ``history`` (``HourlyHistory``: only each selector's last hours
are read again; the gateway shares it with the dashboard and the forecast alerts). ``refresh``
runs the reads on a thread; ``collector`` yields what the last refresh found.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spendgate.forecast import Forecast
from spendgate.forecasting import BudgetLedger, HourlyHistory, forecast_budget, ledger_now
from spendgate.ledger.base import BudgetUsage
from spendgate.money import NANO_PER_USD

__all__ = ["MAX_FORECASTS", "PERSONAL", "PER_BUDGET", "ForecastGauges"]

log = logging.getLogger("spendgate.gateway.metrics")

#: Wildcards over these make one series per budget (``instance="*"``): their values are people.
PERSONAL: Final = frozenset({"user", "customer", "key"})
PER_BUDGET: Final = 20
MAX_FORECASTS: Final = 200
DEFAULT_INTERVAL: Final = 60.0


@dataclass(frozen=True, slots=True)
class _Row:
    budget: str
    instance: str
    expected_usd: float
    ratio: float
    seconds: float | None


class ForecastGauges:
    """The forecast gauges of one process; shared by successive gateway states (reloads)."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, history: HourlyHistory | None = None) -> None:
        self.interval = timedelta(seconds=interval)
        #: The process's hourly series of the selectors forecast (the dashboard shares it).
        self.history = history if history is not None else HourlyHistory()
        self._lock = threading.Lock()
        self._rows: tuple[_Row, ...] = ()
        self._at: datetime | None = None
        self._ledger: object | None = None

    def _fresh(self, ledger: object, now: datetime) -> bool:
        at = self._at
        return ledger is self._ledger and at is not None and at <= now < at + self.interval

    async def refresh(self, ledger: BudgetLedger) -> None:
        """Recompute on a thread if the last computation is ``interval`` old (by the ledger's
        clock) or of another ledger; concurrent scrapes share one computation."""
        try:
            if self._fresh(ledger, ledger_now(ledger)):
                return
            await asyncio.to_thread(self._compute, ledger)
        except Exception:  # a scrape never fails for a forecast: the last values stay
            log.warning("metrics: the budget forecasts could not be computed", exc_info=True)

    def _compute(self, ledger: BudgetLedger) -> None:
        with self._lock:
            now = ledger_now(ledger)
            if self._fresh(ledger, now):
                return
            rows = tuple(_rows(ledger, now, self.history))
            self._rows, self._at, self._ledger = rows, now, ledger

    def collector(self) -> Collector:
        return _Collector(self._rows)


def _rows(ledger: BudgetLedger, now: datetime, history: HourlyHistory) -> Iterator[_Row]:
    by_budget: dict[str, list[BudgetUsage]] = {}
    for usage in ledger.list_budgets():
        by_budget.setdefault(usage.budget_id, []).append(usage)
    wildcards = {budget.id: budget.wildcards for budget in ledger.budgets()}
    budget_left = MAX_FORECASTS
    for budget_id, listed in by_budget.items():
        if budget_left <= 0:
            log.warning("metrics: more than %d budget forecasts; the rest are left out", MAX_FORECASTS)
            return
        listed.sort(key=lambda u: (-_share(u), u.instance_key))
        chosen = listed[: min(PER_BUDGET, budget_left)]
        budget_left -= len(chosen)
        forecasts: list[Forecast] = []
        for usage in chosen:
            try:
                forecasts.append(forecast_budget(ledger, budget_id, usage.instance, now=now, history=history))
            except (KeyError, ValueError):
                continue  # deleted or changed since list_budgets answered
        if not forecasts:
            continue
        if PERSONAL.intersection(wildcards.get(budget_id, ())):
            yield _row(budget_id, "*", max(forecasts, key=_urgency))
        else:
            for forecast in forecasts:
                yield _row(budget_id, _key(forecast), forecast)


def _share(usage: BudgetUsage) -> float:
    used = usage.spent.nanos + usage.reserved.nanos
    return used / usage.limit.nanos if usage.limit.nanos else float(used > 0)


def _key(forecast: Forecast) -> str:
    return ",".join(f"{k}={v}" for k, v in forecast.instance.items())


def _urgency(forecast: Forecast) -> tuple[float, float]:
    """Sooner run-out first, then the higher expected share of the limit."""
    seconds = (forecast.runs_out_at - forecast.now).total_seconds() if forecast.runs_out_at else float("inf")
    return (-seconds, _ratio(forecast))


def _ratio(forecast: Forecast) -> float:
    limit = forecast.limit.nanos
    return forecast.expected.nanos / limit if limit else float(forecast.expected.nanos > 0)


def _row(budget_id: str, instance: str, forecast: Forecast) -> _Row:
    seconds = None
    if forecast.runs_out_at is not None:
        seconds = max((forecast.runs_out_at - forecast.now).total_seconds(), 0.0)
    return _Row(budget_id, instance, forecast.expected.nanos / NANO_PER_USD, _ratio(forecast), seconds)


class _Collector(Collector):
    def __init__(self, rows: tuple[_Row, ...]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        labels = ("budget", "instance")
        spend = GaugeMetricFamily(
            "spendgate_budget_forecast_spend_usd",
            "Spend expected at the end of the budget's window (float USD, for dashboards)",
            labels=labels,
        )
        ratio = GaugeMetricFamily(
            "spendgate_budget_forecast_ratio",
            "Spend expected at the window's end over the limit",
            labels=labels,
        )
        runout = GaugeMetricFamily(
            "spendgate_budget_runout_seconds",
            "Seconds until the budget is expected to run out (absent: not within its window)",
            labels=labels,
        )
        for row in self._rows:
            spend.add_metric((row.budget, row.instance), row.expected_usd)
            ratio.add_metric((row.budget, row.instance), row.ratio)
            if row.seconds is not None:
                runout.add_metric((row.budget, row.instance), row.seconds)
        yield spend
        yield ratio
        yield runout
