"""``/alerts``: what the alert outbox delivered where, what is pending, what failed; and a
failed delivery made due again."""

from __future__ import annotations

from typing import Final, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.alerts.events import DELIVERY_STATES, DeliveryState
from spendgate.gateway.admin.context import context
from spendgate.gateway.admin.errors import bad, not_found
from spendgate.gateway.admin.inputs import json_body

__all__ = ["list_alerts", "retry_alert"]

MAX_ALERTS: Final = 1000
_PARAMS: Final = ("state", "destination", "limit", "before")


async def list_alerts(request: Request) -> Response:
    params = request.query_params
    for name in params:
        if name not in _PARAMS:
            raise bad(name, f"unknown parameter; known: {', '.join(_PARAMS)}")
    state = params.get("state")
    if state is not None and state not in DELIVERY_STATES:
        raise bad("state", f"must be one of {', '.join(DELIVERY_STATES)}")
    limit = _whole(params.get("limit", "100"), "limit", 1, MAX_ALERTS)
    before = _whole(params["before"], "before", 1, 2**63 - 1) if "before" in params else None
    records = await run_in_threadpool(
        lambda: context(request).ledger.alert_deliveries(
            state=cast(DeliveryState | None, state),
            destination=params.get("destination"),
            limit=limit + 1,
            before=before,
        )
    )
    page = records[:limit]
    more = len(records) > limit
    if more and records[limit].seq == page[-1].seq:
        # Deliveries of one event share its seq and a page ends with whole events, so the next
        # page (seq < next_before) holds this one's other deliveries too.
        whole = [r for r in page if r.seq != page[-1].seq]
        page = whole or page
    return JSONResponse(
        {"data": [r.to_data() for r in page], "next_before": page[-1].seq if more and page else None}
    )


async def retry_alert(request: Request) -> Response:
    body = await json_body(request)
    event_id, destination = body.get("event_id"), body.get("destination")
    if not isinstance(event_id, str) or not event_id:
        raise bad("event_id", "must be the id of an alert event (from GET /admin/alerts)")
    if not isinstance(destination, str) or not destination:
        raise bad("destination", "must be the name of an alert destination")
    done = await run_in_threadpool(context(request).ledger.retry_delivery, event_id, destination)
    if not done:
        raise not_found("failed delivery", f"{event_id} to {destination}")
    return JSONResponse({"event_id": event_id, "destination": destination, "state": "pending"})


def _whole(text: str, name: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise bad(name, f"must be a whole number from {low} to {high}")
    return int(text)
