"""``RequestLog.usage_timeseries``: its arguments checked once, and the bucket arithmetic every
backend shares.

A series counts the logged requests (settled and expired; released ones cost nothing) that
started in ``[start, end)``, in fixed buckets counted from the Unix epoch (UTC): an hour
bucket starts on the hour, a day bucket at 00:00 UTC. A request is in the bucket of its
``started_at`` (when it was reserved), as the request log's other queries see it. Tokens are
the normalised usage's (``spendgate.usage``): ``input_tokens`` is every prompt token, cache
reads and cache writes included (never counted twice); ``output_tokens`` is every generated
token, reasoning included. A request without usage (an expired lease) counts zero tokens.

The SQL backends compute bucket indexes relative to ``Series.origin_us`` (the first bucket's
start, at or before ``start``), so every index is a whole number >= 0 and integer division
needs no floor of a negative.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from spendgate.budgets import DIMENSIONS, EPOCH
from spendgate.ledger.base import UsagePoint
from spendgate.money import Money

__all__ = ["BY", "MAX_BUCKETS", "Series", "Totals", "micros", "plan", "points", "tokens_of"]

#: The most buckets one series may span (``end - start`` over ``bucket``).
MAX_BUCKETS: Final = 100_000
#: What ``by`` may name: a dimension, or ``tag`` (a request counts once per tag).
BY: Final = tuple(DIMENSIONS)
_SECOND: Final = timedelta(seconds=1)
_US: Final = timedelta(microseconds=1)


def micros(when: datetime) -> int:
    """An instant as the request log's rows keep it (``rows.us``): µs since the epoch, exact."""
    return (when - EPOCH) // _US


@dataclass(frozen=True, slots=True)
class Series:
    """A checked ``usage_timeseries`` query, in the rows' units (µs since the epoch)."""

    start_us: int
    end_us: int
    width_us: int
    origin_us: int  # the first bucket's start: ``start`` rounded down to a bucket
    by: str | None
    filters: Mapping[str, str]

    def index(self, started_us: int) -> int:
        return (started_us - self.origin_us) // self.width_us


def plan(
    start: datetime, end: datetime, bucket: timedelta, by: str | None, dimensions: Mapping[str, str]
) -> Series:
    """Check a query's arguments (ValueError or TypeError saying which and why)."""
    for name, when in (("start", start), ("end", end)):
        if not isinstance(when, datetime):
            raise TypeError(f"{name} must be a datetime, got {type(when).__name__}")
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware (e.g. UTC), got {when.isoformat()}")
    if not start < end:
        raise ValueError(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    if not isinstance(bucket, timedelta):
        raise TypeError(f"bucket must be a timedelta, got {type(bucket).__name__}")
    if bucket <= timedelta(0) or bucket % _SECOND:
        raise ValueError(f"bucket must be a positive whole number of seconds, got {bucket}")
    if by is not None and by not in BY:
        raise ValueError(f"unknown grouping dimension {by!r}; known: {', '.join(BY)}")
    for dim, value in dimensions.items():
        if dim not in DIMENSIONS:
            raise ValueError(f"unknown filter dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
        if not isinstance(value, str):
            raise TypeError(f"filter {dim} must be a string, got {type(value).__name__}")
    width = bucket // _US
    start_us, end_us = micros(start), micros(end)
    origin = start_us - start_us % width  # Python's % floors: right before 1970 too
    count = -((origin - end_us) // width)  # buckets from origin up to end, the last one partial
    if count > MAX_BUCKETS:
        raise ValueError(
            f"{count} buckets of {bucket} from {start.isoformat()} to {end.isoformat()}: at most "
            f"{MAX_BUCKETS} (use a wider bucket or a shorter span)"
        )
    return Series(start_us, end_us, width, origin, by, dict(dimensions))


def tokens_of(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """A logged usage's input and output tokens (see the module docstring)."""
    if not usage:
        return 0, 0
    return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


class Totals:
    """Sums per (bucket index, group), for a backend that adds up its rows in Python."""

    __slots__ = ("_sums",)

    def __init__(self) -> None:
        self._sums: dict[tuple[int, str | None], list[int]] = {}

    def add(self, index: int, group: str | None, cost: int, input_tokens: int, output_tokens: int) -> None:
        sums = self._sums.get((index, group))
        if sums is None:
            self._sums[(index, group)] = [cost, 1, input_tokens, output_tokens]
        else:
            sums[0] += cost
            sums[1] += 1
            sums[2] += input_tokens
            sums[3] += output_tokens

    def rows(self) -> list[tuple[int, str | None, int, int, int, int]]:
        return [(index, group, c, n, i, o) for (index, group), (c, n, i, o) in self._sums.items()]


def _order(row: tuple[Any, ...]) -> tuple[int, bool, str]:
    index, group = row[0], row[1]
    return index, group is not None, group or ""


def points(series: Series, rows: Iterable[tuple[Any, ...]], *, ordered: bool = False) -> list[UsagePoint]:
    """``(bucket index, group, cost, requests, input_tokens, output_tokens)`` integer rows as
    points, ordered by bucket start, then group: no group first, then by code point (UTF-8 byte
    order: SQLite's BINARY, PostgreSQL's "C"). ``ordered``: the rows already are (SQL's ORDER BY)."""
    out: list[UsagePoint] = []
    starts: dict[int, datetime] = {}
    origin, width = series.origin_us, series.width_us
    for index, group, cost, requests, input_tokens, output_tokens in (
        rows if ordered else sorted(rows, key=_order)
    ):
        start = starts.get(index)
        if start is None:
            start = starts[index] = EPOCH + (origin + index * width) * _US
        out.append(UsagePoint(start, group, Money(cost), requests, input_tokens or 0, output_tokens or 0))
    return out
