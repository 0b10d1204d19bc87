"""Ledger throughput: reserve+settle cycles per second and the latency of one cycle.

    .venv/bin/python bench/ledger.py --seconds 3

    .venv/bin/python bench/ledger.py --backends postgresql,redis,redis+pg

Cases: memory, SQLite, PostgreSQL (``pg-async``: with ``synchronous_commit=off``) and Redis (beside a SQLite or, as ``redis+pg``, a
PostgreSQL durable store), from 1 process and from N processes (multiprocessing, spawn).
Every cycle reserves against two budgets (a global monthly one and a per-user daily one
over 10 users) and settles for less than the estimate, so both the admission check and the
threshold check run. memory "from N processes" is N independent in-process ledgers (memory
is not shared between processes); the others from N processes share one ledger (a file, a
schema, a key prefix). Each case runs for ``--seconds``.

The servers' floor, measured in the same run (``--reference``): N processes doing two
round trips per cycle that do nothing (PostgreSQL ``SELECT 1``, Redis ``PING``), the most
any client of that server could do here. The servers are the test suite's
(``SPENDGATE_TEST_POSTGRES``, ``SPENDGATE_TEST_REDIS``), each case in a schema or key prefix
of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from spendgate.budgets import Attributes, Budget
from spendgate.ledger import Ledger, open_ledger
from spendgate.money import Money
from spendgate.testing.servers import (
    drop_postgres_schema,
    drop_redis_prefix,
    postgres_test_url,
    redis_test_url,
    with_query,
)

GOALS: dict[tuple[str, str], tuple[str, str]] = {
    # (backend, "1" | "N") -> (throughput goal, p99 goal)
    ("memory", "1"): (">= 100,000/s", ""),
    ("sqlite", "N"): (">= 5,000/s", "< 2,000 µs"),
    ("postgresql", "N"): (">= 2,000/s", "< 5,000 µs"),
    ("pg-async", "N"): (">= 2,000/s", "< 5,000 µs"),
    ("redis", "N"): (">= 10,000/s", "< 5,000 µs"),
    ("redis+pg", "N"): (">= 10,000/s", "< 5,000 µs"),
}
MAX_SAMPLES = 200_000  # latencies kept per worker (every k-th cycle beyond that)


def budgets() -> list[Budget]:
    return [
        Budget.from_config({"id": "global", "limit": "1000000", "window": "month"}),
        Budget.from_config({"id": "per-user", "selector": {"user": "*"}, "limit": "100000", "window": "day"}),
    ]


@dataclass
class Result:
    cycles: int
    seconds: float
    latencies_ns: list[int]


def run_cycles(ledger: Ledger, seconds: float, tag: str) -> Result:
    users = [Attributes(user=f"user-{i}", model="gpt-4o") for i in range(10)]
    estimate, actual = Money.usd("0.0125"), Money.usd("0.004")
    lease = timedelta(seconds=60)
    samples = array("q")
    clock = time.perf_counter_ns
    stride = 1
    count = 0
    start = clock()
    deadline = start + int(seconds * 1e9)
    now = start
    while now < deadline:
        request_id = f"{tag}-{count}"
        t0 = clock()
        result = ledger.reserve(request_id, users[count % 10], estimate, lease)
        if not result.admitted:
            raise RuntimeError(f"bench budget refused a request: {result}")
        ledger.settle(request_id, actual)
        now = clock()
        if count % stride == 0:
            samples.append(now - t0)
            if len(samples) >= MAX_SAMPLES:  # keep memory bounded: halve and sample sparser
                samples = samples[::2]
                stride *= 2
        count += 1
    return Result(count, (now - start) / 1e9, list(samples))


def worker(url: str, seconds: float, tag: str, ready: Any, go: EventType, out: Any) -> None:
    ledger = open_ledger(url, budgets())
    ledger.reserve(f"{tag}-warmup", Attributes(user="warmup"), Money.usd("0.01"), 60)  # connect, load
    ready.put(tag)
    go.wait(30)
    out.put(run_cycles(ledger, seconds, tag))
    ledger.close()


def case_url(backend: str, processes: int, workdir: Path) -> str:
    """A ledger of the case's own: a new file, schema or key prefix."""
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{workdir / f'bench-{processes}.db'}"
    if backend == "postgresql":
        return postgres_test_url("bench")
    if backend == "pg-async":  # synchronous_commit=off: a server crash may lose the last commits
        return with_query(postgres_test_url("bench"), synchronous_commit="off")
    if backend == "redis":
        return redis_test_url(f"sqlite:///{workdir / f'durable-{processes}.db'}", "bench")
    if backend == "redis+pg":
        return redis_test_url(postgres_test_url("bench"), "bench")
    raise SystemExit(f"unknown backend {backend!r}")


def drop_case(url: str) -> None:
    """Drop what a server-backed case left (its schema, its keys, its durable schema)."""
    query = dict(parse_qsl(urlsplit(url).query))
    if url.startswith("postgresql://"):
        drop_postgres_schema(url)
    elif url.startswith("redis://"):
        drop_redis_prefix(url)
        if query.get("durable", "").startswith("postgresql://"):
            drop_postgres_schema(query["durable"])


