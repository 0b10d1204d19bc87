"""The guard: runs a request's lifecycle against budgets in a ledger (docs/design.md).

    attribute -> price -> worst-case estimate -> reserve -> call -> end
                                                   \\-> raise / wait / clamp

Every integration (the openai and anthropic wrappers, ``spendgate.Client``)
and the gateway use a ``Guard``: ``admit()`` (or ``admit_async()``) before the
call, then ``end()`` (or ``aend()``) once, saying what happened; the ending
policy in ``spendgate.lifecycle.ending`` decides how the reservation ends.
The blocking and asyncio paths share one core and differ only in the I/O:
an asyncio caller reaches the ledger only through its async calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final, Literal, NamedTuple, cast

from spendgate import attribution, logs, refusal_tally
from spendgate.budgets import Attributes, Budget, instance_key
from spendgate.clock import Clock, SystemClock
from spendgate.cost import Cost, cost_of
from spendgate.errors import (
    BudgetExceededError,
    ConfigError,
    CostCapExceededError,
    RateLimitExceededError,
)
from spendgate.estimate import (
    DEFAULT_MAX_TOOL_CALLS,
    UNBOUNDED_INPUT_POLICIES,
    Endpoint,
    Estimate,
    UnboundedInputPolicy,
    estimate_request,
)
from spendgate.ledger import (
    BudgetUsage,
    Ledger,
    Refusal,
    ReleaseOutcome,
    RequestRecord,
    Reservation,
    SettleOutcome,
    open_ledger,
)
from spendgate.lifecycle.ending import Action, Ending, Happened, Report
from spendgate.limits import Demand, Limit, LimitRefusal, LimitUsage
from spendgate.logs import REQUESTS, request_line
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog, UnknownModelPolicy
from spendgate.pricing.regions import NOWHERE, Where
from spendgate.tokens import TokenCounter, default_counter
from spendgate.usage import Usage
from spendgate.waiting import AsyncWaiter, SyncWaiter, WaitLines

log = REQUESTS  # the "spendgate.requests" logger: one line per request (spendgate.logs)

OnExceed = Literal["raise", "wait", "clamp"]
ON_EXCEED: Final = ("raise", "wait", "clamp")

#: Where each endpoint takes its output cap; the first name is the one the guard sets.
_MAX_OUTPUT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "messages": ("max_tokens",),
}
#: What ``_admitting`` raises when a budget, a rate limit or the caller's own cap refuses: each
#: counted (``self.refusals``), then written by the shell when due.
_REFUSED: Final = (BudgetExceededError, RateLimitExceededError, CostCapExceededError)


@dataclass(slots=True)
class Admission:
    """An admitted request: what to send, what was reserved, and how to end it."""

    request_id: str
    endpoint: Endpoint
    model: str
    attributes: Attributes
    estimate: Estimate
    reservation: Reservation
    #: The body to send: a copy of the caller's, with the output cap the guard
    #: reserved for and, for streams, a request for the final usage chunk.
    request: dict[str, Any]
    #: True when the guard asked for the usage chunk: hide it from the caller.
    added_stream_usage: bool = False
    #: max_tokens lowered to fit the budget (clamp), or None.
    clamped_to: int | None = None
    waited_seconds: float = 0.0
    started_at: datetime = field(default_factory=lambda: SystemClock().now())
    started_monotonic: float = field(default_factory=time.monotonic)
    ended: str | None = None  # "settled" | "released" once ended
    #: What the ledger said when this request settled (``remaining``: what its budgets have left).
    outcome: SettleOutcome | None = None
    #: Where the call goes (a regional host's uplift): priced at the ending as it was reserved.
    where: Where = NOWHERE

    @property
    def reserved(self) -> Money:
        return self.reservation.estimate


class Guard:
    """Prices, reserves and settles requests against budgets in a ledger.

    ``on_exceed`` given here applies to every budget; when None, the refusing
    budget's own ``on_exceed`` decides.
    """

    def __init__(
        self,
        ledger: Ledger | str = "memory://",
        *,
        budgets: Iterable[Budget | Mapping[str, Any]] = (),
        limits: Iterable[Limit | Mapping[str, Any]] = (),
        catalog: Catalog | None = None,
        counter: TokenCounter | None = None,
        on_exceed: OnExceed | None = None,
        unknown_model: UnknownModelPolicy = "refuse",
        max_wait: float = 60.0,
        min_output_tokens: int = 16,
        lease: float = 600.0,
        poll_interval: float = 1.0,
        clock: Clock | None = None,
        unbounded_input: UnboundedInputPolicy = "context_window",
        default_max_output_tokens: int | None = None,
        default_max_tool_calls: int | None = DEFAULT_MAX_TOOL_CALLS,
        refusal_interval: float = refusal_tally.DEFAULT_INTERVAL,
    ) -> None:
        if unbounded_input not in UNBOUNDED_INPUT_POLICIES:
            raise ConfigError(
                "unbounded_input",
                f"must be one of {', '.join(UNBOUNDED_INPUT_POLICIES)}, got {unbounded_input!r}",
            )
        self.unbounded_input: UnboundedInputPolicy = unbounded_input
        if on_exceed is not None and on_exceed not in ON_EXCEED:
            raise ConfigError("on_exceed", f"must be one of {', '.join(ON_EXCEED)}, got {on_exceed!r}")
        for key, value in (("max_wait", max_wait), ("lease", lease), ("poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(key, f"must be a number of seconds >= 0, got {value!r}")
        if (
            isinstance(min_output_tokens, bool)
            or not isinstance(min_output_tokens, int)
            or min_output_tokens < 1
        ):
            raise ConfigError("min_output_tokens", f"must be a whole number >= 1, got {min_output_tokens!r}")
        if default_max_output_tokens is not None and (
            isinstance(default_max_output_tokens, bool)
            or not isinstance(default_max_output_tokens, int)
            or default_max_output_tokens < 1
        ):
            raise ConfigError(
                "default_max_output_tokens",
                f"must be a whole number >= 1 (or None), got {default_max_output_tokens!r}",
            )
        #: The output cap reserved and sent for a request that sets none (None: the model's max).
        self.default_max_output_tokens = default_max_output_tokens
        if default_max_tool_calls is not None and (
            isinstance(default_max_tool_calls, bool)
            or not isinstance(default_max_tool_calls, int)
            or default_max_tool_calls < 0
        ):
            raise ConfigError(
                "default_max_tool_calls",
                f"must be a whole number >= 0 (or None), got {default_max_tool_calls!r}",
            )
        #: The hosted tool calls reserved and sent for a request that allows any number (None:
        #: such a request is refused); see spendgate.estimate.
        self.default_max_tool_calls = default_max_tool_calls
        parsed = [
            b if isinstance(b, Budget) else Budget.from_config(b, where=f"budgets[{i}]")
            for i, b in enumerate(budgets)
        ]
        rate_limits = [
            each if isinstance(each, Limit) else Limit.from_config(each, where=f"limits[{i}]")
            for i, each in enumerate(limits)
        ]
        self._owns_ledger = isinstance(ledger, str)
        if isinstance(ledger, str):
            ledger = open_ledger(ledger, budgets=parsed, clock=clock)
        else:
            for budget in parsed:
                ledger.put_budget(budget)
        for each in rate_limits:
            ledger.put_limit(each)
        self.ledger = ledger
        self.clock: Clock = clock or ledger.clock
        if catalog is None:
            catalog = Catalog.default(unknown_model=unknown_model)
        elif unknown_model != "refuse":
            catalog.unknown_model = unknown_model
        self.catalog = catalog
        self.counter = counter or default_counter()
        self.on_exceed = on_exceed
        self.max_wait = float(max_wait)
        self.min_output_tokens = min_output_tokens
        self.lease = timedelta(seconds=lease)
        self.poll_interval = float(poll_interval)
        self._lines = WaitLines()
        #: The refusals of this guard not yet counted in the ledger (``spendgate.refusal_tally``).
        self.refusals = refusal_tally.RefusalTally(self.clock, interval=refusal_interval)
        self._unsubscribe = ledger.on_change(lambda _event: self._lines.wake_heads())

    # -- admission ----------------------------------------------------------------
    def prepare(
        self,
        endpoint: Endpoint,
        request: Mapping[str, Any],
        *,
        attributes: Mapping[str, Any] | Attributes | None = None,
        request_id: str | None = None,
        where: Where = NOWHERE,
    ) -> tuple[str, Attributes, Estimate, dict[str, Any], bool]:
        """Attribute, price and estimate, without touching the ledger."""
        body = dict(request)
        model = body.get("model")
        estimate = estimate_request(
            endpoint,
            body,
            catalog=self.catalog,
            counter=self.counter,
            unbounded_policy=self.unbounded_input,
            default_max_tool_calls=self.default_max_tool_calls,
            data_residency=where.data_residency,
            endpoint_location=where.endpoint_location,
        )
        # The tool-call caps reserved for, where the request set none: the provider cannot
        # bill more tool uses than reserved.
        body.update(estimate.body_changes)
        cap = self.default_max_output_tokens
        if (
            cap is not None
            and estimate.output_source in ("model", "context")
            and cap < estimate.max_output_tokens
        ):
            # No cap in the request: reserve the default one; it is set in the body below, so
            # the provider cannot bill past it.
            estimate = replace(estimate, max_output_tokens=cap, output_source="default")
        model = estimate.model
        if isinstance(attributes, Attributes):
            attrs = attribution.merge(attribution.current(), attributes)
            attrs = attribution.merge(attrs, Attributes(model=model))
        else:
            attrs = attribution.resolve(model, attributes, body.get("user"))
        added_usage = False
        if endpoint in _MAX_OUTPUT_FIELDS and estimate.output_source != "request":
            # The provider must not be able to bill past what was reserved.
            body[_MAX_OUTPUT_FIELDS[endpoint][0]] = estimate.max_output_tokens
        if body.get("stream") and endpoint in ("chat", "completions"):
            options = dict(body.get("stream_options") or {})
            if not options.get("include_usage"):
                options["include_usage"] = True
                body["stream_options"] = options
                added_usage = True
        return request_id or f"sg-{uuid.uuid4().hex}", attrs, estimate, body, added_usage

    def admit(
        self,
        endpoint: Endpoint,
        request: Mapping[str, Any],
        *,
        attributes: Mapping[str, Any] | Attributes | None = None,
        request_id: str | None = None,
        on_exceed: OnExceed | None = None,
        max_cost: Money | None = None,
        where: Where = NOWHERE,
    ) -> Admission:
        """Reserve the worst case of ``request`` in every matching budget, or raise/wait/clamp.

        ``max_cost``: the most this one request may cost (with any ``spendgate.max_cost()``
        block around the call, the smaller applies); a worst case above it is clamped to fit
        (``on_exceed="clamp"``) or refused with ``CostCapExceededError`` before the ledger is
        touched (``raise`` and ``wait``: waiting cannot make it fit). ``where``: the pricing
        conditions of the host the call goes to (``spendgate.pricing.regions.where_of``),
        reserved and charged."""
        waiter = SyncWaiter()
        steps = self._admitting(endpoint, request, attributes, request_id, on_exceed, waiter, max_cost, where)
        try:
            with contextlib.closing(steps):
                step = _next(steps, None)
                while not isinstance(step, Admission):
                    if isinstance(step, _Wait):
                        step = _next(steps, waiter.wait(step.seconds))
                    elif isinstance(step, _Read):
                        step = _next(steps, step.run())
                    else:
                        step = _next(
                            steps,
                            self.ledger.reserve(step.rid, step.attrs, step.amount, self.lease, step.demand),
                        )
                return step
        except _REFUSED:
            if self.refusals.claim():
                self.refusals.flush(self.ledger)
            raise

    async def admit_async(
        self,
        endpoint: Endpoint,
        request: Mapping[str, Any],
        *,
        attributes: Mapping[str, Any] | Attributes | None = None,
        request_id: str | None = None,
        on_exceed: OnExceed | None = None,
        max_cost: Money | None = None,
        where: Where = NOWHERE,
    ) -> Admission:
        """``admit`` for asyncio: reserves through the ledger's ``areserve`` (SQLite: its group
        commit), and waiting suspends the task, never the loop."""
        waiter = AsyncWaiter()
        steps = self._admitting(endpoint, request, attributes, request_id, on_exceed, waiter, max_cost, where)
        try:
            with contextlib.closing(steps):  # a cancelled waiter leaves its line and holds nothing
                step = _next(steps, None)
                while not isinstance(step, Admission):
                    if isinstance(step, _Wait):
                        step = _next(steps, await waiter.wait(step.seconds))
                    elif isinstance(step, _Read):  # a blocking ledger read: never on the loop
                        read = await asyncio.to_thread(step.run) if self.ledger.blocking_reads else step.run()
                        step = _next(steps, read)
                    else:
                        reserved = await self.ledger.areserve(
                            step.rid, step.attrs, step.amount, self.lease, step.demand
                        )
                        step = _next(steps, reserved)
                return step
        except _REFUSED:
            if self.refusals.claim():  # a blocking write, at most once an interval: on a thread
                await asyncio.to_thread(self.refusals.flush, self.ledger)
            raise

    # The admission itself, without I/O: a generator that yields the ledger reservations and
    # the waits it needs to its shell (``admit`` runs them blocking, ``admit_async`` awaits
    # them), the way h11 leaves I/O to its caller.
    def _admitting(
        self,
        endpoint: Endpoint,
        request: Mapping[str, Any],
        attributes: Mapping[str, Any] | Attributes | None,
        request_id: str | None,
        on_exceed: OnExceed | None,
        waiter: SyncWaiter | AsyncWaiter,
        max_cost: Money | None = None,
        where: Where = NOWHERE,
    ) -> Generator[_Step, Any, Admission]:
        rid, attrs, estimate, body, added = self.prepare(
            endpoint, request, attributes=attributes, request_id=request_id, where=where
        )
        started = time.monotonic()
        chosen = on_exceed or self.on_exceed
        clamped: int | None = None
        cap = attribution.tightest(
            None if max_cost is None else Money.parse(max_cost, what="max_cost"),
            attribution.current_max_cost(),
        )
        if cap is not None and estimate.amount > cap:
            try:  # the caller's own cap: clamped to fit or refused, before the ledger is touched
                estimate, clamped = self._capped(endpoint, estimate, cap, chosen)
            except CostCapExceededError as err:
                self.refusals.add("cost_cap", "")
                if logs.line_wanted():
                    self._log_cap_refusal(rid, endpoint, attrs, estimate, err, started)
                raise
        result: Reservation | Refusal | LimitRefusal | None = yield from self._queued(
            rid, attrs, estimate, chosen
        )
        if result is None:
            result = yield _reserve(rid, attrs, estimate)
        if isinstance(result, LimitRefusal):
            # A rate limit waits or refuses (clamping cannot make a request fit a window).
            waits = chosen == "wait" if chosen in ("raise", "wait") else result.limit.on_exceed == "wait"
            try:
                if waits and self.max_wait > 0 and _may_fit(result):
                    result = yield from self._waiting(rid, attrs, estimate, result, waiter)
                else:
                    raise result.to_error()
            except RateLimitExceededError as err:
                self.refusals.add("rate_limit", err.limit_id)
                if logs.line_wanted():
                    self._log_limit_refusal(rid, endpoint, attrs, estimate, err, started)
                raise
        if isinstance(result, Refusal):
            policy = chosen or result.on_exceed  # the ledger's own copy: no read on the refusal path
            try:
                if policy == "clamp":
                    result, estimate, clamped = yield from self._clamping(rid, attrs, estimate, result)
                elif policy == "wait" and self.max_wait > 0 and _may_fit(result):
                    result = yield from self._waiting(rid, attrs, estimate, result, waiter)
                else:
                    raise result.to_error()
            except BudgetExceededError as err:
                self.refusals.add("budget", err.budget_id)
                _suggest_fit(err, endpoint, estimate)
                if logs.line_wanted():
                    self._log_refusal(rid, endpoint, attrs, estimate, err, started)
                raise
        if clamped is not None:
            # Every cap field the body has (a server may read either), or the endpoint's own.
            fields = [f for f in _MAX_OUTPUT_FIELDS[endpoint] if f in body] or _MAX_OUTPUT_FIELDS[endpoint][
                :1
            ]
            for name in fields:
                body[name] = clamped
        return Admission(
            request_id=rid,
            endpoint=endpoint,
            model=estimate.model,
            attributes=attrs,
            estimate=estimate,
            reservation=result,
            request=body,
            added_stream_usage=added,
            clamped_to=clamped,
            waited_seconds=time.monotonic() - started,
            started_at=self.clock.now(),
            where=where,
        )

    def _queued(
        self, rid: str, attrs: Attributes, estimate: Estimate, chosen: OnExceed | None
    ) -> Generator[_Step, Any, Refusal | LimitRefusal | None]:
        """A refusal without trying when others already wait on one of this request's budgets
        or rate limits (and it waits): no overtaking."""
        if self._lines and (key := self._lines.busy(self._keys(attrs))) is not None:
            if key.startswith(_LIMIT_LINE):
                return (yield from self._queued_limit_refusal(rid, key, estimate, chosen))
            budget_id = key.partition("|")[0]
            if (chosen or self._policy_of(budget_id)) == "wait":
                return (yield from self._queued_refusal(rid, key, estimate))
        return None

    def _queued_limit_refusal(
        self, rid: str, key: str, estimate: Estimate, chosen: OnExceed | None
    ) -> Generator[_Step, Any, LimitRefusal | None]:
        limit_id, _, instance = key.removeprefix(_LIMIT_LINE).partition("|")
        try:
            limit = self.ledger.get_limit(limit_id)
        except KeyError:  # removed meanwhile: nothing to wait behind
            return None
        waits = chosen == "wait" if chosen in ("raise", "wait") else limit.on_exceed == "wait"
        if not waits:
            return None
        now: LimitUsage | None = yield _Read(partial(self.ledger.limit_usage, limit_id, instance or None))
        if now is None:  # removed meanwhile
            return None
        return LimitRefusal(rid, limit, instance, now.used, _demand(estimate).of(limit.kind), 0.0)

    # Clamping tries a smaller output cap until one fits: at most once per budget, plus one.
    def _clamping(
        self, rid: str, attrs: Attributes, estimate: Estimate, refusal: Refusal
    ) -> Generator[_Step, Any, tuple[Reservation, Estimate, int]]:
        for _ in range(len(self.ledger.budgets()) + 1):
            estimate, affordable = self._smaller(estimate, refusal)
            result = yield _reserve(rid, attrs, estimate)
            if isinstance(result, Reservation):
                return result, estimate, affordable
            if isinstance(result, LimitRefusal):
                raise result.to_error()
            refusal = result
        raise refusal.to_error()

    def _capped(
        self, endpoint: Endpoint, estimate: Estimate, cap: Money, policy: OnExceed | None
    ) -> tuple[Estimate, int]:
        """The estimate with the output cap whose worst case fits the per-request ``cap``
        (clamp), or CostCapExceededError saying that cap where one exists."""
        has_cap = endpoint in _MAX_OUTPUT_FIELDS and estimate.max_output_tokens > 0
        affordable = estimate.max_output_affordable(cap) if has_cap else 0
        if policy == "clamp" and affordable >= self.min_output_tokens:
            return estimate.with_max_output(affordable), affordable
        fits = 0 < affordable < estimate.max_output_tokens
        raise CostCapExceededError(
            max_cost=cap,
            requested=estimate.amount,
            fit_output_tokens=affordable if fits else None,
            fit_field=_MAX_OUTPUT_FIELDS[endpoint][-1] if has_cap else "max_tokens",
        )

    def _smaller(self, estimate: Estimate, refusal: Refusal) -> tuple[Estimate, int]:
        """The estimate with the output cap the refusing budget still affords, or raise."""
        affordable = estimate.max_output_affordable(refusal.available)
        if affordable < self.min_output_tokens or estimate.max_output_tokens == 0:
            raise refusal.to_error()
        return estimate.with_max_output(affordable), affordable

    # -- waiting ------------------------------------------------------------------
    def _keys(self, attrs: Attributes) -> list[str]:
        """The wait lines this request would join: its budgets' and rate limits' instances."""
        keys = [f"{b.id}|{inst}" for b in self.ledger.budgets() for inst in b.matches(attrs)]
        keys += [
            f"{_LIMIT_LINE}{lim.id}|{inst}" for lim in self.ledger.limits() for inst in lim.matches(attrs)
        ]
        return keys

    def _policy_of(self, budget_id: str) -> OnExceed:
        try:
            policy = self.ledger.get_budget(budget_id).on_exceed
        except KeyError:  # removed meanwhile
            return "raise"
        # A soft budget never refuses; should it be one now (changed meanwhile), nothing to wait for.
        return "raise" if policy == "alert" else policy

    def _queued_refusal(
        self, rid: str, key: str, estimate: Estimate
    ) -> Generator[_Step, Any, Refusal | None]:
        budget_id, _, instance = key.partition("|")
        usage: BudgetUsage | None = yield _Read(partial(self.ledger.usage, budget_id, instance or None))
        if usage is None:  # removed meanwhile: nothing to wait behind
            return None
        return Refusal(
            request_id=rid,
            budget_id=budget_id,
            label=usage.label,
            selector=dict(usage.selector),
            instance=dict(usage.instance),
            spent=usage.spent,
            reserved=usage.reserved,
            limit=usage.limit,
            needed=estimate.amount,
            window_start=usage.window_start,
            resets_at=usage.window_end,
            retry_after=None,
            on_exceed="wait",  # only made for a request that waits in line
        )

    def _deadline(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.max_wait)

    def _waiting(
        self,
        rid: str,
        attrs: Attributes,
        estimate: Estimate,
        refusal: Refusal | LimitRefusal,
        waiter: SyncWaiter | AsyncWaiter,
    ) -> Generator[_Step, Any, Reservation]:
        """Wait in the refusing budget's line; only its head reserves. A refusal by another
        budget moves the waiter to that budget's line."""
        deadline = self._deadline()
        key = _line_key(refusal)
        self._lines.join(key, waiter)
        try:
            while True:
                if self._lines.is_head(key, waiter):
                    result = yield _reserve(rid, attrs, estimate)
                    if isinstance(result, Reservation):
                        return result
                    new_key = _line_key(result)
                    if new_key != key:
                        self._lines.leave(key, waiter)
                        self._lines.join(new_key, waiter)
                    refusal, key = result, new_key
                    if not _may_fit(refusal):  # the limit was set below this request: it never fits
                        raise refusal.to_error()
                if self.clock.now() >= deadline:
                    raise (yield from self._gave_up(refusal))
                yield _Wait(self._tick(refusal))
        finally:
            self._lines.leave(key, waiter)

    def _tick(self, refusal: Refusal | LimitRefusal) -> float:
        if isinstance(refusal, LimitRefusal) and refusal.limit.kind == "concurrency":
            return self.poll_interval  # frees when a request ends: this guard's endings wake it
        if refusal.retry_after is not None:
            return max(0.0, min(self.poll_interval, refusal.retry_after))
        return self.poll_interval

    def _gave_up(
        self, refusal: Refusal | LimitRefusal
    ) -> Generator[_Step, Any, BudgetExceededError | RateLimitExceededError]:
        """The error after waiting in vain, with the budget's (or limit's) numbers as they are now."""
        if isinstance(refusal, LimitRefusal):
            now: LimitUsage | None = yield _Read(
                partial(self.ledger.limit_usage, refusal.limit.id, refusal.instance or None)
            )
            if now is None:  # removed meanwhile
                return refusal.to_error()
            return replace(refusal, used=now.used).to_error()
        fresh: BudgetUsage | None = yield _Read(
            partial(self.ledger.usage, refusal.budget_id, refusal.instance or None)
        )
        if fresh is None:
            return refusal.to_error()
        return replace(
            refusal, spent=fresh.spent, reserved=fresh.reserved, limit=fresh.limit, resets_at=fresh.window_end
        ).to_error()

    def poke(self) -> None:
        """Make every waiter look again now (after a manual clock moved, in tests)."""
        self._lines.wake_all()

    def waiting(self) -> int:
        return self._lines.waiting()

    # -- ending -------------------------------------------------------------------
    # One way to end, ``end`` (blocking) or ``aend`` (asyncio, through the ledger's async
    # calls): the caller says what happened, the ending policy (spendgate.lifecycle.ending)
    # decides, ``_ending`` prices it, and the shell makes the one ledger write.

    def end(self, admission: Admission, report: Report) -> Ended:
        """End ``admission`` as the ending policy decides on ``report``; once (a later call
        returns its own decision with ``outcome`` None and writes nothing)."""
        plan = self._ending(admission, report)
        if admission.ended is not None:
            return replace(plan, record=None)
        admission.ended = "released" if plan.record is None else "settled"
        try:
            if plan.record is None:
                outcome: SettleOutcome | ReleaseOutcome = self.ledger.release(admission.request_id)
            else:
                outcome = self.ledger.settle(admission.request_id, plan.charged, plan.record, _used(plan))
        except BaseException:
            admission.ended = None  # not ended: the caller (or the lease) must still end it
            raise
        if self._lines:
            self._lines.wake_heads()  # a request in flight ended: a concurrency waiter may go
        return self._ended(admission, plan, outcome)

    async def aend(self, admission: Admission, report: Report) -> Ended:
        """``end`` for asyncio. The ledger write is queued before the first suspension, so a
        cancellation while awaiting it cannot skip it; the admission counts as ended from then on."""
        plan = self._ending(admission, report)
        if admission.ended is not None:
            return replace(plan, record=None)
        admission.ended = "released" if plan.record is None else "settled"
        try:
            if plan.record is None:
                outcome: SettleOutcome | ReleaseOutcome = await self.ledger.arelease(admission.request_id)
            else:
                outcome = await self.ledger.asettle(
                    admission.request_id, plan.charged, plan.record, _used(plan)
                )
        except asyncio.CancelledError:
            raise  # queued: it still happens
        except BaseException:
            admission.ended = None
            raise
        if self._lines:
            self._lines.wake_heads()  # a request in flight ended: a concurrency waiter may go
        return self._ended(admission, plan, outcome)

    def _ending(self, admission: Admission, report: Report) -> Ended:
        """The decision and what it charges, before any ledger write."""
        ending = report.decide()
        usage, known, tier, detail = report.usage, report.known, report.tier, report.detail
        est = admission.estimate
        if ending.action is Action.RELEASE:
            return Ended(ending, None, Money(0), None, detail, happened=report.happened)
        asked = admission.request.get("service_tier")
        if ending.action is Action.SETTLE:
            assert usage is not None
            cost = cost_of(
                usage,
                est.price,
                service_tier=tier or (asked if isinstance(asked, str) else None),
                data_residency=admission.where.data_residency,
                endpoint_location=admission.where.endpoint_location,
            )
            charged = cost.total
        else:
            # An upper bound: the reserved output, and the prompt as the provider reported it
            # (PARTIAL) or its bound (the reservation), at the reserved rates; its parts sum to it.
            # A request that may use hosted tools gets their results as input the stream's first
            # report does not count (a search may have run before the cut): its whole bound.
            prompt = (
                known.input_tokens
                if ending.action is Action.PARTIAL and known and not est.tool_calls
                else None
            )
            cost = est.bound_cost(prompt)
            charged = cost.total
        return Ended(
            ending,
            cost,
            charged,
            None,
            detail,
            self._record(admission, cost, ending.status, charged),
            happened=report.happened,
        )

    def _ended(self, admission: Admission, plan: Ended, outcome: SettleOutcome | ReleaseOutcome) -> Ended:
        done = replace(plan, outcome=outcome, record=None)
        if plan.ending.action in (Action.PARTIAL, Action.CHARGE_RESERVATION):
            log.warning(
                "spendgate: %s (%s); charged %s for request %s",
                plan.ending.why,
                plan.detail or plan.ending.status,
                plan.charged.format(),
                admission.request_id,
                extra={"spendgate": {"request_id": admission.request_id}},
            )
        if isinstance(outcome, SettleOutcome):
            admission.outcome = outcome
            if outcome.overshoot:
                log.warning(
                    "provider billed %s above the reservation of %s for %s (request %s)",
                    outcome.overshoot.format(),
                    outcome.estimate.format(),
                    admission.model,
                    admission.request_id,
                    extra={"spendgate": {"request_id": admission.request_id}},
                )
        if logs.line_wanted():
            request_line(
                self._log_fields(
                    admission,
                    cost=plan.cost,
                    decision=plan.ending.status,
                    action=plan.ending.action.value,
                    reason=plan.detail or plan.ending.why,
                    happened=plan.happened.value if plan.happened is not None else None,
                    charged_usd=plan.charged.decimal_str(),
                    ledger_status=outcome.status,
                ),
                "spendgate request %s %s: %s charged %s",
                admission.request_id,
                plan.ending.status,
                admission.model,
                plan.charged,  # str(Money) when the message is made: not at all when held
            )
        return done

    # The ending of a whole answer, and the older names for the endings (kept for callers).

    def settle(self, admission: Admission, usage: Usage, *, service_tier: str | None = None) -> Cost:
        """Charge the actual cost of ``usage`` in place of the reservation (idempotent)."""
        return _cost_of(self.end(admission, Report(Happened.COMPLETE, usage=usage, tier=service_tier)))

    async def settle_async(
        self, admission: Admission, usage: Usage, *, service_tier: str | None = None
    ) -> Cost:
        return _cost_of(await self.aend(admission, Report(Happened.COMPLETE, usage=usage, tier=service_tier)))

    def settle_reserved(self, admission: Admission, why: str) -> Money:
        """Billed, but no usage can be read: charge the whole reservation."""
        return self.end(admission, Report(Happened.COMPLETE, detail=why)).charged

    async def settle_reserved_async(self, admission: Admission, why: str) -> Money:
        return (await self.aend(admission, Report(Happened.COMPLETE, detail=why))).charged

    def settle_partial(
        self, admission: Admission, output_text: str = "", *, status: str = "cut", known: Usage | None = None
    ) -> Cost:
        """Deprecated: a stream that ended without its usage; use ``end(admission, Report(Happened.CUT))``.
        ``output_text`` is ignored: text seen never bounds what a stream cost (see docs/design.md)."""
        warnings.warn(
            "Guard.settle_partial is deprecated; use Guard.end(admission, Report(Happened.CUT, known=...))",
            DeprecationWarning,
            stacklevel=2,
        )
        happened = Happened.CLOSED if status == "closed" else Happened.CUT
        return _cost_of(self.end(admission, Report(happened, known=known)))

    async def settle_partial_async(
        self, admission: Admission, output_text: str = "", *, status: str = "cut", known: Usage | None = None
    ) -> Cost:
        """Deprecated: use ``aend(admission, Report(Happened.CUT, known=...))``."""
        warnings.warn(
            "Guard.settle_partial_async is deprecated; use Guard.aend(admission, Report(Happened.CUT, known=...))",
            DeprecationWarning,
            stacklevel=2,
        )
        happened = Happened.CLOSED if status == "closed" else Happened.CUT
        return _cost_of(await self.aend(admission, Report(happened, known=known)))

    def release(self, admission: Admission, reason: str = "error") -> None:
        """The call failed before the provider could bill: free the reservation."""
        self.end(admission, Report(Happened.NOT_SENT, detail=reason))

    async def release_async(self, admission: Admission, reason: str = "error") -> None:
        await self.aend(admission, Report(Happened.NOT_SENT, detail=reason))

    def _record(self, admission: Admission, cost: Cost, status: str, amount: Money) -> RequestRecord:
        breakdown = cost.breakdown()
        del breakdown["total"]
        return RequestRecord(
            request_id=admission.request_id,
            attributes=admission.attributes,
            cost=amount,
            started_at=admission.started_at,
            finished_at=self.clock.now(),
            model=admission.model,
            usage=cost.usage.as_dict(),
            breakdown=breakdown,
            status=status,
        )

    def _log_fields(self, admission: Admission, cost: Cost | None = None, **extra: Any) -> dict[str, Any]:
        """The request line of an admitted request that ended (docs/sdk.md, Logging)."""
        fields = _request_fields(
            admission.request_id,
            admission.endpoint,
            admission.attributes,
            admission.estimate,
            admission.started_monotonic,
            waited=admission.waited_seconds,
        )
        fields["reserved_usd"] = admission.reserved.decimal_str()
        fields["budgets"] = [line.budget_id for line in admission.reservation.lines]
        fields.update(extra)
        if admission.clamped_to is not None:
            fields["clamped_to"] = admission.clamped_to
        if cost is not None:
            fields["tokens"] = cost.usage.as_dict()
            # The parts that cost anything, and the total: a shorter line, the same sum.
            fields["cost_usd"] = {k: v for k, v in cost.as_dict().items() if v != "0" or k == "total"}
        if admission.outcome is not None and admission.outcome.remaining is not None:
            # Read by the settle's own transaction: logging costs no ledger call.
            fields["budget_remaining_usd"] = admission.outcome.remaining.decimal_str()
        return fields

    def _log_refusal(
        self,
        rid: str,
        endpoint: Endpoint,
        attrs: Attributes,
        estimate: Estimate,
        err: BudgetExceededError,
        started: float,
    ) -> None:
        """The request line of a request a budget refused: a normal answer, so INFO."""
        fields = _request_fields(rid, endpoint, attrs, estimate, started, waited=time.monotonic() - started)
        fields["estimate_usd"] = estimate.amount.decimal_str()
        fields["budgets"] = [err.budget_id]
        fields["decision"] = "refused"
        fields["action"] = "refuse"
        fields["reason"] = "budget_paused" if err.paused else "budget_exceeded"
        fields["budget_remaining_usd"] = max(Money(0), err.limit - err.spent - err.reserved).decimal_str()
        if err.retry_after is not None:
            fields["retry_after"] = round(err.retry_after, 3)
        request_line(
            fields,
            "spendgate request %s refused by budget %r: %s needs up to %s",
            rid,
            err.budget_id,
            estimate.model,
            estimate.amount,
        )

    def _log_limit_refusal(
        self,
        rid: str,
        endpoint: Endpoint,
        attrs: Attributes,
        estimate: Estimate,
        err: RateLimitExceededError,
        started: float,
    ) -> None:
        """The request line of a request a rate limit refused (INFO, like a budget's refusal)."""
        fields = _request_fields(rid, endpoint, attrs, estimate, started, waited=time.monotonic() - started)
        fields["estimate_usd"] = estimate.amount.decimal_str()
        fields["limits"] = [err.limit_id]
        fields["decision"] = "refused"
        fields["action"] = "refuse"
        fields["reason"] = "prompt_too_large" if err.kind == "prompt_tokens" else "rate_limited"
        fields["limit_remaining"] = str(err.remaining)
        if err.retry_after is not None:
            fields["retry_after"] = round(err.retry_after, 3)
        request_line(
            fields,
            "spendgate request %s refused by limit %r: %s needs %s",
            rid,
            err.limit_id,
            estimate.model,
            err.requested_text,
        )

    def _log_cap_refusal(
        self,
        rid: str,
        endpoint: Endpoint,
        attrs: Attributes,
        estimate: Estimate,
        err: CostCapExceededError,
        started: float,
    ) -> None:
        """The request line of a request over its own cost cap (INFO, like a budget's refusal)."""
        fields = _request_fields(rid, endpoint, attrs, estimate, started, waited=0.0)
        fields["estimate_usd"] = estimate.amount.decimal_str()
        fields["max_cost_usd"] = err.max_cost.decimal_str()
        fields["decision"] = "refused"
        fields["action"] = "refuse"
        fields["reason"] = "cost_cap_exceeded"
        request_line(
            fields,
            "spendgate request %s refused by its cost cap of %s: %s needs up to %s",
            rid,
            err.max_cost,
            estimate.model,
            estimate.amount,
        )

    def close(self) -> None:
        """Write the refusals not yet counted in the ledger, stop listening to it, and close it
        if this guard opened it from a URL."""
        self.refusals.flush(self.ledger)
        self._unsubscribe()
        if self._owns_ledger:
            self.ledger.close()


