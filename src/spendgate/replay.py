"""Replay a recorded request log against proposed budgets (and rate limits): what would they
have refused, delayed or clamped, and what would have been spent? (``spendgate simulate``;
docs/simulate.md.)

The replay drives a real ``MemoryLedger`` on a ``ManualClock``, so the budget arithmetic,
windows, pacing and rate-limit windows are the ledger's own, not a copy. Events run in time
order: each logged request reserves its logged ``estimate`` at its ``started_at`` and ends at
its ``finished_at`` (its logged duration after its replayed start): settled at its logged
``cost``, or released when the log says it was released. A request the replay refuses is
dropped: it holds nothing and frees nothing later. At one instant, endings come before
starts (they free room first); starts keep the log's order (``started_at``, then request id).

How each ``on_exceed`` is modelled, as the guard (``spendgate.guard``) does it:

- ``raise``: refused.
- ``wait``: the request joins the refusing budget's (or limit's) line, first come first served
  (a newcomer whose budget or limit already has a waiting line joins its back without trying,
  as the guard's no-overtaking rule says). The head of a line retries when a request ends, and
  when the refusal says room comes back (a window's reset, a pace step, a rate-limit bucket
  leaving the window). Admitted within ``max_wait``: the request starts then (``delayed``, by
  how long) and runs for its logged duration; else refused when its ``max_wait`` runs out.
  The live guard also retries on a poll tick; the replay retries exactly when room can appear,
  so a delay may be a poll interval shorter than it was live.
- ``clamp``: the guard lowers the request's output cap until its worst case fits what the
  refusing budget still affords. The log keeps the cost and the estimate, not the output cap,
  prompt bound or rates, so the replay does what is honestly derivable: when the free room
  covers the logged cost, the request is ``clamped``: admitted with a reservation of that room
  (the guard's clamped worst case fits in it, within one output token's price) and charged its
  logged cost, an upper bound (a smaller cap may have cut the answer shorter and cheaper).
  When the room is below the logged cost the request is counted ``refused``: live it might
  have run, cut short, on a cap of at least ``min_output_tokens``; the log cannot say what it
  would have cost. The ``min_output_tokens`` floor itself is not checked (it needs the rates),
  nor whether the endpoint had an output cap (embeddings cannot be clamped).
- ``alert`` (a soft budget): the ledger counts it and never refuses by it.

Rate limits: ``requests``, ``usd`` and ``concurrency`` are replayed (the log has the start,
the end, the estimate and the cost). ``input_tokens``, ``output_tokens``, ``tokens`` and
``prompt_tokens`` are not: they reserve the prompt's bound and the output cap, which the log
does not keep (its usage is what was used, a lower bound); ``replay`` refuses them
(``ReplayError``) rather than answer from a lower bound.

What the log cannot show: requests the provider refused or that never left (released: the
request log keeps settled and expired requests only) held a reservation while in flight; the
replay does not see them. Requests refused live are not in the log either. A record without an
``estimate`` (logged before the log kept it) reserves its cost instead, a lower bound, and is
counted in ``Replay.without_estimate``. The budgets start empty at the first replayed request:
spend before it in the same window is not counted.

Money is integer nano-USD throughout; time is the log's instants, read by the ledger from the
manual clock.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from spendgate.budgets import Budget, OnExceed, instance_key
from spendgate.clock import ManualClock
from spendgate.ledger.base import Refusal, RequestRecord, Reservation
from spendgate.ledger.memory import MemoryLedger
from spendgate.limits import Demand, Limit, LimitRefusal
from spendgate.money import Money

__all__ = [
    "REPLAYABLE_KINDS",
    "BudgetTotals",
    "Outcome",
    "OutcomeStatus",
    "Replay",
    "ReplayError",
    "replay",
    "unreplayable",
]

OutcomeStatus = Literal["admitted", "delayed", "clamped", "refused"]
#: Rate-limit kinds the log has what they count for.
REPLAYABLE_KINDS: Final = frozenset({"requests", "usd", "concurrency"})
DEFAULT_MAX_WAIT: Final = timedelta(seconds=30)  # the gateway's defaults.max_wait
_TICK: Final = timedelta(microseconds=1)
_LIMIT_LINE: Final = "\x1flimit:"  # as the guard names a rate limit's wait line

# Event kinds, in the order they run at one instant.
_END: Final = 0
_WAKE: Final = 1
_START: Final = 2


class ReplayError(ValueError):
    """The proposal cannot be replayed from a request log (a token limit, a bad option)."""


def unreplayable(limit: Limit) -> str | None:
    """Why ``limit`` cannot be replayed from a request log, or None when it can."""
    if limit.kind in REPLAYABLE_KINDS:
        return None
    return (
        f"limit {limit.id!r} counts {limit.kind}: it reserves the prompt's token bound and the "
        "output cap, which the request log does not keep (only the tokens used, a lower bound)"
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the replay did with one logged request (``index``: its place in time order)."""

    index: int
    record: RequestRecord
    status: OutcomeStatus
    #: When it started in the replay (its logged start, plus any delay) and ended (refused: None).
    started_at: datetime
    finished_at: datetime | None
    delay: timedelta
    reserved: Money  # what it held while in flight (0 when refused)
    cost: Money  # what it spent in the replay (0 when refused)
    #: The budget or rate limit that refused it (or, for a delayed or clamped one, made it so).
    by: str | None = None
    reason: str | None = None
    budgets: tuple[str, ...] = ()  # the budgets it was charged to (admitted)
    by_limit: bool = False  # ``by`` is a rate limit's id (else a budget's)

    @property
    def admitted(self) -> bool:
        return self.status != "refused"


