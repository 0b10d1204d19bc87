"""What the gateway adds over calling the fake upstream directly, next to LiteLLM's proxy.

    .venv/bin/python -m bench.gateway [--seconds 5] [--requests 2000] [--skip-litellm] [--skip-spendgate]
                                      [--skip-bare] [--bare-loop auto|asyncio|uvloop] [--workers N] [--stream]
                                      [--ledgers sqlite,postgresql,redis --instances 1,3]

One fake upstream process, measured in the same run as the proxies in front of
it: first alone, then through the bare proxy, then through ``spendgate serve``
(SQLite ledger in a temporary directory, a virtual key, a budget too big to
refuse anything), then through LiteLLM's proxy (installed in its own virtual
environment under .bench-venv/, never a dependency of spendgate; one worker, no
database).

The bare proxy (``python -m bench.bare_proxy``) is the reference for what any
Python proxy reaches on this machine: the thinnest forwarder built from the
gateway's own parts (uvicorn with httptools, a raw ASGI callable, one shared
aiohttp session with an unlimited pool), posting each body to the upstream and
returning status, body and content-type; no auth, no JSON parsing, no ledger.
Its event loop is the gateway's rule, uvloop when importable, else asyncio
(``--bare-loop`` to force one); the report names the loop it ran on.

Each target gets a non-streaming ``POST /v1/chat/completions`` with
``max_tokens: 16``:

- concurrency 1: ``--requests`` sequential requests after a warm-up, p50/p99;
- concurrency 32: keep-alive connections for ``--seconds``, requests/s, p50/p99.

The load generator is a lean asyncio client over raw keep-alive HTTP/1.1
connections (prebuilt request bytes), run in a process of its own. Also
measured: the import time of each package (best of 5), the time from process
start to ready (best of ``--starts``) and the resident memory of the proxy's
processes after the load.

Scale-out (opt-in, ``--ledgers`` and ``--instances``): for each ledger backend and instance
count, that many separate ``spendgate serve`` processes (a config file and a port each, one
ledger URL: a SQLite file, a PostgreSQL schema, or a Redis key prefix beside a PostgreSQL
durable store, each new for the case and dropped after it; one virtual key, the same budget)
in front of the same upstream; the concurrency-32 load spread round-robin over them
(connection i to instance i mod N): requests/s and p50/p99, against the upstream alone (also
measured again after the last case) and the bare proxy of the same run. Also reported: how the
timed requests split over the instances, the answers by status, and the CPU time the instances,
the upstream and the load generator used during the load.

Goals for spendgate: at most 1 ms added at p50 at concurrency 1; at
concurrency 32 at least 30% of the upstream's own requests/s; ``import
spendgate`` under 0.3 s; ready in under 2 s; under 150 MB resident. Its
requests/s are also given as a share of the bare proxy's (no goal: context).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench._util import ROOT, cpu_seconds, python_version, side_venv
from spendgate.testing.process import FakeUpstream

LITELLM_VERSION = "1.108.7"  # the newest whose [proxy] extra resolves on this machine's index
BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Say something short."}],
    "max_tokens": 16,
}
CONCURRENCY = 32
LATENCY_WARMUP = 200
THROUGHPUT_WARMUP_S = 1.0
LATENCY_CAP_S = 120.0  # a slow proxy does fewer than --requests rather than run for ever
READY_PREFIX = "spendgate gateway ready on "
UPSTREAM_KEY_ENV = "SPENDGATE_BENCH_UPSTREAM_KEY"
GOALS = {"added_p50_ms": 1.0, "share": 30.0, "import_s": 0.3, "ready_s": 2.0, "rss_mb": 150.0}


class BenchError(RuntimeError):
    """A target could not be started or measured."""


# --- the load generator (runs as `python -m bench.gateway _load SPEC`) ----------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """Send one prebuilt request, read the whole response; (status, server closes)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            await reader.readexactly(size + 2)
    elif length >= 0:
        await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, close


