"""The simple case: an OpenAI-compatible client with one cost tracking budget.

    client = spendgate.Client(api_key="...", cost_tracking_budget=100)
    client.chat.completions.create(model="gpt-4o", messages=[...])
    client.spent, client.remaining

It is an ``openai.OpenAI`` (``client.openai``) guarded by ``spendgate.wrap``
with one global budget ``{"id": "client", "limit": cost_tracking_budget,
"window": budget_window}``; every other attribute falls through to it.
``openai`` is imported when a Client is made, not when spendgate is.

Rate limits: ``rpm=`` (requests per minute) and ``tpm=`` (input plus output
tokens per minute) are global limits ``"client/rpm"`` and ``"client/tpm"``
(``budget_id`` is their prefix), and ``limits=`` takes any other
``spendgate.limits.Limit`` or config mapping (docs/limits.md).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from spendgate.budgets import Budget, Window
from spendgate.clock import Clock
from spendgate.errors import ConfigError, SpendgateError
from spendgate.estimate import estimate_request
from spendgate.guard import ON_EXCEED, Guard, OnExceed
from spendgate.ledger import BudgetUsage, Ledger, open_ledger
from spendgate.limits import Limit, LimitKind, LimitOnExceed, LimitUsage
from spendgate.money import Money, MoneyError

if TYPE_CHECKING:
    import openai
    from openai.resources import AsyncCompletions, AsyncEmbeddings, Completions, Embeddings
    from openai.resources.chat import AsyncChat, Chat
    from openai.resources.responses import AsyncResponses, Responses

__all__ = ["BUDGET_ID", "AsyncClient", "BudgetTooSmallWarning", "Client"]

#: The id of the Client's one budget in its ledger.
BUDGET_ID: Final = "client"
#: A short prompt: what "one request" means for the construction-time check.
_PROBE: Final = [{"role": "user", "content": "Hello! Please answer briefly."}]


class BudgetTooSmallWarning(UserWarning):
    """The budget cannot pay for one request of the default model at its max output."""


def _parse_budget(value: object) -> Money | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise TypeError(
            "cost_tracking_budget must be USD as an int, a float, a string or a Decimal, "
            f"got {type(value).__name__}"
        )
    try:
        return Money.parse(value, what="cost_tracking_budget")
    except MoneyError as exc:
        raise ConfigError("cost_tracking_budget", str(exc).removeprefix("cost_tracking_budget: ")) from None


def _check_shared(ledger: Ledger, budget: Budget) -> None:
    """Two Clients on one ledger share a budget id only on purpose: the same limit and window.
    A different definition would silently replace the first (its spend capped by the other's
    limit), so it is an error naming both."""
    try:
        existing = ledger.get_budget(budget.id)
    except KeyError:
        return
    if (existing.limit, existing.window) == (budget.limit, budget.window):
        return
    raise ConfigError(
        "budget_id",
        f"this ledger already holds a budget {budget.id!r} of {_plain(existing.limit)} USD "
        f"({existing.label()}); this Client asks for {_plain(budget.limit)} USD ({budget.label()}). "
        "Pass budget_id='...' to keep them apart, or the same limit and window to share it",
    )


def _check_shared_limit(ledger: Ledger, limit: Limit, key: str) -> None:
    """A limit id shared by two Clients on one ledger must mean the same limit (what it counts,
    how much, over what window and for whom), as for budgets: an error naming both."""
    try:
        existing = ledger.get_limit(limit.id)
    except KeyError:
        return
    if _definition(existing) == _definition(limit):
        return
    raise ConfigError(
        key,
        f"this ledger already holds a limit {limit.id!r} ({existing.label()}); this Client asks "
        f"for {limit.label()}. Pass budget_id='...' (or an id) to keep them apart, or the same "
        "limit to share it",
    )


def _definition(limit: Limit) -> tuple[object, ...]:
    return (dict(limit.selector), limit.kind, limit.amount, limit.per)


def _per_minute(value: object, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"must be a whole number >= 1 (or None), got {value!r}")
    return value


def _client_limits(
    rpm: object,
    tpm: object,
    limits: Iterable[Limit | Mapping[str, Any]] | None,
    budget_id: str,
    on_exceed: OnExceed,
) -> list[tuple[str, Limit]]:
    """(where it came from, the limit) of every limit the Client asks for. rpm and tpm are global
    like the Client's budget, with ids under its ``budget_id``; a mapping in ``limits`` without
    an id gets one there too, and the Client's ``on_exceed`` when it gives none."""
    waits: LimitOnExceed = "wait" if on_exceed == "wait" else "raise"  # clamping cannot fit a window
    minute = timedelta(minutes=1)
    out: list[tuple[str, Limit]] = []
    simple: tuple[tuple[str, LimitKind, object], ...] = (("rpm", "requests", rpm), ("tpm", "tokens", tpm))
    for key, kind, amount in simple:
        count = _per_minute(amount, key)
        if count is not None:
            out.append((key, Limit(f"{budget_id}/{key}", {}, kind, count, per=minute, on_exceed=waits)))
    if limits is None:
        return out
    if isinstance(limits, Limit | Mapping | str):
        raise ConfigError("limits", "must be a list of limits (Limit objects or mappings)")
    for i, each in enumerate(limits):
        where = f"limits[{i}]"
        if isinstance(each, Limit):
            out.append((where, each))
            continue
        if not isinstance(each, Mapping):
            raise ConfigError(where, f"a limit is a Limit or a mapping, got {type(each).__name__}")
        config = dict(each)
        if "on_exceed" not in config and "prompt_tokens" not in config:
            config["on_exceed"] = waits
        limit = Limit.from_config(config, where=where)
        if "id" not in config:  # "client/global/concurrency": under the Client's budget_id
            limit = replace(limit, id=f"{budget_id}/{limit.id}")
        out.append((where, limit))
    return out