@dataclass(slots=True)
class BudgetTotals:
    """One proposed budget over the replay (all its instances)."""

    budget_id: str
    label: str
    limit: Money
    on_exceed: OnExceed
    matched: int = 0  # logged requests the budget applies to
    admitted: int = 0
    delayed: int = 0  # admitted late, having waited in this budget's line
    clamped: int = 0  # admitted with what this budget had left
    refused: int = 0  # refused by this budget
    spent: Money = field(default_factory=Money)
    avoided: Money = field(default_factory=Money)  # the logged cost of the requests this budget refused
    #: What was spent per window start (all instances), for a budget that resets.
    windows: dict[datetime, Money] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Replay:
    """The replay's outcome per request (in time order) and its totals."""

    outcomes: tuple[Outcome, ...]
    budgets: tuple[BudgetTotals, ...]
    limits: tuple[Limit, ...]
    limit_refusals: dict[str, int]
    without_estimate: int

    def count(self, status: OutcomeStatus) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def logged(self) -> Money:
        """What the replayed requests cost when they ran."""
        return Money(sum(o.record.cost.nanos for o in self.outcomes))

    @property
    def spent(self) -> Money:
        """What they would have cost under the proposal."""
        return Money(sum(o.cost.nanos for o in self.outcomes))

    @property
    def avoided(self) -> Money:
        """The logged cost of the refused requests."""
        return Money(sum(o.record.cost.nanos for o in self.outcomes if o.status == "refused"))

    @property
    def refused(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "refused")


@dataclass(slots=True)
class _Waiter:
    index: int
    arrived: datetime
    deadline: datetime
    by: str
    by_limit: bool


@dataclass(slots=True)
class _Run:
    """The replay's state: the ledger, its clock, the event heap, the wait lines."""

    ledger: MemoryLedger
    clock: ManualClock
    records: Sequence[RequestRecord]
    estimates: list[Money]
    chosen: OnExceed | None
    max_wait: timedelta
    budget_count: int
    heap: list[tuple[datetime, int, int]] = field(default_factory=list)
    lines: OrderedDict[str, deque[_Waiter]] = field(default_factory=OrderedDict)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    #: Admitted requests not yet ended: index -> reserved.
    running: dict[int, Money] = field(default_factory=dict)


