"""spendgate's exceptions: one base class, each error says what to do next."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from spendgate.money import Money


class SpendgateError(Exception):
    """Base class of every error spendgate raises on purpose."""


class ConfigError(SpendgateError, ValueError):
    """Bad configuration: names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class UnknownModelPriceError(SpendgateError, LookupError):
    """No price for a model: spendgate refuses rather than count it as $0."""

    def __init__(self, model: str, suggestions: Sequence[str] = ()) -> None:
        self.model = model
        self.suggestions = tuple(suggestions)
        hint = f" Nearest known models: {', '.join(self.suggestions)}." if self.suggestions else ""
        super().__init__(
            f"No price known for model {model!r}; spendgate will not count it as free.{hint} "
            "Add a price in config (prices: {"
            f'"{model}": {{input: "<USD per 1M>", output: "<USD per 1M>"}}}}), '
            "with Catalog.set_price(), or load a newer catalog with "
            "`spendgate prices update --from FILE_OR_URL`; or set unknown_model to "
            "'default_price' or 'free'."
        )


class BudgetExceededError(SpendgateError):
    """A budget cannot admit a request. The message keeps the familiar shape:

    ``Cost tracking budget exceeded: current usage 98% of limit 100 USD
    (budget "team=research, monthly"); this request needs up to 3.20 USD;
    resets 2026-12-01T00:00:00Z``

    A limit of 0 is a pause, and the message says so. ``fit_output_tokens``, when
    set, is the largest output cap the budget still affords, and the message says
    to set ``fit_field`` (``max_tokens``) to at most that.
    """

    #: The largest output cap the budget still affords (None: unknown, or none fits).
    fit_output_tokens: int | None = None
    fit_field: str = "max_tokens"

    def __init__(
        self,
        *,
        budget_id: str,
        selector: dict[str, str],
        limit: Money,
        spent: Money,
        reserved: Money,
        requested: Money,
        resets_at: datetime | None = None,
        retry_after: float | None = None,
        budget_name: str | None = None,
        paced: bool = False,
    ) -> None:
        #: Refused by the budget's pace: ``limit`` is what it allows by now, not its whole limit.
        self.paced = paced
        self.budget_id = budget_id
        self.selector = dict(selector)
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.resets_at = resets_at
        self.retry_after = retry_after
        self.budget_name = budget_name or budget_id
        super().__init__(self._message())

    @property
    def usage_percent(self) -> int:
        """Spent plus reserved, as a whole percent of the limit (rounded down)."""
        used = self.spent.nanos + self.reserved.nanos
        if self.limit.nanos <= 0:
            return 100 if used <= 0 else 100 * max(used, 1)
        return used * 100 // self.limit.nanos

    @property
    def paused(self) -> bool:
        """A limit of 0: the budget admits nothing until its limit is raised."""
        return not self.limit

    def suggest_output_cap(self, tokens: int, field: str = "max_tokens") -> None:
        """Say in the message how to fit: set ``field`` to at most ``tokens``."""
        self.fit_output_tokens, self.fit_field = tokens, field
        self.args = (self._message(),)

    def _message(self) -> str:
        resets = ""
        if self.resets_at is not None:
            resets = "; resets " + self.resets_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        needs = f"this request needs up to {_plain(self.requested, places=2)} USD"
        if self.paused:
            # A percentage of 0 means nothing: say what a zero limit is.
            return (
                f'Cost tracking budget paused: budget "{self.budget_name}" has a limit of 0 USD and '
                f"admits no request until its limit is raised; {needs}{resets}"
            )
        if self.paced:
            retry = "" if self.retry_after is None else f"; more is allowed in {self.retry_after:,.0f} s"
            return (
                f'Cost tracking budget paced: budget "{self.budget_name}" spreads its limit over its '
                f"window and allows {_plain(self.limit)} USD by now, {_plain(self.spent + self.reserved)} "
                f"USD used; {needs}{retry}{resets}"
            )
        fit = ""
        if self.fit_output_tokens is not None:
            fit = f"; to fit, set {self.fit_field} <= {self.fit_output_tokens}"
        return (
            f"Cost tracking budget exceeded: current usage {self.usage_percent}% of limit "
            f'{_plain(self.limit)} USD (budget "{self.budget_name}"); {needs}{fit}{resets}'
        )

    def to_dict(self) -> dict[str, object]:
        """The ``budget`` object of the gateway's 429 body."""
        return {
            "id": self.budget_id,
            "name": self.budget_name,
            "selector": self.selector,
            "limit_usd": self.limit.decimal_str(),
            "spent_usd": self.spent.decimal_str(),
            "reserved_usd": self.reserved.decimal_str(),
            "requested_usd": self.requested.decimal_str(),
            "resets_at": self.resets_at.astimezone(UTC).isoformat() if self.resets_at else None,
            "retry_after": self.retry_after,
            "paused": self.paused,
            "paced": self.paced,
            "max_output_tokens_affordable": self.fit_output_tokens,
        }


