"""The alert outbox over PostgreSQL (``AlertOutbox``; tables in schema.sql, migration 2).

The semantics are the SQLite outbox's (``ledger/sqlite/outbox.py``); what differs is how
concurrent callers are kept apart without one write lock:

- Events get their ``seq`` under the lock of one ``meta`` row (``sg_add_alerts``), so they
  commit in ``seq`` order. A claim reads the last committed ``seq`` first and fans events out
  up to it: an event still being added gets a higher one, and the next claim fans it out.
- A claim fans out only for the destinations whose row it could lock (``FOR UPDATE SKIP
  LOCKED``: a sender fanning out the same destination now does it for both), then takes due
  deliveries ``FOR UPDATE SKIP LOCKED``: two senders never claim the same delivery, and
  neither waits for the other.
- A threshold crossing's event is added in the statement that announces it
  (``sg_alert_events``, called by ``reservations._charged``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from spendgate.alerts.events import AlertEvent, Delivery, DeliveryRecord, DeliveryState, finished_times
from spendgate.ledger.postgres.codec import us
from spendgate.ledger.postgres.connection import Body, Q
from spendgate.ledger.postgres.core import LedgerCore
from spendgate.ledger.rows import deliveries_query, delivery_of

__all__ = ["AlertOutboxMixin", "event_row"]

_SQL_ADD = "SELECT sg_add_alerts(%s::jsonb)"
_SQL_LAST = "SELECT value FROM meta WHERE key = 'alert_seq'"
# Fan out to the named destinations behind the last committed seq that no other sender is
# fanning out now: a delivery row for each event after its ``after_seq``, up to that seq.
# Params: names, then that seq three times.
_SQL_FAN_OUT = """
    WITH d AS (
        SELECT name, after_seq FROM alert_destinations
        WHERE name = ANY(%s::text[]) AND after_seq < %s::bigint
        ORDER BY name COLLATE "C"
        FOR UPDATE SKIP LOCKED
    ), fanned AS (
        INSERT INTO alert_deliveries (event_seq, destination, state, next_at)
        SELECT e.seq, d.name, 'pending', e.created_at
        FROM d JOIN alert_events AS e ON e.seq > d.after_seq AND e.seq <= %s::bigint
        ON CONFLICT DO NOTHING
    )
    UPDATE alert_destinations AS a SET after_seq = %s::bigint FROM d WHERE a.name = d.name"""
# Due deliveries to the named destinations, oldest event first, claimed: params now, names,
# now, limit, owner, until.
_SQL_CLAIM = """
    WITH due AS (
        SELECT event_seq, destination FROM alert_deliveries
        WHERE state = 'pending' AND next_at <= %s::bigint AND destination = ANY(%s::text[])
          AND (claimed_until IS NULL OR claimed_until <= %s::bigint)
        ORDER BY event_seq, destination COLLATE "C"
        LIMIT %s
        FOR UPDATE SKIP LOCKED
    )
    UPDATE alert_deliveries AS d
    SET claimed_by = %s, claimed_until = %s::bigint, attempts = d.attempts + 1
    FROM due JOIN alert_events AS e ON e.seq = due.event_seq
    WHERE d.event_seq = due.event_seq AND d.destination = due.destination
    RETURNING d.event_seq, d.destination, d.attempts, e.body"""
_SQL_FINISH = """
    UPDATE alert_deliveries
    SET state = %s, next_at = %s, last_error = %s, delivered_at = %s, claimed_by = NULL, claimed_until = NULL
    WHERE event_seq = %s AND destination = %s AND claimed_by = %s AND claimed_until = %s
      AND state = 'pending'"""
_SQL_RETRY = """
    UPDATE alert_deliveries
    SET state = 'pending', attempts = 0, next_at = %s, claimed_by = NULL, claimed_until = NULL
    WHERE destination = %s AND state = 'failed' AND event_seq = (SELECT seq FROM alert_events WHERE id = %s)"""


def event_row(event: AlertEvent) -> list[Any]:
    """An event as ``sg_add_alerts`` takes it: ``[id, kind, budget_id, body, created_at]``."""
    return [event.id, event.kind, event.budget_id, event.to_json(), us(event.created_at)]


class AlertOutboxMixin(LedgerCore):
    """``AlertOutbox`` over PostgreSQL."""

    def add_alerts(self, events: Sequence[AlertEvent]) -> list[str]:
        if not events:
            return []
        doc = _json([event_row(event) for event in events])

        def body() -> Body[list[str]]:
            rows = yield Q(_SQL_ADD, (doc,))
            return list(rows[0][0])

        added: list[str] = self._execute(body, txn=False)
        return added

    def register_destinations(self, names: Sequence[str]) -> None:
        if not names:
            return
        now = us(self.clock.now())

        def body() -> Body[None]:
            # The last event committed now: the events added after it are this destination's.
            yield Q(
                "INSERT INTO alert_destinations (name, after_seq, created_at) "
                "SELECT n, (SELECT value FROM meta WHERE key = 'alert_seq'), %s FROM unnest(%s::text[]) AS n "
                "ON CONFLICT (name) DO NOTHING",
                (now, list(names)),
            )

        self._execute(body, txn=False)

    def claim_deliveries(
        self, destinations: Sequence[str], owner: str, lease: timedelta, limit: int = 20
    ) -> list[Delivery]:
        if not destinations or limit <= 0:
            return []
        now = self.clock.now()
        until = now + lease
        names = list(destinations)

        def body() -> Body[list[Delivery]]:
            rows = yield Q(_SQL_LAST)
            last = int(rows[0][0])
            yield Q(_SQL_FAN_OUT, (names, last, last, last))
            rows = yield Q(_SQL_CLAIM, (us(now), names, us(now), limit, owner, us(until)))
            return [
                Delivery(seq, AlertEvent.from_json(text), dest, attempts, owner, until)
                for seq, dest, attempts, text in sorted(rows, key=lambda row: (row[0], row[1]))
            ]

        claimed: list[Delivery] = self._execute(body, txn=True)
        return claimed

    def finish_delivery(
        self,
        delivery: Delivery,
        state: DeliveryState,
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> bool:
        next_at, delivered_at = finished_times(state, self.clock.now(), retry_at)
        delivered = None if delivered_at is None else us(delivered_at)
        params = (state, us(next_at), error, delivered, delivery.seq, delivery.destination, delivery.owner,
                  us(delivery.claimed_until))  # fmt: skip

        def body() -> Body[bool]:
            # Only the claim's owner: once its lease ran out another sender may have claimed it,
            # and then that sender's result is the one that counts.
            rows = yield Q(f"WITH done AS ({_SQL_FINISH} RETURNING 1) SELECT count(*) FROM done", params)
            return bool(rows[0][0])

        finished: bool = self._execute(body, txn=False)
        return finished

    def alert_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        destination: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryRecord]:
        sql, params = deliveries_query(
            "%s", state=state, destination=destination, before=before, limit=limit, collate=' COLLATE "C"'
        )

        def body() -> Body[list[tuple[Any, ...]]]:
            return (yield Q(sql, tuple(params)))

        rows: list[tuple[Any, ...]] = self._execute(body, txn=False)
        return [delivery_of(row) for row in rows]

    def retry_delivery(self, event_id: str, destination: str) -> bool:
        params = (us(self.clock.now()), destination, event_id)

        def body() -> Body[bool]:
            rows = yield Q(f"WITH done AS ({_SQL_RETRY} RETURNING 1) SELECT count(*) FROM done", params)
            return bool(rows[0][0])

        retried: bool = self._execute(body, txn=False)
        return retried


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
