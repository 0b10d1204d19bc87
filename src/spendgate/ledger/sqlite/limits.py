"""Rate limits over SQLite: their definitions, their counts, and what a reservation takes.

A windowed limit instance is its rows of ``limit_buckets`` (one per bucket of ``per / 20``);
a concurrency instance its row of ``limit_flight``. A reserve plans its takes before the write
lock (``plan_limits``: matching, buckets, the JSON the request row keeps), then takes each with
one conditional upsert whose condition is the window's ``SUM`` over at most 21 rows
(``take_limits``), in the transaction that holds its budgets: all or none. An ending gives back
what ``MemoryLimits.end`` does (``give_back``), to the counts it took from: a take names the
limit's generation, and a limit whose counts started over since (another kind or window, or
removed and added again) gets nothing back from it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, NamedTuple, TypeVar

from spendgate.budgets import Attributes
from spendgate.ledger.base import Event
from spendgate.ledger.sqlite.codec import us
from spendgate.ledger.sqlite.core import Catalog, LedgerCore, LimitEntry
from spendgate.limits import (
    BUCKETS,
    Demand,
    Limit,
    LimitEnding,
    LimitRefusal,
    LimitUsage,
    bucket_of,
    seconds_until_fits,
    takes_of,
    window_change,
    window_sum,
)

__all__ = [
    "NO_LIMITS",
    "LimitAdminMixin",
    "LimitPlan",
    "give_back",
    "plan_limits",
    "prune_limits",
    "take_limits",
]


T = TypeVar("T")

# -- statements (constant text, so sqlite3's statement cache prepares each once) -----------

# Take ?4 in bucket ?3 only while the window (buckets ?5 = ?3 - 20 on) plus ?4 fits ?6.
# RETURNING says whether the bucket is new (amount = ?4): then older buckets are pruned.
_SQL_WINDOW_TAKE = """
    INSERT INTO limit_buckets (limit_id, instance, bucket, amount)
    SELECT ?1, ?2, ?3, ?4
    WHERE ?4 + (SELECT coalesce(sum(amount), 0) FROM limit_buckets
                WHERE limit_id = ?1 AND instance = ?2 AND bucket >= ?5) <= ?6
    ON CONFLICT (limit_id, instance, bucket) DO UPDATE SET amount = amount + excluded.amount
    RETURNING amount"""
# Buckets that left the window for good (time only moves on): at most one or two per new bucket.
_SQL_WINDOW_PRUNE = "DELETE FROM limit_buckets WHERE limit_id = ? AND instance = ? AND bucket < ?"
_SQL_WINDOW_PRUNE_ALL = "DELETE FROM limit_buckets WHERE limit_id = ? AND bucket < ?"
_SQL_WINDOW = "SELECT bucket, amount FROM limit_buckets WHERE limit_id = ? AND instance = ? AND bucket >= ?"
_SQL_WINDOW_SUM = """
    SELECT coalesce(sum(amount), 0) FROM limit_buckets WHERE limit_id = ? AND instance = ? AND bucket >= ?"""
_SQL_WINDOW_UNDO = """
    UPDATE limit_buckets SET amount = amount - ? WHERE limit_id = ? AND instance = ? AND bucket = ?"""
# A give-back never goes below zero, and a bucket already pruned stays gone (out of the window).
_SQL_WINDOW_GIVE = """
    UPDATE limit_buckets SET amount = max(amount - ?, 0) WHERE limit_id = ? AND instance = ? AND bucket = ?"""
_SQL_WINDOW_ADD = """
    INSERT INTO limit_buckets (limit_id, instance, bucket, amount) VALUES (?, ?, ?, ?)
    ON CONFLICT (limit_id, instance, bucket) DO UPDATE SET amount = amount + excluded.amount"""
# One more in flight (?3) while it fits ?4, like a budget line's hold.
_SQL_FLIGHT_TAKE = """
    INSERT INTO limit_flight (limit_id, instance, in_flight)
    SELECT ?1, ?2, ?3 WHERE ?3 <= ?4
    ON CONFLICT (limit_id, instance) DO UPDATE SET in_flight = in_flight + excluded.in_flight
        WHERE in_flight + excluded.in_flight <= ?4"""
_SQL_FLIGHT = "SELECT in_flight FROM limit_flight WHERE limit_id = ? AND instance = ?"
_SQL_FLIGHT_GIVE = """
    UPDATE limit_flight SET in_flight = max(in_flight - ?, 0) WHERE limit_id = ? AND instance = ?"""
_SQL_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'limits_version' RETURNING value"

_FLIGHT: Final = 0  # LimitCheck.kind: a concurrency count
_WINDOW: Final = 1  # a sliding window


class LimitCheck(NamedTuple):
    """One limit instance a reservation takes from, worked out before the write lock."""

    entry: LimitEntry
    kind: int  # _FLIGHT or _WINDOW
    params: tuple[Any, ...]  # the take statement's parameters


class LimitPlan(NamedTuple):
    """What a reserve takes from the limits: checks in the catalog's order, or the refusal
    a limit gives without looking at any count (a prompt larger than a prompt_tokens limit);
    ``takes`` is the JSON the request row keeps for the ending."""

    checks: tuple[LimitCheck | LimitRefusal, ...]
    takes: str | None


NO_LIMITS: Final = LimitPlan((), None)


def _limit_of(entry: LimitEntry) -> Limit:
    return entry.limit


def plan_limits(
    catalog: Catalog, request_id: str, attributes: Attributes, demand: Demand, now: datetime
) -> LimitPlan:
    """Match the request against every limit and work out each take (no I/O)."""
    checks: list[LimitCheck | LimitRefusal] = []
    takes: list[tuple[str, int, str, int, int]] = []
    for item in takes_of(catalog.limit_order, _limit_of, request_id, attributes, demand):
        if isinstance(item, LimitRefusal):
            checks.append(item)
            break
        entry, key, need = item
        limit = entry.limit
        if limit.kind == "concurrency":
            checks.append(LimitCheck(entry, _FLIGHT, (limit.id, key, need, limit.amount)))
            takes.append((limit.id, entry.generation, key, 0, need))
            continue
        bucket = bucket_of(now, limit.width_us)
        checks.append(
            LimitCheck(entry, _WINDOW, (limit.id, key, bucket, need, bucket - BUCKETS, limit.amount))
        )
        takes.append((limit.id, entry.generation, key, bucket, need))
    if not checks:
        return NO_LIMITS
    return LimitPlan(tuple(checks), json.dumps(takes, separators=(",", ":")) if takes else None)


def take_limits(
    conn: sqlite3.Connection, plan: LimitPlan, request_id: str, now: datetime
) -> LimitRefusal | None:
    """Take every check of ``plan``, or none: the first refusal undoes the takes before it
    (here, not by a rollback: in a group commit the transaction holds other requests too)."""
    done: list[LimitCheck] = []
    refusal: LimitRefusal | None = None
    for check in plan.checks:
        if isinstance(check, LimitRefusal):
            refusal = check
            break
        if check.kind == _FLIGHT:
            if conn.execute(_SQL_FLIGHT_TAKE, check.params).rowcount == 0:
                refusal = _flight_refusal(conn, check, request_id)
                break
        else:
            taken = conn.execute(_SQL_WINDOW_TAKE, check.params).fetchall()
            if not taken:
                refusal = _window_refusal(conn, check, request_id, now)
                break
            if taken[0][0] == check.params[3]:  # a new bucket: drop those that left the window
                conn.execute(_SQL_WINDOW_PRUNE, (check.params[0], check.params[1], check.params[4]))
        done.append(check)
    else:
        return None
    for check in done:
        if check.kind == _FLIGHT:
            limit_id, key, need, _ = check.params
            conn.execute(_SQL_FLIGHT_GIVE, (need, limit_id, key))
        else:
            limit_id, key, bucket, need, _, _ = check.params
            conn.execute(_SQL_WINDOW_UNDO, (need, limit_id, key, bucket))
    return refusal


def _flight_refusal(conn: sqlite3.Connection, check: LimitCheck, request_id: str) -> LimitRefusal:
    limit_id, key, need, amount = check.params
    row = conn.execute(_SQL_FLIGHT, (limit_id, key)).fetchone()
    retry = None if need > amount else 0.0  # room frees when one in flight ends
    return LimitRefusal(request_id, check.entry.limit, key, row[0] if row else 0, need, retry)


def _window_refusal(
    conn: sqlite3.Connection, check: LimitCheck, request_id: str, now: datetime
) -> LimitRefusal:
    limit_id, key, bucket, need, oldest, amount = check.params
    buckets = dict(conn.execute(_SQL_WINDOW, (limit_id, key, oldest)).fetchall())
    limit = check.entry.limit
    retry = seconds_until_fits(buckets, bucket, limit.width_us, now, amount, need)
    return LimitRefusal(request_id, limit, key, window_sum(buckets, bucket), need, retry)


def give_back(
    conn: sqlite3.Connection,
    catalog: Catalog,
    takes: str,
    how: LimitEnding,
    used: Demand | None = None,
    cost: int = 0,
) -> None:
    """Give back at a request's ending: concurrency always; of a window, as
    ``limits.window_change`` says."""
    for limit_id, generation, key, bucket, amount in json.loads(takes):
        entry = catalog.limits.get(limit_id)
        if entry is None or entry.generation != generation:
            continue  # its counts were dropped (removed, or now counting something else)
        kind = entry.limit.kind
        if kind == "concurrency":
            conn.execute(_SQL_FLIGHT_GIVE, (amount, limit_id, key))
            continue
        change = window_change(kind, amount, how, used, cost)
        if change < 0:
            conn.execute(_SQL_WINDOW_GIVE, (-change, limit_id, key, bucket))
        elif change > 0:  # the provider billed past the bound: count it
            conn.execute(_SQL_WINDOW_ADD, (limit_id, key, bucket, change))


def prune_limits(conn: sqlite3.Connection, now_us: int) -> int:
    """Buckets that left their window, of every instance (the hot path prunes only the
    instance it takes from: an instance no request names again keeps its last window), and
    concurrency rows with nothing in flight; how many rows went."""
    deleted = 0
    windowed = conn.execute("SELECT id, width_us FROM limits WHERE width_us > 0").fetchall()
    for limit_id, width_us in windowed:
        # bucket_of(now) - BUCKETS is the oldest bucket a window still counts.
        deleted += conn.execute(_SQL_WINDOW_PRUNE_ALL, (limit_id, now_us // width_us - BUCKETS)).rowcount
    deleted += conn.execute("DELETE FROM limit_flight WHERE in_flight <= 0").rowcount
    return deleted


class LimitAdminMixin(LedgerCore):
    """``LimitAdmin`` over SQLite: each change is one transaction that bumps ``limits_version``,
    so every process picks it up at its next transaction."""

    def put_limit(self, limit: Limit) -> None:
        if not isinstance(limit, Limit):
            raise TypeError(f"put_limit takes a Limit, got {type(limit).__name__}")
        self._change_limits(lambda conn, catalog: self._put_limit_in(conn, catalog, limit))

    def remove_limit(self, limit_id: str) -> bool:
        return self._change_limits(lambda conn, catalog: self._remove_limit_in(conn, catalog, limit_id))

    def get_limit(self, limit_id: str) -> Limit:
        return self._entry(self._current(), limit_id).limit

    def limits(self) -> list[Limit]:
        return [entry.limit for entry in self._current().limit_order]

    def limit_usage(self, limit_id: str, instance: Mapping[str, str] | str | None = None) -> LimitUsage:
        now = self.clock.now()

        def body(conn: sqlite3.Connection, catalog: Catalog) -> LimitUsage:
            limit = self._entry(catalog, limit_id).limit
            key = limit.instance_key(instance)
            return LimitUsage(limit, key, _used(conn, limit, key, now))

        return self._read_limits(body)

    def list_limits(self) -> list[LimitUsage]:
        """Every limit without wildcards, and every wildcard instance with a count now (a
        bucket in its window, or a concurrency row)."""
        now = self.clock.now()

        def body(conn: sqlite3.Connection, catalog: Catalog) -> list[LimitUsage]:
            out: list[LimitUsage] = []
            for entry in catalog.limit_order:
                limit = entry.limit
                if limit.kind == "concurrency":
                    rows = conn.execute(
                        "SELECT instance, in_flight FROM limit_flight WHERE limit_id = ? ORDER BY instance",
                        (limit.id,),
                    ).fetchall()
                elif limit.windowed:
                    rows = conn.execute(
                        "SELECT instance, sum(amount) FROM limit_buckets WHERE limit_id = ? AND bucket >= ? "
                        "GROUP BY instance ORDER BY instance",
                        (limit.id, bucket_of(now, limit.width_us) - BUCKETS),
                    ).fetchall()
                else:
                    rows = []
                counts = dict(rows)
                if not limit.wildcards and "" not in counts:
                    out.append(LimitUsage(limit, "", 0))
                out.extend(LimitUsage(limit, key, used) for key, used in counts.items())
            return out

        return self._read_limits(body)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _entry(catalog: Catalog, limit_id: str) -> LimitEntry:
        entry = catalog.limits.get(limit_id)
        if entry is None:
            raise KeyError(f"no limit {limit_id!r}; known: {', '.join(catalog.limits) or 'none'}")
        return entry

    def _read_limits(self, body: Callable[[sqlite3.Connection, Catalog], T]) -> T:
        events: list[Event] = []
        result = self._read(lambda conn: body(conn, self._sync(conn, events)))
        self._deliver(events)  # budget changes this read heard of first
        return result

    def _change_limits(self, body: Callable[[sqlite3.Connection, Catalog], T]) -> T:
        events: list[Event] = []
        result = self._write(lambda conn: body(conn, self._sync(conn, events)))
        self._deliver(events)
        return result

    def _changed(self, catalog: Catalog, version: int, limits: dict[str, LimitEntry]) -> None:
        """This process's catalog takes ``limits`` at COMMIT (no reload, and no other process's
        change is missed: ``version`` is the one this transaction wrote)."""
        self._local.pending = catalog._replace(
            limits_version=version, limits=limits, limit_order=tuple(limits.values())
        )

    def _put_limit_in(self, conn: sqlite3.Connection, catalog: Catalog, limit: Limit) -> None:
        definition = json.dumps(limit.to_config(), sort_keys=True, separators=(",", ":"))
        row = conn.execute("SELECT definition, generation FROM limits WHERE id = ?", (limit.id,)).fetchone()
        if row is not None and row[0] == definition:
            return  # every process starts with the same config: nothing changed
        version = int(conn.execute(_SQL_BUMP).fetchall()[0][0])
        now_us = us(self.clock.now())
        if row is None:
            generation = version
            conn.execute(
                "INSERT INTO limits (id, definition, width_us, generation, updated_at) VALUES (?, ?, ?, ?, ?)",
                (limit.id, definition, limit.width_us, generation, now_us),
            )
        else:
            old = catalog.limits.get(limit.id)
            # The counts are kept while it counts the same kind over the same window.
            same = old is not None and old.limit.kind == limit.kind and old.limit.per == limit.per
            generation = row[1] if same else version
            if not same:
                _drop_counts(conn, limit.id)
            conn.execute(
                "UPDATE limits SET definition = ?, width_us = ?, generation = ?, updated_at = ? WHERE id = ?",
                (definition, limit.width_us, generation, now_us, limit.id),
            )
        limits = dict(catalog.limits)
        limits[limit.id] = LimitEntry(limit, generation)  # a replaced one keeps its place, as in memory
        self._changed(catalog, version, limits)

    def _remove_limit_in(self, conn: sqlite3.Connection, catalog: Catalog, limit_id: str) -> bool:
        if conn.execute("DELETE FROM limits WHERE id = ?", (limit_id,)).rowcount == 0:
            return False
        _drop_counts(conn, limit_id)  # as in memory: added again, it counts from zero
        version = int(conn.execute(_SQL_BUMP).fetchall()[0][0])
        self._changed(catalog, version, {k: v for k, v in catalog.limits.items() if k != limit_id})
        return True


def _drop_counts(conn: sqlite3.Connection, limit_id: str) -> None:
    conn.execute("DELETE FROM limit_buckets WHERE limit_id = ?", (limit_id,))
    conn.execute("DELETE FROM limit_flight WHERE limit_id = ?", (limit_id,))


def _used(conn: sqlite3.Connection, limit: Limit, key: str, now: datetime) -> int:
    if limit.kind == "concurrency":
        row = conn.execute(_SQL_FLIGHT, (limit.id, key)).fetchone()
        return int(row[0]) if row else 0
    if not limit.windowed:
        return 0  # prompt_tokens counts nothing over time
    oldest = bucket_of(now, limit.width_us) - BUCKETS
    return int(conn.execute(_SQL_WINDOW_SUM, (limit.id, key, oldest)).fetchone()[0])