def run_case(backend: str, processes: int, seconds: float, workdir: Path) -> Result:
    url = case_url(backend, processes, workdir)
    try:
        return _run_case(url, backend, processes, seconds)
    finally:
        drop_case(url)


def _run_case(url: str, backend: str, processes: int, seconds: float) -> Result:
    if processes == 1:
        ledger = open_ledger(url, budgets())
        run_cycles(ledger, min(0.3, seconds), "warm")
        result = run_cycles(ledger, seconds, "p0")
        ledger.close()
        return result
    if backend != "memory":
        open_ledger(url, budgets()).close()  # create the schema once, before the race
    return side_by_side(worker, url, processes, seconds)


def side_by_side(target: Any, first: str, processes: int, seconds: float) -> Result:
    """``processes`` spawned ``target(first, seconds, tag, ready, go, out)`` started together;
    they run side by side for ``seconds`` each, so the throughput is the sum of their rates."""
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=target, args=(first, seconds, f"p{i}", ready, go, out)) for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        go.set()
        results: list[Result] = [out.get(timeout=seconds + 60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    rate_cycles = sum(r.cycles / r.seconds for r in results)
    latencies = [x for r in results for x in r.latencies_ns]
    return Result(int(rate_cycles * seconds), seconds, latencies)


def floor_cycles(server: str, seconds: float, tag: str) -> Result:
    """Two round trips per cycle that do nothing: the most a client of ``server`` gets here."""
    import os as _os

    clock = time.perf_counter_ns
    if server == "postgresql":
        import psycopg

        from spendgate.testing.servers import DEFAULT_TEST_POSTGRES

        conn = psycopg.connect(
            _os.environ.get("SPENDGATE_TEST_POSTGRES", DEFAULT_TEST_POSTGRES), autocommit=True
        )

        def trip() -> None:
            conn.execute("SELECT 1").fetchone()

    else:
        import redis

        from spendgate.testing.servers import DEFAULT_TEST_REDIS

        client = redis.Redis.from_url(_os.environ.get("SPENDGATE_TEST_REDIS", DEFAULT_TEST_REDIS))

        def trip() -> None:
            client.ping()

    samples = array("q")
    count = 0
    start = now = clock()
    deadline = start + int(seconds * 1e9)
    while now < deadline:
        t0 = clock()
        trip()
        trip()
        now = clock()
        if len(samples) < MAX_SAMPLES:
            samples.append(now - t0)
        count += 1
    return Result(count, (now - start) / 1e9, list(samples))


def floor_worker(server: str, seconds: float, tag: str, ready: Any, go: EventType, out: Any) -> None:
    floor_cycles(server, 0.2, tag)  # connect
    ready.put(tag)
    go.wait(30)
    out.put(floor_cycles(server, seconds, tag))


def run_floor(server: str, processes: int, seconds: float) -> Result:
    return side_by_side(floor_worker, server, processes, seconds)


def percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    index = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return sorted_ns[index] / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per case (default 3)")
    parser.add_argument("--processes", type=int, default=4, help="for the multi-process cases (default 4)")
    parser.add_argument(
        "--backends",
        default="memory,sqlite",
        help="comma-separated: memory, sqlite, postgresql, pg-async (synchronous_commit=off), redis, redis+pg "
        "(default memory,sqlite)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also the servers' floor: N processes of two empty round trips per cycle",
    )
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.seconds:g} s per case")
    header = (
        f"{'backend':10} {'procs':>5} {'cycles/s':>10} {'goal':>13} {'p50 µs':>8} {'p99 µs':>8} {'goal':>11} "
        f"{'p99.9 µs':>9} {'max µs':>8}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="spendgate-bench-") as tmp:
        for backend in args.backends.split(","):
            for procs in (1, args.processes):
                result = run_case(backend, procs, args.seconds, Path(tmp))
                lat = sorted(result.latencies_ns)
                goal_rate, goal_p99 = GOALS.get((backend, "1" if procs == 1 else "N"), ("", ""))
                print(
                    f"{backend:10} {procs:>5} {result.cycles / result.seconds:>10,.0f} {goal_rate:>13} "
                    f"{percentile(lat, 0.50):>8.1f} {percentile(lat, 0.99):>8.1f} {goal_p99:>11} "
                    f"{percentile(lat, 0.999):>9.1f} {lat[-1] / 1000 if lat else 0:>8.0f}",
                    flush=True,
                )
        if args.reference:
            for server in ("postgresql", "redis"):
                result = run_floor(server, args.processes, args.seconds)
                lat = sorted(result.latencies_ns)
                name = f"{server[:5]}-floor"
                print(
                    f"{name:10} {args.processes:>5} {result.cycles / result.seconds:>10,.0f} {'':>13} "
                    f"{percentile(lat, 0.50):>8.1f} {percentile(lat, 0.99):>8.1f} {'':>11} "
                    f"{percentile(lat, 0.999):>9.1f} {lat[-1] / 1000 if lat else 0:>8.0f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
