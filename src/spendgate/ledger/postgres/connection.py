"""Connection pools, and the two runners of the ledger's operations (blocking and asyncio).

Every operation is written once, as a sans-IO generator (``Body``): it yields the statements
it needs (``Q``) and receives each one's rows, and returns its result. ``PgStore._execute``
drives it on a connection of the blocking ``ConnectionPool``; ``_aexecute`` on one of the
running event loop's ``AsyncConnectionPool`` (one per loop, made on first use), so the loop
never waits on a socket. ``txn=True`` runs the statements in one transaction (rerun whole on a
deadlock or serialization failure); ``txn=False`` lets each statement commit alone (the hot
path: a reserve or a settle is one statement, one round trip, its row locks held only while
it runs; a statement that hits a deadlock is run again alone).

Connections are autocommit, with ``search_path`` set to the ledger's schema, and
``statement_timeout`` and ``lock_timeout`` set from ``timeout``, as is the wait for a pooled
connection and the connect itself: a server that is down, slow or cut off gives
``LedgerUnavailableError`` within about ``timeout`` instead of a hang. A broken connection is
dropped by the pool, which reconnects in the background; after a connection error the idle
connections are checked (in the background) so that the ones the outage broke are not handed
out one failure at a time after the server is back. A forked child never touches its
parent's pools.

The schema is set up on the first operation (``_setup_body``, one transaction) and retried by
every operation until it succeeds, so a ledger can be opened while its server is down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed, PoolTimeout

from spendgate.ledger.base import LedgerUnavailableError
from spendgate.ledger.postgres.settings import PgSettings

__all__ = ["Body", "BodyFactory", "PgStore", "Q", "Rows", "ServerUnavailableError"]

log = logging.getLogger("spendgate.ledger")

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
Query = str | sql.SQL | sql.Composed


@dataclass(frozen=True, slots=True)
class Q:
    """One statement an operation needs; the runner sends back its rows."""

    sql: Query
    params: Sequence[Any] | None = None
    #: ``params`` is a sequence of parameter rows (executemany); the rows sent back are
    #: ``[(rowcount,)]``.
    many: bool = False


Body = Generator[Q, Rows, T]
BodyFactory = Callable[[], Body[T]]

_ATTEMPTS: Final = 5  # runs of a statement (or transaction) that hit a deadlock
_RETRY: Final = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
# What means the ledger cannot be used now (not a bug in a statement): fail closed.
_OUTAGE: Final = (
    psycopg.OperationalError,  # connection lost, refused, timeouts, shutdown, disk full...
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
    psycopg.errors.InsufficientPrivilege,
    PoolTimeout,
    PoolClosed,
)
# The schema or its objects are gone under a running ledger: never recreated silently.
_GONE: Final = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction)


_INHERITED: list[Any] = []  # a forked child's copies of its parent's pools (see PgStore._forked)


class ServerUnavailableError(LedgerUnavailableError):
    """The server could not be reached or did not answer in time (as opposed to a ledger that
    answered but cannot be used, such as one from a newer spendgate)."""


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read now (poll: no limit on the descriptor's number)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # Windows
    return bool(readable)


def _stale(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether a pooled connection just handed out is broken, found without a round trip: an
    idle connection has nothing to read unless the server hung up (or sent a notice, read
    here). A broken one is then BAD, and the pool drops it when it comes back. (The pool's own
    ``check`` would sleep a back-off between two broken connections: after an outage every
    idle connection is broken, and the first call would wait out its whole timeout.)"""
    if conn.closed:
        return True
    if not _readable(conn.pgconn.socket):
        return False
    try:
        conn.pgconn.consume_input()
    except psycopg.OperationalError:
        return True  # the server closed it
    return conn.pgconn.status != psycopg.pq.ConnStatus.OK


class _Stale(Exception):  # noqa: N818 - control flow, not an error
    """A broken connection came out of the pool: give it back (dropped) and take another."""


def _rows(cur: psycopg.Cursor[Any]) -> Rows:
    return cur.fetchall() if cur.description is not None else []


async def _arows(cur: psycopg.AsyncCursor[Any]) -> Rows:
    return await cur.fetchall() if cur.description is not None else []


