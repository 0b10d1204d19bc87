"""``spendgate report``: spend over time from the request log, as a table, CSV or JSON.

One ``usage_timeseries`` read of the ledger (two when grouped by tag: the totals count each
request once), made into a report by ``spendgate.reports``. The ledger is opened as the admin
commands open it (``ledger_options``; never created). Instants come from ``--since``/``--until``:
ISO 8601 (UTC without an offset), or a span before now (``7d``, ``24h``: then from the start of
the bucket it falls in, so the first bucket is whole). "Now" is the clock in ``ctx.obj["clock"]``
when a caller (a test) gives one, else the system's. Exit codes follow spendgate.cli: 4 bad
input, 1 the ledger cannot be reached. docs/reports.md has the columns and an example.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
from rich.console import Console

from spendgate.budgets import DIMENSIONS
from spendgate.clock import Clock, SystemClock
from spendgate.gateway.cli_admin import command_clock, ledger_options, opened_ledger
from spendgate.gateway.cli_admin import fail as _fail
from spendgate.ledger import Ledger
from spendgate.reports import BUCKETS, Report, parse_instant, pivot, report_json, write_csv
from spendgate.reports.span import floor, is_relative
from spendgate.reports.table import render

__all__ = ["report_cmd"]

_WIDTH = 120  # the table's width when not on a terminal (a file, a pipe)

F = TypeVar("F", bound=Callable[..., Any])


def _filter_options(func: F) -> F:
    for dim in reversed(DIMENSIONS):
        func = click.option(
            f"--{dim}",
            f"only_{dim}",
            metavar="VALUE",
            default=None,
            help=f"Only requests {'tagged' if dim == 'tag' else 'of'} this {dim}.",
        )(func)
    return func


def _span(since: str, until: str | None, bucket: timedelta, now: datetime) -> tuple[datetime, datetime]:
    try:
        start = parse_instant(since, "--since", now)
        end = parse_instant(until, "--until", now) if until else now
    except ValueError as exc:
        _fail(str(exc))
    if is_relative(since):
        start = floor(start, bucket)
    if end <= start:
        _fail(f"--until ({end.isoformat()}) must be after --since ({start.isoformat()})")
    return start, end


def _read(
    ledger: Ledger, start: datetime, end: datetime, bucket: timedelta, by: str | None, filters: dict[str, str]
) -> Report:
    points = ledger.usage_timeseries(start, end, bucket, by=by, **filters)
    overall = ledger.usage_timeseries(start, end, bucket, **filters) if by == "tag" else None
    return pivot(points, start, end, bucket, by=by, filters=filters, overall=overall)


@contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        with Path(path).open("w", encoding="utf-8", newline="") as out:
            yield out
    except OSError as exc:
        _fail(f"--output: cannot write {path}: {exc.strerror or exc}")


def _write(report: Report, fmt: str, out: TextIO) -> None:
    if fmt == "csv":
        write_csv(report, out)
    elif fmt == "json":
        out.write(json.dumps(report_json(report), indent=2) + "\n")
    else:
        terminal = out.isatty()
        console = Console(
            file=out, width=None if terminal else _WIDTH, no_color=not terminal, highlight=False
        )
        console.print(render(report))


@click.command("report")
@click.option(
    "--since",
    default="7d",
    show_default=True,
    metavar="WHEN",
    help="From: an ISO date or time (UTC without an offset), or a span before now (7d, 24h, 30m, 2w).",
)
@click.option("--until", default=None, metavar="WHEN", help="Up to, not including (default: now).")
@click.option("--bucket", type=click.Choice(tuple(BUCKETS)), default="day", show_default=True)
@click.option("--by", type=click.Choice(DIMENSIONS), default=None, help="A row per value of this dimension.")
@_filter_options
@click.option(
    "--format", "fmt", type=click.Choice(("table", "csv", "json")), default="table", show_default=True
)
@click.option("--output", "-o", metavar="FILE", default=None, help="Write to FILE instead of the terminal.")
@ledger_options
@click.pass_context
def report_cmd(
    ctx: click.Context,
    /,
    since: str,
    until: str | None,
    bucket: str,
    by: str | None,
    fmt: str,
    output: str | None,
    ledger_url: str | None,
    config_path: str | None,
    **only: str | None,
) -> None:
    """Spend over time, per hour or day, optionally per key, user, team, project, customer,
    model or tag: a table with small charts, or CSV or JSON (exact USD). See docs/reports.md."""
    clock: Clock = command_clock() or SystemClock()
    width = BUCKETS[bucket]
    start, end = _span(since, until, width, clock.now())
    filters = {name.removeprefix("only_"): value for name, value in only.items() if value is not None}
    with opened_ledger(ledger_url, config_path) as ledger:
        try:
            report = _read(ledger, start, end, width, by, filters)
        except ValueError as exc:  # too many buckets for the span
            _fail(str(exc))
    with _output(output) as out:
        _write(report, fmt, out)
