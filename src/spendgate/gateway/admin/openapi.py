"""The hand-written OpenAPI 3.1 document of the admin API, served at ``/openapi.json``.

A test keeps it and the routes in step.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.budgets import DIMENSIONS
from spendgate.gateway.admin.handlers.budgets import MAX_LIST_FORECASTS
from spendgate.gateway.admin.handlers.limits import MAX_COUNT
from spendgate.gateway.admin.handlers.overview import MAX_BUDGETS
from spendgate.gateway.admin.handlers.refusals import MAX_SPAN as MAX_REFUSAL_SPAN
from spendgate.gateway.admin.handlers.usage import DEFAULT_POINTS, DEFAULT_SPAN, MAX_POINTS, MAX_REQUESTS
from spendgate.gateway.views import KEY_FIELDS
from spendgate.ledger.base import REFUSAL_KINDS
from spendgate.limits import KINDS, WINDOWED
from spendgate.reports.span import BUCKETS

__all__ = ["OPENAPI", "openapi"]


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS: Final = {
    "400": _json(_ref("Error"), "Invalid input: the message names the field"),
    "401": _json(_ref("Error"), "Missing or wrong admin token (virtual keys are refused)"),
    "403": _json(_ref("Error"), "Admin API disabled: no admin token configured"),
    "503": _json(_ref("Error"), "The ledger cannot be reached"),
}
_NOT_FOUND: Final = {"404": _json(_ref("Error"), "No such key, budget or limit")}
_ID: Final = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_LIMIT_ID: Final = [
    {
        **_ID[0],
        "description": "the limit's id; it may hold '/' (key=*/requests/1m): "
        "send it as it is, or with '/' as %2F",
    }
]
_TIME_RANGE: Final = [
    {
        "name": "since",
        "in": "query",
        "schema": {"type": "string", "format": "date-time"},
        "description": "ISO 8601; UTC when no offset is given",
    },
    {
        "name": "until",
        "in": "query",
        "schema": {"type": "string", "format": "date-time"},
        "description": "ISO 8601, exclusive",
    },
]
_USD: Final = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "description": "USD as a decimal string"}
#: A span's refusal totals (``/refusals`` and ``/overview``'s ``refusals``).
_REFUSAL_TOTALS: Final[dict[str, Any]] = {
    "start": {"type": "string", "format": "date-time"},
    "end": {"type": "string", "format": "date-time"},
    "total": {"type": "integer"},
    **{kind: {"type": "integer"} for kind in REFUSAL_KINDS},
}


_CONFLICT: Final = {"409": _json(_ref("Error"), "A budget with this id exists: PATCH it")}
_NOT_DELETABLE: Final = {
    "409": _json(
        _ref("Error"), "Defined in the gateway's config (it would come back), or a live key's own budget"
    )
}
_LIMIT_EXISTS: Final = {"409": _json(_ref("Error"), "A limit with this id exists: PATCH or PUT it")}
_LIMIT_FROM_CONFIG: Final = {
    "409": _json(
        _ref("Error"), "Defined in the gateway's config (limits:): it would come back as written there"
    )
}
_COUNT: Final = {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}
_PER: Final = {
    "oneOf": [{"type": "string", "pattern": r"^[0-9]+(s|m|h|d)$"}, {"type": "integer", "minimum": 1}],
    "description": "the window, 1 s to 31 days: '10s', '1m', '2h', '1d', or seconds",
}
_LIMIT_ON_EXCEED: Final = {"enum": ["raise", "wait"], "description": "wait: delay the request until it fits"}
_LIMIT_COMMON: Final[dict[str, Any]] = {
    "id": {"type": "string", "description": "default: <selector>/<kind>[/<per>], e.g. key=*/requests/1m"},
    "name": {"type": "string"},
    "selector": {"type": "object", "additionalProperties": {"type": "string"}},
}


def _limit_config(kind: str) -> dict[str, Any]:
    """A config ``limits:`` entry of one kind: its amount under the kind's name, ``per`` for a
    windowed kind."""
    amount = {**_USD, "description": "USD per window as a decimal string"} if kind == "usd" else _COUNT
    properties: dict[str, Any] = {**_LIMIT_COMMON, kind: amount}
    if kind in WINDOWED:
        properties["per"] = _PER
    properties["on_exceed"] = {"enum": ["raise"]} if kind == "prompt_tokens" else _LIMIT_ON_EXCEED
    required = [kind, "per"] if kind in WINDOWED else [kind]
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}


#: A count, or USD for a usd limit, as a decimal string.
_AMOUNT: Final = {
    "type": "string",
    "pattern": r"^[0-9]+(\.[0-9]+)?$",
    "description": "a count, or USD for a usd limit, as a decimal string",
}

#: A budget's fields, as ``POST /budgets`` takes them and as every budget answer gives them back.
_BUDGET_FIELDS: Final[dict[str, Any]] = {
    "id": {"type": "string"},
    "name": {"type": "string"},
    "selector": {"type": "object", "additionalProperties": {"type": "string"}},
    "limit": {**_USD, "description": "USD as a decimal string, at most 1000000000"},
    "window": {"oneOf": [{"type": "string"}, {"type": "object"}]},
    "timezone": {"type": "string"},
    "thresholds": {"type": "array", "items": {"type": "integer"}},
    "on_exceed": {"enum": ["raise", "wait", "clamp"]},
}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    found: bool = False,
    status: str = "200",
    parameters: list[dict[str, Any]] | None = None,
    more: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {status: ok, **_ERRORS, **(_NOT_FOUND if found else {}), **(more or {})},
    }
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _list(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref(item)}},
    }


_WHEN: Final = "ISO 8601 (UTC when no offset is given), or a span before now: 7d, 24h, 30m, 2w (then from the start of its bucket)"
_SERIES_PARAMS: Final[list[dict[str, Any]]] = [
    {"name": "start", "in": "query", "schema": {"type": "string"},
     "description": f"{_WHEN}; default: {DEFAULT_SPAN.days} days before end, from the start of that bucket"},
    {"name": "end", "in": "query", "schema": {"type": "string"}, "description": f"{_WHEN}; exclusive; default: now"},
    {"name": "bucket", "in": "query", "schema": {"enum": list(BUCKETS), "default": "day"},
     "description": "buckets counted from the Unix epoch, UTC"},
    {"name": "by", "in": "query", "schema": {"enum": list(DIMENSIONS)},
     "description": "a point per value (tag: a request counts once per tag)"},
    {"name": "limit", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_POINTS, "default": DEFAULT_POINTS},
     "description": "points per page"},
    {"name": "cursor", "in": "query", "schema": {"type": "string"},
     "description": "the next_cursor of the previous page (opaque; only with the same parameters)"},
    *({"name": dim, "in": "query", "schema": {"type": "string"}, "description": f"only requests of this {dim}"}
      for dim in DIMENSIONS),
]  # fmt: skip


_INSTANCE_PARAMS: Final[list[dict[str, Any]]] = [
    {"name": dim, "in": "query", "schema": {"type": "string"},
     "description": f"the instance's {dim} (a wildcard budget)"} for dim in DIMENSIONS
]  # fmt: skip
_WHEN_OR_NULL: Final = {"type": ["string", "null"], "format": "date-time"}


def _page(item: str) -> dict[str, Any]:
    """A list page in OpenAI's shape: first_id, last_id and has_more."""
    page = _list(item)
    page["properties"] |= {
        "first_id": {"type": ["string", "null"]},
        "last_id": {"type": ["string", "null"]},
        "has_more": {"type": "boolean"},
    }
    return page


OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "spendgate admin API",
        "version": "1",
        "description": "Virtual keys, budgets, rate limits and usage of a spendgate gateway. Money is a decimal string "
        "in USD. Every route needs `Authorization: Bearer <admin token>`.",
    },
    "servers": [{"url": "/admin"}],
    "security": [{"adminToken": []}],
    "paths": {
        "/keys": {
            "post": _op("Create a virtual key (the secret is returned only here)", _json(_ref("KeyWithSecret"), "Created"),
                        body=_ref("KeyCreate"), status="201"),
            "get": _op("List keys (no secrets)", _json(_list("Key"))),
        },
        "/keys/{id}": {
            "get": _op("One key", _json(_ref("Key")), found=True, parameters=_ID),
            "delete": _op("Delete a key", _json({"type": "object", "properties": {"id": {"type": "string"},
                          "deleted": {"type": "boolean"}}}), found=True, parameters=_ID),
        },
        "/keys/{id}/disable": {"post": _op("Disable a key", _json(_ref("Key")), found=True, parameters=_ID)},
        "/keys/{id}/enable": {"post": _op("Enable a key", _json(_ref("Key")), found=True, parameters=_ID)},
        "/keys/{id}/rotate": {
            "post": _op("New secret for a key; the old one stops working", _json(_ref("KeyWithSecret")),
                        found=True, parameters=_ID),
        },
        "/budgets": {
            "get": _op("Budgets with spend in the current window; with forecasts=N, the first N rows "
                       "carry their forecast too", _json(_list("BudgetUsage")),
                       parameters=[{"name": "forecasts", "in": "query",
                                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_LIST_FORECASTS},
                                    "description": "how many rows (the first) carry a forecast"},
                                   {"name": "max_age", "in": "query",
                                    "schema": {"type": "integer", "minimum": 0, "maximum": 3600},
                                    "description": "seconds: a forecast made at most this long ago at the "
                                                   "same limit may be given; absent: afresh"}]),
            "post": _op("Create a budget", _json(_ref("Budget"), "Created"), body=_ref("BudgetConfig"), status="201",
                        more=_CONFLICT),
        },
        "/budgets/{id}": {
            "patch": _op("Change a budget's limit now", _json(_ref("Budget")), found=True, parameters=_ID,
                         body={"type": "object", "required": ["limit"], "properties": {"limit": _USD},
                               "additionalProperties": False}),
            "delete": _op("Stop enforcing a budget; requests in flight against it end as usual and stay "
                          "counted (its spend is kept: re-creating the id in the same window continues it)",
                          _json(_ref("BudgetDeleted")), found=True, parameters=_ID, more=_NOT_DELETABLE),
        },
        "/budgets/{id}/reset": {
            "post": _op("Zero the current window's spend (all instances, or one)", _json(_ref("Budget")),
                        found=True, parameters=_ID,
                        body={"type": "object", "properties": {"instance": {"type": "object",
                              "additionalProperties": {"type": "string"}}}, "additionalProperties": False}),
        },
        "/budgets/{id}/forecast": {
            "get": _op("Expected spend at the window's end with a band, and when the budget runs out "
                       "(docs/forecasts.md); a wildcard budget's instance as query parameters (?user=alice)",
                       _json(_ref("Forecast")), found=True, parameters=[*_ID, *_INSTANCE_PARAMS,
                           {"name": "max_age", "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 3600},
                            "description": "seconds: a forecast of this instance made at most this long "
                                           "ago at the same limit may be given (its `now` says when); "
                                           "absent: a fresh one"}]),
        },
        "/budgets/{id}/advice": {
            "get": _op("A recommended limit: the 95th percentile of past windows' spend plus headroom, "
                       "explained (with too little history: this window's forecast)", _json(_ref("Advice")),
                       found=True, parameters=[*_ID, *_INSTANCE_PARAMS,
                                               {"name": "headroom", "in": "query",
                                                "schema": {"type": "integer", "minimum": 0, "maximum": 1000,
                                                           "default": 20}, "description": "percent"}]),
        },
        "/limits": {
            "get": _op("Rate limits with what each instance holds now", _json(_list("Limit"))),
            "post": _op("Create a rate limit (a config limits: entry)", _json(_ref("Limit"), "Created"),
                        body=_ref("LimitConfig"), status="201", more=_LIMIT_EXISTS),
        },
        "/limits/{id}": {
            "get": _op("One rate limit with its instances' use", _json(_ref("Limit")), found=True,
                       parameters=_LIMIT_ID),
            "patch": _op("Change a limit's amount, window or on_exceed now (its counts are kept unless per "
                         "changes)", _json(_ref("Limit")), found=True, parameters=_LIMIT_ID,
                         body=_ref("LimitChange"), more=_LIMIT_FROM_CONFIG),
            "put": _op("Replace a limit by a whole config entry, its selector unchanged (its counts are kept "
                       "while kind and per stay)", _json(_ref("Limit")), found=True, parameters=_LIMIT_ID,
                       body=_ref("LimitConfig"), more=_LIMIT_FROM_CONFIG),
            "delete": _op("Stop enforcing a limit now; its counts go", _json(_ref("LimitDeleted")), found=True,
                          parameters=_LIMIT_ID, more=_LIMIT_FROM_CONFIG),
        },
        "/usage": {
            "get": _op("Cost per value of a dimension, from the request log", _json(_ref("UsageReport")),
                       parameters=[{"name": "by", "in": "query", "schema": {"enum": list(DIMENSIONS), "default": "user"}},
                                   *_TIME_RANGE]),
        },
        "/usage/timeseries": {
            "get": _op("Cost, requests and tokens per hour or day (and per group with by=), oldest first, "
                       "empty buckets left out; page on with cursor=<next_cursor> while has_more",
                       _json(_ref("UsageSeries")), parameters=_SERIES_PARAMS),
        },
        "/requests": {
            "get": _op("Logged requests, newest first; page on with after=<last_id> while has_more",
                       _json(_page("RequestRecord")),
                       parameters=[*_TIME_RANGE,
                                   {"name": "limit", "in": "query",
                                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_REQUESTS, "default": 100}},
                                   {"name": "after", "in": "query", "schema": {"type": "string"},
                                    "description": "the last_id of the previous page"},
                                   *({"name": dim, "in": "query", "schema": {"type": "string"}} for dim in DIMENSIONS)]),
        },
        "/alerts": {
            "get": _op("Alert deliveries (docs/alerts.md), newest event first; page on with "
                       "before=<next_before>", _json({"type": "object", "required": ["data", "next_before"],
                       "properties": {"data": {"type": "array", "items": _ref("AlertDelivery")},
                                      "next_before": {"type": ["integer", "null"]}}}),
                       parameters=[{"name": "state", "in": "query",
                                    "schema": {"enum": ["pending", "delivered", "failed", "skipped"]}},
                                   {"name": "destination", "in": "query", "schema": {"type": "string"}},
                                   {"name": "limit", "in": "query",
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                                   {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1}}]),
        },
        "/alerts/retry": {
            "post": _op("Make a failed delivery due again now (its attempts start over)",
                        _json({"type": "object"}), found=True,
                        body={"type": "object", "required": ["event_id", "destination"],
                              "additionalProperties": False,
                              "properties": {"event_id": {"type": "string"}, "destination": {"type": "string"}}}),
        },
        "/overview": {
            "get": _op("The dashboard's first page (docs/ui.md): spend today and this month (UTC), the "
                       f"{MAX_BUDGETS} budget instances closest to their limit with their forecast, and "
                       "the last hour's refusals by every process sharing the ledger", _json(_ref("Overview"))),
        },
        "/refusals": {
            "get": _op("Requests the budgets, rate limits and requests' own cost caps refused in [start, end), "
                       "counted by every process sharing the ledger, per kind and per budget or limit (most "
                       "first). Default: the last 60 minutes, the current one included; at most "
                       f"{MAX_REFUSAL_SPAN.days} days", _json(_ref("Refusals")),
                       parameters=[{"name": name, "in": "query", "schema": {"type": "string"},
                                    "description": "ISO 8601 (UTC without an offset) or a span before now "
                                                   "(1h, 7d), rounded down to the minute"}
                                   for name in ("start", "end")]),
        },
        "/openapi.json": {"get": _op("This document", _json({"type": "object"}))},
    },
    "components": {
        "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "AlertDelivery": {"type": "object", "required": ["seq", "event", "destination", "state", "attempts"],
                "properties": {"seq": {"type": "integer"}, "event": {"type": "object",
                    "description": "the webhook body (docs/alerts.md)"},
                    "destination": {"type": "string"},
                    "state": {"enum": ["pending", "delivered", "failed", "skipped"]},
                    "attempts": {"type": "integer"},
                    "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
                    "last_error": {"type": ["string", "null"]},
                    "delivered_at": {"type": ["string", "null"], "format": "date-time"}}},
            "Overview": {"type": "object", "required": ["now", "spend", "budgets", "budgets_total", "refusals"],
                "properties": {"now": {"type": "string", "format": "date-time"},
                    "spend": {"type": "object", "properties": {period: {"type": "object",
                        "properties": {"cost": {"type": "string"}, "requests": {"type": "integer"},
                                       "start": {"type": "string", "format": "date-time"}}}
                        for period in ("today", "month")}},
                    "budgets": {"type": "array", "description": "the fields of /budgets' rows, and forecast",
                        "items": {"type": "object", "properties": {"forecast": {"type": ["object", "null"]}}}},
                    "budgets_total": {"type": "integer"},
                    "refusals": {"type": "object",
                        "description": "requests the budgets, rate limits and requests' own cost caps refused "
                                       "in the last 60 minutes (the current one included), by every process "
                                       "sharing the ledger; each process writes its counts every "
                                       "defaults.refusal_interval seconds",
                        "required": ["window_seconds", "start", "end", "total", *REFUSAL_KINDS, "per_minute", "top"],
                        "properties": {"window_seconds": {"type": "integer"},
                                       **_REFUSAL_TOTALS,
                                       "per_minute": {"type": "object", "description": "per kind, 60 counts, oldest first",
                                           "properties": {kind: {"type": "array", "items": {"type": "integer"}}
                                                          for kind in REFUSAL_KINDS}},
                                       "top": {"type": "array", "description": "the budgets and limits that refused most",
                                           "items": _ref("Refuser")}}}}},
            "Refusals": {"type": "object", "required": ["start", "end", "total", *REFUSAL_KINDS, "data"],
                "properties": {**_REFUSAL_TOTALS, "data": {"type": "array", "items": _ref("Refuser")}}},
            "Refuser": {"type": "object", "required": ["kind", "id", "count", "last_minute"],
                "properties": {"kind": {"enum": list(REFUSAL_KINDS)},
                               "id": {"type": "string", "description": "the budget's or limit's id; '' for cost caps"},
                               "count": {"type": "integer"},
                               "last_minute": {"type": "string", "format": "date-time",
                                               "description": "the last minute it refused in"}}},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["message", "type", "code"],
                "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"}}}}},
            "KeyCreate": {"type": "object", "additionalProperties": False, "properties": {
                **{name: {"type": "string"} for name in KEY_FIELDS}, "name": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "models": {"type": "array", "items": {"type": "string"}, "description": "glob patterns; empty = all"},
                "expires_at": {"type": "string", "format": "date-time"},
                "budget": {**_USD, "description": "a budget of its own, id key:<key id>"},
                "window": {"type": "string", "default": "month"}}},
            "Key": {"type": "object", "properties": {
                "id": {"type": "string"}, "hint": {"type": "string"}, "name": {"type": ["string", "null"]},
                **{name: {"type": ["string", "null"]} for name in KEY_FIELDS},
                "tags": {"type": "array", "items": {"type": "string"}},
                "models": {"type": "array", "items": {"type": "string"}},
                "state": {"enum": ["active", "disabled", "expired"]}, "disabled": {"type": "boolean"},
                "expires_at": {"type": ["string", "null"], "format": "date-time"},
                "created_at": {"type": ["string", "null"], "format": "date-time"},
                "budget": {"oneOf": [_ref("BudgetUsage"), {"type": "null"}]}}},
            "KeyWithSecret": {"allOf": [_ref("Key"), {"type": "object", "required": ["secret"],
                              "properties": {"secret": {"type": "string", "description": "shown once"}}}]},
            "BudgetConfig": {"type": "object", "required": ["limit"], "additionalProperties": False,
                             "properties": _BUDGET_FIELDS},
            # Its own object, not allOf BudgetConfig: that one's additionalProperties would forbid
            # `current`. The time zone comes back inside `window`.
            "Budget": {"type": "object", "additionalProperties": False,
                       "required": ["id", "selector", "limit", "window", "thresholds", "on_exceed", "current"],
                       "properties": {**{k: v for k, v in _BUDGET_FIELDS.items() if k != "timezone"},
                                      "current": {"oneOf": [_ref("BudgetUsage"), {"type": "null"}],
                                                  "description": "the current window (null for a wildcard budget)"}}},
            "BudgetDeleted": {"type": "object", "required": ["id", "deleted", "in_flight", "reserved"], "properties": {
                "id": {"type": "string"}, "deleted": {"const": True},
                "in_flight": {"type": "integer", "description": "requests in flight against it (they still settle)"},
                "reserved": {**_USD, "description": "what those requests hold"}}},
            "BudgetUsage": {"type": "object", "properties": {
                "id": {"type": "string"}, "label": {"type": "string"},
                "selector": {"type": "object"}, "instance": {"type": "object"},
                "spent": _USD, "reserved": _USD, "limit": _USD, "available": _USD, "percent": {"type": "integer"},
                "window_start": {"type": "string", "format": "date-time"},
                "resets_at": {"type": ["string", "null"], "format": "date-time"},
                "forecast": {"oneOf": [_ref("Forecast"), {"type": "null"}],
                             "description": "with ?forecasts=N only; null: it could not be made"}}},
            "LimitConfig": {"oneOf": [_limit_config(kind) for kind in KINDS],
                            "description": "a config limits: entry: exactly one of " + ", ".join(KINDS) +
                            " with its amount; per for the windowed kinds (all but concurrency and prompt_tokens)"},
            "LimitChange": {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
                "amount": {"oneOf": [_COUNT, _AMOUNT], "description": "a count, or USD (a decimal string) "
                           "for a usd limit"},
                "per": _PER, "on_exceed": _LIMIT_ON_EXCEED}},
            "Limit": {"type": "object", "additionalProperties": False,
                      "required": ["id", "name", "selector", "kind", "amount", "per", "on_exceed", "label",
                                   "instances"],
                      "properties": {
                          "id": {"type": "string"}, "name": {"type": ["string", "null"]},
                          "selector": {"type": "object", "additionalProperties": {"type": "string"}},
                          "kind": {"enum": list(KINDS)}, "amount": _AMOUNT, "per": {"type": ["string", "null"]},
                          "on_exceed": _LIMIT_ON_EXCEED, "label": {"type": "string"},
                          "instances": {"type": "array", "items": _ref("LimitUse"), "description":
                                        "one for a limit without wildcards; for a wildcard limit, each "
                                        "instance that counted something in its window"}}},
            "LimitUse": {"type": "object", "additionalProperties": False,
                         "required": ["id", "instance", "selector", "label", "kind", "amount", "used", "remaining",
                                      "percent", "per"],
                         "properties": {
                             "id": {"type": "string"},
                             "instance": {"type": "object", "additionalProperties": {"type": "string"}},
                             "selector": {"type": "object", "additionalProperties": {"type": "string"}},
                             "label": {"type": "string"}, "kind": {"enum": list(KINDS)},
                             "amount": _AMOUNT,
                             "used": {**_AMOUNT, "description": "what the window holds now (in flight, for "
                                      "concurrency); may pass amount after the amount was lowered"},
                             "remaining": _AMOUNT, "percent": {"type": "integer"},
                             "per": {"type": ["string", "null"]}}},
            "LimitDeleted": {"type": "object", "required": ["id", "deleted"], "properties": {
                "id": {"type": "string"}, "deleted": {"const": True}}},
            "Forecast": {"type": "object", "properties": {
                "budget_id": {"type": "string"}, "instance": {"type": "object"}, "label": {"type": "string"},
                "now": {"type": "string", "format": "date-time"}, "window_start": _WHEN_OR_NULL,
                "window_end": {**_WHEN_OR_NULL, "description": "null: the budget never resets"},
                "horizon_end": {"type": "string", "format": "date-time",
                                "description": "what expected/low/high are at: the window's end, else now + 30 days"},
                "spent": _USD, "limit": _USD, "expected": _USD, "low": _USD, "high": _USD,
                "runs_out_at": {**_WHEN_OR_NULL, "description": "when the expected spend reaches the limit; "
                                "null: not before horizon_end"},
                "earliest_run_out": {**_WHEN_OR_NULL, "description": "from the band's high side"},
                "latest_run_out": {**_WHEN_OR_NULL, "description": "from the band's low side"},
                "runs_out_before_end": {"type": "boolean"},
                "rate_per_hour": _USD, "recent_rate_per_hour": _USD,
                "method": {"enum": ["seasonal", "recent", "none"]},
                "inputs": {"type": "object", "properties": {
                    "history_hours": {"type": "integer"}, "weeks": {"type": "integer"},
                    "trend_per_week": {"type": "string", "description": "USD, signed"},
                    "recent_ratio": {"type": "number"}, "spikes_clipped": {"type": "integer"},
                    "spread": {"type": "number"}}},
                "notes": {"type": "array", "items": {"type": "string"}}}},
            "Advice": {"type": "object", "properties": {
                "budget_id": {"type": "string"}, "instance": {"type": "object"}, "label": {"type": "string"},
                "limit": _USD, "source": {"enum": ["windows", "forecast", "none"]},
                "windows": {"type": "array", "items": {"type": "object", "properties": {
                    "start": {"type": "string", "format": "date-time"},
                    "end": {"type": "string", "format": "date-time"}, "spent": _USD}}},
                "lowest": {"type": ["string", "null"]}, "highest": {"type": ["string", "null"]},
                "p95": {"type": ["string", "null"]}, "headroom_percent": {"type": "integer"},
                "with_headroom": {"type": ["string", "null"]},
                "recommended": {"type": ["string", "null"], "description": "rounded up to 2 significant figures"},
                "binding_windows": {"type": "integer"}, "explanation": {"type": "string"},
                "forecast": {"oneOf": [_ref("Forecast"), {"type": "null"}]}}},
            "UsageReport": {"type": "object", "properties": {
                "by": {"type": "string"}, "since": {"type": ["string", "null"]}, "until": {"type": ["string", "null"]},
                "data": {"type": "array", "items": {"type": "object", "properties": {
                    "value": {"type": "string"}, "cost": _USD}}},
                "total": _USD}},
            "UsagePoint": {"type": "object", "additionalProperties": False,
                           "required": ["start", "end", "group", "cost", "requests", "input_tokens", "output_tokens"],
                           "properties": {
                               "start": {"type": "string", "format": "date-time"},
                               "end": {"type": "string", "format": "date-time"},
                               "group": {"type": ["string", "null"],
                                         "description": "the by= value; null when not grouped or absent"},
                               "cost": _USD, "requests": {"type": "integer"},
                               "input_tokens": {"type": "integer",
                                                "description": "every prompt token, cache reads and writes included"},
                               "output_tokens": {"type": "integer",
                                                 "description": "every generated token, reasoning included"}}},
            "UsageSeries": {"type": "object", "required": ["object", "start", "end", "bucket", "bucket_seconds", "by",
                                                           "filters", "data", "has_more", "next_cursor"],
                            "properties": {
                                "object": {"const": "list"},
                                "start": {"type": "string", "format": "date-time"},
                                "end": {"type": "string", "format": "date-time"},
                                "bucket": {"enum": list(BUCKETS)}, "bucket_seconds": {"type": "integer"},
                                "by": {"type": ["string", "null"]},
                                "filters": {"type": "object", "additionalProperties": {"type": "string"}},
                                "data": {"type": "array", "items": _ref("UsagePoint")},
                                "has_more": {"type": "boolean"},
                                "next_cursor": {"type": ["string", "null"]}}},
            "RequestRecord": {"type": "object", "properties": {
                "request_id": {"type": "string"}, "model": {"type": ["string", "null"]},
                "attributes": {"type": "object"}, "cost": _USD, "status": {"type": "string"},
                "estimate": {"oneOf": [_USD, {"type": "null"}], "description": "what it reserved (its worst case)"},
                "started_at": {"type": "string", "format": "date-time"},
                "finished_at": {"type": "string", "format": "date-time"},
                "usage": {"type": "object", "additionalProperties": {"type": "integer"}},
                "breakdown": {"type": "object", "additionalProperties": _USD}}},
        },
    },
}  # fmt: skip