class RateLimitExceededError(SpendgateError):
    """A rate limit cannot admit a request now: too many requests, tokens or dollars in its
    window, or too many in flight. ``retry_after``: seconds until the request would fit (None:
    it never fits this limit, the request alone is over it).

    ``Rate limit exceeded: 10 of 10 requests per 10s used (limit "key=k1"); retry in 3.2 s``
    """

    def __init__(
        self,
        *,
        limit_id: str,
        kind: str,
        selector: dict[str, str],
        amount: int,
        used: int,
        requested: int,
        per_seconds: int | None,
        retry_after: float | None,
        label: str,
        amount_text: str,
        used_text: str,
        requested_text: str,
    ) -> None:
        self.limit_id = limit_id
        self.kind = kind
        self.selector = dict(selector)
        self.amount = amount
        self.used = used
        self.requested = requested
        self.per_seconds = per_seconds
        self.retry_after = retry_after
        self.label = label
        self.amount_text, self.used_text, self.requested_text = amount_text, used_text, requested_text
        super().__init__(self._message())

    @property
    def remaining(self) -> int:
        return max(self.amount - self.used, 0)

    def _message(self) -> str:
        when = (
            "it is larger than the limit on its own"
            if self.retry_after is None
            else f"retry in {self.retry_after:.1f} s"
        )
        if self.kind == "concurrency":
            return (
                f"Rate limit exceeded: {self.used:,} of {self.amount_text} already "
                f'(limit "{self.label}"); {when}'
            )
        needs = "" if self.kind == "requests" else f"; this request needs up to {self.requested_text}"
        return (
            f"Rate limit exceeded: {self.used_text} of {self.amount_text} used "
            f'(limit "{self.label}"){needs}; {when}'
        )

    def to_dict(self) -> dict[str, object]:
        """The ``limit`` object of the gateway's 429 body: amounts as decimal strings, counts or
        (``usd``) USD, as the admin API writes them."""

        def text(value: int) -> str:
            return Money(value).decimal_str() if self.kind == "usd" else str(value)

        return {
            "id": self.limit_id,
            "name": self.label,
            "kind": self.kind,
            "selector": self.selector,
            "limit": self.amount_text,
            "amount": text(self.amount),
            "used": text(self.used),
            "remaining": text(self.remaining),
            "requested": text(self.requested),
            "per_seconds": self.per_seconds,
            "retry_after": self.retry_after,
        }


class PromptTooLargeError(RateLimitExceededError):
    """A ``prompt_tokens`` limit: this request's prompt alone is over it. Waiting cannot help
    (the gateway answers 400, not 429)."""

    def _message(self) -> str:
        return (
            f"Prompt too large: this request's prompt is {self.requested_text}, over the limit of "
            f'{self.amount_text} (limit "{self.label}"); shorten the input'
        )


class CostCapExceededError(SpendgateError):
    """The request's worst case is above the caller's own cap on what this one request may
    cost (``max_cost=``, ``spendgate_max_cost=``, ``spendgate.max_cost()``, the gateway's
    ``x-spendgate-max-cost``). Raised before anything is reserved or sent; waiting cannot help
    (the gateway answers 400 ``cost_cap_exceeded``). ``fit_output_tokens``, when set, is the
    largest output cap whose worst case fits the cap.

    ``Cost cap exceeded: this request may cost up to 0.32 USD, above its cap of 0.10 USD
    (max_cost); set max_tokens <= 812 to fit``
    """

    def __init__(
        self,
        *,
        max_cost: Money,
        requested: Money,
        fit_output_tokens: int | None = None,
        fit_field: str = "max_tokens",
        cap_name: str = "max_cost",
    ) -> None:
        self.max_cost = max_cost
        self.requested = requested
        self.fit_output_tokens = fit_output_tokens
        self.fit_field = fit_field
        #: Where the cap came from, as the message names it (the gateway: its header).
        self.cap_name = cap_name
        super().__init__(self._message())

    def named(self, cap_name: str) -> CostCapExceededError:
        """Name the cap as the caller set it (``x-spendgate-max-cost``); returns self."""
        self.cap_name = cap_name
        self.args = (self._message(),)
        return self

    def _message(self) -> str:
        fit = ""
        if self.fit_output_tokens is not None:
            fit = f"; set {self.fit_field} <= {self.fit_output_tokens} to fit"
        return (
            f"Cost cap exceeded: this request may cost up to {_plain(self.requested, places=2)} USD, "
            f"above its cap of {_plain(self.max_cost, places=2)} USD ({self.cap_name}){fit}"
        )

    def to_dict(self) -> dict[str, object]:
        """The ``cost_cap`` object of the gateway's 400 body."""
        return {
            "max_cost_usd": self.max_cost.decimal_str(),
            "requested_usd": self.requested.decimal_str(),
            "max_output_tokens_affordable": self.fit_output_tokens,
            "fit_field": self.fit_field if self.fit_output_tokens is not None else None,
        }


#: The name users of other cost trackers already catch.
CostTrackingBudgetExceededError = BudgetExceededError


def _plain(amount: Money, places: int | None = None) -> str:
    """``100``, ``3.20``, ``0.000125``: no $ sign, never rounded down to zero."""
    text = amount.format(places if places is not None else 2).lstrip("$").replace(",", "")
    if places is None and text.endswith(".00"):
        text = text[:-3]
    return text
