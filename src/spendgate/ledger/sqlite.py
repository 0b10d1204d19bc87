"""The embedded default: one SQLite file shared by every thread and process on a machine.

WAL mode (readers never block the writer), ``BEGIN IMMEDIATE`` for every write
(the write lock is taken up front, so check-then-update cannot interleave),
``synchronous=NORMAL`` (durable across a process crash; a power cut may lose
the last commits, never corrupt the file), one connection per thread opened
lazily per process id, so a forked child never touches its parent's handle.

Amounts are INTEGER nano-USD, instants INTEGER microseconds since the Unix
epoch (UTC). The file holds the budgets too (definitions and limits), so every
process enforces the same set: see docs/ledger.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, NamedTuple, TypeVar

from spendgate.budgets import EPOCH, Attributes, Budget, parse_instance_key
from spendgate.clock import Clock
from spendgate.errors import ConfigError
from spendgate.ledger.base import (
    DEFAULT_RETENTION,
    BudgetChanged,
    BudgetLine,
    BudgetUsage,
    ChangeKind,
    Event,
    Ledger,
    LedgerUnavailableError,
    Refusal,
    ReleaseOutcome,
    ReleaseStatus,
    RequestIdReusedError,
    RequestRecord,
    Reservation,
    SettleOutcome,
    ThresholdCrossed,
    UnknownReservationError,
)
from spendgate.ledger.group_commit import GroupCommit, Job, Outcome, future_job
from spendgate.money import Money

__all__ = ["SCHEMA_VERSION", "SQLiteLedger"]

log = logging.getLogger("spendgate.ledger")

T = TypeVar("T")
_US: Final = timedelta(microseconds=1)
_FIRST_POLL: Final = 50e-6  # seconds between tries for the write lock: doubling up to
_LAST_POLL: Final = 1e-3  # 1 ms, so a released lock is noticed within about that
_DIM_COLUMNS: Final = {
    "key": "dim_key",
    "user": "dim_user",
    "team": "dim_team",
    "project": "dim_project",
    "customer": "dim_customer",
    "model": "dim_model",
}

# -- schema -------------------------------------------------------------------------
# PRAGMA user_version is the schema version; MIGRATIONS[n] takes a file from n to n+1.
# Add a migration, never edit a shipped one.

_V1: Final = [
    """CREATE TABLE budgets (
        id             TEXT PRIMARY KEY,
        definition     TEXT NOT NULL,     -- Budget.to_config() without the limit, as JSON
        config_limit   INTEGER NOT NULL,  -- nano-USD, as last given by put_budget
        limit_override INTEGER,           -- nano-USD from set_limit(); wins until config_limit changes
        updated_at     INTEGER NOT NULL
    )""",
    # Every budget change, so other processes can tell their subscribers what happened.
    """CREATE TABLE changes (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        budget_id      TEXT NOT NULL,
        kind           TEXT NOT NULL CHECK (kind IN ('put', 'remove', 'limit', 'reset')),
        new_limit      INTEGER,
        previous_limit INTEGER,
        instance       TEXT,
        at             INTEGER NOT NULL
    )""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO meta (key, value) VALUES ('budgets_version', 0), ('last_purge', 0)",
    # One row per budget instance per window: the numbers every admission checks.
    """CREATE TABLE spend (
        budget_id    TEXT NOT NULL,
        window_start INTEGER NOT NULL,            -- µs since epoch; 0 for a budget without window
        instance     TEXT NOT NULL,               -- '' or 'user=alice'
        window_end   INTEGER,                     -- µs; NULL when the window never resets
        spent        INTEGER NOT NULL DEFAULT 0,  -- nano-USD settled or expired
        reserved     INTEGER NOT NULL DEFAULT 0,  -- nano-USD held by open reservations
        alerted      INTEGER NOT NULL DEFAULT 0,  -- highest threshold (%) already announced
        PRIMARY KEY (budget_id, window_start, instance)
    ) WITHOUT ROWID""",
    # Sent threshold alerts: the unique key makes each one go out once per window.
    """CREATE TABLE alerts (
        budget_id    TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        instance     TEXT NOT NULL,
        threshold    INTEGER NOT NULL,
        spent        INTEGER NOT NULL,
        limit_nanos  INTEGER NOT NULL,
        request_id   TEXT NOT NULL,
        sent_at      INTEGER NOT NULL,
        PRIMARY KEY (budget_id, window_start, instance, threshold)
    ) WITHOUT ROWID""",
    # Every request: its reservation while open, then the request log (kept for ``retention``).
    """CREATE TABLE requests (
        request_id   TEXT PRIMARY KEY,
        state        TEXT NOT NULL CHECK (state IN ('open', 'settled', 'released', 'expired')),
        estimate     INTEGER NOT NULL,  -- nano-USD held while open
        cost         INTEGER,           -- nano-USD charged when it ended
        started_at   INTEGER NOT NULL,  -- µs: when it was reserved (the ledger's clock)
        expires_at   INTEGER NOT NULL,  -- µs: end of the lease
        finished_at  INTEGER,           -- µs: when it was settled, released or expired
        lines        TEXT NOT NULL,     -- JSON [[budget_id, instance, window_start, window_end], ...]
        dim_key      TEXT,
        dim_user     TEXT,
        dim_team     TEXT,
        dim_project  TEXT,
        dim_customer TEXT,
        dim_model    TEXT,
        tags         TEXT,              -- JSON array, NULL when none
        status       TEXT,              -- RequestRecord.status ('ok', 'error', ...; 'expired')
        model        TEXT,              -- the model as billed (may differ from dim_model)
        usage        TEXT,              -- JSON {"input_tokens": 12, ...}
        breakdown    TEXT               -- JSON {"input": "0.00003", ...} decimal USD strings
    ) WITHOUT ROWID""",
    "CREATE INDEX requests_open_by_expiry ON requests (expires_at) WHERE state = 'open'",
    "CREATE INDEX requests_by_time ON requests (started_at)",
    *(
        f"CREATE INDEX requests_by_{dim} ON requests ({col}, started_at) WHERE {col} IS NOT NULL"
        for dim, col in _DIM_COLUMNS.items()
    ),
]
MIGRATIONS: Final[list[list[str]]] = [_V1]
SCHEMA_VERSION: Final = len(MIGRATIONS)

# -- statements (constant text, so sqlite3's statement cache prepares each once) -----------

_SQL_VERSION = "SELECT value FROM meta WHERE key = 'budgets_version'"
_SQL_OPEN = """
    INSERT INTO requests (request_id, state, estimate, started_at, expires_at, lines,
                          dim_key, dim_user, dim_team, dim_project, dim_customer, dim_model, tags)
    VALUES (?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (request_id) DO NOTHING"""