def _plain(amount: Money) -> str:
    text = amount.format().lstrip("$").replace(",", "")
    return text[:-3] if text.endswith(".00") else text


class _Base:
    """What Client and AsyncClient share: the guard, the budget, the spend, and making the
    guarded ``openai`` client of class ``_openai_class`` (the one thing they differ in)."""

    guard: Guard

    def __init__(
        self,
        api_key: str | None = None,
        *,
        cost_tracking_budget: int | float | str | Decimal | None = None,
        budget_window: str | None = None,
        base_url: str | None = None,
        default_model: str = "gpt-4o",
        ledger: Ledger | str = "memory://",
        on_exceed: OnExceed = "raise",
        budget_id: str = BUDGET_ID,
        max_wait: float = 60.0,
        rpm: int | None = None,
        tpm: int | None = None,
        limits: Iterable[Limit | Mapping[str, Any]] | None = None,
        clock: Clock | None = None,
        **openai_kwargs: Any,
    ) -> None:
        from spendgate.integrations.openai import guard_in_place

        self._setup(
            cost_tracking_budget,
            budget_window,
            default_model,
            ledger,
            on_exceed,
            budget_id,
            max_wait,
            rpm=rpm,
            tpm=tpm,
            limits=limits,
            clock=clock,
        )
        import openai

        make = getattr(openai, self._openai_class)
        client = make(api_key=api_key, base_url=base_url, **openai_kwargs)
        guard_in_place(client, self.guard, default_model=default_model)
        self.openai = client

    #: The name of the ``openai`` client class this one guards (imported when a client is made).
    _openai_class = ""

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found on the client: the rest of the openai client.
        if name == "openai":
            raise AttributeError(name)
        return getattr(self.openai, name)

    default_model: str
    _limit: Money | None

    def _setup(
        self,
        cost_tracking_budget: object,
        budget_window: str | None,
        default_model: str,
        ledger: Ledger | str,
        on_exceed: OnExceed,
        budget_id: str,
        max_wait: float = 60.0,
        *,
        rpm: object = None,
        tpm: object = None,
        limits: Iterable[Limit | Mapping[str, Any]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        limit = _parse_budget(cost_tracking_budget)
        if not isinstance(budget_id, str) or not budget_id:
            raise ConfigError("budget_id", f"must be a non-empty string, got {budget_id!r}")
        if on_exceed not in ON_EXCEED:
            raise ConfigError("on_exceed", f"must be one of {', '.join(ON_EXCEED)}, got {on_exceed!r}")
        if budget_window is not None and limit is None:
            raise ConfigError("budget_window", "needs a cost_tracking_budget")
        try:
            window = Window.parse(budget_window)
        except ValueError as exc:
            raise ConfigError("budget_window", str(exc)) from None
        budgets: list[Budget] = []
        if limit is not None:
            budgets.append(
                Budget.from_config(
                    {
                        "id": budget_id,
                        "limit": limit.decimal_str(),
                        "window": window.to_config(),
                        "on_exceed": on_exceed,
                    },
                    where="cost_tracking_budget",
                )
            )
        rate_limits = _client_limits(rpm, tpm, limits, budget_id, on_exceed)
        if clock is not None and not isinstance(ledger, str) and clock is not ledger.clock:
            raise ConfigError("clock", "is for a ledger opened from a URL; give your Ledger the clock")
        self.default_model = default_model
        self._limit = limit
        self.budget_id = budget_id
        #: The ids of the Client's rate limits (rpm, tpm, then ``limits``), in that order.
        self.limit_ids = tuple(each.id for _, each in rate_limits)
        opened = open_ledger(ledger, clock=clock) if isinstance(ledger, str) else None
        shared = opened if opened is not None else ledger
        assert not isinstance(shared, str)
        try:
            for budget in budgets:
                _check_shared(shared, budget)
            for where, each in rate_limits:
                _check_shared_limit(shared, each, where)
            self.guard = Guard(
                shared,
                budgets=budgets,
                limits=[each for _, each in rate_limits],
                on_exceed=on_exceed,
                max_wait=max_wait,
                clock=clock,
            )
        except BaseException:
            if opened is not None:
                opened.close()
            raise
        self._opened = opened
        if limit:  # a limit of 0 is a pause, not a budget too small
            self._check_size(limit)

    def _check_size(self, limit: Money) -> None:
        try:
            worst = estimate_request(
                "chat",
                {"model": self.default_model, "messages": _PROBE},
                catalog=self.guard.catalog,
                counter=self.guard.counter,
            )
        except SpendgateError:
            return  # an unknown model is refused, with its own message, at the first call
        available = self.guard.ledger.usage(self.budget_id).available
        if worst.amount <= available:
            return
        affordable = worst.max_output_affordable(available)
        left = "" if available == limit else f" ({_plain(available)} USD left)"
        warnings.warn(
            BudgetTooSmallWarning(
                f"a {_plain(limit)} USD budget{left} affords at most {affordable} output tokens of "
                f"{self.default_model} per request; requests without max_tokens reserve "
                f"{worst.max_output_tokens} ({_plain(worst.amount)} USD) and will be refused: "
                "set max_tokens on each request or raise cost_tracking_budget"
            ),
            stacklevel=4,
        )

    # -- spend ----------------------------------------------------------------------
    def usage(self) -> BudgetUsage | None:
        """The budget's current window (spent, reserved, limit, reset time), or None without one."""
        if self._limit is None:
            return None
        return self.guard.ledger.usage(self.budget_id)

    def limits_usage(self) -> list[LimitUsage]:
        """What each of the Client's rate limits holds now (``used``, ``remaining``, the limit);
        a limit with a ``"*"`` selector: each instance that has counted something."""
        ids = set(self.limit_ids)
        return [usage for usage in self.guard.ledger.list_limits() if usage.limit.id in ids]

    @property
    def spent(self) -> Money:
        """Settled spend: in the budget's current window, or everything logged without a budget."""
        usage = self.usage()
        if usage is not None:
            return usage.spent
        return sum(self.guard.ledger.usage_by("model").values(), Money(0))

    @property
    def remaining(self) -> Money | None:
        """What the budget still affords (limit - spent - reserved), or None without a budget."""
        usage = self.usage()
        return None if usage is None else usage.available

    @property
    def limit(self) -> Money | None:
        return self._limit

    def _close_guard(self) -> None:
        self.guard.close()
        if self._opened is not None:  # opened from a URL here
            self._opened.close()


class Client(_Base):
    """``openai.OpenAI``, with a cost tracking budget in USD (``None``: track only).

    ``budget_window``: ``"hour"``, ``"day"``, ``"week"``, ``"month"`` (calendar, UTC)
    or None for the ledger's lifetime. ``ledger="sqlite:///spend.db"`` keeps the
    spend across restarts and shares it between processes. Other keyword
    arguments go to ``openai.OpenAI`` (``max_retries``, ``timeout``, ...). With
    ``on_exceed="wait"``, a request the budget cannot admit now waits up to
    ``max_wait`` seconds (a budget of 0 is paused: it waits for a raise).

    ``rpm``/``tpm``: requests and tokens (input plus output, reserved at the worst case and
    given back at settle) per sliding minute; ``limits``: any other rate limit. A rate limit
    waits with ``on_exceed="wait"`` and raises ``RateLimitExceededError`` otherwise.
    ``clock``: the clock of a ledger opened here from a URL (tests: a ``ManualClock``).
    """

    openai: openai.OpenAI
    # Declared for type checkers; at run time they fall through to ``self.openai``.
    if TYPE_CHECKING:
        chat: Chat
        completions: Completions
        embeddings: Embeddings
        responses: Responses

    _openai_class = "OpenAI"

    def close(self) -> None:
        self.openai.close()
        self._close_guard()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """``openai.AsyncOpenAI``, with a cost tracking budget in USD; see :class:`Client`."""

    openai: openai.AsyncOpenAI
    if TYPE_CHECKING:
        chat: AsyncChat
        completions: AsyncCompletions
        embeddings: AsyncEmbeddings
        responses: AsyncResponses

    _openai_class = "AsyncOpenAI"

    async def close(self) -> None:
        await self.openai.close()
        if self.guard.refusals.pending():  # a blocking ledger write: not on the loop
            await asyncio.to_thread(self.guard.refusals.flush, self.guard.ledger)
        self._close_guard()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
