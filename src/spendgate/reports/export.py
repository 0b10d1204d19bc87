"""A report as CSV and as JSON: money as exact decimal strings in USD, instants ISO-8601 UTC.

CSV has one row per point (a bucket and group with requests; empty buckets are left out, as
the ledger leaves them out), in the ledger's order (bucket start, then group):

    start,end,by,group,cost_usd,requests,input_tokens,output_tokens
    2026-03-10T00:00:00Z,2026-03-11T00:00:00Z,user,alice,0.0123,12,5400,800

``by`` is the grouping dimension (empty when not grouped), ``group`` its value (empty for
requests without one; a value a spreadsheet would read as a formula, one starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return and not a number, gets a leading ``'``: group
values are user ids and tags the clients chose, and the dashboard's CSV does the same). ``cost_usd`` is exact (``Decimal(cost_usd)`` is the ledger's amount to
the nano-USD). Tokens are the logged usage's (input includes cache reads and writes, output
includes reasoning).
"""

from __future__ import annotations

import csv
from datetime import timedelta
from typing import Any, Final, TextIO

from spendgate.gateway.views import iso
from spendgate.ledger import UsagePoint
from spendgate.reports.pivot import Cell, Report
from spendgate.reports.span import bucket_name

__all__ = ["CSV_COLUMNS", "cell_json", "point_json", "report_json", "spreadsheet_safe", "write_csv"]

CSV_COLUMNS: Final = ("start", "end", "by", "group", "cost_usd", "requests", "input_tokens", "output_tokens")


_FORMULA: Final = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text``, with a ``'`` before it when a spreadsheet would run it as a formula (OWASP's
    CSV injection advice); a number (``-5``) is left as it is."""
    if text.startswith(_FORMULA):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


def write_csv(report: Report, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in report.points:
        writer.writerow(
            (
                iso(p.start),
                iso(p.start + report.bucket),
                report.by or "",
                spreadsheet_safe(p.group or ""),
                p.cost.decimal_str(),
                p.requests,
                p.input_tokens,
                p.output_tokens,
            )
        )


def cell_json(cell: Cell) -> dict[str, Any]:
    return {
        "cost": cell.cost.decimal_str(),
        "requests": cell.requests,
        "input_tokens": cell.input_tokens,
        "output_tokens": cell.output_tokens,
    }


def point_json(point: UsagePoint, bucket: timedelta) -> dict[str, Any]:
    """One point as the admin API and ``spendgate report --format json`` give it."""
    return {
        "start": iso(point.start),
        "end": iso(point.start + bucket),
        "group": point.group,
        "cost": point.cost.decimal_str(),
        "requests": point.requests,
        "input_tokens": point.input_tokens,
        "output_tokens": point.output_tokens,
    }


def report_json(report: Report) -> dict[str, Any]:
    """The whole report: its span, the totals (per group too when grouped) and the points."""
    data: dict[str, Any] = {
        "start": iso(report.start),
        "end": iso(report.end),
        "bucket": bucket_name(report.bucket),
        "bucket_seconds": report.bucket // timedelta(seconds=1),
        "by": report.by,
        "filters": dict(report.filters),
        "total": cell_json(report.total),
    }
    if report.by is not None:
        data["groups"] = [{"group": g, **cell_json(report.by_group[g])} for g in report.groups]
    data["points"] = [point_json(p, report.bucket) for p in report.points]
    return data
