"""Forecasts of the budgets in a ledger: ``spendgate.forecast``'s math over the ledger's reads.

    forecast_budget(ledger, "team-research")                      # a budget without wildcards
    forecast_budget(ledger, "per-user", {"user": "alice"})        # one instance of a wildcard budget
    forecast_budgets(ledger)                                      # every row of list_budgets()

Each reads the instance's spend in its current window (``BudgetAdmin.usage``) and its hourly
spend over the last ``LOOKBACK`` (``RequestLog.usage_timeseries``, filtered to the budget's
selector with the instance's values in place of its wildcards: ``tag`` by membership). These
are blocking ledger reads: an asyncio caller runs them on a thread. ``now`` defaults to the
ledger's clock. An unknown budget id is a KeyError; an instance that does not fit the budget's
wildcards a ValueError (its message says what to pass).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol

from spendgate.forecast import DEFAULT_HORIZON, LOOKBACK, Forecast, HourlySpend, forecast, hour_floor
from spendgate.ledger.base import BudgetUsage
from spendgate.ledger.protocols import BudgetAdmin, RequestLog

__all__ = [
    "BudgetLedger",
    "ForecastCache",
    "forecast_budget",
    "forecast_budgets",
    "hourly_spend",
    "ledger_now",
]

_HOUR = timedelta(hours=1)


class BudgetLedger(BudgetAdmin, RequestLog, Protocol):
    """What the forecasts read: budgets and their spend, and the request log (any ``Ledger``)."""


def hourly_spend(
    log: RequestLog, selector: Mapping[str, str], now: datetime, lookback: timedelta = LOOKBACK
) -> HourlySpend:
    """Whole hours of spend of the requests ``selector`` matches (exact values only), from the
    first logged hour within ``lookback`` up to the hour holding ``now`` (excluded)."""
    end = hour_floor(now)
    start = end - lookback
    points = log.usage_timeseries(start, end, _HOUR, **dict(selector))
    return HourlySpend.from_points(((p.start, p.cost) for p in points), end)


def forecast_budget(
    ledger: BudgetLedger,
    budget_id: str,
    instance: Mapping[str, str] | str | None = None,
    *,
    now: datetime | None = None,
    lookback: timedelta = LOOKBACK,
    horizon: timedelta = DEFAULT_HORIZON,
) -> Forecast:
    """The forecast of one budget instance in its current window (``Forecast.runs_out_at``,
    ``.runs_out_before_end``, ``.expected`` and its band).

    ``instance`` names the wildcard values (``{"user": "alice"}`` or ``"user=alice"``; none for
    a budget without wildcards). ``horizon``: how far a budget that never resets is forecast.
    """
    budget = ledger.get_budget(budget_id)
    key = budget.instance_key(instance)
    at = now if now is not None else ledger_now(ledger)
    usage = ledger.usage(budget_id, key, at=at)
    history = hourly_spend(ledger, budget.concrete_selector(key), at, lookback)
    result = forecast(
        history,
        spent=usage.spent,
        limit=usage.limit,
        now=at,
        window_start=usage.window_start if usage.window_end is not None else None,
        window_end=usage.window_end,
        horizon=horizon,
    )
    return dataclasses.replace(result, budget_id=budget_id, instance=usage.instance, label=usage.label)


def forecast_budgets(
    ledger: BudgetLedger,
    *,
    now: datetime | None = None,
    lookback: timedelta = LOOKBACK,
    horizon: timedelta = DEFAULT_HORIZON,
) -> list[Forecast]:
    """A forecast for every row of ``list_budgets()``: each budget without wildcards, and each
    wildcard instance with spend in its current window (a budget deleted meanwhile is skipped)."""
    at = now if now is not None else ledger_now(ledger)
    out: list[Forecast] = []
    for usage in ledger.list_budgets():
        try:
            out.append(
                forecast_budget(
                    ledger, usage.budget_id, usage.instance, now=at, lookback=lookback, horizon=horizon
                )
            )
        except KeyError:
            continue
    return out


def ledger_now(ledger: object) -> datetime:
    """The ledger's clock now (the backend's clock is the clock)."""
    clock = getattr(ledger, "clock", None)
    if clock is None:
        raise TypeError("pass now=: this ledger has no clock")
    when: datetime = clock.now()
    return when


class ForecastCache:
    """Forecasts of budget instances, each reused for ``ttl`` of the ledger's clock.

    Behind one forecast are 28 days of the request log hour by hour; a dashboard asks for the
    same instances on every load. A forecast moves slowly, so one at most ``ttl`` old is kept,
    unless the instance's limit changed (a paused budget is forecast again at once).
    """

    def __init__(self, ttl: timedelta = timedelta(seconds=60), size: int = 1000) -> None:
        self.ttl = ttl
        self.size = size
        self._lock = threading.Lock()
        self._kept: dict[tuple[int, str, str, int], Forecast] = {}

    def get(self, ledger: BudgetLedger, usage: BudgetUsage, now: datetime) -> Forecast:
        """The forecast of ``usage``'s budget instance (``forecast_budget``), maybe a kept one."""
        key = (id(ledger), usage.budget_id, usage.instance_key, usage.limit.nanos)
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and kept.now <= now < kept.now + self.ttl:
            return kept
        made = forecast_budget(ledger, usage.budget_id, usage.instance_key, now=now)
        with self._lock:
            self._kept[key] = made
            while len(self._kept) > self.size:  # the oldest put first
                del self._kept[next(iter(self._kept))]
        return made
