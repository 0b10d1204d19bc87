"""The admin API, mounted by the gateway at ``/admin``: keys, budgets, usage, the request log.

Every route needs ``Authorization: Bearer <admin token>`` (compared in
constant time). Without a configured admin token every route answers 403, so
an unset variable never leaves the API open. Virtual keys (``sg-...``) are
refused by name. Errors use OpenAI's shape ``{"error": {"message", "type",
"code"}}``; money is a decimal string in USD, never a float. ``OPENAPI`` is
the hand-written OpenAPI 3.1 document served at ``/openapi.json``; a test
keeps it and the routes in step.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spendgate.budgets import DIMENSIONS, Budget
from spendgate.errors import ConfigError
from spendgate.gateway.keys import SECRET_PREFIX, KeyStore
from spendgate.gateway.views import (
    KEY_FIELDS,
    budget_json,
    key_budget,
    key_budgets,
    key_json,
    money,
    parse_instance,
    parse_time,
    record_json,
)
from spendgate.ledger import Ledger, LedgerUnavailableError, RequestRecord, UnknownReservationError
from spendgate.money import Money, MoneyError

__all__ = ["OPENAPI", "create_admin_app"]

log = logging.getLogger("spendgate.gateway.admin")

Handler = Callable[[Request], Awaitable[Response]]
_KEY_CREATE_FIELDS: Final = (*KEY_FIELDS, "tags", "models", "expires_at", "name", "budget", "window")
_REQUEST_FILTERS: Final = tuple(DIMENSIONS)
_MAX_REQUESTS: Final = 10_000


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def _error(status: int, message: str, type_: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status)


def _bad(field: str, problem: str) -> ApiError:
    return ApiError(400, f"{field}: {problem}", "invalid_request_error", "invalid_field")


def _not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"no {what} {ident!r}", "not_found_error", "not_found")


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body: not valid JSON", "invalid_request_error", "invalid_json") from None
    if not isinstance(data, dict):
        raise _bad("body", "must be a JSON object")
    return data


def _unknown(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for name in body:
        if name not in allowed:
            raise _bad(name, f"unknown field; known: {', '.join(allowed)}")


def _opt_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise _bad(name, "must be a non-empty string")
    return value


def _str_list(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _bad(name, "must be a list of non-empty strings")
    return value


def _amount(value: object, field: str) -> Money:
    if isinstance(value, float):
        raise _bad(field, f'give money as a decimal string (e.g. "{value}"), never a float')
    try:
        return Money.parse(value, what=field)
    except MoneyError as exc:
        raise _bad(field, str(exc).removeprefix(f"{field}: ")) from None


def _query_time(request: Request, name: str) -> datetime | None:
    text = request.query_params.get(name)
    if not text:
        return None
    try:
        return parse_time(text, name)
    except ValueError as exc:
        raise _bad(name, str(exc).removeprefix(f"{name}: ")) from None


def create_admin_app(*, keys: KeyStore, ledger: Ledger, admin_token: Callable[[], str | None]) -> Starlette:
    """The admin API as its own Starlette app. ``admin_token`` is asked on every request (config reloads)."""

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            expected = admin_token()
            if not expected:
                return _error(
                    403, "admin API disabled: set SPENDGATE_ADMIN_TOKEN", "permission_error", "admin_disabled"
                )
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            given = given.strip()
            if scheme.lower() != "bearer" or not given:
                return _error(
                    401,
                    "admin API: send Authorization: Bearer <admin token>",
                    "authentication_error",
                    "missing_admin_token",
                )
            if not hmac.compare_digest(given.encode(), expected.encode()):
                if given.startswith(SECRET_PREFIX):
                    message = "admin API: a virtual key cannot use the admin API; use the admin token"
                else:
                    message = "admin API: invalid admin token"
                return _error(401, message, "authentication_error", "invalid_admin_token")
            try:
                return await handler(request)
            except ApiError as exc:
                return _error(exc.status, exc.message, exc.type, exc.code)
            except LedgerUnavailableError as exc:
                log.error("spendgate admin: ledger unavailable: %s", exc)
                return _error(503, str(exc), "service_unavailable", "ledger_unavailable")

        return endpoint

    def now() -> datetime:
        return datetime.now(UTC)

    def key_view(key_id: str) -> dict[str, Any]:
        try:
            key = keys.get(key_id)
        except KeyError:
            raise _not_found("key", key_id) from None
        usage = key_budgets(ledger, [key]).get(key.id)
        return key_json(key, now(), usage)

    # -- keys -----------------------------------------------------------------------------------
    async def create_key(request: Request) -> Response:
        body = await _body(request)
        _unknown(body, _KEY_CREATE_FIELDS)
        fields = {name: _opt_str(body, name) for name in (*KEY_FIELDS, "name")}
        tags, models = _str_list(body, "tags"), _str_list(body, "models")
        expires_at = None
        if body.get("expires_at") is not None:
            if not isinstance(body["expires_at"], str):
                raise _bad("expires_at", "must be an ISO 8601 string")
            try:
                expires_at = parse_time(body["expires_at"], "expires_at")
            except ValueError as exc:
                raise _bad("expires_at", str(exc).removeprefix("expires_at: ")) from None
            if expires_at <= now():
                raise _bad("expires_at", "is in the past")
        budget_limit = body.get("budget")
        window = body.get("window", "month")
        if budget_limit is not None:
            _amount(budget_limit, "budget")
            try:
                key_budget("key_check", budget_limit, window)  # a bad window fails before the key exists
            except ConfigError as exc:
                raise _bad("window" if exc.key.endswith("window") else "budget", exc.problem) from None
        elif "window" in body:
            raise _bad("window", "only with budget")

        def work() -> dict[str, Any]:
            try:
                key, secret = keys.create(
                    user=fields["user"],
                    team=fields["team"],
                    project=fields["project"],
                    customer=fields["customer"],
                    tags=tags,
                    models=models,
                    expires_at=expires_at,
                    name=fields["name"],
                )
            except ValueError as exc:
                raise _bad(str(exc).split(" ", 1)[0], str(exc)) from None
            if budget_limit is not None:
                ledger.put_budget(key_budget(key.id, budget_limit, window))
            return {"secret": secret, **key_view(key.id)}

        return JSONResponse(await run_in_threadpool(work), status_code=201)

    async def list_keys(request: Request) -> Response:
        def work() -> list[dict[str, Any]]:
            found = keys.list()
            usages = key_budgets(ledger, found)
            moment = now()
            return [key_json(k, moment, usages.get(k.id)) for k in found]

        return JSONResponse({"object": "list", "data": await run_in_threadpool(work)})

    async def get_key(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(key_view, request.path_params["id"]))

    def key_change(action: Callable[[str], object], rotate: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            key_id = request.path_params["id"]

            def work() -> dict[str, Any]:
                try:
                    result = action(key_id)
                except KeyError:
                    raise _not_found("key", key_id) from None
                view = key_view(key_id)
                if rotate:
                    assert isinstance(result, tuple)
                    return {"secret": result[1], **view}
                return view

            return JSONResponse(await run_in_threadpool(work))

        return endpoint

    async def delete_key(request: Request) -> Response:
        key_id = request.path_params["id"]
        if not await run_in_threadpool(keys.delete, key_id):
            raise _not_found("key", key_id)
        return JSONResponse({"id": key_id, "deleted": True})

    # -- budgets ---------------------------------------------------------------------------------
    async def list_budgets(request: Request) -> Response:
        rows = await run_in_threadpool(ledger.list_budgets)
        return JSONResponse({"object": "list", "data": [budget_json(u) for u in rows]})

    async def create_budget(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body.get("limit"), float):
            raise _bad("limit", f'give money as a decimal string (e.g. "{body["limit"]}"), never a float')
        try:
            budget = Budget.from_config(body, where="body")
        except ConfigError as exc:
            raise _bad(exc.key.removeprefix("body."), exc.problem) from None

        def work() -> dict[str, Any]:
            if any(b.id == budget.id for b in ledger.budgets()):
                raise ApiError(
                    409, f"budget {budget.id!r} exists; PATCH it", "invalid_request_error", "conflict"
                )
            ledger.put_budget(budget)
            return _budget_view(budget)

        return JSONResponse(await run_in_threadpool(work), status_code=201)

    def _budget_view(budget: Budget) -> dict[str, Any]:
        out = budget.to_config()
        out["limit"] = money(budget.limit)  # "75", not to_config's "75.000000000"
        out["current"] = budget_json(ledger.usage(budget.id)) if not budget.wildcards else None
        return out

    async def patch_budget(request: Request) -> Response:
        budget_id = request.path_params["id"]
        body = await _body(request)
        _unknown(body, ("limit",))
        if "limit" not in body:
            raise _bad("limit", "missing")
        limit = _amount(body["limit"], "limit")

        def work() -> dict[str, Any]:
            try:
                ledger.set_limit(budget_id, limit)
                return _budget_view(ledger.get_budget(budget_id))
            except KeyError:
                raise _not_found("budget", budget_id) from None

        return JSONResponse(await run_in_threadpool(work))

    async def reset_budget(request: Request) -> Response:
        budget_id = request.path_params["id"]
        body = await _body(request)
        _unknown(body, ("instance",))
        raw = body.get("instance")
        if raw is not None and (
            not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values())
        ):
            raise _bad("instance", 'must be an object of dimension to value, e.g. {"user": "alice"}')
        instance = parse_instance(raw) or None

        def work() -> dict[str, Any]:
            try:
                ledger.reset(budget_id, instance)
                return _budget_view(ledger.get_budget(budget_id))
            except KeyError:
                raise _not_found("budget", budget_id) from None
            except ValueError as exc:
                raise _bad("instance", str(exc)) from None

        return JSONResponse(await run_in_threadpool(work))

    # -- usage and the request log --------------------------------------------------------------
    async def usage(request: Request) -> Response:
        by = request.query_params.get("by", "user")
        if by not in DIMENSIONS:
            raise _bad("by", f"must be one of {', '.join(DIMENSIONS)}")
        since, until = _query_time(request, "since"), _query_time(request, "until")
        totals = await run_in_threadpool(ledger.usage_by, by, since, until)
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

    async def requests_log(request: Request) -> Response:
        params = request.query_params
        allowed = ("since", "until", "limit", "after", *_REQUEST_FILTERS)
        for name in params:
            if name not in allowed:
                raise _bad(name, f"unknown query parameter; known: {', '.join(allowed)}")
        since, until = _query_time(request, "since"), _query_time(request, "until")
        limit = 100
        if "limit" in params:
            text = params["limit"]
            if not text.isdigit() or not 1 <= int(text) <= _MAX_REQUESTS:
                raise _bad("limit", f"must be a whole number from 1 to {_MAX_REQUESTS}")
            limit = int(text)
        filters = {dim: params[dim] for dim in _REQUEST_FILTERS if dim in params}
        after = params.get("after") or None

        def page() -> list[RequestRecord]:
            # One more than asked: whether another page follows.
            return ledger.query_requests(since, until, limit=limit + 1, after=after, **filters)

        try:
            records = await run_in_threadpool(page)
        except UnknownReservationError:
            raise _bad(
                "after", "is not a request id in the log (take last_id from the previous page)"
            ) from None
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

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            return _error(
                405, f"{request.method} not allowed here", "invalid_request_error", "method_not_allowed"
            )
        return _error(status, f"no admin route {request.url.path}", "not_found_error", "not_found")

    routes = [
        Route("/keys", guarded(create_key), methods=["POST"]),
        Route("/keys", guarded(list_keys), methods=["GET"]),
        Route("/keys/{id}", guarded(get_key), methods=["GET"]),
        Route("/keys/{id}", guarded(delete_key), methods=["DELETE"]),
        Route("/keys/{id}/disable", guarded(key_change(keys.disable)), methods=["POST"]),
        Route("/keys/{id}/enable", guarded(key_change(keys.enable)), methods=["POST"]),
        Route("/keys/{id}/rotate", guarded(key_change(keys.rotate, rotate=True)), methods=["POST"]),
        Route("/budgets", guarded(list_budgets), methods=["GET"]),
        Route("/budgets", guarded(create_budget), methods=["POST"]),
        Route("/budgets/{id}", guarded(patch_budget), methods=["PATCH"]),
        Route("/budgets/{id}/reset", guarded(reset_budget), methods=["POST"]),
        Route("/usage", guarded(usage), methods=["GET"]),
        Route("/requests", guarded(requests_log), methods=["GET"]),
        Route("/openapi.json", guarded(openapi), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


# -- the OpenAPI document -------------------------------------------------------------------------


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
_NOT_FOUND: Final = {"404": _json(_ref("Error"), "No such key or budget")}
_ID: Final = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
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


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    found: bool = False,
    status: str = "200",
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {status: ok, **_ERRORS, **(_NOT_FOUND if found else {})},
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
        "description": "Virtual keys, budgets and usage of a spendgate gateway. Money is a decimal string "
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
            "post": _op("Create a budget", _json(_ref("Budget"), "Created"), body=_ref("BudgetConfig"), status="201"),
        },
        "/budgets/{id}": {
            "patch": _op("Change a budget's limit now", _json(_ref("Budget")), found=True, parameters=_ID,
                         body={"type": "object", "required": ["limit"], "properties": {"limit": _USD},
                               "additionalProperties": False}),
        },
        "/budgets/{id}/reset": {
            "post": _op("Zero the current window's spend (all instances, or one)", _json(_ref("Budget")),
                        found=True, parameters=_ID,
                        body={"type": "object", "properties": {"instance": {"type": "object",
                              "additionalProperties": {"type": "string"}}}, "additionalProperties": False}),
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
                                    "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_REQUESTS, "default": 100}},
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
            "BudgetConfig": {"type": "object", "required": ["limit"], "additionalProperties": False, "properties": {
                "id": {"type": "string"}, "name": {"type": "string"},
                "selector": {"type": "object", "additionalProperties": {"type": "string"}},
                "limit": _USD, "window": {"oneOf": [{"type": "string"}, {"type": "object"}]},
                "timezone": {"type": "string"}, "thresholds": {"type": "array", "items": {"type": "integer"}},
                "on_exceed": {"enum": ["raise", "wait", "clamp"]}}},
            "Budget": {"allOf": [_ref("BudgetConfig"), {"type": "object", "properties": {
                "current": {"oneOf": [_ref("BudgetUsage"), {"type": "null"}]}}}]},
            "BudgetUsage": {"type": "object", "properties": {
                "id": {"type": "string"}, "label": {"type": "string"},
                "selector": {"type": "object"}, "instance": {"type": "object"},
                "spent": _USD, "reserved": _USD, "limit": _USD, "available": _USD, "percent": {"type": "integer"},
                "window_start": {"type": "string", "format": "date-time"},
                "resets_at": {"type": ["string", "null"], "format": "date-time"}}},
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
