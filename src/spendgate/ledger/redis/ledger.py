"""``RedisLedger``: reservations, budget and limit administration, the request log, rebuild."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from operator import itemgetter
from typing import Any, Final, NamedTuple

from spendgate.alerts.events import AlertEvent, Delivery, DeliveryRecord, DeliveryState
from spendgate.budgets import EPOCH, Attributes, Budget, ChargedLine, charged_lines, parse_instance_key
from spendgate.ledger import timeseries
from spendgate.ledger.base import (
    BudgetDeleted,
    BudgetLine,
    BudgetUsage,
    Event,
    LedgerUnavailableError,
    Refusal,
    RefusalCount,
    ReleaseOutcome,
    RequestIdReusedError,
    RequestRecord,
    Reservation,
    SettleOutcome,
    ThresholdCrossed,
    UnknownReservationError,
    UsagePoint,
)
from spendgate.ledger.redis.core import (
    _ATTEMPTS,
    Catalog,
    Flow,
    RedisCore,
    _Blocking,
    _Call,
    check_nanos,
    dt,
    esc,
    us,
)
from spendgate.ledger.redis.drain import Drainer
from spendgate.ledger.redis.rebuild import RebuildReport, rebuild
from spendgate.limits import (
    BUCKETS,
    Demand,
    Limit,
    LimitRefusal,
    LimitUsage,
    bucket_of,
    seconds_until_fits,
    takes_of,
    window_sum,
)
from spendgate.money import Money

__all__ = ["RedisLedger"]

log = logging.getLogger("spendgate.ledger")

_FLIGHT_TTL_MS: Final = 86_400_000  # a concurrency hash idle this long holds nothing worth keeping
_HOUR_MS: Final = 3_600_000
_ZERO: Final = timedelta(0)
_limit_of = itemgetter(0)

Result = Reservation | Refusal | LimitRefusal


class _Plan(NamedTuple):
    """A reservation worked out in Python before its one script runs."""

    keys: list[str]
    args: list[Any]
    matched: list[ChargedLine]
    lines: tuple[BudgetLine, ...]
    checks: list[tuple[Limit, str, int, int]]  # limit, instance, need, bucket
    prompt: LimitRefusal | None
    attrs: str
    budget_lines: _Lines


class _Lines(NamedTuple):
    """The budget part of a reservation's plan, for one set of attributes and windows."""

    lo: datetime  # valid from (the latest window start)
    hi: datetime | None  # until (the earliest window end)
    keys: list[str]
    per_line: list[Any]  # reserve.lua's instance, cap, ttl per line
    known: list[Any]  # the same with ttl 0 (this process set the hashes' TTL already)
    json: str
    matched: list[ChargedLine]
    public: tuple[BudgetLine, ...]
    attrs: str
    ttl_given: list[str]  # the generation the TTLs were set in


def attrs_json(a: Attributes) -> str:
    return json.dumps([a.key, a.user, a.team, a.project, a.customer, a.model, sorted(a.tags)],
                      separators=(",", ":"))  # fmt: skip


def attrs_from_json(text: str) -> Attributes:
    key, user, team, project, customer, model, tags = json.loads(text)
    return Attributes(key, user, team, project, customer, model, frozenset(tags))


@dataclass(frozen=True, slots=True)
class _Pending:
    budget: Budget
    instance: str
    start: int
    end: int | None
    crossed: list[int]
    spent: int
    limit: int


