"""``/limits``: rate limits with what they hold now; create, change (PATCH or PUT), delete.

A limit is written as a config ``limits:`` entry is (``Limit.from_config``); answers give it with
``kind`` and ``amount`` (a decimal string: a count, or USD for ``usd``) and its instances' use.
A limit's id may hold ``/`` (the default id is ``key=*/requests/1m``): the routes take the rest
of the path as the id. The functions without a request are the CLI's too (``spendgate limits``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spendgate.budgets import parse_instance_key
from spendgate.errors import ConfigError
from spendgate.gateway.admin.context import AdminContext, context
from spendgate.gateway.admin.errors import ApiError, bad, not_found
from spendgate.gateway.admin.inputs import amount, json_body, reject_unknown
from spendgate.gateway.views import money
from spendgate.ledger.protocols import LimitAdmin
from spendgate.limits import KINDS, Limit, LimitUsage, format_per, parse_per
from spendgate.money import Money

__all__ = [
    "CHANGE_FIELDS",
    "MAX_COUNT",
    "change_limit",
    "create_limit",
    "delete_limit",
    "get_limit",
    "limit_view",
    "limit_views",
    "list_limits",
    "patch_limit",
    "put_limit",
    "read_limit",
    "replace_limit",
    "why_not_change",
]

#: The most a count may be: a ledger keeps counts in 64-bit integers (as it keeps nano-USD).
MAX_COUNT: Final = 10**18
#: What ``PATCH /limits/{id}`` may change (the rest of a limit: ``PUT`` it whole).
CHANGE_FIELDS: Final = ("amount", "per", "on_exceed")


# -- answers ---------------------------------------------------------------------------------------


def _amount_str(limit: Limit, value: int) -> str:
    """A count as a decimal string, or USD for a ``usd`` limit (its counts are nano-USD)."""
    return money(Money(value)) if limit.kind == "usd" else str(value)


def use_json(use: LimitUsage) -> dict[str, Any]:
    """One limit instance now: what its window holds (in flight, for concurrency)."""
    limit = use.limit
    amount_, used = limit.amount, use.used
    return {
        "id": limit.id,
        "instance": parse_instance_key(use.instance),
        "selector": limit.concrete_selector(use.instance),
        "label": limit.label(use.instance),
        "kind": limit.kind,
        "amount": _amount_str(limit, amount_),
        "used": _amount_str(limit, used),
        "remaining": _amount_str(limit, use.remaining),
        "percent": used * 100 // amount_ if amount_ > 0 else (100 if used > 0 else 0),
        "per": format_per(limit.per) if limit.per is not None else None,
    }


def limit_view(limit: Limit, uses: Iterable[LimitUsage]) -> dict[str, Any]:
    """A limit with its instances' use (none yet for a wildcard limit nothing matched)."""
    return {
        "id": limit.id,
        "name": limit.name,
        "selector": dict(limit.selector),
        "kind": limit.kind,
        "amount": _amount_str(limit, limit.amount),
        "per": format_per(limit.per) if limit.per is not None else None,
        "on_exceed": limit.on_exceed,
        "label": limit.label(),
        "instances": [use_json(u) for u in uses if u.limit.id == limit.id],
    }


def limit_views(ledger: LimitAdmin, only: str | None = None) -> list[dict[str, Any]]:
    """Every limit (or the one with id ``only``; KeyError if there is none) with its use now."""
    limits = [ledger.get_limit(only)] if only is not None else ledger.limits()
    uses = ledger.list_limits()
    return [limit_view(limit, uses) for limit in limits]


# -- input -----------------------------------------------------------------------------------------