# Admit into one line: insert the row or add to it, only while spent + reserved + estimate <= limit.
_SQL_HOLD = """
    INSERT INTO spend (budget_id, window_start, instance, window_end, reserved)
    SELECT :budget, :start, :instance, :end, :estimate WHERE :estimate <= :limit
    ON CONFLICT (budget_id, window_start, instance) DO UPDATE
        SET reserved = reserved + excluded.reserved
        WHERE spent + reserved + excluded.reserved <= :limit"""
_SQL_LINE = "SELECT spent, reserved FROM spend WHERE budget_id = ? AND window_start = ? AND instance = ?"
_SQL_SETTLE = """
    UPDATE requests SET state = 'settled', cost = ?, finished_at = ?, status = ?, model = ?, usage = ?,
                        breakdown = ?
    WHERE request_id = ? AND state = 'open'
    RETURNING estimate, lines"""
_SQL_RELEASE = """
    UPDATE requests SET state = 'released', cost = 0, finished_at = ?
    WHERE request_id = ? AND state = 'open'
    RETURNING estimate, lines"""
_SQL_EXPIRE = """
    UPDATE requests SET state = 'expired', cost = estimate, finished_at = ?, status = 'expired'
    WHERE request_id = ? AND state = 'open'
    RETURNING estimate, lines"""
_SQL_ENDED = "SELECT state, estimate, cost FROM requests WHERE request_id = ?"
_SQL_FORGET = "DELETE FROM requests WHERE request_id = ? AND state = 'open'"
_SQL_LOGGED_AT = "SELECT started_at FROM requests WHERE request_id = ? AND state IN ('settled', 'expired')"
_SQL_CHARGE = """
    UPDATE spend SET reserved = reserved - ?, spent = spent + ?
    WHERE budget_id = ? AND window_start = ? AND instance = ?
    RETURNING spent, reserved, alerted"""
_SQL_RELEASE_LINE = """
    UPDATE spend SET reserved = reserved - ?
    WHERE budget_id = ? AND window_start = ? AND instance = ?"""
_SQL_ALERT = """
    INSERT INTO alerts (budget_id, window_start, instance, threshold, spent, limit_nanos, request_id, sent_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT DO NOTHING"""
_SQL_DUE = """
    SELECT request_id FROM requests
    WHERE state = 'open' AND expires_at <= ? ORDER BY expires_at LIMIT ?"""
_SQL_LOG_COLUMNS = """
    request_id, status, started_at, finished_at, cost, dim_key, dim_user, dim_team, dim_project,
    dim_customer, dim_model, tags, model, usage, breakdown"""


def _us(when: datetime) -> int:
    """Exact microseconds since the epoch (no float on the way)."""
    return (when - EPOCH) // _US


