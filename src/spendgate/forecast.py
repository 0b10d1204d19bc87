"""Forecast a budget instance's spend to the end of its window: pure math over hourly spend, no I/O.

The input is the instance's spend per hour from the request log (``HourlySpend``, up to
``LOOKBACK`` back, from its first logged hour), what it has spent in the current window, the
window's bounds and the limit. The output (``Forecast``) is the expected spend at the window's
end with a band, and when the budget runs out, if it does within the window.
``spendgate.forecasting`` reads the inputs from a ledger; docs/forecasts.md has the method, its
evaluation on synthetic logs (``bench/forecast.py``) and the error bound the tests hold it to.

The method, in order:

1. **Spikes are clipped** so that a one-off does not repeat in the forecast. Each hour's spend
   is compared with the median of the same slot (hour of the week with 2 whole weeks of
   history, hour of the day with 2 whole days) and its two neighbours over every period in the
   history, and with the typical hour (the median day / 24). An hour above ``SPIKE_FACTOR``
   times the larger of the two is cut to it. A pattern that comes back (a nightly batch, the
   weekday peak) sits in its slot's median and is kept.
2. **Seasonal** (``method="seasonal"``, at least 2 whole weeks): the shape of the week is the
   mean of the clipped spend at each hour of the week (and its neighbours) over the whole weeks,
   over the mean hour. The level is the weekly total: a Theil-Sen line through the whole weeks'
   totals (3 weeks or more; with 2, flat) gives the level now and the trend per week, so a
   weekday pattern is never read as a trend (each point is a whole week) and one odd week does
   not tilt it. The trend is shrunk by ``1 - (2 se / trend)^2`` (``se``: its standard error from
   the days' spread), so noise within two standard errors is no trend. Expected spend in a
   future hour: ``(level + trend x weeks ahead) / 168 x shape``.
3. **Recent** (``method="recent"``, less history): the mean clipped hour of the last 7 days
   (or what there is), shaped by the hour of the day with 2 whole days; no trend.
4. **Recent blend**: the last day's worth of expected spend (the last 24 hours, or further back
   until the model expects an average day's spend in them: a quiet weekend reaches back into
   Friday) against what the model says of those hours. Their ratio (bounded to 1/4..4) moves
   the whole forecast, at most halfway (``RECENT_WEIGHT``), and only as far as it stands out of
   how far whole days usually are from the model (their 90th percentile: within it, not at all;
   the weight is ``1/2 (1 - (usual / distance)^2)``), so a change that started yesterday counts
   before it fills a week and an ordinary day's noise does not.
5. **Band**: the daily ratios actual / model over the history (up to 28 days) give a robust
   relative spread ``s`` (1.4826 x MAD). The remaining spend ``R`` over ``H`` days ahead has the
   band ``R x (1 +- z sqrt(s^2 / H + s^2 / m))`` with ``z = 1.28`` (10th to 90th percentile) and
   ``m`` the days the level was measured over; with fewer than 3 whole days ``s = 0.5``.
6. **Run-out**: the first instant at which ``spent`` plus the expected remaining spend reaches
   the limit (the earliest: the band's high side; the latest: its low side), or None when it
   does not within the window. A budget whose spend is already at its limit runs out ``now``.

A budget that never resets has no window end: it is forecast over ``horizon`` (30 days unless
asked). Amounts are Money (integer nano-USD): the expected spend and the high side rounded up,
the low side down; rates and statistics are floats inside.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from spendgate.clock import as_utc
from spendgate.money import Money

__all__ = [
    "DEFAULT_HORIZON",
    "LOOKBACK",
    "Forecast",
    "HourlySpend",
    "Method",
    "forecast",
    "hour_floor",
]

HOUR: Final = timedelta(hours=1)
DAY_HOURS: Final = 24
WEEK_HOURS: Final = 168
#: How far back the request log is read.
LOOKBACK: Final = timedelta(days=28)
#: What a budget that never resets is forecast over.
DEFAULT_HORIZON: Final = timedelta(days=30)
#: An hour above this many times its slot's median (or the typical hour) is a spike.
SPIKE_FACTOR: Final = 4.0
#: How far the last 24 hours move the forecast: halfway from the model to what they say.
RECENT_WEIGHT: Final = 0.5
RECENT_RATIO_BOUNDS: Final = (0.25, 4.0)
#: A trend within this many standard errors of none counts as none (and is shrunk beyond).
TREND_SE: Final = 2.0
#: The band's z: the 10th to the 90th percentile of a normal spread.
BAND_Z: Final = 1.2816
#: The relative daily spread assumed with fewer than 3 whole days of history.
UNKNOWN_SPREAD: Final = 0.5
#: The hours of the week count from a Monday 00:00 UTC.
_MONDAY: Final = datetime(1970, 1, 5, tzinfo=UTC)

Method = Literal["seasonal", "recent", "none"]


def hour_floor(when: datetime) -> datetime:
    """The start of the UTC hour holding ``when``."""
    when = as_utc(when)
    return when.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class HourlySpend:
    """Spend per whole hour, ``nanos[i]`` for ``[start + i h, start + (i + 1) h)`` (UTC hours)."""

    start: datetime
    nanos: tuple[int, ...]

    def __post_init__(self) -> None:
        start = as_utc(self.start)
        if start != hour_floor(start):
            raise ValueError(f"HourlySpend starts on an hour, got {start.isoformat()}")
        object.__setattr__(self, "start", start)

    @property
    def end(self) -> datetime:
        return self.start + HOUR * len(self.nanos)

    @classmethod
    def empty(cls, at: datetime) -> HourlySpend:
        return cls(hour_floor(at), ())

    @classmethod
    def from_points(
        cls, points: Iterable[tuple[datetime, Money]], end: datetime, *, start: datetime | None = None
    ) -> HourlySpend:
        """Whole hours from the first point's hour (or ``start``) up to the hour holding ``end``
        (excluded: it is not over), zeros where nothing was spent. Points are (instant, cost);
        several in one hour add up."""
        stop = hour_floor(end)
        sums: dict[datetime, int] = {}
        for when, cost in points:
            hour = hour_floor(when)
            sums[hour] = sums.get(hour, 0) + cost.nanos
        first = hour_floor(start) if start is not None else min(sums, default=stop)
        hours = max(int((stop - first) / HOUR), 0)
        return cls(first, tuple(sums.get(first + HOUR * i, 0) for i in range(hours)))


@dataclass(frozen=True, slots=True)
class Forecast:
    """Where a budget instance's spend is heading in its current window (``to_dict`` for JSON)."""

    now: datetime
    window_start: datetime | None
    #: None: the budget never resets (forecast to ``horizon_end``).
    window_end: datetime | None
    horizon_end: datetime
    spent: Money
    limit: Money
    #: Spend expected at ``horizon_end`` (the window's end), and its band.
    expected: Money
    low: Money
    high: Money
    #: When the expected spend reaches the limit; None: not before ``horizon_end``.
    runs_out_at: datetime | None
    #: When the band's high side reaches the limit (the earliest likely run-out).
    earliest_run_out: datetime | None
    #: When the band's low side does (None: possibly not within the window).
    latest_run_out: datetime | None
    #: The expected spend rate now (per hour, this hour's slot) and the last 24 hours' mean.
    rate_per_hour: Money
    recent_rate_per_hour: Money
    method: Method
    #: Hours of history used, whole weeks in the seasonal profile, the trend in USD per week
    #: (signed), the last day's ratio to the model, spikes clipped, the band's relative spread.
    history_hours: int
    weeks: int
    trend_per_week: Money
    recent_ratio: float
    spikes_clipped: int
    spread: float
    notes: tuple[str, ...] = ()
    #: Set by ``spendgate.forecasting``: which budget instance this is.
    budget_id: str | None = None
    instance: Mapping[str, str] = field(default_factory=dict)
    label: str | None = None

    @property
    def exhausted(self) -> bool:
        """Spend has reached the limit already."""
        return self.spent >= self.limit

    @property
    def runs_out_before_end(self) -> bool:
        """The budget is expected to run out before its window ends (what a forecast alert says)."""
        return (
            self.runs_out_at is not None
            and self.window_end is not None
            and self.runs_out_at < self.window_end
        )

    def to_dict(self) -> dict[str, Any]:
        """For JSON: amounts as decimal strings in USD, instants as ISO 8601 UTC."""
        return {
            "budget_id": self.budget_id,
            "instance": dict(self.instance),
            "label": self.label,
            "now": _iso(self.now),
            "window_start": _iso(self.window_start),
            "window_end": _iso(self.window_end),
            "horizon_end": _iso(self.horizon_end),
            "spent": self.spent.decimal_str(),
            "limit": self.limit.decimal_str(),
            "expected": self.expected.decimal_str(),
            "low": self.low.decimal_str(),
            "high": self.high.decimal_str(),
            "runs_out_at": _iso(self.runs_out_at),
            "earliest_run_out": _iso(self.earliest_run_out),
            "latest_run_out": _iso(self.latest_run_out),
            "runs_out_before_end": self.runs_out_before_end,
            "rate_per_hour": self.rate_per_hour.decimal_str(),
            "recent_rate_per_hour": self.recent_rate_per_hour.decimal_str(),
            "method": self.method,
            "inputs": {
                "history_hours": self.history_hours,
                "weeks": self.weeks,
                "trend_per_week": self.trend_per_week.decimal_str(),
                "recent_ratio": round(self.recent_ratio, 4),
                "spikes_clipped": self.spikes_clipped,
                "spread": round(self.spread, 4),
            },
            "notes": list(self.notes),
        }


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    """Expected spend per hour (float nanos) at any hour: ``rate(hour)``."""

    method: Method
    now: datetime  # the end of the history (an hour boundary)
    period: int  # 168, 24, or 1 (no shape)
    shape: tuple[float, ...]  # per slot, mean 1
    level: float  # nanos per hour at ``now``
    slope: float  # nanos per hour, per hour ahead
    weeks: int
    days_measured: float  # what the level was measured over (days)
    #: The whole weeks' totals (most recent first) and centres (weeks before now) the trend
    #: is fitted to, and the trend before shrinking (nanos per hour, per hour).
    totals: tuple[float, ...] = ()
    centers: tuple[float, ...] = ()
    raw_slope: float = 0.0

    def base(self, hour: datetime) -> float:
        ahead = (hour - self.now) / HOUR + 0.5
        return max(self.level + self.slope * ahead, 0.0) * self.shape[_slot(hour, self.period)]


