"""``/usage`` (cost per value of a dimension), ``/usage/timeseries`` (cost, requests and tokens
per hour or day, paged by an opaque cursor) and ``/requests`` (the request log, paged)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.budgets import DIMENSIONS, EPOCH
from spendgate.gateway.admin.context import AdminContext, context
from spendgate.gateway.admin.errors import bad
from spendgate.gateway.admin.inputs import query_time
from spendgate.gateway.views import iso, money, record_json
from spendgate.ledger import Ledger, RequestRecord, UnknownReservationError, UsagePoint
from spendgate.ledger.rows import us
from spendgate.ledger.timeseries import plan
from spendgate.money import Money
from spendgate.reports.export import point_json
from spendgate.reports.span import BUCKETS, bucket_name, floor, is_relative, parse_bucket, parse_instant

__all__ = [
    "DEFAULT_POINTS",
    "DEFAULT_SPAN",
    "MAX_POINTS",
    "MAX_REQUESTS",
    "instant_param",
    "requests_log",
    "usage",
    "usage_timeseries",
]

MAX_REQUESTS: Final = 10_000
MAX_POINTS: Final = 10_000
DEFAULT_POINTS: Final = 1000
#: ``/usage/timeseries`` without ``start``: this long before ``end``, from the start of its bucket.
DEFAULT_SPAN: Final = timedelta(days=7)
_FILTERS: Final = tuple(DIMENSIONS)
_REQUEST_PARAMS: Final = ("since", "until", "limit", "after", *_FILTERS)
_SERIES_PARAMS: Final = ("start", "end", "bucket", "by", "limit", "cursor", *_FILTERS)
_BAD_CURSOR: Final = (
    "is not a cursor of this query: pass the next_cursor of the previous page, with the same parameters"
)


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


def _limit(params: QueryParams, default: int = 100, most: int = MAX_REQUESTS) -> int:
    if "limit" not in params:
        return default
    text = params["limit"]
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not 1 <= int(text) <= most:
        raise bad("limit", f"must be a whole number from 1 to {most}")
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


# -- /usage/timeseries ----------------------------------------------------------------------------


def instant_param(params: QueryParams, name: str, now: datetime, bucket: timedelta) -> datetime | None:
    """ISO 8601 (UTC without an offset) or a span before now (``7d``, ``24h``: from the start
    of its bucket, so the first bucket is whole)."""
    text = params.get(name)
    if not text:
        return None
    try:
        when = parse_instant(text, name, now)
    except ValueError as exc:
        raise bad(name, str(exc).removeprefix(f"{name}: ")) from None
    return floor(when, bucket) if is_relative(text) else when


def _fingerprint(
    start: datetime, end: datetime, bucket: timedelta, by: str | None, filters: Mapping[str, str]
) -> str:
    """What a cursor is bound to: a cursor of another query (another span, grouping or filter)
    is refused rather than answered with a page of something else."""
    query = [us(start), us(end), bucket // timedelta(seconds=1), by, sorted(filters.items())]
    return hashlib.sha256(json.dumps(query).encode()).hexdigest()[:16]


def _order(start: datetime, group: str | None) -> tuple[datetime, bool, str]:
    """The ledger's order of points: bucket start, then no group, then groups by code point."""
    return start, group is not None, group or ""


def _cursor(point: UsagePoint, fingerprint: str) -> str:
    raw = json.dumps([fingerprint, us(point.start), point.group], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(text: str | None, fingerprint: str) -> tuple[datetime, str | None] | None:
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        given, start_us, group = json.loads(raw)
        if given != fingerprint or type(start_us) is not int or not (group is None or isinstance(group, str)):
            raise ValueError("another query's cursor")
        return EPOCH + timedelta(microseconds=start_us), group
    except (ValueError, TypeError, binascii.Error, OverflowError):
        raise bad("cursor", _BAD_CURSOR) from None


def _series_page(
    ledger: Ledger,
    start: datetime,
    end: datetime,
    bucket: timedelta,
    by: str | None,
    filters: dict[str, str],
    after: tuple[datetime, str | None] | None,
    limit: int,
) -> list[UsagePoint]:
    """Up to ``limit`` + 1 points after ``after`` (one more than asked: whether more follow). The
    read starts at the cursor's bucket, so a later page does not sum the earlier buckets again."""
    if after is None:
        return ledger.usage_timeseries(start, end, bucket, by=by, **filters)[: limit + 1]
    mark = _order(*after)
    points = ledger.usage_timeseries(max(start, after[0]), end, bucket, by=by, **filters)
    return [p for p in points if _order(p.start, p.group) > mark][: limit + 1]


async def usage_timeseries(request: Request) -> Response:
    """Cost, requests and tokens per bucket (and per ``by`` group), oldest first; page on with
    ``cursor=<next_cursor>`` while ``has_more``."""
    params = request.query_params
    for name in params:
        if name not in _SERIES_PARAMS:
            raise bad(name, f"unknown query parameter; known: {', '.join(_SERIES_PARAMS)}")
    ledger = context(request).ledger
    try:
        bucket = parse_bucket(params.get("bucket", "day"))
    except ValueError:
        raise bad("bucket", f"must be one of {', '.join(BUCKETS)}") from None
    now = ledger.clock.now()
    end = instant_param(params, "end", now, bucket) or now
    try:
        start = instant_param(params, "start", now, bucket) or floor(end - DEFAULT_SPAN, bucket)
    except OverflowError:
        raise bad(
            "end", f"leaves no room for the default start, {DEFAULT_SPAN.days} days before it"
        ) from None
    if end <= start:
        raise bad("end", f"must be after start ({iso(start)}), got {iso(end)}")
    by = params.get("by") or None
    if by is not None and by not in DIMENSIONS:
        raise bad("by", f"must be one of {', '.join(DIMENSIONS)}")
    filters = {dim: params[dim] for dim in _FILTERS if dim in params}
    for dim, value in filters.items():
        if "\x00" in value:
            raise bad(dim, "must not contain a NUL character")
    limit = _limit(params, DEFAULT_POINTS, MAX_POINTS)
    try:
        plan(start, end, bucket, by, filters)  # the span's bucket count, before any read
    except ValueError as exc:
        raise bad("bucket", str(exc)) from None
    fingerprint = _fingerprint(start, end, bucket, by, filters)
    after = _after(params.get("cursor"), fingerprint)
    points = await run_in_threadpool(_series_page, ledger, start, end, bucket, by, filters, after, limit)
    more, points = len(points) > limit, points[:limit]
    body: dict[str, Any] = {
        "object": "list",
        "start": iso(start),
        "end": iso(end),
        "bucket": bucket_name(bucket),
        "bucket_seconds": bucket // timedelta(seconds=1),
        "by": by,
        "filters": filters,
        "data": [point_json(p, bucket) for p in points],
        "has_more": more,
        "next_cursor": _cursor(points[-1], fingerprint) if more else None,
    }
    return JSONResponse(body)
