"""Budget ledgers: atomic reservations over memory and SQLite, chosen by URL.

    from spendgate.ledger import open_ledger
    ledger = open_ledger("sqlite:///spend.db", budgets=[...])
    result = ledger.reserve("req-1", Attributes(user="alice"), Money.usd("0.02"), lease=60)
    if result.admitted:
        ...call the provider...
        ledger.settle("req-1", Money.usd("0.013"))
    else:
        raise result.to_error()

Backends register themselves by URL scheme (``register_backend``), so Redis
and PostgreSQL plug in without touching callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spendgate.budgets import Budget
from spendgate.clock import Clock
from spendgate.ledger.base import (
    BackendFactory,
    BudgetChanged,
    BudgetLine,
    BudgetUsage,
    Ledger,
    LedgerUnavailableError,
    Refusal,
    ReleaseOutcome,
    RequestIdReusedError,
    RequestRecord,
    Reservation,
    SettleOutcome,
    ThresholdCrossed,
    UnknownReservationError,
    known_schemes,
    open_ledger,
    register_backend,
)

__all__ = [
    "BackendFactory",
    "BudgetChanged",
    "BudgetLine",
    "BudgetUsage",
    "Ledger",
    "LedgerUnavailableError",
    "Refusal",
    "ReleaseOutcome",
    "RequestIdReusedError",
    "RequestRecord",
    "Reservation",
    "SettleOutcome",
    "ThresholdCrossed",
    "UnknownReservationError",
    "known_schemes",
    "open_ledger",
    "register_backend",
]


# The built-in backends import their module only when a URL asks for them.
def _memory(url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any) -> Ledger:
    from spendgate.ledger.memory import memory_factory

    return memory_factory(url, budgets=budgets, clock=clock, **options)


def _sqlite(url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any) -> Ledger:
    from spendgate.ledger.sqlite import sqlite_factory

    return sqlite_factory(url, budgets=budgets, clock=clock, **options)


register_backend("memory", _memory, replace=True)
register_backend("sqlite", _sqlite, replace=True)
