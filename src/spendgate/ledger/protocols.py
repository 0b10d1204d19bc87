"""The ledger contract, split by what callers need.

``Reservations`` is the hot path (the guard and the gateway's proxy),
``BudgetAdmin`` the budgets and their numbers (admin API, CLI, the SDK's wait
mode), ``RequestLog`` the finished requests (reports, purge). ``Ledger`` in
``base.py`` is all three: what a backend implements. ``KeyStorage`` is the
storage half of the gateway's virtual keys; a backend that has one registers
it next to its ledger (``registry.py``), so the gateway never names a backend.

A caller that needs only one part should ask for that protocol: a fake for a
test then implements a handful of methods instead of the whole ledger.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # base.py composes these protocols, so its types are only named here
    from spendgate.alerts.events import AlertEvent, Delivery, DeliveryRecord, DeliveryState
    from spendgate.budgets import Attributes, Budget
    from spendgate.gateway.settings import VirtualKey
    from spendgate.ledger.base import (
        ArchivedRequest,
        BudgetChanged,
        BudgetDeleted,
        BudgetUsage,
        Refusal,
        RefusalCount,
        ReleaseOutcome,
        RequestRecord,
        Reservation,
        SettleOutcome,
        ThresholdCrossed,
        UsagePoint,
    )
    from spendgate.limits import Demand, Limit, LimitRefusal, LimitUsage
    from spendgate.money import Money

__all__ = [
    "AlertOutbox",
    "BudgetAdmin",
    "KeyStorage",
    "LimitAdmin",
    "RefusalCounts",
    "RequestArchive",
    "RequestLog",
    "Reservations",
]


@runtime_checkable
class Reservations(Protocol):
    """Reserve the worst case, settle the actual: the only calls on every request's path."""

    @abstractmethod
    def reserve(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        demand: Demand | None = None,
    ) -> Reservation | Refusal | LimitRefusal:
        """Hold ``estimate`` in every budget instance the request matches, and ``demand`` in
        every rate limit instance it matches: all of them or none.

        Admits only if ``spent + reserved + estimate <= limit`` for each budget (a paced
        budget: its allowance by now) in its current window, and each limit's window (or
        count in flight) has room for the demand. ``demand`` None is one request of
        ``estimate`` and no tokens. Reserving an id again returns the same open reservation
        when attributes and estimate are the same (a retried call); any other reuse raises
        RequestIdReusedError.
        """

    @abstractmethod
    def settle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        """Replace the reservation by ``actual`` in the window it was made in; idempotent.
        Limits get back what the request did not use of its demand (``used`` None: its
        tokens stay counted at the worst case, its cost becomes ``actual``)."""

    @abstractmethod
    def release(self, request_id: str) -> ReleaseOutcome:
        """End the reservation with nothing charged (the call failed, nothing billed); idempotent."""

    @abstractmethod
    async def areserve(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        demand: Demand | None = None,
    ) -> Reservation | Refusal | LimitRefusal:
        """``reserve`` for asyncio callers; the event loop never waits for a lock."""

    @abstractmethod
    async def asettle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        """``settle`` for asyncio callers. The write is queued before the first suspension:
        a caller cancelled while awaiting it does not skip it (the guard counts on this)."""

    @abstractmethod
    async def arelease(self, request_id: str) -> ReleaseOutcome:
        """``release`` for asyncio callers; queued before the first suspension, like ``asettle``."""

    @abstractmethod
    def expire_leases(self) -> int:
        """Charge every reservation whose lease has run out at its reserved amount; how many."""

    @abstractmethod
    def check_writable(self) -> None:
        """Prove the write path now: commit a tiny write the way reservations are written.

        LedgerUnavailableError (whatever ``fail_open`` says) when it cannot: a read-only or
        full disk, a file deleted or replaced under the ledger, a lock held too long. Each
        call writes: a caller polling it (a readiness check) spaces the calls itself.
        """

    @abstractmethod
    async def acheck_writable(self) -> None:
        """``check_writable`` for asyncio callers, through the same writer as ``areserve``."""


