"""The hand-written OpenAPI 3.1 document of the admin API, served at ``/openapi.json``.

A test keeps it and the routes in step.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.budgets import DIMENSIONS
from spendgate.gateway.admin.handlers.limits import MAX_COUNT
from spendgate.gateway.admin.handlers.usage import MAX_REQUESTS
from spendgate.gateway.views import KEY_FIELDS
from spendgate.limits import KINDS, WINDOWED

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
            "get": _op("Budgets with spend in the current window", _json(_list("BudgetUsage"))),
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
        "/openapi.json": {"get": _op("This document", _json({"type": "object"}))},
    },
    "components": {
        "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        "schemas": {
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
                "resets_at": {"type": ["string", "null"], "format": "date-time"}}},
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
            "UsageReport": {"type": "object", "properties": {
                "by": {"type": "string"}, "since": {"type": ["string", "null"]}, "until": {"type": ["string", "null"]},
                "data": {"type": "array", "items": {"type": "object", "properties": {
                    "value": {"type": "string"}, "cost": _USD}}},
                "total": _USD}},
            "RequestRecord": {"type": "object", "properties": {
                "request_id": {"type": "string"}, "model": {"type": ["string", "null"]},
                "attributes": {"type": "object"}, "cost": _USD, "status": {"type": "string"},
                "started_at": {"type": "string", "format": "date-time"},
                "finished_at": {"type": "string", "format": "date-time"},
                "usage": {"type": "object", "additionalProperties": {"type": "integer"}},
                "breakdown": {"type": "object", "additionalProperties": _USD}}},
        },
    },
}  # fmt: skip
