"""What every part of the Redis ledger shares: connections, scripts, the generation marker,
the catalog of definitions, and the driver that runs one operation's steps.

An operation is written once, as a generator (a *flow*) that plans in Python and yields the
steps it needs: ``_Call`` (one Lua script, atomic in Redis) or ``_Blocking`` (a setup, a
catalog reload or a generation check, which read the durable store). ``_drive`` runs a flow
with the blocking client (scripts packed by hiredis, sent on connections of the hot path's
own, without the pool's per-command bookkeeping); ``_adrive`` with the asyncio client of the
running loop, the blocking steps in a worker thread, so the event loop never waits on I/O.
The sync and async calls differ only in which driver runs the same flow.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final, NamedTuple, TypeVar, cast

import redis
import redis.asyncio as aredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from spendgate.budgets import EPOCH, Budget
from spendgate.clock import Clock
from spendgate.errors import ConfigError
from spendgate.ledger.base import (
    DEFAULT_RETENTION,
    BudgetChanged,
    Ledger,
    LedgerMissingError,
    LedgerUnavailableError,
)
from spendgate.ledger.protocols import RequestArchive
from spendgate.ledger.redis.markers import MarkerStore, marker_store
from spendgate.ledger.redis.scripts import LAYOUT, Script, Scripts, load_scripts
from spendgate.ledger.redis.url import OnReset, parse_redis_url
from spendgate.limits import Limit
from spendgate.money import Money

__all__ = ["MAX_NANOS", "Catalog", "RedisCore", "dt", "us"]

log = logging.getLogger("spendgate.ledger")

T = TypeVar("T")

#: Lua numbers are doubles: amounts are exact up to 2^53 nano-USD (about 9 million USD).
MAX_NANOS: Final = 2**53 - 1
_US: Final = timedelta(microseconds=1)
_ATTEMPTS: Final = 4  # a stale catalog or a moved generation is retried this often
_MAX_STEPS: Final = 64
_DAY_MS: Final = 86_400_000
_OUTAGES: Final = ("READONLY", "MASTERDOWN", "LOADING", "OOM", "CLUSTERDOWN", "BUSY", "NOREPLICAS", "MISCONF")
_REBUILDING: Final = "rebuilding:"


def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis packs a command in C (the ``redis[hiredis]`` extra); without it, ``pack``'s loop."""
    try:
        import hiredis
    except ImportError:  # pragma: no cover - hiredis is part of the redis extra
        return None
    return cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)