def replay(
    records: Iterable[RequestRecord],
    budgets: Sequence[Budget],
    limits: Sequence[Limit] = (),
    *,
    on_exceed: OnExceed | None = None,
    max_wait: timedelta = DEFAULT_MAX_WAIT,
) -> Replay:
    """Replay ``records`` (any order) against ``budgets`` and ``limits``.

    ``on_exceed`` overrides every budget's own policy (the gateway's ``defaults.on_exceed``);
    ``max_wait`` is how long a waiting request waits (``defaults.max_wait``). Raises
    ``ReplayError`` for a limit the log cannot replay (``unreplayable``).
    """
    for limit in limits:
        why = unreplayable(limit)
        if why is not None:
            raise ReplayError(why)
    if max_wait < timedelta(0):
        raise ReplayError(f"max_wait must not be negative, got {max_wait}")
    ordered = sorted(records, key=lambda r: (r.started_at, r.request_id))
    if len({r.request_id for r in ordered}) != len(ordered):
        raise ReplayError("the log names a request id twice")
    clock = ManualClock(ordered[0].started_at if ordered else None)
    ledger = MemoryLedger(budgets, clock=clock, max_log=1, max_finished=len(ordered) + 1)
    for limit in limits:
        ledger.put_limit(limit)
    run = _Run(
        ledger=ledger,
        clock=clock,
        records=ordered,
        estimates=[r.estimate if r.estimate is not None else r.cost for r in ordered],
        chosen=on_exceed,
        max_wait=max_wait,
        budget_count=len(budgets),
    )
    for index, record in enumerate(ordered):
        heapq.heappush(run.heap, (record.started_at, _START, index))
    _drive(run)
    outcomes = tuple(run.outcomes[i] for i in range(len(ordered)))
    refusals: dict[str, int] = {limit.id: 0 for limit in limits}
    for outcome in outcomes:
        if outcome.status == "refused" and outcome.by_limit and outcome.by in refusals:
            refusals[outcome.by] += 1
    return Replay(
        outcomes=outcomes,
        budgets=tuple(_totals(budget, outcomes) for budget in budgets),
        limits=tuple(limits),
        limit_refusals=refusals,
        without_estimate=sum(1 for r in ordered if r.estimate is None),
    )


def _drive(run: _Run) -> None:
    heap = run.heap
    while heap:
        now = heap[0][0]
        run.clock.set(now)
        starts: list[int] = []
        ended = woken = False
        while heap and heap[0][0] == now:
            _, kind, index = heapq.heappop(heap)
            if kind == _END:
                _end(run, index)
                ended = True
            elif kind == _WAKE:
                woken = True
            else:
                starts.append(index)
        if (ended or woken) and run.lines:
            _serve_lines(run, now)
        for index in starts:
            _arrive(run, index, now)


def _end(run: _Run, index: int) -> None:
    record = run.records[index]
    del run.running[index]
    if record.status == "released":
        run.ledger.release(record.request_id)
    else:
        run.ledger.settle(record.request_id, record.cost)


def _lease(record: RequestRecord) -> timedelta:
    """Longer than the request runs, so no lease expires before its replayed ending."""
    return max(record.finished_at - record.started_at, timedelta(0)) + timedelta(seconds=1)


def _reserve(run: _Run, index: int, amount: Money) -> Reservation | Refusal | LimitRefusal:
    record = run.records[index]
    return run.ledger.reserve(
        record.request_id, record.attributes, amount, _lease(record), Demand(cost=amount.nanos)
    )


def _admit(
    run: _Run,
    index: int,
    now: datetime,
    reservation: Reservation,
    status: OutcomeStatus,
    by: str | None = None,
    reason: str | None = None,
    by_limit: bool = False,
) -> None:
    record = run.records[index]
    duration = max(record.finished_at - record.started_at, timedelta(0))
    finished = now + duration
    budgets = tuple(dict.fromkeys(line.budget_id for line in reservation.lines))
    run.outcomes[index] = Outcome(
        index=index,
        record=record,
        status=status,
        started_at=now,
        finished_at=finished,
        delay=now - record.started_at,
        reserved=reservation.estimate,
        cost=Money(0) if record.status == "released" else record.cost,
        by=by,
        reason=reason,
        budgets=budgets,
        by_limit=by_limit,
    )
    run.running[index] = reservation.estimate
    heapq.heappush(run.heap, (finished, _END, index))


def _refuse(run: _Run, index: int, now: datetime, by: str, reason: str, by_limit: bool = False) -> None:
    record = run.records[index]
    run.outcomes[index] = Outcome(
        index=index,
        record=record,
        status="refused",
        started_at=now,
        finished_at=None,
        delay=now - record.started_at,
        reserved=Money(0),
        cost=Money(0),
        by=by,
        reason=reason,
        by_limit=by_limit,
    )


# -- a request arrives --------------------------------------------------------------------------