class _Conn:
    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self) -> int:
        """Status of one request; 0 when the connection failed (it is reopened next time)."""
        try:
            if self.reader is None or self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            status, close = await _exchange(self.reader, self.writer, self.request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return 0
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _request_bytes(url: str, key: str | None, payload: dict[str, Any]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps(payload, separators=(",", ":")).encode()
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: application/json",
        f"Content-Length: {len(body)}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _latency(
    url: str, key: str | None, requests: int, cap_s: float, payload: dict[str, Any]
) -> dict[str, Any]:
    """Sequential requests on one keep-alive connection: latencies in ms."""
    host, port, request = _request_bytes(url, key, payload)
    conn = _Conn(host, port, request)
    samples: list[float] = []
    errors = 0
    try:
        async with asyncio.timeout(cap_s + 60):
            for _ in range(LATENCY_WARMUP):
                errors += await conn.call() != 200
            errors = 0
            deadline = time.perf_counter() + cap_s
            for _ in range(requests):
                start = time.perf_counter_ns()
                status = await conn.call()
                samples.append((time.perf_counter_ns() - start) / 1e6)
                errors += status != 200
                if time.perf_counter() >= deadline:
                    break
    finally:
        conn.close()
    return {"samples": samples, "errors": errors}


async def _throughput(
    urls: Sequence[str], key: str | None, concurrency: int, seconds: float, payload: dict[str, Any]
) -> dict[str, Any]:
    """``concurrency`` keep-alive connections for ``seconds``: requests/s and latencies in ms.

    With several ``urls`` (instances of one gateway) connection ``i`` goes to ``urls[i % n]``:
    the load spread round-robin over them. Also returned: how many answers of each status, and
    how many timed requests each url served."""
    targets = [_request_bytes(url, key, payload) for url in urls]
    conns = [_Conn(*targets[i % len(targets)]) for i in range(concurrency)]
    samples: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    per_target = [0] * len(targets)
    max_per_conn = 10_000_000  # a bound on count too, whatever the clock does

    async def worker(index: int, conn: _Conn, until: float, record: bool) -> None:
        nonlocal errors
        for _ in range(max_per_conn):
            if time.perf_counter() >= until:
                return
            start = time.perf_counter_ns()
            status = await conn.call()
            if record:
                samples.append((time.perf_counter_ns() - start) / 1e6)
                errors += status != 200
                statuses[status] = statuses.get(status, 0) + 1
                per_target[index % len(targets)] += 1

    try:
        async with asyncio.timeout(THROUGHPUT_WARMUP_S + seconds + 60):
            warm_until = time.perf_counter() + THROUGHPUT_WARMUP_S
            await asyncio.gather(*(worker(i, c, warm_until, False) for i, c in enumerate(conns)))
            start = time.perf_counter()
            await asyncio.gather(*(worker(i, c, start + seconds, True) for i, c in enumerate(conns)))
            elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            conn.close()
    return {
        "samples": samples,
        "errors": errors,
        "elapsed": elapsed,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "per_target": per_target,
    }


def _load_main(spec: dict[str, Any]) -> None:
    if spec["concurrency"] == 1:
        result = asyncio.run(
            _latency(spec["url"], spec["key"], spec["requests"], spec["cap_s"], spec["body"])
        )
    else:
        urls = spec.get("urls") or [spec["url"]]
        result = asyncio.run(
            _throughput(urls, spec["key"], spec["concurrency"], spec["seconds"], spec["body"])
        )
    print(json.dumps(result))


# --- measuring a target ------------------------------------------------------------------------


@dataclass
class Figures:
    p50: float  # ms, concurrency 1
    p99: float
    requests: int  # timed requests at concurrency 1
    rps: float  # concurrency 32
    p50_c32: float
    p99_c32: float
    errors: int  # non-200 answers or failed connections in the timed runs


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _generate(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "_load", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"load generator failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["samples"]:
        raise BenchError(f"no request completed against {spec.get('urls') or spec['url']}")
    return result


def measure(url: str, key: str | None, requests: int, seconds: float) -> Figures:
    """Latency at concurrency 1, then throughput at concurrency 32, each by a fresh generator."""
    spec: dict[str, Any] = {"url": url, "key": key, "requests": requests, "seconds": seconds, "body": BODY}
    c1 = _generate({**spec, "concurrency": 1, "cap_s": LATENCY_CAP_S}, LATENCY_CAP_S + 180)
    c32 = _generate({**spec, "concurrency": CONCURRENCY}, THROUGHPUT_WARMUP_S + seconds + 120)
    lat, busy = c1["samples"], c32["samples"]
    return Figures(
        p50=statistics.median(lat),
        p99=percentile(lat, 0.99),
        requests=len(lat),
        rps=len(busy) / c32["elapsed"],
        p50_c32=statistics.median(busy),
        p99_c32=percentile(busy, 0.99),
        errors=c1["errors"] + c32["errors"],
    )


def import_time(python: str, module: str, env: dict[str, str] | None = None, runs: int = 5) -> float:
    """Seconds to import ``module`` in a fresh interpreter (interpreter start excluded), best of ``runs``."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    best = float("inf")
    for _ in range(runs):
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=300, env=env, check=True, cwd=ROOT
        )
        best = min(best, float(out.stdout.strip().splitlines()[-1]))
    return best


def tree_rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and all its descendants (a proxy may fork workers), in MB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total_kb, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            total_kb += int(match.group(1))
    return total_kb / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


class Server:
    """A proxy process in its own session; its output drained by a thread (kept for error messages)."""

    def __init__(self, argv: list[str], env: dict[str, str], ready_prefix: str | None = None) -> None:
        self.lines: deque[str] = deque(maxlen=200)
        self.ready = threading.Event()
        self.ready_at = 0.0
        self.ready_line = ""
        self._prefix = ready_prefix
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self._prefix is not None and not self.ready.is_set() and self._prefix in line:
                self.ready_at = time.perf_counter()
                self.ready_line = line.strip()
                self.ready.set()
            self.seen(line)
            self.lines.append(line.rstrip())

    def seen(self, line: str) -> None:
        """Every line of output, as it comes (for subclasses that count something in it)."""

    def tail(self, n: int = 30) -> str:
        return "\n".join(list(self.lines)[-n:])

    def wait_line(self, timeout: float) -> float:
        """Seconds from process start to the ready line."""
        deadline = time.perf_counter() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None:
                self._thread.join(2)
                raise BenchError(f"exited with code {self.proc.returncode} before ready:\n{self.tail()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"not ready after {timeout:.0f} s:\n{self.tail()}")
        return self.ready_at - self.started

    def wait_http(self, url: str, timeout: float) -> float:
        """Seconds from process start to the first 200 from ``url``."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                self._thread.join(2)
                raise BenchError(f"exited with code {self.proc.returncode} before ready:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - self.started
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.02)
        raise BenchError(f"{url} not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group (it may have forked workers), SIGKILL past ``timeout``."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        else:
            # The leader is gone; a forked worker may still hold the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._thread.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def check_once(url: str, key: str | None) -> dict[str, str]:
    """One request with urllib before the load: a clear error instead of a run of failures."""
    req = urllib.request.Request(
        url + "/chat/completions",
        data=json.dumps(BODY).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
            return dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        raise BenchError(f"{url}: {exc.code} {exc.read()[:500]!r}") from exc


@dataclass
class Result:
    name: str
    figures: Figures
    import_s: float | None = None
    ready_s: float | None = None
    rss_mb: float | None = None
    note: str = ""


# --- spendgate ---------------------------------------------------------------------------------


def spendgate_cli() -> list[str]:
    script = Path(sys.executable).parent / "spendgate"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from spendgate.cli import main; sys.exit(main())"]


def spendgate_available() -> str | None:
    """None when ``spendgate serve`` exists here, else why not."""
    try:
        out = subprocess.run(
            [*spendgate_cli(), "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if out.returncode != 0:
        return (out.stderr or out.stdout).strip().splitlines()[-1] if (out.stderr or out.stdout) else "failed"
    return None


def create_key(ledger: str) -> str | None:
    """A virtual key by the CLI, or None when this checkout has no ``spendgate keys create`` yet."""
    cli = spendgate_cli()
    env = child_env()
    probe = subprocess.run(
        [*cli, "keys", "create", "--help"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    if probe.returncode != 0:
        return None
    out = subprocess.run(
        [*cli, "keys", "create", "--ledger", ledger, "--name", "bench", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"spendgate keys create failed ({out.returncode}): {out.stdout}{out.stderr}")
    try:
        secret = json.loads(out.stdout)["secret"]
    except (ValueError, KeyError, TypeError):
        match = re.search(r"\bsg-[A-Za-z0-9_\-]+", out.stdout)
        if match is None:
            raise BenchError(f"no secret in the output of spendgate keys create: {out.stdout}") from None
        secret = match.group(0)
    return str(secret)


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    # JSON is YAML: no dependency on a YAML writer, and nothing to quote by hand.
    path.write_text(json.dumps(data, indent=2) + "\n")


#: ``--limits``: the baseline's two budgets, and the three limits the request also matches
#: (set far above the load: the figure is the bookkeeping, not refusals).
TWO_BUDGETS: list[dict[str, Any]] = [
    {"id": "all", "limit": "1000000"},
    {"id": "per-key", "selector": {"key": "*"}, "limit": "1000000", "window": "day"},
]
THREE_LIMITS: list[dict[str, Any]] = [
    {"id": "rpm", "selector": {"key": "*"}, "requests": 10**9, "per": "1m"},
    {"id": "tpm", "selector": {"key": "*"}, "tokens": 10**12, "per": "1m"},
    {"id": "inflight", "selector": {"key": "*"}, "concurrency": 100000},
]
LIMITS_NAME = "spendgate (+3 limits)"


def spendgate_config(
    upstream: FakeUpstream,
    ledger: str,
    port: int,
    key: str | None,
    args: argparse.Namespace,
    *,
    limits: bool = False,
) -> dict[str, Any]:
    """One gateway's config: the fake upstream for every model, budgets too big to refuse anything."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "ledger": ledger,
        "upstreams": {
            "fake": {"kind": "openai", "base_url": upstream.base_url, "api_key_env": UPSTREAM_KEY_ENV}
        },
        "routes": [{"model": "*", "upstream": "fake"}],
        "budgets": TWO_BUDGETS if args.limits else [{"id": "all", "limit": "1000000"}],
    }
    if limits:
        config["limits"] = THREE_LIMITS
    if key is None:
        config["keys"] = {"required": False}  # demo mode, until virtual keys exist
    return config


def ready_base(server: Server) -> str:
    """The ``/v1`` base URL a gateway's ready line names."""
    return server.ready_line.split(READY_PREFIX, 1)[1].split()[0].rstrip("/") + "/v1"


def run_spendgate(
    upstream: FakeUpstream,
    args: argparse.Namespace,
    tmp: Path,
    *,
    memory: bool = False,
    limits: bool = False,
) -> Result:
    """``memory``: the same gateway on the ``memory://`` ledger, without virtual keys (a memory
    key store cannot be filled from outside): what the gateway costs without a durable ledger.
    ``limits`` (with ``--limits``): two budgets and three limits, against the run of two budgets."""
    name = MEMORY_NAME if memory else LIMITS_NAME if limits else "spendgate"
    ledger = "memory://" if memory else f"sqlite:///{tmp / (name.replace(' ', '_') + '.db')}"
    if not memory:
        from spendgate.ledger import open_ledger

        open_ledger(ledger).close()  # the admin CLI opens existing ledgers only
    key = None if memory else create_key(ledger)
    config = spendgate_config(upstream, ledger, free_port(), key, args, limits=limits)
    config_path = tmp / "spendgate.yaml"
    write_yaml(config_path, config)
    argv = [*spendgate_cli(), "serve", "--config", str(config_path)]
    if args.workers > 1:
        argv += ["--workers", str(args.workers)]
    env = child_env({UPSTREAM_KEY_ENV: "bench"})

    import_s = import_time(sys.executable, "spendgate", env=env)
    ready: list[float] = []
    server: Server | None = None
    try:
        for _ in range(args.starts):
            if server is not None:
                server.stop()
            server = Server(argv, env, READY_PREFIX)
            try:
                ready.append(server.wait_line(30.0))
            except BenchError as exc:
                raise BenchError(f"spendgate serve: {exc}") from exc
        assert server is not None
        base = ready_base(server)
        headers = {k.lower(): v for k, v in check_once(base, key).items()}
        if "x-spendgate-cost" not in headers and not BODY.get("stream"):  # a stream's cost is its trailer
            print("note: the gateway's answer has no x-spendgate-cost header", file=sys.stderr)
        figures = measure(base + "/chat/completions", key, args.requests, args.seconds)
        rss = tree_rss_mb(server.proc.pid)
    finally:
        if server is not None:
            server.stop()
    note = "virtual key" if key else "no key (keys.required: false)"
    if args.workers > 1:
        note += f"; {args.workers} worker processes"
    if args.limits:
        note += "; two budgets" + (" and three limits" if limits else "")
    return Result(name, figures, import_s, min(ready), rss, note)


MEMORY_NAME = "spendgate (memory)"


# --- the bare proxy ----------------------------------------------------------------------------

BARE_NAME = "bare proxy (no work)"


def run_bare_proxy(upstream: FakeUpstream, args: argparse.Namespace) -> tuple[Result, str]:
    """The bare proxy in front of the upstream: its figures and the event loop it ran on."""
    from bench.bare_proxy import READY_PREFIX as BARE_READY_PREFIX

    argv = [sys.executable, "-m", "bench.bare_proxy", "--upstream", upstream.base_url, "--port", "0"]
    server = Server([*argv, "--loop", args.bare_loop], child_env(), BARE_READY_PREFIX)
    try:
        try:
            ready = server.wait_line(30.0)
        except BenchError as exc:
            raise BenchError(f"bare proxy: {exc}") from exc
        match = re.match(r"(http://\S+) \(loop (\w+)\)", server.ready_line.split(BARE_READY_PREFIX, 1)[1])
        if match is None:
            raise BenchError(f"bare proxy: unexpected ready line {server.ready_line!r}")
        base, loop = match.group(1).rstrip("/") + "/v1", match.group(2)
        check_once(base, None)
        figures = measure(base + "/chat/completions", None, args.requests, args.seconds)
        rss = tree_rss_mb(server.proc.pid)
    finally:
        server.stop()
    note = f"loop {loop}; uvicorn httptools + one aiohttp session, no auth/JSON/ledger"
    return Result(BARE_NAME, figures, None, ready, rss, note), loop


# --- LiteLLM -----------------------------------------------------------------------------------

LITELLM_ENV = {
    # No fetch of the price map from the internet at import, no telemetry, quiet logs.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",
    "DISABLE_ADMIN_UI": "True",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def run_litellm(upstream: FakeUpstream, args: argparse.Namespace, tmp: Path) -> Result:
    start = time.perf_counter()
    python = side_venv("litellm", [f"litellm[proxy]=={LITELLM_VERSION}"])
    install_s = time.perf_counter() - start
    env = child_env(LITELLM_ENV)
    env.pop("PYTHONPATH", None)  # its own venv only
    env.pop("DATABASE_URL", None)
    env.pop("LITELLM_MASTER_KEY", None)
    master_key = "sk-" + secrets.token_hex(32)
    config = {
        "model_list": [
            {
                "model_name": "gpt-4o",
                "litellm_params": {"model": "openai/gpt-4o", "api_base": upstream.base_url, "api_key": "x"},
            }
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        # Without a master key it refuses to start; without a database this key is the only one.
        "general_settings": {"master_key": master_key},
    }
    config_path = tmp / "litellm.yaml"
    write_yaml(config_path, config)
    exe = python.parent / "litellm"
    cli = [str(exe)] if exe.exists() else [str(python), "-m", "litellm.proxy.proxy_cli"]

    import_s = import_time(str(python), "litellm", env=env)
    ready: list[float] = []
    server: Server | None = None
    try:
        for _ in range(args.starts_litellm):
            if server is not None:
                server.stop()
            port = free_port()
            argv = [*cli, "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
            server = Server([*argv, "--num_workers", "1"], env)
            try:
                ready.append(server.wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180.0))
            except BenchError as exc:
                raise BenchError(f"litellm: {exc}") from exc
        assert server is not None
        base = f"http://127.0.0.1:{port}/v1"
        check_once(base, master_key)
        figures = measure(base + "/chat/completions", master_key, args.requests, args.seconds)
        rss = tree_rss_mb(server.proc.pid)
    finally:
        if server is not None:
            server.stop()
    note = f"{LITELLM_VERSION}, 1 worker" + (f"; installed in {install_s:.0f} s" if install_s > 5 else "")
    return Result("LiteLLM", figures, import_s, min(ready), rss, note)


# --- several instances on one shared ledger (--ledgers, --instances) -----------------------------

#: ``--ledgers`` names: the backend each one is, as reported (``redis``: Redis beside PostgreSQL).
LEDGER_NAMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "redis": "redis+pg",
    "redis+pg": "redis+pg",
    "redis+sqlite": "redis+sqlite",
}
MAX_INSTANCES = 8


@dataclass
class SharedLedger:
    """One ledger URL every instance of a case names, and what to drop when the case ends."""

    name: str
    url: str
    schema: str | None = None  # a PostgreSQL schema of the run's own (the ledger's, or Redis's durable store)
    prefix: str | None = None  # a Redis URL naming a key prefix of the run's own

    def drop(self) -> None:
        from spendgate.testing.servers import drop_postgres_schema, drop_redis_prefix

        if self.prefix is not None:
            drop_redis_prefix(self.prefix)
        if self.schema is not None:
            drop_postgres_schema(self.schema)


def shared_ledger(name: str, tmp: Path, tag: str) -> SharedLedger:
    """A fresh ledger for one case: a new SQLite file, PostgreSQL schema or Redis key prefix."""
    from spendgate.testing.servers import postgres_test_url, redis_test_url

    if name == "sqlite":  # instances on one machine share a file
        return SharedLedger(name, f"sqlite:///{tmp / f'shared-{tag}.db'}")
    if name == "postgresql":
        url = postgres_test_url("benchgw")
        return SharedLedger(name, url, schema=url)
    if name == "redis+pg":
        durable = postgres_test_url("benchgw")
        url = redis_test_url(durable, "benchgw")
        return SharedLedger(name, url, schema=durable, prefix=url)
    if name == "redis+sqlite":
        url = redis_test_url(f"sqlite:///{tmp / f'durable-{tag}.db'}", "benchgw")
        return SharedLedger(name, url, prefix=url)
    raise BenchError(f"unknown ledger {name!r}")


@dataclass
class ClusterResult:
    ledger: str
    instances: int
    rps: float  # concurrency 32, spread round-robin over the instances
    p50: float  # ms
    p99: float
    requests: int  # timed requests
    errors: int  # non-200 answers or failed connections
    statuses: dict[str, int]  # answers by status ("0": no answer)
    per_instance: list[int]  # timed requests each instance served
    ready_s: float  # the slowest instance's start to ready (started together)
    rss_mb: float  # all instances after the load
    cpu_gateways_s: float  # CPU time of the instances, the upstream and the load generator
    cpu_upstream_s: float  # during the load (warm-up and timed run)
    cpu_load_s: float
    cpu_servers_s: float  # processes named postgres or redis-server (anyone's), during the load
    machine_busy: float  # share of all the machine's CPU time busy during the load (anyone's)
    wall_s: float  # of that load


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all bound at once, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


LEDGER_SERVERS = ("postgres", "redis-server")


def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat (all cores)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


def ledger_servers_cpu_s() -> float:
    """CPU seconds so far of the processes named like the ledger's servers (read, never touched)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if comm in LEDGER_SERVERS:
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """User plus system CPU of this process's waited-for children so far (the load generators)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cluster(
    upstream: FakeUpstream, args: argparse.Namespace, tmp: Path, name: str, instances: int
) -> ClusterResult:
    """``instances`` separate ``spendgate serve`` processes, each with its own config file and port,
    all naming one fresh ledger, in front of the fake upstream; c=32 spread round-robin over them."""
    from spendgate.ledger import open_ledger

    tag = f"{name.replace('+', '-')}-{instances}"
    ledger = shared_ledger(name, tmp, tag)
    servers: list[Server] = []
    try:
        open_ledger(ledger.url).close()  # the admin CLI opens existing ledgers only
        key = create_key(ledger.url)
        env = child_env({UPSTREAM_KEY_ENV: "bench"})
        for i, port in enumerate(free_ports(instances)):
            config_path = tmp / f"cluster-{tag}-{i}.yaml"
            write_yaml(config_path, spendgate_config(upstream, ledger.url, port, key, args))
            servers.append(
                Server([*spendgate_cli(), "serve", "--config", str(config_path)], env, READY_PREFIX)
            )
        ready: list[float] = []
        for i, server in enumerate(servers):
            try:
                ready.append(server.wait_line(60.0))
            except BenchError as exc:
                raise BenchError(f"spendgate serve ({name}, instance {i + 1} of {instances}): {exc}") from exc
        bases = [ready_base(server) for server in servers]
        for base in bases:
            check_once(base, key)
        spec: dict[str, Any] = {
            "urls": [base + "/chat/completions" for base in bases],
            "key": key,
            "concurrency": CONCURRENCY,
            "seconds": args.seconds,
            "body": BODY,
        }
        pids = [server.proc.pid for server in servers]
        gw0 = sum(cpu_seconds(pid) or 0.0 for pid in pids)
        up0, load0, srv0 = cpu_seconds(upstream.proc.pid) or 0.0, children_cpu_s(), ledger_servers_cpu_s()
        busy0, all0 = machine_cpu()
        wall0 = time.perf_counter()
        out = _generate(spec, THROUGHPUT_WARMUP_S + args.seconds + 120)
        wall = time.perf_counter() - wall0
        busy1, all1 = machine_cpu()
        srv = ledger_servers_cpu_s() - srv0
        gw = sum(cpu_seconds(pid) or 0.0 for pid in pids) - gw0
        up, load = (cpu_seconds(upstream.proc.pid) or 0.0) - up0, children_cpu_s() - load0
        rss = sum(tree_rss_mb(pid) for pid in pids)
        dead = [i + 1 for i, server in enumerate(servers) if server.proc.poll() is not None]
        if dead:
            raise BenchError(f"{name}: instance(s) {dead} of {instances} exited during the load")
    finally:
        for server in servers:
            server.stop()
        ledger.drop()
    busy = out["samples"]
    return ClusterResult(
        ledger=name,
        instances=instances,
        rps=len(busy) / out["elapsed"],
        p50=statistics.median(busy),
        p99=percentile(busy, 0.99),
        requests=len(busy),
        errors=out["errors"],
        statuses=out["statuses"],
        per_instance=out["per_target"],
        ready_s=max(ready),
        rss_mb=rss,
        cpu_gateways_s=gw,
        cpu_upstream_s=up,
        cpu_load_s=load,
        cpu_servers_s=srv,
        machine_busy=(busy1 - busy0) / max(all1 - all0, 1e-9),
        wall_s=wall,
    )


def upstream_c32(upstream: FakeUpstream, seconds: float) -> Figures:
    """The upstream alone at concurrency 32 only (the reference again, after the instances)."""
    spec: dict[str, Any] = {
        "url": upstream.base_url + "/chat/completions",
        "key": "bench",
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        "body": BODY,
    }
    out = _generate(spec, THROUGHPUT_WARMUP_S + seconds + 120)
    busy = out["samples"]
    return Figures(
        p50=0.0,
        p99=0.0,
        requests=0,
        rps=len(busy) / out["elapsed"],
        p50_c32=statistics.median(busy),
        p99_c32=percentile(busy, 0.99),
        errors=out["errors"],
    )


def report_clusters(
    base: Figures,
    after: Figures | None,
    bare: Result | None,
    clusters: list[ClusterResult],
    args: argparse.Namespace,
) -> None:
    print()
    print(
        f"Instances on one shared ledger: c={CONCURRENCY} keep-alive connections spread round-robin "
        f"over N separate `spendgate serve` processes (own config and port each, one ledger URL), "
        f"{args.seconds:g} s after {THROUGHPUT_WARMUP_S:g} s warm-up; {os.cpu_count()} CPUs shared "
        "by the instances, the upstream, the load generator and the ledger's server; latency in ms"
    )
    print(
        f"{'target':<24}{'p50 c=32':>10}{'p99 c=32':>10}{'req/s c=32':>12}{'% upstream':>12}"
        f"{'% bare':>9}{'x 1 inst':>10}"
    )
    refs = [("upstream alone", base)] + ([("upstream alone (after)", after)] if after is not None else [])
    for label, f in refs:
        print(
            f"{label:<24}{f.p50_c32:>10.2f}{f.p99_c32:>10.2f}{f.rps:>12,.0f}{100 * f.rps / base.rps:>11.1f}%"
        )
    if bare is not None:
        f = bare.figures
        print(
            f"{'bare proxy (1 process)':<24}{f.p50_c32:>10.2f}{f.p99_c32:>10.2f}{f.rps:>12,.0f}"
            f"{100 * f.rps / base.rps:>11.1f}%{100.0:>8.0f}%"
        )
    single = {c.ledger: c.rps for c in clusters if c.instances == 1}
    for c in clusters:
        label = f"{c.ledger} x{c.instances}"
        of_bare = f"{100 * c.rps / bare.figures.rps:>8.1f}%" if bare is not None else f"{'':>9}"
        scale = f"{c.rps / single[c.ledger]:>9.2f}x" if c.ledger in single else f"{'':>10}"
        print(
            f"{label:<24}{c.p50:>10.2f}{c.p99:>10.2f}{c.rps:>12,.0f}{100 * c.rps / base.rps:>11.1f}%"
            f"{of_bare}{scale}"
        )
    print()
    print(
        f"{'target':<24}{'ready s':>8}{'RSS MB':>8}{'busy':>6}  CPU s during the load: gateways/upstream/"
        "generator/postgres+redis/anything else of wall x CPUs; requests per instance; answers"
    )
    cpus = os.cpu_count() or 1
    for c in clusters:
        ours = c.cpu_gateways_s + c.cpu_upstream_s + c.cpu_load_s + c.cpu_servers_s
        answers = ", ".join(f"{'no answer' if s == '0' else s}: {n:,}" for s, n in c.statuses.items())
        print(
            f"{c.ledger + ' x' + str(c.instances):<24}{c.ready_s:>8.2f}{c.rss_mb:>8.0f}"
            f"{100 * c.machine_busy:>5.0f}%  {c.cpu_gateways_s:.1f}/{c.cpu_upstream_s:.1f}/"
            f"{c.cpu_load_s:.1f}/{c.cpu_servers_s:.1f}/{max(0.0, c.machine_busy * c.wall_s * cpus - ours):.1f}"
            f" of {c.wall_s * cpus:.1f}; "
            f"{'/'.join(f'{n:,}' for n in c.per_instance)}; {answers}"
            + (f"; {c.errors:,} NOT 200" if c.errors else "")
        )


# --- report ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(
    base: Figures,
    bare: Result | None,
    bare_loop: str,
    results: list[Result],
    args: argparse.Namespace,
    clusters: Sequence[ClusterResult] = (),
    after: Figures | None = None,
) -> None:
    print(
        f"Python {python_version()}; {os.cpu_count()} CPUs; "
        f"{'streaming' if BODY.get('stream') else 'non-streaming'} chat, max_tokens 16; "
        f"c=1: {args.requests} sequential requests after {LATENCY_WARMUP} warm-up; "
        f"c={CONCURRENCY}: {args.seconds:g} s after {THROUGHPUT_WARMUP_S:g} s warm-up; latency in ms"
    )
    head = (
        f"{'target':<22}{'p50 c=1':>9}{'p99 c=1':>9}{'added p50':>11}{'added p99':>11}"
        f"{'p50 c=32':>10}{'p99 c=32':>10}{'req/s c=32':>12}{'% upstream':>12}"
    )
    print(head)
    print(
        f"{'upstream alone':<22}{base.p50:>9.3f}{base.p99:>9.3f}{'':>11}{'':>11}"
        f"{base.p50_c32:>10.2f}{base.p99_c32:>10.2f}{base.rps:>12,.0f}{100.0:>11.0f}%"
    )
    shown = ([bare] if bare is not None else []) + results
    for r in shown:
        f = r.figures
        print(
            f"{r.name:<22}{f.p50:>9.3f}{f.p99:>9.3f}{f.p50 - base.p50:>11.3f}{f.p99 - base.p99:>11.3f}"
            f"{f.p50_c32:>10.2f}{f.p99_c32:>10.2f}{f.rps:>12,.0f}{100 * f.rps / base.rps:>11.1f}%"
        )
    print()
    print(f"{'target':<22}{'import s':>10}{'ready s':>10}{'RSS MB':>10}  notes")
    for r in shown:
        errors = f"; {r.figures.errors} failed requests" if r.figures.errors else ""
        imported = "-" if r.import_s is None else f"{r.import_s:.3f}"
        print(
            f"{r.name:<22}{imported:>10}{r.ready_s or 0:>10.2f}{r.rss_mb or 0:>10.0f}  "
            f"{r.note}; {r.figures.requests} timed at c=1{errors}"
        )
    by_name = {r.name: r for r in results}
    sg, ll = by_name.get("spendgate"), by_name.get("LiteLLM")
    if sg is not None:
        f = sg.figures
        added = f.p50 - base.p50
        share = 100 * f.rps / base.rps
        print()
        print("spendgate goals:")
        print(
            f"  added p50 at c=1      {added:>9.3f} ms   <= {GOALS['added_p50_ms']:g} ms: {verdict(added <= GOALS['added_p50_ms'])}"
        )
        print(
            f"  req/s at c=32         {share:>9.1f} %    >= {GOALS['share']:g}% of upstream: {verdict(share >= GOALS['share'])}"
        )
        if bare is not None:
            print(
                f"  req/s at c=32         {100 * f.rps / bare.figures.rps:>9.1f} %    of the bare proxy "
                f"(loop {bare_loop}; no goal: what any Python proxy reaches here)"
            )
        print(
            f"  import spendgate      {sg.import_s or 0:>9.3f} s    < {GOALS['import_s']:g} s: {verdict((sg.import_s or 0) < GOALS['import_s'])}"
        )
        print(
            f"  ready                 {sg.ready_s or 0:>9.2f} s    < {GOALS['ready_s']:g} s: {verdict((sg.ready_s or 0) < GOALS['ready_s'])}"
        )
        print(
            f"  resident after load   {sg.rss_mb or 0:>9.0f} MB   < {GOALS['rss_mb']:g} MB: {verdict((sg.rss_mb or 0) < GOALS['rss_mb'])}"
        )
    if sg is not None and ll is not None:
        a, b = sg.figures, ll.figures
        print()
        print("spendgate vs LiteLLM (how many times better spendgate is):")
        print(f"  added latency p50 c=1 {_ratio(b.p50 - base.p50, a.p50 - base.p50)}")
        print(f"  added latency p99 c=1 {_ratio(b.p99 - base.p99, a.p99 - base.p99)}")
        print(f"  latency p50 c=32      {_ratio(b.p50_c32, a.p50_c32)}")
        print(f"  req/s c=32            {_ratio(a.rps, b.rps)}")
        print(f"  import time           {_ratio(ll.import_s or 0, sg.import_s or 0)}")
        print(f"  time to ready         {_ratio(ll.ready_s or 0, sg.ready_s or 0)}")
        print(f"  resident memory       {_ratio(ll.rss_mb or 0, sg.rss_mb or 0)}")
    if clusters:
        report_clusters(base, after, bare, list(clusters), args)
    print(
        json.dumps(
            {
                "upstream": asdict(base),
                **({"upstream_after": asdict(after)} if after is not None else {}),
                **({"instances": [asdict(c) for c in clusters]} if clusters else {}),
                **(
                    {
                        "bare_proxy": {
                            **asdict(bare.figures),
                            "ready_s": bare.ready_s,
                            "rss_mb": bare.rss_mb,
                            "loop": bare_loop,
                        }
                    }
                    if bare is not None
                    else {}
                ),
                **{
                    r.name: {
                        **asdict(r.figures),
                        "import_s": r.import_s,
                        "ready_s": r.ready_s,
                        "rss_mb": r.rss_mb,
                    }
                    for r in results
                },
            }
        )
    )


def _ratio(theirs: float, ours: float) -> str:
    return f"{theirs / ours:9.1f}x" if ours > 0 else "      n/a (spendgate's figure is <= 0)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_load"]:
        _load_main(json.loads(argv[1]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="timed run at concurrency 32, per target")
    parser.add_argument("--requests", type=int, default=2000, help="timed sequential requests per target")
    parser.add_argument("--starts", type=int, default=3, help="gateway starts for time-to-ready (best of)")
    parser.add_argument("--starts-litellm", type=int, default=3, help="LiteLLM starts (best of)")
    parser.add_argument("--skip-litellm", action="store_true", help="upstream and spendgate only")
    parser.add_argument("--skip-spendgate", action="store_true", help="upstream and LiteLLM only")
    parser.add_argument("--skip-bare", action="store_true", help="no bare proxy (the reference forwarder)")
    parser.add_argument(
        "--workers", type=int, default=1, help="spendgate serve --workers N (default 1: one process)"
    )
    parser.add_argument(
        "--stream", action="store_true", help="streamed chat completions (SSE; timed to the last byte)"
    )
    parser.add_argument(
        "--memory-ledger",
        action="store_true",
        help="also spendgate on the memory:// ledger (no keys): the gateway's cost without SQLite",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="also spendgate with three rate limits, against two budgets only (both runs get two budgets)",
    )
    parser.add_argument(
        "--ledgers",
        default="",
        help="also N separate spendgate instances on one shared ledger, per ledger in this comma list: "
        "sqlite, postgresql, redis (= redis+pg: Redis beside a PostgreSQL durable store), redis+sqlite; "
        "each case in a file, schema or key prefix of its own, dropped afterwards (the servers are "
        "SPENDGATE_TEST_POSTGRES and SPENDGATE_TEST_REDIS). Add --skip-spendgate --skip-litellm for these alone",
    )
    parser.add_argument(
        "--instances",
        default="1",
        help=f"with --ledgers: the instance counts to run, a comma list (e.g. 1,3; at most {MAX_INSTANCES}); "
        f"c={CONCURRENCY} is spread round-robin over the instances",
    )
    parser.add_argument(
        "--bare-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the bare proxy's event loop (auto: uvloop when importable, else asyncio)",
    )
    args = parser.parse_args(argv)
    if args.stream:
        BODY["stream"] = True  # one request shape for every target of this run (and its generators)
    if (
        args.requests < 1
        or args.seconds <= 0
        or args.starts < 1
        or args.starts_litellm < 1
        or args.workers < 1
    ):
        parser.error("--requests, --starts, --starts-litellm and --workers must be >= 1 and --seconds > 0")
    ledgers: list[str] = []
    for item in (x.strip() for x in args.ledgers.split(",")):
        if item and LEDGER_NAMES.get(item) is None:
            parser.error(f"--ledgers: unknown {item!r} (one of {', '.join(LEDGER_NAMES)})")
        if item and LEDGER_NAMES[item] not in ledgers:
            ledgers.append(LEDGER_NAMES[item])
    try:
        counts = sorted({int(x) for x in args.instances.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--instances: a comma list of integers, not {args.instances!r}")
    if not counts or not all(1 <= n <= MAX_INSTANCES for n in counts):
        parser.error(f"--instances: each between 1 and {MAX_INSTANCES}")

    if (not args.skip_spendgate or ledgers) and (why := spendgate_available()) is not None:
        print(
            f"bench.gateway: `spendgate serve` is not runnable in this checkout ({why}).\n"
            "The gateway (issue 5) is not there yet: run with --skip-spendgate to measure "
            "the upstream and LiteLLM alone.",
            file=sys.stderr,
        )
        return 2

    results: list[Result] = []
    clusters: list[ClusterResult] = []
    after: Figures | None = None
    bare: Result | None = None
    bare_loop = ""
    with FakeUpstream.start() as upstream, tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        check_once(upstream.base_url, "bench")
        base = measure(upstream.base_url + "/chat/completions", "bench", args.requests, args.seconds)
        if not args.skip_bare:
            bare, bare_loop = run_bare_proxy(upstream, args)
        if not args.skip_spendgate:
            results.append(run_spendgate(upstream, args, Path(tmp)))
            if args.memory_ledger:
                results.append(run_spendgate(upstream, args, Path(tmp), memory=True))
            if args.limits:
                results.append(run_spendgate(upstream, args, Path(tmp), limits=True))
        for name in ledgers:
            for n in counts:
                clusters.append(run_cluster(upstream, args, Path(tmp), name, n))
        if ledgers:
            after = upstream_c32(upstream, args.seconds)
        if not args.skip_litellm:
            results.append(run_litellm(upstream, args, Path(tmp)))
    report(base, bare, bare_loop, results, args, clusters, after)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench.gateway: {exc}", file=sys.stderr)
        sys.exit(1)