_hiredis_pack: Final = _hiredis_packer()


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP, from str, bytes and int arguments (what the scripts are given)."""
    if _hiredis_pack is not None:
        return _hiredis_pack(args)
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if type(arg) is bytes else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def us(when: datetime) -> int:
    """Exact microseconds since the epoch."""
    return (when - EPOCH) // _US


def dt(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def esc(name: str) -> str:
    """A budget or limit id in a key: ``:`` escaped, so ids never run into the next part."""
    return name.replace("%", "%25").replace(":", "%3A")


def check_nanos(nanos: int, what: str) -> None:
    if nanos > MAX_NANOS:
        raise ValueError(
            f"{what} of {Money(nanos)} is above what the Redis ledger counts exactly "
            f"({Money(MAX_NANOS)}: 2^53 nano-USD, the integers a Lua number holds exactly)"
        )


class Catalog(NamedTuple):
    """The definitions one process plans with, at Redis catalog ``version``."""

    version: str
    budgets: dict[str, Budget]
    order: tuple[Budget, ...]  # by id, the order refusals are looked for in
    limits: tuple[tuple[Limit, str], ...]  # as added, each with the generation of its counts
    limit_map: dict[str, tuple[Limit, str]]


class _Call(NamedTuple):
    script: Script
    keys: list[str]
    args: list[Any]


class _Blocking(NamedTuple):
    fn: Callable[[], Any]


Step = _Call | _Blocking
Flow = Generator[Step, Any, T]


class RedisCore(Ledger):
    """State and machinery of ``RedisLedger`` (see the package docstring for the design)."""

    scheme = "redis"

    def __init__(
        self,
        url: str,
        budgets: Iterable[Budget] = (),
        *,
        clock: Clock | None = None,
        retention: timedelta = DEFAULT_RETENTION,
        fail_open: bool = False,
        create: bool = True,
        on_reset: OnReset | None = None,
        timeout: float | None = None,
        ended_ttl: timedelta = timedelta(days=1),
        expiry_interval: timedelta = timedelta(seconds=1),
        drain_interval: float = 0.5,
        drain_batch: int = 500,
        purge_interval: float = 600.0,
        **durable_options: Any,
    ) -> None:
        super().__init__(clock=clock, retention=retention, fail_open=fail_open)
        config = parse_redis_url(url)
        self.config = config
        self.on_reset: OnReset = on_reset or config.on_reset
        if self.on_reset not in ("fail_closed", "rebuild"):
            raise ConfigError("ledger", f"on_reset is fail_closed or rebuild, got {self.on_reset!r}")
        self.timeout = float(timeout if timeout is not None else config.timeout)
        self.create = create
        self.ended_ttl_ms = max(int(ended_ttl / timedelta(milliseconds=1)), 1000)
        self.expiry_interval = expiry_interval
        self.drain_interval = drain_interval
        self.drain_batch = drain_batch
        self.purge_interval = purge_interval
        self._durable_options = durable_options
        self._budgets = list(budgets)
        for budget in self._budgets:
            check_nanos(budget.limit.nanos, f"budget {budget.id!r}: limit")
        base = config.prefix
        p = f"{base}:{LAYOUT}:"
        self._p = p
        self.k_generation = f"{base}:generation"
        self.k_layout = f"{base}:layout"
        self.k_rebuild = f"{base}:rebuild"
        self.k_catalog = p + "catalog"
        self.k_limgen = p + "limgen"
        self.k_leases = p + "leases"
        self.k_stream = p + "ended"
        self.k_bad = p + "ended-unreadable"
        self.k_probe = p + "probe"
        self.k_drain = p + "drain"
        self.k_request = p + "r:"
        self._s: Scripts = load_scripts()
        self._client: redis.Redis = redis.Redis.from_url(
            config.connection,
            decode_responses=True,
            protocol=3,  # with hiredis RESP3 is no slower than RESP2 (re-measured); without, faster
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # One immediate retry replaces a pooled connection that died (Redis restarted);
            # a Redis that is down still fails at once. Never on a timeout: that took `timeout`.
            retry=Retry(NoBackoff(), 1, supported_errors=(rx.ConnectionError,)),
        )
        # The hot path's connections (EVALSHA only): taken from and given back to this list
        # (atomic under the GIL), without the pool's bookkeeping, health poll and telemetry.
        self._free: list[Any] = []  # redis.Connection (its methods are untyped)
        self._pid = os.getpid()
        self._aclients: dict[asyncio.AbstractEventLoop, aredis.Redis] = {}
        self._lock = threading.Lock()
        self._setup_lock = threading.RLock()
        self._durable: Ledger | None = None
        self._archive: RequestArchive | None = None
        self._markers: MarkerStore | None = None
        self._generation = ""
        self._catalog: Catalog | None = None
        self._ready = False
        self._owed_bump = False  # a definition changed in the durable store, not yet announced
        self._closed = False
        self._next_expiry = EPOCH
        self._windows: dict[tuple[str, datetime, datetime | None], tuple[str, int, int | None, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._after_setup()
        try:
            self._setup()
        except LedgerMissingError:
            self.close()
            raise
        except LedgerUnavailableError as exc:
            if not create:
                self.close()
                raise
            log.error(
                "spendgate: Redis ledger %s unavailable at start (%s); setup is retried on every "
                "call, which fails closed meanwhile",
                self._where(),
                exc,
            )

    # -- hooks ------------------------------------------------------------------------
    def _after_setup(self) -> None:
        """Subclass state created before the first setup (the drainer)."""

    def _setup_done(self) -> None:
        """Called after every successful setup (start the drainer)."""

    def _drain_for_rebuild(self) -> None:
        """Copy what Redis still holds of ended requests into the durable log."""

    # -- messages ---------------------------------------------------------------------
    def _where(self) -> str:
        return f"redis://{self.config.shown} (prefix {self.config.prefix!r})"

    def _unavailable(self, exc: BaseException | str) -> LedgerUnavailableError:
        return LedgerUnavailableError(
            f"spendgate Redis ledger {self._where()} is unavailable ({exc}); refusing to admit "
            "requests it cannot account for (fail closed). Check that Redis is up and reachable, "
            "or open the ledger with fail_open=True to admit unrecorded."
        )

    def _lost(self, generation: str) -> LedgerUnavailableError:
        return LedgerUnavailableError(
            f"spendgate Redis ledger {self._where()} has lost its state: the generation marker "
            f"{generation!r} that the durable store holds is missing from Redis (restarted without "
            "persistence, flushed, or failed over to an empty replica). Its counters would start "
            "again from zero, so nothing is admitted (fail closed). Rebuild the current windows "
            "from the durable request log: `spendgate ledger rebuild` (RedisLedger.rebuild()), "
            "or open the ledger with on_reset=rebuild to do it by itself."
        )

    # -- Redis calls --------------------------------------------------------------------
    def _redis(self, fn: Callable[[redis.Redis], T]) -> T:
        """A plain Redis call on the blocking client; an outage is LedgerUnavailableError."""
        try:
            return fn(self._client)
        except (rx.ConnectionError, rx.TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        except rx.ResponseError as exc:
            if str(exc).startswith(_OUTAGES):
                raise self._unavailable(exc) from exc
            raise

    def _send(self, packed: bytes) -> Any:
        """One packed command on a connection of the hot path's own; its reply. A connection
        that died (Redis restarted) is replaced once at once, as the client's retry does."""
        if self._pid != os.getpid():  # forked: the parent's sockets are not this process's
            self._free, self._pid = [], os.getpid()
        try:
            conn = self._free.pop()
        except IndexError:
            pool = self._client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
        try:
            try:
                conn.send_packed_command((packed,), check_health=False)
                return conn.read_response()
            except rx.ConnectionError:
                conn.disconnect()
                conn.send_packed_command((packed,), check_health=False)
                return conn.read_response()
        except rx.ResponseError:
            raise  # a whole reply was read: the connection is fine
        except BaseException:
            conn.disconnect()  # a reply may be left half read: never reuse it as it is
            raise
        finally:
            self._free.append(conn)

    def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        packed = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        try:
            try:
                return self._send(packed)
            except rx.NoScriptError:  # Redis restarted, SCRIPT FLUSH, a failover: load it again
                self._client.script_load(script.text)
                return self._send(packed)
        except (rx.ConnectionError, rx.TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        except rx.ResponseError as exc:
            if str(exc).startswith(_OUTAGES):
                raise self._unavailable(exc) from exc
            raise

    def _aclient(self) -> aredis.Redis:
        """The running loop's asyncio client (connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = aredis.Redis.from_url(
                self.config.connection,
                decode_responses=True,
                protocol=3,  # with hiredis RESP3 is no slower than RESP2 (re-measured); without, faster
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=AsyncRetry(NoBackoff(), 1, supported_errors=(rx.ConnectionError,)),
            )
            with self._lock:
                live = {lp: c for lp, c in self._aclients.items() if not lp.is_closed()}
                live[loop] = client
                self._aclients = live
        return client

    async def _aeval(
        self, client: aredis.Redis, script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except rx.NoScriptError:
                await client.script_load(script.text)
                return await client.evalsha(script.sha, len(keys), *keys, *args)
        except (rx.ConnectionError, rx.TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        except (RuntimeError, OSError, AttributeError) as exc:
            # A connection the server reset can fail inside redis-py's asyncio client in ways it
            # neither retries nor maps: under uvloop a write raises RuntimeError ("the handler is
            # closed"), a reconnect racing the reset AttributeError (no writer). Drop the idle
            # connections (the failed one is back in the pool by now; those other calls are
            # using are left to them) and fail closed like any outage.
            await client.connection_pool.disconnect(inuse_connections=False)
            raise self._unavailable(exc) from exc
        except rx.ResponseError as exc:
            if str(exc).startswith(_OUTAGES):
                raise self._unavailable(exc) from exc
            raise

    # -- drivers ------------------------------------------------------------------------
    def _drive(self, flow: Flow[T]) -> T:
        value: Any = None
        for _ in range(_MAX_STEPS):
            try:
                step = flow.send(value)
            except StopIteration as stop:
                return cast(T, stop.value)
            if type(step) is _Call:
                value = self._eval(step.script, step.keys, step.args)
            else:
                value = cast(_Blocking, step).fn()
        raise RuntimeError("spendgate: a Redis ledger operation took too many steps")

    async def _adrive(self, flow: Flow[T]) -> T:
        client = self._aclient()
        value: Any = None
        for _ in range(_MAX_STEPS):
            try:
                step = flow.send(value)
            except StopIteration as stop:
                return cast(T, stop.value)
            if type(step) is _Call:
                value = await self._aeval(client, step.script, step.keys, step.args)
            else:  # reads the durable store: never on the event loop
                value = await asyncio.to_thread(cast(_Blocking, step).fn)
        raise RuntimeError("spendgate: a Redis ledger operation took too many steps")

    def _keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a task until it ends (the loop keeps only weak references)."""
        self._tasks.add(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            pass  # retrieved here, so an abandoned task's failure is not reported twice

    def _ready_flow(self) -> Flow[None]:
        if not self._ready or self._catalog is None:
            yield _Blocking(self._setup)
        if self._owed_bump:
            yield _Blocking(self._pay_bump)

    def _call(self, script: Script, keys: list[str], args: Callable[[], list[Any]]) -> Flow[list[Any]]:
        """One script, again after a generation check when Redis holds another generation."""
        for _ in range(_ATTEMPTS):
            res = yield _Call(script, keys, args())
            if res[0] != "generation":
                return cast(list[Any], res)
            yield _Blocking(partial(self._revalidate, res[1]))
        raise self._unavailable("the generation kept changing")

    # -- setup and the generation marker -----------------------------------------------------
    def _open_durable(self) -> Ledger:
        if self._durable is not None:
            return self._durable
        from spendgate.ledger.registry import open_ledger

        durable = open_ledger(
            self.config.durable,
            self._budgets,
            clock=self.clock,
            create=self.create,
            retention=self.retention,
            **self._durable_options,
        )
        if not isinstance(durable, RequestArchive):
            durable.close()
            raise ConfigError(
                "ledger", f"the durable store {durable.scheme}:// cannot take a Redis ledger's ended requests"
            )
        self._markers = marker_store(durable, self.config.durable, self.config.prefix)
        durable.on_change(self._forward_change)
        self._archive = durable
        self._durable = durable
        return durable

    def _forward_change(self, event: BudgetChanged) -> None:
        self._deliver([event])

    def _durable_now(self) -> Ledger:
        with self._setup_lock:
            return self._open_durable()

    def _setup(self) -> None:
        with self._setup_lock:
            if self._ready and self._catalog is not None:
                return
            self._open_durable()
            self._check_generation()
            # Definitions given at open went to the durable store: every process reloads them.
            self._bump_now("", "")
            self._reload()
            self._ready = True
        self._setup_done()

    def _check_generation(self) -> None:
        """Adopt the generation Redis and the durable store agree on; fail closed otherwise."""
        markers = self._markers
        assert markers is not None
        seen, layout = cast(list[Any], self._redis(lambda c: c.mget(self.k_generation, self.k_layout)))
        marker = markers.get()
        if marker is None:
            if seen:
                raise LedgerUnavailableError(
                    f"spendgate Redis ledger {self._where()} holds a ledger (generation {seen!r}) that "
                    f"the durable store {self.config.durable.rsplit('@', 1)[-1]!r} knows nothing of: "
                    "another durable store, or one replaced. Nothing is admitted (fail closed). Point "
                    "durable= at the store this ledger was set up with, or delete the prefix's keys."
                )
            if not self.create:
                raise LedgerMissingError(
                    f"no spendgate Redis ledger at {self._where()} (the gateway creates it on first start)"
                )
            markers.create(secrets.token_hex(16))
            marker = markers.get()
            assert marker is not None
        if not marker.confirmed:  # a first setup (maybe another process's, interrupted): finish it
            generation = marker.generation

            def first(c: redis.Redis) -> Any:
                pipe = c.pipeline(transaction=True)
                pipe.set(self.k_generation, generation, nx=True)
                pipe.set(self.k_layout, LAYOUT, nx=True)
                pipe.set(self.k_catalog, "0", nx=True)
                pipe.mget(self.k_generation, self.k_layout)
                return pipe.execute()[-1]

            seen, layout = cast(list[Any], self._redis(first))
            if seen == generation:
                markers.confirm(generation)
        if not seen:
            if self.on_reset == "rebuild":
                log.error("spendgate: %s", self._lost(marker.generation))
                self._rebuild_now()
                return
            raise self._lost(marker.generation)
        if seen != marker.generation:
            if seen.startswith(_REBUILDING):
                raise self._unavailable(
                    "a rebuild is in progress, or one was interrupted: it ends by itself, or run "
                    "`spendgate ledger rebuild` again"
                )
            raise LedgerUnavailableError(
                f"spendgate Redis ledger {self._where()} holds generation {seen!r} but the durable "
                f"store holds {marker.generation!r}: they do not belong together (another Redis, a "
                "restore from an old snapshot, or an interrupted rebuild). Nothing is admitted "
                "(fail closed). Run `spendgate ledger rebuild` to start Redis over from the durable log."
            )
        if str(layout) != str(LAYOUT):
            raise self._unavailable(
                f"Redis holds key layout {layout!r}; this spendgate writes layout {LAYOUT}"
            )
        if seen != self._generation:
            self._generation = seen
            self._catalog = None  # a new generation: its catalog version starts over

    def _revalidate(self, seen: str) -> None:
        """A script found another generation in Redis than this process planned with."""
        with self._setup_lock:
            if seen and seen == self._generation and self._catalog is not None:
                return  # another thread adopted it already
            self._check_generation()
            if self._catalog is None:
                self._reload()

    def _rebuild_now(self) -> None:
        raise NotImplementedError  # RedisLedger

    # -- the catalog -----------------------------------------------------------------------
    def _reload(self) -> Catalog:
        """The definitions from the durable store, at the Redis catalog version read first
        (a change made meanwhile moves the version again: the next script says stale)."""
        durable = self._durable_now()
        res = self._drive(self._call(self._s.read, [self.k_generation, self.k_catalog],
                                     lambda: [self._generation, "", "get", self.k_catalog, "hgetall", self.k_limgen]))  # fmt: skip
        version, flat = res[1], res[2]
        generations = dict(zip(flat[::2], flat[1::2], strict=True))
        durable.refresh()
        budgets = {b.id: b for b in durable.budgets()}
        order = tuple(budgets[b] for b in sorted(budgets))
        limits = tuple((limit, generations.get(limit.id, "0")) for limit in durable.limits())
        catalog = Catalog(version, budgets, order, limits, {lim.id: (lim, g) for lim, g in limits})
        self._catalog = catalog
        return catalog

    def _fresh(self) -> Catalog:
        """The catalog, reloaded if another process changed a definition since."""
        self._ensure_ready()
        res = self._drive(self._call(self._s.read, [self.k_generation, self.k_catalog],
                                     lambda: [self._generation, "", "get", self.k_catalog]))  # fmt: skip
        catalog = self._catalog
        if catalog is None or catalog.version != res[1]:
            catalog = self._reload()
        return catalog

    def _ensure_ready(self) -> None:
        self._drive(self._ready_flow())

    def _bump_now(self, limit_id: str, how: str) -> None:
        self._drive(self._call(self._s.admin, self._admin_keys(),
                               lambda: [self._generation, "bump", limit_id, how]))  # fmt: skip

    def _bump(self, limit_id: str = "", how: str = "") -> None:
        """Announce a definition changed in the durable store (every process reloads)."""
        try:
            self._bump_now(limit_id, how)
        except LedgerUnavailableError:
            # Stored but not announced: the next call that reaches Redis announces it.
            self._owed_bump = True
            raise
        self._catalog = None if self._catalog is None else self._catalog._replace(version="")

    def _pay_bump(self) -> None:
        self._bump_now("", "")
        self._owed_bump = False

    def _admin_keys(self, *extra: str) -> list[str]:
        return [self.k_generation, self.k_catalog, self.k_limgen, self.k_leases, *extra]

    def _window(
        self, budget: Budget, window: tuple[datetime, datetime | None]
    ) -> tuple[str, int, int | None, int]:
        """A budget window's hash key, bounds in µs, and the TTL (ms) its hash is given."""
        cache_key = (budget.id, window[0], window[1])
        found = self._windows.get(cache_key)
        if found is None:
            start, end = us(window[0]), None if window[1] is None else us(window[1])
            # Kept a retention past the window's end (never below a day), for usage(at=...) and
            # settles that arrive late; a window that never ends is never dropped.
            ttl = (
                0
                if end is None
                else max((end - start) // 1000 + int(self.retention / timedelta(milliseconds=1)), _DAY_MS)
            )
            found = (f"{self._p}b:{esc(budget.id)}:{start}", start, end, ttl)
            if len(self._windows) > 4096:
                self._windows.clear()
            self._windows[cache_key] = found
        return found

    # -- closing -----------------------------------------------------------------------------
    def _close_clients(self) -> None:
        with self._lock:
            clients, self._aclients = self._aclients, {}
        for loop, client in clients.items():
            if not loop.is_closed() and loop.is_running():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)
        free, self._free = self._free, []
        for conn in free:
            conn.disconnect()
        self._client.close()