def _dt(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


class _Rollback(Exception):  # noqa: N818 - control flow, not an error
    """Leave the transaction without writing, and return ``value``."""

    def __init__(self, value: object) -> None:
        self.value = value


class _Catalog(NamedTuple):
    version: int
    budgets: dict[str, Budget]  # with their effective limits
    order: tuple[Budget, ...]


class _Plan(NamedTuple):
    """A reservation worked out before the write lock is taken."""

    catalog: _Catalog
    request_id: str
    attributes: Attributes
    estimate: int
    now: datetime
    expires: datetime
    matched: list[tuple[Budget, str, tuple[datetime, datetime | None]]]
    row: tuple[Any, ...]
    holds: list[dict[str, Any]]


@dataclass(slots=True)
class _Op:
    """One write: ``body`` runs inside a transaction (alone, or batched with others by the
    event loop's group commit); ``done`` and ``failed`` run on the caller's thread with its
    outcome (events are delivered there), ``failed`` only for an unavailable ledger (fail-open
    or raise)."""

    body: Callable[[sqlite3.Connection], Any]
    done: Callable[[Any], Any]
    failed: Callable[[LedgerUnavailableError], Any]
    #: For a caller that stopped waiting: what to do with the result it did not take.
    orphan: Callable[[Any], None] | None = None

    def finish(self, ok: bool, value: Any) -> Any:
        if ok:
            return self.done(value)
        if isinstance(value, LedgerUnavailableError):
            return self.failed(value)
        raise value


def _fresh(events: list[Event], body: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """``body`` that forgets the thresholds of an earlier run: a write run again (its first run
    rolled back) must not announce them twice. Budget changes stay: the catalog they describe
    was installed when they were heard, and a rerun does not hear them again."""

    def run(conn: sqlite3.Connection) -> T:
        events[:] = [e for e in events if not isinstance(e, ThresholdCrossed)]
        return body(conn)

    return run


def _consume(future: Any) -> None:
    """Retrieve a housekeeping job's exception (already logged) so asyncio does not warn."""
    if not future.cancelled():
        future.exception()


class _Local(threading.local):
    pid: int = -1
    generation: int = -1
    writer: sqlite3.Connection | None = None
    reader: sqlite3.Connection | None = None
    #: The catalog a change in this thread's open transaction will leave, installed at COMMIT.
    pending: _Catalog | None = None


class SQLiteLedger(Ledger):
    """A ledger in one SQLite file; safe for many threads and processes on one machine.

    ``busy_timeout`` (seconds) bounds the wait for the write lock before the
    ledger counts as unavailable. ``expiry_interval`` spaces the opportunistic
    lease expiry that ``reserve`` runs; ``purge_interval`` the retention purge.
    Ended requests are the request log, kept for ``retention``: that is also how
    long a settle retry is recognised as one. ``wal_autocheckpoint`` (pages) is
    raised from SQLite's 1000 because every commit appends its pages to the WAL
    and a checkpoint (two fsyncs) every ~100 cycles put milliseconds into the
    p99; ``page_size`` applies only when the file is created.
    """

    scheme = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        budgets: Iterable[Budget] = (),
        *,
        clock: Clock | None = None,
        retention: timedelta = DEFAULT_RETENTION,
        fail_open: bool = False,
        busy_timeout: float = 10.0,
        page_size: int = 4096,
        wal_autocheckpoint: int = 4000,
        expiry_interval: timedelta = timedelta(seconds=1),
        purge_interval: timedelta = timedelta(minutes=1),
    ) -> None:
        super().__init__(clock=clock, retention=retention, fail_open=fail_open)
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file::memory:"):
            raise ConfigError("ledger", "an in-memory SQLite file is per connection; use memory:// instead")
        self.busy_timeout = busy_timeout
        self.page_size = page_size
        self.wal_autocheckpoint = wal_autocheckpoint
        self.expiry_interval = expiry_interval
        self.purge_interval = purge_interval
        self._local = _Local()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._catalog = _Catalog(-1, {}, ())
        self._next_expiry = EPOCH
        self._next_purge = EPOCH
        self._unrecorded: deque[str] = deque(maxlen=10_000)  # fail-open admissions
        self._generation = 0  # bumped by close(), so every thread reconnects
        self._groups: dict[asyncio.AbstractEventLoop, GroupCommit] = {}  # asyncio callers' batches
        self._ready = False
        self._pending: list[Budget] = list(budgets)  # applied once the file is reachable
        try:
            self._setup()
        except LedgerUnavailableError:
            if not fail_open:
                raise
            log.error("spendgate: ledger %s unavailable at start; FAIL-OPEN: admitting unrecorded", self.path)

    # -- connections --------------------------------------------------------------------
    def _conn(self, *, writer: bool) -> sqlite3.Connection:
        """This thread's connection for writing, or for reading (two, so each has its own busy handling)."""
        local = self._local
        pid = os.getpid()
        if local.pid == pid and local.generation == self._generation:
            conn = local.writer if writer else local.reader
            if conn is not None:
                return conn
        else:
            local.writer = local.reader = None
            local.pid, local.generation = pid, self._generation
        if pid != self._pid:  # a forked child: nothing of the parent's may be reused
            self._pid, self._lock, self._conns = pid, threading.Lock(), []
            self._catalog = _Catalog(-1, {}, ())
        try:
            # The writer never sleeps in SQLite's busy handler (see _begin); readers rarely wait at all.
            conn = sqlite3.connect(
                self.path,
                timeout=0 if writer else self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(self.wal_autocheckpoint)}")
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        if writer:
            local.writer = conn
        else:
            local.reader = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, polling for the write lock every few hundred µs up to ``busy_timeout``.

        SQLite's own busy handler backs off to 100 ms sleeps, so under steady
        contention a waiter can lose for seconds; short jittered polls keep the
        wait close to the time the lock is actually held.
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
        deadline = time.monotonic() + self.busy_timeout
        delay = _FIRST_POLL
        while True:
            time.sleep(delay * (0.5 + random.random()))
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            delay = min(delay * 2, _LAST_POLL)

    def close(self) -> None:
        """Close this process's connections (call it when no thread uses the ledger any more).
        Writes still queued by asyncio callers fail as unavailable."""
        with self._lock:
            groups, self._groups = self._groups, {}
        for group in groups.values():
            group.close()
        with self._lock:
            conns, self._conns = self._conns, []
            self._generation += 1
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                conn.close()

    def _unavailable(self, exc: BaseException) -> LedgerUnavailableError:
        return LedgerUnavailableError(
            f"spendgate ledger {self.path!r} is unavailable ({exc}); refusing to admit requests "
            "it cannot account for (fail closed). Check the file and its directory, or open "
            "the ledger with fail_open=True to admit unrecorded."
        )

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one BEGIN IMMEDIATE transaction; sqlite errors mean unavailable."""
        if not self._ready or self._pending:
            self._setup()
        conn = self._conn(writer=True)
        try:
            self._begin(conn)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        try:
            result = body(conn)
            conn.execute("COMMIT")
            pending, self._local.pending = self._local.pending, None
            if pending is not None:
                self._install(pending)
            return result
        except _Rollback as done:
            self._rollback(conn)
            return done.value  # type: ignore[return-value]
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            self._rollback(conn)
            raise  # a bug, not an outage
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._unavailable(exc) from exc
        except BaseException:
            self._rollback(conn)
            raise

    def _write_batch(self, bodies: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Outcome] | None:
        """Run ``bodies`` in one BEGIN IMMEDIATE transaction and one commit. A body that refuses
        (``_Rollback``) has written nothing or undone its own writes; one that fails otherwise
        sends the batch back to one transaction per body. An SQLite error that is not a bug
        makes the whole batch unavailable. None, with nothing done, when another connection
        holds the write lock (the caller tries again later)."""
        try:
            if not self._ready or self._pending:
                self._setup()
            conn = self._conn(writer=True)
            conn.execute("BEGIN IMMEDIATE")
        except LedgerUnavailableError as exc:
            return [(False, exc)] * len(bodies)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return None
            return [(False, self._unavailable(exc))] * len(bodies)
        except sqlite3.Error as exc:
            return [(False, self._unavailable(exc))] * len(bodies)
        outcomes: list[Outcome] = []
        try:
            for body in bodies:
                try:
                    outcomes.append((True, body(conn)))
                except _Rollback as done:  # its body wrote nothing, or undid what it wrote
                    outcomes.append((True, done.value))
                except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
                    break  # a bug in one write, not an outage: handled below
                except sqlite3.Error:
                    raise
                except Exception:
                    break
            else:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            return [(False, self._unavailable(exc))] * len(bodies)
        except BaseException:
            self._rollback(conn)
            raise
        if len(outcomes) < len(bodies):
            # A write failed part-way and may have left some of its rows changed: throw the whole
            # batch away and run each write in a transaction of its own (its own rollback).
            self._rollback(conn)
            log.warning(
                "spendgate: a ledger write failed inside a group commit; running the batch one by one"
            )
            return [self._alone(body) for body in bodies]
        pending, self._local.pending = self._local.pending, None
        if pending is not None:
            self._install(pending)
        return outcomes

    def _alone(self, body: Callable[[sqlite3.Connection], Any]) -> Outcome:
        try:
            return True, self._write(body)
        except Exception as exc:
            return False, exc

    def _run(self, op: _Op) -> Any:
        """Run one write in its own transaction, on this thread."""
        try:
            value = self._write(op.body)
        except LedgerUnavailableError as exc:
            return op.failed(exc)
        return op.done(value)

    def _group(self) -> GroupCommit:
        """The running loop's batches (one per loop: each runs on its own thread's connection)."""
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = GroupCommit(
                loop,
                self._write_batch,
                busy_timeout=self.busy_timeout,
                unavailable=lambda: self._unavailable(TimeoutError("the write lock stayed busy")),
                after_batch=self._maybe_purge_async,
            )
            with self._lock:
                live = {lp: g for lp, g in self._groups.items() if not lp.is_closed()}
                live[loop] = group
                self._groups = live
        return group

    async def _arun(self, ops: Sequence[_Op]) -> Any:
        """Queue ``ops`` for this loop's group commit; the last one's result (or error)."""
        jobs: list[Job] = []
        futures = []
        for op in ops:
            job, future = future_job(op.body, op.finish, op.orphan)
            jobs.append(job)
            futures.append(future)
        orphan = ops[-1].orphan
        for future in futures[:-1]:
            future.add_done_callback(_consume)
        self._group().submit(jobs)
        last = futures[-1]
        try:
            return await last
        except asyncio.CancelledError:
            # Cancelled after the result was set but before this task resumed: the future was
            # not cancelled, so deliver() did not hand the result to the orphan handler.
            if orphan is not None and last.done() and not last.cancelled() and last.exception() is None:
                orphan(last.result())
            raise

    def _read(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` on one consistent snapshot (a deferred read transaction)."""
        if not self._ready or self._pending:
            self._setup()
        conn = self._conn(writer=False)
        try:
            conn.execute("BEGIN")
            try:
                return body(conn)
            finally:
                self._rollback(conn)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    def _rollback(self, conn: sqlite3.Connection) -> None:
        self._local.pending = None  # a change that did not commit must not reach the catalog
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the connection is broken anyway
                conn.execute("ROLLBACK")

    # -- schema and budgets from config -------------------------------------------------
    def _setup(self) -> None:
        conn = self._conn(writer=False)
        try:
            conn.execute(f"PRAGMA page_size = {int(self.page_size)}")  # only takes effect on a new file
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("spendgate: %s could not use WAL (journal_mode=%s)", self.path, mode)
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise LedgerUnavailableError(
                        f"spendgate ledger {self.path!r} has schema version {version}, newer than this "
                        f"spendgate understands ({SCHEMA_VERSION}); upgrade spendgate"
                    )
                for statements in MIGRATIONS[version:]:
                    for statement in statements:
                        conn.execute(statement)
                # PRAGMA takes no parameters; the value is our own integer.
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            finally:
                self._rollback(conn)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        self._ready = True
        events: list[Event] = []
        budgets, self._pending = self._pending, []
        if budgets:

            def put_all(conn: sqlite3.Connection) -> None:
                for budget in budgets:
                    self._put_in(conn, budget, events)

            try:
                self._write(put_all)
            except BaseException:
                self._pending = budgets  # try again on the next call
                raise
        self._deliver(events)

    def _sync(self, conn: sqlite3.Connection, events: list[Event]) -> _Catalog:
        """The budgets as of this transaction; reloads when another process changed them.

        The thread that installs a newer catalog reports the changes in between
        (to this process's subscribers), so each is heard once per process.
        """
        version = conn.execute(_SQL_VERSION).fetchone()[0]
        pending = self._local.pending
        if pending is not None and pending.version == version:
            return pending  # this transaction's own change
        catalog = self._catalog
        if version == catalog.version:
            return catalog
        rows = conn.execute("SELECT id, definition, config_limit, limit_override FROM budgets ORDER BY id")
        budgets: dict[str, Budget] = {}
        for budget_id, definition, config_limit, override in rows:
            config = json.loads(definition)
            config["limit"] = str(Money(override if override is not None else config_limit).to_decimal())
            budgets[budget_id] = Budget.from_config(config, where=f"budgets[{budget_id!r}]")
        fresh = _Catalog(version, budgets, tuple(budgets.values()))
        with self._lock:
            since = self._catalog.version
            if since >= version:
                return fresh  # another thread got there first (or this snapshot is older)
            self._catalog = fresh
        if since >= 0:
            changes = conn.execute(
                "SELECT budget_id, kind, new_limit, previous_limit, instance FROM changes "
                "WHERE seq > ? AND seq <= ? ORDER BY seq",
                (since, version),
            )
            for budget_id, kind, new_limit, previous_limit, instance in changes:
                events.append(
                    BudgetChanged(
                        budget_id,
                        kind,
                        None if new_limit is None else Money(new_limit),
                        None if previous_limit is None else Money(previous_limit),
                        instance,
                    )
                )
        return fresh

    def _install(self, catalog: _Catalog) -> None:
        with self._lock:
            if catalog.version > self._catalog.version:  # never go back to an older snapshot
                self._catalog = catalog

    def _record_change(
        self,
        conn: sqlite3.Connection,
        budget_id: str,
        kind: ChangeKind,
        new_limit: int | None,
        previous_limit: int | None,
        instance: str | None,
        budgets: dict[str, Budget],
        events: list[Event],
    ) -> None:
        """Log a change, bump the version, and update this process's catalog (no reload, no echo)."""
        cur = conn.execute(
            "INSERT INTO changes (budget_id, kind, new_limit, previous_limit, instance, at) VALUES (?, ?, ?, ?, ?, ?)",
            (budget_id, kind, new_limit, previous_limit, instance, _us(self.clock.now())),
        )
        seq = cur.lastrowid
        assert seq is not None
        conn.execute("UPDATE meta SET value = ? WHERE key = 'budgets_version'", (seq,))
        self._local.pending = _Catalog(seq, budgets, tuple(budgets[b] for b in sorted(budgets)))
        events.append(
            BudgetChanged(
                budget_id,
                kind,
                None if new_limit is None else Money(new_limit),
                None if previous_limit is None else Money(previous_limit),
                instance,
            )
        )

    def _put_in(self, conn: sqlite3.Connection, budget: Budget, events: list[Event]) -> None:
        catalog = self._sync(conn, events)
        config = budget.to_config()
        del config["limit"]
        definition = json.dumps(config, sort_keys=True, separators=(",", ":"))
        limit = budget.limit.nanos
        row = conn.execute(
            "SELECT definition, config_limit, limit_override FROM budgets WHERE id = ?", (budget.id,)
        ).fetchone()
        previous: int | None = None
        override: int | None = None
        if row is None:
            conn.execute(
                "INSERT INTO budgets (id, definition, config_limit, limit_override, updated_at) "
                "VALUES (?, ?, ?, NULL, ?)",
                (budget.id, definition, limit, _us(self.clock.now())),
            )
        else:
            old_definition, old_limit, old_override = row
            if old_definition == definition and old_limit == limit:
                return  # every process starts with the same config: nothing changed
            previous = old_override if old_override is not None else old_limit
            # A set_limit() stays in force until the configured limit itself changes.
            override = old_override if old_limit == limit else None
            conn.execute(
                "UPDATE budgets SET definition = ?, config_limit = ?, limit_override = ?, updated_at = ? "
                "WHERE id = ?",
                (definition, limit, override, _us(self.clock.now()), budget.id),
            )
        effective = budget if override is None else replace(budget, limit=Money(override))
        budgets = dict(catalog.budgets)
        budgets[budget.id] = effective
        self._record_change(conn, budget.id, "put", effective.limit.nanos, previous, None, budgets, events)

    # -- reservations ---------------------------------------------------------------------
    def reserve(
        self, request_id: str, attributes: Attributes, estimate: Money, lease: timedelta | float
    ) -> Reservation | Refusal:
        now = self.clock.now()
        op = self._reserve_op(request_id, attributes, estimate, lease, now)
        expiry = self._expiry_op(now)
        if expiry is not None:
            self._run(expiry)
        result: Reservation | Refusal = self._run(op)
        return result

    async def areserve(
        self, request_id: str, attributes: Attributes, estimate: Money, lease: timedelta | float
    ) -> Reservation | Refusal:
        """``reserve`` through the group commit: the event loop never waits for the lock."""
        now = self.clock.now()
        op = self._reserve_op(request_id, attributes, estimate, lease, now)
        expiry = self._expiry_op(now)
        result: Reservation | Refusal = await self._arun([op] if expiry is None else [expiry, op])
        return result

    def _reserve_op(
        self,
        request_id: str,
        attributes: Attributes,
        estimate: Money,
        lease: timedelta | float,
        now: datetime,
    ) -> _Op:
        est = self._amount(estimate, "estimate")
        delta = self._lease(lease)
        events: list[Event] = []
        # Match and encode before taking the write lock; redone inside only if budgets changed.
        plan = self._plan(self._catalog, request_id, attributes, est, now, now + delta)

        def done(result: Reservation | Refusal) -> Reservation | Refusal:
            self._deliver(events)
            return result

        def failed(exc: LedgerUnavailableError) -> Reservation:
            if not self.fail_open:
                raise exc
            log.error(
                "spendgate: ledger %s unavailable; FAIL-OPEN: admitting request %s (%s) UNRECORDED and "
                "unbudgeted",
                self.path,
                request_id,
                estimate,
                exc_info=exc,
            )
            self._unrecorded.append(request_id)
            return Reservation(request_id, estimate, now, now + delta, (), unrecorded=True)

        created = False  # by this op (not a retry that found the id's reservation already open)

        def body(conn: sqlite3.Connection) -> Reservation | Refusal:
            nonlocal created
            created = False
            result = self._reserve_in(conn, plan, events)  # reuse and refusal leave by _Rollback
            created = True
            return result

        def orphan(result: Reservation | Refusal) -> None:
            if created:
                self._release_orphan(result)

        return _Op(_fresh(events, body), done, failed, orphan)

    def _expiry_op(self, now: datetime) -> _Op | None:
        """The opportunistic lease expiry, once per ``expiry_interval`` per process."""
        if now < self._next_expiry:
            return None
        self._next_expiry = now + self.expiry_interval
        events: list[Event] = []

        def done(count: int) -> int:
            self._deliver(events)
            return count

        def failed(exc: LedgerUnavailableError) -> int:
            log.warning("spendgate: lease expiry in %s skipped: %s", self.path, exc)
            return 0

        return _Op(_fresh(events, lambda conn: self._expire_in(conn, now, events, 64)), done, failed)

    def _release_orphan(self, result: Reservation | Refusal) -> None:
        """A reservation this call made, whose caller was cancelled meanwhile: release it."""
        if not isinstance(result, Reservation) or result.unrecorded:
            return
        op = self._release_op(result.request_id)
        self._submit_unwatched(op.body, f"release of abandoned reservation {result.request_id}", op.finish)

    def _submit_unwatched(
        self,
        body: Callable[[sqlite3.Connection], Any],
        what: str,
        finish: Callable[[bool, Any], Any] | None = None,
    ) -> None:
        """Queue a write nobody waits for; its failure is logged."""

        def deliver(ok: bool, value: Any) -> None:
            try:
                if finish is not None:
                    finish(ok, value)
                elif not ok:
                    raise value
            except Exception as exc:
                log.warning("spendgate: %s in %s failed: %s", what, self.path, exc)

        self._group().submit([Job(body, deliver)])

    def _plan(
        self,
        catalog: _Catalog,
        request_id: str,
        attributes: Attributes,
        est: int,
        now: datetime,
        expires: datetime,
    ) -> _Plan:
        matched: list[tuple[Budget, str, tuple[datetime, datetime | None]]] = []
        for budget in catalog.order:
            keys = budget.matches(attributes)
            if keys:
                window = budget.window.bounds(now)
                matched.extend((budget, key, window) for key in keys)
        lines = [(b.id, key, _us(w[0]), None if w[1] is None else _us(w[1])) for b, key, w in matched]
        a = attributes
        row = (request_id, est, _us(now), _us(expires), json.dumps(lines, separators=(",", ":")), a.key,
               a.user, a.team, a.project, a.customer, a.model, _tags_json(a.tags))  # fmt: skip
        holds = [
            {"budget": line[0], "start": line[2], "instance": line[1], "end": line[3], "estimate": est,
             "limit": budget.limit.nanos}
            for line, (budget, _, _) in zip(lines, matched, strict=True)
        ]  # fmt: skip
        return _Plan(catalog, request_id, attributes, est, now, expires, matched, row, holds)

    def _reserve_in(
        self, conn: sqlite3.Connection, plan: _Plan, events: list[Event]
    ) -> Reservation | Refusal:
        catalog = self._sync(conn, events)
        if catalog is not plan.catalog:  # budgets changed since the plan: match again
            plan = self._plan(
                catalog, plan.request_id, plan.attributes, plan.estimate, plan.now, plan.expires
            )
        if conn.execute(_SQL_OPEN, plan.row).rowcount == 0:
            raise _Rollback(self._reuse(conn, plan.request_id, plan.attributes, plan.estimate))
        for i, (hold, (budget, key, window)) in enumerate(zip(plan.holds, plan.matched, strict=True)):
            if conn.execute(_SQL_HOLD, hold).rowcount == 0:
                row = conn.execute(_SQL_LINE, (hold["budget"], hold["start"], key)).fetchone()
                spent, reserved = row if row is not None else (0, 0)
                # Undo this request's writes here (not by rolling the transaction back): in a
                # group commit the transaction holds other requests' writes too.
                conn.execute(_SQL_FORGET, (plan.request_id,))
                for done in plan.holds[:i]:
                    conn.execute(
                        _SQL_RELEASE_LINE, (plan.estimate, done["budget"], done["start"], done["instance"])
                    )
                raise _Rollback(
                    self._refusal(
                        plan.request_id,
                        budget,
                        key,
                        spent,
                        reserved,
                        hold["limit"],
                        plan.estimate,
                        window,
                        plan.now,
                    )
                )
        return Reservation(
            plan.request_id,
            Money(plan.estimate),
            plan.now,
            plan.expires,
            tuple(BudgetLine(b.id, key, w[0], w[1]) for b, key, w in plan.matched),
        )

    def _reuse(
        self, conn: sqlite3.Connection, request_id: str, attributes: Attributes, est: int
    ) -> Reservation:
        row = conn.execute(
            "SELECT state, estimate, started_at, expires_at, lines, dim_key, dim_user, dim_team, dim_project, "
            "dim_customer, dim_model, tags FROM requests WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        state, estimate, started, expires, lines = row[:5]
        if state != "open":
            raise RequestIdReusedError(
                f"request id {request_id!r} was already {state}; use a new id per request"
            )
        if _attrs_of(row[5:]) != attributes or estimate != est:
            raise RequestIdReusedError(
                f"request id {request_id!r} already holds a reservation with different attributes or "
                "estimate; use a new id per request"
            )
        return Reservation(request_id, Money(estimate), _dt(started), _dt(expires), _public_lines(lines))

    def settle(self, request_id: str, actual: Money, record: RequestRecord | None = None) -> SettleOutcome:
        outcome: SettleOutcome = self._run(self._settle_op(request_id, actual, record))
        self._maybe_purge()
        return outcome

    async def asettle(
        self, request_id: str, actual: Money, record: RequestRecord | None = None
    ) -> SettleOutcome:
        """``settle`` through the group commit (which also schedules the retention purge)."""
        outcome: SettleOutcome = await self._arun([self._settle_op(request_id, actual, record)])
        return outcome

    def _settle_op(self, request_id: str, actual: Money, record: RequestRecord | None) -> _Op:
        act = self._amount(actual, "actual")
        now = self.clock.now()
        if record is None:
            values: tuple[Any, ...] = (act, _us(now), "ok", None, None, None, request_id)
        else:
            breakdown = record.breakdown_strings()
            values = (
                act,
                _us(now),
                record.status,
                record.model,
                json.dumps(dict(record.usage), sort_keys=True) if record.usage else None,
                json.dumps(breakdown, sort_keys=True) if breakdown else None,
                request_id,
            )
        events: list[Event] = []

        def done(outcome: SettleOutcome) -> SettleOutcome:
            if outcome.status == "settled" and act > outcome.estimate.nanos:
                log.warning(
                    "spendgate: request %s cost %s, above its reserved estimate %s (provider billed "
                    "beyond the estimate); charged in full",
                    request_id,
                    actual,
                    outcome.estimate,
                )
            self._deliver(events)
            return outcome

        def failed(exc: LedgerUnavailableError) -> SettleOutcome:
            if not self.fail_open:
                raise exc
            log.error("spendgate: ledger %s unavailable; FAIL-OPEN: settlement of %s (%s) NOT RECORDED",
                      self.path, request_id, actual, exc_info=exc)  # fmt: skip
            return SettleOutcome(request_id, "unrecorded", actual, actual, actual)

        body = _fresh(events, lambda conn: self._settle_in(conn, request_id, act, values, now, events))
        return _Op(body, done, failed)

    def _settle_in(
        self,
        conn: sqlite3.Connection,
        request_id: str,
        act: int,
        values: tuple[Any, ...],
        now: datetime,
        events: list[Event],
    ) -> SettleOutcome:
        catalog = self._sync(conn, events)
        row = conn.execute(_SQL_SETTLE, values).fetchall()
        if not row:
            raise _Rollback(self._ended_settle(conn, request_id, act))
        est, lines = row[0]
        remaining = self._charge(conn, catalog, request_id, json.loads(lines), est, act, now, events)
        left = None if remaining is None else Money(max(remaining, 0))
        return SettleOutcome(request_id, "settled", Money(act), Money(est), Money(act), left)

    def _ended_settle(self, conn: sqlite3.Connection, request_id: str, act: int) -> SettleOutcome:
        row = conn.execute(_SQL_ENDED, (request_id,)).fetchone()
        if row is None:
            if request_id in self._unrecorded:
                return SettleOutcome(request_id, "unrecorded", Money(act), Money(act), Money(act))
            raise UnknownReservationError(f"no reservation for request id {request_id!r}")
        status, est, charged = row
        outcome = {"settled": "already_settled", "expired": "expired", "released": "released"}[status]
        return SettleOutcome(request_id, outcome, Money(charged or 0), Money(est), Money(act))  # type: ignore[arg-type]

    def _charge(
        self,
        conn: sqlite3.Connection,
        catalog: _Catalog,
        request_id: str,
        lines: list[list[Any]],
        est: int,
        act: int,
        now: datetime,
        events: list[Event],
    ) -> int | None:
        """Move ``est`` out of reserved and ``act`` into spent on every line; announce thresholds.
        Returns the least ``limit - spent - reserved`` over the lines (None: no budget line)."""
        remaining: int | None = None
        for budget_id, key, start, end in lines:
            spent, reserved, alerted = conn.execute(
                _SQL_CHARGE, (est, act, budget_id, start, key)
            ).fetchall()[0]
            budget = catalog.budgets.get(budget_id)
            if budget is None:
                continue
            limit = budget.limit.nanos
            left = limit - spent - reserved
            remaining = left if remaining is None else min(remaining, left)
            if act <= 0:
                continue
            crossed = self._crossed(budget.thresholds, alerted, spent, limit)
            if not crossed:
                continue
            sent_at = _us(now)
            for threshold in crossed:
                cur = conn.execute(
                    _SQL_ALERT, (budget_id, start, key, threshold, spent, limit, request_id, sent_at)
                )
                if cur.rowcount:  # another process may have sent it first
                    events.append(
                        ThresholdCrossed(
                            budget_id=budget_id,
                            label=budget.label(key),
                            instance=parse_instance_key(key),
                            threshold=threshold,
                            spent=Money(spent),
                            limit=Money(limit),
                            window_start=_dt(start),
                            window_end=None if end is None else _dt(end),
                            request_id=request_id,
                        )
                    )
            conn.execute(
                "UPDATE spend SET alerted = max(alerted, ?) WHERE budget_id = ? AND window_start = ? "
                "AND instance = ?",
                (crossed[-1], budget_id, start, key),
            )
        return remaining

    def release(self, request_id: str) -> ReleaseOutcome:
        outcome: ReleaseOutcome = self._run(self._release_op(request_id))
        return outcome

    async def arelease(self, request_id: str) -> ReleaseOutcome:
        """``release`` through the group commit."""
        outcome: ReleaseOutcome = await self._arun([self._release_op(request_id)])
        return outcome

    def _release_op(self, request_id: str) -> _Op:
        def failed(exc: LedgerUnavailableError) -> ReleaseOutcome:
            if not self.fail_open:
                raise exc
            log.error("spendgate: ledger %s unavailable; FAIL-OPEN: release of %s NOT RECORDED",
                      self.path, request_id, exc_info=exc)  # fmt: skip
            return ReleaseOutcome(request_id, "unrecorded")

        return _Op(lambda conn: self._release_in(conn, request_id), lambda outcome: outcome, failed)

    def _release_in(self, conn: sqlite3.Connection, request_id: str) -> ReleaseOutcome:
        row = conn.execute(_SQL_RELEASE, (_us(self.clock.now()), request_id)).fetchall()
        if not row:
            ended = conn.execute(_SQL_ENDED, (request_id,)).fetchone()
            if ended is None:
                if request_id in self._unrecorded:
                    return ReleaseOutcome(request_id, "unrecorded")
                raise UnknownReservationError(f"no reservation for request id {request_id!r}")
            status: ReleaseStatus = "already_released" if ended[0] == "released" else ended[0]
            return ReleaseOutcome(request_id, status)
        est, lines = row[0][0], json.loads(row[0][1])
        for budget_id, key, start, _end in lines:
            conn.execute(_SQL_RELEASE_LINE, (est, budget_id, start, key))
        return ReleaseOutcome(request_id, "released")

    # -- leases -------------------------------------------------------------------------
    def expire_leases(self) -> int:
        events: list[Event] = []
        now = self.clock.now()
        count = self._expire(now, events, batch=500, until_done=True)
        self._deliver(events)
        return count

    def _expire(self, now: datetime, events: list[Event], *, batch: int, until_done: bool = False) -> int:
        total = 0
        while True:
            count = self._write(lambda conn: self._expire_in(conn, now, events, batch))
            total += count
            if count < batch or not until_done:
                return total

    def _expire_in(self, conn: sqlite3.Connection, now: datetime, events: list[Event], batch: int) -> int:
        now_us = _us(now)
        due = [row[0] for row in conn.execute(_SQL_DUE, (now_us, batch))]
        if not due:
            return 0
        catalog = self._sync(conn, events)
        for request_id in due:
            est, lines = conn.execute(_SQL_EXPIRE, (now_us, request_id)).fetchall()[0]
            self._charge(conn, catalog, request_id, json.loads(lines), est, est, now, events)
            log.warning(
                "spendgate: lease of request %s expired unsettled; charged its reserved %s",
                request_id,
                Money(est),
            )
        return len(due)

    # -- budgets ------------------------------------------------------------------------
    def put_budget(self, budget: Budget) -> None:
        events: list[Event] = []
        self._write(lambda conn: self._put_in(conn, budget, events))
        self._deliver(events)

    def remove_budget(self, budget_id: str) -> bool:
        events: list[Event] = []

        def body(conn: sqlite3.Connection) -> bool:
            catalog = self._sync(conn, events)
            old = catalog.budgets.get(budget_id)
            if old is None:
                return False
            conn.execute("DELETE FROM budgets WHERE id = ?", (budget_id,))
            budgets = {k: v for k, v in catalog.budgets.items() if k != budget_id}
            self._record_change(conn, budget_id, "remove", None, old.limit.nanos, None, budgets, events)
            return True

        removed = self._write(body)
        self._deliver(events)
        return removed

    def _current(self) -> _Catalog:
        events: list[Event] = []
        catalog = self._read(lambda conn: self._sync(conn, events))
        self._deliver(events)
        return catalog

    def refresh(self) -> None:
        self._current()

    def get_budget(self, budget_id: str) -> Budget:
        budget = self._current().budgets.get(budget_id)
        if budget is None:
            raise KeyError(f"no budget {budget_id!r}")
        return budget

    def budgets(self) -> list[Budget]:
        return list(self._current().order)

    def set_limit(self, budget_id: str, limit: Money) -> None:
        nanos = self._amount(limit, "limit")
        events: list[Event] = []

        def body(conn: sqlite3.Connection) -> None:
            catalog = self._sync(conn, events)
            old = catalog.budgets.get(budget_id)
            if old is None:
                raise KeyError(f"no budget {budget_id!r}")
            conn.execute(
                "UPDATE budgets SET limit_override = ?, updated_at = ? WHERE id = ?",
                (nanos, _us(self.clock.now()), budget_id),
            )
            budgets = dict(catalog.budgets)
            budgets[budget_id] = replace(old, limit=limit)
            self._record_change(conn, budget_id, "limit", nanos, old.limit.nanos, None, budgets, events)

        self._write(body)
        self._deliver(events)

    def reset(self, budget_id: str, instance: Mapping[str, str] | str | None = None) -> None:
        events: list[Event] = []

        def body(conn: sqlite3.Connection) -> None:
            catalog = self._sync(conn, events)
            budget = catalog.budgets.get(budget_id)
            if budget is None:
                raise KeyError(f"no budget {budget_id!r}")
            key = budget.instance_key(instance) if instance is not None else None
            start = _us(budget.window.bounds(self.clock.now())[0])
            where = "budget_id = ? AND window_start = ?" + ("" if key is None else " AND instance = ?")
            params: tuple[Any, ...] = (budget_id, start) if key is None else (budget_id, start, key)
            conn.execute(f"UPDATE spend SET spent = 0, alerted = 0 WHERE {where}", params)
            conn.execute(f"DELETE FROM alerts WHERE {where}", params)
            self._record_change(
                conn,
                budget_id,
                "reset",
                budget.limit.nanos,
                None,
                key,
                dict(catalog.budgets),
                events,
            )

        self._write(body)
        self._deliver(events)

    # -- usage --------------------------------------------------------------------------
    def usage(
        self, budget_id: str, instance: Mapping[str, str] | str | None = None, *, at: datetime | None = None
    ) -> BudgetUsage:
        events: list[Event] = []
        when = at if at is not None else self.clock.now()

        def body(conn: sqlite3.Connection) -> BudgetUsage:
            budget = self._sync(conn, events).budgets.get(budget_id)
            if budget is None:
                raise KeyError(f"no budget {budget_id!r}")
            key = budget.instance_key(instance)
            window = budget.window.bounds(when)
            row = conn.execute(_SQL_LINE, (budget_id, _us(window[0]), key)).fetchone()
            return _usage(budget, key, window, row or (0, 0))

        result = self._read(body)
        self._deliver(events)
        return result

    def list_budgets(self) -> list[BudgetUsage]:
        events: list[Event] = []
        now = self.clock.now()

        def body(conn: sqlite3.Connection) -> list[BudgetUsage]:
            out: list[BudgetUsage] = []
            for budget in self._sync(conn, events).order:
                window = budget.window.bounds(now)
                rows = {
                    key: (spent, reserved)
                    for key, spent, reserved in conn.execute(
                        "SELECT instance, spent, reserved FROM spend WHERE budget_id = ? AND window_start = ? "
                        "ORDER BY instance",
                        (budget.id, _us(window[0])),
                    )
                }
                if not budget.wildcards:
                    out.append(_usage(budget, "", window, rows.get("", (0, 0))))
                    continue
                out.extend(_usage(budget, key, window, row) for key, row in rows.items() if row[0] or row[1])
            return out

        result = self._read(body)
        self._deliver(events)
        return result

    # -- the request log ------------------------------------------------------------------
    def query_requests(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        limit: int = 1000,
        after: str | None = None,
        **dimensions: str,
    ) -> list[RequestRecord]:
        self._check_dimensions(dimensions)
        where, params = _log_filter(start, end, dimensions)
        sql = f"SELECT {_SQL_LOG_COLUMNS} FROM requests WHERE {where}"
        if after is not None:  # keyset paging: strictly after (started_at, request_id) of that row
            sql += " AND (started_at < ? OR (started_at = ? AND request_id > ?))"
        sql += " ORDER BY started_at DESC, request_id LIMIT ?"

        def body(conn: sqlite3.Connection) -> list[Any]:
            values = list(params)
            if after is not None:
                row = conn.execute(_SQL_LOGGED_AT, (after,)).fetchone()
                if row is None:
                    raise UnknownReservationError(f"request id {after!r} is not in the request log")
                values += [row[0], row[0], after]
            return conn.execute(sql, (*values, limit)).fetchall()

        return [_record(row) for row in self._read(body)]

    def usage_by(
        self, dimension: str, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, Money]:
        self._check_dimensions({dimension: ""}, "usage_by")
        where, params = _log_filter(start, end, {})
        if dimension == "tag":
            sql = (
                "SELECT t.value, SUM(r.cost) FROM requests AS r, json_each(r.tags) AS t "
                f"WHERE r.tags IS NOT NULL AND {where.replace('state IN', 'r.state IN')} "
                "GROUP BY t.value ORDER BY t.value"
            )
        else:
            column = _DIM_COLUMNS[dimension]
            sql = (
                f"SELECT {column}, SUM(cost) FROM requests WHERE {column} IS NOT NULL AND {where} "
                f"GROUP BY {column} ORDER BY {column}"
            )
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return {value: Money(total) for value, total in rows}

    def _purge_due(self, now: datetime) -> bool:
        """Whether this process's scheduled purge is due (and, if so, when the next one is)."""
        if now < self._next_purge:
            return False
        self._next_purge = now + self.purge_interval
        return True

    def _maybe_purge(self) -> None:
        now = self.clock.now()
        if self._purge_due(now):
            self._purge(now, force=False)

    def _maybe_purge_async(self) -> None:
        """After a group commit: the scheduled purge as a write of its own in the next batch
        (smaller than ``purge()``'s, so the loop is never held long)."""
        now = self.clock.now()
        if self._purge_due(now):
            self._submit_unwatched(self._purge_body(now, force=False, rows=1000), "retention purge")

    def purge(self) -> int:
        return self._purge(self.clock.now(), force=True)

    def _purge(self, now: datetime, *, force: bool) -> int:
        """Drop rows older than retention, a bounded batch at a time; one process per interval."""
        try:
            return self._write(self._purge_body(now, force=force))
        except LedgerUnavailableError:
            if force:
                raise
            log.warning("spendgate: retention purge of %s skipped", self.path, exc_info=True)
            return 0

    def _purge_body(
        self, now: datetime, *, force: bool, rows: int = 10_000
    ) -> Callable[[sqlite3.Connection], int]:
        now_us = _us(now)
        cutoff = _us(now - self.retention)

        def body(conn: sqlite3.Connection) -> int:
            if not force:
                claimed = conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'last_purge' AND value <= ?",
                    (now_us, _us(now - self.purge_interval)),
                )
                if claimed.rowcount == 0:
                    return 0  # another process purged recently
            deleted = conn.execute(
                "DELETE FROM requests WHERE request_id IN (SELECT request_id FROM requests "
                "WHERE started_at < ? AND state != 'open' LIMIT ?)",
                (cutoff, rows),
            ).rowcount
            conn.execute(
                "DELETE FROM spend WHERE window_end IS NOT NULL AND window_end < ? AND reserved = 0",
                (cutoff,),
            )
            conn.execute("DELETE FROM alerts WHERE sent_at < ?", (cutoff,))
            conn.execute(
                "DELETE FROM changes WHERE at < ? AND seq < (SELECT max(seq) FROM changes)", (cutoff,)
            )
            return deleted

        return body

    # -- introspection for tests ------------------------------------------------------------
    def open_reservations(self) -> int:
        return int(
            self._read(
                lambda c: c.execute("SELECT count(*) FROM requests WHERE state = 'open'").fetchone()[0]
            )
        )


