"""``/budgets/{id}/forecast`` and ``/budgets/{id}/advice``: where a budget's spend is heading, and
the limit its past windows suggest (``spendgate.forecasting``, ``spendgate.advice``).

The instance of a wildcard budget is given by its dimensions as query parameters
(``?user=alice``). The ledger reads (its usage, the request log's hourly series) run on a
thread, never on the event loop; "now" is the ledger's clock. The hourly series go through the
admin context's ``HourlyHistory`` (``ctx.forecasts.history``, one per gateway process), so a
budgets page asking one forecast per row reads only the last hours of each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.advice import DEFAULT_HEADROOM, advise_budget
from spendgate.budgets import DIMENSIONS
from spendgate.forecast import Forecast
from spendgate.forecasting import forecast_budget, ledger_now
from spendgate.gateway.admin.context import AdminContext, context
from spendgate.gateway.admin.errors import bad, not_found
from spendgate.ledger import BudgetUsage

__all__ = ["budget_advice", "budget_forecast", "max_age_param", "row_forecast"]

log = logging.getLogger("spendgate.gateway.admin")

_MAX_HEADROOM: Final = 1000
#: The oldest kept forecast ``max_age`` may ask for (seconds).
_MAX_AGE: Final = 3600
T = TypeVar("T")


def _instance(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    known = (*DIMENSIONS, *allowed)
    for name in request.query_params:
        if name not in known:
            raise bad(name, f"unknown query parameter; known: {', '.join(known)}")
    return {dim: request.query_params[dim] for dim in DIMENSIONS if dim in request.query_params}


def _read(budget_id: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except KeyError:
        raise not_found("budget", budget_id) from None
    except ValueError as exc:  # an instance that does not fit the budget's wildcards
        raise bad("instance", f"{exc} (as query parameters, e.g. ?user=alice)") from None


async def budget_forecast(request: Request) -> Response:
    """The forecast of a budget instance in its current window (``Forecast.to_dict``).
    ``max_age`` (seconds): a forecast of this instance made at most that long ago, at the same
    limit, may be given instead of a fresh one (the overview's and the dashboard's are kept)."""
    budget_id = request.path_params["id"]
    instance = _instance(request, ("max_age",))
    max_age = max_age_param(request.query_params.get("max_age"))
    ctx = context(request)
    ledger, history = ctx.ledger, ctx.forecasts.history  # the hours the overview's read too

    def fresh() -> dict[str, Any]:
        return _read(
            budget_id, lambda: forecast_budget(ledger, budget_id, instance or None, history=history)
        ).to_dict()

    def kept(age: timedelta) -> dict[str, Any]:
        def made() -> Forecast:
            budget = ledger.get_budget(budget_id)
            now = ledger_now(ledger)
            usage = ledger.usage(budget_id, budget.instance_key(instance or None), at=now)
            return ctx.forecasts.get(ledger, usage, now, ttl=age)

        return _read(budget_id, made).to_dict()

    return JSONResponse(await run_in_threadpool(fresh if max_age is None else partial(kept, max_age)))


def row_forecast(
    ctx: AdminContext, row: BudgetUsage, now: datetime, ttl: timedelta | None = None
) -> dict[str, Any] | None:
    """The forecast of one of ``/budgets``' rows (kept at most ``ttl``: the cache's minute when
    None), or None when it cannot be made (deleted meanwhile; an error, logged): a list of rows
    stands without one row's forecast, and ``/budgets/{id}/forecast`` says why."""
    try:
        return ctx.forecasts.get(ctx.ledger, row, now, ttl=ttl).to_dict()
    except KeyError:
        return None
    except Exception:
        log.exception("no forecast for budget %r", row.budget_id)
        return None


def max_age_param(text: str | None) -> timedelta | None:
    """``max_age``: whole seconds up to an hour; None when absent."""
    if text is None:
        return None
    if not text.isdigit() or int(text) > _MAX_AGE:
        raise bad("max_age", f"must be whole seconds from 0 to {_MAX_AGE}")
    return timedelta(seconds=int(text))


async def budget_advice(request: Request) -> Response:
    """A recommended limit from past windows (``Advice.to_dict``); ``headroom`` in percent."""
    budget_id = request.path_params["id"]
    instance = _instance(request, ("headroom",))
    text = request.query_params.get("headroom")
    headroom = DEFAULT_HEADROOM
    if text is not None:
        if not text.isdigit() or int(text) > _MAX_HEADROOM:
            raise bad("headroom", f"must be a whole percent from 0 to {_MAX_HEADROOM}")
        headroom = int(text)
    ctx = context(request)
    ledger, history = ctx.ledger, ctx.forecasts.history

    def read() -> dict[str, Any]:
        advice = _read(
            budget_id,
            lambda: advise_budget(
                ledger, budget_id, instance or None, headroom_percent=headroom, history=history
            ),
        )
        return advice.to_dict()

    return JSONResponse(await run_in_threadpool(read))
