"""How long ``usage_timeseries`` takes on a SQLite ledger holding 100,000 logged requests.

    .venv/bin/python bench/timeseries.py
    .venv/bin/python bench/timeseries.py --backend postgresql   # the test server, a schema of its own

The ledger is filled through the real code: ``RequestArchive.archive`` (what a Redis ledger's
drainer writes; the same rows ``settle`` leaves) with requests spread evenly over 30 days (the
default retention), 50 users in 5 teams, 4 models, a third of them tagged, each with input,
output and cache tokens. Each query runs ``--runs`` times on a warm file; the table shows the
median and the slowest. Goal: every query under 300 ms (a dashboard page).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spendgate.budgets import Attributes
from spendgate.clock import ManualClock
from spendgate.ledger import ArchivedRequest, Ledger, RequestArchive, RequestRecord, UsagePoint, open_ledger
from spendgate.money import Money
from spendgate.testing.servers import drop_postgres_schema, postgres_test_url

END = datetime(2026, 3, 31, tzinfo=UTC)
SPAN = timedelta(days=30)
GOAL_MS = 300.0
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "o3")


def fill(ledger: Ledger, count: int) -> None:
    assert isinstance(ledger, RequestArchive)
    step = SPAN / count
    batch: list[ArchivedRequest] = []
    for i in range(count):
        started = END - SPAN + i * step
        user = f"user-{i % 50:02d}"
        attrs = Attributes(
            key=f"vk-{i % 20}",
            user=user,
            team=f"team-{i % 5}",
            project=f"project-{i % 3}",
            model=MODELS[i % len(MODELS)],
            tags=frozenset({"batch"} if i % 3 == 0 else ()),
        )
        cost = Money(1_000 + (i * 7919) % 5_000_000)
        usage = {"input_tokens": 500 + i % 1000, "output_tokens": 50 + i % 300, "cache_read_tokens": i % 200}
        record = RequestRecord(
            f"req-{i:06d}", attrs, cost, started, started + timedelta(seconds=2), usage=usage
        )
        batch.append(ArchivedRequest(record, "settled", Money(cost.nanos * 2), ()))
        if len(batch) == 5_000:
            ledger.archive(batch)
            batch = []
    if batch:
        ledger.archive(batch)


def timed(query: Callable[[], list[UsagePoint]], runs: int) -> tuple[float, float, int]:
    query()  # warm
    samples = []
    points = 0
    for _ in range(runs):
        start = time.perf_counter()
        points = len(query())
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples), points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    hour, day = timedelta(hours=1), timedelta(days=1)
    start = END - SPAN
    with tempfile.TemporaryDirectory() as tmp:
        url = (
            f"sqlite:///{Path(tmp) / 'spend.db'}" if args.backend == "sqlite" else postgres_test_url("bench")
        )
        ledger = open_ledger(url, clock=ManualClock(END))
        began = time.perf_counter()
        fill(ledger, args.requests)
        print(f"filled {args.requests:,} logged requests in {time.perf_counter() - began:.1f} s")
        cases: list[tuple[str, Callable[[], list[UsagePoint]]]] = [
            ("30 days, hourly", lambda: ledger.usage_timeseries(start, END, hour)),
            ("30 days, daily by user", lambda: ledger.usage_timeseries(start, END, day, by="user")),
            ("30 days, hourly by model", lambda: ledger.usage_timeseries(start, END, hour, by="model")),
            ("30 days, hourly by user", lambda: ledger.usage_timeseries(start, END, hour, by="user")),
            ("30 days, daily by tag", lambda: ledger.usage_timeseries(start, END, day, by="tag")),
            ("30 days, hourly, user=user-07", lambda: ledger.usage_timeseries(start, END, hour, user="user-07")),
            ("30 days, daily by model, tag=batch", lambda: ledger.usage_timeseries(start, END, day, by="model", tag="batch")),
            ("24 hours, hourly by user", lambda: ledger.usage_timeseries(END - day, END, hour, by="user")),
        ]  # fmt: skip
        print(
            f"{args.backend}, python {sys.version.split()[0]}, {args.runs} runs each, goal < {GOAL_MS:.0f} ms"
        )
        print(f"{'query':38} {'points':>7} {'median ms':>10} {'max ms':>8}")
        worst = 0.0
        for name, query in cases:
            median, slowest, points = timed(query, args.runs)
            worst = max(worst, slowest)
            print(f"{name:38} {points:>7,} {median:>10.1f} {slowest:>8.1f}")
        ledger.close()
        if args.backend == "postgresql":
            drop_postgres_schema(url)
    print(f"slowest of all: {worst:.1f} ms ({'meets' if worst < GOAL_MS else 'MISSES'} the goal)")
    return 0 if worst < GOAL_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