class RedisLedger(RedisCore):
    """Budgets and rate limits in Redis, definitions, request log and keys in a durable ledger.

    See the package docstring (``spendgate.ledger.redis``) for the URL, the key layout, the
    generation marker and what a Redis that loses its data can lose.

    The alert outbox (``AlertOutbox``) is the durable ledger's: every call is delegated to it.
    Unlike SQLite and PostgreSQL, a threshold crossing is not written to the outbox in the
    settle's own step (that is a Lua script, and the outbox is not in Redis): it reaches the
    outbox through the alert dispatcher's subscription (``subscribe``), which adds its event
    with ``add_alerts``, idempotent by the event's id. Nothing on the hot path writes to it.
    """

    def _after_setup(self) -> None:
        self._plans: dict[Attributes, _Lines] = {}  # budget lines by attributes, for _plans_of
        self._plans_of: Catalog | None = None
        self._drainer = Drainer(self)

    def _setup_done(self) -> None:
        if not self._closed:
            self._drainer.start()

    # -- reserve -------------------------------------------------------------------------
    def _reserve_args(
        self, estimate: Money, lease: timedelta | float, demand: Demand | None
    ) -> tuple[int, timedelta]:
        est = self._amount(estimate, "estimate")
        check_nanos(est, "estimate")
        delta = lease if type(lease) is timedelta and lease > _ZERO else self._lease(lease)
        if demand is not None and not isinstance(demand, Demand):
            raise TypeError(f"demand must be a Demand, got {type(demand).__name__}")
        return est, delta

    def reserve(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        demand: Demand | None = None,
    ) -> Result:
        est, delta = self._reserve_args(estimate, lease, demand)
        now = self.clock.now()
        try:
            return self._drive(self._reserve_flow(request_id, attributes, est, now, now + delta, demand))[0]
        except LedgerUnavailableError as exc:
            return self._reserve_failed(exc, request_id, estimate, now, delta)

    async def areserve(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        demand: Demand | None = None,
    ) -> Result:
        """``reserve`` on the asyncio client; cancelled after admission, it releases what it took."""
        est, delta = self._reserve_args(estimate, lease, demand)
        now = self.clock.now()

        async def run() -> tuple[Result, bool]:
            try:
                flow = self._reserve_flow(request_id, attributes, est, now, now + delta, demand)
                return await self._adrive(flow)
            except LedgerUnavailableError as exc:
                return self._reserve_failed(exc, request_id, estimate, now, delta), False

        task = asyncio.get_running_loop().create_task(run())
        self._keep(task)
        try:
            result, _ = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_abandoned)
            raise
        return result

    def _release_abandoned(self, task: asyncio.Task[tuple[Result, bool]]) -> None:
        """A reservation this call made, whose caller was cancelled meanwhile: release it."""
        if task.cancelled() or task.exception() is not None:
            return
        result, created = task.result()
        if created and isinstance(result, Reservation) and not result.unrecorded:
            self._keep(asyncio.get_running_loop().create_task(self.arelease(result.request_id)))

    def _reserve_failed(
        self, exc: LedgerUnavailableError, request_id: str, estimate: Money, now: datetime, delta: timedelta
    ) -> Reservation:
        return self._unrecorded_reservation(exc, self._where(), request_id, estimate, now, now + delta)

    def _reserve_flow(
        self,
        request_id: str,
        attributes: Attributes,
        est: int,
        now: datetime,
        expires: datetime,
        demand: Demand | None,
    ) -> Flow[tuple[Result, bool]]:
        yield from self._ready_flow()
        events: list[Event] = []
        try:
            if now >= self._next_expiry:  # the opportunistic expiry, once per interval per process
                self._next_expiry = now + self.expiry_interval
                yield from self._expire_flow(now, 64, events)
            for _ in range(_ATTEMPTS):
                catalog = self._catalog
                if catalog is None:
                    yield _Blocking(self._reload)
                    continue
                plan = self._plan(catalog, request_id, attributes, est, now, expires, demand)
                res = yield _Call(self._s.reserve, plan.keys, plan.args)
                tag = res[0]
                if tag == "ok":
                    plan.budget_lines.ttl_given[0] = plan.args[0]
                    return Reservation(request_id, Money(est), now, expires, plan.lines), True
                if tag == "stale":
                    yield _Blocking(self._reload)
                elif tag == "generation":
                    yield _Blocking(partial(self._revalidate, res[1]))
                elif tag == "exists":
                    return self._reuse(request_id, plan.attrs, est, res), False
                elif tag == "budget":
                    budget, key, window = plan.matched[int(res[1]) - 1]
                    spent, reserved = int(res[2]), int(res[3])
                    limit = budget.limit.nanos  # a paced refusal says what its allowance is by now
                    return self._refusal(
                        request_id, budget, key, spent, reserved, limit, est, window, now
                    ), False
                elif tag == "limit":
                    return self._limit_refusal(request_id, plan, res, now), False
                elif tag == "prompt":
                    assert plan.prompt is not None
                    return plan.prompt, False
                else:
                    raise RuntimeError(f"spendgate reserve.lua answered {res!r}")
            raise self._unavailable("the budget definitions kept changing")
        finally:
            self._deliver(events)

    def _budget_plan(self, catalog: Catalog, attributes: Attributes, now: datetime) -> _Lines:
        """The budget lines of a request: the same for the same attributes until a window
        ends or the catalog moves, so kept (unless a paced budget's allowance moves with now)."""
        if self._plans_of is not catalog:
            self._plans, self._plans_of = {}, catalog
        found = self._plans.get(attributes)
        if found is not None and found.lo <= now and (found.hi is None or now < found.hi):
            return found
        keys: list[str] = []
        per_line: list[Any] = []
        known: list[Any] = []  # per_line once this process gave the hashes their TTL
        lines: list[list[Any]] = []
        matched = charged_lines(catalog.order, attributes, now)
        lo, hi, paced = EPOCH, None, False
        for budget, instance, window in matched:
            lo = max(lo, window[0])
            if window[1] is not None:
                hi = window[1] if hi is None else min(hi, window[1])
            key, start, end, ttl = self._window(budget, window)
            cap = budget.allowance(now, *window)
            paced = paced or budget.pace is not None  # its allowance grows with now: planned every time
            keys.append(key)
            per_line += (instance, cap, ttl)
            known += (instance, cap, 0)
            lines.append([key, instance, budget.id, start, end])
        public = tuple(BudgetLine(b.id, key, w[0], w[1]) for b, key, w in matched)
        plan = _Lines(lo, hi, keys, per_line, known, json.dumps(lines, separators=(",", ":")), matched,
                      public, attrs_json(attributes), [""])  # fmt: skip
        if not paced:
            if len(self._plans) >= 10_000:
                self._plans = {}
            self._plans[attributes] = plan
        return plan

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
        lines = self._budget_plan(catalog, attributes, now)
        keys = [self.k_generation, self.k_catalog, self.k_request + request_id, self.k_leases, *lines.keys]
        per_limit: list[Any] = []
        takes: list[list[Any]] = []
        checks: list[tuple[Limit, str, int, int]] = []
        prompt: LimitRefusal | None = None
        if catalog.limits:
            wanted = demand if demand is not None else Demand(cost=est)
            for item in takes_of(catalog.limits, _limit_of, request_id, attributes, wanted):
                if isinstance(item, LimitRefusal):
                    prompt = item  # refused after the budgets and the limits before it, as in memory
                    break
                (limit, generation), instance, need = item
                name = f"{esc(limit.id)}:{generation}"
                if limit.kind == "concurrency":
                    key = f"{self._p}lf:{name}"
                    keys += (key, key)
                    per_limit += ("f", instance, need, limit.amount, 0, 0, _FLIGHT_TTL_MS)
                    takes.append(["f", key, instance, need, limit.kind])
                    checks.append((limit, instance, need, 0))
                    continue
                bucket = bucket_of(now, limit.width_us)
                key = f"{self._p}lw:{name}:{instance}"
                assert limit.per is not None
                ttl = max(2 * int(limit.per / timedelta(milliseconds=1)), _HOUR_MS)
                keys += (key, f"{self._p}lx:{name}")
                per_limit += ("w", instance, need, limit.amount, bucket, bucket - BUCKETS, ttl)
                takes.append(["w", key, str(bucket), need, limit.kind])
                checks.append((limit, instance, need, bucket))
        # The window hashes' TTL once per process and generation (they keep it: nothing removes
        # it, and a flush or rebuild moves the generation); '0' in reserve.lua leaves it as is.
        per_line = lines.known if lines.ttl_given[0] == self._generation else lines.per_line
        args: list[Any] = [
            self._generation, catalog.version, request_id, est, us(now), us(expires), len(lines.matched),
            len(checks), lines.attrs, lines.json,
            json.dumps(takes, separators=(",", ":")) if takes else "", "1" if prompt else "0",
            *per_line, *per_limit,
        ]  # fmt: skip
        return _Plan(keys, args, lines.matched, lines.public, checks, prompt, lines.attrs, lines)

    @staticmethod
    def _limit_refusal(request_id: str, plan: _Plan, res: list[Any], now: datetime) -> LimitRefusal:
        limit, instance, need, bucket = plan.checks[int(res[1]) - 1]
        used = int(res[2])
        if limit.kind == "concurrency":
            retry = None if need > limit.amount else 0.0  # room frees when one in flight ends
            return LimitRefusal(request_id, limit, instance, used, need, retry)
        flat = res[3]
        buckets = {int(b): int(v) for b, v in zip(flat[::2], flat[1::2], strict=True)}
        retry = seconds_until_fits(buckets, bucket, limit.width_us, now, limit.amount, need)
        return LimitRefusal(request_id, limit, instance, window_sum(buckets, bucket), need, retry)

    @staticmethod
    def _reuse(request_id: str, attrs: str, est: int, res: list[Any]) -> Reservation:
        state, held, stored, started, expires, lines = res[1:7]
        if state != "open":
            raise RequestIdReusedError(
                f"request id {request_id!r} was already {state}; use a new id per request"
            )
        if stored != attrs or int(held) != est:
            raise RequestIdReusedError(
                f"request id {request_id!r} already holds a reservation with different attributes or "
                "estimate; use a new id per request"
            )
        public = tuple(
            BudgetLine(budget_id, instance, dt(start), None if end is None else dt(end))
            for _key, instance, budget_id, start, end in json.loads(lines)
        )
        return Reservation(request_id, Money(est), dt(int(started)), dt(int(expires)), public)

    # -- endings -----------------------------------------------------------------------------
    def _end_keys(self, request_id: str) -> list[str]:
        return [self.k_generation, self.k_request + request_id, self.k_leases, self.k_stream]

    def _charged_flow(
        self, request_id: str, lines: list[list[Any]], values: list[str], act: int, events: list[Event]
    ) -> Flow[int | None]:
        """After a charge: the least any budget still affords, and the thresholds it crossed
        (marked in Redis first, so each is announced once across every process)."""
        catalog = self._catalog
        remaining: int | None = None
        marks: list[Any] = []
        pending: list[_Pending] = []
        for i, (key, instance, budget_id, start, end) in enumerate(lines):
            budget = catalog.budgets.get(budget_id) if catalog is not None else None
            if budget is None:
                continue  # deleted: charged, but nothing to announce or to afford
            spent, reserved, alerted = int(values[3 * i]), int(values[3 * i + 1]), int(values[3 * i + 2])
            limit = budget.limit.nanos
            if not budget.soft:  # a soft budget bounds nothing
                left = limit - spent - reserved
                remaining = left if remaining is None else min(remaining, left)
            if act <= 0:
                continue
            crossed = self._crossed(budget.thresholds, alerted, spent, limit)
            if crossed:
                marks += (key, instance, crossed[-1])
                pending.append(_Pending(budget, instance, start, end, crossed, spent, limit))
        if marks:
            res = yield from self._call(self._s.mark, [self.k_generation], lambda: [self._generation, *marks])
            for item, before in zip(pending, res[1:], strict=True):
                for threshold in item.crossed:
                    if threshold > int(before):
                        events.append(
                            ThresholdCrossed(
                                budget_id=item.budget.id,
                                label=item.budget.label(item.instance),
                                instance=parse_instance_key(item.instance),
                                threshold=threshold,
                                spent=Money(item.spent),
                                limit=Money(item.limit),
                                window_start=dt(item.start),
                                window_end=None if item.end is None else dt(item.end),
                                request_id=request_id,
                            )
                        )
        return remaining

    def _settle_args(
        self, actual: Money, record: RequestRecord | None, used: Demand | None
    ) -> tuple[int, list[Any], list[Any]]:
        act = self._amount(actual, "actual")
        check_nanos(act, "actual")
        if used is not None and not isinstance(used, Demand):
            raise TypeError(f"used must be a Demand, got {type(used).__name__}")
        use: list[Any] = (
            ["0", 0, 0, 0] if used is None else ["1", used.requests, used.input_tokens, used.output_tokens]
        )
        if record is None:
            return act, use, ["status", "ok"]
        breakdown = record.breakdown_strings()  # refuse a float amount now, not when the log is read
        extra = [
            "status", record.status, "model", record.model or "",
            "usage", json.dumps(dict(record.usage), sort_keys=True) if record.usage else "",
            "breakdown", json.dumps(breakdown, sort_keys=True) if breakdown else "",
        ]  # fmt: skip
        return act, use, extra

    def settle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        act, use, extra = self._settle_args(actual, record, used)
        try:
            return self._drive(self._settle_flow(request_id, act, use, extra))
        except LedgerUnavailableError as exc:
            return self._settle_failed(exc, request_id, actual)

    async def asettle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None, used: Demand | None = None
    ) -> SettleOutcome:
        """``settle`` on the asyncio client, as a task of its own: a caller cancelled while
        awaiting it does not stop it."""
        act, use, extra = self._settle_args(actual, record, used)

        async def run() -> SettleOutcome:
            try:
                return await self._adrive(self._settle_flow(request_id, act, use, extra))
            except LedgerUnavailableError as exc:
                return self._settle_failed(exc, request_id, actual)

        task = asyncio.get_running_loop().create_task(run())
        self._keep(task)
        return await asyncio.shield(task)

    def _settle_failed(self, exc: LedgerUnavailableError, request_id: str, actual: Money) -> SettleOutcome:
        return self._unrecorded_settle(exc, self._where(), request_id, actual)

    def _settle_flow(
        self, request_id: str, act: int, use: list[Any], extra: list[Any]
    ) -> Flow[SettleOutcome]:
        yield from self._ready_flow()
        now = us(self.clock.now())
        res = yield from self._call(
            self._s.end,
            self._end_keys(request_id),
            lambda: [self._generation, "settled", now, act, self.ended_ttl_ms, request_id, *use, *extra],
        )
        tag = res[0]
        if tag == "unknown":
            if request_id in self._unrecorded:
                return SettleOutcome(request_id, "unrecorded", Money(act), Money(act), Money(act))
            raise UnknownReservationError(f"no reservation for request id {request_id!r}")
        if tag == "ended":
            status = {"settled": "already_settled", "expired": "expired", "released": "released"}[res[1]]
            return SettleOutcome(request_id, status, Money(int(res[3])), Money(int(res[2])), Money(act))  # type: ignore[arg-type]
        est = int(res[1])
        events: list[Event] = []
        remaining = yield from self._charged_flow(request_id, json.loads(res[2]), res[3], act, events)
        self._warn_overshoot(request_id, Money(act), Money(est))
        self._deliver(events)
        left = None if remaining is None else Money(max(remaining, 0))
        return SettleOutcome(request_id, "settled", Money(act), Money(est), Money(act), left)

    def release(self, request_id: str) -> ReleaseOutcome:
        try:
            return self._drive(self._release_flow(request_id))
        except LedgerUnavailableError as exc:
            return self._release_failed(exc, request_id)

    async def arelease(self, request_id: str) -> ReleaseOutcome:
        """``release`` on the asyncio client, as a task of its own (like ``asettle``)."""

        async def run() -> ReleaseOutcome:
            try:
                return await self._adrive(self._release_flow(request_id))
            except LedgerUnavailableError as exc:
                return self._release_failed(exc, request_id)

        task = asyncio.get_running_loop().create_task(run())
        self._keep(task)
        return await asyncio.shield(task)

    def _release_failed(self, exc: LedgerUnavailableError, request_id: str) -> ReleaseOutcome:
        return self._unrecorded_release(exc, self._where(), request_id)

    def _release_flow(self, request_id: str) -> Flow[ReleaseOutcome]:
        yield from self._ready_flow()
        now = us(self.clock.now())
        res = yield from self._call(
            self._s.end,
            self._end_keys(request_id),
            lambda: [self._generation, "released", now, 0, self.ended_ttl_ms, request_id, "0", 0, 0, 0],
        )
        tag = res[0]
        if tag == "unknown":
            if request_id in self._unrecorded:
                return ReleaseOutcome(request_id, "unrecorded")
            raise UnknownReservationError(f"no reservation for request id {request_id!r}")
        if tag == "ended":
            return ReleaseOutcome(request_id, "already_released" if res[1] == "released" else res[1])
        return ReleaseOutcome(request_id, "released")

    # -- leases ------------------------------------------------------------------------------
    def expire_leases(self) -> int:
        events: list[Event] = []
        now = self.clock.now()
        try:
            total = 0
            for _ in range(100_000):  # bounded: 500 a batch
                count = self._drive(self._expire_flow(now, 500, events, ready=True))
                total += count
                if count < 500:
                    return total
            return total
        finally:
            self._deliver(events)

    def _expire_flow(
        self, now: datetime, batch: int, events: list[Event], *, ready: bool = False
    ) -> Flow[int]:
        if ready:
            yield from self._ready_flow()
        res = yield from self._call(
            self._s.expire,
            [self.k_generation, self.k_leases, self.k_stream],
            lambda: [self._generation, us(now), batch, self.ended_ttl_ms, self.k_request],
        )
        for request_id, est_text, lines, values in res[1:]:
            est = int(est_text)
            log.warning(
                "spendgate: lease of request %s expired unsettled; charged its reserved %s",
                request_id,
                Money(est),
            )
            yield from self._charged_flow(request_id, json.loads(lines), values, est, events)
        return len(res) - 1

    # -- proving the write path --------------------------------------------------------------
    def _probe_flow(self) -> Flow[None]:
        yield from self._ready_flow()
        yield from self._call(self._s.probe, [self.k_generation, self.k_probe], lambda: [self._generation])

    def check_writable(self) -> None:
        """A real write (the probe counter), through the generation check like every write;
        LedgerUnavailableError whatever ``fail_open`` says."""
        self._drive(self._probe_flow())

    async def acheck_writable(self) -> None:
        await self._adrive(self._probe_flow())

    # -- budgets -----------------------------------------------------------------------------
    def put_budget(self, budget: Budget) -> None:
        check_nanos(budget.limit.nanos, f"budget {budget.id!r}: limit")
        self._ensure_ready()  # Redis first: a change it cannot announce is not made
        self._durable_now().put_budget(budget)
        self._bump()

    def delete_budget(self, budget_id: str) -> BudgetDeleted:
        self._ensure_ready()
        self._durable_now().delete_budget(budget_id)  # KeyError for an unknown id
        # Counters stay: open reservations end on them, and the id added again continues there.
        res = self._drive(self._call(self._s.admin, self._admin_keys(),
                                     lambda: [self._generation, "inflight", budget_id, self.k_request]))  # fmt: skip
        return BudgetDeleted(budget_id, int(res[2]), Money(int(res[3])))

    def get_budget(self, budget_id: str) -> Budget:
        return self._durable_now().get_budget(budget_id)

    def budgets(self) -> list[Budget]:
        return sorted(self._durable_now().budgets(), key=lambda b: b.id)

    def set_limit(self, budget_id: str, limit: Money) -> None:
        check_nanos(self._amount(limit, "limit"), "limit")
        self._ensure_ready()
        self._durable_now().set_limit(budget_id, limit)
        self._bump()

    def reset(self, budget_id: str, instance: Mapping[str, str] | str | None = None) -> None:
        budget = self._fresh().budgets.get(budget_id)
        if budget is None:
            raise KeyError(f"no budget {budget_id!r}")
        key = budget.instance_key(instance) if instance is not None else None
        window = self._window(budget, budget.window.bounds(self.clock.now()))
        self._durable_now().reset(budget_id, instance)  # the change event, heard by every process
        self._drive(self._call(self._s.admin, self._admin_keys(window[0]),
                               lambda: [self._generation, "reset", key or "", "1" if key is None else "0", window[3]]))  # fmt: skip

    def refresh(self) -> None:
        self._fresh()

    def _read_flow(self, catalog: Catalog, ops: list[Any]) -> Flow[list[Any] | None]:
        res = yield from self._call(self._s.read, [self.k_generation, self.k_catalog],
                                    lambda: [self._generation, catalog.version, *ops])  # fmt: skip
        return None if res[0] == "stale" else res[1:]

    def _read(self, ops_of: Any) -> Any:
        """``ops_of(catalog)`` -> (ops, answer(results)): read on a fresh catalog, again if stale."""
        for _ in range(_ATTEMPTS):
            catalog = self._fresh()
            ops, answer = ops_of(catalog)
            results = self._drive(self._read_flow(catalog, ops)) if ops else []
            if results is not None:
                return answer(results)
            self._catalog = None
        raise self._unavailable("the budget definitions kept changing")

    def usage(
        self, budget_id: str, instance: Mapping[str, str] | str | None = None, *, at: datetime | None = None
    ) -> BudgetUsage:
        when = at if at is not None else self.clock.now()

        def ops_of(catalog: Catalog) -> Any:
            budget = catalog.budgets.get(budget_id)
            if budget is None:
                raise KeyError(f"no budget {budget_id!r}")
            key = budget.instance_key(instance)
            window = budget.window.bounds(when)
            hkey = self._window(budget, window)[0]
            ops = ["hmget", hkey, 2, "s:" + key, "r:" + key]
            return ops, lambda res: _usage(budget, key, window, int(res[0][0] or 0), int(res[0][1] or 0))

        result: BudgetUsage = self._read(ops_of)
        return result

    def list_budgets(self) -> list[BudgetUsage]:
        now = self.clock.now()

        def ops_of(catalog: Catalog) -> Any:
            ops: list[Any] = []
            windows = []
            for budget in catalog.order:
                window = budget.window.bounds(now)
                windows.append((budget, window))
                ops += ("hgetall", self._window(budget, window)[0])

            def answer(res: list[Any]) -> list[BudgetUsage]:
                out: list[BudgetUsage] = []
                for (budget, window), flat in zip(windows, res, strict=True):
                    counts: dict[str, list[int]] = {}
                    for field, value in zip(flat[::2], flat[1::2], strict=True):
                        kind, _, key = field.partition(":")
                        if kind in ("s", "r"):
                            counts.setdefault(key, [0, 0])[kind == "r"] = int(value)
                    if not budget.wildcards:
                        spent, reserved = counts.get("", [0, 0])
                        out.append(_usage(budget, "", window, spent, reserved))
                        continue
                    out.extend(
                        _usage(budget, key, window, s, r) for key, (s, r) in sorted(counts.items()) if s or r
                    )
                return out

            return ops, answer

        result: list[BudgetUsage] = self._read(ops_of)
        return result

    # -- rate limits ---------------------------------------------------------------------------
    def put_limit(self, limit: Limit) -> None:
        if not isinstance(limit, Limit):
            raise TypeError(f"put_limit takes a Limit, got {type(limit).__name__}")
        if limit.kind == "usd":
            check_nanos(limit.amount, f"limit {limit.id!r}: amount")
        self._ensure_ready()
        durable = self._durable_now()
        try:
            old: Limit | None = durable.get_limit(limit.id)
        except KeyError:
            old = None
        if old == limit:
            return  # every process starts with the same config: nothing changed
        durable.put_limit(limit)
        # Its counts are kept while it counts the same kind over the same window, as in memory.
        same = old is not None and old.kind == limit.kind and old.per == limit.per
        self._bump(limit.id, "" if same else "new")

    def remove_limit(self, limit_id: str) -> bool:
        self._ensure_ready()
        if not self._durable_now().remove_limit(limit_id):
            return False
        self._bump(limit_id, "del")  # added again, it counts from zero (a new generation)
        return True

    def get_limit(self, limit_id: str) -> Limit:
        return self._durable_now().get_limit(limit_id)

    def limits(self) -> list[Limit]:
        return self._durable_now().limits()

    def _limit_keys(self, limit: Limit, generation: str) -> tuple[str, str]:
        name = f"{esc(limit.id)}:{generation}"
        if limit.kind == "concurrency":
            return f"{self._p}lf:{name}", ""
        return f"{self._p}lw:{name}:", f"{self._p}lx:{name}"

    def limit_usage(self, limit_id: str, instance: Mapping[str, str] | str | None = None) -> LimitUsage:
        now = self.clock.now()

        def ops_of(catalog: Catalog) -> Any:
            entry = catalog.limit_map.get(limit_id)
            if entry is None:
                raise KeyError(f"no limit {limit_id!r}; known: {', '.join(catalog.limit_map) or 'none'}")
            limit, generation = entry
            key = limit.instance_key(instance)
            counts, _ = self._limit_keys(limit, generation)
            if limit.kind == "concurrency":
                return ["hmget", counts, 1, key], lambda res: LimitUsage(limit, key, int(res[0][0] or 0))
            if not limit.windowed:
                return [], lambda res: LimitUsage(limit, key, 0)
            current = bucket_of(now, limit.width_us)
            return ["hgetall", counts + key], lambda res: LimitUsage(
                limit, key, _window_used(res[0], current)
            )

        result: LimitUsage = self._read(ops_of)
        return result

    def list_limits(self) -> list[LimitUsage]:
        """Every limit without wildcards, and every wildcard instance with a count now."""
        now = self.clock.now()

        def instances(catalog: Catalog) -> Any:
            ops: list[Any] = []
            for limit, generation in catalog.limits:
                counts, index = self._limit_keys(limit, generation)
                if limit.kind == "concurrency":
                    ops += ("hgetall", counts)
                elif limit.windowed:
                    ops += ("zfrom", index, bucket_of(now, limit.width_us) - BUCKETS)
                else:
                    ops += ("get", counts)  # prompt_tokens: nothing counted
            return ops, lambda res: (catalog, res)

        catalog, found = self._read(instances)

        def sums(cat: Catalog) -> Any:
            if cat is not catalog:
                raise _StaleError
            ops: list[Any] = []
            asked: list[tuple[Limit, str, str]] = []  # limit, instance, how
            for (limit, generation), got in zip(catalog.limits, found, strict=True):
                counts, _ = self._limit_keys(limit, generation)
                if limit.kind == "concurrency":
                    for key, value in zip(got[::2], got[1::2], strict=True):
                        asked.append((limit, key, value))
                elif limit.windowed:
                    for key in sorted(got):
                        ops += ("hgetall", counts + key)
                        asked.append((limit, key, "?"))
                if not limit.wildcards and not any(a[0] is limit and a[1] == "" for a in asked):
                    asked.append((limit, "", "0"))

            def answer(res: list[Any]) -> list[LimitUsage]:
                it = iter(res)
                out: list[LimitUsage] = []
                for limit, key, how in asked:
                    used = _window_used(next(it), bucket_of(now, limit.width_us)) if how == "?" else int(how)
                    out.append(LimitUsage(limit, key, used))
                order = {lim.id: i for i, (lim, _) in enumerate(catalog.limits)}
                out.sort(key=lambda u: (order[u.limit.id], u.instance))
                return out

            return ops, answer

        try:
            result: list[LimitUsage] = self._read(sums)
        except _StaleError:
            return self.list_limits()
        return result

    # -- the request log (the durable store's, once ended requests are drained into it) --------
    def _drained(self) -> Any:
        try:
            self._drainer.drain(force=True)
        except Exception as exc:  # answered from what the durable log has: said, not hidden
            log.warning("spendgate: ended requests not yet copied to the durable log (%s); the answer may "
                        "miss the latest", exc)  # fmt: skip
        return self._durable_now()

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
        records: list[RequestRecord] = self._drained().query_requests(
            start, end, limit=limit, after=after, **dimensions
        )
        return records

    def usage_by(
        self, dimension: str, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, Money]:
        self._check_dimensions({dimension: ""}, "usage_by")
        totals: dict[str, Money] = self._drained().usage_by(dimension, start, end)
        return totals

    def usage_timeseries(
        self,
        start: datetime,
        end: datetime,
        bucket: timedelta,
        *,
        by: str | None = None,
        **dimensions: str,
    ) -> list[UsagePoint]:
        timeseries.plan(start, end, bucket, by, dimensions)  # bad arguments fail before any drain
        points: list[UsagePoint] = self._drained().usage_timeseries(start, end, bucket, by=by, **dimensions)
        return points

    def purge(self) -> int:
        return int(self._drained().purge())

    # -- the alert outbox (the durable store's) ---------------------------------------------
    # Redis keeps no outbox: every call goes to the durable ledger (see the class docstring).
    def add_alerts(self, events: Sequence[AlertEvent]) -> list[str]:
        return self._durable_now().add_alerts(events)

    def register_destinations(self, names: Sequence[str]) -> None:
        self._durable_now().register_destinations(names)

    def claim_deliveries(
        self, destinations: Sequence[str], owner: str, lease: timedelta, limit: int = 20
    ) -> list[Delivery]:
        return self._durable_now().claim_deliveries(destinations, owner, lease, limit)

    def finish_delivery(
        self,
        delivery: Delivery,
        state: DeliveryState,
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> bool:
        return self._durable_now().finish_delivery(delivery, state, error=error, retry_at=retry_at)

    def alert_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        destination: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryRecord]:
        return self._durable_now().alert_deliveries(
            state=state, destination=destination, limit=limit, before=before
        )

    def retry_delivery(self, event_id: str, destination: str) -> bool:
        return self._durable_now().retry_delivery(event_id, destination)

    # -- the refusal counts (the durable store's) --------------------------------------------
    # A batch every few seconds per process: the durable ledger takes them as they are.
    def add_refusals(self, counts: Mapping[tuple[datetime, str, str], int]) -> None:
        self._durable_now().add_refusals(counts)

    def refusal_counts(self, start: datetime, end: datetime) -> list[RefusalCount]:
        return self._durable_now().refusal_counts(start, end)

    # -- rebuild -------------------------------------------------------------------------------
    def rebuild(self) -> RebuildReport:
        """Start Redis over from the durable store: the current windows' spend and rate limit
        windows from the request log, under a new generation (see ``rebuild.py``)."""
        with self._setup_lock:
            self._open_durable()
            report = rebuild(self)
            self._ready = True
        self._setup_done()
        return report

    def _rebuild_now(self) -> None:
        rebuild(self)

    def _drain_for_rebuild(self) -> None:
        self._drainer.drain(force=True)

    # -- tests and closing ----------------------------------------------------------------------
    def open_reservations(self) -> int:
        """How many reservations are open (for tests)."""
        self._ensure_ready()
        return int(self._redis(lambda c: c.zcard(self.k_leases)))

    async def aclose(self) -> None:
        """``close`` from a running loop: this loop's asyncio client is closed on it (its
        connections belong to the loop), the rest (the last drain) off it."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._aclients.pop(loop, None)
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop the drainer (copying what it can first), close connections and the durable store."""
        if self._closed:
            return
        self._closed = True
        self._drainer.stop()
        if self._durable is not None and self._ready:
            try:
                self._drainer.drain(force=True)
            except Exception as exc:
                log.warning("spendgate: at close, ended requests stay in Redis for the next drain (%s)", exc)
        self._close_clients()
        if self._durable is not None:
            self._durable.close()


