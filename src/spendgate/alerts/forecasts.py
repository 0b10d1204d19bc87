"""The forecast alert: "this budget will run out before its window ends" (docs/alerts.md).

The dispatcher calls ``forecast_alerts`` every ``forecast_interval``; the event's id names the
budget instance and window, so it is added (and sent) once per window however often and by
however many processes it is noticed. A budget already spent out says so by its 100%
threshold alert instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from spendgate.alerts.events import AlertEvent, forecast_event
from spendgate.forecasting import HourlyHistory, forecast_budgets

if TYPE_CHECKING:
    from spendgate.ledger.base import Ledger

__all__ = ["forecast_alerts"]


def forecast_alerts(ledger: Ledger, now: datetime, history: HourlyHistory | None = None) -> list[AlertEvent]:
    """A forecast event for each budget instance expected to run out before its window ends.
    ``history``: the hourly series kept from earlier forecasts (the gateway's, shared)."""
    out: list[AlertEvent] = []
    for forecast in forecast_budgets(ledger, now=now, history=history):
        if not forecast.runs_out_before_end or forecast.exhausted or forecast.budget_id is None:
            continue
        assert forecast.runs_out_at is not None
        out.append(
            forecast_event(
                budget_id=forecast.budget_id,
                label=forecast.label or forecast.budget_id,
                instance=forecast.instance,
                spent=forecast.spent,
                limit=forecast.limit,
                expected_at_end=forecast.expected,
                runs_out_at=forecast.runs_out_at,
                window_start=forecast.window_start,
                window_end=forecast.window_end,
                method=str(forecast.method),
                now=now,
            )
        )
    return out