def _request_fields(
    rid: str, endpoint: Endpoint, attrs: Attributes, estimate: Estimate, started: float, *, waited: float
) -> dict[str, Any]:
    """What every request line says, admitted or refused: who, what, and its worst case."""
    fields: dict[str, Any] = {
        "request_id": rid,
        "endpoint": endpoint,
        "model": estimate.model,
        "attributes": attrs.to_dict(),
        "prompt_tokens_bound": estimate.prompt.tokens,
        "max_output_tokens": estimate.max_output_tokens,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
    }
    if estimate.price.provider:
        fields["provider"] = estimate.price.provider
    if waited >= 0.001:
        fields["waited_seconds"] = round(waited, 3)
    return fields


def _suggest_fit(err: BudgetExceededError, endpoint: Endpoint, estimate: Estimate) -> None:
    """Tell the caller the output cap the refusing budget still affords, where one would fit."""
    if err.paused or endpoint not in _MAX_OUTPUT_FIELDS:
        return
    available = err.limit - err.spent - err.reserved
    affordable = estimate.max_output_affordable(available) if available > Money(0) else 0
    if 0 < affordable < estimate.max_output_tokens:
        err.suggest_output_cap(affordable, _MAX_OUTPUT_FIELDS[endpoint][-1])


def _may_fit(refusal: Refusal | LimitRefusal) -> bool:
    """Whether waiting can admit the request: it fits under the limit once others' spend is
    gone, or the limit is 0, a pause that only a raise (or a reset) ends, so wait for it; a
    paced budget or a rate limit says itself when it will (``retry_after`` None: never)."""
    if isinstance(refusal, LimitRefusal) or refusal.paced:
        return refusal.retry_after is not None
    return refusal.needed <= refusal.limit or not refusal.limit


