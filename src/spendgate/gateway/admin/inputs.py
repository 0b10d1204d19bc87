"""Reading the admin API's JSON bodies and query parameters; every problem is a 400 naming the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request

from spendgate.estimate import MAX_AMOUNT
from spendgate.gateway.admin.errors import ApiError, bad
from spendgate.gateway.views import parse_time
from spendgate.money import Money, MoneyError

__all__ = ["amount", "json_body", "opt_str", "query_time", "reject_unknown", "str_list", "time_field"]


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}``."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
        # JSON escapes can make lone surrogates, which no store or answer can encode.
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise _invalid_json("holds a lone UTF-16 surrogate (such as \\ud800), which is not text") from None
    except (ValueError, UnicodeDecodeError):
        raise _invalid_json("not valid JSON") from None
    except RecursionError:
        raise _invalid_json("nested too deeply") from None
    if not isinstance(data, dict):
        raise bad("body", "must be a JSON object")
    return data


def _invalid_json(problem: str) -> ApiError:
    return ApiError(400, f"body: {problem}", "invalid_request_error", "invalid_json")


def reject_unknown(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for name in body:
        if name not in allowed:
            raise bad(name, f"unknown field; known: {', '.join(allowed)}")


def opt_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise bad(name, "must be a non-empty string")
    return value


def str_list(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise bad(name, "must be a list of non-empty strings")
    return value


def amount(value: object, field: str) -> Money:
    """USD from a decimal string, at most ``MAX_AMOUNT``; a float is refused (it cannot carry the
    exact amount)."""
    if isinstance(value, float):
        raise bad(field, f'give money as a decimal string (e.g. "{value}"), never a float')
    try:
        money = Money.parse(value, what=field)
    except MoneyError as exc:
        raise bad(field, str(exc).removeprefix(f"{field}: ")) from None
    if money > MAX_AMOUNT:
        # A ledger stores nano-USD in 64-bit integers; more than this fits no request anyway.
        raise bad(field, f"must be at most {MAX_AMOUNT.decimal_str()} USD")
    return money


def time_field(text: str, name: str) -> datetime:
    try:
        return parse_time(text, name)
    except ValueError as exc:
        raise bad(name, str(exc).removeprefix(f"{name}: ")) from None


def query_time(request: Request, name: str) -> datetime | None:
    text = request.query_params.get(name)
    return time_field(text, name) if text else None