def _statement(conn: psycopg.Connection[Any], query: Q) -> Rows:
    """One statement; a deadlock reruns it (an autocommit statement is its own transaction)."""
    for attempt in range(_ATTEMPTS):
        try:
            if query.many:
                with conn.cursor() as cur:
                    cur.executemany(query.sql, query.params or ())
                    return [(cur.rowcount,)]
            return _rows(conn.execute(query.sql, query.params))
        except _RETRY:
            if attempt == _ATTEMPTS - 1 or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                raise  # inside a transaction: the whole transaction runs again
    raise AssertionError("unreachable")  # pragma: no cover


async def _astatement(conn: psycopg.AsyncConnection[Any], query: Q) -> Rows:
    for attempt in range(_ATTEMPTS):
        try:
            if query.many:
                async with conn.cursor() as cur:
                    await cur.executemany(query.sql, query.params or ())
                    return [(cur.rowcount,)]
            return await _arows(await conn.execute(query.sql, query.params))
        except _RETRY:
            if attempt == _ATTEMPTS - 1 or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _drive(conn: psycopg.Connection[Any], body: Body[T]) -> T:
    try:
        query = next(body)
        while True:
            query = body.send(_statement(conn, query))
    except StopIteration as stop:
        result: T = stop.value
        return result


async def _adrive(conn: psycopg.AsyncConnection[Any], body: Body[T]) -> T:
    try:
        query = next(body)
        while True:
            query = body.send(await _astatement(conn, query))
    except StopIteration as stop:
        result: T = stop.value
        return result


