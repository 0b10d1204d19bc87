"""Long requests held at scale: one gateway process holding thousands of slow streams at once.

    .venv/bin/python -m bench.hold [--requests 5000] [--upstream-seconds 10] [--ramp 2]
                                   [--first-byte-ms 1000] [--pool N] [--memory-ledger]
                                   [--skip-direct] [--cap 120]

One fake upstream process (``spendgate.testing``) answers every streamed chat
completion in ``--upstream-seconds``: its headers after ``--first-byte-ms``
(an LLM's time to first token), then its 12 SSE events (``max_tokens: 8``,
``include_usage``) evenly spaced over the rest (the fake's latency and
chunk-delay directives). The same load runs twice in one sitting: straight
at the upstream (the baseline), then through ``spendgate serve`` (one
process; SQLite ledger in a temporary directory, a virtual key, a budget too
big to refuse anything, the fake as its only upstream with the default pool,
or ``max_connections: N`` with ``--pool N``; ``--memory-ledger``: memory://
and no keys).

The load generator is an aiohttp client in a process of its own (its pool
unlimited, its open-file limit raised) that starts ``--requests`` streamed
requests evenly over ``--ramp`` seconds, each on its own connection, and reads
each to its end. A request succeeds when it gets 200 and its stream ends with
``data: [DONE]``. Every request is bounded by ``--cap`` seconds, the run by
the count. The generator reports ten times a second how many requests are
held (headers in, not ended); the gateway's resident memory and open
descriptors are sampled as often. Memory per open request: the median RSS of
the samples taken while the most requests were held (within 2%), minus the
idle gateway's RSS (after a warm-up of 200 quick streams), over the requests
held then. The CPU time each process used during a run is reported too, and
the pool's series from the gateway's /metrics.

Goal: every request succeeds, and the gateway run ends within 10% of the
baseline (the slowest request and the whole run each at most 1.10 x the
direct run's); the exit status is 0 when it is met. Everything goes to
127.0.0.1; every process is stopped at the end, on errors too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._util import ROOT, cpu_seconds, open_fds, python_version, raise_open_files, rss_kb
from bench.gateway import (
    READY_PREFIX,
    UPSTREAM_KEY_ENV,
    BenchError,
    Server,
    child_env,
    create_key,
    free_port,
    percentile,
    spendgate_cli,
    write_yaml,
)
from spendgate.testing.process import FakeUpstream
from spendgate.testing.upstream import FakeApp, Request

MAX_TOKENS = 8
BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Write a long answer, slowly."}],
    "max_tokens": MAX_TOKENS,
    "stream": True,
    "stream_options": {"include_usage": True},
}
WARMUP = 200
SPARE_FILES = 256  # descriptors besides the requests' (ledger, listeners, ...)
OPEN_LINE = "open "  # the load generator's progress line: held now, in flight now
SLACK = 1.10  # the goal: within 10% of the direct run


# --- the load generator (runs as `python -m bench.hold _load SPEC`) ------------------------------


@dataclass
class _Tally:
    sent: int = 0
    opened: int = 0  # requests whose response headers are in
    ended: int = 0
    open_now: int = 0  # headers in, not ended: held by whoever answers for certain
    peak: int = 0
    durations: list[float] = field(default_factory=list)  # send -> last byte, s, successes only
    ttfb: list[float] = field(default_factory=list)  # send -> response headers, s
    errors: dict[str, int] = field(default_factory=dict)


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    raise_open_files()  # one descriptor per held request, here too
    n, ramp = int(spec["requests"]), float(spec["ramp"])
    body = json.dumps(spec["body"]).encode()
    headers = {"content-type": "application/json", **spec["headers"]}
    if spec["key"]:
        headers["authorization"] = f"Bearer {spec['key']}"
    tally = _Tally()
    loop = asyncio.get_running_loop()
    # Unlimited pool (aiohttp's default is 100): every request holds a connection of its own.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=float(spec["cap_s"]))
    t0 = loop.time() + 0.2
    ends: list[float] = []

    def failed(kind: str) -> None:
        tally.errors[kind] = tally.errors.get(kind, 0) + 1

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(max(0.0, t0 + i * ramp / n - loop.time()))
        sent = loop.time()
        tally.sent += 1
        counted = False
        try:
            async with session.post(spec["url"], data=body, headers=headers) as resp:
                tally.ttfb.append(loop.time() - sent)
                tally.opened += 1
                tally.open_now += 1
                counted = True
                tally.peak = max(tally.peak, tally.open_now)
                tail = b""
                async for chunk in resp.content.iter_any():
                    tail = (tail + chunk)[-64:]
                if resp.status != 200:
                    failed(f"status {resp.status}")
                elif b"data: [DONE]" not in tail:
                    failed("stream without [DONE]")
                else:
                    tally.durations.append(loop.time() - sent)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            failed(type(exc).__name__)
        finally:
            if counted:
                tally.open_now -= 1
            tally.ended += 1
            ends.append(loop.time())

    async def report() -> None:
        # For the parent's memory samples: held now (headers in) and in flight (sent, not ended).
        while tally.ended < n:  # bounded: the requests end (each by --cap at the latest)
            print(f"{OPEN_LINE}{tally.open_now} {tally.sent - tally.ended}", flush=True)
            await asyncio.sleep(0.1)

    reporter = asyncio.ensure_future(report())
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(one(i, session) for i in range(n)))
    reporter.cancel()
    return {
        "cpu_s": cpu_seconds(os.getpid()),
        "durations": tally.durations,
        "ttfb": tally.ttfb,
        "errors": tally.errors,
        "peak_open": tally.peak,
        "wall": max(ends) - t0 if ends else 0.0,
    }


def _load_main(spec: dict[str, Any]) -> None:
    try:
        import uvloop

        result = uvloop.run(_load(spec))
    except ImportError:
        result = asyncio.run(_load(spec))
    Path(spec["out"]).write_text(json.dumps(result))


# --- running a load, watching a process ----------------------------------------------------------


@dataclass
class Run:
    name: str
    durations: list[float]
    ttfb: list[float]
    errors: dict[str, int]
    peak_open: int
    wall: float
    rss_idle_kb: int | None = None
    rss_held_kb: int | None = None  # median of the samples taken while the most were held
    held: int = 0  # requests held (headers in, not ended) at those samples
    held_samples: int = 0
    rss_peak_kb: int | None = None
    fds_held: int | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds used during the run, per process

    @property
    def ok(self) -> int:
        return len(self.durations)

    def per_request_kb(self) -> float | None:
        if self.rss_held_kb is None or self.rss_idle_kb is None or not self.held:
            return None
        return (self.rss_held_kb - self.rss_idle_kb) / self.held


def run_load(
    name: str, url: str, key: str | None, spec: dict[str, Any], watch: int | None, others: dict[str, int]
) -> Run:
    """One load generator process; ``watch``: the pid whose memory and descriptors are sampled;
    the CPU time of ``watch`` and ``others`` (name: pid) during the run is reported too."""
    out = Path(tempfile.mkdtemp(prefix="spendgate-hold-load-"))
    spec = {**spec, "url": url, "key": key, "out": str(out / "result.json")}
    pids = {**others, **({"gateway": watch} if watch is not None else {})}
    cpu_before = {who: cpu_seconds(pid) for who, pid in pids.items()}
    with (out / "stderr").open("w") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.hold", "_load", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=ROOT,
            env=child_env(),
        )
    now = [0, 0]  # the load generator's last report: held, in flight
    samples: list[tuple[int, int, int | None]] = []  # (held, rss kB, descriptors)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(OPEN_LINE):
                held, flying = line[len(OPEN_LINE) :].split()
                now[:] = [int(held), int(flying)]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + float(spec["cap_s"]) + float(spec["ramp"]) + 120
    try:
        # Bounded by the deadline; samples 10 times a second.
        while proc.poll() is None and time.monotonic() < deadline:
            if watch is not None:
                rss = rss_kb(watch)
                if rss is not None:
                    samples.append((now[0], rss, open_fds(watch)))
            time.sleep(0.1)
        if proc.poll() is None:
            raise BenchError(f"{name}: the load generator did not finish in time")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        reader.join(10)
    try:
        result_file = out / "result.json"
        if proc.returncode != 0 or not result_file.exists():
            tail = (out / "stderr").read_text()[-2000:]
            raise BenchError(f"{name}: load generator failed ({proc.returncode}): {tail}")
        result = json.loads(result_file.read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    run = Run(
        name, result["durations"], result["ttfb"], result["errors"], result["peak_open"], result["wall"]
    )
    for who, pid in pids.items():
        before, after = cpu_before[who], cpu_seconds(pid)
        if before is not None and after is not None:
            run.cpu_s[who] = after - before
    if result.get("cpu_s") is not None:
        run.cpu_s["load generator"] = result["cpu_s"]
    top = max((s[0] for s in samples), default=0)
    if top:
        # The samples taken while the most requests were held (within 2% of the most).
        near = [s for s in samples if s[0] >= 0.98 * top]
        run.held = int(statistics.median(s[0] for s in near))
        run.rss_held_kb = int(statistics.median(s[1] for s in near))
        run.fds_held = max(s[2] or 0 for s in near)
        run.held_samples = len(near)
    if samples:
        run.rss_peak_kb = max(s[1] for s in samples)
    return run


def stream_timing(upstream_s: float, first_byte_ms: float) -> tuple[int, float]:
    """(events per stream, ms between them) so that a stream lasts ``upstream_s``."""
    plan = FakeApp().dispatch(Request("POST", "/v1/chat/completions", {}, json.dumps(BODY).encode()))
    assert plan.events is not None
    events = len(plan.events)
    return events, max(0.0, (upstream_s * 1000 - first_byte_ms) / (events - 1))


def fake_headers(first_byte_ms: float, gap_ms: float) -> dict[str, str]:
    return {"x-fake-latency-ms": str(round(first_byte_ms)), "x-fake-chunk-delay-ms": str(round(gap_ms))}


def metric_values(url: str, prefix: str) -> dict[str, float]:
    """The /metrics samples whose names start with ``prefix`` (labels dropped, summed)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name.startswith(prefix)
                and "le" not in sample.labels
                and not sample.name.endswith("_created")
            ):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


