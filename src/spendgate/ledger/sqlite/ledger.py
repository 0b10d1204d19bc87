"""``SQLiteLedger``: the jobs of the SQLite backend composed into one ledger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spendgate.budgets import Budget
from spendgate.clock import Clock
from spendgate.ledger.sqlite.archive import RequestArchiveMixin
from spendgate.ledger.sqlite.budgets import BudgetAdminMixin
from spendgate.ledger.sqlite.connection import sqlite_path
from spendgate.ledger.sqlite.limits import LimitAdminMixin
from spendgate.ledger.sqlite.outbox import AlertOutboxMixin
from spendgate.ledger.sqlite.refusals import RefusalCountsMixin
from spendgate.ledger.sqlite.request_log import RequestLogMixin
from spendgate.ledger.sqlite.reservations import ReservationsMixin

__all__ = ["SQLiteLedger", "sqlite_factory"]


class SQLiteLedger(
    ReservationsMixin,
    BudgetAdminMixin,
    LimitAdminMixin,
    RequestLogMixin,
    RequestArchiveMixin,
    AlertOutboxMixin,
    RefusalCountsMixin,
):
    """A ledger in one SQLite file; safe for many threads and processes on one machine.

    ``busy_timeout`` (seconds) bounds the wait for the write lock before the
    ledger counts as unavailable. ``expiry_interval`` spaces the opportunistic
    lease expiry that ``reserve`` runs; ``purge_interval`` the retention purge.
    Ended requests are the request log, kept for ``retention``: that is also how
    long a settle retry is recognised as one. ``wal_autocheckpoint`` (pages) is
    raised from SQLite's 1000 because every commit appends its pages to the WAL
    and a checkpoint (two fsyncs) every ~100 cycles put milliseconds into the
    p99; ``page_size`` applies only when the file is created.

    The jobs live in their own modules: connections and transactions
    (``connection.py``), state, catalog and write ops (``core.py``),
    reservations, budget administration, rate limits (``limits.py``: their administration,
    and what a reservation takes from them), the request log, the alert outbox and the refusal
    counts (one mixin each).
    """

    def open_reservations(self) -> int:
        """How many reservations are open (for tests)."""
        return int(
            self._read(
                lambda c: c.execute("SELECT count(*) FROM requests WHERE state = 'open'").fetchone()[0]
            )
        )


def sqlite_factory(
    url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any
) -> SQLiteLedger:
    """``sqlite:///relative/spend.db`` or ``sqlite:////absolute/spend.db`` (SQLAlchemy's convention)."""
    return SQLiteLedger(sqlite_path(url), budgets, clock=clock, **options)
