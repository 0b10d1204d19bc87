"""The Redis ledger: counters in Redis (the hot path), everything durable in another ledger.

    redis://[:password@]host:port/db?prefix=NAME&durable=<url-encoded ledger URL>
        &timeout=2&on_reset=fail_closed|rebuild

**Redis holds the hot path**: per budget instance and window, spend and reserved; the open
reservations (lines, estimate, lease) and a sorted set of their leases; rate limit buckets
and concurrency counts; the thresholds announced per window. Every change is one Lua script
(``*.lua`` here, run by SHA, loaded again on ``NOSCRIPT``): reserve (all matching budget
lines and limit instances, or none), settle and release (``end.lua``), expiry of a batch of
leases (charged at their estimate), threshold marks, resets and definition changes, reads.
Matching, windows, pacing and buckets are worked out in Python before the script runs; the
script only checks and counts. Time is the ledger's clock, passed in (never Redis ``TIME``).

**The durable store** (``durable=``, required: ``sqlite:///...`` or ``postgresql://...``,
opened with ``open_ledger``) holds the budget and limit definitions, the request log and the
virtual keys (``redis_keys_factory`` gives its key storage). A definition is written there,
then the catalog version in Redis moves (``{prefix}:1:catalog``); every script is given the
version its caller planned with and answers "stale" when it moved, and the caller reloads
the definitions and plans again: no durable read on the hot path. Ended requests go to a
Redis stream and a drainer thread copies them into the durable log (``drain.py``); the
request log's queries drain first, then ask the durable store.

**Key layout** (version 1; the scripts name it in their first line; ``{p}`` is
``{prefix}:1:``): ``{prefix}:generation`` and ``{prefix}:layout``; ``{p}catalog`` (version),
``{p}limgen`` (limit id -> generation of its counts); ``{p}b:{budget}:{window start µs}``, a
hash per budget window with ``s:{instance}`` spent, ``r:{instance}`` reserved and
``a:{instance}`` the highest threshold announced (expires a retention after the window);
``{p}r:{request id}`` a hash per request (kept ``ended_ttl``, 1 day, once ended, so a retried
settle is recognised); ``{p}leases`` (sorted set by expiry); ``{p}ended`` (the stream);
``{p}lw:{limit}:{gen}:{instance}`` (bucket -> amount), ``{p}lx:{limit}:{gen}`` (instances by
last bucket), ``{p}lf:{limit}:{gen}`` (instance -> in flight). Scripts touch keys they work
out from others (an expiry, the lines of a request): a single Redis (and its replica
failover) is the target, not Redis Cluster.

**Money** is integer nano-USD throughout: ``HINCRBY`` on integer strings, and comparisons
in Lua doubles, exact up to 2^53 nano-USD (about 9,007,199 USD). Limits, estimates and
actual costs above that are refused with a ValueError rather than counted inexactly.

**Never a silent reset.** At first setup a random generation is written to the durable
store (``markers.py``: a table of this package's own) and to ``{prefix}:generation``. Every
script checks the generation its caller holds. Redis restarted without its data, flushed, or
failed over to an empty replica: the marker is missing (or another) and the ledger raises
``LedgerUnavailableError`` naming the cause and the fix; nothing is admitted against zeroed
counters. ``on_reset=rebuild``, or ``RedisLedger.rebuild()`` (the CLI's rebuild command),
rebuilds the current windows from the durable request log and writes a new generation in
both places (``rebuild.py`` says exactly what is and is not rebuilt).

**What a Redis that loses its data loses**: requests ended in Redis but not yet drained (at
most about ``drain_interval`` of them, 0.5 s by default, more while the durable store is
down: they wait in Redis meanwhile) and the reservations open at that moment (their holds,
and their later settle, which raises ``UnknownReservationError``). Their cost was incurred
but is no longer counted, so after a rebuild a budget can admit up to that much beyond its
limit until its window resets. That is the bound of the risk, and why the default is to fail
closed and let an operator decide (``on_reset=fail_closed``); Redis persistence (AOF with
``appendfsync everysec``) narrows the loss to about a second, and a replica failover to
what replication had not yet sent.

**Fail closed.** Redis refused, timed out (``timeout``, 2 s by default, for connecting and
for each reply), read-only or loading: ``LedgerUnavailableError``; ``fail_open=True`` admits
unrecorded with an ERROR log. Calls go on by themselves when Redis is back with its data.
Opened while Redis or the durable store is down, the ledger logs it and tries its setup
again on every call (``create=False``: it raises instead).

Sync and async calls share one implementation (``core.py``: each operation is a generator
of steps; one driver runs it on ``redis.Redis``, the other on ``redis.asyncio.Redis``).
``asettle`` and ``arelease`` run as tasks of their own, so a cancelled caller does not stop
them; an ``areserve`` cancelled after admission releases its reservation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from spendgate.budgets import Budget
from spendgate.clock import Clock
from spendgate.ledger.protocols import KeyStorage
from spendgate.ledger.redis.ledger import RedisLedger
from spendgate.ledger.redis.rebuild import RebuildReport
from spendgate.ledger.redis.url import parse_redis_url
from spendgate.ledger.redis.url import resolve_redis_url as _resolve

__all__ = ["RebuildReport", "RedisLedger", "redis_factory", "redis_keys_factory", "resolve_redis_url"]


def redis_factory(url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any) -> RedisLedger:
    """``redis://host:port/db?prefix=NAME&durable=<ledger URL>``; options the Redis ledger does
    not know (``busy_timeout``...) go to the durable ledger."""
    return RedisLedger(url, budgets, clock=clock, **options)


def redis_keys_factory(url: str, *, clock: Clock, **options: Any) -> KeyStorage:
    """The virtual keys live in the durable store: its backend's key storage."""
    from spendgate.ledger.registry import open_key_storage

    return open_key_storage(parse_redis_url(url).durable, clock=clock, **options)


def resolve_redis_url(url: str, base_dir: str | os.PathLike[str]) -> str:
    """A relative durable ``sqlite:///x.db`` made absolute against ``base_dir``, re-encoded."""
    return _resolve(url, base_dir)
