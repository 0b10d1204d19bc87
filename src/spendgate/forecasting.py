"""Forecasts of the budgets in a ledger: ``spendgate.forecast``'s math over the ledger's reads.

    forecast_budget(ledger, "team-research")                      # a budget without wildcards
    forecast_budget(ledger, "per-user", {"user": "alice"})        # one instance of a wildcard budget
    forecast_budgets(ledger)                                      # every row of list_budgets()

Each reads the instance's spend in its current window (``BudgetAdmin.usage``) and its hourly
spend over the last ``LOOKBACK`` (``RequestLog.usage_timeseries``, filtered to the budget's
selector with the instance's values in place of its wildcards: ``tag`` by membership). These
are blocking ledger reads: an asyncio caller runs them on a thread. ``now`` defaults to the
ledger's clock. An unknown budget id is a KeyError; an instance that does not fit the budget's
wildcards a ValueError (its message says what to pass).

``HourlyHistory`` keeps the hourly series already read, so a later forecast of the same selector
reads only the last hours (its rules in its docstring and docs/forecasts.md); pass one as
``history=`` (``ForecastCache`` has one). Without it every forecast reads the whole lookback.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Final, Protocol

from spendgate.budgets import EPOCH
from spendgate.forecast import DEFAULT_HORIZON, LOOKBACK, Forecast, HourlySpend, forecast, hour_floor
from spendgate.ledger.base import BudgetUsage
from spendgate.ledger.protocols import BudgetAdmin, RequestLog

__all__ = [
    "LATE",
    "REFRESH",
    "BudgetLedger",
    "ForecastCache",
    "HourlyHistory",
    "forecast_budget",
    "forecast_budgets",
    "hourly_spend",
    "ledger_now",
    "start_warming",
    "warm_history",
]

log = logging.getLogger("spendgate.forecasting")

_HOUR = timedelta(hours=1)
#: How long after it started a request may still be logged: the series puts a request in the
#: hour of its ``started_at`` but it is logged when it ends, which the gateway bounds by its
#: ``request_timeout`` and ``lease`` (900 s each by default; an expired lease is logged when a
#: later ledger call notices it). The slack beyond 15 minutes covers that and other writers'
#: clocks; a quiet ledger's expiry noticed later still is what ``REFRESH`` catches.
LATE: Final = timedelta(hours=1)
#: Every selector's whole lookback is read afresh at least this often (by the ledger's clock):
#: what a lease longer than ``LATE``, a retention purge or an archive of old rows changed.
REFRESH: Final = timedelta(hours=3)


class BudgetLedger(BudgetAdmin, RequestLog, Protocol):
    """What the forecasts read: budgets and their spend, and the request log (any ``Ledger``)."""


def hourly_spend(
    log: RequestLog,
    selector: Mapping[str, str],
    now: datetime,
    lookback: timedelta = LOOKBACK,
    *,
    history: HourlyHistory | None = None,
) -> HourlySpend:
    """Whole hours of spend of the requests ``selector`` matches (exact values only), from the
    first logged hour within ``lookback`` up to the hour holding ``now`` (excluded). With
    ``history``, what it kept is reused and only the last hours are read."""
    if history is not None:
        return history.spend(log, selector, now, lookback)
    end = hour_floor(now)
    start = end - lookback
    points = log.usage_timeseries(start, end, _HOUR, **dict(selector))
    return HourlySpend.from_points(((p.start, p.cost) for p in points), end)


def forecast_budget(
    ledger: BudgetLedger,
    budget_id: str,
    instance: Mapping[str, str] | str | None = None,
    *,
    now: datetime | None = None,
    lookback: timedelta = LOOKBACK,
    horizon: timedelta = DEFAULT_HORIZON,
    history: HourlyHistory | None = None,
) -> Forecast:
    """The forecast of one budget instance in its current window (``Forecast.runs_out_at``,
    ``.runs_out_before_end``, ``.expected`` and its band).

    ``instance`` names the wildcard values (``{"user": "alice"}`` or ``"user=alice"``; none for
    a budget without wildcards). ``horizon``: how far a budget that never resets is forecast.
    ``history``: the hourly series kept from earlier calls (none: the whole lookback is read).
    """
    budget = ledger.get_budget(budget_id)
    key = budget.instance_key(instance)
    at = now if now is not None else ledger_now(ledger)
    usage = ledger.usage(budget_id, key, at=at)
    spend = hourly_spend(ledger, budget.concrete_selector(key), at, lookback, history=history)
    result = forecast(
        spend,
        spent=usage.spent,
        limit=usage.limit,
        now=at,
        window_start=usage.window_start if usage.window_end is not None else None,
        window_end=usage.window_end,
        horizon=horizon,
    )
    return dataclasses.replace(result, budget_id=budget_id, instance=usage.instance, label=usage.label)


def forecast_budgets(
    ledger: BudgetLedger,
    *,
    now: datetime | None = None,
    lookback: timedelta = LOOKBACK,
    horizon: timedelta = DEFAULT_HORIZON,
    history: HourlyHistory | None = None,
) -> list[Forecast]:
    """A forecast for every row of ``list_budgets()``: each budget without wildcards, and each
    wildcard instance with spend in its current window (a budget deleted meanwhile is skipped)."""
    at = now if now is not None else ledger_now(ledger)
    out: list[Forecast] = []
    for usage in ledger.list_budgets():
        try:
            out.append(
                forecast_budget(
                    ledger,
                    usage.budget_id,
                    usage.instance,
                    now=at,
                    lookback=lookback,
                    horizon=horizon,
                    history=history,
                )
            )
        except KeyError:
            continue
    return out


def ledger_now(ledger: object) -> datetime:
    """The ledger's clock now (the backend's clock is the clock)."""
    clock = getattr(ledger, "clock", None)
    if clock is None:
        raise TypeError("pass now=: this ledger has no clock")
    when: datetime = clock.now()
    return when


class ForecastCache:
    """Forecasts of budget instances, each reused for ``ttl`` of the ledger's clock.

    Behind one forecast are 28 days of the request log hour by hour; a dashboard asks for the
    same instances on every load. A forecast moves slowly, so one at most ``ttl`` old is kept,
    unless the instance's limit changed (a paused budget is forecast again at once). A forecast
    made afresh reads its series through ``history`` (its own unless one is shared).
    """

    def __init__(
        self, ttl: timedelta = timedelta(seconds=60), size: int = 1000, history: HourlyHistory | None = None
    ) -> None:
        self.ttl = ttl
        self.size = size
        self.history = history if history is not None else HourlyHistory()
        self._lock = threading.Lock()
        self._kept: dict[tuple[int, str, str, int], Forecast] = {}

    def get(
        self, ledger: BudgetLedger, usage: BudgetUsage, now: datetime, *, ttl: timedelta | None = None
    ) -> Forecast:
        """The forecast of ``usage``'s budget instance (``forecast_budget``), maybe a kept one
        (at most ``ttl`` old: the cache's own when None; 0 makes a fresh one and keeps it)."""
        key = (id(ledger), usage.budget_id, usage.instance_key, usage.limit.nanos)
        most = self.ttl if ttl is None else ttl
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and kept.now <= now < kept.now + most:
            return kept
        made = forecast_budget(ledger, usage.budget_id, usage.instance_key, now=now, history=self.history)
        with self._lock:
            self._kept[key] = made
            while len(self._kept) > self.size:  # the oldest put first
                del self._kept[next(iter(self._kept))]
        return made


#: An hour without a logged request (a request may cost 0, or a negative correction).
_NONE: Final = -(2**63)


class _Kept:
    """One selector's hours: ``nanos[i]`` for the hour ``base + i`` (hours since the epoch)."""

    __slots__ = ("base", "end", "full_at", "lock", "log", "nanos", "read_at")

    def __init__(self, log: Callable[[], object | None]) -> None:
        self.lock = threading.Lock()  # one reader per selector: the others wait for its hours
        self.log = log
        self.base = 0
        self.nanos: array[int] = array("q")
        self.end: int | None = None  # hours before it are read (None: nothing yet)
        self.read_at = EPOCH  # the clock's "now" at the last read
        self.full_at = EPOCH  # ... at the last read of the whole lookback


def _hours(when: datetime) -> int:
    return (when - EPOCH) // _HOUR


def _ref(log: object) -> Callable[[], object | None]:
    """A weak reference when the ledger allows one (a ledger closed and gone is not kept
    alive, and a new one at its address is not mistaken for it)."""
    try:
        return weakref.ref(log)
    except TypeError:
        return lambda: log


class HourlyHistory:
    """The hourly series of the selectors forecast before, read again only where it can change.

    Per (ledger, selector, lookback) it keeps the whole hours read. A request is in the hour of
    its ``started_at`` but is logged when it ends, at most ``late`` after it started (``LATE``:
    the gateway's request timeout and lease, 15 minutes each by default, plus slack), so the
    hours before ``hour_floor(last read - late)`` are as they were at the last read. A later call
    reads from that hour (or from the end of what is kept, if earlier) up to the current hour,
    and drops the hours older than the lookback. Every ``refresh`` (``REFRESH``) of the clock the
    whole lookback is read again: what a longer lease, a retention purge or an archive of old
    rows changed shows then at the latest. The answer equals ``hourly_spend`` without history
    whenever nothing was logged later than ``late`` after its start.

    Thread-safe: one thread reads a selector while the others asking for it wait (no duplicate
    full read). At most ``size`` selectors are kept (about 5 KB each over 28 days), the least
    recently used dropped first. A ``now`` before the last read's (a question about the past),
    or a lookback that is not whole hours, is read in full and changes nothing kept.
    """

    def __init__(self, *, late: timedelta = LATE, refresh: timedelta = REFRESH, size: int = 2048) -> None:
        if late < timedelta(0) or refresh <= timedelta(0) or size < 1:
            raise ValueError("late must be >= 0, refresh > 0 and size >= 1")
        self.late = late
        self.refresh = refresh
        self.size = size
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[int, tuple[tuple[str, str], ...], timedelta], _Kept] = OrderedDict()
        #: Reads made, for tests and measurements: whole lookbacks and the last hours only.
        self.full_reads = 0
        self.partial_reads = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def spend(
        self, log: RequestLog, selector: Mapping[str, str], now: datetime, lookback: timedelta = LOOKBACK
    ) -> HourlySpend:
        """``hourly_spend(log, selector, now, lookback)``, from what is kept where it can be."""
        if lookback <= timedelta(0) or lookback % _HOUR:
            return hourly_spend(log, selector, now, lookback)
        key = (id(log), tuple(sorted(selector.items())), lookback)
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or kept.log() is not log:
                kept = self._kept[key] = _Kept(_ref(log))
            self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        with kept.lock:
            return self._spend(kept, log, selector, now, lookback)

    def _spend(
        self, kept: _Kept, log: RequestLog, selector: Mapping[str, str], now: datetime, lookback: timedelta
    ) -> HourlySpend:
        end_at = hour_floor(now)
        end = _hours(end_at)
        start = end - lookback // _HOUR
        if kept.end is not None and (end < kept.end or now < kept.read_at):
            return hourly_spend(log, selector, now, lookback)  # the past: read, keep nothing
        full = kept.end is None or now >= kept.full_at + self.refresh or kept.end < start
        if full:
            first = start
        else:
            assert kept.end is not None
            first = max(start, min(kept.end, _hours(hour_floor(kept.read_at - self.late))))
        if first < end:
            points = log.usage_timeseries(EPOCH + first * _HOUR, end_at, _HOUR, **dict(selector))
        else:
            points = []
        with self._lock:  # counted exactly across selectors' threads
            if full:
                self.full_reads += 1
            else:
                self.partial_reads += 1
        if full:
            kept.base, kept.nanos = first, array("q")
        else:
            if kept.base < start:  # older than the lookback now
                del kept.nanos[: start - kept.base]
                kept.base = start
            del kept.nanos[first - kept.base :]  # read again below
        kept.nanos.extend([_NONE] * (end - kept.base - len(kept.nanos)))
        for point in points:
            i = _hours(point.start) - kept.base
            was = kept.nanos[i]
            kept.nanos[i] = point.cost.nanos if was == _NONE else was + point.cost.nanos
        kept.end, kept.read_at = end, now
        if full:
            kept.full_at = now
        return _series(kept, end_at)


