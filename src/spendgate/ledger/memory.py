"""The in-process ledger: one lock, plain integers, for tests and single-process apps.

The hot path is lean on purpose (goal: 100k reserve+settle cycles/s): budget
matching is precomputed by ``Budget``, a window's bounds are cached by
``Window``, a reservation holds direct references to its budget lines, and
leases sit in a heap so expiry is one comparison per call while nothing is due.
Nothing here survives the process; use ``sqlite://`` for that.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from spendgate.alerts.events import threshold_event_of
from spendgate.budgets import Attributes, Budget, parse_instance_key
from spendgate.clock import Clock
from spendgate.ledger import timeseries
from spendgate.ledger.base import (
    DEFAULT_RETENTION,
    BudgetChanged,
    BudgetDeleted,
    BudgetLine,
    BudgetUsage,
    Event,
    Ledger,
    Refusal,
    ReleaseOutcome,
    RequestIdReusedError,
    RequestRecord,
    Reservation,
    SettleOutcome,
    ThresholdCrossed,
    UnknownReservationError,
    UsagePoint,
    record_matches,
)
from spendgate.ledger.memory_limits import MemoryLimits, Take
from spendgate.ledger.memory_outbox import MemoryOutbox
from spendgate.ledger.memory_refusals import MemoryRefusals
from spendgate.limits import Demand, Limit, LimitRefusal, LimitUsage
from spendgate.money import Money

if TYPE_CHECKING:
    from spendgate.gateway.settings import VirtualKey

__all__ = ["MemoryKeyStorage", "MemoryLedger", "memory_factory", "memory_keys_factory"]

log = logging.getLogger("spendgate.ledger")

_NO_MORE: Final = 10**6  # "next threshold" once all have fired: never reached by spent*100 >= t*limit
_MAINTAIN_EVERY: Final = 4096  # settles between cheap retention passes


class _State:
    """A budget and its counters, per window start, per instance key."""

    __slots__ = ("budget", "cur", "cur_start", "limit", "live", "windows")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.limit = budget.limit.nanos
        self.windows: dict[datetime, dict[str, _Line]] = {}
        self.cur_start: datetime | None = None
        self.cur: dict[str, _Line] = {}
        self.live = True

    def lines_at(self, start: datetime) -> dict[str, _Line]:
        if start is self.cur_start:  # Window.bounds returns the same object within a window
            return self.cur
        lines = self.windows.get(start)
        if lines is None:
            lines = self.windows[start] = {}
        self.cur_start, self.cur = start, lines
        return lines

    def first_threshold_above(self, alerted: int) -> int:
        for t in self.budget.thresholds:
            if t > alerted:
                return t
        return _NO_MORE


class _Line:
    """One budget instance in one window."""

    __slots__ = ("alerted", "next_t", "public", "reserved", "spent", "state")

    def __init__(self, state: _State, instance: str, start: datetime, end: datetime | None) -> None:
        self.state = state
        self.public = BudgetLine(state.budget.id, instance, start, end)
        self.spent = 0
        self.reserved = 0
        self.alerted = 0  # highest threshold delivered in this window
        self.next_t = state.first_threshold_above(0)


class _Open:
    __slots__ = ("attributes", "estimate", "expires_at", "lines", "reserved_at", "result", "takes")

    def __init__(
        self,
        attributes: Attributes,
        estimate: int,
        lines: list[_Line],
        reserved_at: datetime,
        expires_at: datetime,
        result: Reservation,
        takes: list[Take],
    ) -> None:
        self.attributes = attributes
        self.estimate = estimate
        self.lines = lines
        self.reserved_at = reserved_at
        self.expires_at = expires_at
        self.result = result
        self.takes = takes  # what the request took from rate limits


# A request log entry: (started_at, finished_at, request_id, attributes, cost nanos, status, record,
# estimate nanos).
_Entry = tuple[datetime, datetime, str, Attributes, int, str, RequestRecord | None, int]


class MemoryLedger(MemoryOutbox, MemoryRefusals, Ledger):  # these first: they implement Ledger's parts
    """Thread-safe, in-process. ``max_log`` bounds the request log, ``max_finished``
    the ended request ids remembered for idempotent settle/release."""

    scheme = "memory"
    blocking_reads = False  # in-process dicts under a lock: no thread hop for a read

    def __init__(
        self,
        budgets: Iterable[Budget] = (),
        *,
        clock: Clock | None = None,
        retention: timedelta = DEFAULT_RETENTION,
        fail_open: bool = False,
        max_log: int = 100_000,
        max_finished: int = 100_000,
    ) -> None:
        super().__init__(clock=clock, retention=retention, fail_open=fail_open)
        self._outbox_init()
        self._refusals_init()
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}
        self._retired: dict[str, _State] = {}  # removed budgets, so re-adding keeps their spend
        self._order: tuple[_State, ...] = ()
        self._open: dict[str, _Open] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._ended: dict[str, tuple[str, int, int]] = {}  # id -> (status, charged, estimate)
        self._ended_order: deque[str] = deque()
        self._max_finished = max_finished
        self._log: deque[_Entry] = deque(maxlen=max_log)
        self._settles = 0
        self._limits = MemoryLimits()
        self._probes = 0  # check_writable calls (its write)
        for budget in budgets:
            self.put_budget(budget)

    # -- reservations -------------------------------------------------------------------
    def reserve(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        demand: Demand | None = None,
    ) -> Reservation | Refusal | LimitRefusal:
        if type(estimate) is not Money or estimate.nanos < 0:
            self._amount(estimate, "estimate")
        est = estimate.nanos
        delta = lease if type(lease) is timedelta and lease > _ZERO else self._lease(lease)
        events: list[Event] = []
        result: Reservation | Refusal | None = None
        takes: list[Take] = []
        try:
            with self._lock:
                now = self.clock.now()
                heap = self._heap
                if heap and heap[0][0] <= now:
                    self._expire_locked(now, events)
                if request_id in self._open or request_id in self._ended:
                    return self._reuse_locked(request_id, attributes, est)
                lines: list[_Line] = []
                for state in self._order:
                    keys = state.budget.matches(attributes)
                    if not keys:
                        continue
                    window = state.budget.window.bounds(now)
                    current = state.lines_at(window[0])
                    limit = state.limit
                    cap = (
                        limit
                        if state.budget.pace is None and not state.budget.soft
                        else state.budget.allowance(now, *window)
                    )
                    for key in keys:
                        line = current.get(key)
                        if line is None:
                            line = current[key] = _Line(state, key, window[0], window[1])
                        if line.spent + line.reserved + est > cap:
                            return self._refusal(
                                request_id,
                                state.budget,
                                key,
                                line.spent,
                                line.reserved,
                                limit,
                                est,
                                window,
                                now,
                            )
                        lines.append(line)
                if self._limits:
                    checked = self._limits.check(request_id, attributes, demand or Demand(cost=est), now)
                    if isinstance(checked, LimitRefusal):
                        return checked
                    takes = checked
                    self._limits.take(takes)
                for line in lines:
                    line.reserved += est
                expires = now + delta
                result = Reservation(request_id, estimate, now, expires, tuple(line.public for line in lines))
                self._open[request_id] = _Open(attributes, est, lines, now, expires, result, takes)
                heapq.heappush(heap, (expires, request_id))
                if len(heap) > 2 * len(self._open) + 4096:
                    self._compact_heap()
                return result
        finally:
            if events:  # expiry alerts, after the lock is released
                self._deliver(events)

    def _reuse_locked(self, request_id: str, attributes: Attributes, est: int) -> Reservation:
        held = self._open.get(request_id)
        if held is not None:
            if held.attributes == attributes and held.estimate == est:
                return held.result  # a retried reserve: the same reservation
            raise RequestIdReusedError(
                f"request id {request_id!r} already holds a reservation with different "
                "attributes or estimate; use a new id per request"
            )
        status = self._ended[request_id][0]
        raise RequestIdReusedError(
            f"request id {request_id!r} was already {status}; use a new id per request"
        )

    def settle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        if type(actual) is not Money or actual.nanos < 0:
            self._amount(actual, "actual")
        if record is not None:
            record.breakdown_strings()  # refuse a float amount now, not when the log is read
        act = actual.nanos
        events: list[Event] | None = None
        with self._lock:
            held = self._open.pop(request_id, None)
            if held is None:
                return self._settle_ended(request_id, actual)
            now = self.clock.now()
            est = held.estimate
            remaining: int | None = None
            for line in held.lines:
                line.reserved -= est
                spent = line.spent = line.spent + act
                if act and spent * 100 >= line.next_t * line.state.limit:
                    events = self._alerts_locked(line, request_id, events)
                if not line.state.budget.soft:  # a soft budget bounds nothing
                    room = line.state.limit - spent - line.reserved
                    remaining = room if remaining is None else min(remaining, room)
            if held.takes:
                MemoryLimits.end(held.takes, "settled", used, act)
            self._end_locked(request_id, "settled", act, est)
            self._log.append((held.reserved_at, now, request_id, held.attributes, act, "ok", record, est))
            self._settles += 1
            if self._settles % _MAINTAIN_EVERY == 0:
                self._maintain_locked(now)
        if act > est:
            log.warning(
                "spendgate: request %s cost %s, above its reserved estimate %s (provider billed "
                "beyond the estimate); charged in full",
                request_id,
                actual,
                held.result.estimate,
            )
        if events:
            self._deliver(events)
        left = None if remaining is None else Money(max(remaining, 0))
        return SettleOutcome(request_id, "settled", actual, held.result.estimate, actual, left)

    def _settle_ended(self, request_id: str, actual: Money) -> SettleOutcome:
        ended = self._ended.get(request_id)
        if ended is None:
            raise UnknownReservationError(f"no reservation for request id {request_id!r}")
        status, charged, est = ended
        outcome = {"settled": "already_settled", "expired": "expired", "released": "released"}[status]
        return SettleOutcome(request_id, outcome, Money(charged), Money(est), actual)  # type: ignore[arg-type]

    def release(self, request_id: str) -> ReleaseOutcome:
        with self._lock:
            held = self._open.pop(request_id, None)
            if held is None:
                ended = self._ended.get(request_id)
                if ended is None:
                    raise UnknownReservationError(f"no reservation for request id {request_id!r}")
                status = "already_released" if ended[0] == "released" else ended[0]
                return ReleaseOutcome(request_id, status)  # type: ignore[arg-type]
            est = held.estimate
            for line in held.lines:
                line.reserved -= est
            if held.takes:
                MemoryLimits.end(held.takes, "released")
            self._end_locked(request_id, "released", 0, est)
        return ReleaseOutcome(request_id, "released")

    def check_writable(self) -> None:
        """Always writable (memory); the lock is taken, so a wedged ledger would show here."""
        with self._lock:
            self._probes += 1

    def expire_leases(self) -> int:
        events: list[Event] = []
        with self._lock:
            now = self.clock.now()
            count = self._expire_locked(now, events)
            self._maintain_locked(now)
        self._deliver(events)
        return count

    def _expire_locked(self, now: datetime, events: list[Event]) -> int:
        heap = self._heap
        count = 0
        while heap and heap[0][0] <= now:
            expires, request_id = heapq.heappop(heap)
            held = self._open.get(request_id)
            if held is None or held.expires_at != expires:
                continue  # ended before its lease ran out
            del self._open[request_id]
            est = held.estimate
            for line in held.lines:
                line.reserved -= est
                spent = line.spent = line.spent + est
                if est and spent * 100 >= line.next_t * line.state.limit:
                    self._alerts_locked(line, request_id, events)
            if held.takes:
                MemoryLimits.end(held.takes, "expired")
            self._end_locked(request_id, "expired", est, est)
            self._log.append((held.reserved_at, now, request_id, held.attributes, est, "expired", None, est))
            log.warning(
                "spendgate: lease of request %s expired unsettled; charged its reserved %s",
                request_id,
                held.result.estimate,
            )
            count += 1
        return count

    def _compact_heap(self) -> None:
        # Settled reservations leave their lease in the heap; rebuild from the open ones.
        self._heap = [(held.expires_at, rid) for rid, held in self._open.items()]
        heapq.heapify(self._heap)

    def _end_locked(self, request_id: str, status: str, charged: int, est: int) -> None:
        self._ended[request_id] = (status, charged, est)
        order = self._ended_order
        order.append(request_id)
        if len(order) > self._max_finished:
            self._ended.pop(order.popleft(), None)

    def _alerts_locked(self, line: _Line, request_id: str, events: list[Event] | None) -> list[Event] | None:
        state = line.state
        if not state.live:
            return events
        budget = state.budget
        crossed = self._crossed(budget.thresholds, line.alerted, line.spent, state.limit)
        if not crossed:
            return events
        line.alerted = crossed[-1]
        line.next_t = state.first_threshold_above(line.alerted)
        out = events if events is not None else []
        public = line.public
        heard: list[ThresholdCrossed] = []
        for threshold in crossed:
            heard.append(
                ThresholdCrossed(
                    budget_id=budget.id,
                    label=budget.label(public.instance),
                    instance=parse_instance_key(public.instance),
                    threshold=threshold,
                    spent=Money(line.spent),
                    limit=Money(state.limit),
                    window_start=public.window_start,
                    window_end=public.window_end,
                    request_id=request_id,
                )
            )
        out.extend(heard)
        now = self.clock.now()
        self.add_alerts([threshold_event_of(event, now, soft=budget.soft) for event in heard])
        return out

    def _maintain_locked(self, now: datetime) -> None:
        cutoff = now - self.retention
        entries = self._log
        while entries and entries[0][0] < cutoff:
            entries.popleft()
        for state in (*self._order, *self._retired.values()):
            for start in [s for s, lines in state.windows.items() if s < cutoff]:
                lines = state.windows[start]
                if any(line.reserved for line in lines.values()):
                    continue
                ended = next(iter(lines.values())).public.window_end if lines else None
                if ended is not None and ended < cutoff:
                    del state.windows[start]
                    if state.cur_start == start:
                        state.cur_start, state.cur = None, {}

    # -- rate limits ----------------------------------------------------------------------
    def put_limit(self, limit: Limit) -> None:
        with self._lock:
            self._limits.put(limit)

    def remove_limit(self, limit_id: str) -> bool:
        with self._lock:
            return self._limits.remove(limit_id)

    def get_limit(self, limit_id: str) -> Limit:
        with self._lock:
            return self._limits.get(limit_id)

    def limits(self) -> list[Limit]:
        with self._lock:
            return self._limits.all()

    def limit_usage(self, limit_id: str, instance: Mapping[str, str] | str | None = None) -> LimitUsage:
        with self._lock:
            key = self._limits.get(limit_id).instance_key(instance)
            return self._limits.usage(limit_id, key, self.clock.now())

    def list_limits(self) -> list[LimitUsage]:
        with self._lock:
            return self._limits.usages(self.clock.now())

    # -- budgets --------------------------------------------------------------------------
    def put_budget(self, budget: Budget) -> None:
        with self._lock:
            state = self._states.get(budget.id) or self._retired.pop(budget.id, None)
            previous = None
            if state is None:
                state = _State(budget)
            else:
                if state.live and state.budget == budget:
                    return  # nothing changed (as SQLite: no event)
                previous = Money(state.limit) if state.live else None
                state.budget, state.limit, state.live = budget, budget.limit.nanos, True
                for lines in state.windows.values():
                    for line in lines.values():
                        line.next_t = state.first_threshold_above(line.alerted)
                state.cur_start, state.cur = None, {}  # the window may have changed shape
            self._states[budget.id] = state
            self._order = tuple(sorted(self._states.values(), key=_by_id))  # same order as SQLite
        self._deliver([BudgetChanged(budget.id, "put", budget.limit, previous)])

    def delete_budget(self, budget_id: str) -> BudgetDeleted:
        with self._lock:
            state = self._state(budget_id)
            del self._states[budget_id]
            # Kept, lines and all: open reservations still end on these lines, and re-adding the
            # id in the same window continues from this spend.
            state.live = False
            self._retired[budget_id] = state
            self._order = tuple(sorted(self._states.values(), key=_by_id))  # same order as SQLite
            in_flight = sum(1 for held in self._open.values() if any(ln.state is state for ln in held.lines))
            reserved = sum(line.reserved for lines in state.windows.values() for line in lines.values())
        self._deliver([BudgetChanged(budget_id, "remove", None, Money(state.limit))])
        return BudgetDeleted(budget_id, in_flight, Money(reserved))

    def get_budget(self, budget_id: str) -> Budget:
        return self._state(budget_id).budget

    def budgets(self) -> list[Budget]:
        return [state.budget for state in self._order]

    def set_limit(self, budget_id: str, limit: Money) -> None:
        nanos = self._amount(limit, "limit")
        with self._lock:
            state = self._state(budget_id)
            previous = Money(state.limit)
            state.budget = replace(state.budget, limit=limit)
            state.limit = nanos
        self._deliver([BudgetChanged(budget_id, "limit", limit, previous)])

    def reset(self, budget_id: str, instance: Mapping[str, str] | str | None = None) -> None:
        with self._lock:
            state = self._state(budget_id)
            budget = state.budget
            key = budget.instance_key(instance) if instance is not None else None
            start, _ = budget.window.bounds(self.clock.now())
            lines = state.lines_at(start)
            for line_key, line in lines.items():
                if key is None or line_key == key:
                    line.spent = 0
                    line.alerted = 0
                    line.next_t = state.first_threshold_above(0)
        self._deliver([BudgetChanged(budget_id, "reset", Money(state.limit), None, key)])

    def _state(self, budget_id: str) -> _State:
        state = self._states.get(budget_id)
        if state is None:
            raise KeyError(f"no budget {budget_id!r}; known: {', '.join(self._states) or 'none'}")
        return state

    def usage(
        self, budget_id: str, instance: Mapping[str, str] | str | None = None, *, at: datetime | None = None
    ) -> BudgetUsage:
        with self._lock:
            state = self._state(budget_id)
            key = state.budget.instance_key(instance)
            window = state.budget.window.bounds(at if at is not None else self.clock.now())
            line = state.windows.get(window[0], {}).get(key)
            return self._usage(state, key, window, line)

    def list_budgets(self) -> list[BudgetUsage]:
        out: list[BudgetUsage] = []
        with self._lock:
            now = self.clock.now()
            for state in self._order:
                window = state.budget.window.bounds(now)
                lines = state.windows.get(window[0], {})
                if not state.budget.wildcards:
                    out.append(self._usage(state, "", window, lines.get("")))
                    continue
                for key in sorted(lines):
                    line = lines[key]
                    if line.spent or line.reserved:
                        out.append(self._usage(state, key, window, line))
        return out

    @staticmethod
    def _usage(
        state: _State, key: str, window: tuple[datetime, datetime | None], line: _Line | None
    ) -> BudgetUsage:
        budget = state.budget
        return BudgetUsage(
            budget_id=budget.id,
            label=budget.label(key),
            selector=budget.concrete_selector(key),
            instance=parse_instance_key(key),
            spent=Money(line.spent if line else 0),
            reserved=Money(line.reserved if line else 0),
            limit=Money(state.limit),
            window_start=window[0],
            window_end=window[1],
        )

    # -- the request log --------------------------------------------------------------------
    def _records(self, start: datetime | None, end: datetime | None) -> Iterator[RequestRecord]:
        for started, finished, request_id, attrs, cost, status, record, est in reversed(self._log):
            if (start is not None and started < start) or (end is not None and started >= end):
                continue
            yield RequestRecord(
                request_id=request_id,
                attributes=attrs,
                cost=Money(cost),
                started_at=started,
                finished_at=finished,
                model=(record.model if record is not None else None) or attrs.model,
                usage=dict(record.usage) if record is not None else {},
                breakdown=record.breakdown_strings() if record is not None else {},
                status=record.status if record is not None else status,
                estimate=Money(est),
            )

    def query_requests(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        limit: int = 1000,
        after: str | None = None,
        **dimensions: str,
    ) -> list[RequestRecord]:
        self._check_dimensions(dimensions)
        mark: datetime | None = None
        with self._lock:
            self._maintain_locked(self.clock.now())
            if after is not None:
                mark = next((row[0] for row in self._log if row[2] == after), None)
                if mark is None:
                    raise UnknownReservationError(f"request id {after!r} is not in the request log")
            out = [r for r in self._records(start, end) if record_matches(r.attributes, dimensions)]
        if after is not None and mark is not None:
            out = [r for r in out if r.started_at < mark or (r.started_at == mark and r.request_id > after)]
        out.sort(key=lambda r: r.request_id)
        out.sort(key=lambda r: r.started_at, reverse=True)  # newest first, ties by request id
        return out[:limit]

    def usage_by(
        self, dimension: str, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, Money]:
        self._check_dimensions({dimension: ""}, "usage_by")
        totals: dict[str, int] = {}
        with self._lock:
            self._maintain_locked(self.clock.now())
            for record in self._records(start, end):
                for value in _values(record.attributes, dimension):
                    totals[value] = totals.get(value, 0) + record.cost.nanos
        return {value: Money(nanos) for value, nanos in sorted(totals.items())}

    def usage_timeseries(
        self,
        start: datetime,
        end: datetime,
        bucket: timedelta,
        *,
        by: str | None = None,
        **dimensions: str,
    ) -> list[UsagePoint]:
        series = timeseries.plan(start, end, bucket, by, dimensions)
        totals = timeseries.Totals()
        with self._lock:
            self._maintain_locked(self.clock.now())
            entries = list(self._log)
        for started, _, _, attrs, cost, _, record, _ in entries:
            if not start <= started < end or not record_matches(attrs, series.filters):
                continue
            index = series.index(timeseries.micros(started))
            tokens_in, tokens_out = timeseries.tokens_of(record.usage if record is not None else None)
            groups: Sequence[str | None] = (None,) if by is None else (_values(attrs, by) or (None,))
            for group in groups:
                totals.add(index, group, cost, tokens_in, tokens_out)
        return timeseries.points(series, totals.rows())

    def purge(self) -> int:
        with self._lock:
            before = len(self._log)
            self._maintain_locked(self.clock.now())
            return before - len(self._log)

    # -- introspection for tests --------------------------------------------------------
    def open_reservations(self) -> int:
        with self._lock:
            return len(self._open)


_ZERO: Final = timedelta(0)


def _by_id(state: _State) -> str:
    return state.budget.id


def _values(attrs: Attributes, dimension: str) -> Sequence[str]:
    if dimension == "tag":
        return sorted(attrs.tags)
    value = getattr(attrs, dimension)
    return () if value is None else (value,)


def memory_factory(
    url: str, *, budgets: Sequence[Budget], clock: Clock | None, create: bool = True, **options: Any
) -> MemoryLedger:
    """``memory://`` (nothing after the scheme). ``create`` is ignored: a memory ledger is always new."""
    return MemoryLedger(budgets, clock=clock, **options)


