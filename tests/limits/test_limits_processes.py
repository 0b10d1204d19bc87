"""Rate limits enforced across processes on one SQLite file, in real time.

This is the only test of rate limits that runs on the system clock (every other one injects
a ``ManualClock``): 4 processes of 3 threads reserve and settle against one file for a few
seconds, as fast as the limits let them, and report when each admission happened (the
ledger's own ``reserved_at``, the instant its window was counted at).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.workers import collect
from spendgate.budgets import EPOCH, Attributes
from spendgate.ledger import Reservation, open_ledger
from spendgate.limits import Demand, Limit
from spendgate.money import Money

PROCESSES = 4
THREADS = 3
SECONDS = 4.6  # two windows and a bit: each key's first two periods lie inside the run
MAX_ATTEMPTS = 2000  # per thread: a refused thread sleeps 5-20 ms, so about 600 at most
PER = timedelta(seconds=2)
REQUESTS = 10  # "calls": 10 requests per 2 s
TOKENS = 600  # every key: 600 tokens per 2 s
LIMITS = [
    {"id": "rps", "selector": {"key": "calls"}, "requests": REQUESTS, "per": "2s"},
    {"id": "tps", "selector": {"key": "*"}, "tokens": TOKENS, "per": "2s"},
]
# key -> (the worst case reserved, what the settle reports as used). "calls" is bound by the
# requests limit (10 x 10 tokens: far below 600), "tokens" by the tokens limit, which gets back
# the 4 unused output tokens of every settle.
WORK = {
    "calls": (Demand(input_tokens=5, output_tokens=5), Demand(input_tokens=5, output_tokens=3)),
    "tokens": (Demand(input_tokens=10, output_tokens=10), Demand(input_tokens=10, output_tokens=6)),
}

ctx = mp.get_context("spawn")


def hammer(url: str, proc: int, go: Any, out: Any) -> None:
    """Child: ``THREADS`` threads reserve and settle until the run's end; reports every
    admission as (key, reserved_at in µs, tokens used) and the wall time it stopped at."""
    ledger = open_ledger(url, busy_timeout=30)
    ledger.limits()  # connect and load the limits before the start
    out.put(("ready", proc, None))
    if not go.wait(60):
        return
    stop = time.time() + SECONDS
    admitted: list[tuple[str, int, int]] = []
    refused: list[str] = []
    lock = threading.Lock()

    def body(thread: int) -> None:
        key = "calls" if (proc + thread) % 2 == 0 else "tokens"
        attrs, (demand, used) = Attributes(key=key), WORK[key]
        for attempt in range(MAX_ATTEMPTS):
            if time.time() >= stop:
                return
            request_id = f"p{proc}-t{thread}-{attempt}"
            result = ledger.reserve(request_id, attrs, Money(0), 60, demand=demand)
            if isinstance(result, Reservation):
                ledger.settle(request_id, Money(0), used=used)
                when = (result.reserved_at - EPOCH) // timedelta(microseconds=1)
                with lock:
                    admitted.append((key, when, used.input_tokens + used.output_tokens))
                continue
            with lock:
                refused.append(type(result).__name__)
            # Poll: retry_after is when the oldest bucket leaves, but a settle may free room first.
            wait = 0.02 if result.retry_after is None else min(result.retry_after, 0.02)
            time.sleep(max(wait, 0.005) * (0.5 + random.random() / 2))

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 60)
    out.put(("done", proc, (admitted, refused, stop)))
    ledger.close()


def most_in_any_span(times_and_weights: list[tuple[int, int]], span_us: int) -> int:
    """The most weight any half-open span ``[t, t + span)`` holds (a span that holds the most
    can always be moved to begin at an admission)."""
    ordered = sorted(times_and_weights)
    most, total, first = 0, 0, 0
    for when, weight in ordered:
        total += weight
        while ordered[first][0] <= when - span_us:
            total -= ordered[first][1]
            first += 1
        most = max(most, total)
    return most


@pytest.mark.slow
def test_processes_never_admit_more_than_a_window_holds(tmp_path: Path, processes: list[Any]) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    parent = open_ledger(url)
    for config in LIMITS:
        parent.put_limit(Limit.from_config(config))
    go, out = ctx.Event(), ctx.Queue()
    for proc in range(PROCESSES):
        child = ctx.Process(target=hammer, args=(url, proc, go, out), daemon=True)
        child.start()
        processes.append(child)
    deadline = time.monotonic() + 120
    collect(out, "ready", PROCESSES, deadline)
    go.set()
    reports = collect(out, "done", PROCESSES, deadline)

    admitted = [each for report in reports.values() for each in report[0]]
    refused = [each for report in reports.values() for each in report[1]]
    stop_us = int(min(report[2] for report in reports.values()) * 1e6)
    assert refused and set(refused) == {"LimitRefusal"}  # the limits were reached, and only they refused
    per_us = PER // timedelta(microseconds=1)
    for key, amount, weight in (
        ("calls", REQUESTS, "requests"),
        ("calls", TOKENS, "tokens"),
        ("tokens", TOKENS, "tokens"),
    ):
        mine = [(when, 1 if weight == "requests" else used) for k, when, used in admitted if k == key]
        # No span of `per` ever holds more than the amount.
        assert most_in_any_span(mine, per_us) <= amount, (key, weight)
    for key, amount, weight in (("calls", REQUESTS, "requests"), ("tokens", TOKENS, "tokens")):
        mine = [(when, 1 if weight == "requests" else used) for k, when, used in admitted if k == key]
        # And the limit was used: at least 90% of the amount per period, over the whole periods
        # from the first admission to the end of the run (the window design promises 95%).
        start = min(when for when, _ in mine)
        periods = (stop_us - start) // per_us
        assert periods >= 2, "the run was too short (a loaded machine?)"
        used = sum(w for when, w in mine if when < start + periods * per_us)
        assert used >= 0.9 * amount * periods, (key, used, periods)
    # The file agrees: every admission is one settled request, and nothing is left in flight.
    logged = parent.query_requests(limit=100_000)
    assert len(logged) == len(admitted) and {r.status for r in logged} == {"ok"}
    assert parent.open_reservations() == 0  # type: ignore[attr-defined]
    parent.close()