def _public_lines(lines_json: str) -> tuple[BudgetLine, ...]:
    return tuple(
        BudgetLine(budget_id, key, _dt(start), None if end is None else _dt(end))
        for budget_id, key, start, end in json.loads(lines_json)
    )


def _tags_json(tags: frozenset[str]) -> str | None:
    return json.dumps(sorted(tags)) if tags else None


def _attrs_of(row: Sequence[Any]) -> Attributes:
    key, user, team, project, customer, model, tags = row
    return Attributes(
        key=key,
        user=user,
        team=team,
        project=project,
        customer=customer,
        model=model,
        tags=frozenset(json.loads(tags)) if tags else frozenset(),
    )


def _usage(
    budget: Budget, key: str, window: tuple[datetime, datetime | None], row: tuple[int, int]
) -> BudgetUsage:
    return BudgetUsage(
        budget_id=budget.id,
        label=budget.label(key),
        selector=budget.concrete_selector(key),
        instance=parse_instance_key(key),
        spent=Money(row[0]),
        reserved=Money(row[1]),
        limit=budget.limit,
        window_start=window[0],
        window_end=window[1],
    )


def _log_filter(
    start: datetime | None, end: datetime | None, dimensions: Mapping[str, str]
) -> tuple[str, list[Any]]:
    clauses = ["state IN ('settled', 'expired')"]  # the log: requests that were charged
    params: list[Any] = []
    if start is not None:
        clauses.append("started_at >= ?")
        params.append(_us(start))
    if end is not None:
        clauses.append("started_at < ?")
        params.append(_us(end))
    for dim, value in dimensions.items():
        if dim == "tag":
            clauses.append("EXISTS (SELECT 1 FROM json_each(requests.tags) WHERE value = ?)")
        else:
            clauses.append(f"{_DIM_COLUMNS[dim]} = ?")  # a fixed column name, never user text
        params.append(value)
    return " AND ".join(clauses), params


def _record(row: Sequence[Any]) -> RequestRecord:
    request_id, status, started, finished, cost = row[:5]
    attrs = _attrs_of(row[5:12])
    model, usage, breakdown = row[12:]
    return RequestRecord(
        request_id=request_id,
        attributes=attrs,
        cost=Money(cost),
        started_at=_dt(started),
        finished_at=_dt(finished),
        model=model or attrs.model,
        usage=json.loads(usage) if usage else {},
        breakdown=json.loads(breakdown) if breakdown else {},
        status=status or "ok",
    )


def sqlite_factory(
    url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any
) -> SQLiteLedger:
    """``sqlite:///relative/spend.db`` or ``sqlite:////absolute/spend.db`` (SQLAlchemy's convention)."""
    rest = url.partition("://")[2]
    if not rest.startswith("/") or len(rest) < 2:
        raise ConfigError("ledger", f"write a SQLite ledger URL as sqlite:///path/to/spend.db, got {url!r}")
    path = rest[1:]
    if "?" in path:
        raise ConfigError("ledger", f"{url!r}: URL options are not supported; pass them as keyword arguments")
    return SQLiteLedger(path, budgets, clock=clock, **options)
