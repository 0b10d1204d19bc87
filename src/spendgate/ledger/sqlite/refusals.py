"""The refusal counts over SQLite (``RefusalCounts``; table ``refusal_counts``, migration 6).

A batch is one ``BEGIN IMMEDIATE`` transaction of upserts (each adds to the minute's row), so
counts from several processes add up; the retention purge drops old minutes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime

from spendgate.ledger.base import RefusalCount, check_refusal_counts
from spendgate.ledger.sqlite.codec import dt, us
from spendgate.ledger.sqlite.core import LedgerCore

__all__ = ["RefusalCountsMixin"]

_SQL_ADD = (
    "INSERT INTO refusal_counts (minute, kind, subject, count) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (minute, kind, subject) DO UPDATE SET count = count + excluded.count"
)
_SQL_READ = (
    "SELECT minute, kind, subject, count FROM refusal_counts WHERE minute >= ? AND minute < ? "
    "ORDER BY minute, kind, subject"
)


class RefusalCountsMixin(LedgerCore):
    """``RefusalCounts`` over SQLite."""

    def add_refusals(self, counts: Mapping[tuple[datetime, str, str], int]) -> None:
        rows = [
            (us(minute), kind, subject, n)
            for (minute, kind, subject), n in check_refusal_counts(counts).items()
        ]
        if not rows:
            return

        def body(conn: sqlite3.Connection) -> None:
            conn.executemany(_SQL_ADD, rows)

        self._write(body)

    def refusal_counts(self, start: datetime, end: datetime) -> list[RefusalCount]:
        rows = self._read(lambda conn: conn.execute(_SQL_READ, (us(start), us(end))).fetchall())
        return [RefusalCount(dt(minute), kind, subject, count) for minute, kind, subject, count in rows]
