"""A ledger shared by every process and host: one PostgreSQL schema.

Every reserve, settle and release is one call of a server-side function (one round trip,
row locks held only inside it): conditional upserts under READ COMMITTED
(``... ON CONFLICT DO UPDATE ... WHERE spent + reserved + estimate <= limit``), rows taken in
one order by every transaction. Python plans what it can beforehand (matching, windows,
pacing, rate limit buckets) and checks, inside the same call, that the budgets and limits it
planned with are still the current ones (``meta`` versions). Lease expiry takes requests
``FOR UPDATE SKIP LOCKED``; threshold alerts are rows with a unique key, so each is
announced once across every process.

Amounts are BIGINT nano-USD, instants BIGINT microseconds since the epoch (UTC), as in
SQLite. The schema holds the budgets, the rate limits and the gateway's virtual keys: see
docs/ledger.md.

Modules by job: ``settings`` (the URL), ``connection`` (pools; the blocking and asyncio
runners of sans-IO operations), ``schema`` (``schema.sql`` and ``keys.sql``, migrations),
``core`` (state, the budgets and limits catalog, ops), ``reservations``, ``budgets``,
``limits``, ``request_log`` (with the archive), ``outbox`` (the alert outbox), ``keys``
(virtual key storage), ``ledger`` (``PostgresLedger``, composed of the job mixins).
"""

from __future__ import annotations

from spendgate.ledger.postgres.keys import PostgresKeyStorage, postgres_keys_factory
from spendgate.ledger.postgres.ledger import PostgresLedger, postgres_factory
from spendgate.ledger.postgres.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PostgresKeyStorage",
    "PostgresLedger",
    "postgres_factory",
    "postgres_keys_factory",
]
