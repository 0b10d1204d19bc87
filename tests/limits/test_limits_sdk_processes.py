"""The issue's independent count through the SDK: 4 processes of 3 threads, each thread a
``spendgate.wrap``'d real ``openai.OpenAI`` client on one shared SQLite ledger file, against the
fake upstream process, with ``requests: 10 per 10s`` on one user (6 threads) and ``tokens: 2000
per 10s`` on another (6 threads), for two windows of real time and a little more. The fake
upstream's own record of when each billed request arrived and what it billed
(``/_fake/arrivals``) is the count: no span of ``per`` holds more than the amount, and at least
90% of the amount is used per period over the run.

A real-time test: the ledger runs on the system clock, shared by the processes through the file,
as in ``tests/gateway/test_limits_count.py`` (whose span arithmetic this reuses); the run takes
about 25 s. The bucket of a 10 s window (500 ms) is the margin for the SDK's own latency between
an admission and its arrival at the upstream on a busy 2-core machine. Every client is warmed
first (tokenizer loaded, connection open) by a user no limit counts, and the run starts just
after a bucket boundary, so the first batch is admitted as every later one is. A refused thread
sleeps the error's ``retry_after`` plus up to 20 ms and tries again; every loop is bounded by
the run's deadline and a cap on attempts, and the parent by an overall timeout.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import spendgate
from ledger.workers import collect
from spendgate.limits import BUCKETS
from spendgate.testing.process import FakeUpstream

PROCESSES = 4
THREADS = 3
PER = 10.0  # seconds: a bucket (per / 20) is 500 ms of margin
REQUESTS = 10
TOKENS = 2000
PERIODS = 2  # the run: this many windows of real time, and a little more
#: How much later than told a thread starts, and retries after a refusal (seconds).
SPREAD = 0.02
MAX_ATTEMPTS = 50  # per thread: a refused thread sleeps until the window has room (~5 are used)
#: The token-limited threads' output cap: the guard reserves it plus the prompt's bound, and the
#: fake answers with exactly that cap (``x-fake-output-tokens``) and a 5-token prompt.
OUTPUT = 192
LIMITS = [
    {"id": "req", "selector": {"user": "req-user"}, "requests": REQUESTS, "per": f"{PER:g}s"},
    {"id": "tok", "selector": {"user": "tok-user"}, "tokens": TOKENS, "per": f"{PER:g}s"},
]
#: name -> (user, model, output cap)
WORK = {"req": ("req-user", "gpt-4o-mini", 5), "tok": ("tok-user", "gpt-4o", OUTPUT)}

ctx = mp.get_context("spawn")


def _call(client: openai.OpenAI, model: str, output: int) -> None:
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=output,
        extra_headers={"x-fake-output-tokens": str(output)},
    )


def worker(ledger_url: str, base_url: str, proc: int, go: Any, times: Any, out: Any) -> None:
    """Child: ``THREADS`` wrapped clients, warmed, then calls until the deadline; reports
    (name, admitted, refused, unexpected errors) per thread."""
    clients: list[openai.OpenAI] = []
    for _ in range(THREADS):
        raw = openai.OpenAI(base_url=base_url, api_key="sk-fake", max_retries=0, timeout=30)
        client = spendgate.wrap(raw, ledger=ledger_url, limits=LIMITS, on_exceed="raise")
        with spendgate.attribute(user="warm-up"):  # no limit counts this user
            for _, model, output in WORK.values():
                _call(client, model, output)
        clients.append(client)
    out.put(("ready", proc, None))
    if not go.wait(120):
        return
    begin, deadline = times[0], times[1]
    reports: list[tuple[str, int, int, list[str]]] = []
    lock = threading.Lock()

    def body(thread: int) -> None:
        name = "req" if (proc * THREADS + thread) % 2 == 0 else "tok"
        user, model, output = WORK[name]
        rng = random.Random(proc * 100 + thread)
        ok = refused = 0
        errors: list[str] = []
        time.sleep(max(begin - time.time(), 0) + rng.uniform(0, SPREAD))
        with spendgate.attribute(user=user):
            for _ in range(MAX_ATTEMPTS):
                if time.time() >= deadline:
                    break
                try:
                    _call(clients[thread], model, output)
                except spendgate.RateLimitExceededError as err:
                    refused += 1
                    if err.retry_after is None or not 0 < err.retry_after <= 2 * PER:
                        errors.append(f"retry_after {err.retry_after!r}: {err}")
                        break
                    time.sleep(min(err.retry_after + rng.uniform(0, SPREAD), max(deadline - time.time(), 0)))
                except Exception as err:  # reported to the parent, which fails the test
                    errors.append(repr(err))
                    break
                else:
                    ok += 1
        with lock:
            reports.append((name, ok, refused, errors))

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline - time.time() + 60)
    out.put(("done", proc, reports))


@pytest.mark.slow
def test_sdk_processes_never_exceed_the_limits_and_use_most_of_them(
    tmp_path: Path, up: FakeUpstream, processes: list[Any]
) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    spendgate.wrap(openai.OpenAI(base_url=up.base_url, api_key="sk-fake"), ledger=url, limits=LIMITS)
    go, out, times = ctx.Event(), ctx.Queue(), ctx.Array("d", 2)
    for proc in range(PROCESSES):
        child = ctx.Process(target=worker, args=(url, up.base_url, proc, go, times, out), daemon=True)
        child.start()
        processes.append(child)
    overall = time.monotonic() + 120
    # Imported here, while the children start: they import this module, and need none of it.
    from gateway.test_limits_count import margin, most_in_a_span, used_per_period

    collect(out, "ready", PROCESSES, overall)
    up.reset()  # the warm-up's answers are not the run's
    # Just after a bucket boundary (buckets are per/20 wide, counted from the Unix epoch).
    width = PER / BUCKETS
    begin = time.time() + 0.3
    begin += width - begin % width + 0.002
    # Batches come every per plus a bucket: the deadline lets PERIODS + 1 of them in.
    times[0], times[1] = begin, begin + PERIODS * (PER + width) + 0.3
    go.set()
    reports = collect(out, "done", PROCESSES, overall)
    arrivals = httpx.get(up.root_url + "/_fake/arrivals", timeout=10).json()["arrivals"]

    threads = [each for report in reports.values() for each in report]
    assert len(threads) == PROCESSES * THREADS
    errors = [error for *_, errs in threads for error in errs]
    assert not errors, errors
    figures = {}
    for name, amount, unit in (("req", REQUESTS, "requests"), ("tok", TOKENS, "tokens")):
        _, model, _ = WORK[name]
        ok = sum(each[1] for each in threads if each[0] == name)
        refused = sum(each[2] for each in threads if each[0] == name)
        rows = sorted((t, p + o) for t, m, p, o in arrivals if m == model)
        times_ = [t for t, _ in rows]
        amounts = [1 if unit == "requests" else used for _, used in rows]
        assert len(rows) == ok, (name, len(rows), ok)
        assert refused, f"{name}: the limit was never reached"
        worst = most_in_a_span(times_, amounts, PER)
        periods = math.floor((times_[-1] - times_[0]) / PER)
        assert periods >= PERIODS, (name, times_[0], times_[-1])
        share = used_per_period(times_, amounts, PER, periods) / amount
        figures[name] = {
            "admitted": ok,
            "refused": refused,
            "most_in_a_span": worst,
            "used_per_period": round(share, 3),
            "least_margin_s": round(margin(times_, amounts, amount, PER), 3),
        }
        assert worst <= amount, f"{name}: a span of {PER} s held {worst} {unit}, over {amount}: {figures}"
        assert share >= 0.9, f"{name}: {share:.0%} of {amount} {unit} used per period: {figures}"
    print(f"\nSDK limits count: {figures}")
