"""The issue's independent count through the gateway: 200 concurrent clients against a real
gateway process with ``requests: 10 per 10s`` (100 clients) and ``tokens: 2000 per 10s`` (100 other
clients), for a few windows of real time. The fake upstream process's own record of when each
billed request arrived and what it billed (``/_fake/arrivals``) is the count: no span of ``per``
holds more than the amount, and at least 90% of the amount is used per period over the run.

This is the one test of rate limits where time is not injected: the gateway's ledger runs on the
system clock, the point being the whole thing end to end. (The issue's windows are 10 s and a
minute; 10 s for both keeps the suite's time at about 25 s for three batches of each. At 4 s, two
CPU hogs on this 2-core machine brought the smallest margin down to 9 ms; a bucket of 500 ms
leaves room for the gateway's jitter.) Every loop is bounded: by the run's deadline, by a cap on
each client's attempts, and by an overall timeout.

The clients act as SDKs do: each has its own connection (opened before the start), sends again
at once after an answer, and after a 429 sleeps for the ``retry_after`` the body gives, plus up
to 20 ms (clients are never in step to the microsecond). The gateway is warmed first (tokenizer
loaded, upstream connection open) by a key no limit counts, and the run starts just after a
bucket boundary, so the first batch is admitted as every later one is, at the start of a bucket.
What the upstream sees lags each admission by the gateway's own latency: the sliding window's
margin (a request leaves the window between ``per`` and ``per`` plus a bucket, ``per / 20``,
after it was admitted) is what keeps a span of ``per`` at the upstream within the amount; the
test prints the smallest margin it saw.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from spendgate.limits import BUCKETS
from spendgate.testing.process import FakeUpstream

from .conftest import start_env

PER = 10.0  # seconds (the 10 requests / 10 s): a bucket is 500 ms of margin for the gateway's jitter
REQUESTS = 10
TOKENS = 2000
PERIODS = 2  # the run: this many windows of real time, and a little more
CLIENTS = 100  # per limit: 200 in all
#: How much later than told a client starts, and retries after a 429 (seconds).
SPREAD = 0.02
MAX_ATTEMPTS = 50  # per client: a refused client sleeps until the window has room (~5 are used)
#: The token-limited clients' output cap: the gateway reserves it and the prompt's bound (8
#: tokens), and the fake answers with exactly that cap and a 5-token prompt: 200 reserved,
#: 197 billed. Ten fill 2,000.
OUTPUT = 192
KEYS = {"req": {"user": "req-user"}, "tok": {"user": "tok-user"}, "warm": {"user": "warm-up"}}
LIMITS = [
    {"id": "req", "selector": {"user": "req-user"}, "requests": REQUESTS, "per": f"{PER:g}s"},
    {"id": "tok", "selector": {"user": "tok-user"}, "tokens": TOKENS, "per": f"{PER:g}s"},
]
BODIES = {
    "req": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5},
    "tok": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "max_tokens": OUTPUT},
}
#: One TLS context for all clients (unused on http://, but httpx would build one per client).
TLS = ssl.create_default_context()


async def _client(
    base_url: str,
    secret: str,
    body: dict[str, Any],
    ready: asyncio.Barrier,
    go: asyncio.Event,
    start: list[float],
    tally: dict[str, int],
    rng: random.Random,
) -> None:
    """One client: its own connection, then requests until the deadline."""
    headers = {"authorization": f"Bearer {secret}", "x-fake-output-tokens": str(body["max_tokens"])}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0, verify=TLS) as http:
        assert (await http.get("/healthz")).status_code == 200  # connected before the start
        await ready.wait()
        await go.wait()
        begin, deadline = start
        await asyncio.sleep(max(begin - time.time(), 0) + rng.uniform(0, SPREAD))
        for _ in range(MAX_ATTEMPTS):
            if time.time() >= deadline:
                return
            response = await http.post("/v1/chat/completions", json=body, headers=headers)
            if response.status_code == 200:
                tally["ok"] += 1
                continue
            assert response.status_code == 429, response.text
            tally["refused"] += 1
            retry = response.json()["error"]["limit"]["retry_after"]
            assert retry is not None and 0 < retry <= PER * 2, retry
            await asyncio.sleep(min(retry + rng.uniform(0, SPREAD), max(deadline - time.time(), 0)))


async def _warm_up(base_url: str, secret: str, fake_url: str) -> None:
    """A request of each kind from a key no limit counts: the gateway loads its tokenizer and
    opens its upstream connection now, not while the first batch is admitted; then the fake's
    record starts over."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, verify=TLS) as http:
        for body in BODIES.values():
            response = await http.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
            )
            assert response.status_code == 200, response.text
        assert (await http.post(fake_url + "/_fake/reset")).status_code == 200


