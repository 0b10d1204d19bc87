"""The request lifecycle, in one place (DESIGN.md):

    attribute -> price -> worst-case estimate -> reserve -> call -> settle
                                                   |               \\-> release (failed call)
                                                   \\-> raise / wait / clamp

Every integration (the openai and anthropic wrappers, ``spendgate.Client``)
and the gateway use a ``Guard``: ``admit()`` before the call, then exactly one
of ``settle()`` (with the response's usage), ``settle_partial()`` (a stream
cut short) or ``release()`` (the call failed and nothing was billed).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from spendgate import attribution
from spendgate.budgets import Attributes, Budget, instance_key
from spendgate.clock import Clock, SystemClock
from spendgate.cost import Cost, cost_of
from spendgate.errors import BudgetExceededError, ConfigError
from spendgate.estimate import Endpoint, Estimate, estimate_request
from spendgate.ledger import (
    Ledger,
    Refusal,
    ReleaseOutcome,
    RequestRecord,
    Reservation,
    SettleOutcome,
    open_ledger,
)
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog, UnknownModelPolicy
from spendgate.tokens import TokenCounter, default_counter
from spendgate.usage import Usage
from spendgate.waiting import AsyncWaiter, SyncWaiter, WaitLines

log = logging.getLogger("spendgate.requests")

OnExceed = Literal["raise", "wait", "clamp"]
ON_EXCEED: Final = ("raise", "wait", "clamp")

#: Where each endpoint takes its output cap; the first name is the one the guard sets.
_MAX_OUTPUT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "messages": ("max_tokens",),
}


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
        catalog: Catalog | None = None,
        counter: TokenCounter | None = None,
        on_exceed: OnExceed | None = None,
        unknown_model: UnknownModelPolicy = "refuse",
        max_wait: float = 60.0,
        min_output_tokens: int = 16,
        lease: float = 600.0,
        poll_interval: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
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
        parsed = [
            b if isinstance(b, Budget) else Budget.from_config(b, where=f"budgets[{i}]")
            for i, b in enumerate(budgets)
        ]
        self._owns_ledger = isinstance(ledger, str)
        if isinstance(ledger, str):
            ledger = open_ledger(ledger, budgets=parsed, clock=clock)
        else:
            for budget in parsed:
                ledger.put_budget(budget)
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
        self._unsubscribe = ledger.on_change(lambda _event: self._lines.wake_heads())

    # -- admission ----------------------------------------------------------------
    def prepare(
        self,
        endpoint: Endpoint,
        request: Mapping[str, Any],
        *,
        attributes: Mapping[str, Any] | Attributes | None = None,
        request_id: str | None = None,
    ) -> tuple[str, Attributes, Estimate, dict[str, Any], bool]:
        """Attribute, price and estimate, without touching the ledger."""
        body = dict(request)
        model = body.get("model")
        estimate = estimate_request(endpoint, body, catalog=self.catalog, counter=self.counter)
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
    ) -> Admission:
        """Reserve the worst case of ``request`` in every matching budget, or raise/wait/clamp."""
        begun = self._begin(endpoint, request, attributes, request_id, on_exceed)
        if isinstance(begun.result, Refusal):
            begun.result = self._wait_sync(begun.request_id, begun.attributes, begun.estimate, begun.result)
        return self._admitted(endpoint, begun)

    async def admit_async(
        self,
        endpoint: Endpoint,
        request: Mapping[str, Any],
        *,
        attributes: Mapping[str, Any] | Attributes | None = None,
        request_id: str | None = None,
        on_exceed: OnExceed | None = None,
    ) -> Admission:
        """``admit`` for asyncio: waiting suspends the task, never the loop, and the first try
        goes through the ledger's ``areserve`` (SQLite: its group commit)."""
        begun = self._prepared(endpoint, request, attributes, request_id)
        chosen = on_exceed or self.on_exceed
        first: Reservation | Refusal | None = self._queued(begun, chosen)
        if first is None:
            first = await self.ledger.areserve(
                begun.request_id, begun.attributes, begun.estimate.amount, self.lease
            )
        if self._after_first(begun, first, chosen) == "clamp":
            assert isinstance(first, Refusal)
            begun.result, begun.estimate, begun.clamped = await self._clamp_async(
                begun.request_id, begun.attributes, begun.estimate, first
            )
        if isinstance(begun.result, Refusal):
            begun.result = await self._wait_async(
                begun.request_id, begun.attributes, begun.estimate, begun.result
            )
        return self._admitted(endpoint, begun)

    def _begin(
        self,
        endpoint: Endpoint,
        request: Mapping[str, Any],
        attributes: Mapping[str, Any] | Attributes | None,
        request_id: str | None,
        on_exceed: OnExceed | None,
    ) -> _Begun:
        begun = self._prepared(endpoint, request, attributes, request_id)
        chosen = on_exceed or self.on_exceed
        first: Reservation | Refusal | None = self._queued(begun, chosen)
        if first is None:
            first = self.ledger.reserve(begun.request_id, begun.attributes, begun.estimate.amount, self.lease)
        if self._after_first(begun, first, chosen) == "clamp":
            assert isinstance(first, Refusal)
            begun.result, begun.estimate, begun.clamped = self._clamp(
                begun.request_id, begun.attributes, begun.estimate, first
            )
        return begun

    def _prepared(
        self,
        endpoint: Endpoint,
        request: Mapping[str, Any],
        attributes: Mapping[str, Any] | Attributes | None,
        request_id: str | None,
    ) -> _Begun:
        rid, attrs, estimate, body, added = self.prepare(
            endpoint, request, attributes=attributes, request_id=request_id
        )
        return _Begun(rid, attrs, estimate, body, added, None, None, time.monotonic())

    def _queued(self, begun: _Begun, chosen: OnExceed | None) -> Refusal | None:
        """A refusal without trying when others already wait on one of this request's budgets
        (and that budget waits): no overtaking."""
        if self._lines and (key := self._lines.busy(self._keys(begun.attributes))) is not None:
            budget_id = key.partition("|")[0]
            if (chosen or self._policy_of(budget_id)) == "wait":
                return self._queued_refusal(begun.request_id, key, begun.estimate)
        return None

    def _after_first(
        self, begun: _Begun, result: Reservation | Refusal, chosen: OnExceed | None
    ) -> Literal["done", "clamp"]:
        """Admitted or about to wait (``begun.result`` a Refusal): "done"; "clamp"; or raise."""
        begun.result = result
        if isinstance(result, Reservation):
            return "done"
        policy = chosen or self._policy_of(result.budget_id)
        if policy == "clamp":
            return "clamp"
        if policy == "wait" and self.max_wait > 0 and result.needed <= result.limit:
            return "done"  # the caller waits
        raise result.to_error()

    # Clamping tries a smaller output cap until one fits: at most once per budget, plus one.
    def _clamp(
        self, rid: str, attrs: Attributes, estimate: Estimate, refusal: Refusal
    ) -> tuple[Reservation, Estimate, int]:
        for _ in range(len(self.ledger.budgets()) + 1):
            estimate, affordable = self._smaller(estimate, refusal)
            result = self.ledger.reserve(rid, attrs, estimate.amount, self.lease)
            if isinstance(result, Reservation):
                return result, estimate, affordable
            refusal = result
        raise refusal.to_error()

    async def _clamp_async(
        self, rid: str, attrs: Attributes, estimate: Estimate, refusal: Refusal
    ) -> tuple[Reservation, Estimate, int]:
        for _ in range(len(self.ledger.budgets()) + 1):
            estimate, affordable = self._smaller(estimate, refusal)
            result = await self.ledger.areserve(rid, attrs, estimate.amount, self.lease)
            if isinstance(result, Reservation):
                return result, estimate, affordable
            refusal = result
        raise refusal.to_error()

    def _smaller(self, estimate: Estimate, refusal: Refusal) -> tuple[Estimate, int]:
        """The estimate with the output cap the refusing budget still affords, or raise."""
        affordable = estimate.max_output_affordable(refusal.available)
        if affordable < self.min_output_tokens or estimate.max_output_tokens == 0:
            raise refusal.to_error()
        return estimate.with_max_output(affordable), affordable

    def _admitted(self, endpoint: Endpoint, begun: _Begun) -> Admission:
        assert isinstance(begun.result, Reservation)
        body = begun.body
        if begun.clamped is not None:
            fields = _MAX_OUTPUT_FIELDS[endpoint]
            name = next((f for f in fields if f in body), fields[0])
            body[name] = begun.clamped
        return Admission(
            request_id=begun.request_id,
            endpoint=endpoint,
            model=begun.estimate.model,
            attributes=begun.attributes,
            estimate=begun.estimate,
            reservation=begun.result,
            request=body,
            added_stream_usage=begun.added_usage,
            clamped_to=begun.clamped,
            waited_seconds=time.monotonic() - begun.started,
            started_at=self.clock.now(),
        )

    # -- waiting ------------------------------------------------------------------
    def _keys(self, attrs: Attributes) -> list[str]:
        return [f"{b.id}|{inst}" for b in self.ledger.budgets() for inst in b.matches(attrs)]

    def _policy_of(self, budget_id: str) -> OnExceed:
        try:
            return self.ledger.get_budget(budget_id).on_exceed
        except KeyError:  # removed meanwhile
            return "raise"

    def _queued_refusal(self, rid: str, key: str, estimate: Estimate) -> Refusal:
        budget_id, _, instance = key.partition("|")
        usage = self.ledger.usage(budget_id, instance or None)
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
        )

    def _deadline(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.max_wait)

    def _wait_sync(self, rid: str, attrs: Attributes, estimate: Estimate, refusal: Refusal) -> Reservation:
        waiter = SyncWaiter()
        deadline = self._deadline()
        key = _line_key(refusal)
        self._lines.join(key, waiter)
        try:
            while True:
                got, refusal, key = self._try_as_head(key, waiter, rid, attrs, estimate, refusal)
                if got is not None:
                    return got
                if self.clock.now() >= deadline:
                    raise self._gave_up(refusal)
                waiter.wait(self._tick(refusal))
        finally:
            self._lines.leave(key, waiter)

    async def _wait_async(
        self, rid: str, attrs: Attributes, estimate: Estimate, refusal: Refusal
    ) -> Reservation:
        waiter = AsyncWaiter()
        deadline = self._deadline()
        key = _line_key(refusal)
        self._lines.join(key, waiter)
        try:  # a cancelled waiter leaves its line here and holds nothing
            while True:
                got: Reservation | None = None
                if self._lines.is_head(key, waiter):
                    result = await self.ledger.areserve(rid, attrs, estimate.amount, self.lease)
                    got, refusal, key = self._after_head_try(key, waiter, result, refusal)
                if got is not None:
                    return got
                if self.clock.now() >= deadline:
                    raise self._gave_up(refusal)
                await waiter.wait(self._tick(refusal))
        finally:
            self._lines.leave(key, waiter)

    def _try_as_head(
        self,
        key: str,
        waiter: SyncWaiter | AsyncWaiter,
        rid: str,
        attrs: Attributes,
        estimate: Estimate,
        refusal: Refusal,
    ) -> tuple[Reservation | None, Refusal, str]:
        """Only the head of a line reserves; a refusal by another budget moves to that budget's line."""
        if not self._lines.is_head(key, waiter):
            return None, refusal, key
        result = self.ledger.reserve(rid, attrs, estimate.amount, self.lease)
        return self._after_head_try(key, waiter, result, refusal)

    def _after_head_try(
        self, key: str, waiter: SyncWaiter | AsyncWaiter, result: Reservation | Refusal, refusal: Refusal
    ) -> tuple[Reservation | None, Refusal, str]:
        if isinstance(result, Reservation):
            return result, refusal, key
        new_key = _line_key(result)
        if new_key != key:
            self._lines.leave(key, waiter)
            self._lines.join(new_key, waiter)
        return None, result, new_key

    def _tick(self, refusal: Refusal) -> float:
        if refusal.retry_after is not None:
            return max(0.0, min(self.poll_interval, refusal.retry_after))
        return self.poll_interval

    def _gave_up(self, refusal: Refusal) -> BudgetExceededError:
        """The error after waiting in vain, with the budget's numbers as they are now."""
        fresh = self.ledger.usage(refusal.budget_id, refusal.instance or None)
        return replace(
            refusal, spent=fresh.spent, reserved=fresh.reserved, limit=fresh.limit, resets_at=fresh.window_end
        ).to_error()

    def poke(self) -> None:
        """Make every waiter look again now (after a manual clock moved, in tests)."""
        self._lines.wake_all()

    def waiting(self) -> int:
        return self._lines.waiting()

    # -- ending -------------------------------------------------------------------
    # Each way to end has an async twin for event-loop callers: the ledger write goes through
    # ``asettle``/``arelease`` (SQLite: the group commit). The write is queued before the first
    # suspension, so a cancellation while awaiting it cannot skip it; the admission counts as
    # ended from then on.

    def settle(self, admission: Admission, usage: Usage, *, service_tier: str | None = None) -> Cost:
        """Charge the actual cost of ``usage`` in place of the reservation (idempotent)."""
        cost = self._cost(admission, usage, service_tier)
        self._end(admission, cost, "ok")
        return cost

    async def settle_async(
        self, admission: Admission, usage: Usage, *, service_tier: str | None = None
    ) -> Cost:
        cost = self._cost(admission, usage, service_tier)
        await self._end_async(admission, cost, "ok")
        return cost

    def settle_partial(
        self, admission: Admission, output_text: str, *, status: str = "cut", known: Usage | None = None
    ) -> Cost:
        """A stream that ended without its final usage: the output seen so far, and the prompt
        as far as it is known (``known``: e.g. Anthropic's message_start), else its upper bound."""
        cost = self._partial_cost(admission, output_text, known)
        self._end(admission, cost, status)
        return cost

    async def settle_partial_async(
        self, admission: Admission, output_text: str, *, status: str = "cut", known: Usage | None = None
    ) -> Cost:
        cost = self._partial_cost(admission, output_text, known)
        await self._end_async(admission, cost, status)
        return cost

    def settle_reserved(self, admission: Admission, why: str) -> Money:
        """No usage can be read from a response that was billed: charge the whole reservation."""
        self._end(admission, self._reserved_cost(admission, why), "unread", charge=admission.reserved)
        return admission.reserved

    async def settle_reserved_async(self, admission: Admission, why: str) -> Money:
        cost = self._reserved_cost(admission, why)
        await self._end_async(admission, cost, "unread", charge=admission.reserved)
        return admission.reserved

    def release(self, admission: Admission, reason: str = "error") -> None:
        """The call failed and nothing was billed: free the reservation."""
        if admission.ended is not None:
            return
        outcome = self.ledger.release(admission.request_id)
        admission.ended = "released"
        self._released(admission, reason, outcome)

    async def release_async(self, admission: Admission, reason: str = "error") -> None:
        if admission.ended is not None:
            return
        admission.ended = "released"
        try:
            outcome = await self.ledger.arelease(admission.request_id)
        except asyncio.CancelledError:
            raise  # queued: it still happens
        except BaseException:
            admission.ended = None  # not ended: the caller (or the lease) must still end it
            raise
        self._released(admission, reason, outcome)

    def _released(self, admission: Admission, reason: str, outcome: ReleaseOutcome) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info(
                "spendgate request released (%s)",
                reason,
                extra={
                    "spendgate": self._log_fields(
                        admission, decision="released", reason=reason, status=outcome.status
                    )
                },
            )

    @staticmethod
    def _cost(admission: Admission, usage: Usage, service_tier: str | None) -> Cost:
        tier = service_tier or admission.request.get("service_tier")
        return cost_of(usage, admission.estimate.price, service_tier=tier if isinstance(tier, str) else None)

    def _partial_cost(self, admission: Admission, output_text: str, known: Usage | None) -> Cost:
        out = self.counter.count_text(admission.model, output_text).tokens
        if known is not None:
            usage = Usage(
                input_tokens=known.input_tokens,
                cache_read_tokens=known.cache_read_tokens,
                cache_write_tokens=known.cache_write_tokens,
                cache_write_1h_tokens=known.cache_write_1h_tokens,
                audio_input_tokens=known.audio_input_tokens,
                output_tokens=max(out, known.output_tokens),
            )
        else:
            usage = Usage(input_tokens=admission.estimate.prompt.tokens, output_tokens=out)
        return cost_of(usage, admission.estimate.price)

    @staticmethod
    def _reserved_cost(admission: Admission, why: str) -> Cost:
        log.warning("spendgate: %s; charging the reserved worst case for %s", why, admission.request_id)
        est = admission.estimate
        bound = Usage(input_tokens=est.prompt.tokens, output_tokens=est.max_output_tokens * est.n)
        return cost_of(bound, est.price)

    def _end(self, admission: Admission, cost: Cost, status: str, charge: Money | None = None) -> None:
        if admission.ended is not None:
            return
        amount = cost.total if charge is None else charge
        record = self._record(admission, cost, status, amount)
        self._ended(admission, cost, status, self.ledger.settle(admission.request_id, amount, record))

    async def _end_async(
        self, admission: Admission, cost: Cost, status: str, charge: Money | None = None
    ) -> None:
        if admission.ended is not None:
            return
        amount = cost.total if charge is None else charge
        record = self._record(admission, cost, status, amount)
        admission.ended = "settled"
        try:
            outcome = await self.ledger.asettle(admission.request_id, amount, record)
        except asyncio.CancelledError:
            raise  # queued: it still happens
        except BaseException:
            admission.ended = None  # not ended: the caller (or the lease) must still end it
            raise
        self._ended(admission, cost, status, outcome)

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

    def _ended(self, admission: Admission, cost: Cost, status: str, outcome: SettleOutcome) -> None:
        admission.ended = "settled"
        admission.outcome = outcome
        if outcome.overshoot:
            log.warning(
                "provider billed %s above the reservation of %s for %s (request %s)",
                outcome.overshoot.format(),
                outcome.estimate.format(),
                admission.model,
                admission.request_id,
            )
        if log.isEnabledFor(logging.INFO):
            log.info(
                "spendgate request %s: %s cost %s",
                admission.request_id,
                admission.model,
                cost.total.format(),
                extra={
                    "spendgate": self._log_fields(
                        admission, cost=cost, decision=status, status=outcome.status
                    )
                },
            )

    def _log_fields(self, admission: Admission, cost: Cost | None = None, **extra: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "request_id": admission.request_id,
            "endpoint": admission.endpoint,
            "model": admission.model,
            "attributes": admission.attributes.to_dict(),
            "reserved_usd": admission.reserved.decimal_str(),
            "prompt_tokens_bound": admission.estimate.prompt.tokens,
            "max_output_tokens": admission.estimate.max_output_tokens,
            "duration_ms": round((time.monotonic() - admission.started_monotonic) * 1000, 3),
            **extra,
        }
        if admission.clamped_to is not None:
            fields["clamped_to"] = admission.clamped_to
        if admission.waited_seconds >= 0.001:
            fields["waited_seconds"] = round(admission.waited_seconds, 3)
        if cost is not None:
            fields["tokens"] = cost.usage.as_dict()
            fields["cost_usd"] = cost.as_dict()
        budgets = {}
        for line in admission.reservation.lines:
            usage = self.ledger.usage(line.budget_id, line.instance or None)
            budgets[usage.label] = usage.percent
        fields["budgets_used_percent"] = budgets
        return fields

    def close(self) -> None:
        """Stop listening to the ledger, and close it if this guard opened it from a URL."""
        self._unsubscribe()
        if self._owns_ledger:
            self.ledger.close()


def _line_key(refusal: Refusal) -> str:
    """The wait line of the budget instance that refused."""
    return f"{refusal.budget_id}|{instance_key(refusal.instance)}"


@dataclass(slots=True)
class _Begun:
    """A request after its first try at the ledger (admitted, or about to wait)."""

    request_id: str
    attributes: Attributes
    estimate: Estimate
    body: dict[str, Any]
    added_usage: bool
    result: Reservation | Refusal | None  # None until the first try
    clamped: int | None
    started: float
