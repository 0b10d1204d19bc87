"""Ledger throughput: reserve+settle cycles per second and the latency of one cycle.

    .venv/bin/python bench/ledger.py --seconds 3

Cases: memory and SQLite, from 1 process and from N processes (multiprocessing,
spawn). Every cycle reserves against two budgets (a global monthly one and a
per-user daily one over 10 users) and settles for less than the estimate, so
both the admission check and the threshold check run. memory "from N processes"
is N independent in-process ledgers (memory is not shared between processes);
SQLite from N processes is one shared file. Each case runs for ``--seconds``.
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

from spendgate.budgets import Attributes, Budget
from spendgate.ledger import Ledger, open_ledger
from spendgate.money import Money

GOALS: dict[tuple[str, str], tuple[str, str]] = {
    # (backend, "1" | "N") -> (throughput goal, p99 goal)
    ("memory", "1"): (">= 100,000/s", ""),
    ("sqlite", "N"): (">= 5,000/s", "< 2,000 µs"),
}
MAX_SAMPLES = 200_000  # latencies kept per worker (every k-th cycle beyond that)


def budgets() -> list[Budget]:
    return [
        Budget.from_config({"id": "global", "limit": "1000000000", "window": "month"}),
        Budget.from_config(
            {"id": "per-user", "selector": {"user": "*"}, "limit": "100000000", "window": "day"}
        ),
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


def run_case(backend: str, processes: int, seconds: float, workdir: Path) -> Result:
    url = "memory://" if backend == "memory" else f"sqlite:///{workdir / f'bench-{processes}.db'}"
    if processes == 1:
        ledger = open_ledger(url, budgets())
        run_cycles(ledger, min(0.3, seconds), "warm")
        result = run_cycles(ledger, seconds, "p0")
        ledger.close()
        return result
    ctx = mp.get_context("spawn")
    if backend == "sqlite":
        open_ledger(url, budgets()).close()  # create the schema once, before the race
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=worker, args=(url, seconds, f"p{i}", ready, go, out)) for i in range(processes)
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
    # They ran side by side for ~seconds each: throughput is the sum of their rates.
    rate_cycles = sum(r.cycles / r.seconds for r in results)
    latencies = [x for r in results for x in r.latencies_ns]
    return Result(int(rate_cycles * seconds), seconds, latencies)


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
    parser.add_argument("--backends", default="memory,sqlite", help="comma-separated (default memory,sqlite)")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.seconds:g} s per case")
    header = (
        f"{'backend':8} {'procs':>5} {'cycles/s':>10} {'goal':>13} {'p50 µs':>8} {'p99 µs':>8} {'goal':>11} "
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
                    f"{backend:8} {procs:>5} {result.cycles / result.seconds:>10,.0f} {goal_rate:>13} "
                    f"{percentile(lat, 0.50):>8.1f} {percentile(lat, 0.99):>8.1f} {goal_p99:>11} "
                    f"{percentile(lat, 0.999):>9.1f} {lat[-1] / 1000 if lat else 0:>8.0f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
