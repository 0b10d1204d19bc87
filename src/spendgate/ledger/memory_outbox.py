"""The alert outbox in memory (``AlertOutbox``): one process, for tests and the SDK."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from spendgate.alerts.events import AlertEvent, Delivery, DeliveryRecord, DeliveryState, finished_times
from spendgate.clock import Clock

__all__ = ["MemoryOutbox"]


@dataclass(slots=True)
class _Row:
    state: DeliveryState
    next_at: datetime
    attempts: int = 0
    owner: str | None = None
    until: datetime | None = None
    error: str | None = None
    delivered_at: datetime | None = None


class MemoryOutbox:
    """Events in order, a delivery row per (event, destination); one lock for all of it."""

    clock: Clock

    def _outbox_init(self) -> None:
        self._ob_lock = threading.Lock()
        self._ob_events: list[AlertEvent] = []  # seq = index + 1
        self._ob_ids: dict[str, int] = {}
        self._ob_dests: dict[str, int] = {}  # name -> after_seq
        self._ob_rows: dict[tuple[int, str], _Row] = {}

    def add_alerts(self, events: Sequence[AlertEvent]) -> list[str]:
        added: list[str] = []
        with self._ob_lock:
            for event in events:
                if event.id in self._ob_ids:
                    continue
                self._ob_events.append(event)
                self._ob_ids[event.id] = len(self._ob_events)
                added.append(event.id)
        return added

    def register_destinations(self, names: Sequence[str]) -> None:
        with self._ob_lock:
            for name in names:
                self._ob_dests.setdefault(name, len(self._ob_events))

    def claim_deliveries(
        self, destinations: Sequence[str], owner: str, lease: timedelta, limit: int = 20
    ) -> list[Delivery]:
        now = self.clock.now()
        out: list[Delivery] = []
        with self._ob_lock:
            last = len(self._ob_events)
            for name in destinations:
                after = self._ob_dests.get(name)
                if after is None:
                    continue
                for seq in range(after + 1, last + 1):
                    self._ob_rows.setdefault(
                        (seq, name), _Row("pending", self._ob_events[seq - 1].created_at)
                    )
                self._ob_dests[name] = last
            wanted = set(destinations)
            for (seq, name), row in sorted(self._ob_rows.items()):
                if len(out) >= limit:
                    break
                if name not in wanted or row.state != "pending" or row.next_at > now:
                    continue
                if row.until is not None and row.until > now:
                    continue
                row.attempts += 1
                row.owner, row.until = owner, now + lease
                out.append(Delivery(seq, self._ob_events[seq - 1], name, row.attempts, owner, row.until))
        return out

    def finish_delivery(
        self,
        delivery: Delivery,
        state: DeliveryState,
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> bool:
        next_at, delivered_at = finished_times(state, self.clock.now(), retry_at)
        with self._ob_lock:
            row = self._ob_rows.get((delivery.seq, delivery.destination))
            if row is None or row.state != "pending":
                return False
            if row.owner != delivery.owner or row.until != delivery.claimed_until:
                return False
            row.state, row.error, row.owner, row.until = state, error, None, None
            row.next_at, row.delivered_at = next_at, delivered_at
            return True

    def alert_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        destination: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryRecord]:
        out: list[DeliveryRecord] = []
        with self._ob_lock:
            for (seq, name), row in sorted(self._ob_rows.items(), key=lambda item: (-item[0][0], item[0][1])):
                if len(out) >= limit:
                    break
                if state is not None and row.state != state:
                    continue
                if destination is not None and name != destination:
                    continue
                if before is not None and seq >= before:
                    continue
                out.append(
                    DeliveryRecord(
                        seq=seq,
                        event=self._ob_events[seq - 1],
                        destination=name,
                        state=row.state,
                        attempts=row.attempts,
                        next_attempt_at=row.next_at if row.state == "pending" else None,
                        last_error=row.error,
                        delivered_at=row.delivered_at,
                        claimed_by=row.owner,
                    )
                )
        return out

    def retry_delivery(self, event_id: str, destination: str) -> bool:
        now = self.clock.now()
        with self._ob_lock:
            seq = self._ob_ids.get(event_id)
            row = None if seq is None else self._ob_rows.get((seq, destination))
            if row is None or row.state != "failed":
                return False
            row.state, row.attempts, row.next_at, row.owner, row.until = "pending", 0, now, None, None
            return True
