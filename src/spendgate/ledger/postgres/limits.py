"""Rate limits over PostgreSQL: their definitions and their counts.

What a reservation takes and gives back is in the server-side functions (``sg_reserve``,
``sg_give_back`` in schema.sql), planned by the SQLite backend's pure ``plan_limits``; the
storage is the SQLite one's (``limits``, ``limit_buckets``, ``limit_flight``), the semantics
``MemoryLimits``'. Each change is one transaction that locks and bumps ``limits_version``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from spendgate.ledger.base import Event
from spendgate.ledger.postgres.codec import us
from spendgate.ledger.postgres.connection import Body, Q
from spendgate.ledger.postgres.core import Changed, LedgerCore
from spendgate.ledger.sqlite.core import Catalog, LimitEntry
from spendgate.limits import BUCKETS, Limit, LimitUsage, bucket_of

__all__ = ["LimitAdminMixin", "prune_limits"]

T = TypeVar("T")

_SQL_LOCK = "SELECT value FROM meta WHERE key = 'limits_version' FOR UPDATE"
_SQL_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'limits_version' RETURNING value"
_SQL_FLIGHT = "SELECT in_flight FROM limit_flight WHERE limit_id = %s AND instance = %s"
_SQL_WINDOW_SUM = """
    SELECT coalesce(sum(amount), 0) FROM limit_buckets WHERE limit_id = %s AND instance = %s AND bucket >= %s"""


def prune_limits(now_us: int) -> Body[int]:
    """Buckets that left their window, of every instance, and concurrency rows with nothing
    in flight; how many rows went."""
    rows = yield Q(
        "WITH gone AS (DELETE FROM limit_buckets AS b USING limits AS l "
        "WHERE l.id = b.limit_id AND l.width_us > 0 AND b.bucket < %s / l.width_us - %s RETURNING 1) "
        "SELECT count(*) FROM gone",
        (now_us, BUCKETS),
    )
    deleted = int(rows[0][0])
    rows = yield Q(
        "WITH gone AS (DELETE FROM limit_flight WHERE in_flight <= 0 RETURNING 1) SELECT count(*) FROM gone"
    )
    return deleted + int(rows[0][0])


class LimitAdminMixin(LedgerCore):
    """``LimitAdmin`` over PostgreSQL: every process picks a change up at its next call."""

    def put_limit(self, limit: Limit) -> None:
        if not isinstance(limit, Limit):
            raise TypeError(f"put_limit takes a Limit, got {type(limit).__name__}")
        self._change_limits(lambda catalog: self._put_limit_in(catalog, limit))

    def remove_limit(self, limit_id: str) -> bool:
        removed: bool = self._change_limits(lambda catalog: self._remove_limit_in(catalog, limit_id))
        return removed

    def get_limit(self, limit_id: str) -> Limit:
        return self._entry(self._current(), limit_id).limit

    def limits(self) -> list[Limit]:
        return [entry.limit for entry in self._current().limit_order]

    def limit_usage(self, limit_id: str, instance: Mapping[str, str] | str | None = None) -> LimitUsage:
        now = self.clock.now()

        def body(catalog: Catalog) -> Body[LimitUsage]:
            limit = self._entry(catalog, limit_id).limit
            key = limit.instance_key(instance)
            used = yield from _used(limit, key, now)
            return LimitUsage(limit, key, used)

        result: LimitUsage = self._read_limits(body)
        return result

    def list_limits(self) -> list[LimitUsage]:
        now = self.clock.now()

        def body(catalog: Catalog) -> Body[list[LimitUsage]]:
            out: list[LimitUsage] = []
            for entry in catalog.limit_order:
                limit = entry.limit
                rows: list[tuple[Any, ...]] = []
                if limit.kind == "concurrency":
                    rows = yield Q(
                        "SELECT instance, in_flight FROM limit_flight WHERE limit_id = %s "
                        'ORDER BY instance COLLATE "C"',
                        (limit.id,),
                    )
                elif limit.windowed:
                    rows = yield Q(
                        "SELECT instance, sum(amount) FROM limit_buckets WHERE limit_id = %s AND bucket >= %s "
                        'GROUP BY instance ORDER BY instance COLLATE "C"',
                        (limit.id, bucket_of(now, limit.width_us) - BUCKETS),
                    )
                counts = {key: int(used) for key, used in rows}
                if not limit.wildcards and "" not in counts:
                    out.append(LimitUsage(limit, "", 0))
                out.extend(LimitUsage(limit, key, used) for key, used in counts.items())
            return out

        result: list[LimitUsage] = self._read_limits(body)
        return result

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _entry(catalog: Catalog, limit_id: str) -> LimitEntry:
        entry = catalog.limits.get(limit_id)
        if entry is None:
            raise KeyError(f"no limit {limit_id!r}; known: {', '.join(catalog.limits) or 'none'}")
        return entry

    def _read_limits(self, body: Callable[[Catalog], Body[T]]) -> T:
        events: list[Event] = []

        def run() -> Body[T]:
            catalog = yield from self._catalog_body(events)
            return (yield from body(catalog))

        result: T = self._execute(run, txn=False)
        self._deliver(events)  # budget changes this read heard of first
        return result

    def _change_limits(self, change: Callable[[Catalog], Body[Changed]]) -> Any:
        events: list[Event] = []

        def run() -> Body[Changed]:
            rows = yield Q(_SQL_LOCK)
            catalog = self._catalog
            if int(rows[0][0]) != catalog.limits_version:
                catalog = yield from self._catalog_body(events)
            return (yield from change(catalog))

        done: Changed = self._execute(run, txn=True)
        self._install(done.catalog)
        self._deliver(events)
        return done.value

    @staticmethod
    def _changed(catalog: Catalog, version: int, limits: dict[str, LimitEntry]) -> Catalog:
        return catalog._replace(limits_version=version, limits=limits, limit_order=tuple(limits.values()))

    def _put_limit_in(self, catalog: Catalog, limit: Limit) -> Body[Changed]:
        definition = json.dumps(limit.to_config(), sort_keys=True, separators=(",", ":"))
        rows = yield Q("SELECT definition, generation FROM limits WHERE id = %s", (limit.id,))
        if rows and rows[0][0] == definition:
            return Changed(None, None)  # every process starts with the same config: nothing changed
        bumped = yield Q(_SQL_BUMP)
        version = int(bumped[0][0])
        now_us = us(self.clock.now())
        if not rows:
            generation = version
            yield Q(
                "INSERT INTO limits (id, seq, definition, kind, width_us, generation, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (limit.id, version, definition, limit.kind, limit.width_us, generation, now_us),
            )
        else:
            old = catalog.limits.get(limit.id)
            # The counts are kept while it counts the same kind over the same window.
            same = old is not None and old.limit.kind == limit.kind and old.limit.per == limit.per
            generation = int(rows[0][1]) if same else version
            if not same:
                yield from _drop_counts(limit.id)
            yield Q(
                "UPDATE limits SET definition = %s, kind = %s, width_us = %s, generation = %s, updated_at = %s "
                "WHERE id = %s",
                (definition, limit.kind, limit.width_us, generation, now_us, limit.id),
            )
        limits = dict(catalog.limits)
        limits[limit.id] = LimitEntry(limit, generation)  # a replaced one keeps its place, as in memory
        return Changed(None, self._changed(catalog, version, limits))

    def _remove_limit_in(self, catalog: Catalog, limit_id: str) -> Body[Changed]:
        rows = yield Q("DELETE FROM limits WHERE id = %s RETURNING 1", (limit_id,))
        if not rows:
            return Changed(False, None)
        yield from _drop_counts(limit_id)  # as in memory: added again, it counts from zero
        bumped = yield Q(_SQL_BUMP)
        limits = {k: v for k, v in catalog.limits.items() if k != limit_id}
        return Changed(True, self._changed(catalog, int(bumped[0][0]), limits))


def _drop_counts(limit_id: str) -> Body[None]:
    yield Q("DELETE FROM limit_buckets WHERE limit_id = %s", (limit_id,))
    yield Q("DELETE FROM limit_flight WHERE limit_id = %s", (limit_id,))


def _used(limit: Limit, key: str, now: datetime) -> Body[int]:
    if limit.kind == "concurrency":
        rows = yield Q(_SQL_FLIGHT, (limit.id, key))
        return int(rows[0][0]) if rows else 0
    if not limit.windowed:
        return 0  # prompt_tokens counts nothing over time
    oldest = bucket_of(now, limit.width_us) - BUCKETS
    rows = yield Q(_SQL_WINDOW_SUM, (limit.id, key, oldest))
    return int(rows[0][0])
