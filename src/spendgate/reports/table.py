"""A report in the terminal (rich): per group a row with a sparkline of its cost over the
buckets; per bucket a row with a bar of its cost.

The charts are text scaled with integer arithmetic on nano-USD (rich's ``Bar`` takes floats;
money here never is one): a sparkline is one of eight block heights per bucket (a blank where
nothing was spent), wider spans summed into at most ``SPARK_WIDTH`` columns; a bar is whole
and eighth blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from spendgate.reports.pivot import Cell, Report
from spendgate.reports.span import BUCKETS, bucket_name

__all__ = ["SPARK_WIDTH", "bar", "render", "sparkline"]

SPARK_WIDTH: Final = 48
BAR_WIDTH: Final = 24
_LEVELS: Final = "▁▂▃▄▅▆▇█"
_EIGHTHS: Final = " ▏▎▍▌▋▊▉"


def sparkline(values: Sequence[int], width: int = SPARK_WIDTH) -> str:
    """One character per value (adjacent values summed when there are more than ``width``)."""
    if not values:
        return ""
    per = -(-len(values) // width)  # values per column, rounded up
    columns = [sum(values[i : i + per]) for i in range(0, len(values), per)]
    top = max(columns)
    if top <= 0:
        return " " * len(columns)
    return "".join(" " if v <= 0 else _LEVELS[(v * len(_LEVELS) - 1) // top] for v in columns)


def bar(value: int, top: int, width: int = BAR_WIDTH) -> str:
    """``value`` of ``top`` as whole and eighth blocks over ``width`` characters."""
    if value <= 0 or top <= 0:
        return ""
    eighths = max(value * width * 8 // top, 1)  # never hide a nonzero amount
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def _when(start: datetime, bucket: timedelta) -> str:
    if bucket == BUCKETS["day"]:
        return f"{start:%Y-%m-%d %a}"
    if bucket % BUCKETS["day"] == timedelta(0):
        return f"{start:%Y-%m-%d}"
    return f"{start:%Y-%m-%d %H:%M}"


def _share(part: int, whole: int) -> str:
    if whole <= 0:
        return "-"
    tenths = part * 1000 // whole
    return f"{tenths // 10}.{tenths % 10}%"


def _decimals(nanos: int) -> int:
    """The decimal places an amount of nano-USD needs in USD (0 to 9)."""
    places = 9
    while places and nanos % 10 == 0:
        nanos //= 10
        places -= 1
    return places


def _places(report: Report) -> int:
    """Places that show every amount of the report exactly, at least cents: the cost column
    lines up and never rounds."""
    amounts = (*report.by_group.values(), *report.by_bucket.values(), report.total)
    return max(2, *(_decimals(cell.cost.nanos) for cell in amounts))


def _cells(cell: Cell, places: int) -> tuple[str, str, str, str]:
    tokens_in, tokens_out = f"{cell.input_tokens:,}", f"{cell.output_tokens:,}"
    return cell.cost.format(places), f"{cell.requests:,}", tokens_in, tokens_out


def _title(report: Report) -> str:
    span = f"{report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC"
    what = f"Spend per {bucket_name(report.bucket)}"
    if report.by:
        what += f" by {report.by}"
    filters = ", ".join(f"{k}={v}" for k, v in sorted(report.filters.items()))
    return f"{what}, {span}" + (f" ({filters})" if filters else "")


def _groups(report: Report, places: int) -> Table:
    by = report.by or ""
    none = "(untagged)" if by == "tag" else f"(no {by})"
    table = Table(box=box.SIMPLE_HEAD, show_footer=True, title_justify="left")
    total = report.total.cost.nanos
    table.add_column(by, footer="total")
    table.add_column("cost", justify="right", footer=report.total.cost.format(places))
    table.add_column("share", justify="right")
    table.add_column("requests", justify="right", footer=f"{report.total.requests:,}")
    table.add_column("input tok", justify="right", footer=f"{report.total.input_tokens:,}")
    table.add_column("output tok", justify="right", footer=f"{report.total.output_tokens:,}")
    table.add_column(f"cost per {bucket_name(report.bucket)}", no_wrap=True)
    for group in report.groups:
        cell = report.by_group[group]
        trend = sparkline([c.cost.nanos for c in report.row(group)])
        cost, requests, tokens_in, tokens_out = _cells(cell, places)
        name = Text(none, style="dim") if group is None else Text(group)
        table.add_row(
            name,
            cost,
            _share(cell.cost.nanos, total),
            requests,
            tokens_in,
            tokens_out,
            Text(trend, style="cyan"),
        )
    if by == "tag":
        table.caption = "A request with several tags is in each of their rows; the total counts it once."
    return table


def _buckets(report: Report, places: int) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_footer=True)
    table.add_column(bucket_name(report.bucket) + " (UTC)", footer="total", no_wrap=True)
    table.add_column("cost", justify="right", footer=report.total.cost.format(places))
    table.add_column("requests", justify="right", footer=f"{report.total.requests:,}")
    table.add_column("input tok", justify="right", footer=f"{report.total.input_tokens:,}")
    table.add_column("output tok", justify="right", footer=f"{report.total.output_tokens:,}")
    table.add_column("", no_wrap=True)
    top = max((cell.cost.nanos for cell in report.by_bucket.values()), default=0)
    for start in report.buckets:
        cell = report.by_bucket.get(start, Cell())
        chart = Text(bar(cell.cost.nanos, top), style="green")
        table.add_row(
            _when(start, report.bucket), *_cells(cell, places), chart, style=None if cell.requests else "dim"
        )
    return table


def render(report: Report) -> RenderableType:
    """The report's tables: per group (when grouped), then per bucket."""
    parts: list[RenderableType] = [Text(_title(report), style="bold")]
    if not report.points:
        parts.append(Text("No requests logged in that span.", style="dim"))
        return Group(*parts)
    places = _places(report)
    if report.by:
        parts.append(_groups(report, places))
    parts.append(_buckets(report, places))
    return Group(*parts)