class PgStore:
    """This process's pools on one PostgreSQL schema, and the runners of operations on them.

    A subclass provides ``_setup_body`` (the schema, in one transaction; run before the first
    operation and by every operation until it succeeds) and ``_setup_done`` (what to keep of
    its result; it must set ``_ready``).
    """

    _WHAT: ClassVar[str] = "spendgate ledger"

    def __init__(self, settings: PgSettings, *, create: bool, lock_timeout: float | None = None) -> None:
        self.settings = settings
        self.create = create
        self.timeout = settings.timeout
        lock = settings.timeout if lock_timeout is None else lock_timeout
        self._session = sql.SQL(
            "SET search_path TO {}; SET statement_timeout = {}; SET lock_timeout = {}; "
            "SET idle_in_transaction_session_timeout = {}; SET synchronous_commit TO {}"
        ).format(
            sql.Identifier(settings.schema),
            sql.Literal(int(max(settings.timeout, lock) * 1000)),
            sql.Literal(int(lock * 1000)),
            sql.Literal(int(max(settings.timeout, lock) * 4000)),  # a client that vanished mid-transaction
            sql.Literal(settings.synchronous_commit),
        )
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._apools: dict[asyncio.AbstractEventLoop, _LoopPool] = {}
        self._checking = False
        self._ready = False
        self._tasks: set[asyncio.Task[Any]] = set()  # work nobody awaits (kept from the GC)

    # -- what a subclass provides ------------------------------------------------------------
    def _setup_body(self) -> Body[Any]:
        raise NotImplementedError

    def _setup_done(self, value: Any) -> None:
        self._ready = True

    # -- errors ----------------------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> LedgerUnavailableError:
        detail = self.settings.scrub(str(exc).strip() or type(exc).__name__)
        return ServerUnavailableError(
            f"{self._WHAT} {self.settings.display} is unavailable ({detail}); refusing to admit requests "
            "it cannot account for (fail closed). Check the server, or open the ledger with "
            "fail_open=True to admit unrecorded."
        )

    def _gone(self, exc: BaseException) -> LedgerUnavailableError:
        detail = self.settings.scrub(str(exc).strip())
        return LedgerUnavailableError(
            f"{self._WHAT} {self.settings.display}: its tables are gone ({detail}); was the schema "
            "dropped? Nothing is recreated under a running process: restart to set it up again."
        )

    # -- pools -----------------------------------------------------------------------------
    def _forked(self) -> None:
        """In a forked child: forget the parent's pools (their sockets are the parent's). They
        are kept referenced, never collected: a collected connection would say goodbye to the
        server on the parent's socket and end the parent's session."""
        if os.getpid() != self._pid:
            _INHERITED.append((self._pool, self._apools))
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._pool = None
            self._apools = {}
            self._checking = False

    def _pool_options(self) -> dict[str, Any]:
        return {
            "min_size": self.settings.pool_min,
            "max_size": self.settings.pool_max,
            "kwargs": {"autocommit": True},
            "timeout": self.timeout,
            # Short, so that after an outage a caller's demand starts a fresh attempt soon
            # instead of waiting out a long back-off.
            "reconnect_timeout": max(5.0, 2 * self.timeout),
            "name": f"spendgate {self.settings.display}",
        }

    def _sync_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        self._forked()
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is None:

                def configure(conn: psycopg.Connection[Any]) -> None:
                    conn.execute(self._session)

                self._pool = ConnectionPool(
                    self.settings.conninfo,
                    configure=configure,
                    open=True,
                    **self._pool_options(),
                )
            return self._pool

    async def _async_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        self._forked()
        loop = asyncio.get_running_loop()
        entry = self._apools.get(loop)
        if entry is None:
            conns: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()

            async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
                conns.add(conn)
                await conn.execute(self._session)

            pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                self.settings.conninfo,
                configure=configure,
                open=False,
                **self._pool_options(),
            )
            entry = _LoopPool(pool, loop.create_task(pool.open()), conns)
            with self._lock:
                live = {lp: e for lp, e in self._apools.items() if not lp.is_closed()}
                dead = [e for lp, e in self._apools.items() if lp.is_closed()]
                live[loop] = entry
                self._apools = live
            for each in dead:
                each.finish()
        if not entry.opening.done():
            await asyncio.shield(entry.opening)
        entry.opening.result()
        return entry.pool

    def _recheck(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        """Check the idle connections in the background: an outage broke them all."""
        if self._checking:
            return
        self._checking = True

        def run() -> None:
            try:
                pool.check()
            except Exception:  # the pool may be closing; the next failure checks again
                log.debug("spendgate: checking pooled connections failed", exc_info=True)
            finally:
                self._checking = False

        threading.Thread(target=run, name="spendgate-pg-check", daemon=True).start()

    def _arecheck(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]) -> None:
        if self._checking:
            return
        self._checking = True

        async def run() -> None:
            try:
                await pool.check()
            except Exception:
                log.debug("spendgate: checking pooled connections failed", exc_info=True)
            finally:
                self._checking = False

        self._spawn(run())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def close(self) -> None:
        """Close this process's pools (they open again on the next use)."""
        self._forked()
        with self._lock:
            pool, self._pool = self._pool, None
            apools, self._apools = self._apools, {}
        if pool is not None:
            pool.close(timeout=self.timeout)
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, entry in apools.items():
            if loop is running:
                self._spawn(entry.pool.close(timeout=self.timeout))
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(entry.pool.close(timeout=self.timeout), loop)
            else:
                entry.finish()  # its loop is gone, and the pool's tasks with it

    async def aclose(self) -> None:
        """``close``, awaiting the running loop's pool. Await it before the loop ends: on
        Python 3.11, a pool still open when ``asyncio.run`` cancels its tasks can hold the
        loop's shutdown up (its scheduler's ``asyncio.wait_for`` may swallow the cancellation
        while a reconnection is pending)."""
        loop = asyncio.get_running_loop()
        await self._drain(loop)
        with self._lock:
            entry = self._apools.pop(loop, None)
        if entry is not None:
            await entry.pool.close(timeout=self.timeout)
        self.close()

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let the writes that run on without their callers (a cancelled caller's settle, the
        release of a reservation whose caller was cancelled) finish, for up to ``timeout``:
        closed under them, the pool would leave those reservations open until their lease."""
        deadline = loop.time() + self.timeout
        while True:
            await asyncio.sleep(0)  # a finished reservation's callback spawns its release first
            pending = [task for task in self._tasks if not task.done() and task.get_loop() is loop]
            left = deadline - loop.time()
            if not pending or left <= 0:
                return
            await asyncio.wait(pending, timeout=left)

    # -- running operations ------------------------------------------------------------------
    def _classify(self, exc: BaseException) -> LedgerUnavailableError:
        if isinstance(exc, _GONE):
            return self._gone(exc)
        return self._unavailable(exc)

    @staticmethod
    def _broken(exc: BaseException) -> bool:
        """A connection-level failure (no SQLSTATE, or the connection-exception class)."""
        if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return False
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith("08") or state.startswith("57P")

    def _execute(self, factory: BodyFactory[T], *, txn: bool) -> T:
        """Run an operation on the blocking pool; LedgerUnavailableError when the server fails."""
        if not self._ready:
            self._setup_done(self._execute_raw(self._setup_body, txn=True))
        return self._execute_raw(factory, txn=txn)

    def _execute_raw(self, factory: BodyFactory[T], *, txn: bool) -> T:
        pool = self._sync_pool()
        tries = _Tries(self.settings.pool_max)
        while True:
            try:
                with pool.connection(timeout=self.timeout) as conn:
                    if _stale(conn):
                        raise _Stale
                    if not txn:
                        return _drive(conn, factory())
                    with conn.transaction():
                        return _drive(conn, factory())
            except _Stale:
                if tries.stale():
                    raise self._unavailable(
                        psycopg.OperationalError("the pooled connections are broken")
                    ) from None
                if tries.broken == 1:
                    self._recheck(pool)  # the others idle beside it are likely broken too
            except _RETRY as exc:
                # A transaction runs again whole; lone statements were run again already
                # (``_statement``), and those before them have committed.
                if not txn or tries.deadlock():
                    raise self._unavailable(exc) from None
            except _GONE as exc:
                raise self._gone(exc) from None
            except _OUTAGE as exc:
                if self._broken(exc):
                    self._recheck(pool)
                raise self._unavailable(exc) from None

    async def _aexecute(self, factory: BodyFactory[T], *, txn: bool) -> T:
        """``_execute`` on the running loop's pool."""
        if not self._ready:
            self._setup_done(await self._aexecute_raw(self._setup_body, txn=True))
        return await self._aexecute_raw(factory, txn=txn)

    async def _aexecute_raw(self, factory: BodyFactory[T], *, txn: bool) -> T:
        # statement_timeout is the server's: a server that accepts and never answers (hung, or a
        # partition that drops nothing) never applies it. The event loop bounds the whole call:
        # the pool wait, one statement's timeout, and a little room.
        # The call runs as a task the caller stops waiting for, rather than under a cancelling
        # timeout: on Python 3.11 the pool's own ``asyncio.wait_for`` can swallow a cancellation,
        # and the caller would wait on. A call that ends after the deadline still ends (a reserve
        # it made is held until its lease expires: charged, never lost).
        deadline = 2 * self.timeout + 0.5
        task = asyncio.ensure_future(self._aexecute_once(factory, txn=txn))
        done, _ = await asyncio.wait({task}, timeout=deadline)
        if not done:
            task.cancel()
            task.add_done_callback(_retrieve)
            raise self._unavailable(
                psycopg.OperationalError(f"the server did not answer within {deadline:g} s")
            )
        return task.result()

    async def _aexecute_once(self, factory: BodyFactory[T], *, txn: bool) -> T:
        try:
            pool = await self._async_pool()
        except _OUTAGE as exc:
            raise self._unavailable(exc) from None
        tries = _Tries(self.settings.pool_max)
        while True:
            try:
                async with pool.connection(timeout=self.timeout) as conn:
                    if _stale(conn):
                        raise _Stale
                    if not txn:
                        return await _adrive(conn, factory())
                    async with conn.transaction():
                        return await _adrive(conn, factory())
            except _Stale:
                if tries.stale():
                    raise self._unavailable(
                        psycopg.OperationalError("the pooled connections are broken")
                    ) from None
                if tries.broken == 1:
                    self._arecheck(pool)
            except _RETRY as exc:
                # A transaction runs again whole; lone statements were run again already
                # (``_statement``), and those before them have committed.
                if not txn or tries.deadlock():
                    raise self._unavailable(exc) from None
            except _GONE as exc:
                raise self._gone(exc) from None
            except _OUTAGE as exc:
                if self._broken(exc):
                    self._arecheck(pool)
                raise self._unavailable(exc) from None


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Take an abandoned call's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class _Tries:
    """How often a runner may try again: after a deadlock (the whole transaction), after a
    broken connection from the pool (at most one per connection the pool can hold)."""

    def __init__(self, pool_max: int) -> None:
        self.deadlocks = 0
        self.broken = 0
        self.pool_max = pool_max

    def deadlock(self) -> bool:
        """Count one; True when there were too many."""
        self.deadlocks += 1
        return self.deadlocks >= _ATTEMPTS

    def stale(self) -> bool:
        """Count one broken connection; True past the pool's size (the pool keeps handing out
        broken ones: give up)."""
        self.broken += 1
        return self.broken > self.pool_max + 1


@dataclass(slots=True)
class _LoopPool:
    """One event loop's pool, the task opening it, and its connections (to close them when
    the loop is gone: the pool cannot close itself without its loop)."""

    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    opening: asyncio.Task[None]
    conns: weakref.WeakSet[psycopg.AsyncConnection[Any]]

    def finish(self) -> None:
        for conn in list(self.conns):
            try:
                conn.pgconn.finish()
            except Exception:  # already closed
                log.debug("spendgate: closing a connection of a closed event loop failed", exc_info=True)
