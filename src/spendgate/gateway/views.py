"""What the admin API and the admin CLI share: JSON views of keys and budgets, time and input parsing.

Money leaves as decimal strings in USD, never floats; instants as ISO 8601 UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from spendgate.budgets import DIMENSIONS, Budget
from spendgate.errors import ConfigError
from spendgate.gateway.settings import VirtualKey
from spendgate.ledger import BudgetUsage, Ledger, RequestRecord
from spendgate.money import Money

__all__ = [
    "KEY_FIELDS",
    "USAGE_DIMENSIONS",
    "budget_json",
    "iso",
    "key_budget",
    "key_budget_id",
    "key_json",
    "key_state",
    "money",
    "parse_time",
    "record_json",
]

#: The attributes a key may carry (``model`` is the request's, ``key`` the key's own id).
KEY_FIELDS = ("user", "team", "project", "customer")
USAGE_DIMENSIONS = tuple(d for d in DIMENSIONS)


def money(amount: Money) -> str:
    """``"12.5"``, ``"0.000125"``, ``"0"``: exact USD as a decimal string."""
    return amount.decimal_str()


def iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str, what: str) -> datetime:
    """ISO 8601 date or instant; without an offset it is UTC (``2027-01-01`` is midnight UTC)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise ValueError(
            f"{what}: cannot read {text!r} as an ISO 8601 date or time (e.g. 2027-01-01)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def key_state(key: VirtualKey, now: datetime) -> str:
    if key.disabled:
        return "disabled"
    if key.expires_at is not None and now >= key.expires_at:
        return "expired"
    return "active"


def key_budget_id(key_id: str) -> str:
    return f"key:{key_id}"


def key_budget(key_id: str, limit: object, window: object = "month") -> Budget:
    """The budget ``keys create --budget`` makes: spend of this key alone, per window."""
    return Budget.from_config(
        {"id": key_budget_id(key_id), "selector": {"key": key_id}, "limit": limit, "window": window},
        where="budget",
    )


def key_json(key: VirtualKey, now: datetime, usage: BudgetUsage | None = None) -> dict[str, Any]:
    attrs = key.attributes
    out: dict[str, Any] = {
        "id": key.id,
        "hint": key.hint,
        "name": key.name,
        **{name: getattr(attrs, name) for name in KEY_FIELDS},
        "tags": sorted(attrs.tags),
        "models": list(key.models),
        "state": key_state(key, now),
        "disabled": key.disabled,
        "expires_at": iso(key.expires_at),
        "created_at": iso(key.created_at),
        "budget": budget_json(usage) if usage is not None else None,
    }
    return out


def budget_json(usage: BudgetUsage) -> dict[str, Any]:
    return {
        "id": usage.budget_id,
        "label": usage.label,
        "selector": usage.selector,
        "instance": usage.instance,
        "spent": money(usage.spent),
        "reserved": money(usage.reserved),
        "limit": money(usage.limit),
        "available": money(usage.available),
        "percent": usage.percent,
        "window_start": iso(usage.window_start),
        "resets_at": iso(usage.window_end),
    }


def record_json(record: RequestRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "model": record.model,
        "attributes": record.attributes.to_dict(),
        "cost": money(record.cost),
        # What the request reserved before the call (its worst case): None where not kept.
        "estimate": None if record.estimate is None else money(record.estimate),
        "status": record.status,
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "usage": dict(record.usage),
        "breakdown": record.breakdown_strings(),
    }


def key_budgets(ledger: Ledger, keys: Iterable[VirtualKey]) -> dict[str, BudgetUsage]:
    """Each key's own budget (``key:<id>``) as it stands now, for keys that have one."""
    ids = {budget.id for budget in ledger.budgets()}
    out: dict[str, BudgetUsage] = {}
    for key in keys:
        budget_id = key_budget_id(key.id)
        if budget_id in ids:
            out[key.id] = ledger.usage(budget_id)
    return out


def parse_instance(pairs: Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
    """``["user=alice"]`` or ``{"user": "alice"}`` -> ``{"user": "alice"}``."""
    if pairs is None:
        return {}
    if isinstance(pairs, Mapping):
        return {str(k): str(v) for k, v in pairs.items()}
    out: dict[str, str] = {}
    for pair in pairs:
        dim, sep, value = pair.partition("=")
        if not sep or not dim or not value:
            raise ConfigError(
                "instance", f"write an instance as dimension=value (e.g. user=alice), got {pair!r}"
            )
        out[dim.strip()] = value.strip()
    return out
