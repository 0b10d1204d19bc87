"""What every job of the PostgreSQL ledger shares: its state, the budgets catalog, and ops.

The schema holds the budgets (definitions and limits) and the rate limits, so every process
and host enforces the same set. Each process caches them as a ``Catalog`` (the SQLite
backend's) keyed by ``budgets_version`` and ``limits_version`` in ``meta``. A change locks its
version's row first (``FOR UPDATE``), so versions are given in commit order and ``changes.seq``
is the version a change made: a process that sees a newer version loads what changed
(``sg_catalog``: one statement, one snapshot) and tells its subscribers about the changes in
between. The hot path checks the versions inside ``sg_reserve`` (a plan made on an old catalog
writes nothing and is made again) and learns them from ``sg_end``.

A write is an ``Op``: a ``Body`` (connection.py) plus what to do with its result on the
caller's side (events are delivered there) or with an outage (fail-open or raise). The same
op runs on the blocking pool (``_run``) or on the event loop's (``_arun``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, NamedTuple

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
from spendgate.ledger.postgres.connection import Body, BodyFactory, PgStore, Q, ServerUnavailableError
from spendgate.ledger.postgres.schema import migrate
from spendgate.ledger.postgres.settings import PgSettings
from spendgate.ledger.rows import budget_changed, budgets_of
from spendgate.ledger.sqlite.codec import us
from spendgate.ledger.sqlite.core import EMPTY_CATALOG, Catalog, LimitEntry
from spendgate.limits import Limit
from spendgate.money import Money

__all__ = ["LedgerCore", "Op", "fresh"]

log = logging.getLogger("spendgate.ledger")

_SQL_CATALOG = "SELECT sg_catalog(%s::bigint, %s::bigint)"
_SQL_LOCK_BUDGETS = "SELECT value FROM meta WHERE key = 'budgets_version' FOR UPDATE"


@dataclass(slots=True)
class Op:
    """One operation: ``body`` makes its statements (a fresh generator per run); ``done`` and
    ``failed`` run on the caller's side with its outcome, ``failed`` only for an unavailable
    ledger (fail-open or raise). ``txn``: its statements share one transaction."""

    body: BodyFactory[Any]
    done: Callable[[Any], Any]
    failed: Callable[[LedgerUnavailableError], Any]
    txn: bool = False


def fresh(events: list[Event], body: Callable[[], Body[Any]]) -> BodyFactory[Any]:
    """``body`` that forgets the thresholds of an earlier run (a deadlock reruns a transaction:
    it must not announce them twice). Budget changes stay: they were installed when heard."""

    def run() -> Body[Any]:
        events[:] = [e for e in events if not isinstance(e, ThresholdCrossed)]
        return body()

    return run


class Changed(NamedTuple):
    """What a budget or limit change leaves: its result and the catalog to install at commit."""

    value: Any
    catalog: Catalog | None


class LedgerCore(PgStore, Ledger):
    """The state and shared machinery of ``PostgresLedger``; each job is a mixin on top of it."""

    scheme = "postgresql"

    def __init__(
        self,
        settings: PgSettings,
        budgets: Iterable[Budget] = (),
        *,
        clock: Clock | None = None,
        retention: timedelta = DEFAULT_RETENTION,
        fail_open: bool = False,
        expiry_interval: timedelta = timedelta(seconds=1),
        purge_interval: timedelta = timedelta(minutes=1),
        create: bool = True,
        busy_timeout: float | None = None,
    ) -> None:
        Ledger.__init__(self, clock=clock, retention=retention, fail_open=fail_open)
        PgStore.__init__(self, settings, create=create, lock_timeout=busy_timeout)
        self.expiry_interval = expiry_interval
        self.purge_interval = purge_interval
        self._catalog = EMPTY_CATALOG
        self._next_expiry = EPOCH
        self._next_purge = EPOCH
        self._pending = list(budgets)  # put at setup, once the server answers
        try:
            self._setup_done(self._execute_raw(self._setup_body, txn=True))
        except LedgerMissingError:
            self.close()
            raise  # asked to open an existing ledger: there is none
        except ServerUnavailableError as exc:
            if not create:
                self.close()
                raise
            # A gateway may start before its database: every call sets up until it succeeds.
            log.error("spendgate: %s; its setup is deferred to the first call that reaches it", exc)
        except LedgerUnavailableError:
            if not fail_open:
                self.close()
                raise
            log.error("spendgate: ledger %s unavailable at start; FAIL-OPEN: admitting unrecorded",
                      settings.display)  # fmt: skip

    @property
    def path(self) -> str:
        """The ledger's URL as messages show it (password masked)."""
        return self.settings.display

    # -- hooks of the other jobs ------------------------------------------------------------
    def _maybe_purge(self) -> None:
        """After a settle: the retention purge when it is due (request_log.py)."""

    def _maybe_apurge(self) -> None:
        """After an asyncio settle: the retention purge as a task of its own (request_log.py)."""

    # -- setup: the schema and the budgets from config ---------------------------------------
    def _setup_body(self) -> Body[tuple[Catalog, list[Event]]]:
        yield from migrate(self.settings.schema, self.settings.display, create=self.create)
        events: list[Event] = []
        catalog = yield from self._lock_budgets(events)
        for budget in self._pending:
            catalog = yield from self._put_in(catalog, budget, events)
        return catalog, events

    def _setup_done(self, value: Any) -> None:
        catalog, events = value
        self._pending = []
        self._ready = True
        self._install(catalog)
        self._deliver(events)

    # -- the budgets catalog --------------------------------------------------------------
    def _catalog_body(self, events: list[Event]) -> Body[Catalog]:
        """The budgets and limits now (one statement); installs them if newer and reports the
        budget changes in between to this process's subscribers (each heard once)."""
        base = self._catalog
        rows = yield Q(_SQL_CATALOG, (base.version, base.limits_version))
        return self._absorb(base, rows[0][0], events)

    def _absorb(self, base: Catalog, doc: dict[str, Any], events: list[Event]) -> Catalog:
        version, limits_version = int(doc["bv"]), int(doc["lv"])
        if doc.get("budgets") is None:
            budgets, order = base.budgets, base.order
        else:
            budgets = budgets_of(doc["budgets"])
            order = tuple(budgets.values())
        if doc.get("limits") is None:
            limits, limit_order = base.limits, base.limit_order
        else:
            limits = {
                limit_id: LimitEntry(Limit.from_config(json.loads(definition), f"limits[{limit_id!r}]"), gen)
                for limit_id, definition, gen in doc["limits"]
            }
            limit_order = tuple(limits.values())
        loaded = Catalog(version, budgets, order, limits_version, limits, limit_order)
        with self._lock:
            since = self._catalog.version
            if not loaded.newer_than(self._catalog):
                return loaded  # another thread got there first (or this snapshot is older)
            self._catalog = loaded
        if since >= 0 and doc.get("changes"):
            events.extend(
                budget_changed(row[1], row[2], row[3], row[4], row[5], row[0])
                for row in doc["changes"]
                if row[0] > since
            )
        return loaded

    def _install(self, catalog: Catalog | None) -> None:
        if catalog is None:
            return
        with self._lock:
            if catalog.newer_than(self._catalog):  # never go back to an older snapshot
                self._catalog = catalog

    def _current(self) -> Catalog:
        events: list[Event] = []
        catalog: Catalog = self._execute(lambda: self._catalog_body(events), txn=False)
        self._deliver(events)
        return catalog

    def refresh(self) -> None:
        self._current()

    def _lock_budgets(self, events: list[Event]) -> Body[Catalog]:
        """In a transaction: take the budgets' version row (every budget change waits for the
        others) and return the catalog as of now."""
        rows = yield Q(_SQL_LOCK_BUDGETS)
        catalog = self._catalog
        if int(rows[0][0]) != catalog.version:
            catalog = yield from self._catalog_body(events)
        return catalog

    def _record_change(
        self,
        catalog: Catalog,
        budget_id: str,
        kind: ChangeKind,
        new_limit: int | None,
        previous_limit: int | None,
        instance: str | None,
        budgets: dict[str, Budget],
        events: list[Event],
    ) -> Body[Catalog]:
        """Log a change, bump the version; the catalog this transaction leaves (no reload, no
        echo). ``catalog`` is this transaction's; ``budgets`` its budgets after the change."""
        seq = catalog.version + 1
        yield Q(
            "INSERT INTO changes (seq, budget_id, kind, new_limit, previous_limit, instance, at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (seq, budget_id, kind, new_limit, previous_limit, instance, us(self.clock.now())),
        )
        yield Q("UPDATE meta SET value = %s WHERE key = 'budgets_version'", (seq,))
        events.append(budget_changed(budget_id, kind, new_limit, previous_limit, instance, seq))
        order = tuple(budgets[b] for b in sorted(budgets))
        return catalog._replace(version=seq, budgets=budgets, order=order)

    def _put_in(self, catalog: Catalog, budget: Budget, events: list[Event]) -> Body[Catalog]:
        config = budget.to_config()
        del config["limit"]
        definition = json.dumps(config, sort_keys=True, separators=(",", ":"))
        limit = budget.limit.nanos
        now = us(self.clock.now())
        rows = yield Q(
            "SELECT definition, config_limit, limit_override FROM budgets WHERE id = %s", (budget.id,)
        )
        previous: int | None = None
        override: int | None = None
        if not rows:
            yield Q(
                "INSERT INTO budgets (id, definition, config_limit, limit_override, updated_at) "
                "VALUES (%s, %s, %s, NULL, %s)",
                (budget.id, definition, limit, now),
            )
        else:
            old_definition, old_limit, old_override = rows[0]
            if old_definition == definition and old_limit == limit:
                return catalog  # every process starts with the same config: nothing changed
            previous = old_override if old_override is not None else old_limit
            # A set_limit() stays in force until the configured limit itself changes.
            override = old_override if old_limit == limit else None
            yield Q(
                "UPDATE budgets SET definition = %s, config_limit = %s, limit_override = %s, "
                "updated_at = %s WHERE id = %s",
                (definition, limit, override, now, budget.id),
            )
        effective = budget if override is None else replace(budget, limit=Money(override))
        budgets = dict(catalog.budgets)
        budgets[budget.id] = effective
        return (
            yield from self._record_change(
                catalog, budget.id, "put", effective.limit.nanos, previous, None, budgets, events
            )
        )

    def _change_budgets(self, change: Callable[[Catalog, list[Event]], Body[Changed]]) -> Any:
        """Run a budget change in one transaction (after ``_lock_budgets``); install its
        catalog at commit and deliver its events."""
        events: list[Event] = []

        def body() -> Body[Changed]:
            catalog = yield from self._lock_budgets(events)
            return (yield from change(catalog, events))

        done: Changed = self._execute(body, txn=True)
        self._install(done.catalog)
        self._deliver(events)
        return done.value

    # -- the write path, proven -------------------------------------------------------------
    def _probe_op(self) -> Op:
        """A committed write of its own (a counter in ``meta``), flushed as a durable commit."""

        def body() -> Body[None]:
            yield Q("SET LOCAL synchronous_commit TO on")
            yield Q("UPDATE meta SET value = value + 1 WHERE key = 'probes' RETURNING value")

        def failed(exc: LedgerUnavailableError) -> None:
            raise exc  # fail_open admits requests; it does not make the ledger writable

        return Op(body, lambda _: None, failed, txn=True)

    def check_writable(self) -> None:
        self._run(self._probe_op())

    async def acheck_writable(self) -> None:
        await self._arun(self._probe_op())

    # -- running ops -------------------------------------------------------------------------
    def _run(self, op: Op) -> Any:
        """Run one op on this thread (the blocking pool)."""
        try:
            value = self._execute(op.body, txn=op.txn)
        except LedgerUnavailableError as exc:
            return op.failed(exc)
        return op.done(value)

    async def _arun(self, op: Op) -> Any:
        """Run one op on the running loop's pool."""
        try:
            value = await self._aexecute(op.body, txn=op.txn)
        except LedgerUnavailableError as exc:
            return op.failed(exc)
        return op.done(value)
