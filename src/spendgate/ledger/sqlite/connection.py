"""Connections and transactions on one SQLite file, shared by the ledger and the key storage.

WAL mode (readers never block the writer), ``BEGIN IMMEDIATE`` for every write
(the write lock is taken up front, so check-then-update cannot interleave),
``synchronous=NORMAL`` (durable across a process crash; a power cut may lose
the last commits, never corrupt the file). Each thread has its own two
connections (writes, reads), opened lazily per process id, so a forked child
never touches its parent's handles. SQLite errors that are not bugs mean the
file is unavailable: ``LedgerUnavailableError``, so callers fail closed.

The file is never started over silently. Only the first open may create it (and
only with ``create=True``); every later connection opens it ``mode=rw``. The
file's identity (``st_dev``, ``st_ino``) and an id stored in it are remembered
at open: each write transaction (or group-commit batch) checks with one
``os.stat`` that the path still names that file, and each new connection that
it holds that id. A file deleted or replaced under a running process raises
``LedgerReplacedError`` instead of leaving the process writing to a deleted
inode while the next start begins an empty ledger.
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
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import quote

from spendgate.errors import ConfigError
from spendgate.ledger.base import LedgerMissingError, LedgerReplacedError, LedgerUnavailableError
from spendgate.ledger.sqlite.group_commit import Outcome

__all__ = ["Rollback", "SQLiteFile", "resolve_sqlite_url", "sqlite_path"]

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


def resolve_sqlite_url(url: str, base_dir: str | os.PathLike[str]) -> str:
    """``sqlite:///x.db`` as ``sqlite:////<base_dir>/x.db`` (absolute); anything else unchanged.

    Absolute paths stay as they are, and so does what ``sqlite_path`` refuses (its error names
    the URL as written). ``base_dir`` is made absolute too, against the working directory now.
    """
    rest = url.partition("://")[2]
    if not rest.startswith("/") or len(rest) < 2:
        return url
    path = rest[1:]
    if path.startswith("/") or "?" in path or path == ":memory:" or path.startswith("file:"):
        return url
    return "sqlite:///" + os.path.abspath(os.path.join(os.fspath(base_dir), path))


def _missing_message(path: str) -> str:
    return f"ledger {path} does not exist (the gateway creates it on first start)"


class SQLiteFile:
    """This process's connections to one SQLite file, and the transactions run on them.

    A subclass provides ``_setup`` (schema; run before the first transaction,
    and again while ``_ready`` is False or ``_pending`` holds work; it ends with
    ``_remember``) and ``_FILE_ID`` (the query of the id its schema stores), and
    may override ``_install`` (what a committed transaction leaves in
    ``_local.pending``), ``_forked`` (state a forked child must drop) and
    ``_unavailable`` (the error message).

    ``path`` is made absolute once, so a later change of working directory cannot point
    new connections at another file. ``create=False``: open an existing file only
    (``LedgerMissingError`` otherwise).
    """

    #: The query of the id the subclass's schema stores in the file (one row, one integer).
    _FILE_ID: ClassVar[str] = ""
    #: How errors name the file.
    _WHAT: ClassVar[str] = "SQLite file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float,
        wal_autocheckpoint: int,
        create: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file::memory:"):
            raise ConfigError("ledger", "an in-memory SQLite file is per connection; use memory:// instead")
        self.path = os.path.abspath(self.path)
        self.create = create
        #: (st_dev, st_ino) and the stored id of the file as first opened; None until then.
        self._identity: tuple[int, int] | None = None
        self._file_id: int | None = None
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

    # -- the file's identity ------------------------------------------------------------------
    def _replaced(self, detail: str) -> LedgerReplacedError:
        return LedgerReplacedError(
            f"{self._WHAT} {self.path!r} was deleted or replaced while in use ({detail}); nothing is "
            "written, so that it never starts over silently with an empty file. Put the file back "
            "(the same one: moved back, it is accepted again), or restart to open what is there now."
        )

    def _remember(self, conn: sqlite3.Connection) -> None:
        """After the first setup: this is the file, from now on (its identity and stored id)."""
        if self._identity is not None:
            return
        try:
            st = os.stat(self.path)
            row = conn.execute(self._FILE_ID).fetchone()
        except OSError as exc:
            raise self._replaced(f"it vanished while being opened: {exc.strerror or exc}") from None
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        self._file_id = None if row is None else int(row[0])
        self._identity = (st.st_dev, st.st_ino)

    def _verify(self) -> None:
        """The path still names the file first opened (one ``os.stat``, about a microsecond)."""
        known = self._identity
        if known is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise self._replaced("no file is there any more") from None
        except OSError as exc:
            raise self._unavailable(exc) from exc
        if (st.st_dev, st.st_ino) != known:
            raise self._replaced("another file is there now")

    def _verify_id(self, conn: sqlite3.Connection) -> None:
        """A new connection (or a probe) reads the file's stored id: the same inode number can
        name a new file once no connection holds the old one open."""
        if self._identity is None:
            return
        try:
            row = conn.execute(self._FILE_ID).fetchone()
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        if row is None or int(row[0]) != self._file_id:
            raise self._replaced("the file there now is another one")

    def _unwritable(self) -> str | None:
        """What of the file a new connection could not write (as this user: root ignores modes,
        not ``chattr +i`` or a read-only mount), or None. ``os.access`` opens nothing: closing a
        descriptor of the file would drop this process's SQLite locks on it."""
        folder = os.path.dirname(self.path)
        for path in (self.path, self.path + "-wal", self.path + "-shm", folder):
            if (path in (self.path, folder) or os.path.exists(path)) and not os.access(path, os.W_OK):
                return "its folder" if path == folder else os.path.basename(path)
        return None

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
        first = self._identity is None
        new_file = first and not os.path.exists(self.path)
        if new_file and not self.create:
            raise LedgerMissingError(_missing_message(self.path))
        try:
            # Only the very first connection may create the file; the others must find it
            # (mode=rw), or a deleted file would come back empty under a running process.
            target, uri = (
                (self.path, False) if first and self.create else (f"file:{quote(self.path)}?mode=rw", True)
            )
            # The writer never sleeps in SQLite's busy handler (see _begin); readers rarely wait at all.
            conn = sqlite3.connect(
                target,
                timeout=0 if writer else self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=uri,
            )
        except sqlite3.Error as exc:
            if not first and not os.path.exists(self.path):
                raise self._replaced("no file is there any more") from exc
            raise self._unavailable(exc) from exc
        if new_file and os.path.exists(self.path):
            # Loud on purpose: after a lost file, this line is what says a restart began anew.
            log.warning(
                "spendgate: no file at %s: created a new, empty ledger (no keys, no spend)", self.path
            )
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(self.wal_autocheckpoint)}")
            if not first:
                self._verify()
                self._verify_id(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._unavailable(exc) from exc
            raise
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
        self._verify()
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
            self._verify()
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
