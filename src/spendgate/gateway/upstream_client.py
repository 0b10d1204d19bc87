"""The pooled HTTP client the gateway calls upstreams with.

aiohttp, chosen by measurement (fake upstream, 127.0.0.1, 2 cores, 32
concurrent keep-alive calls): aiohttp ~13,000 calls/s, httpx 0.28 ~410 calls/s
(its connection pool rescans every connection for every request). HTTP/1.1
keep-alive, each call with its upstream's own timeouts. The upstream's API key
is set here and nowhere else; the client's virtual key never leaves the gateway.

Each upstream has a pool of its own: an aiohttp session, and a gate that lets
``max_connections`` calls to it be in flight at once (one connection each).
A call beyond it waits, first in first out, up to ``pool_timeout``; the wait
is measured (``PoolMetrics``) and logged, at most once a minute per upstream.
Measured on the 2-core machine, both choices:

- per-upstream sessions, not one session with ``limit_per_host``: aiohttp
  keys that limit on host and port, so a full pool of one upstream made
  another on the same host wait behind it (1.96 s, against 2 ms with a
  session each); requests/s were the same (about 16,000 both ways, c=32).
- the gate, not aiohttp's connector limit watched with a ``TraceConfig``
  (``on_connection_queued_start/end``): any trace config makes aiohttp send
  its trace signals for every request, 13 us each here (15,130 -> 12,570
  calls/s, medians of 8 rounds), where the gate costs about 1 us (14,870).
  It also bounds the wait for the pool apart from the connect timeout (in
  aiohttp's ``ClientTimeout`` one ``connect`` covers both). The connector
  itself is unlimited, so nothing queues where it cannot be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping

import aiohttp

from spendgate.gateway.metrics import PoolMetrics, pool_metrics
from spendgate.gateway.settings import GatewaySettings, Upstream

log = logging.getLogger("spendgate.gateway.upstream")

DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
#: At most one "pool full" warning per upstream this often (seconds), whatever the traffic.
POOL_LOG_INTERVAL = 60.0


class UpstreamError(Exception):
    """The upstream could not be reached, or broke off its response.

    ``sent``: whether the request may have reached the upstream (False only when no
    connection was made: then the provider certainly billed nothing)."""

    def __init__(self, message: str = "", *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer (or went silent) within its timeout."""


class UpstreamPoolTimeoutError(UpstreamTimeoutError):
    """No connection of the upstream's pool came free within its ``pool_timeout``.
    Nothing was sent (``sent`` is False)."""


def _mapped(exc: BaseException) -> UpstreamError:
    # No connection, no request: a refused or unresolvable host, or a connect timeout.
    sent = not isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's timeouts subclass it
        return UpstreamTimeoutError(type(exc).__name__, sent=sent)
    return UpstreamError(type(exc).__name__, sent=sent)


