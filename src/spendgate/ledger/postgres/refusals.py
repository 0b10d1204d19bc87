"""The refusal counts over PostgreSQL (``RefusalCounts``; table ``refusal_counts``, migration 4).

A batch is one statement: its rows are upserted in key order, so two processes adding to the
same minutes lock them in the same order and never deadlock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from spendgate.ledger.base import RefusalCount, check_refusal_counts
from spendgate.ledger.postgres.codec import us
from spendgate.ledger.postgres.connection import Body, Q
from spendgate.ledger.postgres.core import LedgerCore
from spendgate.ledger.rows import dt

__all__ = ["RefusalCountsMixin"]

_SQL_ADD = """
    INSERT INTO refusal_counts (minute, kind, subject, count)
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[]) ORDER BY 1, 2, 3
    ON CONFLICT (minute, kind, subject) DO UPDATE SET count = refusal_counts.count + excluded.count"""
_SQL_READ = (
    "SELECT minute, kind, subject, count FROM refusal_counts WHERE minute >= %s AND minute < %s "
    'ORDER BY minute, kind, subject COLLATE "C"'
)


class RefusalCountsMixin(LedgerCore):
    """``RefusalCounts`` over PostgreSQL."""

    def add_refusals(self, counts: Mapping[tuple[datetime, str, str], int]) -> None:
        checked = check_refusal_counts(counts)
        if not checked:
            return
        keys = sorted(checked)
        columns = (
            [us(minute) for minute, _, _ in keys],
            [kind for _, kind, _ in keys],
            [subject for _, _, subject in keys],
            [checked[key] for key in keys],
        )

        def body() -> Body[None]:
            yield Q(_SQL_ADD, columns)

        self._execute(body, txn=False)

    def refusal_counts(self, start: datetime, end: datetime) -> list[RefusalCount]:
        def body() -> Body[list[RefusalCount]]:
            rows = yield Q(_SQL_READ, (us(start), us(end)))
            return [
                RefusalCount(dt(minute), kind, subject, int(count)) for minute, kind, subject, count in rows
            ]

        out: list[RefusalCount] = self._execute(body, txn=False)
        return out
