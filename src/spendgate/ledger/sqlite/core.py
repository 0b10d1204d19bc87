"""What every job of the SQLite ledger shares: its state, the budgets catalog, and write ops.

The file holds the budgets (definitions and limits) and the rate limits, so every
process enforces the same set. Each process caches them as a ``Catalog`` keyed by the
``budgets_version`` and ``limits_version`` in ``meta``; a transaction that sees a newer
version reloads what changed and reports the budget changes in between to this process's
subscribers (limits have no events, as in memory). A write is an ``Op``: run alone on the caller's thread
(``_run``), or queued for the event loop's group commit (``_arun``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Final, NamedTuple, TypeVar

from spendgate.budgets import EPOCH, Budget
from spendgate.clock import Clock
from spendgate.ledger.base import (
    DEFAULT_RETENTION,
    ChangeKind,
    Event,
    Ledger,
    LedgerMissingError,
    LedgerUnavailableError,
    ThresholdCrossed,
)
from spendgate.ledger.rows import budget_changed, budgets_of
from spendgate.ledger.sqlite.codec import us
from spendgate.ledger.sqlite.connection import ConnLocal, SQLiteFile
from spendgate.ledger.sqlite.group_commit import GroupCommit, Job, future_job
from spendgate.ledger.sqlite.schema import migrate
from spendgate.limits import Limit
from spendgate.money import Money

__all__ = ["EMPTY_CATALOG", "Catalog", "LedgerCore", "LimitEntry", "Op", "fresh"]

log = logging.getLogger("spendgate.ledger")

T = TypeVar("T")
# Both versions in one statement: the only read a transaction makes before its own work.
_SQL_VERSIONS = (
    "SELECT (SELECT value FROM meta WHERE key = 'budgets_version'), "
    "(SELECT value FROM meta WHERE key = 'limits_version')"
)
# A counter, so a probe is a real change to commit (and a test can count the probes).
_SQL_PROBE = (
    "INSERT INTO meta (key, value) VALUES ('probes', 1) ON CONFLICT (key) DO UPDATE SET value = value + 1"
)


class LimitEntry(NamedTuple):
    """A rate limit and the generation of its counts (``limits.generation`` in the file)."""

    limit: Limit
    generation: int


class Catalog(NamedTuple):
    version: int
    budgets: dict[str, Budget]  # with their effective limits
    order: tuple[Budget, ...]
    limits_version: int
    limits: dict[str, LimitEntry]
    limit_order: tuple[LimitEntry, ...]  # as added (the file's rowid order), like memory

    def newer_than(self, other: Catalog) -> bool:
        """Whether this snapshot is later than ``other`` (both counters only ever grow, and
        snapshots of one file are ordered, so one never has a higher budgets version and a
        lower limits version than another)."""
        if (self.version, self.limits_version) == (other.version, other.limits_version):
            return False
        return self.version >= other.version and self.limits_version >= other.limits_version


EMPTY_CATALOG: Final = Catalog(-1, {}, (), -1, {}, ())


class LedgerLocal(ConnLocal):
    #: The catalog a change in this thread's open transaction will leave, installed at COMMIT.
    pending: Catalog | None = None


@dataclass(slots=True)
class Op:
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


def fresh(events: list[Event], body: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
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


class LedgerCore(SQLiteFile, Ledger):
    """The state and shared machinery of ``SQLiteLedger``; each job is a mixin on top of it."""

    scheme = "sqlite"
    _local: LedgerLocal
    _FILE_ID = "SELECT value FROM meta WHERE key = 'ledger_id'"
    _WHAT = "spendgate ledger file"

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
        create: bool = True,
    ) -> None:
        Ledger.__init__(self, clock=clock, retention=retention, fail_open=fail_open)
        SQLiteFile.__init__(
            self, path, busy_timeout=busy_timeout, wal_autocheckpoint=wal_autocheckpoint, create=create
        )
        self._local = LedgerLocal()
        self.page_size = page_size
        self.expiry_interval = expiry_interval
        self.purge_interval = purge_interval
        self._catalog = EMPTY_CATALOG
        self._next_expiry = EPOCH
        self._next_purge = EPOCH
        self._groups: dict[asyncio.AbstractEventLoop, GroupCommit] = {}  # asyncio callers' batches
        self._pending = list(budgets)  # applied once the file is reachable
        try:
            self._setup()
        except LedgerMissingError:
            self.close()
            raise  # asked to open an existing ledger: fail-open has nothing to admit into
        except LedgerUnavailableError:
            if not fail_open:
                raise
            log.error("spendgate: ledger %s unavailable at start; FAIL-OPEN: admitting unrecorded", self.path)

    # -- hooks of the other jobs ------------------------------------------------------------
    @abstractmethod
    def _maybe_purge(self) -> None:
        """After a settle: the retention purge when it is due (request_log.py)."""

    @abstractmethod
    def _maybe_purge_async(self) -> None:
        """After a group commit: the retention purge when it is due (request_log.py)."""

    # -- connections --------------------------------------------------------------------
    def _forked(self) -> None:
        self._catalog = EMPTY_CATALOG

    def close(self) -> None:
        """Close this process's connections (call it when no thread uses the ledger any more).
        Writes still queued by asyncio callers fail as unavailable."""
        with self._lock:
            groups, self._groups = self._groups, {}
        for group in groups.values():
            group.close()
        SQLiteFile.close(self)

    def _unavailable(self, exc: BaseException) -> LedgerUnavailableError:
        return LedgerUnavailableError(
            f"spendgate ledger {self.path!r} is unavailable ({exc}); refusing to admit requests "
            "it cannot account for (fail closed). Check the file and its directory, or open "
            "the ledger with fail_open=True to admit unrecorded."
        )

    # -- schema and budgets from config -------------------------------------------------
    def _setup(self) -> None:
        conn = self._conn(writer=False)
        try:
            if not self.create and conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                raise LedgerMissingError(
                    f"ledger {self.path} holds no spendgate ledger (the gateway creates it on first start)"
                )
            conn.execute(f"PRAGMA page_size = {int(self.page_size)}")  # only takes effect on a new file
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("spendgate: %s could not use WAL (journal_mode=%s)", self.path, mode)
            conn.execute("BEGIN IMMEDIATE")
            try:
                migrate(conn, self.path)
                conn.execute("COMMIT")
            finally:
                self._rollback(conn)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        self._remember(conn)
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

    # -- the budgets catalog --------------------------------------------------------------
    def _sync(self, conn: sqlite3.Connection, events: list[Event]) -> Catalog:
        """The budgets and limits as of this transaction; reloads what another process changed.

        The thread that installs a newer catalog reports the budget changes in
        between (to this process's subscribers), so each is heard once per process.
        """
        version, limits_version = conn.execute(_SQL_VERSIONS).fetchone()
        pending = self._local.pending
        if pending is not None and pending.version == version and pending.limits_version == limits_version:
            return pending  # this transaction's own change
        catalog = self._catalog
        if version == catalog.version and limits_version == catalog.limits_version:
            return catalog
        if version == catalog.version:
            budgets, order = catalog.budgets, catalog.order
        else:
            budgets = self._load_budgets(conn)
            order = tuple(budgets.values())
        if limits_version == catalog.limits_version:
            limits, limit_order = catalog.limits, catalog.limit_order
        else:
            limits = self._load_limits(conn)
            limit_order = tuple(limits.values())
        loaded = Catalog(version, budgets, order, limits_version, limits, limit_order)
        with self._lock:
            since = self._catalog.version
            if not loaded.newer_than(self._catalog):
                return loaded  # another thread got there first (or this snapshot is older)
            self._catalog = loaded
        if since >= 0 and version > since:
            changes = conn.execute(
                "SELECT budget_id, kind, new_limit, previous_limit, instance, seq FROM changes "
                "WHERE seq > ? AND seq <= ? ORDER BY seq",
                (since, version),
            )
            events.extend(budget_changed(*row) for row in changes)
        return loaded

    @staticmethod
    def _load_budgets(conn: sqlite3.Connection) -> dict[str, Budget]:
        return budgets_of(
            conn.execute("SELECT id, definition, config_limit, limit_override FROM budgets ORDER BY id")
        )

    @staticmethod
    def _load_limits(conn: sqlite3.Connection) -> dict[str, LimitEntry]:
        rows = conn.execute("SELECT id, definition, generation FROM limits ORDER BY rowid")
        return {
            limit_id: LimitEntry(
                Limit.from_config(json.loads(definition), f"limits[{limit_id!r}]"), generation
            )
            for limit_id, definition, generation in rows
        }

    def _install(self, pending: Catalog) -> None:
        with self._lock:
            if pending.newer_than(self._catalog):  # never go back to an older snapshot
                self._catalog = pending

    def _current(self) -> Catalog:
        events: list[Event] = []
        catalog = self._read(lambda conn: self._sync(conn, events))
        self._deliver(events)
        return catalog

    def refresh(self) -> None:
        self._current()

    def _record_change(
        self,
        conn: sqlite3.Connection,
        catalog: Catalog,
        budget_id: str,
        kind: ChangeKind,
        new_limit: int | None,
        previous_limit: int | None,
        instance: str | None,
        budgets: dict[str, Budget],
        events: list[Event],
    ) -> None:
        """Log a change, bump the version, and update this process's catalog (no reload, no echo).
        ``catalog`` is this transaction's (``_sync``); ``budgets`` its budgets after the change."""
        cur = conn.execute(
            "INSERT INTO changes (budget_id, kind, new_limit, previous_limit, instance, at) VALUES (?, ?, ?, ?, ?, ?)",
            (budget_id, kind, new_limit, previous_limit, instance, us(self.clock.now())),
        )
        seq = cur.lastrowid
        assert seq is not None
        conn.execute("UPDATE meta SET value = ? WHERE key = 'budgets_version'", (seq,))
        order = tuple(budgets[b] for b in sorted(budgets))
        self._local.pending = catalog._replace(version=seq, budgets=budgets, order=order)
        events.append(budget_changed(budget_id, kind, new_limit, previous_limit, instance, seq))

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
                (budget.id, definition, limit, us(self.clock.now())),
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
                (definition, limit, override, us(self.clock.now()), budget.id),
            )
        effective = budget if override is None else replace(budget, limit=Money(override))
        budgets = dict(catalog.budgets)
        budgets[budget.id] = effective
        self._record_change(
            conn, catalog, budget.id, "put", effective.limit.nanos, previous, None, budgets, events
        )

    # -- the write path, proven -------------------------------------------------------------
    def _probe_op(self) -> Op:
        """One committed write of its own (a counter in ``meta``), checking the stored id too."""
        self._verify()  # a lost file says so, not that it cannot be written
        unwritable = self._unwritable()
        if unwritable is not None:
            # The open connections may still write (modes are checked at open, and a read-only
            # main file still takes WAL appends), but a restart or a new worker could not.
            raise LedgerUnavailableError(
                f"spendgate ledger {self.path!r} is not writable ({unwritable} cannot be written): "
                "a new connection, another worker or a restart would fail. Check its modes, "
                "attributes (lsattr) and the mount."
            )

        def body(conn: sqlite3.Connection) -> None:
            self._verify_id(conn)  # a file overwritten in place keeps its inode
            conn.execute(_SQL_PROBE)

        def failed(exc: LedgerUnavailableError) -> None:
            raise exc  # fail_open admits requests; it does not make the ledger writable

        return Op(body, lambda _: None, failed)

    def check_writable(self) -> None:
        self._run(self._probe_op())

    async def acheck_writable(self) -> None:
        """Through this loop's group commit: the writer the gateway's requests use."""
        await self._arun([self._probe_op()])

    # -- write ops ------------------------------------------------------------------------
    def _run(self, op: Op) -> Any:
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

    async def _arun(self, ops: Sequence[Op]) -> Any:
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
