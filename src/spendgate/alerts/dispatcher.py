"""The alert dispatcher: notices alerts, puts them in the ledger's outbox, delivers them.

One per process (each gateway worker runs one; an SDK user may run one). Any number of them
may share a ledger: the outbox gives each event one id and each delivery one claim, so every
alert reaches every destination once per budget window, whichever process noticed it and
whichever sends it (docs/alerts.md).

``step()`` is the whole protocol, with time from the injected clock: tests call it directly.
``start()`` runs it in a daemon thread, woken early when this process notices something. The
ledger's subscriber callbacks only append to a deque: they may run inside the ledger's lock
or on the event loop, so nothing there may block.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from spendgate.alerts.destinations import Destination, Sent, wants
from spendgate.alerts.events import AlertEvent, Delivery, refusing_event, reset_event, threshold_event_of
from spendgate.budgets import parse_instance_key
from spendgate.ledger.base import BudgetChanged, Refusal, ThresholdCrossed
from spendgate.ledger.protocols import AlertOutbox

if TYPE_CHECKING:
    from spendgate.budgets import Budget
    from spendgate.ledger.base import Ledger

__all__ = ["AlertDispatcher", "Forecaster", "RetryPolicy"]

log = logging.getLogger("spendgate.alerts")

#: ``(ledger, now) -> events``: the forecast alerts due now (spendgate.forecasting).
Forecaster = Callable[["Ledger", datetime], Sequence[AlertEvent]]

_MEMO: Final = 10_000  # ids this process already added (refusals repeat on every request)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: ``backoff * 2^(attempt-1)`` seconds, at most ``max_backoff``, plus up
    to 10% spread (from the event id: deterministic, and destinations are not hit in step)."""

    max_attempts: int = 12  # with the defaults: about 3.5 hours of trying
    backoff: float = 5.0
    max_backoff: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff <= 0 or self.max_backoff < self.backoff:
            raise ValueError("retry: max_attempts >= 1, backoff > 0, max_backoff >= backoff")

    def delay(self, attempt: int, event_id: str) -> timedelta:
        base = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        spread = int.from_bytes(hashlib.sha256(f"{event_id}:{attempt}".encode()).digest()[:2]) / 65535
        return timedelta(seconds=base * (1 + spread / 10))


