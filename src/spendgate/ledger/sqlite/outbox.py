"""The alert outbox over SQLite (``AlertOutbox``; tables in schema.sql, migration 4).

Every call is one ``BEGIN IMMEDIATE`` transaction, so two processes never claim the same
delivery: the second sees the first one's claim. A threshold crossing's event is written in
the settle's own transaction (``reservations._charge`` calls ``add_events_in``), so no crash
can leave a crossing announced in the ledger and missing from the outbox.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta

from spendgate.alerts.events import AlertEvent, Delivery, DeliveryRecord, DeliveryState, finished_times
from spendgate.ledger.rows import deliveries_query, delivery_of
from spendgate.ledger.sqlite.codec import us
from spendgate.ledger.sqlite.core import LedgerCore

__all__ = ["AlertOutboxMixin", "add_events_in"]

_SQL_ADD = (
    "INSERT INTO alert_events (id, kind, budget_id, body, created_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING"
)


def add_events_in(conn: sqlite3.Connection, events: Sequence[AlertEvent]) -> list[str]:
    """Add the events not yet in the outbox, inside the caller's transaction."""
    added: list[str] = []
    for event in events:
        cur = conn.execute(
            _SQL_ADD, (event.id, event.kind, event.budget_id, event.to_json(), us(event.created_at))
        )
        if cur.rowcount:
            added.append(event.id)
    return added


def _marks(count: int) -> str:
    return ",".join("?" * count)


class AlertOutboxMixin(LedgerCore):
    """``AlertOutbox`` over SQLite."""

    def add_alerts(self, events: Sequence[AlertEvent]) -> list[str]:
        if not events:
            return []
        return self._write(lambda conn: add_events_in(conn, events))

    def register_destinations(self, names: Sequence[str]) -> None:
        now = us(self.clock.now())

        def body(conn: sqlite3.Connection) -> None:
            last = conn.execute("SELECT coalesce(max(seq), 0) FROM alert_events").fetchone()[0]
            conn.executemany(
                "INSERT INTO alert_destinations (name, after_seq, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                [(name, last, now) for name in names],
            )

        if names:
            self._write(body)

    def claim_deliveries(
        self, destinations: Sequence[str], owner: str, lease: timedelta, limit: int = 20
    ) -> list[Delivery]:
        if not destinations or limit <= 0:
            return []
        now = self.clock.now()
        until = now + lease
        names = tuple(destinations)

        def due(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM alert_destinations AS d JOIN alert_events AS e "
                f"ON e.seq > d.after_seq WHERE d.name IN ({_marks(len(names))})) "
                "OR EXISTS (SELECT 1 FROM alert_deliveries WHERE state = 'pending' AND next_at <= ? "
                f"AND destination IN ({_marks(len(names))}) AND (claimed_until IS NULL OR claimed_until <= ?))",
                (*names, us(now), *names, us(now)),
            ).fetchone()
            return bool(row[0])

        # Every process asks every poll_interval: a read, so a quiet outbox never takes the
        # write lock from the requests.
        if not self._read(due):
            return []

        def body(conn: sqlite3.Connection) -> list[Delivery]:
            # Fan out: a delivery row for each event a destination has not seen yet.
            conn.execute(
                "INSERT INTO alert_deliveries (event_seq, destination, state, next_at) "
                "SELECT e.seq, d.name, 'pending', e.created_at FROM alert_destinations AS d "
                f"JOIN alert_events AS e ON e.seq > d.after_seq WHERE d.name IN ({_marks(len(names))}) "
                "ON CONFLICT DO NOTHING",
                names,
            )
            conn.execute(
                "UPDATE alert_destinations SET after_seq = (SELECT coalesce(max(seq), 0) FROM alert_events) "
                f"WHERE name IN ({_marks(len(names))})",
                names,
            )
            rows = conn.execute(
                "SELECT d.event_seq, d.destination, d.attempts, e.body FROM alert_deliveries AS d "
                "JOIN alert_events AS e ON e.seq = d.event_seq "
                f"WHERE d.state = 'pending' AND d.next_at <= ? AND d.destination IN ({_marks(len(names))}) "
                "AND (d.claimed_until IS NULL OR d.claimed_until <= ?) "
                "ORDER BY d.event_seq, d.destination LIMIT ?",
                (us(now), *names, us(now), limit),
            ).fetchall()
            conn.executemany(
                "UPDATE alert_deliveries SET claimed_by = ?, claimed_until = ?, attempts = attempts + 1 "
                "WHERE event_seq = ? AND destination = ?",
                [(owner, us(until), seq, dest) for seq, dest, _, _ in rows],
            )
            return [
                Delivery(seq, AlertEvent.from_json(text), dest, attempts + 1, owner, until)
                for seq, dest, attempts, text in rows
            ]

        return self._write(body)

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

        def body(conn: sqlite3.Connection) -> bool:
            # Only the claim's owner: once its lease ran out another sender may have claimed it,
            # and then that sender's result is the one that counts.
            cur = conn.execute(
                "UPDATE alert_deliveries SET state = ?, next_at = ?, last_error = ?, delivered_at = ?, "
                "claimed_by = NULL, claimed_until = NULL "
                "WHERE event_seq = ? AND destination = ? AND claimed_by = ? AND claimed_until = ? "
                "AND state = 'pending'",
                (state, us(next_at), error, delivered, delivery.seq, delivery.destination, delivery.owner,
                 us(delivery.claimed_until)),
            )  # fmt: skip
            return bool(cur.rowcount)

        return self._write(body)

    def alert_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        destination: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryRecord]:
        sql, params = deliveries_query("?", state=state, destination=destination, before=before, limit=limit)
        return [delivery_of(row) for row in self._read(lambda conn: conn.execute(sql, params).fetchall())]

    def retry_delivery(self, event_id: str, destination: str) -> bool:
        now = us(self.clock.now())

        def body(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE alert_deliveries SET state = 'pending', attempts = 0, next_at = ?, "
                "claimed_by = NULL, claimed_until = NULL "
                "WHERE destination = ? AND state = 'failed' "
                "AND event_seq = (SELECT seq FROM alert_events WHERE id = ?)",
                (now, destination, event_id),
            )
            return bool(cur.rowcount)

        return self._write(body)
