"""The ledger contract: reserve the worst case, settle the actual, never overshoot.

Every backend implements ``Ledger`` (the composition of the protocols in
``protocols.py``); callers choose one by URL through ``open_ledger``
(``memory://``, ``sqlite:////abs/path.db``), and new backends plug in with
``register_backend`` (both in ``registry.py``, re-exported here). One
conformance suite (tests/ledger) is the contract: see docs/ledger.md.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal, NamedTuple

from spendgate.budgets import DIMENSIONS, Attributes, Budget, OnExceed, instance_key, parse_instance_key
from spendgate.clock import Clock, SystemClock
from spendgate.errors import BudgetExceededError, ConfigError, SpendgateError
from spendgate.ledger.protocols import (
    AlertOutbox,
    BudgetAdmin,
    LimitAdmin,
    RefusalCounts,
    RequestLog,
    Reservations,
)
from spendgate.ledger.registry import BackendFactory, known_schemes, open_ledger, register_backend
from spendgate.limits import Demand, LimitRefusal
from spendgate.money import Money

__all__ = [
    "REFUSAL_KINDS",
    "ArchivedRequest",
    "BackendFactory",
    "BudgetAdmin",
    "BudgetChanged",
    "BudgetDeleted",
    "BudgetLine",
    "BudgetUsage",
    "Ledger",
    "LedgerMissingError",
    "LedgerReplacedError",
    "LedgerUnavailableError",
    "Refusal",
    "RefusalCount",
    "RefusalCounts",
    "ReleaseOutcome",
    "RequestIdReusedError",
    "RequestLog",
    "RequestRecord",
    "Reservation",
    "Reservations",
    "SettleOutcome",
    "ThresholdCrossed",
    "UnknownReservationError",
    "UsagePoint",
    "check_refusal_counts",
    "known_schemes",
    "open_ledger",
    "refusal_minute",
    "register_backend",
]

log = logging.getLogger("spendgate.ledger")

DEFAULT_RETENTION = timedelta(days=30)


# -- errors -------------------------------------------------------------------------


class LedgerUnavailableError(SpendgateError):
    """The ledger cannot be read or written (unreachable, locked too long, corrupt).

    spendgate fails closed: no request is admitted it cannot account for,
    unless the ledger was opened with ``fail_open=True``.
    """


class LedgerMissingError(LedgerUnavailableError):
    """Opened with ``create=False`` (the admin CLI) where no ledger exists yet: nothing is created."""


class LedgerReplacedError(LedgerUnavailableError):
    """The ledger's file was deleted or replaced while in use: writing on would start over
    silently (a new, empty file: every key unknown, every budget at zero), so nothing is written."""


class RequestIdReusedError(SpendgateError, ValueError):
    """A request id that already has (or had) a different reservation."""


class UnknownReservationError(SpendgateError, KeyError):
    """settle/release of a request id the ledger never reserved (or has purged)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown reservation"


# -- results --------------------------------------------------------------------------


class BudgetLine(NamedTuple):
    """One budget instance a reservation is charged to, in the window it was made in."""

    budget_id: str
    instance: str  # instance key: "" or "user=alice"
    window_start: datetime
    window_end: datetime | None


@dataclass(frozen=True, slots=True)
class Reservation:
    """Admitted: ``estimate`` is held in every line until settle, release or ``expires_at``."""

    request_id: str
    estimate: Money
    reserved_at: datetime
    expires_at: datetime
    lines: tuple[BudgetLine, ...]
    #: True when the ledger was unavailable and ``fail_open`` admitted the request unrecorded.
    unrecorded: bool = False
    admitted: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Refusal:
    """Not admitted: names the first budget instance that could not fit ``needed``."""

    request_id: str
    budget_id: str
    label: str  # "team=research, monthly"
    selector: dict[str, str]  # the budget's selector, wildcards filled in with this instance
    instance: dict[str, str]  # the wildcard values ({} for a budget without wildcards)
    spent: Money
    reserved: Money
    limit: Money
    needed: Money
    window_start: datetime
    resets_at: datetime | None
    retry_after: float | None  # seconds until the window resets (paced: the next step); None: never
    #: Refused by the budget's pace (``limit`` is then what is allowed by now, not the whole limit).
    paced: bool = False
    #: The refusing budget's own policy, as the ledger knew it: the guard needs no second read.
    on_exceed: OnExceed = "raise"
    admitted: ClassVar[bool] = False

    @property
    def available(self) -> Money:
        free = self.limit.nanos - self.spent.nanos - self.reserved.nanos
        return Money(max(free, 0))

    def to_error(self) -> BudgetExceededError:
        return BudgetExceededError(
            budget_id=self.budget_id,
            selector=self.selector,
            limit=self.limit,
            spent=self.spent,
            reserved=self.reserved,
            requested=self.needed,
            resets_at=self.resets_at,
            retry_after=self.retry_after,
            budget_name=self.label,
            paced=self.paced,
        )