# --- the gateway -----------------------------------------------------------------------------------


class GatewayServer(Server):
    """``spendgate serve``, counting its "pool full" warnings (its output holds a line per request,
    more than ``Server`` keeps)."""

    pool_warnings = 0

    def seen(self, line: str) -> None:
        if "connections of its pool are in use" in line:
            self.pool_warnings += 1


def start_gateway(
    upstream: FakeUpstream, tmp: Path, pool: int | None, *, memory: bool = False
) -> tuple[GatewayServer, str, str | None]:
    """``memory``: the ``memory://`` ledger and no keys (the SQLite ledger's share, by difference)."""
    from spendgate.ledger import open_ledger

    ledger = "memory://" if memory else f"sqlite:///{tmp / 'gateway.db'}"
    key = None
    if not memory:
        logging.getLogger("spendgate.ledger").setLevel(logging.ERROR)  # "created a new ledger": expected
        open_ledger(ledger).close()  # the admin CLI opens existing ledgers only
        key = create_key(ledger)
    fake: dict[str, Any] = {"kind": "openai", "base_url": upstream.base_url, "api_key_env": UPSTREAM_KEY_ENV}
    if pool is not None:
        fake["max_connections"] = pool
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "ledger": ledger,
        "upstreams": {"fake": fake},
        "routes": [{"model": "*", "upstream": "fake"}],
        "budgets": [{"id": "all", "limit": "1000000"}],
    }
    if key is None:
        config["keys"] = {"required": False}
    path = tmp / "spendgate.yaml"
    write_yaml(path, config)
    server = GatewayServer(
        [*spendgate_cli(), "serve", "--config", str(path)], child_env({UPSTREAM_KEY_ENV: "x"}), READY_PREFIX
    )
    try:
        server.wait_line(30.0)
    except BenchError as exc:
        server.stop()
        raise BenchError(f"spendgate serve: {exc}") from exc
    root = server.ready_line.split(READY_PREFIX, 1)[1].split()[0].rstrip("/")
    return server, root, key