def _arrive(run: _Run, index: int, now: datetime) -> None:
    record = run.records[index]
    queued = _busy_line(run, record, now)
    if queued is not None:  # others already wait on one of its budgets or limits: no overtaking
        key, by = queued
        _join(run, key, _Waiter(index, now, now + run.max_wait, by, key.startswith(_LIMIT_LINE)))
        return
    result = _reserve(run, index, run.estimates[index])
    if isinstance(result, Reservation):
        _admit(run, index, now, result, "admitted")
        return
    if isinstance(result, LimitRefusal):
        if _limit_waits(run, result.limit) and run.max_wait > timedelta(0) and _may_fit(result):
            _wait(run, index, now, result)
        else:
            _refuse(run, index, now, result.limit.id, _limit_reason(result), by_limit=True)
        return
    policy = run.chosen or result.on_exceed
    if policy == "clamp":
        _clamp(run, index, now, result)
    elif policy == "wait" and run.max_wait > timedelta(0) and _may_fit(result):
        _wait(run, index, now, result)
    else:
        _refuse(run, index, now, result.budget_id, _budget_reason(result))


def _limit_waits(run: _Run, limit: Limit) -> bool:
    """The guard's rule: an explicit raise/wait decides; otherwise (clamp, or none) the limit's own."""
    if run.chosen in ("raise", "wait"):
        return run.chosen == "wait"
    return limit.on_exceed == "wait"


def _busy_line(run: _Run, record: RequestRecord, now: datetime) -> tuple[str, str] | None:
    """The line a newcomer joins without trying (the guard's ``_queued``): the first of its
    budgets' and limits' lines that has waiters, when that budget or limit waits."""
    if not run.lines:
        return None
    for budget in run.ledger.budgets():
        for inst in budget.matches(record.attributes):
            key = f"{budget.id}|{inst}"
            if run.lines.get(key):
                return (key, budget.id) if (run.chosen or budget.on_exceed) == "wait" else None
    for limit in run.ledger.limits():
        for inst in limit.matches(record.attributes):
            key = f"{_LIMIT_LINE}{limit.id}|{inst}"
            if run.lines.get(key):
                return (key, limit.id) if _limit_waits(run, limit) else None
    return None


def _clamp(run: _Run, index: int, now: datetime, refusal: Refusal) -> None:
    """Admitted with the room left when it covers the logged cost (module docstring)."""
    cost = run.records[index].cost
    for _ in range(run.budget_count + 1):
        room = refusal.available
        if not room or room < cost:
            why = f"clamp: {room.decimal_str()} USD left, below its logged cost {cost.decimal_str()} USD"
            _refuse(run, index, now, refusal.budget_id, f"{_budget_reason(refusal)}; {why}")
            return
        result = _reserve(run, index, room)
        if isinstance(result, Reservation):
            _admit(run, index, now, result, "clamped", refusal.budget_id, "reserved what was left")
            return
        if isinstance(result, LimitRefusal):
            _refuse(run, index, now, result.limit.id, _limit_reason(result), by_limit=True)
            return
        refusal = result
    _refuse(run, index, now, refusal.budget_id, _budget_reason(refusal))


# -- waiting ---------------------------------------------------------------------------------------


def _line_key(refusal: Refusal | LimitRefusal) -> str:
    if isinstance(refusal, LimitRefusal):
        return f"{_LIMIT_LINE}{refusal.limit.id}|{refusal.instance}"
    return f"{refusal.budget_id}|{instance_key(refusal.instance)}"


def _by(refusal: Refusal | LimitRefusal) -> str:
    return refusal.limit.id if isinstance(refusal, LimitRefusal) else refusal.budget_id


def _may_fit(refusal: Refusal | LimitRefusal) -> bool:
    """Whether waiting can admit it (the guard's ``_may_fit``)."""
    if isinstance(refusal, LimitRefusal) or refusal.paced:
        return refusal.retry_after is not None
    return refusal.needed <= refusal.limit or not refusal.limit


def _wait(run: _Run, index: int, now: datetime, refusal: Refusal | LimitRefusal) -> None:
    waiter = _Waiter(index, now, now + run.max_wait, _by(refusal), isinstance(refusal, LimitRefusal))
    _join(run, _line_key(refusal), waiter)
    _wake_for(run, now, waiter, refusal)


def _join(run: _Run, key: str, waiter: _Waiter) -> None:
    run.lines.setdefault(key, deque()).append(waiter)
    heapq.heappush(run.heap, (waiter.deadline, _WAKE, waiter.index))


