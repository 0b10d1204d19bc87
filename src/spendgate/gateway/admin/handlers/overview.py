"""``/overview``: the dashboard's first page in one read (``docs/ui.md``).

Spend today and this month (UTC) from the request log's daily series (``usage_timeseries``:
the numbers of ``/usage/timeseries?bucket=1d``), the budget instances closest to their limit
(``/budgets``' rows) with their forecast run-out (``spendgate.forecasting``; each at most a
minute old, unless its limit changed), and the requests the budgets, rate limits and cost caps
refused in the last hour, counted by every process sharing the ledger (``RefusalCounts``; this
process writes its own counts first, so they are never late here). Every ledger read runs on a
thread; "now" is the ledger's clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.forecasting import ledger_now
from spendgate.gateway.admin.context import AdminContext, context
from spendgate.gateway.admin.handlers.forecast import row_forecast
from spendgate.gateway.admin.handlers.refusals import MINUTE, read_refusals, summary
from spendgate.gateway.views import budget_json, iso, money
from spendgate.ledger import BudgetUsage
from spendgate.ledger.base import REFUSAL_KINDS, refusal_minute
from spendgate.money import Money

__all__ = ["MAX_BUDGETS", "overview", "read_overview"]

#: How many budget instances the overview lists (the most used first).
MAX_BUDGETS: Final = 10
#: How many budgets and limits ``refusals.top`` names (those that refused most).
MAX_REFUSERS: Final = 10
_DAY: Final = timedelta(days=1)
_MINUTES: Final = 60  # the last hour, in the minutes the counts are kept by
_FORECAST_FIELDS: Final = (
    "runs_out_at",
    "earliest_run_out",
    "latest_run_out",
    "runs_out_before_end",
    "expected",
    "low",
    "high",
    "rate_per_hour",
    "method",
)


def _use(row: BudgetUsage) -> tuple[int, int]:
    """Sort key, most used first: a limit of 0 (paused) before all others, then by use / limit
    exactly (integer cross-multiplication, no float), then by id."""
    used = row.spent.nanos + row.reserved.nanos
    if row.limit.nanos <= 0:
        return (0, 0)
    return (1, -(used * 10**12 // row.limit.nanos))  # used / limit, descending


def _forecast(ctx: AdminContext, row: BudgetUsage, now: datetime) -> dict[str, Any] | None:
    made = row_forecast(ctx, row, now)
    return None if made is None else {name: made[name] for name in _FORECAST_FIELDS}


def _spend(ctx: AdminContext, now: datetime) -> dict[str, Any]:
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    points = ctx.ledger.usage_timeseries(month, today + _DAY, _DAY)
    month_cost, month_requests = Money(0), 0
    today_cost, today_requests = Money(0), 0
    for point in points:
        month_cost += point.cost
        month_requests += point.requests
        if point.start >= today:
            today_cost += point.cost
            today_requests += point.requests
    return {
        "today": {"cost": money(today_cost), "requests": today_requests, "start": iso(today)},
        "month": {"cost": money(month_cost), "requests": month_requests, "start": iso(month)},
    }


def _refusals(ctx: AdminContext, now: datetime) -> dict[str, Any]:
    """The last 60 minutes' refusals (the current minute included): ``/refusals``' summary of
    them, with ``MAX_REFUSERS`` budgets and limits, and a count per kind and minute."""
    end = refusal_minute(now) + MINUTE
    start = end - _MINUTES * MINUTE
    rows = read_refusals(ctx, start, end)
    out = summary(rows, start, end, top=MAX_REFUSERS)
    out["top"] = out.pop("data")
    per_minute = {kind: [0] * _MINUTES for kind in REFUSAL_KINDS}
    for row in rows:
        if row.kind in per_minute:
            per_minute[row.kind][(row.minute - start) // MINUTE] += row.count
    return {"window_seconds": _MINUTES * 60, **out, "per_minute": per_minute}


def read_overview(ctx: AdminContext, *, now: datetime | None = None) -> dict[str, Any]:
    """The overview (blocking: run it on a thread)."""
    at = now if now is not None else ledger_now(ctx.ledger)
    rows = sorted(ctx.ledger.list_budgets(), key=lambda r: (_use(r), r.budget_id, r.instance_key))
    top = []
    for row in rows[:MAX_BUDGETS]:
        view = budget_json(row)
        view["forecast"] = _forecast(ctx, row, at)
        top.append(view)
    return {
        "now": iso(at),
        "spend": _spend(ctx, at),
        "budgets": top,
        "budgets_total": len(rows),
        "refusals": _refusals(ctx, at),
    }


async def overview(request: Request) -> Response:
    """Spend today and this month, the budgets closest to their limit, the last hour's refusals."""
    return JSONResponse(await run_in_threadpool(read_overview, context(request)))