@runtime_checkable
class BudgetAdmin(Protocol):
    """Budgets at run time, their spend, and the events about them.

    ``subscribe`` and ``on_change`` live here: both report on budgets (a
    threshold of one was crossed, one was changed), and whoever watches budgets
    is not on the request path.
    """

    @abstractmethod
    def put_budget(self, budget: Budget) -> None:
        """Add a budget or replace the one with its id (spend so far in the window is kept)."""

    @abstractmethod
    def delete_budget(self, budget_id: str) -> BudgetDeleted:
        """Stop enforcing a budget now (SQLite: for every process); KeyError if there is none.

        Reservations open against it stay held and end as usual: their cost is charged to the
        budget's spend, which is kept (re-adding the id in the same window continues from it:
        deleting is not resetting), and logged. What was in flight is in the result.
        """

    @abstractmethod
    def remove_budget(self, budget_id: str) -> bool:
        """``delete_budget``, answering False if there was none."""

    @abstractmethod
    def get_budget(self, budget_id: str) -> Budget:
        """The budget with its current limit; KeyError if unknown."""

    @abstractmethod
    def budgets(self) -> list[Budget]:
        """Every budget, with current limits."""

    @abstractmethod
    def set_limit(self, budget_id: str, limit: Money) -> None:
        """Raise or lower a limit now (SQLite: for every process)."""

    @abstractmethod
    def reset(self, budget_id: str, instance: Mapping[str, str] | str | None = None) -> None:
        """Zero the spend of the current window (all instances, or one). Open reservations stay held."""

    @abstractmethod
    def usage(
        self, budget_id: str, instance: Mapping[str, str] | str | None = None, *, at: datetime | None = None
    ) -> BudgetUsage:
        """A budget instance's spend in the window containing ``at`` (default: now)."""

    @abstractmethod
    def list_budgets(self) -> list[BudgetUsage]:
        """Every budget without wildcards, and every wildcard instance with spend in its current window."""

    @abstractmethod
    def refresh(self) -> None:
        """Pick up budget changes made elsewhere (other processes)."""

    @abstractmethod
    def subscribe(self, callback: Callable[[ThresholdCrossed], None]) -> Callable[[], None]:
        """Hear threshold crossings; returns a function that unsubscribes."""

    @abstractmethod
    def on_change(self, callback: Callable[[BudgetChanged], None]) -> Callable[[], None]:
        """Hear budget changes (a raised limit, a reset...); returns a function that unsubscribes."""


@runtime_checkable
class LimitAdmin(Protocol):
    """Rate limits at run time and what their windows hold (``spendgate.limits``)."""

    @abstractmethod
    def put_limit(self, limit: Limit) -> None:
        """Add a limit or replace the one with its id (its window's counts are kept when it
        still counts the same kind over the same ``per``)."""

    @abstractmethod
    def remove_limit(self, limit_id: str) -> bool:
        """Stop enforcing a limit; False if there was none."""

    @abstractmethod
    def get_limit(self, limit_id: str) -> Limit:
        """The limit; KeyError if unknown."""

    @abstractmethod
    def limits(self) -> list[Limit]:
        """Every limit."""

    @abstractmethod
    def limit_usage(self, limit_id: str, instance: Mapping[str, str] | str | None = None) -> LimitUsage:
        """What one limit instance holds now: its window's sum, or its requests in flight."""

    @abstractmethod
    def list_limits(self) -> list[LimitUsage]:
        """Every limit without wildcards, and every wildcard instance that counted something."""


@runtime_checkable
class RequestLog(Protocol):
    """Settled and expired requests, kept for the ledger's retention."""

    @abstractmethod
    def query_requests(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        limit: int = 1000,
        after: str | None = None,
        **dimensions: str,
    ) -> list[RequestRecord]:
        """Logged requests started in ``[start, end)``, newest first (ties by request id), filtered
        by exact dimension values. ``after``: the request id a previous page ended with; the
        page continues from there (UnknownReservationError when that id is not in the log)."""

    @abstractmethod
    def usage_by(
        self, dimension: str, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, Money]:
        """Logged cost per value of ``dimension`` (a request counts once per tag for ``tag``)."""

    @abstractmethod
    def usage_timeseries(
        self,
        start: datetime,
        end: datetime,
        bucket: timedelta,
        *,
        by: str | None = None,
        **dimensions: str,
    ) -> list[UsagePoint]:
        """Logged cost, requests and tokens of requests started in ``[start, end)``, summed per
        ``bucket`` (fixed widths counted from the Unix epoch, UTC: an hour, a day) and, with
        ``by``, per value of that dimension (``tag``: once per tag); filtered by exact dimension
        values. Ordered by bucket start, then group (no group first); buckets with no request are
        left out. Grouped, a request without that value (no tag, for ``tag``) is in group None.
        Tokens are the logged usage's: ``input_tokens`` includes cache reads and writes,
        ``output_tokens`` reasoning (``spendgate.ledger.timeseries``). ValueError for a bucket
        that is not a positive whole number of seconds, ``start >= end``, more than
        ``MAX_BUCKETS`` (100,000) buckets, or an unknown dimension."""

    @abstractmethod
    def purge(self) -> int:
        """Drop what is older than ``retention`` now (it also happens on a cheap schedule)."""


