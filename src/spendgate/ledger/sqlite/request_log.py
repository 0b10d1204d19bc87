"""The request log: settled and expired requests, their queries, and the retention purge
(which also prunes rate limit buckets that left their window)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from spendgate.ledger import timeseries
from spendgate.ledger.base import LedgerUnavailableError, RequestRecord, UnknownReservationError, UsagePoint
from spendgate.ledger.rows import record_of
from spendgate.ledger.sqlite.codec import DIM_COLUMNS, attrs_of, us
from spendgate.ledger.sqlite.core import LedgerCore
from spendgate.ledger.sqlite.limits import prune_limits
from spendgate.money import Money

__all__ = ["RequestLogMixin"]

log = logging.getLogger("spendgate.ledger")

_SQL_LOGGED_AT = "SELECT started_at FROM requests WHERE request_id = ? AND state IN ('settled', 'expired')"
_SQL_LOG_COLUMNS = """
    request_id, status, started_at, finished_at, cost, dim_key, dim_user, dim_team, dim_project,
    dim_customer, dim_model, tags, model, usage, breakdown, estimate"""


class RequestLogMixin(LedgerCore):
    """``RequestLog`` over SQLite; ended requests stay in ``requests`` for ``retention``."""

    def query_requests(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        limit: int = 1000,
        after: str | None = None,
        **dimensions: str,
    ) -> list[RequestRecord]:
        self._check_dimensions(dimensions)
        where, params = _log_filter(start, end, dimensions)
        sql = f"SELECT {_SQL_LOG_COLUMNS} FROM requests WHERE {where}"
        if after is not None:  # keyset paging: strictly after (started_at, request_id) of that row
            sql += " AND (started_at < ? OR (started_at = ? AND request_id > ?))"
        sql += " ORDER BY started_at DESC, request_id LIMIT ?"

        def body(conn: sqlite3.Connection) -> list[Any]:
            values = list(params)
            if after is not None:
                row = conn.execute(_SQL_LOGGED_AT, (after,)).fetchone()
                if row is None:
                    raise UnknownReservationError(f"request id {after!r} is not in the request log")
                values += [row[0], row[0], after]
            return conn.execute(sql, (*values, limit)).fetchall()

        return [record_of(row, attrs_of(row[5:12])) for row in self._read(body)]

    def usage_by(
        self, dimension: str, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, Money]:
        self._check_dimensions({dimension: ""}, "usage_by")
        where, params = _log_filter(start, end, {})
        if dimension == "tag":
            sql = (
                "SELECT t.value, SUM(r.cost) FROM requests AS r, json_each(r.tags) AS t "
                f"WHERE r.tags IS NOT NULL AND {where.replace('state IN', 'r.state IN')} "
                "GROUP BY t.value ORDER BY t.value"
            )
        else:
            column = DIM_COLUMNS[dimension]
            sql = (
                f"SELECT {column}, SUM(cost) FROM requests WHERE {column} IS NOT NULL AND {where} "
                f"GROUP BY {column} ORDER BY {column}"
            )
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return {value: Money(total) for value, total in rows}

    def usage_timeseries(
        self,
        start: datetime,
        end: datetime,
        bucket: timedelta,
        *,
        by: str | None = None,
        **dimensions: str,
    ) -> list[UsagePoint]:
        series = timeseries.plan(start, end, bucket, by, dimensions)
        where, params = _log_filter(start, end, series.filters)
        if by == "tag":  # once per tag; an untagged request once, in no group
            source, group = "requests LEFT JOIN json_each(requests.tags) AS t", "t.value"
        else:
            source, group = "requests", "NULL" if by is None else DIM_COLUMNS[by]
        sql = (
            f"SELECT (started_at - ?) / ? AS b, {group} AS g, SUM(cost), COUNT(*), "
            "SUM(input_tokens), SUM(output_tokens) "
            f"FROM {source} WHERE {where} GROUP BY b, g ORDER BY b, g"  # NULL first, then BINARY
        )
        values = (series.origin_us, series.width_us, *params)
        rows = self._read(lambda conn: conn.execute(sql, values).fetchall())
        return timeseries.points(series, rows, ordered=True)

    def _purge_due(self, now: datetime) -> bool:
        """Whether this process's scheduled purge is due (and, if so, when the next one is)."""
        if now < self._next_purge:
            return False
        self._next_purge = now + self.purge_interval
        return True

    def _maybe_purge(self) -> None:
        now = self.clock.now()
        if self._purge_due(now):
            self._purge(now, force=False)

    def _maybe_purge_async(self) -> None:
        """After a group commit: the scheduled purge as a write of its own in the next batch
        (smaller than ``purge()``'s, so the loop is never held long)."""
        now = self.clock.now()
        if self._purge_due(now):
            self._submit_unwatched(self._purge_body(now, force=False, rows=1000), "retention purge")

    def purge(self) -> int:
        return self._purge(self.clock.now(), force=True)

    def _purge(self, now: datetime, *, force: bool) -> int:
        """Drop rows older than retention, a bounded batch at a time; one process per interval."""
        try:
            return self._write(self._purge_body(now, force=force))
        except LedgerUnavailableError:
            if force:
                raise
            log.warning("spendgate: retention purge of %s skipped", self.path, exc_info=True)
            return 0

    def _purge_body(
        self, now: datetime, *, force: bool, rows: int = 10_000
    ) -> Callable[[sqlite3.Connection], int]:
        now_us = us(now)
        cutoff = us(now - self.retention)

        def body(conn: sqlite3.Connection) -> int:
            if not force:
                claimed = conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'last_purge' AND value <= ?",
                    (now_us, us(now - self.purge_interval)),
                )
                if claimed.rowcount == 0:
                    return 0  # another process purged recently
            deleted = conn.execute(
                "DELETE FROM requests WHERE request_id IN (SELECT request_id FROM requests "
                "WHERE started_at < ? AND state != 'open' LIMIT ?)",
                (cutoff, rows),
            ).rowcount
            conn.execute(
                "DELETE FROM spend WHERE window_end IS NOT NULL AND window_end < ? AND reserved = 0",
                (cutoff,),
            )
            conn.execute("DELETE FROM alerts WHERE sent_at < ?", (cutoff,))
            # The alert outbox: what was sent (or given up) before the retention; pending stays.
            conn.execute(
                "DELETE FROM alert_deliveries WHERE state != 'pending' AND event_seq IN "
                "(SELECT seq FROM alert_events WHERE created_at < ?)",
                (cutoff,),
            )
            conn.execute(
                "DELETE FROM alert_events WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM alert_deliveries AS d WHERE d.event_seq = alert_events.seq)",
                (cutoff,),
            )
            conn.execute("DELETE FROM refusal_counts WHERE minute < ?", (cutoff,))
            prune_limits(conn, now_us)  # buckets out of their window: the table stays ~21 rows an instance
            conn.execute(
                "DELETE FROM changes WHERE at < ? AND seq < (SELECT max(seq) FROM changes)", (cutoff,)
            )
            return deleted

        return body


def _log_filter(
    start: datetime | None, end: datetime | None, dimensions: Mapping[str, str]
) -> tuple[str, list[Any]]:
    clauses = ["state IN ('settled', 'expired')"]  # the log: requests that were charged
    params: list[Any] = []
    if start is not None:
        clauses.append("started_at >= ?")
        params.append(us(start))
    if end is not None:
        clauses.append("started_at < ?")
        params.append(us(end))
    for dim, value in dimensions.items():
        if dim == "tag":
            clauses.append("EXISTS (SELECT 1 FROM json_each(requests.tags) WHERE value = ?)")
        else:
            clauses.append(f"{DIM_COLUMNS[dim]} = ?")  # a fixed column name, never user text
        params.append(value)
    return " AND ".join(clauses), params
