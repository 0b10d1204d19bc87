"""``/budgets/{id}/forecast`` and ``/budgets/{id}/advice``: where a budget's spend is heading, and
the limit its past windows suggest (``spendgate.forecasting``, ``spendgate.advice``).

The instance of a wildcard budget is given by its dimensions as query parameters
(``?user=alice``). The ledger reads (its usage, the request log's hourly series) run on a
thread, never on the event loop; "now" is the ledger's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.advice import DEFAULT_HEADROOM, advise_budget
from spendgate.budgets import DIMENSIONS
from spendgate.forecasting import forecast_budget
from spendgate.gateway.admin.context import context
from spendgate.gateway.admin.errors import bad, not_found

__all__ = ["budget_advice", "budget_forecast"]

_MAX_HEADROOM: Final = 1000
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
    """The forecast of a budget instance in its current window (``Forecast.to_dict``)."""
    budget_id = request.path_params["id"]
    instance = _instance(request, ())
    ledger = context(request).ledger

    def read() -> dict[str, Any]:
        return _read(budget_id, lambda: forecast_budget(ledger, budget_id, instance or None)).to_dict()

    return JSONResponse(await run_in_threadpool(read))


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
    ledger = context(request).ledger

    def read() -> dict[str, Any]:
        advice = _read(
            budget_id, lambda: advise_budget(ledger, budget_id, instance or None, headroom_percent=headroom)
        )
        return advice.to_dict()

    return JSONResponse(await run_in_threadpool(read))
