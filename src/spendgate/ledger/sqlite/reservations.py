"""Reservations, the hot path: reserve, settle, release, and the expiry of leases.

A reserve checks the budgets' and limits' versions, inserts the request's row, and
runs one conditional upsert per budget line, then one per rate limit instance (a
line or limit that cannot take the request undoes the request's own writes and
refuses); a settle is one ``UPDATE ... RETURNING`` of the request plus one per
line (and per limit instance with something to give back). Statements are constant
text, so sqlite3's statement cache prepares each once. Everything that can be worked
out before the write lock (matching, encoding, pacing, buckets) is, in ``_plan``.
A request that matches no limit pays for limits only the version read it shares
with the budgets and a NULL column.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from spendgate.alerts.events import threshold_event_of
from spendgate.budgets import Attributes, ChargedLine, charged_lines, parse_instance_key
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
from spendgate.ledger.rows import tokens_of
from spendgate.ledger.sqlite.codec import attrs_of, dt, public_lines, tags_json, us
from spendgate.ledger.sqlite.connection import Rollback
from spendgate.ledger.sqlite.core import Catalog, LedgerCore, Op, fresh
from spendgate.ledger.sqlite.limits import NO_LIMITS, LimitPlan, give_back, plan_limits, take_limits
from spendgate.ledger.sqlite.outbox import add_events_in
from spendgate.limits import Demand, LimitRefusal
from spendgate.money import Money

__all__ = ["ReservationsMixin"]

log = logging.getLogger("spendgate.ledger")

# -- statements (constant text, so sqlite3's statement cache prepares each once) -----------

_SQL_OPEN = """
    INSERT INTO requests (request_id, state, estimate, started_at, expires_at, lines,
                          dim_key, dim_user, dim_team, dim_project, dim_customer, dim_model, tags, takes)
    VALUES (?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (request_id) DO NOTHING"""
# Admit into one line: insert the row or add to it, only while spent + reserved + estimate <= limit
# (a paced budget's :limit is its allowance by now).
_SQL_HOLD = """
    INSERT INTO spend (budget_id, window_start, instance, window_end, reserved)
    SELECT :budget, :start, :instance, :end, :estimate WHERE :estimate <= :limit
    ON CONFLICT (budget_id, window_start, instance) DO UPDATE
        SET reserved = reserved + excluded.reserved
        WHERE spent + reserved + excluded.reserved <= :limit"""
SQL_LINE = "SELECT spent, reserved FROM spend WHERE budget_id = ? AND window_start = ? AND instance = ?"
_SQL_SETTLE = """
    UPDATE requests SET state = 'settled', cost = ?, finished_at = ?, status = ?, model = ?, usage = ?,
                        breakdown = ?, input_tokens = ?, output_tokens = ?
    WHERE request_id = ? AND state = 'open'
    RETURNING estimate, lines, takes"""
_SQL_RELEASE = """
    UPDATE requests SET state = 'released', cost = 0, finished_at = ?
    WHERE request_id = ? AND state = 'open'
    RETURNING estimate, lines, takes"""
_SQL_EXPIRE = """
    UPDATE requests SET state = 'expired', cost = estimate, finished_at = ?, status = 'expired'
    WHERE request_id = ? AND state = 'open'
    RETURNING estimate, lines, takes"""
_SQL_ENDED = "SELECT state, estimate, cost FROM requests WHERE request_id = ?"
_SQL_FORGET = "DELETE FROM requests WHERE request_id = ? AND state = 'open'"
_SQL_CHARGE = """
    UPDATE spend SET reserved = reserved - ?, spent = spent + ?
    WHERE budget_id = ? AND window_start = ? AND instance = ?
    RETURNING spent, reserved, alerted"""
_SQL_RELEASE_LINE = """
    UPDATE spend SET reserved = reserved - ?
    WHERE budget_id = ? AND window_start = ? AND instance = ?"""
_SQL_ALERT = """
    INSERT INTO alerts (budget_id, window_start, instance, threshold, spent, limit_nanos, request_id, sent_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT DO NOTHING"""
_SQL_DUE = """
    SELECT request_id FROM requests
    WHERE state = 'open' AND expires_at <= ? ORDER BY expires_at LIMIT ?"""


class _Plan(NamedTuple):
    """A reservation worked out before the write lock is taken."""

    catalog: Catalog
    request_id: str
    attributes: Attributes
    estimate: int
    now: datetime
    expires: datetime
    matched: list[ChargedLine]
    row: tuple[Any, ...]
    holds: list[dict[str, Any]]
    demand: Demand | None
    limits: LimitPlan


class ReservationsMixin(LedgerCore):
    """``Reservations`` over SQLite: the sync calls run a transaction each, the async ones
    join the event loop's group commit."""

    def reserve(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        demand: Demand | None = None,
    ) -> Reservation | Refusal | LimitRefusal:
        now = self.clock.now()
        op = self._reserve_op(request_id, attributes, estimate, lease, now, demand)
        expiry = self._expiry_op(now)
        if expiry is not None:
            self._run(expiry)
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
        """``reserve`` through the group commit: the event loop never waits for the lock."""
        now = self.clock.now()
        op = self._reserve_op(request_id, attributes, estimate, lease, now, demand)
        expiry = self._expiry_op(now)
        result: Reservation | Refusal | LimitRefusal = await self._arun(
            [op] if expiry is None else [expiry, op]
        )
        return result

    def _reserve_op(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        now: datetime,
        demand: Demand | None,
    ) -> Op:
        est = self._amount(estimate, "estimate")
        delta = self._lease(lease)
        if demand is not None and not isinstance(demand, Demand):
            raise TypeError(f"demand must be a Demand, got {type(demand).__name__}")
        events: list[Event] = []
        # Match and encode before taking the write lock; redone inside only if the catalog changed.
        plan = self._plan(self._catalog, request_id, attributes, est, now, now + delta, demand)

        def done(result: Reservation | Refusal | LimitRefusal) -> Reservation | Refusal | LimitRefusal:
            self._deliver(events)
            return result

        def failed(exc: LedgerUnavailableError) -> Reservation:
            return self._unrecorded_reservation(exc, self.path, request_id, estimate, now, now + delta)

        created = False  # by this op (not a retry that found the id's reservation already open)

        def body(conn: sqlite3.Connection) -> Reservation | Refusal | LimitRefusal:
            nonlocal created
            created = False
            result = self._reserve_in(conn, plan, events)  # reuse and refusal leave by Rollback
            created = True
            return result

        def orphan(result: Reservation | Refusal | LimitRefusal) -> None:
            if created:
                self._release_orphan(result)

        return Op(fresh(events, body), done, failed, orphan)

    def _expiry_op(self, now: datetime) -> Op | None:
        """The opportunistic lease expiry, once per ``expiry_interval`` per process."""
        if now < self._next_expiry:
            return None
        self._next_expiry = now + self.expiry_interval
        events: list[Event] = []

        def done(count: int) -> int:
            self._deliver(events)
            return count

        def failed(exc: LedgerUnavailableError) -> int:
            log.warning("spendgate: lease expiry in %s skipped: %s", self.path, exc)
            return 0

        return Op(fresh(events, lambda conn: self._expire_in(conn, now, events, 64)), done, failed)

    def _release_orphan(self, result: Reservation | Refusal | LimitRefusal) -> None:
        """A reservation this call made, whose caller was cancelled meanwhile: release it."""
        if not isinstance(result, Reservation) or result.unrecorded:
            return
        op = self._release_op(result.request_id)
        self._submit_unwatched(op.body, f"release of abandoned reservation {result.request_id}", op.finish)

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
        limits = NO_LIMITS
        if catalog.limit_order:
            limits = plan_limits(catalog, request_id, attributes, demand or Demand(cost=est), now)
        a = attributes
        row = (request_id, est, us(now), us(expires), json.dumps(lines, separators=(",", ":")), a.key,
               a.user, a.team, a.project, a.customer, a.model, tags_json(a.tags), limits.takes)  # fmt: skip
        holds = [
            {"budget": line[0], "start": line[2], "instance": line[1], "end": line[3], "estimate": est,
             "limit": budget.allowance(now, *window)}
            for line, (budget, _, window) in zip(lines, matched, strict=True)
        ]  # fmt: skip
        return _Plan(catalog, request_id, attributes, est, now, expires, matched, row, holds, demand, limits)

    def _reserve_in(
        self, conn: sqlite3.Connection, plan: _Plan, events: list[Event]
    ) -> Reservation | Refusal | LimitRefusal:
        catalog = self._sync(conn, events)
        if catalog is not plan.catalog:  # budgets or limits changed since the plan: match again
            plan = self._plan(
                catalog, plan.request_id, plan.attributes, plan.estimate, plan.now, plan.expires, plan.demand
            )
        if conn.execute(_SQL_OPEN, plan.row).rowcount == 0:
            raise Rollback(self._reuse(conn, plan.request_id, plan.attributes, plan.estimate))
        for i, (hold, (budget, key, window)) in enumerate(zip(plan.holds, plan.matched, strict=True)):
            if conn.execute(_SQL_HOLD, hold).rowcount == 0:
                row = conn.execute(SQL_LINE, (hold["budget"], hold["start"], key)).fetchone()
                spent, reserved = row if row is not None else (0, 0)
                self._forget(conn, plan, i)
                raise Rollback(
                    self._refusal(
                        plan.request_id,
                        budget,
                        key,
                        spent,
                        reserved,
                        budget.limit.nanos,  # a paced refusal says what its allowance is by now
                        plan.estimate,
                        window,
                        plan.now,
                    )
                )
        if plan.limits.checks:  # after the budgets, so a budget's refusal comes first (as in memory)
            refused = take_limits(conn, plan.limits, plan.request_id, plan.now)
            if refused is not None:
                self._forget(conn, plan, len(plan.holds))
                raise Rollback(refused)
        return Reservation(
            plan.request_id,
            Money(plan.estimate),
            plan.now,
            plan.expires,
            tuple(BudgetLine(b.id, key, w[0], w[1]) for b, key, w in plan.matched),
        )

    @staticmethod
    def _forget(conn: sqlite3.Connection, plan: _Plan, held: int) -> None:
        """Undo a refused reserve's own writes: its row and its first ``held`` budget holds
        (here, not by rolling the transaction back: in a group commit the transaction holds
        other requests' writes too)."""
        conn.execute(_SQL_FORGET, (plan.request_id,))
        for done in plan.holds[:held]:
            conn.execute(_SQL_RELEASE_LINE, (plan.estimate, done["budget"], done["start"], done["instance"]))

    def _reuse(
        self, conn: sqlite3.Connection, request_id: str, attributes: Attributes, est: int
    ) -> Reservation:
        row = conn.execute(
            "SELECT state, estimate, started_at, expires_at, lines, dim_key, dim_user, dim_team, dim_project, "
            "dim_customer, dim_model, tags FROM requests WHERE request_id = ?",
            (request_id,),
        ).fetchone()
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
        return Reservation(request_id, Money(estimate), dt(started), dt(expires), public_lines(lines))

    def settle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        outcome: SettleOutcome = self._run(self._settle_op(request_id, actual, record, used))
        self._maybe_purge()
        return outcome

    async def asettle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        """``settle`` through the group commit (which also schedules the retention purge)."""
        outcome: SettleOutcome = await self._arun([self._settle_op(request_id, actual, record, used)])
        return outcome

    def _settle_op(
        self, request_id: str, actual: Money, record: RequestRecord | None, used: Demand | None
    ) -> Op:
        act = self._amount(actual, "actual")
        if used is not None and not isinstance(used, Demand):
            raise TypeError(f"used must be a Demand, got {type(used).__name__}")
        now = self.clock.now()
        if record is None:
            values: tuple[Any, ...] = (act, us(now), "ok", None, None, None, None, None, request_id)
        else:
            breakdown = record.breakdown_strings()
            values = (
                act,
                us(now),
                record.status,
                record.model,
                json.dumps(dict(record.usage), sort_keys=True) if record.usage else None,
                json.dumps(breakdown, sort_keys=True) if breakdown else None,
                *tokens_of(record.usage),
                request_id,
            )
        events: list[Event] = []

        def done(outcome: SettleOutcome) -> SettleOutcome:
            if outcome.status == "settled":
                self._warn_overshoot(request_id, actual, outcome.estimate)
            self._deliver(events)
            return outcome

        def failed(exc: LedgerUnavailableError) -> SettleOutcome:
            return self._unrecorded_settle(exc, self.path, request_id, actual)

        body = fresh(events, lambda conn: self._settle_in(conn, request_id, act, values, now, events, used))
        return Op(body, done, failed)

    def _settle_in(
        self,
        conn: sqlite3.Connection,
        request_id: str,
        act: int,
        values: tuple[Any, ...],
        now: datetime,
        events: list[Event],
        used: Demand | None,
    ) -> SettleOutcome:
        catalog = self._sync(conn, events)
        row = conn.execute(_SQL_SETTLE, values).fetchall()
        if not row:
            raise Rollback(self._ended_settle(conn, request_id, act))
        est, lines, takes = row[0]
        remaining = self._charge(conn, catalog, request_id, json.loads(lines), est, act, now, events)
        if takes is not None:
            give_back(conn, catalog, takes, "settled", used, act)
        left = None if remaining is None else Money(max(remaining, 0))
        return SettleOutcome(request_id, "settled", Money(act), Money(est), Money(act), left)

    def _ended_settle(self, conn: sqlite3.Connection, request_id: str, act: int) -> SettleOutcome:
        row = conn.execute(_SQL_ENDED, (request_id,)).fetchone()
        if row is None:
            if request_id in self._unrecorded:
                return SettleOutcome(request_id, "unrecorded", Money(act), Money(act), Money(act))
            raise UnknownReservationError(f"no reservation for request id {request_id!r}")
        status, est, charged = row
        outcome = {"settled": "already_settled", "expired": "expired", "released": "released"}[status]
        return SettleOutcome(request_id, outcome, Money(charged or 0), Money(est), Money(act))  # type: ignore[arg-type]

    def _charge(
        self,
        conn: sqlite3.Connection,
        catalog: Catalog,
        request_id: str,
        lines: list[list[Any]],
        est: int,
        act: int,
        now: datetime,
        events: list[Event],
    ) -> int | None:
        """Move ``est`` out of reserved and ``act`` into spent on every line; announce thresholds.
        Returns the least ``limit - spent - reserved`` over the lines (None: no budget line)."""
        remaining: int | None = None
        for budget_id, key, start, end in lines:
            spent, reserved, alerted = conn.execute(
                _SQL_CHARGE, (est, act, budget_id, start, key)
            ).fetchall()[0]
            budget = catalog.budgets.get(budget_id)
            if budget is None:
                continue
            limit = budget.limit.nanos
            if not budget.soft:  # a soft budget never refuses: it bounds nothing
                left = limit - spent - reserved
                remaining = left if remaining is None else min(remaining, left)
            if act <= 0:
                continue
            crossed = self._crossed(budget.thresholds, alerted, spent, limit)
            if not crossed:
                continue
            sent_at = us(now)
            for threshold in crossed:
                cur = conn.execute(
                    _SQL_ALERT, (budget_id, start, key, threshold, spent, limit, request_id, sent_at)
                )
                if cur.rowcount:  # another process may have sent it first
                    crossing = ThresholdCrossed(
                        budget_id=budget_id,
                        label=budget.label(key),
                        instance=parse_instance_key(key),
                        threshold=threshold,
                        spent=Money(spent),
                        limit=Money(limit),
                        window_start=dt(start),
                        window_end=None if end is None else dt(end),
                        request_id=request_id,
                    )
                    events.append(crossing)
                    # Into the alert outbox in this same transaction: never announced and lost.
                    add_events_in(conn, [threshold_event_of(crossing, now, soft=budget.soft)])
            conn.execute(
                "UPDATE spend SET alerted = max(alerted, ?) WHERE budget_id = ? AND window_start = ? "
                "AND instance = ?",
                (crossed[-1], budget_id, start, key),
            )
        return remaining

    def release(self, request_id: str) -> ReleaseOutcome:
        outcome: ReleaseOutcome = self._run(self._release_op(request_id))
        return outcome

    async def arelease(self, request_id: str) -> ReleaseOutcome:
        """``release`` through the group commit."""
        outcome: ReleaseOutcome = await self._arun([self._release_op(request_id)])
        return outcome

    def _release_op(self, request_id: str) -> Op:
        def failed(exc: LedgerUnavailableError) -> ReleaseOutcome:
            return self._unrecorded_release(exc, self.path, request_id)

        events: list[Event] = []

        def done(outcome: ReleaseOutcome) -> ReleaseOutcome:
            self._deliver(events)  # budget changes heard while giving limits back
            return outcome

        return Op(lambda conn: self._release_in(conn, request_id, events), done, failed)

    def _release_in(self, conn: sqlite3.Connection, request_id: str, events: list[Event]) -> ReleaseOutcome:
        row = conn.execute(_SQL_RELEASE, (us(self.clock.now()), request_id)).fetchall()
        if not row:
            ended = conn.execute(_SQL_ENDED, (request_id,)).fetchone()
            if ended is None:
                if request_id in self._unrecorded:
                    return ReleaseOutcome(request_id, "unrecorded")
                raise UnknownReservationError(f"no reservation for request id {request_id!r}")
            status: ReleaseStatus = "already_released" if ended[0] == "released" else ended[0]
            return ReleaseOutcome(request_id, status)
        est, lines, takes = row[0]
        for budget_id, key, start, _end in json.loads(lines):
            conn.execute(_SQL_RELEASE_LINE, (est, budget_id, start, key))
        if takes is not None:  # only then is the catalog needed: a release without limits reads no version
            give_back(conn, self._sync(conn, events), takes, "released")
        return ReleaseOutcome(request_id, "released")

    # -- leases -------------------------------------------------------------------------
    def expire_leases(self) -> int:
        events: list[Event] = []
        now = self.clock.now()
        count = self._expire(now, events, batch=500, until_done=True)
        self._deliver(events)
        return count

    def _expire(self, now: datetime, events: list[Event], *, batch: int, until_done: bool = False) -> int:
        total = 0
        while True:
            count = self._write(lambda conn: self._expire_in(conn, now, events, batch))
            total += count
            if count < batch or not until_done:
                return total

    def _expire_in(self, conn: sqlite3.Connection, now: datetime, events: list[Event], batch: int) -> int:
        now_us = us(now)
        due = [row[0] for row in conn.execute(_SQL_DUE, (now_us, batch))]
        if not due:
            return 0
        catalog = self._sync(conn, events)
        for request_id in due:
            est, lines, takes = conn.execute(_SQL_EXPIRE, (now_us, request_id)).fetchall()[0]
            self._charge(conn, catalog, request_id, json.loads(lines), est, est, now, events)
            if takes is not None:
                give_back(conn, catalog, takes, "expired")
            log.warning(
                "spendgate: lease of request %s expired unsettled; charged its reserved %s",
                request_id,
                Money(est),
            )
        return len(due)
