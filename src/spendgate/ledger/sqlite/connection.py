"""Connections and transactions on one SQLite file, shared by the ledger and the key storage.

WAL mode (readers never block the writer), ``BEGIN IMMEDIATE`` for every write
(the write lock is taken up front, so check-then-update cannot interleave),
``synchronous=NORMAL`` (durable across a process crash; a power cut may lose
the last commits, never corrupt the file). Each thread has its own two
connections (writes, reads), opened lazily per process id, so a forked child
never touches its parent's handles. SQLite errors that are not bugs mean the
file is unavailable: ``LedgerUnavailableError``, so callers fail closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from spendgate.errors import ConfigError
from spendgate.ledger.base import LedgerUnavailableError
from spendgate.ledger.sqlite.group_commit import Outcome

__all__ = ["Rollback", "SQLiteFile", "sqlite_path"]

log = logging.getLogger("spendgate.ledger")

T = TypeVar("T")
_FIRST_POLL: Final = 50e-6  # seconds between tries for the write lock: doubling up to
_LAST_POLL: Final = 1e-3  # 1 ms, so a released lock is noticed within about that


class Rollback(Exception):  # noqa: N818 - control flow, not an error
    """Leave the transaction without writing, and return ``value``."""

    def __init__(self, value: object) -> None:
        self.value = value


class ConnLocal(threading.local):
    pid: int = -1
    generation: int = -1
    writer: sqlite3.Connection | None = None
    reader: sqlite3.Connection | None = None
    #: What a change in this thread's open transaction will install at COMMIT (the ledger's catalog).
    pending: Any = None


def sqlite_path(url: str, what: str = "spend.db") -> str:
    """``sqlite:///relative/x.db`` or ``sqlite:////absolute/x.db`` (SQLAlchemy's convention)."""
    rest = url.partition("://")[2]
    if not rest.startswith("/") or len(rest) < 2:
        raise ConfigError("ledger", f"write a SQLite ledger URL as sqlite:///path/to/{what}, got {url!r}")
    path = rest[1:]
    if "?" in path:
        raise ConfigError("ledger", f"{url!r}: URL options are not supported; pass them as keyword arguments")
    return path


class SQLiteFile:
    """This process's connections to one SQLite file, and the transactions run on them.

    A subclass provides ``_setup`` (schema; run before the first transaction,
    and again while ``_ready`` is False or ``_pending`` holds work) and may
    override ``_install`` (what a committed transaction leaves in
    ``_local.pending``), ``_forked`` (state a forked child must drop) and
    ``_unavailable`` (the error message).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float, wal_autocheckpoint: int) -> None:
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file::memory:"):
            raise ConfigError("ledger", "an in-memory SQLite file is per connection; use memory:// instead")
        self.busy_timeout = busy_timeout
        self.wal_autocheckpoint = wal_autocheckpoint
        self._local: ConnLocal = ConnLocal()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._generation = 0  # bumped by close(), so every thread reconnects
        self._ready = False
        self._pending: list[Any] = []

    # -- what a subclass provides ------------------------------------------------------------
    def _setup(self) -> None:
        raise NotImplementedError

    def _install(self, pending: Any) -> None:
        """Called after a COMMIT with what the transaction left in ``_local.pending``."""

    def _forked(self) -> None:
        """A forked child is about to open its first connection: drop the parent's cached state."""

    def _unavailable(self, exc: BaseException) -> LedgerUnavailableError:
        return LedgerUnavailableError(f"SQLite file {self.path!r} is unavailable ({exc})")

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
            self._forked()
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
        """Close this process's connections (call it when no thread uses them any more)."""
        with self._lock:
            conns, self._conns = self._conns, []
            self._generation += 1
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                conn.close()

    # -- transactions ---------------------------------------------------------------------
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
        except Rollback as done:
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
        (``Rollback``) has written nothing or undone its own writes; one that fails otherwise
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
                except Rollback as done:  # its body wrote nothing, or undid what it wrote
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
        self._local.pending = None  # a change that did not commit must not be installed
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the connection is broken anyway
                conn.execute("ROLLBACK")
