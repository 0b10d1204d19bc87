"""Points -> a report: cells by bucket and group, totals, and every bucket of the span.

The ledger leaves empty buckets out (``usage_timeseries``); a report lists every bucket from
the one ``start`` is in to the one before ``end`` so a table or a chart shows the gaps. Sums
are exact (integer nano-USD, integer counts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from spendgate.ledger import UsagePoint
from spendgate.ledger.timeseries import MAX_BUCKETS
from spendgate.money import Money
from spendgate.reports.span import floor

__all__ = ["ZERO", "Cell", "Report", "pivot"]

_NO_COST: Final = Money(0)  # Money is immutable: one instance serves every default


@dataclass(frozen=True, slots=True)
class Cell:
    """What some requests cost and used."""

    cost: Money = _NO_COST
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Cell) -> Cell:
        return Cell(
            self.cost + other.cost,
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )

    @classmethod
    def of(cls, point: UsagePoint) -> Cell:
        return cls(point.cost, point.requests, point.input_tokens, point.output_tokens)


ZERO = Cell()


@dataclass(frozen=True)
class Report:
    """A series of usage over ``[start, end)`` in buckets of ``bucket``, per ``by`` group.

    ``points`` are the ledger's, as it gave them (non-empty buckets only). ``buckets`` is every
    bucket start of the span; ``groups`` the groups seen, dearest first (then by name, no group
    last). ``by_bucket`` and ``total`` count each request once: grouped by tag, a request with
    two tags is in two groups, so they come from the ungrouped series (``pivot``'s ``overall``).
    """

    start: datetime
    end: datetime
    bucket: timedelta
    by: str | None
    filters: Mapping[str, str]
    points: tuple[UsagePoint, ...]
    buckets: tuple[datetime, ...]
    groups: tuple[str | None, ...]
    cells: Mapping[tuple[datetime, str | None], Cell] = field(repr=False)
    by_group: Mapping[str | None, Cell] = field(repr=False)
    by_bucket: Mapping[datetime, Cell] = field(repr=False)
    total: Cell

    def cell(self, bucket: datetime, group: str | None = None) -> Cell:
        return self.cells.get((bucket, group), ZERO)

    def row(self, group: str | None) -> list[Cell]:
        """One group's cells over every bucket, empty ones as zero."""
        return [self.cells.get((start, group), ZERO) for start in self.buckets]

    def bucket_end(self, start: datetime) -> datetime:
        return start + self.bucket


def pivot(
    points: Iterable[UsagePoint],
    start: datetime,
    end: datetime,
    bucket: timedelta,
    *,
    by: str | None = None,
    filters: Mapping[str, str] | None = None,
    overall: Iterable[UsagePoint] | None = None,
) -> Report:
    """The report of ``points`` (from ``usage_timeseries(start, end, bucket, by=by, **filters)``).
    ``overall``: the same series ungrouped, for the totals; needed with ``by="tag"`` (a request
    counts once per tag in the groups), else the groups' sums are the totals."""
    if not start < end:
        raise ValueError("start must be before end")
    first = floor(start, bucket)
    count = -((first - end) // bucket)
    if count > MAX_BUCKETS:
        raise ValueError(f"{count} buckets: at most {MAX_BUCKETS}")
    buckets = tuple(first + i * bucket for i in range(count))
    kept = tuple(points)
    cells: dict[tuple[datetime, str | None], Cell] = {}
    by_group: dict[str | None, Cell] = {}
    by_bucket: dict[datetime, Cell] = {}
    total = ZERO
    for point in kept:
        cell = Cell.of(point)
        key = (point.start, point.group)
        cells[key] = cells.get(key, ZERO) + cell
        by_group[point.group] = by_group.get(point.group, ZERO) + cell
    if by == "tag" and overall is None:
        raise ValueError("grouped by tag, the totals need the ungrouped series (overall=)")
    for point in kept if overall is None else overall:
        cell = Cell.of(point)
        by_bucket[point.start] = by_bucket.get(point.start, ZERO) + cell
        total = total + cell
    return Report(
        start=start,
        end=end,
        bucket=bucket,
        by=by,
        filters=dict(filters or {}),
        points=kept,
        buckets=buckets,
        groups=_dearest_first(by_group),
        cells=cells,
        by_group=by_group,
        by_bucket=by_bucket,
        total=total,
    )


def _dearest_first(by_group: Mapping[str | None, Cell]) -> tuple[str | None, ...]:
    def order(group: str | None) -> tuple[int, bool, str]:
        return -by_group[group].cost.nanos, group is None, group or ""

    ordered: Sequence[str | None] = sorted(by_group, key=order)
    return tuple(ordered)