SettleStatus = Literal["settled", "already_settled", "expired", "released", "unrecorded"]
ReleaseStatus = Literal["released", "already_released", "settled", "expired", "unrecorded"]


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """What a settle did. ``charged`` is what the reservation counts for in its budgets now.

    ``status``: ``settled`` (this call), ``already_settled`` (a retry; nothing
    changed), ``expired`` (the lease ran out first: the estimate stays charged),
    ``released`` (released earlier: nothing charged), ``unrecorded`` (fail-open
    while the ledger was unavailable). ``overshoot`` is ``actual - estimate``
    when the provider billed beyond the estimate: charged, and reported here.
    ``remaining`` is, for a ``settled`` outcome, the least that any of the
    request's budgets still affords right after this settle (None otherwise,
    or when the request matched no budget): read in the same transaction, so
    the gateway's ``x-spendgate-budget-remaining`` costs no second read.
    """

    request_id: str
    status: SettleStatus
    charged: Money
    estimate: Money
    actual: Money
    remaining: Money | None = None

    @property
    def overshoot(self) -> Money:
        return Money(max(self.actual.nanos - self.estimate.nanos, 0))


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    """``released`` (this call), ``already_released``, or how it ended before: ``settled``/``expired``."""

    request_id: str
    status: ReleaseStatus


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """A budget instance in one window."""

    budget_id: str
    label: str
    selector: dict[str, str]
    instance: dict[str, str]
    spent: Money
    reserved: Money
    limit: Money
    window_start: datetime
    window_end: datetime | None

    @property
    def instance_key(self) -> str:
        return instance_key(self.instance)

    @property
    def available(self) -> Money:
        return Money(max(self.limit.nanos - self.spent.nanos - self.reserved.nanos, 0))

    @property
    def percent(self) -> int:
        """Spent plus reserved as a whole percent of the limit, rounded down (like the error message)."""
        used = self.spent.nanos + self.reserved.nanos
        if self.limit.nanos <= 0:
            return 100 if used > 0 else 0
        return used * 100 // self.limit.nanos


@dataclass(frozen=True, slots=True)
class ThresholdCrossed:
    """A budget instance's settled spend reached ``threshold`` percent of its limit (once per window)."""

    budget_id: str
    label: str
    instance: dict[str, str]
    threshold: int
    spent: Money
    limit: Money
    window_start: datetime
    window_end: datetime | None
    request_id: str  # the settle (or expired lease) that crossed it


ChangeKind = Literal["put", "remove", "limit", "reset"]


