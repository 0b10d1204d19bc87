"""``/keys``: create, list, read, disable, enable, rotate and delete virtual keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.errors import ConfigError
from spendgate.gateway.admin.context import AdminContext, context
from spendgate.gateway.admin.errors import bad, not_found
from spendgate.gateway.admin.inputs import amount, json_body, opt_str, reject_unknown, str_list, time_field
from spendgate.gateway.views import KEY_FIELDS, key_budget, key_budgets, key_json

__all__ = ["create_key", "delete_key", "disable_key", "enable_key", "get_key", "list_keys", "rotate_key"]

CREATE_FIELDS: Final = (*KEY_FIELDS, "tags", "models", "expires_at", "name", "budget", "window")


@dataclass(frozen=True)
class NewKey:
    """A checked ``POST /keys`` body."""

    fields: dict[str, str | None]
    tags: list[str]
    models: list[str]
    expires_at: datetime | None
    budget: tuple[object, object] | None  # (limit, window) of the key's own budget


def key_view(ctx: AdminContext, key_id: str) -> dict[str, Any]:
    """A key with its own budget's current usage (blocking)."""
    try:
        key = ctx.keys.get(key_id)
    except KeyError:
        raise not_found("key", key_id) from None
    return key_json(key, ctx.now(), key_budgets(ctx.ledger, [key]).get(key.id))


def _expiry(ctx: AdminContext, value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad("expires_at", "must be an ISO 8601 string")
    expires_at = time_field(value, "expires_at")
    if expires_at <= ctx.now():
        raise bad("expires_at", "is in the past")
    return expires_at


def _own_budget(body: dict[str, Any]) -> tuple[object, object] | None:
    """``(limit, window)`` of the key's own budget, checked before the key exists."""
    limit = body.get("budget")
    if limit is None:
        if "window" in body:
            raise bad("window", "only with budget")
        return None
    window = body.get("window", "month")
    amount(limit, "budget")
    try:
        key_budget("key_check", limit, window)
    except ConfigError as exc:
        raise bad("window" if exc.key.endswith("window") else "budget", exc.problem) from None
    return limit, window


def _create(ctx: AdminContext, new: NewKey) -> dict[str, Any]:
    try:
        key, secret = ctx.keys.create(
            user=new.fields["user"],
            team=new.fields["team"],
            project=new.fields["project"],
            customer=new.fields["customer"],
            tags=new.tags,
            models=new.models,
            expires_at=new.expires_at,
            name=new.fields["name"],
        )
    except ValueError as exc:
        raise bad(str(exc).split(" ", 1)[0], str(exc)) from None
    if new.budget is not None:
        try:
            ctx.ledger.put_budget(key_budget(key.id, *new.budget))
        except BaseException:
            # All or nothing: a live key without its budget, its secret never shown, is worse
            # than no key. The budget was checked already; this is the ledger failing.
            ctx.keys.delete(key.id)
            raise
    return {"secret": secret, **key_view(ctx, key.id)}


async def create_key(request: Request) -> Response:
    ctx = context(request)
    body = await json_body(request)
    reject_unknown(body, CREATE_FIELDS)
    new = NewKey(
        fields={name: opt_str(body, name) for name in (*KEY_FIELDS, "name")},
        tags=str_list(body, "tags"),
        models=str_list(body, "models"),
        expires_at=_expiry(ctx, body.get("expires_at")),
        budget=_own_budget(body),
    )
    return JSONResponse(await run_in_threadpool(_create, ctx, new), status_code=201)


def _list(ctx: AdminContext) -> list[dict[str, Any]]:
    found = ctx.keys.list()
    usages = key_budgets(ctx.ledger, found)
    moment = ctx.now()
    return [key_json(k, moment, usages.get(k.id)) for k in found]


async def list_keys(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": await run_in_threadpool(_list, context(request))})


async def get_key(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(key_view, context(request), request.path_params["id"]))


def _set_disabled(ctx: AdminContext, key_id: str, disabled: bool) -> dict[str, Any]:
    try:
        (ctx.keys.disable if disabled else ctx.keys.enable)(key_id)
    except KeyError:
        raise not_found("key", key_id) from None
    return key_view(ctx, key_id)


def _rotate(ctx: AdminContext, key_id: str) -> dict[str, Any]:
    try:
        _, secret = ctx.keys.rotate(key_id)
    except KeyError:
        raise not_found("key", key_id) from None
    return {"secret": secret, **key_view(ctx, key_id)}


async def disable_key(request: Request) -> Response:
    return JSONResponse(
        await run_in_threadpool(_set_disabled, context(request), request.path_params["id"], True)
    )


async def enable_key(request: Request) -> Response:
    return JSONResponse(
        await run_in_threadpool(_set_disabled, context(request), request.path_params["id"], False)
    )


async def rotate_key(request: Request) -> Response:
    """A new secret (shown here only); the old one stops working."""
    return JSONResponse(await run_in_threadpool(_rotate, context(request), request.path_params["id"]))


async def delete_key(request: Request) -> Response:
    key_id = request.path_params["id"]
    if not await run_in_threadpool(context(request).keys.delete, key_id):
        raise not_found("key", key_id)
    return JSONResponse({"id": key_id, "deleted": True})
