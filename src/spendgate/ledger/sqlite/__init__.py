"""The embedded default: one SQLite file shared by every thread and process on a machine.

WAL mode (readers never block the writer), ``BEGIN IMMEDIATE`` for every write
(the write lock is taken up front, so check-then-update cannot interleave),
``synchronous=NORMAL`` (durable across a process crash; a power cut may lose
the last commits, never corrupt the file), one connection per thread opened
lazily per process id, so a forked child never touches its parent's handle.

Amounts are INTEGER nano-USD, instants INTEGER microseconds since the Unix
epoch (UTC). The file holds the budgets too (definitions and limits) and the rate
limits, so every process enforces the same set, and the gateway's virtual keys: see
docs/ledger.md.

Modules by job: ``connection`` (connections, busy handling, transactions),
``schema`` (``schema.sql`` and ``keys.sql``, migrations), ``core`` (state, the
budgets and limits catalog, write ops), ``reservations``, ``budgets``, ``limits`` (rate
limits: their rows, and what a reservation takes and gives back), ``request_log``,
``group_commit`` (asyncio callers' batches), ``keys`` (virtual key storage),
``ledger`` (``SQLiteLedger``, composed of the job mixins).
"""

from __future__ import annotations

from spendgate.ledger.sqlite.keys import SQLiteKeyStorage, sqlite_keys_factory
from spendgate.ledger.sqlite.ledger import SQLiteLedger, sqlite_factory
from spendgate.ledger.sqlite.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLiteKeyStorage",
    "SQLiteLedger",
    "sqlite_factory",
    "sqlite_keys_factory",
]