@dataclass(frozen=True, slots=True)
class BudgetChanged:
    """A budget was added/replaced, removed, had its limit set, or was reset.

    The SDK's wait mode wakes waiters on these. SQLite reports changes made by
    other processes when this process next touches the ledger (or calls ``refresh()``).
    """

    budget_id: str
    kind: ChangeKind
    limit: Money | None
    previous_limit: Money | None = None
    instance: str | None = None
    #: The ledger's number for this change, the same in every process that hears it (None in
    #: memory, which has one process): what a reset alert is named by.
    seq: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class BudgetDeleted:
    """What ``delete_budget`` found: the reservations open against the budget when it went.

    They stay held and end as usual (settled, released or expired), charged to the deleted
    budget's kept spend and to the request log: deleting a budget never loses a cost.
    """

    budget_id: str
    in_flight: int  # open reservations with a line in this budget
    reserved: Money  # what they hold in it (all instances and windows)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request, as the request log keeps it.

    ``breakdown`` amounts may be Money, Decimal or decimal strings; the log
    stores and returns decimal strings in USD (exact, never float).
    """

    request_id: str
    attributes: Attributes
    cost: Money
    started_at: datetime
    finished_at: datetime
    model: str | None = None
    usage: Mapping[str, int] = field(default_factory=dict)
    breakdown: Mapping[str, Money | Decimal | str] = field(default_factory=dict)
    status: str = "ok"
    #: What the request reserved (its worst case), as the log keeps it; None where it is not kept.
    estimate: Money | None = None

    def breakdown_strings(self) -> dict[str, str]:
        """Exact decimal strings in USD (parts of a cost may be finer than a nano-USD)."""
        out: dict[str, str] = {}
        for name, given in self.breakdown.items():
            if isinstance(given, Money):
                out[name] = f"{given.to_decimal().normalize():f}"
                continue
            amount: object = given
            if isinstance(given, str):
                try:
                    amount = Decimal(given)
                except ArithmeticError:
                    raise TypeError(f"breakdown {name}: {given!r} is not a decimal amount") from None
            if not isinstance(amount, Decimal) or not amount.is_finite():
                raise TypeError(
                    f"breakdown {name}: expected Money, Decimal or a decimal string, got {given!r}"
                )
            out[name] = f"{amount.normalize():f}"
        return out


#: What refused a request, as ``RefusalCounts`` counts it.
REFUSAL_KINDS: tuple[str, ...] = ("budget", "rate_limit", "cost_cap")


@dataclass(frozen=True, slots=True)
class RefusalCount:
    """How many requests ``kind`` ``subject`` (a budget's or limit's id) refused in the minute
    starting at ``minute`` (``RefusalCounts``), across every process sharing the ledger."""

    minute: datetime
    kind: str
    subject: str
    count: int


def refusal_minute(at: datetime) -> datetime:
    """The whole UTC minute holding ``at`` (what ``RefusalCounts`` keys by)."""
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def check_refusal_counts(
    counts: Mapping[tuple[datetime, str, str], int],
) -> dict[tuple[datetime, str, str], int]:
    """``counts`` checked for ``RefusalCounts.add_refusals``: whole UTC minutes, a known kind, a
    string subject, a positive whole count (zeros dropped). A ValueError or TypeError names the
    first bad entry; nothing is written then."""
    out: dict[tuple[datetime, str, str], int] = {}
    for key, count in counts.items():
        minute, kind, subject = key
        if not isinstance(minute, datetime) or minute.tzinfo is None or minute != refusal_minute(minute):
            raise ValueError(f"refusal counts: {minute!r} is not a whole minute with a time zone")
        if kind not in REFUSAL_KINDS:
            raise ValueError(f"refusal counts: unknown kind {kind!r}; known: {', '.join(REFUSAL_KINDS)}")
        if not isinstance(subject, str):
            raise TypeError(f"refusal counts: the subject must be a string, got {subject!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"refusal counts: {count!r} is not a whole number >= 0")
        if count:
            utc = refusal_minute(minute)
            out[(utc, kind, subject)] = out.get((utc, kind, subject), 0) + count
    return out


@dataclass(frozen=True, slots=True)
class UsagePoint:
    """One bucket of logged usage (``RequestLog.usage_timeseries``): what requests started in
    ``[start, start + bucket)`` cost and used, for one value of the grouping dimension."""

    start: datetime
    group: str | None  # the dimension's value; None when not grouped (or the value was absent)
    cost: Money
    requests: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class ArchivedRequest:
    """A request that ended in a hot store (Redis), copied into a durable request log.

    ``RequestArchive.archive`` writes it as the durable ledger's own ended requests are
    written, so ``query_requests`` and ``usage_by`` answer the same for both.
    """

    record: RequestRecord  # cost, times, attributes, usage... as settled (or expired/released)
    state: Literal["settled", "released", "expired"]
    estimate: Money
    lines: tuple[BudgetLine, ...]


# -- the contract ---------------------------------------------------------------------

ThresholdCallback = Callable[[ThresholdCrossed], None]
ChangeCallback = Callable[[BudgetChanged], None]
RefusalCallback = Callable[[Refusal], None]
Event = ThresholdCrossed | BudgetChanged


class Ledger(Reservations, BudgetAdmin, LimitAdmin, RequestLog, AlertOutbox, RefusalCounts):
    """Budgets, reservations, settlements, the request log, the alert outbox and the refusal
    counts, behind one lock or transaction.

    What a backend implements: the protocols of ``protocols.py`` (their
    methods are abstract here), plus subscriptions, the asyncio defaults and
    helpers shared by the backends. Callers needing one part can ask for its
    protocol instead.

    Subscribers run in the thread that caused the event, after its transaction
    commits; an exception in a subscriber is logged, never raised into the request.
    """

    scheme: ClassVar[str] = ""
    #: Whether the blocking reads (``usage``, ``limit_usage``) may wait on I/O or another
    #: process: an asyncio caller then runs them on a thread. False for memory (a lock only).
    blocking_reads: ClassVar[bool] = True

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        retention: timedelta = DEFAULT_RETENTION,
        fail_open: bool = False,
    ) -> None:
        if not isinstance(retention, timedelta) or retention <= timedelta(0):
            raise ConfigError("retention", f"must be a positive duration, got {retention!r}")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.retention = retention
        self.fail_open = fail_open
        self._unrecorded: deque[str] = deque(maxlen=10_000)  # fail-open admissions, for their endings
        self._threshold_subs: tuple[ThresholdCallback, ...] = ()
        self._change_subs: tuple[ChangeCallback, ...] = ()
        self._refusal_subs: tuple[RefusalCallback, ...] = ()
        self._subs_lock = threading.Lock()

    # The contract's methods are declared (abstract) by the protocols; the defaults follow.
    async def areserve(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        demand: Demand | None = None,
    ) -> Reservation | Refusal | LimitRefusal:
        """``reserve`` for asyncio callers. Backends that wait on I/O or locks override it so
        the event loop never blocks (SQLite commits them in batches, retrying a busy lock later)."""
        return self.reserve(request_id, attributes, estimate, lease, demand)

    async def asettle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        """``settle`` for asyncio callers (see ``areserve``)."""
        return self.settle(request_id, actual, record, used)

    async def arelease(self, request_id: str) -> ReleaseOutcome:
        """``release`` for asyncio callers (see ``areserve``)."""
        return self.release(request_id)

    async def acheck_writable(self) -> None:
        """``check_writable`` for asyncio callers (see ``areserve``)."""
        self.check_writable()

    def remove_budget(self, budget_id: str) -> bool:
        """``delete_budget`` that answers False for an unknown id instead of raising."""
        try:
            self.delete_budget(budget_id)
        except KeyError:
            return False
        return True

    def refresh(self) -> None:
        """Pick up budget changes made elsewhere (other processes); memory has none."""

    def close(self) -> None:
        """Release connections."""

    async def aclose(self) -> None:
        """``close`` from a running event loop: a backend with connections bound to the loop
        (PostgreSQL's asyncio pool) closes them before the loop ends. Await it at shutdown."""
        self.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- subscriptions --------------------------------------------------------------
    def subscribe(self, callback: ThresholdCallback) -> Callable[[], None]:
        """Hear threshold crossings; returns a function that unsubscribes."""
        with self._subs_lock:
            self._threshold_subs = (*self._threshold_subs, callback)

        def unsubscribe() -> None:
            with self._subs_lock:
                self._threshold_subs = tuple(s for s in self._threshold_subs if s is not callback)

        return unsubscribe

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Hear budget changes (a raised limit, a reset...); returns a function that unsubscribes."""
        with self._subs_lock:
            self._change_subs = (*self._change_subs, callback)

        def unsubscribe() -> None:
            with self._subs_lock:
                self._change_subs = tuple(s for s in self._change_subs if s is not callback)

        return unsubscribe

    def _deliver(self, events: Sequence[Event]) -> None:
        """Call subscribers; only ever after the change is committed."""
        for event in events:
            subs: tuple[Callable[[Any], None], ...] = (
                self._threshold_subs if isinstance(event, ThresholdCrossed) else self._change_subs
            )
            for callback in subs:
                try:
                    callback(event)
                except Exception:
                    log.exception("spendgate ledger subscriber %r failed on %r", callback, event)

    # -- fail-open and overshoot: one policy for every backend ------------------------------
    def _unrecorded_reservation(
        self,
        exc: LedgerUnavailableError,
        where: str,
        request_id: str,
        estimate: Money,
        now: datetime,
        expires: datetime,
    ) -> Reservation:
        """A reserve the ledger could not write: ``exc`` (fail closed), or with ``fail_open`` an
        admission with no budget line, logged as such and remembered so its ending says so."""
        if not self.fail_open:
            raise exc
        log.error(
            "spendgate: ledger %s unavailable; FAIL-OPEN: admitting request %s (%s) UNRECORDED and unbudgeted",
            where,
            request_id,
            estimate,
            exc_info=exc,
        )
        self._unrecorded.append(request_id)
        return Reservation(request_id, estimate, now, expires, (), unrecorded=True)

    def _unrecorded_settle(
        self, exc: LedgerUnavailableError, where: str, request_id: str, actual: Money
    ) -> SettleOutcome:
        """A settle the ledger could not write: ``exc``, or with ``fail_open`` ``unrecorded``."""
        if not self.fail_open:
            raise exc
        log.error("spendgate: ledger %s unavailable; FAIL-OPEN: settlement of %s (%s) NOT RECORDED",
                  where, request_id, actual, exc_info=exc)  # fmt: skip
        return SettleOutcome(request_id, "unrecorded", actual, actual, actual)

    def _unrecorded_release(self, exc: LedgerUnavailableError, where: str, request_id: str) -> ReleaseOutcome:
        """A release the ledger could not write: ``exc``, or with ``fail_open`` ``unrecorded``."""
        if not self.fail_open:
            raise exc
        log.error("spendgate: ledger %s unavailable; FAIL-OPEN: release of %s NOT RECORDED",
                  where, request_id, exc_info=exc)  # fmt: skip
        return ReleaseOutcome(request_id, "unrecorded")

    @staticmethod
    def _warn_overshoot(request_id: str, actual: Money, estimate: Money) -> None:
        """A settle above the reservation is charged in full (invariant 2): and said."""
        if actual.nanos > estimate.nanos:
            log.warning(
                "spendgate: request %s cost %s, above its reserved estimate %s (provider billed "
                "beyond the estimate); charged in full",
                request_id,
                actual,
                estimate,
            )

    # -- shared helpers -------------------------------------------------------------------
    @staticmethod
    def _lease(lease: timedelta | float) -> timedelta:
        if isinstance(lease, timedelta):
            delta = lease
        elif isinstance(lease, int | float) and not isinstance(lease, bool):
            delta = timedelta(seconds=lease)
        else:
            raise TypeError(f"lease is seconds or a timedelta, got {lease!r}")
        if delta <= timedelta(0):
            raise ValueError(f"lease must be positive, got {lease!r}")
        return delta

    @staticmethod
    def _amount(value: Money, what: str) -> int:
        if type(value) is not Money:
            raise TypeError(f"{what} must be Money (integer nano-USD), got {type(value).__name__}")
        if value.nanos < 0:
            raise ValueError(f"{what} must not be negative, got {value}")
        return value.nanos

    @staticmethod
    def _check_dimensions(dimensions: Mapping[str, str], what: str = "filter") -> None:
        for dim in dimensions:
            if dim not in DIMENSIONS:
                raise ValueError(f"unknown {what} dimension {dim!r}; known: {', '.join(DIMENSIONS)}")

    def _refusal(
        self,
        request_id: str,
        budget: Budget,
        instance: str,
        spent: int,
        reserved: int,
        limit: int,
        needed: int,
        window: tuple[datetime, datetime | None],
        now: datetime,
    ) -> Refusal:
        start, end = window
        pace = budget.pace
        paced = pace is not None and end is not None and spent + reserved + needed <= limit
        retry = None if end is None else max((end - now).total_seconds(), 0.0)
        if paced:
            # The whole limit would admit it: refused by the pace, until a later step allows it.
            assert pace is not None and end is not None
            wait = pace.seconds_until(spent + reserved + needed, limit, start, end, now)
            retry = wait if wait is not None else retry
            limit = pace.allowance(limit, start, end, now)
        refusal = Refusal(
            request_id=request_id,
            budget_id=budget.id,
            label=budget.label(instance),
            selector=budget.concrete_selector(instance),
            instance=parse_instance_key(instance),
            spent=Money(spent),
            reserved=Money(reserved),
            limit=Money(limit),
            needed=Money(needed),
            window_start=start,
            resets_at=end,
            retry_after=retry,
            paced=paced,
            on_exceed=budget.on_exceed,
        )
        for callback in self._refusal_subs:  # cheap by contract: it may run under a lock
            try:
                callback(refusal)
            except Exception:
                log.exception("spendgate ledger refusal subscriber %r failed", callback)
        return refusal

    def on_refusal(self, callback: RefusalCallback) -> Callable[[], None]:
        """Hear this process's budget refusals (the alerts' "refusals started"). The callback may
        run inside the ledger's lock or transaction: it must only note the refusal and return."""
        with self._subs_lock:
            self._refusal_subs = (*self._refusal_subs, callback)

        def unsubscribe() -> None:
            with self._subs_lock:
                self._refusal_subs = tuple(s for s in self._refusal_subs if s is not callback)

        return unsubscribe

    @staticmethod
    def _crossed(thresholds: Sequence[int], alerted: int, spent: int, limit: int) -> list[int]:
        """Thresholds above ``alerted`` that ``spent`` has reached (none while nothing is spent)."""
        if spent <= 0:
            return []
        return [t for t in thresholds if t > alerted and spent * 100 >= t * limit]


def record_matches(attrs: Attributes, filters: Mapping[str, str]) -> bool:
    for dim, value in filters.items():
        if dim == "tag":
            if value not in attrs.tags:
                return False
        elif getattr(attrs, dim) != value:
            return False
    return True