def _line_key(refusal: Refusal | LimitRefusal) -> str:
    """The wait line of the budget or limit instance that refused."""
    if isinstance(refusal, LimitRefusal):
        return f"{_LIMIT_LINE}{refusal.limit.id}|{refusal.instance}"
    return f"{refusal.budget_id}|{instance_key(refusal.instance)}"


#: The prefix of a rate limit's wait line (budget lines are ``<budget id>|<instance>``; an id
#: never holds a control character, so no budget's line can look like a limit's).
_LIMIT_LINE: Final = "\x1flimit:"


def _demand(estimate: Estimate) -> Demand:
    """What the request takes from rate limits at its worst: one request, the prompt's bound,
    every output it may generate, and its estimate."""
    return Demand(
        input_tokens=estimate.prompt.tokens,
        output_tokens=estimate.n * estimate.max_output_tokens,
        cost=estimate.amount.nanos,
    )


def _reserve(rid: str, attrs: Attributes, estimate: Estimate) -> _Reserve:
    return _Reserve(rid, attrs, estimate.amount, _demand(estimate))


def _used(plan: Ended) -> Demand | None:
    """What a settled request used, for rate limits: the provider's report of its tokens
    (None when the charge is a bound: the reserved worst case stays counted)."""
    if plan.ending.action is not Action.SETTLE or plan.cost is None:
        return None
    usage = plan.cost.usage
    return Demand(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cost=plan.charged.nanos)


