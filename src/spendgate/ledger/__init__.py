"""Budget ledgers: atomic reservations over memory and SQLite, chosen by URL.

    from spendgate.ledger import open_ledger
    ledger = open_ledger("sqlite:///spend.db", budgets=[...])
    result = ledger.reserve("req-1", Attributes(user="alice"), Money.usd("0.02"), lease=60)
    if result.admitted:
        ...call the provider...
        ledger.settle("req-1", Money.usd("0.013"))
    else:
        raise result.to_error()

Backends register themselves by URL scheme (``register_backend``), with their
ledger and, where they have one, the storage of the gateway's virtual keys
(``open_keystore``), so Redis and PostgreSQL plug in without touching callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spendgate.budgets import Budget
from spendgate.clock import Clock
from spendgate.ledger.base import (
    ArchivedRequest,
    BudgetChanged,
    BudgetDeleted,
    BudgetLine,
    BudgetUsage,
    Ledger,
    LedgerMissingError,
    LedgerReplacedError,
    LedgerUnavailableError,
    Refusal,
    RefusalCount,
    ReleaseOutcome,
    RequestIdReusedError,
    RequestRecord,
    Reservation,
    SettleOutcome,
    ThresholdCrossed,
    UnknownReservationError,
    UsagePoint,
)
from spendgate.ledger.protocols import (
    AlertOutbox,
    BudgetAdmin,
    KeyStorage,
    RefusalCounts,
    RequestArchive,
    RequestLog,
    Reservations,
)
from spendgate.ledger.registry import (
    Backend,
    BackendFactory,
    KeyStorageFactory,
    LedgerFactory,
    backend_for,
    known_schemes,
    open_key_storage,
    open_keystore,
    open_ledger,
    register_backend,
    resolve_url,
)

__all__ = [
    "AlertOutbox",
    "ArchivedRequest",
    "Backend",
    "BackendFactory",
    "BudgetAdmin",
    "BudgetChanged",
    "BudgetDeleted",
    "BudgetLine",
    "BudgetUsage",
    "KeyStorage",
    "KeyStorageFactory",
    "Ledger",
    "LedgerFactory",
    "LedgerMissingError",
    "LedgerReplacedError",
    "LedgerUnavailableError",
    "Refusal",
    "RefusalCount",
    "RefusalCounts",
    "ReleaseOutcome",
    "RequestArchive",
    "RequestIdReusedError",
    "RequestLog",
    "RequestRecord",
    "Reservation",
    "Reservations",
    "SettleOutcome",
    "ThresholdCrossed",
    "UnknownReservationError",
    "UsagePoint",
    "backend_for",
    "known_schemes",
    "open_key_storage",
    "open_keystore",
    "open_ledger",
    "register_backend",
    "resolve_url",
]


# The built-in backends import their module only when a URL asks for them.
def _memory(url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any) -> Ledger:
    from spendgate.ledger.memory import memory_factory

    return memory_factory(url, budgets=budgets, clock=clock, **options)


def _memory_keys(url: str, *, clock: Clock, **options: Any) -> KeyStorage:
    from spendgate.ledger.memory import memory_keys_factory

    return memory_keys_factory(url, clock=clock, **options)


def _sqlite(url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any) -> Ledger:
    from spendgate.ledger.sqlite import sqlite_factory

    return sqlite_factory(url, budgets=budgets, clock=clock, **options)


def _sqlite_keys(url: str, *, clock: Clock, **options: Any) -> KeyStorage:
    from spendgate.ledger.sqlite import sqlite_keys_factory

    return sqlite_keys_factory(url, clock=clock, **options)


def _sqlite_resolve(url: str, base_dir: str) -> str:
    from spendgate.ledger.sqlite.connection import resolve_sqlite_url

    return resolve_sqlite_url(url, base_dir)


def _postgres(url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any) -> Ledger:
    from spendgate.ledger.postgres import postgres_factory

    return postgres_factory(url, budgets=budgets, clock=clock, **options)


def _postgres_keys(url: str, *, clock: Clock, **options: Any) -> KeyStorage:
    from spendgate.ledger.postgres import postgres_keys_factory

    return postgres_keys_factory(url, clock=clock, **options)


def _redis(url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any) -> Ledger:
    from spendgate.ledger.redis import redis_factory

    return redis_factory(url, budgets=budgets, clock=clock, **options)


def _redis_keys(url: str, *, clock: Clock, **options: Any) -> KeyStorage:
    from spendgate.ledger.redis import redis_keys_factory

    return redis_keys_factory(url, clock=clock, **options)


def _redis_resolve(url: str, base_dir: str) -> str:
    from spendgate.ledger.redis import resolve_redis_url

    return resolve_redis_url(url, base_dir)


register_backend("memory", _memory, keys=_memory_keys, replace=True)
register_backend("sqlite", _sqlite, keys=_sqlite_keys, resolve=_sqlite_resolve, replace=True)
# postgres:// is libpq's other spelling of the same scheme.
for _scheme in ("postgresql", "postgres"):
    register_backend(_scheme, _postgres, keys=_postgres_keys, replace=True)
# The durable store beside Redis may be a relative sqlite:/// file: resolved like one.
register_backend("redis", _redis, keys=_redis_keys, resolve=_redis_resolve, replace=True)