def _series(kept: _Kept, end_at: datetime) -> HourlySpend:
    """As ``HourlySpend.from_points``: from the first hour with a logged request to ``end_at``."""
    nanos = kept.nanos
    for i, value in enumerate(nanos):
        if value != _NONE:
            return HourlySpend(
                EPOCH + (kept.base + i) * _HOUR, tuple(0 if v == _NONE else v for v in nanos[i:])
            )
    return HourlySpend.empty(end_at)


#: How many budget rows a gateway warms at start: the budgets page asks a forecast for up to 100.
WARM_ROWS: Final = 100


def _most_used_first(usage: BudgetUsage) -> tuple[int, int, str, str]:
    """The overview's order: a paused budget (limit 0) first, then by use / limit, exactly."""
    used = usage.spent.nanos + usage.reserved.nanos
    if usage.limit.nanos <= 0:
        return (0, 0, usage.budget_id, usage.instance_key)
    return (1, -(used * 10**12 // usage.limit.nanos), usage.budget_id, usage.instance_key)


def warm_history(
    history: HourlyHistory,
    ledger: BudgetLedger,
    *,
    limit: int = WARM_ROWS,
    now: datetime | None = None,
    lookback: timedelta = LOOKBACK,
) -> int:
    """Read the hourly series of the ``limit`` most used rows of ``list_budgets()`` into
    ``history`` (the overview's order); how many selectors were read. Blocking ledger reads."""
    at = now if now is not None else ledger_now(ledger)
    budgets = {budget.id: budget for budget in ledger.budgets()}
    read: set[tuple[tuple[str, str], ...]] = set()
    for usage in sorted(ledger.list_budgets(), key=_most_used_first)[:limit]:
        budget = budgets.get(usage.budget_id)
        if budget is None:
            continue  # deleted meanwhile
        selector = budget.concrete_selector(budget.instance_key(usage.instance_key))
        key = tuple(sorted(selector.items()))
        if key not in read:
            read.add(key)
            history.spend(ledger, selector, at, lookback)
    return len(read)


def start_warming(
    history: HourlyHistory, ledger: BudgetLedger, *, limit: int = WARM_ROWS
) -> threading.Thread:
    """``warm_history`` on a daemon thread (a gateway's start: readiness never waits for it)."""

    def run() -> None:
        began = time.perf_counter()
        try:
            count = warm_history(history, ledger, limit=limit)
        except Exception as exc:  # the forecasts read what they need when asked
            log.info("forecasts: the hourly history was not warmed (%s: %s)", type(exc).__name__, exc)
            return
        log.info(
            "forecasts: warmed the hourly history of %d selectors in %.0f ms",
            count,
            (time.perf_counter() - began) * 1000,
        )

    thread = threading.Thread(target=run, name="spendgate-forecast-warm", daemon=True)
    thread.start()
    return thread