class AlertDispatcher:
    """Notice, record and deliver alerts for one ledger and a set of destinations."""

    def __init__(
        self,
        ledger: Ledger,
        destinations: Sequence[Destination],
        *,
        retry: RetryPolicy | None = None,
        poll_interval: float = 2.0,
        forecaster: Forecaster | None = None,
        forecast_interval: float = 900.0,
        batch: int = 20,
        owner: str | None = None,
        lease: float | None = None,
    ) -> None:
        if not isinstance(ledger, AlertOutbox):
            raise TypeError(f"{type(ledger).__name__} keeps no alert outbox")
        names = [d.name for d in destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"alert destination names must be unique, got {names}")
        self.ledger = ledger
        self.outbox: AlertOutbox = ledger
        self.clock = ledger.clock
        self.destinations = {d.name: d for d in destinations}
        self.retry = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self.forecaster = forecaster
        self.forecast_interval = timedelta(seconds=forecast_interval)
        self.batch = batch
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        timeouts = [getattr(d, "timeout", 5.0) for d in destinations]
        # Longer than any one send, so a live sender is never overtaken by a second one.
        least = max([0.0, *(t + 1 for t in timeouts)])
        if lease is not None and lease < least:
            raise ValueError(f"alert lease {lease}s is shorter than a send (timeout + 1 s: {least}s)")
        self.lease = timedelta(
            seconds=lease if lease is not None else max([30.0, *(2 * t + 10 for t in timeouts)])
        )
        self._heard: deque[ThresholdCrossed | Refusal | BudgetChanged] = deque()
        self._added: dict[str, None] = {}
        self._next_forecast: datetime | None = None
        #: Set once this dispatcher's destinations are registered: alerts from then on reach them.
        self.registered = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: list[Callable[[], None]] = []

    # -- noticing ---------------------------------------------------------------------
    def listen(self) -> None:
        """Hear this process's crossings, refusals and resets (idempotent)."""
        if self._unsubscribe:
            return
        self._unsubscribe = [
            self.ledger.subscribe(self._hear),
            self.ledger.on_refusal(self._hear),
            self.ledger.on_change(self._hear),
        ]

    def _hear(self, event: ThresholdCrossed | Refusal | BudgetChanged) -> None:
        if isinstance(event, BudgetChanged) and event.kind != "reset":
            return
        self._heard.append(event)  # deque.append is atomic: safe under any lock, on any thread
        self._wake.set()

    def _event_of(
        self, heard: ThresholdCrossed | Refusal | BudgetChanged, now: datetime
    ) -> AlertEvent | None:
        if isinstance(heard, ThresholdCrossed):
            budget = self._budget(heard.budget_id)
            return threshold_event_of(heard, now, soft=budget is not None and budget.soft)
        if isinstance(heard, Refusal):
            return refusing_event(
                budget_id=heard.budget_id,
                label=heard.label,
                instance=heard.instance,
                spent=heard.spent,
                reserved=heard.reserved,
                limit=heard.limit,
                needed=heard.needed,
                window_start=heard.window_start,
                window_end=heard.resets_at,
                paced=heard.paced,
                now=now,
            )
        budget = self._budget(heard.budget_id)
        change = heard.seq if heard.seq is not None else int(now.timestamp() * 1_000_000)
        instance = parse_instance_key(heard.instance) if heard.instance else None
        return reset_event(
            budget_id=heard.budget_id,
            label=budget.label("") if budget is not None and instance is None else heard.budget_id,
            instance=instance,
            change=change,
            now=now,
        )

    def _budget(self, budget_id: str) -> Budget | None:
        try:
            return self.ledger.get_budget(budget_id)
        except KeyError:
            return None

    # -- the protocol -----------------------------------------------------------------------
    def step(self) -> int:
        """Record what was heard, run a due forecast, deliver what is due: the deliveries finished."""
        now = self.clock.now()
        if not self.registered.is_set():
            self.outbox.register_destinations(list(self.destinations))
            self.registered.set()
        self.ledger.refresh()  # hear resets made by other processes
        self._record(now)
        if self.forecaster is not None and (self._next_forecast is None or now >= self._next_forecast):
            self._next_forecast = now + self.forecast_interval
            self._add(list(self.forecaster(self.ledger, now)))
        done = 0
        while True:
            claimed = self.outbox.claim_deliveries(
                list(self.destinations), self.owner, self.lease, self.batch
            )
            for delivery in claimed:
                done += self._deliver(delivery)
            if len(claimed) < self.batch:
                return done

    def _record(self, now: datetime) -> None:
        events: dict[str, AlertEvent] = {}
        refusals: set[tuple[object, ...]] = set()
        while self._heard:
            heard = self._heard.popleft()
            if isinstance(heard, Refusal):  # a refusing budget refuses every request: one is news
                seen = (heard.budget_id, tuple(heard.instance.items()), heard.window_start, heard.paced)
                if seen in refusals:
                    continue
                refusals.add(seen)
            event = self._event_of(heard, now)
            if event is not None and event.id not in self._added:
                events[event.id] = event
        self._add(list(events.values()))

    def _add(self, events: list[AlertEvent]) -> None:
        if not events:
            return
        try:
            self.outbox.add_alerts(events)
        except Exception:
            # Not lost for good: thresholds are also in the outbox from the settle itself (SQL
            # ledgers), and a refusal or forecast is noticed again on the next one.
            log.warning("spendgate: could not record %d alerts in the outbox; will notice again", len(events))
            raise
        for event in events:
            self._added[event.id] = None
        while len(self._added) > _MEMO:
            del self._added[next(iter(self._added))]

    def _deliver(self, delivery: Delivery) -> int:
        destination = self.destinations.get(delivery.destination)
        event = delivery.event
        if destination is None:
            return 0
        if not wants(destination, event):
            self.outbox.finish_delivery(delivery, "skipped")
            return 1
        try:
            sent = destination.send(event, self.clock.now())
        except Exception as exc:  # a destination's bug must not stop the others
            log.exception("spendgate: alert destination %s failed", destination.name)
            sent = Sent(False, f"{type(exc).__name__}: {exc}"[:500])
        now = self.clock.now()
        if sent.ok:
            self.outbox.finish_delivery(delivery, "delivered")
        elif sent.retry and delivery.attempt < self.retry.max_attempts:
            retry_at = now + self.retry.delay(delivery.attempt, event.id)
            self.outbox.finish_delivery(delivery, "pending", error=sent.error, retry_at=retry_at)
            log.warning(
                "spendgate: alert %s to %s failed (attempt %d): %s; retrying at %s",
                event.id, destination.name, delivery.attempt, sent.error, retry_at.isoformat(),
            )  # fmt: skip
        else:
            self.outbox.finish_delivery(delivery, "failed", error=sent.error)
            log.error(
                "spendgate: alert %s to %s failed for good after %d attempts: %s",
                event.id, destination.name, delivery.attempt, sent.error,
            )  # fmt: skip
        return 1

    # -- the thread shell -----------------------------------------------------------------
    def start(self) -> None:
        """Listen, and run ``step`` every ``poll_interval`` seconds (sooner when woken)."""
        self.listen()
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="spendgate-alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.step()
            except Exception as exc:  # the ledger down: alerts wait in the outbox, try again
                log.warning("spendgate: alert dispatch failed: %s: %s", type(exc).__name__, exc)
            # At most a few steps a second however busy: woken early, yet never spinning.
            if self._stop.wait(0.2):
                return
            self._wake.wait(self.poll_interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (after its current step) and stop listening."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