class _Pool:
    """One upstream's connections: its own aiohttp session, and the gate that lets ``limit``
    calls be in flight at once; the others wait in line (first come, first served)."""

    def __init__(self, upstream: Upstream, metrics: PoolMetrics) -> None:
        self.name = upstream.name
        self.limit = upstream.max_connections
        self.in_use = 0
        self._waiters: OrderedDict[asyncio.Future[None], None] = OrderedDict()
        self._metrics = metrics
        # Since the last warning: requests that started waiting, gave up, the longest wait.
        self._next_log = 0.0
        self._queued = self._gave_up = 0
        self._longest = 0.0
        # Unlimited: the gate is the limit (an aiohttp queue would be neither seen nor bounded
        # apart from the connect timeout). Made inside the server's loop, on first use.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trust_env=False,  # never route provider traffic (and keys) through an ambient proxy
            raise_for_status=False,
        )

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, timeout: float) -> None:
        """A place in the pool; raises ``UpstreamPoolTimeoutError`` after ``timeout`` seconds."""
        if self.in_use < self.limit and not self._waiters:  # no overtaking those in line
            self.in_use += 1
            return
        await self._wait(timeout)

    async def _wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters[fut] = None
        started = loop.time()
        self._metrics.waiting.labels(self.name).inc()
        self._queued += 1
        if started >= self._next_log:
            self._report(started)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except BaseException as exc:
            self._waiters.pop(fut, None)
            if fut.done() and not fut.cancelled():
                self.release()  # handed a place just as it left (timeout or cancel): pass it on
            if isinstance(exc, TimeoutError):
                self._gave_up += 1
                self._metrics.timeouts.labels(self.name).inc()
                raise UpstreamPoolTimeoutError(
                    f"no connection of the pool of {self.name!r} ({self.limit}) came free "
                    f"within {timeout:g} s",
                    sent=False,
                ) from None
            raise
        finally:
            waited = loop.time() - started
            self._longest = max(self._longest, waited)
            self._metrics.waiting.labels(self.name).dec()
            self._metrics.wait.labels(self.name).observe(waited)

    def _report(self, now: float) -> None:
        # Rate-limited: one line per upstream per POOL_LOG_INTERVAL, counting the rest.
        log.warning(
            "upstream %r: all %d connections of its pool are in use; %d requests waiting now "
            "(%d started waiting, %d gave up, longest wait %.1f s since the last report). "
            "Raise upstreams.%s.max_connections if the upstream can take more; "
            "spendgate_upstream_pool_wait_seconds has the waits",
            self.name,
            self.limit,
            len(self._waiters),
            self._queued,
            self._gave_up,
            self._longest,
            self.name,
        )
        self._next_log = now + POOL_LOG_INTERVAL
        self._queued = self._gave_up = 0
        self._longest = 0.0

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        """A reload changed ``max_connections``: calls in flight keep their places."""
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self.in_use < self.limit and self._waiters:
            fut, _ = self._waiters.popitem(last=False)
            if not fut.done():
                self.in_use += 1  # the place passes to the waiter, never to a newcomer
                fut.set_result(None)


