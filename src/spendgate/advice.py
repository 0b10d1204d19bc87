"""Budget advice: a recommended limit from past windows' spend, and what-ifs from catalog prices.

    advise_budget(ledger, "team-research")          # from the request log's past windows
    what_if(catalog.price("gpt-4o"), requests_per_day=2000, input_tokens=1500, output_tokens=300)
    traffic(ledger, {"key": "k1"})                   # a key's current traffic, for a what-if

**Recommended limit.** The budget instance's spend in each complete past window the request log
covers (back to its retention, 30 days unless configured, and not before the instance's first
logged hour; at most ``MAX_WINDOWS``), their 95th percentile (linear between order statistics,
exact) plus ``headroom`` (20% unless asked), rounded up to two significant figures. With fewer
than ``MIN_WINDOWS`` complete windows (a monthly budget on a log that keeps 30 days) there is too
little history for a percentile: the advice says so and falls back to this window's forecast
(``spendgate.forecasting``): its high side plus headroom. Windows whose spend reached 95% of
the current limit are counted: there the limit was binding, so demand may have been higher
than what was spent (and windows above it: the limit was higher then, or the budget newer).

**What-if.** A request of ``input_tokens`` in and ``output_tokens`` out costs what
``spendgate cost`` says (``spendgate.cost.cost_of``, standard tier, exact); times requests a
day, times the window's days (the budget's current window, else 30), plus headroom, is the
limit that would fit. ``traffic`` reads a key's, model's (any dimension's) requests a day and
mean tokens per request from the request log, to ask "what if this traffic moved to model M".

Amounts are Money, rounded up (they bound spend); shares and rates are exact fractions inside.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, Final, Literal

from spendgate.budgets import Budget
from spendgate.clock import as_utc
from spendgate.cost import cost_of
from spendgate.forecast import Forecast
from spendgate.forecasting import BudgetLedger, HourlyHistory, forecast_budget, ledger_now
from spendgate.ledger.protocols import RequestLog
from spendgate.money import Money
from spendgate.pricing.schema import ModelPrice
from spendgate.usage import Usage

__all__ = [
    "DEFAULT_HEADROOM",
    "Advice",
    "Traffic",
    "WhatIf",
    "WindowSpend",
    "advise_budget",
    "nice_ceiling",
    "past_windows",
    "percentile",
    "recommend",
    "traffic",
    "what_if",
    "window_days",
]

DEFAULT_HEADROOM: Final = 20  # percent
PERCENTILE: Final = 95
#: Fewer complete windows than this: too little history for a percentile.
MIN_WINDOWS: Final = 3
#: At most this many past windows are read (an hourly budget: the last 60 hours).
MAX_WINDOWS: Final = 60
DEFAULT_RETENTION: Final = timedelta(days=30)
#: A what-if without a budget prices this many days (a month).
DEFAULT_DAYS: Final = 30
_TICK: Final = timedelta(microseconds=1)
_HOUR: Final = timedelta(hours=1)
_DAY: Final = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class WindowSpend:
    start: datetime
    end: datetime
    spent: Money


@dataclass(frozen=True, slots=True)
class Advice:
    """A recommended limit for a budget instance, and why (``explanation``, plain words)."""

    budget_id: str | None
    instance: Mapping[str, str]
    label: str | None
    limit: Money  # the current limit
    windows: tuple[WindowSpend, ...]  # complete past windows, oldest first
    headroom_percent: int
    #: From past windows (``source="windows"``), this window's forecast (``"forecast"``), or none.
    source: Literal["windows", "forecast", "none"]
    lowest: Money | None
    highest: Money | None
    p95: Money | None
    #: The basis (the 95th percentile, or the forecast's high side) plus headroom, exact.
    with_headroom: Money | None
    #: That rounded up to two significant figures: the limit to set.
    recommended: Money | None
    #: Past windows whose spend was within 95% to 100% of the current limit (it was binding).
    binding: int
    explanation: str
    forecast: Forecast | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        def usd(amount: Money | None) -> str | None:
            return None if amount is None else amount.decimal_str()

        return {
            "budget_id": self.budget_id,
            "instance": dict(self.instance),
            "label": self.label,
            "limit": usd(self.limit),
            "source": self.source,
            "windows": [
                {"start": _iso(w.start), "end": _iso(w.end), "spent": w.spent.decimal_str()}
                for w in self.windows
            ],
            "lowest": usd(self.lowest),
            "highest": usd(self.highest),
            "p95": usd(self.p95),
            "headroom_percent": self.headroom_percent,
            "with_headroom": usd(self.with_headroom),
            "recommended": usd(self.recommended),
            "binding_windows": self.binding,
            "explanation": self.explanation,
            "forecast": self.forecast.to_dict() if self.forecast is not None else None,
        }


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


# -- the arithmetic ----------------------------------------------------------------------------


def percentile(values: Sequence[int], percent: int) -> Fraction:
    """The ``percent``-th percentile of ``values``, linear between order statistics (numpy's
    default), exactly."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = Fraction(percent, 100) * (len(ordered) - 1)
    lower = math.floor(position)
    if lower + 1 >= len(ordered):
        return Fraction(ordered[-1])
    return ordered[lower] + (position - lower) * (ordered[lower + 1] - ordered[lower])