async def _run(base_url: str, secrets: dict[str, str], fake_url: str) -> dict[str, dict[str, int]]:
    await _warm_up(base_url, secrets.pop("warm"), fake_url)
    tallies = {name: {"ok": 0, "refused": 0} for name in secrets}
    start: list[float] = []
    ready, go = asyncio.Barrier(len(secrets) * CLIENTS + 1), asyncio.Event()
    async with asyncio.timeout(PERIODS * PER + 30):
        tasks = [
            asyncio.ensure_future(
                _client(
                    base_url, secrets[name], BODIES[name], ready, go, start, tallies[name], random.Random(i)
                )
            )
            for name in secrets
            for i in range(CLIENTS)
        ]
        await ready.wait()  # every client connected
        # Just after a bucket boundary (buckets are per/20 wide, counted from the Unix epoch).
        width = PER / BUCKETS
        begin = time.time() + 0.1
        begin += width - begin % width + 0.002
        # Batches come every per plus a bucket: the deadline lets PERIODS + 1 of them in.
        start.extend((begin, begin + PERIODS * (PER + width) + 0.3))
        go.set()
        await asyncio.gather(*tasks)
    return tallies


def most_in_a_span(times: Sequence[float], amounts: Sequence[int], per: float) -> int:
    """The most any half-open span ``[t, t + per)`` holds (the worst spans start at an arrival)."""
    sums = [0]
    for amount in amounts:
        sums.append(sums[-1] + amount)
    worst = 0
    for i, start in enumerate(times):
        end = bisect.bisect_left(times, start + per)
        worst = max(worst, sums[end] - sums[i])
    return worst


def margin(times: Sequence[float], amounts: Sequence[int], amount: int, per: float) -> float:
    """The least time by which a span over ``amount`` was longer than ``per`` (negative: a
    span of ``per`` held more than the amount)."""
    least = math.inf
    for j in range(len(times)):
        held = 0
        for i in range(j, -1, -1):
            held += amounts[i]
            if held > amount:
                least = min(least, times[j] - times[i] - per)
                break
    return least


def steady_rate(times: Sequence[float], amounts: Sequence[int], per: float, amount: int) -> float:
    """Use per ``per`` over the amount, from the first arrival to the last batch's first (that
    batch left out): the rate a run this long settles at."""
    last = times[-1]
    cut = next(t for t in times if t > last - per / 2)  # the first arrival of the last batch
    held = sum(a for t, a in zip(times, amounts, strict=True) if t < cut)
    return held / ((cut - times[0]) / per) / amount


def used_per_period(times: Sequence[float], amounts: Sequence[int], per: float, periods: int) -> float:
    """What the ``periods`` whole periods from the first arrival hold, on average, over the amount."""
    start = times[0]
    held = sum(a for t, a in zip(times, amounts, strict=True) if t < start + periods * per)
    return held / periods


def test_200_clients_never_exceed_the_limits_and_use_most_of_them(tmp_path: Path, up: FakeUpstream) -> None:
    gateway, keys = start_env(tmp_path, up, keys=KEYS, limits=LIMITS)
    try:
        tallies = asyncio.run(_run(gateway.url, {name: keys[name][1] for name in KEYS}, up.root_url))
        arrivals = httpx.get(up.root_url + "/_fake/arrivals", timeout=10).json()["arrivals"]
    finally:
        gateway.stop()

    figures = {}
    for name, model, amount, unit in (
        ("req", "gpt-4o-mini", REQUESTS, "requests"),
        ("tok", "gpt-4o", TOKENS, "tokens"),
    ):
        rows = sorted((t, p + o) for t, m, p, o in arrivals if m == model)
        times = [t for t, _ in rows]
        amounts = [1 if unit == "requests" else used for _, used in rows]
        assert len(rows) == tallies[name]["ok"], (name, len(rows), tallies[name])
        worst = most_in_a_span(times, amounts, PER)
        periods = math.floor((times[-1] - times[0]) / PER)
        assert periods >= PERIODS, (name, times[0], times[-1])
        share = used_per_period(times, amounts, PER, periods) / amount
        rate = steady_rate(times, amounts, PER, amount)
        figures[name] = {
            "admitted": tallies[name]["ok"],
            "refused": tallies[name]["refused"],
            "most_in_a_span": worst,
            "used_per_period": round(share, 3),
            "steady_rate": round(rate, 3),
            "least_margin_s": round(margin(times, amounts, amount, PER), 3),
        }
        assert worst <= amount, f"{name}: a span of {PER} s held {worst} {unit}, over {amount}: {figures}"
        assert share >= 0.9, f"{name}: {share:.0%} of {amount} {unit} used per period: {figures}"
    print(f"\nlimits count: {figures}")