@runtime_checkable
class RequestArchive(Protocol):
    """A durable request log that takes requests ended elsewhere (a Redis ledger's hot store).

    SQLite and PostgreSQL ledgers implement it beside ``RequestLog``: what they archive is
    answered by their ``query_requests`` and ``usage_by`` like their own ended requests.
    """

    @abstractmethod
    def archive(self, entries: Sequence[ArchivedRequest]) -> int:
        """Write ended requests in one transaction; a request id already in the log is left as
        it is (so a copy retried after a crash writes nothing twice). How many were new."""


@runtime_checkable
class RefusalCounts(Protocol):
    """How many requests the budgets and rate limits refused, per minute, kept in the ledger so
    that every process sharing it sees every process's refusals (the dashboard's overview).

    Counts arrive in batches (``spendgate.refusal_tally``: a process adds up its refusals and
    writes them every few seconds), so adding is an increment, never a replacement. A minute is
    a ``datetime`` at a whole UTC minute; ``kind`` is ``budget``, ``rate_limit`` or ``cost_cap``;
    ``subject`` the budget's or limit's id (``""`` for a request's own cost cap). Kept as long as
    the request log (the retention purge)."""

    @abstractmethod
    def add_refusals(self, counts: Mapping[tuple[datetime, str, str], int]) -> None:
        """Add ``counts`` ((minute, kind, subject) -> how many) to what is kept, in one write."""

    @abstractmethod
    def refusal_counts(self, start: datetime, end: datetime) -> list[RefusalCount]:
        """The minutes in ``[start, end)`` with refusals, ordered by minute, kind, subject."""


@runtime_checkable
class AlertOutbox(Protocol):
    """Alerts waiting to be delivered, kept in the ledger so that every process sharing it sends
    each alert once per destination (docs/alerts.md).

    An event is added once by its id (``AlertEvent.id``: the same crossing noticed by several
    processes is one event). Each destination a sender registers receives the events added
    after it was first registered. A sender claims due deliveries for a lease; only the claim's
    owner can finish one, so a delivery is re-sent only after its sender's lease ran out (it
    died, or its send outlived the lease), and then with the same event id."""

    @abstractmethod
    def add_alerts(self, events: Sequence[AlertEvent]) -> list[str]:
        """Add the events not yet in the outbox; the ids of those added by this call."""

    @abstractmethod
    def register_destinations(self, names: Sequence[str]) -> None:
        """Make each new name a destination of the events added from now on."""

    @abstractmethod
    def claim_deliveries(
        self, destinations: Sequence[str], owner: str, lease: timedelta, limit: int = 20
    ) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries to ``destinations`` for ``owner`` until now + lease,
        oldest event first."""

    @abstractmethod
    def finish_delivery(
        self,
        delivery: Delivery,
        state: DeliveryState,
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> bool:
        """End a claimed delivery: ``delivered``, ``skipped`` (the destination does not take this
        kind), ``failed`` (given up), or ``pending`` again at ``retry_at``. False when the claim
        was no longer this owner's (its lease ran out and another sender took it)."""

    @abstractmethod
    def alert_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        destination: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryRecord]:
        """Deliveries, newest event first; ``before``: an event ``seq`` a previous page ended with."""

    @abstractmethod
    def retry_delivery(self, event_id: str, destination: str) -> bool:
        """Make a failed delivery due again now (its attempts start over); False if none failed."""


@runtime_checkable
class KeyStorage(Protocol):
    """Rows of virtual keys: the key and the SHA-256 hex of its secret (never the secret).

    Only storage: validation, hashing and the authentication cache are the
    gateway's ``KeyStore``. Writes report False for an unknown key id.
    """

    def insert(self, key: VirtualKey, secret_hash: str) -> None: ...

    def by_hash(self, secret_hash: str) -> tuple[VirtualKey, str] | None:
        """The key and its stored hash (the caller compares them in constant time)."""
        ...

    def by_id(self, key_id: str) -> VirtualKey | None: ...

    def all(self) -> list[VirtualKey]:
        """Every key, oldest first."""
        ...

    def set_disabled(self, key_id: str, disabled: bool) -> bool: ...

    def set_secret(self, key_id: str, secret_hash: str, hint: str) -> bool: ...

    def remove(self, key_id: str) -> bool: ...

    def close(self) -> None:
        """Release connections."""
        ...