# --- report -------------------------------------------------------------------------------------


def _row(run: Run) -> str:
    d, h = sorted(run.durations), sorted(run.ttfb)
    head = f"{run.name:<12}{run.ok:>7}"
    head += f"{statistics.median(h):>9.2f}{h[-1]:>9.2f}" if h else f"{'-':>9}{'-':>9}"
    if not d:
        return head + f"{'-':>9}{'-':>9}{'-':>9}{'-':>9}{run.wall:>9.2f}{run.peak_open:>11}"
    return (
        head + f"{d[0]:>9.2f}{statistics.median(d):>9.2f}"
        f"{percentile(d, 0.99):>9.2f}{d[-1]:>9.2f}{run.wall:>9.2f}{run.peak_open:>11}"
    )


def machine() -> str:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return (
        f"Python {python_version()}; {os.cpu_count()} CPUs; {mem_kb / 1024 / 1024:.1f} GiB; "
        f"open files soft {soft} / hard {hard}"
    )


def fit(requests: int) -> tuple[int, str]:
    """The request count the open-file limit allows: the gateway holds two descriptors each."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or 2 * requests + SPARE_FILES <= hard:
        return requests, ""
    fitted = (hard - SPARE_FILES) // 2
    return fitted, (
        f"--requests {requests} does not fit: the hard open-file limit is {hard} and the gateway "
        f"holds two descriptors per request (client and upstream); running {fitted}"
    )


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["_load"]:
        _load_main(json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.hold", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000, help="streams held at once")
    p.add_argument("--upstream-seconds", type=float, default=10.0, help="how long the upstream takes")
    p.add_argument("--first-byte-ms", type=float, default=1000.0, help="the upstream's time to headers")
    p.add_argument("--ramp", type=float, default=2.0, help="seconds over which the requests start")
    p.add_argument("--cap", type=float, default=120.0, help="seconds any one request may take")
    p.add_argument(
        "--pool", type=int, default=None, help="upstreams.fake.max_connections (default: its default)"
    )
    p.add_argument("--skip-direct", action="store_true", help="no baseline run")
    p.add_argument(
        "--memory-ledger", action="store_true", help="the gateway on memory:// without keys (not SQLite)"
    )
    args = p.parse_args(argv)
    if args.requests < 1 or args.upstream_seconds <= 0 or args.ramp < 0:
        p.error("--requests >= 1, --upstream-seconds > 0, --ramp >= 0")
    raise_open_files()
    requests, why = fit(args.requests)
    events, gap_ms = stream_timing(args.upstream_seconds, args.first_byte_ms)
    spec: dict[str, Any] = {
        "requests": requests,
        "ramp": args.ramp,
        "cap_s": args.cap,
        "body": BODY,
        "headers": fake_headers(args.first_byte_ms, gap_ms),
    }
    print(machine())
    if why:
        print(why)
    print(
        f"{requests} streamed chat completions started over {args.ramp:g} s; the upstream answers each in "
        f"{args.upstream_seconds:g} s ({args.first_byte_ms:g} ms to headers, then {events} events "
        f"{gap_ms:.0f} ms apart)"
    )
    runs: list[Run] = []
    server: GatewayServer | None = None
    pool_warnings = 0
    with tempfile.TemporaryDirectory(prefix="spendgate-hold-") as tmp, FakeUpstream.start() as upstream:
        fake = {"upstream": upstream.proc.pid}
        try:
            if not args.skip_direct:
                runs.append(
                    run_load("direct", upstream.base_url + "/chat/completions", None, spec, None, fake)
                )
            server, root, key = start_gateway(upstream, Path(tmp), args.pool, memory=args.memory_ledger)
            pid = server.proc.pid
            quick = {**spec, "requests": WARMUP, "ramp": 0.0, "headers": fake_headers(0, 0)}
            warm = run_load("warm-up", root + "/v1/chat/completions", key, quick, None, {})
            if warm.ok != WARMUP:
                raise BenchError(f"warm-up through the gateway failed: {warm.errors}")
            time.sleep(1.0)  # let the warm-up's connections close before the idle sample
            idle = rss_kb(pid)
            gateway = run_load("spendgate", root + "/v1/chat/completions", key, spec, pid, fake)
            gateway.rss_idle_kb = idle
            runs.append(gateway)
            pool_metrics = metric_values(root, "spendgate_upstream_pool")
        finally:
            if server is not None:
                server.stop()
                pool_warnings = server.pool_warnings

    print()
    print(
        f"{'target':<12}{'ok':>7}{'hdrs p50':>9}{'hdrs max':>9}{'min s':>9}{'p50 s':>9}{'p99 s':>9}"
        f"{'max s':>9}{'wall s':>9}{'peak open':>11}"
    )
    for run in runs:
        print(_row(run))
        if run.errors:
            print(f"{'':<12}failed: {run.errors}")
    for run in runs:
        used = ", ".join(f"{who} {sec:.1f}" for who, sec in run.cpu_s.items())
        print(f"CPU seconds during the {run.name} run ({run.wall:.1f} s, {os.cpu_count()} CPUs): {used}")
    per = gateway.per_request_kb()
    print()
    if per is None:
        print("gateway RSS: no sample with requests held")
    else:
        print(
            f"gateway RSS: idle {fmt_mb(gateway.rss_idle_kb)}; {fmt_mb(gateway.rss_held_kb)} holding "
            f"{gateway.held} streams (median of {gateway.held_samples} samples at the most held), "
            f"peak {fmt_mb(gateway.rss_peak_kb)}: {per:.1f} kB per open request; "
            f"{gateway.fds_held} descriptors open"
        )
    print(
        "pool metrics: "
        + (
            ", ".join(f"{k} {v:g}" for k, v in sorted(pool_metrics.items()))
            or "none reported (no request waited)"
        )
    )
    print(f"pool warnings in the gateway's log: {pool_warnings}")
    ok = gateway.ok == requests
    if not args.skip_direct:
        direct = runs[0]
        slowest = max(gateway.durations, default=float("inf")) / max(direct.durations, default=float("nan"))
        whole = gateway.wall / direct.wall
        ok = ok and direct.ok == requests and slowest <= SLACK and whole <= SLACK
        print(
            f"through the gateway against direct: slowest request x{slowest:.3f}, whole run x{whole:.3f} "
            f"(goal: every request succeeds and both at most x{SLACK:.2f}): {'met' if ok else 'NOT met'}"
        )
    return 0 if ok else 1


def fmt_mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MB"


if __name__ == "__main__":
    sys.exit(main())
