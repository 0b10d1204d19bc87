"""``/budgets``: list with current spend, create, change a limit, reset a window, delete."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.budgets import Budget
from spendgate.errors import ConfigError
from spendgate.forecasting import ledger_now
from spendgate.gateway.admin.context import AdminContext, context
from spendgate.gateway.admin.errors import ApiError, bad, not_found
from spendgate.gateway.admin.handlers.forecast import max_age_param, row_forecast
from spendgate.gateway.admin.inputs import amount, json_body, reject_unknown
from spendgate.gateway.keys import KeyStore
from spendgate.gateway.views import budget_json, key_budget_id, money, parse_instance
from spendgate.money import Money

__all__ = [
    "create_budget",
    "delete_budget",
    "list_budgets",
    "patch_budget",
    "reset_budget",
    "why_not_delete",
]


def budget_view(ctx: AdminContext, budget: Budget) -> dict[str, Any]:
    """A budget's config with its current window (none for a wildcard budget: many instances)."""
    out = budget.to_config()
    out["limit"] = money(budget.limit)  # "75", not to_config's "75.000000000"
    out["current"] = budget_json(ctx.ledger.usage(budget.id)) if not budget.wildcards else None
    return out


_LIST_PARAMS: Final = ("forecasts", "max_age")
#: The most rows ``?forecasts=`` gives a forecast (each a few milliseconds when made afresh).
MAX_LIST_FORECASTS: Final = 1000


async def list_budgets(request: Request) -> Response:
    """Every budget (and wildcard instance with spend) in its current window. ``forecasts=N``:
    the first N rows also carry their ``forecast`` (``/budgets/{id}/forecast``'s answer, or null
    when it cannot be made), each made at most ``max_age`` seconds ago (default: afresh): one
    request for a page of rows, where a request per row kept a browser busy."""
    params = request.query_params
    for name in params:
        if name not in _LIST_PARAMS:
            raise bad(name, f"unknown query parameter; known: {', '.join(_LIST_PARAMS)}")
    text = params.get("forecasts", "0")
    if not text.isdigit() or int(text) > MAX_LIST_FORECASTS:
        raise bad("forecasts", f"must be a whole number of rows from 0 to {MAX_LIST_FORECASTS}")
    wanted = int(text)
    max_age = max_age_param(params.get("max_age"))
    ctx = context(request)

    def read() -> dict[str, Any]:
        rows = ctx.ledger.list_budgets()
        now = ledger_now(ctx.ledger)
        data = [budget_json(u) for u in rows]
        for view, row in zip(data[:wanted], rows, strict=False):
            view["forecast"] = row_forecast(ctx, row, now, max_age or timedelta(0))
        return {"object": "list", "data": data}

    return JSONResponse(await run_in_threadpool(read))


def _create(ctx: AdminContext, budget: Budget) -> dict[str, Any]:
    if any(b.id == budget.id for b in ctx.ledger.budgets()):
        raise ApiError(409, f"budget {budget.id!r} exists; PATCH it", "invalid_request_error", "conflict")
    ctx.ledger.put_budget(budget)
    return budget_view(ctx, budget)


async def create_budget(request: Request) -> Response:
    body = await json_body(request)
    if "limit" in body:
        amount(body["limit"], "limit")  # floats and amounts past what a ledger holds
    try:
        budget = Budget.from_config(body, where="body")
    except ConfigError as exc:
        raise bad(exc.key.removeprefix("body."), exc.problem) from None
    return JSONResponse(await run_in_threadpool(_create, context(request), budget), status_code=201)


def _set_limit(ctx: AdminContext, budget_id: str, limit: Money) -> dict[str, Any]:
    try:
        ctx.ledger.set_limit(budget_id, limit)
        return budget_view(ctx, ctx.ledger.get_budget(budget_id))
    except KeyError:
        raise not_found("budget", budget_id) from None


async def patch_budget(request: Request) -> Response:
    body = await json_body(request)
    reject_unknown(body, ("limit",))
    if "limit" not in body:
        raise bad("limit", "missing")
    limit = amount(body["limit"], "limit")
    return JSONResponse(
        await run_in_threadpool(_set_limit, context(request), request.path_params["id"], limit)
    )


def _reset(ctx: AdminContext, budget_id: str, instance: Mapping[str, str] | None) -> dict[str, Any]:
    try:
        ctx.ledger.reset(budget_id, instance)
        return budget_view(ctx, ctx.ledger.get_budget(budget_id))
    except KeyError:
        raise not_found("budget", budget_id) from None
    except ValueError as exc:
        raise bad("instance", str(exc)) from None


async def reset_budget(request: Request) -> Response:
    """Zero the current window's spend: of every instance, or of the one in ``instance``."""
    body = await json_body(request)
    reject_unknown(body, ("instance",))
    raw = body.get("instance")
    if raw is not None and (not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values())):
        raise bad("instance", 'must be an object of dimension to value, e.g. {"user": "alice"}')
    instance = parse_instance(raw) or None
    return JSONResponse(
        await run_in_threadpool(_reset, context(request), request.path_params["id"], instance)
    )


def why_not_delete(budget_id: str, *, configured: Iterable[str], keys: KeyStore | None) -> str | None:
    """Why deleting ``budget_id`` would be wrong, or None (the API and the CLI ask the same).

    A budget of the gateway's config comes back at its next start or reload, so deleting it
    would only pretend. A key's own budget (``key:<id>``) is the limit the key was created with:
    a key is never left without it (delete the key first, or change the limit).
    """
    if budget_id in configured:
        return (
            f"budget {budget_id!r} is defined in the gateway's config (budgets:); it would come back "
            "at the next start or reload: remove it from the config and reload instead"
        )
    prefix = key_budget_id("")
    if keys is not None and budget_id.startswith(prefix):
        key_id = budget_id[len(prefix) :]
        try:
            keys.get(key_id)
        except KeyError:
            return None  # the key is gone: its budget may go too
        return (
            f"budget {budget_id!r} is key {key_id}'s own budget; a key keeps the budget it was "
            "created with: delete the key first, or change the budget's limit"
        )
    return None


def _delete(ctx: AdminContext, budget_id: str) -> dict[str, Any]:
    refused = why_not_delete(budget_id, configured=ctx.config_budgets(), keys=ctx.keys)
    if refused is not None:
        raise ApiError(409, refused, "invalid_request_error", "conflict")
    try:
        deleted = ctx.ledger.delete_budget(budget_id)
    except KeyError:
        raise not_found("budget", budget_id) from None
    return {
        "id": budget_id,
        "deleted": True,
        "in_flight": deleted.in_flight,
        "reserved": money(deleted.reserved),
    }


async def delete_budget(request: Request) -> Response:
    """Stop enforcing a budget. Requests in flight against it end as usual and stay counted."""
    return JSONResponse(await run_in_threadpool(_delete, context(request), request.path_params["id"]))
