"""Rebuilding Redis from the durable store, after Redis lost its data.

What is rebuilt, from the durable request log (settled and expired requests):

- each budget's spend in its **current** window: every logged request whose attributes match
  the budget and whose start time falls in that window adds its cost (older windows are not
  rebuilt: ``usage(at=<an earlier window>)`` answers zero after a rebuild); the thresholds
  that spend has reached are marked announced, so they are not announced again;
- each windowed rate limit's buckets over its current window: one request per logged request
  (``requests``), the tokens its settle reported (``usage``: a request settled without a
  report of use counts zero tokens), its cost (``usd``).

What is not rebuilt: reservations open when Redis lost its data (their holds are gone, and so
is their request: a later settle or release of it raises ``UnknownReservationError`` and its
cost is not logged); requests ended in Redis but not yet copied to the durable log (the
drainer runs every ``drain_interval``, 0.5 s by default: what it had not copied is lost);
released requests' ``requests`` counts (a release is not logged); concurrency counts (nothing
survives in flight); spend older than the durable log's ``retention`` (a budget whose current
window reaches further back, a ``window: none`` one above all, is rebuilt short: logged as a
warning and listed in the report). Whatever was lost was spent but is no longer counted, so
until those windows reset the budgets can admit that much more than their limits: bounded by
what was in flight and undrained at the moment of the loss.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from spendgate.budgets import Budget
from spendgate.ledger.base import Ledger, LedgerUnavailableError, RequestRecord
from spendgate.ledger.redis.core import esc
from spendgate.ledger.redis.scripts import LAYOUT
from spendgate.limits import BUCKETS, Demand, Limit, bucket_of

if TYPE_CHECKING:
    from spendgate.ledger.redis.ledger import RedisLedger

__all__ = ["RebuildReport", "rebuild"]

log = logging.getLogger("spendgate.ledger")

_LOCK_MS: Final = 600_000  # a rebuild that dies leaves the lock this long
_PAGE: Final = 1000
_MAX_PAGES: Final = 1_000_000
_US: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class RebuildReport:
    generation: str  # the new one, in Redis and in the durable store
    requests: int  # logged requests read
    budget_lines: int  # budget instances given spend in their current window
    limit_buckets: int  # rate limit buckets given counts
    short: tuple[str, ...]  # budgets whose current window reaches past the log's retention


def _records(durable: Ledger, start: datetime | None) -> Iterator[RequestRecord]:
    after: str | None = None
    for _ in range(_MAX_PAGES):
        page = durable.query_requests(start, None, limit=_PAGE, after=after)
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].request_id


def _sums(
    budgets: Sequence[Budget], limits: Sequence[Limit], durable: Ledger, now: datetime
) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], dict[int, int]], int]:
    current = {b.id: b.window.bounds(now) for b in budgets}
    windowed = [limit for limit in limits if limit.windowed]
    starts = [window[0] for window in current.values()]
    for limit in windowed:
        assert limit.per is not None
        starts.append(now - limit.per - _US * limit.width_us)
    spend: dict[str, dict[str, int]] = {}
    buckets: dict[tuple[str, str], dict[int, int]] = {}
    count = 0
    if not starts:
        return spend, buckets, count
    for record in _records(durable, min(starts)):
        count += 1
        attrs, cost = record.attributes, record.cost.nanos
        for budget in budgets:
            keys = budget.matches(attrs)
            if keys and budget.window.bounds(record.started_at)[0] == current[budget.id][0]:
                lines = spend.setdefault(budget.id, {})
                for key in keys:
                    lines[key] = lines.get(key, 0) + cost
        for limit in windowed:
            keys = limit.matches(attrs)
            if not keys:
                continue
            bucket = bucket_of(record.started_at, limit.width_us)
            if bucket < bucket_of(now, limit.width_us) - BUCKETS:
                continue
            usage = record.usage
            demand = Demand(
                input_tokens=int(usage.get("input_tokens", 0)),
                output_tokens=int(usage.get("output_tokens", 0)),
                cost=cost,
            )
            for key in keys:
                counts = buckets.setdefault((limit.id, key), {})
                counts[bucket] = counts.get(bucket, 0) + demand.of(limit.kind)
    return spend, buckets, count


def rebuild(ledger: RedisLedger) -> RebuildReport:
    """Wipe the prefix's counters, write what the durable log says, then a new generation.

    Every script fails closed from the first step (the generation is a ``rebuilding:``
    marker) until the last; one rebuild at a time (a Redis lock). Open reservations of a
    Redis that still had its data are dropped too: run it when Redis lost its state."""
    token = secrets.token_hex(8)
    sentinel = "rebuilding:" + token
    if not ledger._redis(lambda c: c.set(ledger.k_rebuild, token, nx=True, px=_LOCK_MS)):
        raise LedgerUnavailableError(f"spendgate Redis ledger {ledger._where()}: another rebuild is running")
    try:
        ledger._redis(lambda c: c.set(ledger.k_generation, sentinel))
        ledger._catalog = None
        try:
            ledger._drain_for_rebuild()  # a Redis that kept its data: its ended requests first
        except Exception as exc:
            log.warning("spendgate: rebuild could not drain the ended requests Redis holds (%s)", exc)
        _wipe(ledger)
        durable = ledger._durable_now()
        durable.refresh()
        budgets = durable.budgets()
        limits = durable.limits()
        now = ledger.clock.now()
        spend, buckets, count = _sums(budgets, limits, durable, now)
        short = tuple(b.id for b in budgets if b.window.bounds(now)[0] < now - ledger.retention)
        if short:
            log.warning(
                "spendgate: rebuild: budgets %s have windows that began before the durable log's "
                "retention (%s): their spend is rebuilt from the retained part only",
                ", ".join(short),
                ledger.retention,
            )
        lines = _write(ledger, budgets, limits, spend, buckets, now)
        generation = secrets.token_hex(16)
        markers = ledger._markers
        assert markers is not None
        markers.replace(generation)
        if not ledger._eval(ledger._s.cas, [ledger.k_generation], [sentinel, generation]):
            raise LedgerUnavailableError(
                f"spendgate Redis ledger {ledger._where()}: the generation changed during the rebuild"
            )
        ledger._generation = generation
        ledger._reload()
        log.warning(
            "spendgate: Redis ledger %s rebuilt from the durable log: %d requests read, %d budget "
            "lines, %d limit buckets; new generation %s",
            ledger._where(),
            count,
            lines,
            sum(len(v) for v in buckets.values()),
            generation,
        )
        return RebuildReport(generation, count, lines, sum(len(v) for v in buckets.values()), short)
    finally:
        ledger._eval(ledger._s.cas, [ledger.k_rebuild], [token, ""])


def _wipe(ledger: RedisLedger) -> None:
    pattern = ledger._p + "*"

    def body(c: Any) -> None:
        batch: list[str] = []
        for key in c.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                c.delete(*batch)
                batch = []
        if batch:
            c.delete(*batch)

    ledger._redis(body)


def _write(
    ledger: RedisLedger,
    budgets: Sequence[Budget],
    limits: Sequence[Limit],
    spend: dict[str, dict[str, int]],
    buckets: dict[tuple[str, str], dict[int, int]],
    now: datetime,
) -> int:
    by_id = {b.id: b for b in budgets}
    limit_by_id = {limit.id: limit for limit in limits}
    lines = 0

    def body(c: Any) -> None:
        nonlocal lines
        pipe = c.pipeline(transaction=False)
        pipe.set(ledger.k_layout, LAYOUT)
        pipe.set(ledger.k_catalog, "1")
        for budget_id, instances in spend.items():
            budget = by_id[budget_id]
            key, _, _, ttl = ledger._window(budget, budget.window.bounds(now))
            limit = budget.limit.nanos
            for instance, spent in instances.items():
                pipe.hset(key, "s:" + instance, spent)
                reached = [t for t in budget.thresholds if spent > 0 and spent * 100 >= t * limit]
                if reached:
                    pipe.hset(key, "a:" + instance, reached[-1])
                lines += 1
            if ttl:
                pipe.pexpire(key, ttl)
        for (limit_id, instance), counts in buckets.items():
            rate = limit_by_id[limit_id]
            assert rate.per is not None
            name = f"{esc(rate.id)}:0"  # generation 0: the catalog starts over with this rebuild
            ttl = max(2 * int(rate.per / timedelta(milliseconds=1)), 3_600_000)
            key, index = f"{ledger._p}lw:{name}:{instance}", f"{ledger._p}lx:{name}"
            for bucket, amount in counts.items():
                pipe.hset(key, str(bucket), amount)
            pipe.zadd(index, {instance: max(counts)})
            pipe.pexpire(key, ttl)
            pipe.pexpire(index, ttl)
        pipe.execute()

    ledger._redis(body)
    return lines