def _wake_for(run: _Run, now: datetime, waiter: _Waiter, refusal: Refusal | LimitRefusal) -> None:
    """A retry when the refusal says room comes back (a reset, a pace step, a bucket leaving
    a rate limit's window), if that is before the waiter gives up."""
    if refusal.retry_after is None:
        return
    if isinstance(refusal, LimitRefusal) and refusal.limit.kind == "concurrency":
        return  # room comes back only when a request ends, which retries the heads anyway
    if isinstance(refusal, Refusal) and not refusal.paced and refusal.resets_at is not None:
        at = refusal.resets_at  # exact: the window's end
    else:
        at = now + timedelta(seconds=refusal.retry_after)
    at = max(at, now + _TICK)
    if at <= waiter.deadline:
        heapq.heappush(run.heap, (at, _WAKE, waiter.index))


def _serve_lines(run: _Run, now: datetime) -> None:
    """Heads retry (in the order the lines formed) until none moves; then waiters whose
    ``max_wait`` is up give up (a head that gives up lets the next one try)."""
    while True:
        moved = False
        for key in list(run.lines):
            line = run.lines.get(key)
            while line:
                head = line[0]
                result = _reserve(run, head.index, run.estimates[head.index])
                if isinstance(result, Reservation):
                    line.popleft()
                    _admit(run, head.index, now, result, "delayed", head.by, "waited for room", head.by_limit)
                    moved = True
                    continue
                new_key = _line_key(result)
                if not _may_fit(result):  # the limit is below this request: it never fits
                    line.popleft()
                    _refuse(
                        run, head.index, now, _by(result), _reason(result), isinstance(result, LimitRefusal)
                    )
                    moved = True
                    continue
                if new_key != key:  # refused by another budget or limit: join that line's back
                    line.popleft()
                    head.by, head.by_limit = _by(result), isinstance(result, LimitRefusal)
                    run.lines.setdefault(new_key, deque()).append(head)
                    moved = True
                _wake_for(run, now, head, result)
                break
            if not line:
                run.lines.pop(key, None)
        gave_up = _give_up(run, now)
        if not moved and not gave_up:
            return


def _give_up(run: _Run, now: datetime) -> bool:
    gone = False
    for key in list(run.lines):
        line = run.lines[key]
        for waiter in [w for w in line if w.deadline <= now]:
            line.remove(waiter)
            waited = (now - waiter.arrived).total_seconds()
            why = f"waited {waited:g} s (max_wait) without room"
            _refuse(run, waiter.index, now, waiter.by, why, waiter.by_limit)
            gone = True
        if not line:
            del run.lines[key]
    return gone


# -- words and totals ------------------------------------------------------------------------------


def _budget_reason(refusal: Refusal) -> str:
    what = "paced" if refusal.paced else "exceeded"
    return (
        f"budget {refusal.budget_id} {what} ({refusal.label}): spent {refusal.spent.decimal_str()} + reserved "
        f"{refusal.reserved.decimal_str()} + needed {refusal.needed.decimal_str()} > limit "
        f"{refusal.limit.decimal_str()} USD"
    )


def _limit_reason(refusal: LimitRefusal) -> str:
    limit = refusal.limit
    return (
        f"rate limit ({limit.label(refusal.instance)}): holds {limit.amount_text(refusal.used)}, "
        f"needs {limit.amount_text(refusal.requested)}"
    )


def _reason(refusal: Refusal | LimitRefusal) -> str:
    return _limit_reason(refusal) if isinstance(refusal, LimitRefusal) else _budget_reason(refusal)


def _totals(budget: Budget, outcomes: Sequence[Outcome]) -> BudgetTotals:
    totals = BudgetTotals(budget.id, budget.label(), budget.limit, budget.on_exceed)
    spent = avoided = 0
    windows: dict[datetime, int] = {}
    for outcome in outcomes:
        if not budget.matches(outcome.record.attributes):
            continue
        totals.matched += 1
        if budget.id in outcome.budgets:
            totals.admitted += 1
            by_it = outcome.by == budget.id and not outcome.by_limit
            totals.delayed += int(outcome.status == "delayed" and by_it)
            totals.clamped += int(outcome.status == "clamped" and by_it)
            spent += outcome.cost.nanos
            start = budget.window.bounds(outcome.started_at)[0]
            windows[start] = windows.get(start, 0) + outcome.cost.nanos
        elif outcome.status == "refused" and outcome.by == budget.id and not outcome.by_limit:
            totals.refused += 1
            avoided += outcome.record.cost.nanos
    totals.spent, totals.avoided = Money(spent), Money(avoided)
    totals.windows = {start: Money(nanos) for start, nanos in sorted(windows.items())}
    return totals