class UpstreamResponse:
    """An upstream's response whose headers are in; the body is read (or streamed) once.

    It holds its place in the upstream's pool until ``aclose``."""

    __slots__ = ("_pool", "_resp")

    def __init__(self, resp: aiohttp.ClientResponse, pool: _Pool | None = None) -> None:
        self._resp = resp
        self._pool = pool

    @property
    def status_code(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    @property
    def raw_headers(self) -> Iterable[tuple[bytes, bytes]]:
        return self._resp.raw_headers

    async def aread(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc) from exc

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in whatever pieces the network gives."""
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc) from exc

    async def aclose(self) -> None:
        # A body read to its end goes back to the pool; one cut short closes its connection
        # (which is how the upstream learns that the client went away).
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()
        self._give_back()

    def _give_back(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release()

    def __del__(self) -> None:
        # A response dropped without aclose must not shrink its pool for good. Subclasses (the
        # tests' in-process responses) may have no _pool; a closed loop cannot be woken.
        if getattr(self, "_pool", None) is not None:
            with contextlib.suppress(Exception):
                self._give_back()


class UpstreamClient:
    """Sends request bodies to upstreams and hands back streaming responses."""

    def __init__(self, *, metrics: PoolMetrics | None = None) -> None:
        self._metrics = metrics if metrics is not None else pool_metrics()
        self._pools: dict[str, _Pool] = {}
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    def _pool(self, upstream: Upstream) -> _Pool:
        pool = self._pools.get(upstream.name)
        if pool is None:
            pool = self._pools[upstream.name] = _Pool(upstream, self._metrics)
        elif pool.limit != upstream.max_connections:
            pool.resize(upstream.max_connections)
        return pool

    def pool_state(self, name: str) -> tuple[int, int] | None:
        """(calls in flight, calls waiting) of the upstream ``name``'s pool; None before its first call."""
        pool = self._pools.get(name)
        return None if pool is None else (pool.in_use, pool.waiting)

    @staticmethod
    def url(upstream: Upstream, path: str) -> str:
        """``path`` is the gateway's, e.g. ``/v1/chat/completions``.

        OpenAI-kind base URLs include ``/v1`` (the SDK convention); Anthropic's do not,
        but one given with ``/v1`` is accepted too."""
        base = upstream.base_url.rstrip("/")
        if upstream.kind == "openai" or base.endswith("/v1"):
            return base + path[3:]  # drop the gateway's "/v1"
        return base + path

    @staticmethod
    def headers(upstream: Upstream, forwarded: Iterable[tuple[str, str]]) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        for name, value in forwarded:
            headers[name] = value
        for name, value in upstream.headers.items():
            headers[name.lower()] = value
        if upstream.kind == "anthropic":
            headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
            if upstream.api_key:
                headers["x-api-key"] = upstream.api_key
        elif upstream.api_key:
            headers["authorization"] = f"Bearer {upstream.api_key}"
        return headers

    def _timeout(self, upstream: Upstream) -> aiohttp.ClientTimeout:
        key = (upstream.timeout, upstream.connect_timeout)
        timeout = self._timeouts.get(key)
        if timeout is None:
            # sock_read: the longest silence allowed, waiting for headers and between stream events.
            timeout = aiohttp.ClientTimeout(
                total=None, connect=upstream.connect_timeout, sock_read=upstream.timeout
            )
            self._timeouts[key] = timeout
        return timeout

    async def open(
        self, upstream: Upstream, path: str, body: bytes, forwarded: Iterable[tuple[str, str]]
    ) -> UpstreamResponse:
        """POST ``body``; returns once the response headers are in.

        Waits for a place in the upstream's pool first (``UpstreamPoolTimeoutError`` after its
        ``pool_timeout``). Raises ``UpstreamTimeoutError`` or ``UpstreamError``."""
        pool = self._pool(upstream)
        await pool.acquire(upstream.pool_timeout)
        try:
            resp = await pool.session.post(
                self.url(upstream, path),
                data=body,
                headers=self.headers(upstream, forwarded),
                timeout=self._timeout(upstream),
                allow_redirects=False,
            )
        except BaseException as exc:
            pool.release()
            if isinstance(exc, TimeoutError | aiohttp.ClientError | OSError):
                raise _mapped(exc) from exc
            raise
        return UpstreamResponse(resp, pool)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.session.close()


#: Descriptors a process needs besides its requests' (ledger files, listening sockets, ...).
_SPARE_FILES = 256


def raise_open_file_limit(settings: GatewaySettings | None = None) -> tuple[int, int] | None:
    """Raise this process's soft open-file limit (``ulimit -n``) to its hard limit when it is
    below what ``listen.max_connections`` held requests need: two descriptors each, the
    client's connection and the upstream's. Worker processes inherit it. Logged; a hard limit
    still too low is a warning. Returns (soft before, soft after); None where there is no
    ``resource`` module (not POSIX)."""
    try:
        import resource
    except ImportError:
        return None
    connections = (settings or GatewaySettings()).max_connections
    needed = 2 * connections + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= needed:
        return soft, soft
    target = needed if hard == infinite else hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. macOS caps below an "unlimited" hard limit
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            target = soft
        else:
            log.info("raised the open-file limit (ulimit -n) from %d to %d", soft, target)
    if target < 2 * connections:  # the spare is a margin; short of the requests' own: warn
        log.warning(
            "the open-file limit is %d: about %d requests can be held at once, not the %d of "
            "listen.max_connections (each holds two descriptors); raise the hard limit "
            "(ulimit -Hn, systemd LimitNOFILE=) or lower listen.max_connections",
            target,
            max(0, (target - _SPARE_FILES) // 2),
            connections,
        )
    return soft, target
