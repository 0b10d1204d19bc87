"""Reservations, the hot path: reserve, settle, release, and the expiry of leases.

Each is one call of a server-side function (schema.sql), so one round trip, and its row locks
are held only while that statement runs: ``sg_reserve`` (the request's row, one conditional
upsert per budget line in lock order, one take per rate limit instance; a refusal undoes its
own writes), ``sg_end`` (settle or release: the request's row, its lines, its limits' give
back), ``sg_expire`` (``FOR UPDATE SKIP LOCKED``, so concurrent expirers never charge one
request twice). Python plans everything it can beforehand (``_plan``: matching, windows, pace
allowances, limit buckets) and interprets the answer: refusals, thresholds (one more
statement, ``sg_alert``, only when one is crossed), ``remaining``.

asyncio callers run the same ops on the loop's pool, each in a task of its own: a cancelled
``asettle``/``arelease`` still writes, and a reservation made for a cancelled ``areserve`` is
released.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import Any, Final, NamedTuple

from spendgate.alerts.events import threshold_event_of
from spendgate.budgets import Attributes, Budget, ChargedLine, charged_lines, parse_instance_key
from spendgate.ledger.base import (
    BudgetLine,
    Event,
    LedgerUnavailableError,
    Refusal,
    ReleaseOutcome,
    ReleaseStatus,
    RequestIdReusedError,
    RequestRecord,
    Reservation,
    SettleOutcome,
    ThresholdCrossed,
    UnknownReservationError,
)
from spendgate.ledger.postgres.codec import attrs_of, dt, lines_of, tags_list, us
from spendgate.ledger.postgres.connection import Body, Q, ServerUnavailableError
from spendgate.ledger.postgres.core import LedgerCore, Op, fresh
from spendgate.ledger.postgres.outbox import event_row
from spendgate.ledger.sqlite.core import Catalog
from spendgate.ledger.sqlite.limits import NO_LIMITS, LimitCheck, LimitPlan, plan_limits
from spendgate.limits import WINDOWED, Demand, LimitRefusal, seconds_until_fits, window_sum
from spendgate.money import Money

__all__ = ["ReservationsMixin"]

log = logging.getLogger("spendgate.ledger")

# Arrays travel as JSON text: psycopg dumps lists in Python, a JSON string costs a C call.
_SQL_RESERVE = """
    SELECT sg_reserve(%s::bigint, %s::bigint, %s, %s::bigint, %s::bigint, %s::bigint, %s::jsonb,
                      %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb, %s::boolean)"""
_SQL_END = """
    SELECT sg_end(%s, %s, %s::bigint, %s::bigint, %s, %s, %s, %s, %s::jsonb)"""
_SQL_EXPIRE = "SELECT sg_expire(%s::bigint, %s::integer)"
# sg_alert, and the alert outbox's events of the thresholds it sent, in the same statement.
_SQL_ALERT = """
    SELECT sg_alert_events(%s, %s::bigint, %s, %s::integer[], %s::bigint, %s::bigint, %s, %s::bigint,
                           %s::jsonb)"""
_SQL_REQUEST = """
    SELECT state, estimate, started_at, expires_at, lines, dim_key, dim_user, dim_team, dim_project,
           dim_customer, dim_model, tags
    FROM requests WHERE request_id = %s"""
_STALE_TRIES: Final = 20  # plans made again because budgets or limits changed meanwhile
_ENDED: Final = {"settled": "already_settled", "expired": "expired", "released": "released"}


class _Plan(NamedTuple):
    """A reservation worked out before the round trip."""

    catalog: Catalog
    request_id: str
    attributes: Attributes
    estimate: int
    now: datetime
    expires: datetime
    matched: list[ChargedLine]
    checks: list[LimitCheck]
    static: LimitRefusal | None  # a prompt_tokens refusal, decided without any count
    params: tuple[Any, ...]
    demand: Demand | None


class _Crossing(NamedTuple):
    budget: Budget
    key: str
    start: int
    end: int | None
    thresholds: list[int]
    spent: int
    limit: int
    request_id: str


class ReservationsMixin(LedgerCore):
    """``Reservations`` over PostgreSQL: one function call per reserve, settle or release."""

    def reserve(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        demand: Demand | None = None,
    ) -> Reservation | Refusal | LimitRefusal:
        now = self.clock.now()
        op, _ = self._reserve_op(request_id, attributes, estimate, lease, now, demand)
        expiry = self._expiry_op(now)
        if expiry is not None:
            outage = self._run(expiry)
            if isinstance(outage, ServerUnavailableError):
                # Down: answer now (fail closed or open), not after waiting out a second timeout.
                down: Reservation = op.failed(outage)
                return down
        result: Reservation | Refusal | LimitRefusal = self._run(op)
        return result

    async def areserve(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        demand: Demand | None = None,
    ) -> Reservation | Refusal | LimitRefusal:
        """``reserve`` on the loop's pool. Cancelled after its reservation was made, the
        reservation is released (the task runs on; its result goes to ``_orphan``)."""
        now = self.clock.now()
        op, created = self._reserve_op(request_id, attributes, estimate, lease, now, demand)
        expiry = self._expiry_op(now)
        task = self._spawn(self._areserve(op, expiry))
        try:
            result: Reservation | Refusal | LimitRefusal = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._orphan(t, created))
            raise
        return result

    async def _areserve(self, op: Op, expiry: Op | None) -> Reservation | Refusal | LimitRefusal:
        if expiry is not None:
            outage = await self._arun(expiry)
            if isinstance(outage, ServerUnavailableError):
                down: Reservation = op.failed(outage)
                return down
        result: Reservation | Refusal | LimitRefusal = await self._arun(op)
        return result

    def _orphan(self, task: asyncio.Task[Any], created: list[bool]) -> None:
        """The result of an ``areserve`` whose caller was cancelled: release what it made."""
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if not created[0] or not isinstance(result, Reservation) or result.unrecorded:
            return
        release = self._spawn(self._arun(self._release_op(result.request_id)))
        release.add_done_callback(_log_failure(f"release of abandoned reservation {result.request_id}"))

    def _reserve_op(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        now: datetime,
        demand: Demand | None,
    ) -> tuple[Op, list[bool]]:
        est = self._amount(estimate, "estimate")
        delta = self._lease(lease)
        if demand is not None and not isinstance(demand, Demand):
            raise TypeError(f"demand must be a Demand, got {type(demand).__name__}")
        events: list[Event] = []
        first = self._plan(self._catalog, request_id, attributes, est, now, now + delta, demand)
        created = [False]  # by this op (not a retry that found the id's reservation open)

        def body() -> Body[Reservation | Refusal | LimitRefusal]:
            created[0] = False
            plan = first
            for _ in range(_STALE_TRIES):
                if self._catalog.newer_than(plan.catalog):  # another thread loaded a newer one
                    plan = self._replan(plan, self._catalog)
                rows = yield Q(_SQL_RESERVE, plan.params)
                answer: dict[str, Any] = rows[0][0]
                status = answer["s"]
                if status == "stale":  # budgets or limits changed since the plan: load, match again
                    catalog = yield from self._catalog_body(events)
                    plan = self._replan(plan, catalog)
                    continue
                if status == "ok":
                    created[0] = True
                    return Reservation(
                        request_id,
                        Money(est),
                        now,
                        plan.expires,
                        tuple(BudgetLine(b.id, key, w[0], w[1]) for b, key, w in plan.matched),
                    )
                if status == "exists":
                    rows = yield Q(_SQL_REQUEST, (request_id,))
                    return self._reuse(rows[0], request_id, attributes, est)
                if status == "budget":
                    budget, key, window = plan.matched[answer["i"]]
                    return self._refusal(request_id, budget, key, int(answer["spent"]),
                                         int(answer["reserved"]), budget.limit.nanos, est, window, now)  # fmt: skip
                return self._limit_refusal(plan, answer)
            raise LedgerUnavailableError(
                f"spendgate ledger {self.path}: budgets or limits changed {_STALE_TRIES} times during "
                f"one reservation of {request_id!r}; try again"
            )

        def done(result: Reservation | Refusal | LimitRefusal) -> Reservation | Refusal | LimitRefusal:
            self._deliver(events)
            return result

        def failed(exc: LedgerUnavailableError) -> Reservation:
            return self._unrecorded_reservation(exc, self.path, request_id, estimate, now, now + delta)

        return Op(fresh(events, body), done, failed), created

    def _replan(self, plan: _Plan, catalog: Catalog) -> _Plan:
        return self._plan(
            catalog, plan.request_id, plan.attributes, plan.estimate, plan.now, plan.expires, plan.demand
        )

    def _plan(
        self,
        catalog: Catalog,
        request_id: str,
        attributes: Attributes,
        est: int,
        now: datetime,
        expires: datetime,
        demand: Demand | None,
    ) -> _Plan:
        matched = charged_lines(catalog.order, attributes, now)
        lines = [(b.id, key, us(w[0]), None if w[1] is None else us(w[1])) for b, key, w in matched]
        limits: LimitPlan = NO_LIMITS
        if catalog.limit_order:
            limits = plan_limits(catalog, request_id, attributes, demand or Demand(cost=est), now)
        checks = [c for c in limits.checks if isinstance(c, LimitCheck)]
        static = next((c for c in limits.checks if isinstance(c, LimitRefusal)), None)
        # Rows are locked in one order by every transaction (schema.sql): no deadlock.
        order = sorted(
            range(len(lines)), key=lambda i: (lines[i][1] == "", lines[i][0], lines[i][2], lines[i][1])
        )
        limit_of = [b.allowance(now, *w) for b, _, w in matched]  # paced: its allowance by now
        holds = [[lines[i][0], lines[i][2], lines[i][1], lines[i][3], limit_of[i], i] for i in order]
        takes = [
            [0, c.params[0], c.params[1], None, c.params[2], None, c.params[3]] if c.kind == 0
            else [1, c.params[0], c.params[1], c.params[2], c.params[3], c.params[4], c.params[5]]
            for c in checks
        ]  # fmt: skip
        a = attributes
        params = (
            catalog.version, catalog.limits_version, request_id, est, us(now), us(expires),
            _json(lines), a.key, a.user, a.team, a.project, a.customer, a.model,
            _json(tags_list(a.tags)), limits.takes, _json(holds), _json(takes), static is not None,
        )  # fmt: skip
        return _Plan(
            catalog, request_id, attributes, est, now, expires, matched, checks, static, params, demand
        )

    def _limit_refusal(self, plan: _Plan, answer: dict[str, Any]) -> LimitRefusal:
        index = answer.get("j")
        if index is None:
            assert plan.static is not None
            return plan.static
        check = plan.checks[int(index)]
        limit = check.entry.limit
        if check.kind == 0:
            _, key, need, amount = check.params
            retry = None if need > amount else 0.0  # room frees when one in flight ends
            return LimitRefusal(plan.request_id, limit, key, int(answer["detail"]), need, retry)
        _, key, bucket, need, _, amount = check.params
        buckets = {int(b): int(n) for b, n in answer["detail"]}
        retry = seconds_until_fits(buckets, bucket, limit.width_us, plan.now, amount, need)
        return LimitRefusal(plan.request_id, limit, key, window_sum(buckets, bucket), need, retry)

    @staticmethod
    def _reuse(row: tuple[Any, ...], request_id: str, attributes: Attributes, est: int) -> Reservation:
        state, estimate, started, expires, lines = row[:5]
        if state != "open":
            raise RequestIdReusedError(
                f"request id {request_id!r} was already {state}; use a new id per request"
            )
        if attrs_of(row[5:]) != attributes or estimate != est:
            raise RequestIdReusedError(
                f"request id {request_id!r} already holds a reservation with different attributes or "
                "estimate; use a new id per request"
            )
        return Reservation(request_id, Money(estimate), dt(started), dt(expires), lines_of(lines))

    # -- endings ---------------------------------------------------------------------------
    def settle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        outcome: SettleOutcome = self._run(self._settle_op(request_id, actual, record, used))
        self._maybe_purge()
        return outcome

    async def asettle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        """``settle`` in a task of its own, started now: a cancelled caller does not skip it."""
        op = self._settle_op(request_id, actual, record, used)
        outcome: SettleOutcome = await self._shielded(op, f"settlement of {request_id}")
        self._maybe_apurge()
        return outcome

    async def _shielded(self, op: Op, what: str) -> Any:
        task = self._spawn(self._arun(op))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_log_failure(what))
            raise

    def _settle_op(
        self, request_id: str, actual: Money, record: RequestRecord | None, used: Demand | None
    ) -> Op:
        act = self._amount(actual, "actual")
        if used is not None and not isinstance(used, Demand):
            raise TypeError(f"used must be a Demand, got {type(used).__name__}")
        now = self.clock.now()
        status, model, usage, breakdown = "ok", None, None, None
        if record is not None:
            parts = record.breakdown_strings()
            status, model = record.status, record.model
            usage = json.dumps(dict(record.usage), sort_keys=True) if record.usage else None
            breakdown = json.dumps(parts, sort_keys=True) if parts else None
        used_json = None if used is None else json.dumps({k: used.of(k) for k in sorted(WINDOWED)})
        params = (request_id, "settled", act, us(now), status, model, usage, breakdown, used_json)
        events: list[Event] = []

        def body() -> Body[SettleOutcome]:
            rows = yield Q(_SQL_END, params)
            answer: dict[str, Any] = rows[0][0]
            state = answer["s"]
            if state == "unknown":
                if request_id in self._unrecorded:
                    return SettleOutcome(request_id, "unrecorded", actual, actual, actual)
                raise UnknownReservationError(f"no reservation for request id {request_id!r}")
            if state != "ok":
                charged = Money(answer.get("cost") or 0)
                return SettleOutcome(request_id, _ENDED[state], charged, Money(answer["est"]), actual)  # type: ignore[arg-type]
            catalog = yield from self._catalog_of(answer, events)
            remaining = yield from self._charged(catalog, answer["lines"], act, request_id, now, events)
            left = None if remaining is None else Money(max(remaining, 0))
            return SettleOutcome(request_id, "settled", actual, Money(answer["est"]), actual, left)

        def done(outcome: SettleOutcome) -> SettleOutcome:
            if outcome.status == "settled":
                self._warn_overshoot(request_id, actual, outcome.estimate)
            self._deliver(events)
            return outcome

        def failed(exc: LedgerUnavailableError) -> SettleOutcome:
            return self._unrecorded_settle(exc, self.path, request_id, actual)

        return Op(fresh(events, body), done, failed)

    def _catalog_of(self, answer: dict[str, Any], events: list[Event]) -> Body[Catalog]:
        """The catalog at the versions an answer reports (loaded when this process's is older)."""
        catalog = self._catalog
        if (int(answer["bv"]), int(answer["lv"])) != (catalog.version, catalog.limits_version):
            catalog = yield from self._catalog_body(events)
        return catalog

    def _charged(
        self,
        catalog: Catalog,
        lines: list[list[Any]],
        act: int,
        request_id: str,
        now: datetime,
        events: list[Event],
    ) -> Body[int | None]:
        """Thresholds the charged lines crossed (announced once: ``sg_alert``), and the least
        ``limit - spent - reserved`` over them (None: no budget line)."""
        remaining: int | None = None
        crossings: list[_Crossing] = []
        for line in lines:
            budget_id, key, start, end, spent, reserved, alerted = line[:7]
            budget = catalog.budgets.get(budget_id)
            if budget is None or spent is None:
                continue  # deleted: charged to its kept spend, no longer announced
            limit = budget.limit.nanos
            if not budget.soft:  # a soft budget bounds nothing
                left = limit - spent - reserved
                remaining = left if remaining is None else min(remaining, left)
            charged = act if len(line) < 9 else int(line[8])
            if charged <= 0:
                continue
            crossed = self._crossed(budget.thresholds, alerted, spent, limit)
            if crossed:
                rid = request_id if len(line) < 8 else str(line[7])
                crossings.append(_Crossing(budget, key, start, end, crossed, spent, limit, rid))
        for c in crossings:
            heard = {
                threshold: ThresholdCrossed(
                    budget_id=c.budget.id,
                    label=c.budget.label(c.key),
                    instance=parse_instance_key(c.key),
                    threshold=threshold,
                    spent=Money(c.spent),
                    limit=Money(c.limit),
                    window_start=dt(c.start),
                    window_end=None if c.end is None else dt(c.end),
                    request_id=c.request_id,
                )
                for threshold in c.thresholds
            }
            # Each threshold's outbox event goes with the call; the server adds those it sends.
            # An event's id is its crossing's, so a rerun of this statement adds none twice.
            outbox = [event_row(threshold_event_of(heard[t], now, soft=c.budget.soft)) for t in c.thresholds]
            rows = yield Q(_SQL_ALERT, (c.budget.id, c.start, c.key, c.thresholds, c.spent, c.limit,
                                        c.request_id, us(now), _json(outbox)))  # fmt: skip
            for threshold in rows[0][0]:  # the ones another process had not sent first
                events.append(heard[threshold])
        return remaining

    def release(self, request_id: str) -> ReleaseOutcome:
        outcome: ReleaseOutcome = self._run(self._release_op(request_id))
        return outcome

    async def arelease(self, request_id: str) -> ReleaseOutcome:
        """``release`` in a task of its own, started now: a cancelled caller does not skip it."""
        outcome: ReleaseOutcome = await self._shielded(
            self._release_op(request_id), f"release of {request_id}"
        )
        return outcome

    def _release_op(self, request_id: str) -> Op:
        params = (request_id, "released", 0, us(self.clock.now()), None, None, None, None, None)

        def body() -> Body[ReleaseOutcome]:
            rows = yield Q(_SQL_END, params)
            answer: dict[str, Any] = rows[0][0]
            state = answer["s"]
            if state == "unknown":
                if request_id in self._unrecorded:
                    return ReleaseOutcome(request_id, "unrecorded")
                raise UnknownReservationError(f"no reservation for request id {request_id!r}")
            if state == "ok":
                return ReleaseOutcome(request_id, "released")
            status: ReleaseStatus = "already_released" if state == "released" else state
            return ReleaseOutcome(request_id, status)

        def failed(exc: LedgerUnavailableError) -> ReleaseOutcome:
            return self._unrecorded_release(exc, self.path, request_id)

        return Op(body, lambda outcome: outcome, failed)

    # -- leases -------------------------------------------------------------------------
    def expire_leases(self) -> int:
        total = 0
        now = self.clock.now()
        while True:  # bounded: each round ends a batch of open requests, or stops
            count = self._expire_round(now, 500)
            total += count
            if count < 500:
                return total

    def _expire_round(self, now: datetime, batch: int) -> int:
        events: list[Event] = []
        count: int = self._execute(fresh(events, lambda: self._expire_body(now, events, batch)), txn=False)
        self._deliver(events)
        return count

    def _expiry_op(self, now: datetime) -> Op | None:
        """The opportunistic lease expiry, once per ``expiry_interval`` per process."""
        if now < self._next_expiry:
            return None
        self._next_expiry = now + self.expiry_interval
        events: list[Event] = []

        def done(count: int) -> int:
            self._deliver(events)
            return count

        def failed(exc: LedgerUnavailableError) -> int | LedgerUnavailableError:
            log.warning("spendgate: lease expiry in %s skipped: %s", self.path, exc)
            return exc  # the reserve that follows answers at once when the server is down

        return Op(fresh(events, lambda: self._expire_body(now, events, 64)), done, failed)

    def _expire_body(self, now: datetime, events: list[Event], batch: int) -> Body[int]:
        rows = yield Q(_SQL_EXPIRE, (us(now), batch))
        answer: dict[str, Any] = rows[0][0]
        expired = answer["expired"] or []
        if not expired:
            return 0
        catalog = self._catalog
        if answer["lines"]:
            catalog = yield from self._catalog_body(events)
            yield from self._charged(catalog, answer["lines"], 0, "", now, events)
        for request_id, estimate in expired:
            log.warning("spendgate: lease of request %s expired unsettled; charged its reserved %s",
                        request_id, Money(estimate))  # fmt: skip
        return len(expired)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _log_failure(what: str) -> Any:
    def check(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("spendgate: %s failed: %s", what, task.exception())

    return check