def _hours(hour: datetime) -> int:
    """Whole hours since ``_MONDAY`` (``(hour - _MONDAY) // HOUR``, in integers: the loops below
    ask it for every hour of the history and of what is ahead)."""
    since = hour - _MONDAY
    return since.days * DAY_HOURS + since.seconds // 3600


def _slot(hour: datetime, period: int) -> int:
    return _hours(hour) % period


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _whole_blocks(values: Sequence[float], size: int, most: int) -> list[float]:
    """Totals of the last ``most`` whole blocks of ``size`` hours, the most recent first."""
    count = min(len(values) // size, most)
    n = len(values)
    return [sum(values[n - size * (k + 1) : n - size * k]) for k in range(count)]


def _clip(values: list[float], start: datetime, period: int) -> tuple[list[float], int, float]:
    """Spikes cut (step 1); how many hours were cut, and the typical hour."""
    n = len(values)
    days = _whole_blocks(values, DAY_HOURS, 10_000)
    typical = _median(days) / DAY_HOURS if days else (sum(values) / n if n else 0.0)
    if n < DAY_HOURS:
        return values, 0, typical
    slots: dict[int, list[float]] = {}
    first = _hours(start)  # hour i of the history is at slot (first + i) % period
    if period > 1:
        for i, value in enumerate(values):
            slot = (first + i) % period
            for near in (slot - 1, slot, slot + 1):
                slots.setdefault(near % period, []).append(value)
    medians = {slot: _median(vals) for slot, vals in slots.items()}
    out: list[float] = []
    cut = 0
    for i, value in enumerate(values):
        ceiling = SPIKE_FACTOR * max(medians.get((first + i) % period, 0.0), typical)
        if value > ceiling:
            cut += 1
        out.append(min(value, ceiling))
    return out, cut, typical


def _shape(values: Sequence[float], start: datetime, period: int, hours: int) -> tuple[float, ...]:
    """The mean of the last ``hours`` at each slot and its neighbours, over the mean slot."""
    if period == 1:
        return (1.0,)
    n = len(values)
    sums = [0.0] * period
    counts = [0] * period
    first = _hours(start)
    for i in range(max(n - hours, 0), n):
        slot = (first + i) % period
        for near in (slot - 1, slot, slot + 1):
            sums[near % period] += values[i]
            counts[near % period] += 1
    means = [s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)]
    overall = sum(means) / period
    if overall <= 0:
        return (1.0,) * period
    return tuple(m / overall for m in means)


