"""``/refusals``: how many requests the budgets, rate limits and requests' own cost caps refused
in a span, counted by every process sharing the ledger (``RefusalCounts``), per budget and limit.

The overview's last hour (``/overview``'s ``refusals``) is the same reading, with a count per
minute. Before it reads, this process writes the counts it still holds (``flush_refusals``), so
its own refusals are never late; another process's are at most its ``refusal_interval`` late.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.gateway.admin.context import AdminContext, context
from spendgate.gateway.admin.errors import bad
from spendgate.gateway.admin.handlers.usage import instant_param
from spendgate.gateway.views import iso
from spendgate.ledger.base import REFUSAL_KINDS, RefusalCount, refusal_minute

__all__ = ["DEFAULT_SPAN", "MAX_SPAN", "read_refusals", "refusals", "summary"]

MINUTE: Final = timedelta(minutes=1)
#: ``/refusals`` without ``start``: the last hour (60 minutes, the current one included).
DEFAULT_SPAN: Final = timedelta(hours=1)
#: The longest span one call reads (minute rows; the counts are kept as long as the log).
MAX_SPAN: Final = timedelta(days=31)
_PARAMS: Final = ("start", "end")


def read_refusals(ctx: AdminContext, start: datetime, end: datetime) -> list[RefusalCount]:
    """The ledger's counts in ``[start, end)``, after this process wrote its own (blocking)."""
    ctx.flush_refusals()
    return ctx.ledger.refusal_counts(start, end)


def summary(
    rows: list[RefusalCount], start: datetime, end: datetime, *, top: int | None = None
) -> dict[str, Any]:
    """Totals per kind, and per budget or limit (most refusals first; ``top`` of them), with the
    last minute each refused in. Kinds this version does not know are left out, never an error."""
    totals = dict.fromkeys(REFUSAL_KINDS, 0)
    by_subject: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        if row.kind not in totals:
            continue
        totals[row.kind] += row.count
        seen = by_subject.setdefault((row.kind, row.subject), [0, row.minute])
        seen[0] += row.count
        seen[1] = max(seen[1], row.minute)
    ranked = sorted(by_subject.items(), key=lambda item: (-item[1][0], item[0]))
    return {
        "start": iso(start),
        "end": iso(end),
        "total": sum(totals.values()),
        **totals,
        "data": [
            {"kind": kind, "id": subject, "count": count, "last_minute": iso(last)}
            for (kind, subject), (count, last) in ranked[:top]
        ],
    }


async def refusals(request: Request) -> Response:
    """Refusals per kind and per budget or limit in ``[start, end)`` (default: the last hour)."""
    params = request.query_params
    for name in params:
        if name not in _PARAMS:
            raise bad(name, f"unknown query parameter; known: {', '.join(_PARAMS)}")
    ctx = context(request)
    now = ctx.ledger.clock.now()
    end = instant_param(params, "end", now, MINUTE) or refusal_minute(now) + MINUTE
    try:
        start = instant_param(params, "start", now, MINUTE) or end - DEFAULT_SPAN
    except OverflowError:
        raise bad("end", "leaves no room for the default start, an hour before it") from None
    if end <= start:
        raise bad("end", f"must be after start ({iso(start)}), got {iso(end)}")
    if end - start > MAX_SPAN:
        raise bad("start", f"the span is at most {MAX_SPAN.days} days; got {iso(start)} to {iso(end)}")
    rows = await run_in_threadpool(read_refusals, ctx, start, end)
    return JSONResponse(summary(rows, start, end))