# -- virtual keys ---------------------------------------------------------------------------


class MemoryKeyStorage:
    """The gateway's virtual keys in this process only (tests, demos, ``memory://`` ledgers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[VirtualKey, str]] = {}
        self._hashes: dict[str, str] = {}

    def insert(self, key: VirtualKey, secret_hash: str) -> None:
        with self._lock:
            self._keys[key.id] = (key, secret_hash)
            self._hashes[secret_hash] = key.id

    def by_hash(self, secret_hash: str) -> tuple[VirtualKey, str] | None:
        with self._lock:
            key_id = self._hashes.get(secret_hash)
            return self._keys.get(key_id) if key_id is not None else None

    def by_id(self, key_id: str) -> VirtualKey | None:
        with self._lock:
            found = self._keys.get(key_id)
        return found[0] if found else None

    def all(self) -> list[VirtualKey]:
        with self._lock:
            return [key for key, _ in self._keys.values()]

    def set_disabled(self, key_id: str, disabled: bool) -> bool:
        with self._lock:
            found = self._keys.get(key_id)
            if found is None:
                return False
            self._keys[key_id] = (replace(found[0], disabled=disabled), found[1])
            return True

    def set_secret(self, key_id: str, secret_hash: str, hint: str) -> bool:
        with self._lock:
            found = self._keys.get(key_id)
            if found is None:
                return False
            del self._hashes[found[1]]
            self._keys[key_id] = (replace(found[0], hint=hint), secret_hash)
            self._hashes[secret_hash] = key_id
            return True

    def remove(self, key_id: str) -> bool:
        with self._lock:
            found = self._keys.pop(key_id, None)
            if found is None:
                return False
            self._hashes.pop(found[1], None)
            return True

    def close(self) -> None:
        """Nothing to release."""


def memory_keys_factory(url: str, *, clock: Clock, create: bool = True) -> MemoryKeyStorage:
    """``memory://``: a fresh, empty store per call (the clock is unused: nothing is timestamped;
    ``create`` too: there is nothing to find)."""
    return MemoryKeyStorage()