def _theil_sen(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Slope and intercept of the Theil-Sen line (median of pairwise slopes)."""
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(len(xs))
        for j in range(i + 1, len(xs))
        if xs[j] != xs[i]
    ]
    slope = _median(slopes)
    return slope, _median([y - slope * x for x, y in zip(xs, ys, strict=True)])


def _fit(history: HourlySpend, notes: list[str]) -> tuple[_Model, list[float], int]:
    raw = [float(v) for v in history.nanos]
    n = len(raw)
    now = history.end
    period = WEEK_HOURS if n >= 2 * WEEK_HOURS else DAY_HOURS if n >= 2 * DAY_HOURS else 1
    clean, cut, _typical = _clip(raw, history.start, period)
    if cut:
        notes.append(f"{cut} spike hour(s) clipped to {SPIKE_FACTOR:g}x their usual level")
    if period == WEEK_HOURS:
        weeks = min(n // WEEK_HOURS, 4)
        totals = _whole_blocks(clean, WEEK_HOURS, weeks)
        centers = [-(k + 0.5) for k in range(weeks)]
        if weeks >= 3:
            slope, level = _theil_sen(centers, totals)
        else:
            slope, level = 0.0, sum(totals) / weeks
            notes.append("2 whole weeks of history: no trend (it needs 3)")
        model = _Model(
            method="seasonal",
            now=now,
            period=period,
            shape=_shape(clean, history.start, period, weeks * WEEK_HOURS),
            level=level / WEEK_HOURS,
            slope=slope / WEEK_HOURS / WEEK_HOURS,
            weeks=weeks,
            days_measured=7.0 * weeks,
            totals=tuple(totals),
            centers=tuple(centers),
            raw_slope=slope / WEEK_HOURS / WEEK_HOURS,
        )
        return model, clean, cut
    recent = clean[-WEEK_HOURS:]
    days = len(recent) / DAY_HOURS
    notes.append(
        f"only {_span(n)} of history: forecast from the recent rate"
        + (", shaped by the hour of the day" if period == DAY_HOURS else "")
        + " (the hour of the week needs 2 whole weeks)"
    )
    model = _Model(
        method="recent",
        now=now,
        period=period,
        shape=_shape(clean, history.start, period, 7 * DAY_HOURS) if period > 1 else (1.0,),
        level=sum(recent) / len(recent),
        slope=0.0,
        weeks=0,
        days_measured=max(days, 1 / DAY_HOURS),
    )
    return model, clean, cut


def _span(hours: int) -> str:
    if hours < 2 * DAY_HOURS:
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{hours // DAY_HOURS} days"


def _spread(model: _Model, clean: Sequence[float], start: datetime) -> tuple[float, float] | None:
    """The robust relative spread of whole days' actual over model (step 5), and the 90th
    percentile of the days' distance from the model (step 4); None: too few days."""
    n = len(clean)
    ratios: list[float] = []
    for k in range(min(n // DAY_HOURS, 28)):
        lo, hi = n - DAY_HOURS * (k + 1), n - DAY_HOURS * k
        fitted = sum(model.base(start + HOUR * i) for i in range(lo, hi))
        if fitted > 0:
            ratios.append(sum(clean[lo:hi]) / fitted)
    if len(ratios) < 3:
        return None
    mid = _median(ratios)
    mad = _median([abs(r - mid) for r in ratios])
    spread = 1.4826 * mad
    if spread == 0:
        spread = statistics.pstdev(ratios)
    distances = sorted(abs(r - 1.0) for r in ratios)
    return spread, distances[min(int(0.9 * len(distances)), len(distances) - 1)]


# -- the forecast ------------------------------------------------------------------------------


def _shrunk_trend(model: _Model, spread: float, notes: list[str]) -> tuple[_Model, float]:
    """The trend kept in proportion to how clearly it stands above the weeks' noise (shrunk by
    ``1 - (2 se / trend)^2``: within two standard errors of none it counts as none), the level
    refitted under it; and the trend's standard error relative to the weekly level."""
    centers, totals = model.centers, model.totals
    mean_x = sum(centers) / len(centers)
    sxx = sum((x - mean_x) ** 2 for x in centers)
    week_level = model.level * WEEK_HOURS
    if week_level <= 0 or sxx <= 0:
        return model, 0.0
    se = spread / math.sqrt(7) / math.sqrt(sxx)  # a week's noise is a day's over sqrt(7)
    relative = model.raw_slope * WEEK_HOURS * WEEK_HOURS / week_level
    keep = max(0.0, 1.0 - (TREND_SE * se) ** 2 / relative**2) if relative else 0.0
    slope = model.raw_slope * WEEK_HOURS * WEEK_HOURS * keep  # in weekly totals per week
    level = _median([t - slope * x for x, t in zip(centers, totals, strict=True)])
    if keep == 0.0 and relative:
        notes.append(f"a trend of {relative:+.0%} a week is within the weeks' noise: none assumed")
    shrunk = dataclasses.replace(model, level=level / WEEK_HOURS, slope=slope / WEEK_HOURS / WEEK_HOURS)
    return shrunk, se


@dataclass(frozen=True, slots=True)
class _Band:
    """The band's relative half-width at a distance ahead (step 5 and the trend's error)."""

    spread: float
    days_measured: float
    trend_se: float  # relative to the weekly level, per week; 0: no trend fitted
    centers: tuple[float, ...]
    recent: float  # the recent blend's own noise (relative)
    _mean_x: float = field(init=False, repr=False, compare=False, default=0.0)
    _sxx: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        # The centres' mean and spread, once: the band is asked for every hour ahead.
        mean_x = sum(self.centers) / len(self.centers) if self.centers else 0.0
        object.__setattr__(self, "_mean_x", mean_x)
        object.__setattr__(self, "_sxx", sum((x - mean_x) ** 2 for x in self.centers))

    def __call__(self, ahead: timedelta) -> float:
        days = max(ahead / timedelta(days=1), 1 / DAY_HOURS)
        variance = self.spread**2 / days + self.recent**2
        if self.trend_se and self.centers:
            # The fitted line's error at the middle of what is ahead.
            mean_x, sxx = self._mean_x, self._sxx
            middle = days / 7 / 2
            variance += (self.trend_se**2) * sxx * (1 / len(self.centers) + (middle - mean_x) ** 2 / sxx)
        else:
            variance += self.spread**2 / max(self.days_measured, 1 / DAY_HOURS)
        return BAND_Z * math.sqrt(variance)


def forecast(
    history: HourlySpend,
    *,
    spent: Money,
    limit: Money,
    now: datetime,
    window_start: datetime | None,
    window_end: datetime | None,
    horizon: timedelta = DEFAULT_HORIZON,
) -> Forecast:
    """The forecast of a budget instance (the module's docstring has the method).

    ``history`` is the instance's spend per whole hour up to the hour holding ``now`` (its
    first hour: the first logged hour, so the zeros before an instance existed are not read as
    spend); ``spent`` is its spend in the current window ``[window_start, window_end)``
    (``window_end`` None: it never resets, forecast to ``now + horizon``).
    """
    now = as_utc(now)
    end = window_end if window_end is not None else now + horizon
    notes: list[str] = []
    if window_end is None:
        notes.append(f"the budget never resets: forecast over the next {_days(horizon)}")
    if not any(history.nanos):
        notes.append("no spend in the request log yet: nothing to forecast from")
        empty = _Band(0.0, 1.0, 0.0, (), 0.0)
        return _result(now, window_start, window_end, end, spent, limit, [], None, empty, notes)
    model, clean, cut = _fit(history, notes)
    measured = _spread(model, clean, history.start)
    spread, usual = measured if measured is not None else (UNKNOWN_SPREAD, 2 * UNKNOWN_SPREAD)
    if measured is None:
        notes.append(f"fewer than 3 whole days of history: a wide band (+-{UNKNOWN_SPREAD:.0%} a day)")
    trend_se = 0.0
    if model.weeks >= 3:
        model, trend_se = _shrunk_trend(model, spread, notes)

    # Step 4: the last 24 hours against the model, believed as far as they stand out of how far
    # days usually are from it (within the 90th percentile: not at all), and at most halfway.
    # "The last day" is the last day's worth of expected spend: on a quiet Sunday morning it
    # reaches back into Friday, so a few requests more or less do not swing it.
    fitted = actual = 0.0
    i = len(clean)
    while i > max(len(clean) - WEEK_HOURS, 0) and (
        fitted < model.level * DAY_HOURS or i > len(clean) - DAY_HOURS
    ):
        i -= 1
        fitted += model.base(history.start + HOUR * i)
        actual += clean[i]
    ratio = actual / fitted if fitted > 0 else 1.0
    ratio = min(max(ratio, RECENT_RATIO_BOUNDS[0]), RECENT_RATIO_BOUNDS[1])
    deviation = ratio - 1.0
    weight = RECENT_WEIGHT * max(0.0, 1.0 - usual**2 / deviation**2) if deviation else 0.0
    scale = 1.0 + weight * deviation
    last = clean[-DAY_HOURS:]
    recent_rate = sum(last) / len(last)

    # Step 6: the expected spend hour by hour from now to the end.
    steps: list[tuple[datetime, float]] = []  # (instant, expected spend from now to it)
    total = 0.0
    at = now
    while at < end:
        hour = hour_floor(at)
        stop = min(hour + HOUR, end)
        total += model.base(hour) * scale * ((stop - at) / HOUR)
        steps.append((stop, total))
        at = stop
    band = _Band(spread, model.days_measured, trend_se, model.centers, weight * spread)
    stats = _Stats(len(history.nanos), model.base(hour_floor(now)) * scale, ratio, cut, spread, recent_rate)
    return _result(now, window_start, window_end, end, spent, limit, steps, model, band, notes, stats)


def _days(span: timedelta) -> str:
    days = span / timedelta(days=1)
    return f"{days:g} days" if days >= 1 else f"{span / HOUR:g} hours"


@dataclass(frozen=True, slots=True)
class _Stats:
    history_hours: int = 0
    rate_now: float = 0.0
    ratio: float = 1.0
    cut: int = 0
    spread: float = 0.0
    recent_rate: float = 0.0


def _crossing(
    steps: Sequence[tuple[datetime, float]], now: datetime, need: float, factor: Callable[[timedelta], float]
) -> datetime | None:
    """The first instant at which the expected spend (times ``factor(ahead)``) reaches ``need``."""
    before_at, before = now, 0.0
    for at, total in steps:
        value = total * factor(at - now)
        if value >= need:
            if value <= before:
                return at
            fraction = (need - before) / (value - before)
            return before_at + (at - before_at) * min(max(fraction, 0.0), 1.0)
        before_at, before = at, value
    return None


def _result(
    now: datetime,
    window_start: datetime | None,
    window_end: datetime | None,
    end: datetime,
    spent: Money,
    limit: Money,
    steps: Sequence[tuple[datetime, float]],
    model: _Model | None,
    band: _Band,
    notes: list[str],
    stats: _Stats | None = None,
) -> Forecast:
    stats = stats or _Stats()
    remaining = steps[-1][1] if steps else 0.0
    width = band(end - now) if steps else 0.0
    need = float(limit.nanos - spent.nanos)
    runs_out: datetime | None
    earliest: datetime | None
    latest: datetime | None
    if need <= 0:
        runs_out = earliest = latest = now
        notes.append("spend has reached the limit")
    else:
        runs_out = _crossing(steps, now, need, lambda ahead: 1.0)
        earliest = _crossing(steps, now, need, lambda ahead: 1.0 + band(ahead))
        latest = _crossing(steps, now, need, lambda ahead: max(1.0 - band(ahead), 0.0))
    trend = model.slope * WEEK_HOURS * WEEK_HOURS if model is not None else 0.0
    return Forecast(
        now=now,
        window_start=window_start,
        window_end=window_end,
        horizon_end=end,
        spent=spent,
        limit=limit,
        expected=spent + _up(remaining),
        low=spent + Money(max(math.floor(remaining * (1.0 - width)), 0)),
        high=spent + _up(remaining * (1.0 + width)),
        runs_out_at=runs_out,
        earliest_run_out=earliest,
        latest_run_out=latest,
        rate_per_hour=_up(stats.rate_now),
        recent_rate_per_hour=_up(stats.recent_rate),
        method=model.method if model is not None else "none",
        history_hours=stats.history_hours,
        weeks=model.weeks if model is not None else 0,
        trend_per_week=Money(math.ceil(trend) if trend >= 0 else -math.ceil(-trend)),
        recent_ratio=stats.ratio,
        spikes_clipped=stats.cut,
        spread=stats.spread,
        notes=tuple(notes),
    )


def _up(nanos: float) -> Money:
    return Money(max(math.ceil(nanos), 0))
