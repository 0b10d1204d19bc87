"""``/usage`` (cost per value of a dimension) and ``/requests`` (the request log, paged)."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.budgets import DIMENSIONS
from spendgate.gateway.admin.context import AdminContext, context
from spendgate.gateway.admin.errors import bad
from spendgate.gateway.admin.inputs import query_time
from spendgate.gateway.views import money, record_json
from spendgate.ledger import RequestRecord, UnknownReservationError
from spendgate.money import Money

__all__ = ["MAX_REQUESTS", "requests_log", "usage"]

MAX_REQUESTS: Final = 10_000
_FILTERS: Final = tuple(DIMENSIONS)
_REQUEST_PARAMS: Final = ("since", "until", "limit", "after", *_FILTERS)


async def usage(request: Request) -> Response:
    by = request.query_params.get("by", "user")
    if by not in DIMENSIONS:
        raise bad("by", f"must be one of {', '.join(DIMENSIONS)}")
    since, until = query_time(request, "since"), query_time(request, "until")
    totals = await run_in_threadpool(context(request).ledger.usage_by, by, since, until)
    rows = sorted(totals.items(), key=lambda item: (-item[1].nanos, item[0]))
    return JSONResponse(
        {
            "by": by,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "data": [{"value": value, "cost": money(cost)} for value, cost in rows],
            "total": money(sum((cost for _, cost in rows), Money(0))),
        }
    )


def _limit(params: QueryParams) -> int:
    if "limit" not in params:
        return 100
    text = params["limit"]
    if not text.isdigit() or not 1 <= int(text) <= MAX_REQUESTS:
        raise bad("limit", f"must be a whole number from 1 to {MAX_REQUESTS}")
    return int(text)


def _page(
    ctx: AdminContext,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: str | None,
    filters: dict[str, str],
) -> list[RequestRecord]:
    # One more than asked: whether another page follows.
    try:
        return ctx.ledger.query_requests(since, until, limit=limit + 1, after=after, **filters)
    except UnknownReservationError:
        raise bad("after", "is not a request id in the log (take last_id from the previous page)") from None


async def requests_log(request: Request) -> Response:
    """Logged requests, newest first, in OpenAI's list-page shape (``after=<last_id>`` pages on)."""
    params = request.query_params
    for name in params:
        if name not in _REQUEST_PARAMS:
            raise bad(name, f"unknown query parameter; known: {', '.join(_REQUEST_PARAMS)}")
    since, until = query_time(request, "since"), query_time(request, "until")
    limit = _limit(params)
    filters = {dim: params[dim] for dim in _FILTERS if dim in params}
    after = params.get("after") or None
    records = await run_in_threadpool(_page, context(request), since, until, limit, after, filters)
    more, records = len(records) > limit, records[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": [record_json(r) for r in records],
            "first_id": records[0].request_id if records else None,
            "last_id": records[-1].request_id if records else None,
            "has_more": more,
        }
    )