class _StaleError(Exception):
    """The catalog moved between the two reads of list_limits: read again."""


def _window_used(flat: list[str], current: int) -> int:
    oldest = current - BUCKETS
    return sum(int(v) for b, v in zip(flat[::2], flat[1::2], strict=True) if int(b) >= oldest)


def _usage(
    budget: Budget, key: str, window: tuple[datetime, datetime | None], spent: int, reserved: int
) -> BudgetUsage:
    return BudgetUsage(
        budget_id=budget.id,
        label=budget.label(key),
        selector=budget.concrete_selector(key),
        instance=parse_instance_key(key),
        spent=Money(spent),
        reserved=Money(reserved),
        limit=budget.limit,
        window_start=window[0],
        window_end=window[1],
    )


def archived_fields(fields: Mapping[str, str]) -> Any:
    """An ended request from the stream, as the durable log's ``ArchivedRequest``."""
    from spendgate.ledger.base import ArchivedRequest

    state = fields["state"]
    text = fields["attrs"]
    attrs = _attrs_seen.get(text)
    if attrs is None:  # a few attributes and windows recur in a batch: parsed once each
        attrs = attrs_from_json(text)
        _remember(_attrs_seen, text, attrs)
    usage, breakdown = fields.get("usage", ""), fields.get("breakdown", "")
    record = RequestRecord(
        request_id=fields["id"],
        attributes=attrs,
        cost=Money(int(fields.get("cost", "0"))),
        started_at=dt(int(fields["started"])),
        finished_at=dt(int(fields["finished"])),
        model=fields.get("model") or None,
        usage=json.loads(usage) if usage else {},
        breakdown=json.loads(breakdown) if breakdown else {},
        status=fields.get("status") or ("expired" if state == "expired" else "ok"),
    )
    text = fields["lines"]
    lines = _lines_seen.get(text)
    if lines is None:
        lines = tuple(
            BudgetLine(budget_id, instance, dt(start), None if end is None else dt(end))
            for _key, instance, budget_id, start, end in json.loads(text)
        )
        _remember(_lines_seen, text, lines)
    return ArchivedRequest(record, state, Money(int(fields["est"])), lines)  # type: ignore[arg-type]


_attrs_seen: dict[str, Attributes] = {}
_lines_seen: dict[str, tuple[BudgetLine, ...]] = {}


def _remember(seen: dict[str, Any], text: str, value: Any) -> None:
    if len(seen) >= 4096:
        seen.clear()
    seen[text] = value