def _count(value: object, field: str) -> int:
    """A whole number from 0 to ``MAX_COUNT``: a JSON integer, or its decimal string."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise bad(field, f"must be a whole number from 0 to {MAX_COUNT}, got {value!r}")
    return value


def _check_amounts(body: Mapping[str, Any]) -> None:
    """What ``Limit.from_config`` lets through: floats for USD, amounts past what a ledger holds
    (64 bits), windows past what a ``timedelta`` holds, a selector that is not an object."""
    for kind in KINDS:
        if kind in body:
            if kind == "usd":
                amount(body[kind], kind)
            elif isinstance(body[kind], int) and not isinstance(body[kind], bool):
                _count(body[kind], kind)
    if "per" in body:
        try:
            parse_per(body["per"])
        except ValueError as exc:
            raise bad("per", str(exc).removeprefix("per: ")) from None
        except OverflowError:  # more days than a timedelta holds
            raise bad("per", f"is at most 31 days, got {body['per']!r}") from None
    selector = body.get("selector")
    if selector is not None and not isinstance(selector, dict):
        raise bad("selector", 'must be an object of dimension to value or "*", e.g. {"key": "*"}')


def read_limit(body: Mapping[str, Any], limit_id: str | None = None) -> Limit:
    """A limit from a config ``limits:`` entry (a 400 naming the field if it is not one);
    ``limit_id``: the id it must have (the one in a PUT's path)."""
    _check_amounts(body)
    if limit_id is not None:
        if "id" in body and body["id"] != limit_id:
            raise bad("id", f"must be the id in the path ({limit_id!r}), or left out")
        body = {**body, "id": limit_id}
    try:
        return Limit.from_config(body, where="body")
    except ConfigError as exc:
        raise bad(exc.key.removeprefix("body."), exc.problem) from None
    except ValueError as exc:  # the limit itself refused what the config reader let through
        raise bad("body", str(exc)) from None


def change_limit(limit: Limit, changes: Mapping[str, Any]) -> Limit:
    """``limit`` with a new ``amount``, ``per`` or ``on_exceed`` (PATCH, ``spendgate limits set``)."""
    reject_unknown(changes, CHANGE_FIELDS)
    if not changes:
        raise bad("body", f"give at least one of {', '.join(CHANGE_FIELDS)}")
    config = limit.to_config()
    if "amount" in changes:
        if limit.kind == "usd":
            config["usd"] = amount(changes["amount"], "amount").decimal_str()
        else:
            config[limit.kind] = _count(changes["amount"], "amount")
    for name in ("per", "on_exceed"):
        if name in changes:
            config[name] = changes[name]
    return read_limit(config, limit.id)


def why_not_change(limit_id: str, *, configured: Iterable[str]) -> str | None:
    """Why changing or deleting ``limit_id`` would be wrong, or None (the API and the CLI ask the
    same): a limit of the gateway's config comes back as it is written there at the next start
    or reload, so a change here would only pretend."""
    if limit_id in configured:
        return (
            f"limit {limit_id!r} is defined in the gateway's config (limits:); it would come back "
            "at the next start or reload: change it in the config and reload instead"
        )
    return None


# -- handlers --------------------------------------------------------------------------------------


async def list_limits(request: Request) -> Response:
    data = await run_in_threadpool(limit_views, context(request).ledger)
    return JSONResponse({"object": "list", "data": data})


def _view(ctx: AdminContext, limit_id: str) -> dict[str, Any]:
    try:
        return limit_views(ctx.ledger, limit_id)[0]
    except KeyError:
        raise not_found("limit", limit_id) from None


async def get_limit(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(_view, context(request), request.path_params["id"]))


def _create(ctx: AdminContext, limit: Limit) -> dict[str, Any]:
    try:
        ctx.ledger.get_limit(limit.id)
    except KeyError:
        ctx.ledger.put_limit(limit)
        return _view(ctx, limit.id)
    raise ApiError(409, f"limit {limit.id!r} exists; PATCH or PUT it", "invalid_request_error", "conflict")


async def create_limit(request: Request) -> Response:
    """A new limit from a config ``limits:`` entry; 409 if its id is taken."""
    limit = read_limit(await json_body(request))
    return JSONResponse(await run_in_threadpool(_create, context(request), limit), status_code=201)


def _current(ctx: AdminContext, limit_id: str) -> Limit:
    refused = why_not_change(limit_id, configured=ctx.config_limits())
    if refused is not None:
        raise ApiError(409, refused, "invalid_request_error", "conflict")
    try:
        return ctx.ledger.get_limit(limit_id)
    except KeyError:
        raise not_found("limit", limit_id) from None


def _patch(ctx: AdminContext, limit_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    limit = change_limit(_current(ctx, limit_id), changes)
    ctx.ledger.put_limit(limit)  # the ledger keeps the counts while kind and per stay
    return _view(ctx, limit_id)


async def patch_limit(request: Request) -> Response:
    """A new amount, window (``per``) or ``on_exceed``; the counts so far are kept unless ``per``
    changes (then they start over)."""
    body = await json_body(request)
    return JSONResponse(await run_in_threadpool(_patch, context(request), request.path_params["id"], body))


def replace_limit(old: Limit, new: Limit) -> Limit:
    """``new`` in place of ``old`` (PUT): anything but the selector may change."""
    if dict(new.selector) != dict(old.selector):
        raise bad(
            "selector",
            "cannot change (a limit counts per instance of its selector): delete the limit and "
            "create another",
        )
    return new


def _put(ctx: AdminContext, limit_id: str, new: Limit) -> dict[str, Any]:
    ctx.ledger.put_limit(replace_limit(_current(ctx, limit_id), new))
    return _view(ctx, limit_id)


async def put_limit(request: Request) -> Response:
    """Replace a limit by a whole config entry (its id: the path's); the counts so far are kept
    while its kind and ``per`` stay."""
    limit_id = request.path_params["id"]
    new = read_limit(await json_body(request), limit_id)
    return JSONResponse(await run_in_threadpool(_put, context(request), limit_id, new))


def _delete(ctx: AdminContext, limit_id: str) -> dict[str, Any]:
    _current(ctx, limit_id)
    if not ctx.ledger.remove_limit(limit_id):
        raise not_found("limit", limit_id)
    return {"id": limit_id, "deleted": True}


async def delete_limit(request: Request) -> Response:
    """Stop enforcing a limit now; its counts go (created again, it counts from zero)."""
    return JSONResponse(await run_in_threadpool(_delete, context(request), request.path_params["id"]))
