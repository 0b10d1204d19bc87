"""``RequestArchive`` over SQLite: requests ended elsewhere (a Redis ledger's hot store) written
into ``requests`` as this ledger's own ended requests are, so the request log answers alike."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from spendgate.ledger.base import ArchivedRequest
from spendgate.ledger.rows import tokens_of
from spendgate.ledger.sqlite.codec import tags_json, us
from spendgate.ledger.sqlite.core import LedgerCore

__all__ = ["RequestArchiveMixin"]

# An ended request has no lease left: expires_at takes its end, as nothing reads it again.
_SQL_ARCHIVE = """
    INSERT INTO requests (request_id, state, estimate, cost, started_at, expires_at, finished_at, lines,
                          dim_key, dim_user, dim_team, dim_project, dim_customer, dim_model, tags,
                          status, model, usage, breakdown, takes, input_tokens, output_tokens)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)
    ON CONFLICT (request_id) DO NOTHING"""


class RequestArchiveMixin(LedgerCore):
    def archive(self, entries: Sequence[ArchivedRequest]) -> int:
        """Write ``entries`` in one transaction; an id already in ``requests`` is left as it is.
        How many were new."""
        rows = [_row(entry) for entry in entries]  # a bad entry raises before anything is written
        if not rows:
            return 0

        def body(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(_SQL_ARCHIVE, rows)
            return conn.total_changes - before

        return self._write(body)


def _row(entry: ArchivedRequest) -> tuple[object, ...]:
    record, state = entry.record, entry.state
    if state not in ("settled", "released", "expired"):
        raise ValueError(f"archived request {record.request_id!r}: unknown state {state!r}")
    a = record.attributes
    lines = [
        [
            line.budget_id,
            line.instance,
            us(line.window_start),
            None if line.window_end is None else us(line.window_end),
        ]
        for line in entry.lines
    ]
    finished = us(record.finished_at)
    if state == "released":  # nothing charged, nothing to report (as release() leaves a row)
        cost, status, model, usage, breakdown = 0, None, None, None, None
        tokens: tuple[int | None, int | None] = (None, None)
    else:
        parts = record.breakdown_strings()
        cost = record.cost.nanos
        status = record.status
        model = record.model
        usage = json.dumps(dict(record.usage), sort_keys=True) if record.usage else None
        breakdown = json.dumps(parts, sort_keys=True) if parts else None
        tokens = tokens_of(record.usage)
    return (
        record.request_id, state, entry.estimate.nanos, cost, us(record.started_at), finished, finished,
        json.dumps(lines, separators=(",", ":")), a.key, a.user, a.team, a.project, a.customer, a.model,
        tags_json(a.tags), status, model, usage, breakdown, *tokens,
    )  # fmt: skip
