"""``/budgets``: list with current spend, create, change a limit, reset a window."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.budgets import Budget
from spendgate.errors import ConfigError
from spendgate.gateway.admin.context import AdminContext, context
from spendgate.gateway.admin.errors import ApiError, bad, not_found
from spendgate.gateway.admin.inputs import amount, json_body, reject_unknown
from spendgate.gateway.views import budget_json, money, parse_instance
from spendgate.money import Money

__all__ = ["create_budget", "list_budgets", "patch_budget", "reset_budget"]


def budget_view(ctx: AdminContext, budget: Budget) -> dict[str, Any]:
    """A budget's config with its current window (none for a wildcard budget: many instances)."""
    out = budget.to_config()
    out["limit"] = money(budget.limit)  # "75", not to_config's "75.000000000"
    out["current"] = budget_json(ctx.ledger.usage(budget.id)) if not budget.wildcards else None
    return out


async def list_budgets(request: Request) -> Response:
    rows = await run_in_threadpool(context(request).ledger.list_budgets)
    return JSONResponse({"object": "list", "data": [budget_json(u) for u in rows]})


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
