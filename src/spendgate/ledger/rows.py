"""How the SQL backends' rows become spendgate values: the column layout SQLite and
PostgreSQL share (budget definitions, the changes log, virtual keys, the request log, the alert
outbox's deliveries).

Instants are BIGINT microseconds since the epoch (``us``/``dt``) in both. Each backend still
encodes what its driver types differently (``sqlite.codec``, ``postgres.codec``: tags and
lines as JSON text or ``jsonb``); what is the same row in both is read here once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from spendgate.alerts.events import AlertEvent, DeliveryRecord, DeliveryState
from spendgate.budgets import EPOCH, Attributes, Budget
from spendgate.gateway.settings import VirtualKey
from spendgate.ledger.base import BudgetChanged, ChangeKind, RequestRecord
from spendgate.money import Money

__all__ = [
    "budget_changed",
    "budgets_of",
    "deliveries_query",
    "delivery_of",
    "dt",
    "key_of",
    "record_of",
    "tokens_of",
    "us",
]

_US: Final = timedelta(microseconds=1)


def us(when: datetime) -> int:
    """An instant as the rows keep it: exact microseconds since the epoch (no float on the way)."""
    return (when - EPOCH) // _US


def dt(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def budgets_of(rows: Iterable[Sequence[Any]]) -> dict[str, Budget]:
    """``id, definition, config_limit, limit_override`` rows: each budget at its effective limit."""
    budgets: dict[str, Budget] = {}
    for budget_id, definition, config_limit, override in rows:
        config = json.loads(definition)
        config["limit"] = Money(override if override is not None else config_limit).decimal_str()
        budgets[budget_id] = Budget.from_config(config, where=f"budgets[{budget_id!r}]")
    return budgets


def budget_changed(
    budget_id: str,
    kind: ChangeKind,
    new_limit: int | None,
    previous_limit: int | None,
    instance: str | None,
    seq: int | None = None,
) -> BudgetChanged:
    """A budget change as an event, from the ``changes`` table's columns (nano-USD limits)."""
    return BudgetChanged(
        budget_id,
        kind,
        None if new_limit is None else Money(new_limit),
        None if previous_limit is None else Money(previous_limit),
        instance,
        seq,
    )


def key_of(row: Sequence[Any]) -> tuple[VirtualKey, str]:
    """A ``gateway_keys`` row (``keys.sql`` of either backend): the key and its stored hash."""
    key_id, hint, name, user, team, project, customer, tags, models, expires, disabled, created, digest = row
    key = VirtualKey(
        id=key_id,
        hint=hint,
        attributes=Attributes(
            key=key_id,
            user=user,
            team=team,
            project=project,
            customer=customer,
            tags=frozenset(json.loads(tags)),
        ),
        models=tuple(json.loads(models)),
        expires_at=None if expires is None else dt(expires),
        disabled=bool(disabled),
        created_at=None if created is None else dt(created),
        name=name,
    )
    return key, digest


def record_of(row: Sequence[Any], attrs: Attributes) -> RequestRecord:
    """A request log row (``request_id, status, started_at, finished_at, cost``, the seven
    attribute columns, ``model, usage, breakdown, estimate``), its attributes decoded by the backend."""
    request_id, status, started, finished, cost = row[:5]
    model, usage, breakdown, estimate = row[12:16]
    return RequestRecord(
        request_id=request_id,
        attributes=attrs,
        cost=Money(cost),
        started_at=dt(started),
        finished_at=dt(finished),
        model=model or attrs.model,
        usage=json.loads(usage) if usage else {},
        breakdown=json.loads(breakdown) if breakdown else {},
        status=status or "ok",
        estimate=None if estimate is None else Money(int(estimate)),
    )


def tokens_of(usage: Mapping[str, int] | None) -> tuple[int | None, int | None]:
    """A logged request's ``input_tokens`` and ``output_tokens`` columns: its usage's own counts
    (input includes cached tokens, output includes reasoning: docs/reports.md), None when absent."""
    if not usage:
        return None, None
    return _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_SQL_DELIVERIES: Final = """
    SELECT e.seq, e.body, d.destination, d.state, d.attempts, d.next_at, d.last_error, d.delivered_at,
           d.claimed_by
    FROM alert_deliveries AS d JOIN alert_events AS e ON e.seq = d.event_seq"""


def deliveries_query(
    mark: str,
    *,
    state: DeliveryState | None,
    destination: str | None,
    before: int | None,
    limit: int,
    collate: str = "",
) -> tuple[str, list[Any]]:
    """``AlertOutbox.alert_deliveries``' statement in a backend's placeholder ``mark`` (``?``,
    ``%s``), newest event first; ``collate`` orders destination names bytewise where it must."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("d.state =", state), ("d.destination =", destination), ("d.event_seq <", before)):
        if value is not None:
            where.append(f"{column} {mark}")
            params.append(value)
    sql = _SQL_DELIVERIES + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY d.event_seq DESC, d.destination{collate} LIMIT {mark}"
    return sql, [*params, limit]


def delivery_of(row: Sequence[Any]) -> DeliveryRecord:
    """A ``deliveries_query`` row as a ``DeliveryRecord`` (the body is the event's JSON text)."""
    seq, body, destination, state, attempts, next_at, error, delivered, claimed_by = row
    return DeliveryRecord(
        seq=seq,
        event=AlertEvent.from_json(body),
        destination=destination,
        state=state,
        attempts=attempts,
        next_attempt_at=dt(next_at) if state == "pending" else None,
        last_error=error,
        delivered_at=None if delivered is None else dt(delivered),
        claimed_by=claimed_by,
    )