def nice_ceiling(amount: Money, digits: int = 2) -> Money:
    """``amount`` rounded up to ``digits`` significant figures: $123.40 -> $130, $0.0123 -> $0.013."""
    nanos = amount.nanos
    if nanos <= 0:
        return Money(0)
    step = 10 ** max(len(str(nanos)) - digits, 0)
    return Money(-(-nanos // step) * step)


def _with_headroom(basis: Fraction | int, headroom_percent: int) -> Money:
    return Money(math.ceil(Fraction(basis) * (100 + headroom_percent) / 100))


def _ceil(value: Fraction) -> Money:
    return Money(math.ceil(value))


def recommend(
    windows: Sequence[WindowSpend],
    *,
    limit: Money,
    window_label: str,
    headroom_percent: int = DEFAULT_HEADROOM,
    forecast: Forecast | None = None,
    coverage: str = "",
) -> Advice:
    """The advice from past windows' spend (pure; the module's docstring has the rule).

    ``window_label`` names a window in the text (``monthly``); ``coverage`` says what the log
    keeps, for the too-little-history case (``"it keeps 30 days"``).
    """
    if headroom_percent < 0:
        raise ValueError(f"headroom is a percent >= 0, got {headroom_percent}")
    nanos = [w.spent.nanos for w in windows]
    binding = sum(1 for n in nanos if limit.nanos and limit.nanos * 95 <= n * 100 <= limit.nanos * 100)
    over = sum(1 for n in nanos if n > limit.nanos)
    head = f"with {headroom_percent}% headroom"
    if len(windows) >= MIN_WINDOWS:
        p95 = _ceil(percentile(nanos, PERCENTILE))
        exact = _with_headroom(p95.nanos, headroom_percent)
        nice = nice_ceiling(exact)
        lowest, highest = Money(min(nanos)), Money(max(nanos))
        text = (
            f"Over the last {len(windows)} {window_label} windows, spend ranged "
            f"{lowest.format()}–{highest.format()}; 95th percentile {p95.format()}; "
            f"{head}: {exact.format()}. Recommended limit: {nice.format()} "
            f"(now {limit.format()})."
        )
        if len(windows) < 20:
            text += f" With {len(windows)} windows the 95th percentile is close to the largest."
        if binding:
            text += (
                f" In {binding} of them spend reached 95% of the current limit: it was binding, "
                "so demand may have been higher than what was spent."
            )
        if over:
            text += (
                f" In {over} of them spend passed the current limit (the limit was higher then, or "
                "the budget did not exist yet)."
            )
        return Advice(
            None, {}, None, limit, tuple(windows), headroom_percent, "windows",
            lowest, highest, p95, exact, nice, binding, text, forecast,
        )  # fmt: skip
    few = (
        f"Only {len(windows)} complete {window_label} window{'s' if len(windows) != 1 else ''} in the "
        f"request log{f' ({coverage})' if coverage else ''}: too little history for a percentile "
        f"(it needs {MIN_WINDOWS})."
    )
    if forecast is not None and forecast.method != "none":
        exact = _with_headroom(forecast.high.nanos, headroom_percent)
        nice = nice_ceiling(exact)
        text = (
            f"{few} This window's forecast ({forecast.method}) is {forecast.expected.format()}, "
            f"up to {forecast.high.format()}; {head} on that: {exact.format()}. "
            f"Recommended limit: {nice.format()} (now {limit.format()})."
        )
        return Advice(
            None, {}, None, limit, tuple(windows), headroom_percent, "forecast",
            None, None, None, exact, nice, binding, text, forecast,
        )  # fmt: skip
    text = f"{few} No spend to forecast from either: nothing to recommend yet."
    return Advice(
        None, {}, None, limit, tuple(windows), headroom_percent, "none",
        None, None, None, None, None, binding, text, forecast,
    )  # fmt: skip


# -- reading the log ---------------------------------------------------------------------------


def _spent(log: RequestLog, selector: Mapping[str, str], start: datetime, end: datetime) -> Money:
    """What requests ``selector`` matches that started in ``[start, end)`` cost (any alignment:
    the series counts only requests inside the range, whatever its buckets)."""
    width = timedelta(seconds=math.ceil((end - start).total_seconds()))
    points = log.usage_timeseries(start, end, width, **dict(selector))
    return Money(sum(p.cost.nanos for p in points))


def past_windows(
    log: RequestLog,
    budget: Budget,
    instance: Mapping[str, str] | str | None,
    now: datetime,
    retention: timedelta = DEFAULT_RETENTION,
) -> list[WindowSpend]:
    """The instance's spend in each complete window before the current one that the log covers
    (from ``now - retention`` and the instance's first logged hour), oldest first."""
    if not budget.window.resets:
        return []
    selector = budget.concrete_selector(budget.instance_key(instance))
    covered = now - retention
    first = log.usage_timeseries(covered, now, _HOUR, **selector)
    if not first:
        return []
    covered = max(covered, first[0].start)
    out: list[WindowSpend] = []
    start, _ = budget.window.bounds(now)
    while len(out) < MAX_WINDOWS:
        before, end = budget.window.bounds(start - _TICK)
        if end is None or before < covered:
            break
        out.append(WindowSpend(before, end, _spent(log, selector, before, end)))
        start = before
    out.reverse()
    return out


def advise_budget(
    ledger: BudgetLedger,
    budget_id: str,
    instance: Mapping[str, str] | str | None = None,
    *,
    now: datetime | None = None,
    headroom_percent: int = DEFAULT_HEADROOM,
    history: HourlyHistory | None = None,
) -> Advice:
    """The advice for one budget instance (KeyError: no such budget; ValueError: an instance
    that does not fit its wildcards). Blocking ledger reads: run it on a thread under asyncio.
    ``history``: the forecast's hourly series kept from earlier calls (``forecast_budget``)."""
    budget = ledger.get_budget(budget_id)
    key = budget.instance_key(instance)
    at = now if now is not None else ledger_now(ledger)
    retention = getattr(ledger, "retention", DEFAULT_RETENTION)
    if not isinstance(retention, timedelta):
        retention = DEFAULT_RETENTION
    windows = past_windows(ledger, budget, key, at, retention)
    result = forecast_budget(ledger, budget_id, key, now=at, history=history)
    if budget.window.resets:
        advice = recommend(
            windows,
            limit=result.limit,
            window_label=budget.window.label(),
            headroom_percent=headroom_percent,
            forecast=result,
            coverage=f"it keeps {_span(retention)}",
        )
    else:
        advice = _never_resets(result, headroom_percent)
    return _named(advice, budget_id, result)


def _named(advice: Advice, budget_id: str, result: Forecast) -> Advice:
    return dataclasses.replace(
        advice, budget_id=budget_id, instance=dict(result.instance), label=result.label
    )


def _never_resets(result: Forecast, headroom_percent: int) -> Advice:
    spent, limit = result.spent, result.limit
    if result.method == "none":
        text = (
            f"The budget never resets: spend so far {spent.format()} of {limit.format()}. "
            "No spend logged recently: nothing to recommend from."
        )
        return Advice(
            None, {}, None, limit, (), headroom_percent, "none",
            None, None, None, None, None, 0, text, result,
        )  # fmt: skip
    exact = _with_headroom(result.high.nanos, headroom_percent)
    nice = nice_ceiling(exact)
    text = (
        f"The budget never resets: spend so far {spent.format()}; at the forecast rate it reaches "
        f"{result.expected.format()} (up to {result.high.format()}) by {_iso(result.horizon_end)}; "
        f"with {headroom_percent}% headroom: {exact.format()}. A limit of {nice.format()} "
        f"would last until then (now {limit.format()})."
    )
    return Advice(
        None, {}, None, limit, (), headroom_percent, "forecast",
        None, None, None, exact, nice, 0, text, result,
    )  # fmt: skip


def _span(span: timedelta) -> str:
    days = span / _DAY
    return f"{days:g} days" if days >= 1 else f"{span / _HOUR:g} hours"


# -- what-if -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Traffic:
    """Requests a day and mean tokens per request of some traffic in the request log."""

    dimensions: Mapping[str, str]
    days: int
    requests: int
    input_tokens: int
    output_tokens: int
    cost: Money

    @property
    def requests_per_day(self) -> Fraction:
        return Fraction(self.requests, self.days)

    @property
    def input_per_request(self) -> int:
        return -(-self.input_tokens // self.requests) if self.requests else 0

    @property
    def output_per_request(self) -> int:
        return -(-self.output_tokens // self.requests) if self.requests else 0

    def describe(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.dimensions.items()) or "all traffic"
        return (
            f"{where} over the last {self.days} days: {float(self.requests_per_day):,.1f} requests a day, "
            f"{self.input_per_request:,} input and {self.output_per_request:,} output tokens a request "
            f"(mean), {_ceil(Fraction(self.cost.nanos, self.days)).format()} a day now"
        )


def traffic(log: RequestLog, dimensions: Mapping[str, str], now: datetime, days: int = 7) -> Traffic:
    """The requests, tokens and cost of the traffic ``dimensions`` match over the last ``days``
    whole days (UTC) before ``now`` (from its first day, if it started later)."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    end = as_utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    points = log.usage_timeseries(end - _DAY * days, end, _DAY, **dict(dimensions))
    if points:  # traffic that started within the span: a day's rate over the days it ran
        days = min(days, (end - points[0].start) // _DAY)
    return Traffic(
        dimensions=dict(dimensions),
        days=days,
        requests=sum(p.requests for p in points),
        input_tokens=sum(p.input_tokens for p in points),
        output_tokens=sum(p.output_tokens for p in points),
        cost=Money(sum(p.cost.nanos for p in points)),
    )


@dataclass(frozen=True, slots=True)
class WhatIf:
    """What traffic would cost on a model, and the limit that would fit it."""

    model: str
    requests_per_day: Fraction
    input_tokens: int
    output_tokens: int
    per_request: Money
    per_day: Money
    days: Fraction
    per_window: Money
    window_label: str
    headroom_percent: int
    with_headroom: Money
    recommended: Money
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "requests_per_day": _fraction_text(self.requests_per_day),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "per_request": self.per_request.decimal_str(),
            "per_day": self.per_day.decimal_str(),
            "days": _fraction_text(self.days),
            "per_window": self.per_window.decimal_str(),
            "window": self.window_label,
            "headroom_percent": self.headroom_percent,
            "with_headroom": self.with_headroom.decimal_str(),
            "recommended": self.recommended.decimal_str(),
            "explanation": self.explanation,
        }


def _fraction_text(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def what_if(
    price: ModelPrice,
    *,
    requests_per_day: Fraction | int,
    input_tokens: int,
    output_tokens: int,
    days: Fraction | int = DEFAULT_DAYS,
    window_label: str = "30-day",
    headroom_percent: int = DEFAULT_HEADROOM,
    basis: str = "",
) -> WhatIf:
    """The cost of ``requests_per_day`` requests of these tokens on ``price``'s model over
    ``days`` (the budget's window), and the limit that fits it with headroom. ``basis`` says
    where the traffic figures came from, for the text."""
    if requests_per_day < 0 or input_tokens < 0 or output_tokens < 0:
        raise ValueError("requests a day and tokens must not be negative")
    if headroom_percent < 0:
        raise ValueError(f"headroom is a percent >= 0, got {headroom_percent}")
    per_request = cost_of(Usage(input_tokens=input_tokens, output_tokens=output_tokens), price).total
    rate = Fraction(requests_per_day)
    per_day = _ceil(per_request.nanos * rate)
    span = Fraction(days)
    per_window = _ceil(per_request.nanos * rate * span)
    exact = _with_headroom(per_window.nanos, headroom_percent)
    nice = nice_ceiling(exact)
    text = (
        f"{price.name}: {input_tokens:,} input + {output_tokens:,} output tokens cost "
        f"{per_request.format()} a request; {_fraction_text(rate)} requests a day: {per_day.format()} a day, "
        f"{per_window.format()} a {window_label} window ({_fraction_text(span)} "
        f"day{'' if span == 1 else 's'}); with "
        f"{headroom_percent}% headroom: {exact.format()}. A limit that fits: {nice.format()}."
    )
    if basis:
        text = f"From {basis}. {text}"
    return WhatIf(
        model=price.name,
        requests_per_day=rate,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        per_request=per_request,
        per_day=per_day,
        days=span,
        per_window=per_window,
        window_label=window_label,
        headroom_percent=headroom_percent,
        with_headroom=exact,
        recommended=nice,
        explanation=text,
    )


def window_days(budget: Budget | None, now: datetime) -> tuple[Fraction, str]:
    """The days of ``budget``'s current window and its label (30 days for none or a budget
    that never resets)."""
    if budget is None or not budget.window.resets:
        return Fraction(DEFAULT_DAYS), "30-day"
    start, end = budget.window.bounds(now)
    assert end is not None
    seconds = (end - start) // timedelta(seconds=1)
    return Fraction(seconds, 86_400), budget.window.label()
