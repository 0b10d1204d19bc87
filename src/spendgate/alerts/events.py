"""What an alert says: one event per budget instance, kind and window, named by a stable id.

The id is made from what the event is about, never from who noticed it, so every process and
instance that notices the same crossing, refusal or forecast writes the same id, and the
outbox (``AlertOutbox.add_alerts``) keeps the first: each alert exists once per window however
many processes share the ledger. The id is also the ``webhook-id`` a receiver can deduplicate
on, should a delivery be re-sent after its sender died mid-delivery.

The JSON body (``AlertEvent.body``) is the documented webhook schema (docs/alerts.md):
amounts are decimal strings in USD, instants ISO 8601 UTC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from spendgate.budgets import instance_key
from spendgate.money import Money

if TYPE_CHECKING:
    from spendgate.ledger.base import ThresholdCrossed

__all__ = [
    "ALERT_KINDS",
    "DELIVERY_STATES",
    "SCHEMA_VERSION",
    "AlertEvent",
    "AlertKind",
    "Delivery",
    "DeliveryRecord",
    "DeliveryState",
    "finished_times",
    "forecast_event",
    "refusing_event",
    "reset_event",
    "threshold_event",
    "threshold_event_of",
]

AlertKind = Literal["threshold", "forecast", "refusing", "reset"]
ALERT_KINDS: Final = get_args(AlertKind)
SCHEMA_VERSION: Final = 1


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _usd(amount: Money) -> str:
    return amount.decimal_str()


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert, as the outbox keeps it and every destination is sent it."""

    id: str
    kind: AlertKind
    budget_id: str
    label: str  # the budget instance in words: "team=research, monthly"
    instance: Mapping[str, str]
    window_start: datetime | None
    window_end: datetime | None
    created_at: datetime
    summary: str  # one line for people (the log, Slack)
    details: Mapping[str, Any] = field(default_factory=dict)  # kind-specific, JSON-ready

    def body(self) -> dict[str, Any]:
        """The webhook's JSON body (schema version 1, docs/alerts.md)."""
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "type": f"budget.{self.kind}",
            "budget_id": self.budget_id,
            "budget": self.label,
            "instance": dict(self.instance),
            "window_start": None if self.window_start is None else _iso(self.window_start),
            "window_end": None if self.window_end is None else _iso(self.window_end),
            "created_at": _iso(self.created_at),
            "summary": self.summary,
            **dict(self.details),
        }

    def to_json(self) -> str:
        return json.dumps(self.body(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AlertEvent:
        data = json.loads(text)
        kind = str(data["type"]).removeprefix("budget.")
        if kind not in ALERT_KINDS:
            raise ValueError(f"unknown alert type {data['type']!r}")
        known = {"schema", "id", "type", "budget_id", "budget", "instance", "window_start",
                 "window_end", "created_at", "summary"}  # fmt: skip
        return cls(
            id=data["id"],
            kind=kind,  # type: ignore[arg-type]  # checked above
            budget_id=data["budget_id"],
            label=data["budget"],
            instance=dict(data["instance"]),
            window_start=_parse(data["window_start"]),
            window_end=_parse(data["window_end"]),
            created_at=_required(data["created_at"]),
            summary=data["summary"],
            details={k: v for k, v in data.items() if k not in known},
        )


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def _required(text: str) -> datetime:
    when = _parse(text)
    assert when is not None
    return when


def _window_id(start: datetime | None) -> str:
    return "-" if start is None else str(int(start.timestamp() * 1_000_000))


def _event_id(
    kind: str, budget_id: str, instance: Mapping[str, str], start: datetime | None, tail: str
) -> str:
    parts = (kind, budget_id, instance_key(instance), _window_id(start), tail)
    return ":".join(_quote(p) for p in parts)


def _quote(part: str) -> str:
    # ':' separates the parts; a budget id or instance value may hold one.
    return part.replace("%", "%25").replace(":", "%3A")


def threshold_event(
    *,
    budget_id: str,
    label: str,
    instance: Mapping[str, str],
    threshold: int,
    spent: Money,
    limit: Money,
    window_start: datetime | None,
    window_end: datetime | None,
    request_id: str,
    now: datetime,
    soft: bool = False,
) -> AlertEvent:
    """Spend reached ``threshold`` percent of the limit (once per budget instance and window)."""
    over = " (a soft budget: requests go on)" if soft and threshold >= 100 else ""
    return AlertEvent(
        # The request that crossed it too: the ledger announces a crossing once per window
        # (until a reset, which starts the thresholds again), and one crossing is one event.
        id=_event_id("threshold", budget_id, instance, window_start, f"{threshold}:{request_id}"),
        kind="threshold",
        budget_id=budget_id,
        label=label,
        instance=instance,
        window_start=window_start,
        window_end=window_end,
        created_at=now,
        summary=f"Budget {label}: {threshold}% used ({_usd(spent)} of {_usd(limit)} USD){over}",
        details={
            "threshold": threshold,
            "spent": _usd(spent),
            "limit": _usd(limit),
            "request_id": request_id,
            "soft": soft,
        },
    )


def threshold_event_of(crossed: ThresholdCrossed, now: datetime, *, soft: bool = False) -> AlertEvent:
    """The alert for a ledger's ``ThresholdCrossed``."""
    return threshold_event(
        budget_id=crossed.budget_id,
        label=crossed.label,
        instance=crossed.instance,
        threshold=crossed.threshold,
        spent=crossed.spent,
        limit=crossed.limit,
        window_start=crossed.window_start,
        window_end=crossed.window_end,
        request_id=crossed.request_id,
        now=now,
        soft=soft,
    )


def refusing_event(
    *,
    budget_id: str,
    label: str,
    instance: Mapping[str, str],
    spent: Money,
    reserved: Money,
    limit: Money,
    needed: Money,
    window_start: datetime | None,
    window_end: datetime | None,
    paced: bool,
    now: datetime,
) -> AlertEvent:
    """The budget refused its first request in this window (later refusals say nothing more)."""
    why = "its pace" if paced else "its limit"
    until = f"; resets {_iso(window_end)}" if window_end is not None else ""
    return AlertEvent(
        id=_event_id("refusing", budget_id, instance, window_start, "paced" if paced else "limit"),
        kind="refusing",
        budget_id=budget_id,
        label=label,
        instance=instance,
        window_start=window_start,
        window_end=window_end,
        created_at=now,
        summary=f"Budget {label}: refusing requests ({why}: {_usd(spent)} spent, {_usd(reserved)} "
        f"reserved of {_usd(limit)} USD){until}",
        details={
            "spent": _usd(spent),
            "reserved": _usd(reserved),
            "limit": _usd(limit),
            "needed": _usd(needed),
            "paced": paced,
        },
    )


def reset_event(
    *, budget_id: str, label: str, instance: Mapping[str, str] | None, change: int, now: datetime
) -> AlertEvent:
    """An administrator reset the budget (``change``: the ledger's change number, unique)."""
    which = label if instance is None else f"{label} ({instance_key(instance)})"
    return AlertEvent(
        id=_event_id("reset", budget_id, instance or {}, None, str(change)),
        kind="reset",
        budget_id=budget_id,
        label=label,
        instance=dict(instance or {}),
        window_start=None,
        window_end=None,
        created_at=now,
        summary=f"Budget {which}: reset by an administrator; spend starts again from zero",
        details={"change": change, "all_instances": instance is None},
    )


def forecast_event(
    *,
    budget_id: str,
    label: str,
    instance: Mapping[str, str],
    spent: Money,
    limit: Money,
    expected_at_end: Money,
    runs_out_at: datetime,
    window_start: datetime | None,
    window_end: datetime | None,
    method: str,
    now: datetime,
) -> AlertEvent:
    """The forecast says the budget runs out before its window ends (once per window)."""
    return AlertEvent(
        id=_event_id("forecast", budget_id, instance, window_start, "runs-out"),
        kind="forecast",
        budget_id=budget_id,
        label=label,
        instance=instance,
        window_start=window_start,
        window_end=window_end,
        created_at=now,
        summary=f"Budget {label}: forecast to run out at {_iso(runs_out_at)}"
        + (f", before the window ends {_iso(window_end)}" if window_end is not None else "")
        + f" ({_usd(spent)} of {_usd(limit)} USD spent; about {_usd(expected_at_end)} expected)",
        details={
            "spent": _usd(spent),
            "limit": _usd(limit),
            "expected_at_end": _usd(expected_at_end),
            "runs_out_at": _iso(runs_out_at),
            "method": method,
        },
    )


DeliveryState = Literal["pending", "delivered", "failed", "skipped"]
DELIVERY_STATES: Final = get_args(DeliveryState)


def finished_times(
    state: DeliveryState, now: datetime, retry_at: datetime | None
) -> tuple[datetime, datetime | None]:
    """What ``AlertOutbox.finish_delivery`` records, for every backend alike: when the delivery is
    next due (``retry_at``, needed to make it pending again; else now) and when it was delivered."""
    if state == "pending" and retry_at is None:
        raise ValueError("a delivery made pending again needs retry_at")
    return (retry_at if retry_at is not None else now), (now if state == "delivered" else None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event claimed for one destination by one sender, until ``claimed_until``."""

    seq: int  # the event's place in the outbox (the order events were added in)
    event: AlertEvent
    destination: str
    attempt: int  # 1 for the first try
    owner: str
    claimed_until: datetime


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """What the outbox knows of one event's delivery to one destination (the admin view)."""

    seq: int
    event: AlertEvent
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None  # pending: when it is due
    last_error: str | None
    delivered_at: datetime | None
    claimed_by: str | None = None  # pending: the sender holding it now ("host:pid:tag"), if any

    def to_data(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event": self.event.body(),
            "destination": self.destination,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": None if self.next_attempt_at is None else _iso(self.next_attempt_at),
            "last_error": self.last_error,
            "delivered_at": None if self.delivered_at is None else _iso(self.delivered_at),
            "claimed_by": self.claimed_by,
        }