@dataclass(frozen=True, slots=True)
class Ended:
    """How a request ended: the policy's decision, what it charged, and the ledger's answer."""

    ending: Ending
    #: The cost charged, with its breakdown (None when released).
    cost: Cost | None
    charged: Money
    #: The ledger's answer; None when the request had already ended.
    outcome: SettleOutcome | ReleaseOutcome | None
    #: What the caller said of the ending (an error's name, a status), for the log.
    detail: str | None = None
    record: RequestRecord | None = field(default=None, repr=False)
    #: What the caller reported (a release's line tells a provider's refusal from a request never sent).
    happened: Happened | None = None


def _cost_of(ended: Ended) -> Cost:
    if ended.cost is None:
        raise ValueError(f"request was released, not charged ({ended.ending.why})")
    return ended.cost


class _Reserve(NamedTuple):
    """A step of the admission: reserve ``amount`` (and ``demand`` of rate limits) for the
    request (the ledger's arguments)."""

    rid: str
    attrs: Attributes
    amount: Money
    demand: Demand


@dataclass(frozen=True, slots=True)
class _Wait:
    """A step of the admission: the shell's waiter waits until woken or ``seconds`` pass."""

    seconds: float


@dataclass(frozen=True, slots=True)
class _Read:
    """A step of the admission: a blocking ledger read (the async shell runs it on a thread, so
    a waiting request never blocks the event loop). What it gives back: the call's result, or
    None when what it reads was removed meanwhile (KeyError)."""

    call: Callable[[], Any]

    def run(self) -> Any:
        try:
            return self.call()
        except KeyError:
            return None


_Step = _Reserve | _Wait | _Read


def _next(steps: Generator[_Step, Any, Admission], value: Any) -> _Step | Admission:
    """The admission's next step, given the last one's result; the Admission when it is done."""
    try:
        return steps.send(value)
    except StopIteration as done:
        return cast(Admission, done.value)
