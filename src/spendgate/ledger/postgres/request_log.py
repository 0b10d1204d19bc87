"""The request log: settled and expired requests, their queries, the requests archived from a
hot store (``RequestArchive``), and the retention purge (which also prunes rate limit buckets
that left their window)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from spendgate.ledger import timeseries
from spendgate.ledger.base import (
    ArchivedRequest,
    LedgerUnavailableError,
    RequestRecord,
    UnknownReservationError,
    UsagePoint,
)
from spendgate.ledger.postgres.codec import DIM_COLUMNS, attrs_of, tags_list, us
from spendgate.ledger.postgres.connection import Body, Q
from spendgate.ledger.postgres.core import LedgerCore
from spendgate.ledger.postgres.limits import prune_limits
from spendgate.ledger.rows import record_of
from spendgate.money import Money

__all__ = ["RequestLogMixin"]

log = logging.getLogger("spendgate.ledger")

_SQL_LOGGED_AT = "SELECT started_at FROM requests WHERE request_id = %s AND state IN ('settled', 'expired')"
_SQL_LOG_COLUMNS = """
    request_id, status, started_at, finished_at, cost, dim_key, dim_user, dim_team, dim_project,
    dim_customer, dim_model, tags, model, usage, breakdown, estimate"""
_SQL_ARCHIVE = """
    INSERT INTO requests (request_id, state, estimate, cost, started_at, expires_at, finished_at, lines,
                          dim_key, dim_user, dim_team, dim_project, dim_customer, dim_model, tags, status,
                          model, usage, breakdown)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s)
    ON CONFLICT (request_id) DO NOTHING"""


class RequestLogMixin(LedgerCore):
    """``RequestLog`` and ``RequestArchive`` over PostgreSQL; ended requests stay in
    ``requests`` for ``retention``."""

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
            sql += ' AND (started_at < %s OR (started_at = %s AND request_id COLLATE "C" > %s))'
        sql += ' ORDER BY started_at DESC, request_id COLLATE "C" LIMIT %s'

        def body() -> Body[list[tuple[Any, ...]]]:
            values = list(params)
            if after is not None:
                rows = yield Q(_SQL_LOGGED_AT, (after,))
                if not rows:
                    raise UnknownReservationError(f"request id {after!r} is not in the request log")
                values += [rows[0][0], rows[0][0], after]
            return (yield Q(sql, (*values, limit)))

        rows: list[tuple[Any, ...]] = self._execute(body, txn=False)
        return [record_of(row, attrs_of(row[5:12])) for row in rows]

    def usage_by(
        self, dimension: str, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, Money]:
        self._check_dimensions({dimension: ""}, "usage_by")
        where, params = _log_filter(start, end, {})
        if dimension == "tag":
            sql = (
                "SELECT t.value, sum(cost) FROM requests, jsonb_array_elements_text(requests.tags) AS t(value) "
                f'WHERE requests.tags IS NOT NULL AND {where} GROUP BY t.value ORDER BY t.value COLLATE "C"'
            )
        else:
            column = DIM_COLUMNS[dimension]
            sql = (
                f"SELECT {column}, sum(cost) FROM requests WHERE {column} IS NOT NULL AND {where} "
                f'GROUP BY {column} ORDER BY {column} COLLATE "C"'
            )

        def body() -> Body[list[tuple[Any, ...]]]:
            return (yield Q(sql, params))

        rows: list[tuple[Any, ...]] = self._execute(body, txn=False)
        return {value: Money(int(total)) for value, total in rows}

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
        source = "requests"
        if by == "tag":  # once per tag; an untagged request once, in no group
            source += " LEFT JOIN LATERAL jsonb_array_elements_text(requests.tags) AS t(value) ON true"
            group = "t.value"
        else:
            group = "NULL::text" if by is None else f"requests.{DIM_COLUMNS[by]}"
        sql = (
            f'SELECT (requests.started_at - %s) / %s AS b, {group} COLLATE "C" AS g, '
            "sum(requests.cost)::bigint, count(*), "
            "coalesce(sum(requests.input_tokens), 0)::bigint, coalesce(sum(requests.output_tokens), 0)::bigint "
            f"FROM {source} WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2 NULLS FIRST"
        )
        values = (series.origin_us, series.width_us, *params)

        def body() -> Body[list[tuple[Any, ...]]]:
            return (yield Q(sql, values))

        rows: list[tuple[Any, ...]] = self._execute(body, txn=False)
        return timeseries.points(series, rows, ordered=True)

    # -- the archive ----------------------------------------------------------------------------
    def archive(self, entries: Sequence[ArchivedRequest]) -> int:
        """Write requests ended in a hot store in one transaction; ids already here are left as
        they are. How many were new."""
        rows = [_archived(entry) for entry in entries]
        if not rows:
            return 0

        def body() -> Body[int]:
            done = yield Q(_SQL_ARCHIVE, rows, many=True)
            return int(done[0][0])

        count: int = self._execute(body, txn=True)
        return count

    # -- retention --------------------------------------------------------------------------
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

    def _maybe_apurge(self) -> None:
        now = self.clock.now()
        if not self._purge_due(now):
            return

        async def run() -> None:
            try:
                await self._aexecute(lambda: self._purge_body(now, force=False, rows=1000), txn=True)
            except LedgerUnavailableError as exc:
                log.warning("spendgate: retention purge of %s skipped: %s", self.path, exc)

        self._spawn(run())

    def purge(self) -> int:
        return self._purge(self.clock.now(), force=True)

    def _purge(self, now: datetime, *, force: bool) -> int:
        """Drop rows older than retention, a bounded batch at a time; one process per interval."""
        try:
            deleted: int = self._execute(lambda: self._purge_body(now, force=force), txn=True)
        except LedgerUnavailableError:
            if force:
                raise
            log.warning("spendgate: retention purge of %s skipped", self.path, exc_info=True)
            return 0
        return deleted

    def _purge_body(self, now: datetime, *, force: bool, rows: int = 10_000) -> Body[int]:
        now_us = us(now)
        cutoff = us(now - self.retention)
        if not force:
            claimed = yield Q(
                "UPDATE meta SET value = %s WHERE key = 'last_purge' AND value <= %s RETURNING 1",
                (now_us, us(now - self.purge_interval)),
            )
            if not claimed:
                return 0  # another process purged recently
        gone = yield Q(
            "WITH gone AS (DELETE FROM requests WHERE request_id IN (SELECT request_id FROM requests "
            "WHERE started_at < %s AND state <> 'open' LIMIT %s) RETURNING 1) SELECT count(*) FROM gone",
            (cutoff, rows),
        )
        yield Q(
            "DELETE FROM spend WHERE window_end IS NOT NULL AND window_end < %s AND reserved = 0", (cutoff,)
        )
        yield Q("DELETE FROM alerts WHERE sent_at < %s", (cutoff,))
        # The alert outbox: what was sent (or given up) before the retention; pending stays.
        yield Q(
            "DELETE FROM alert_deliveries WHERE state <> 'pending' AND event_seq IN "
            "(SELECT seq FROM alert_events WHERE created_at < %s)",
            (cutoff,),
        )
        yield Q(
            "DELETE FROM alert_events AS e WHERE e.created_at < %s AND NOT EXISTS "
            "(SELECT 1 FROM alert_deliveries AS d WHERE d.event_seq = e.seq)",
            (cutoff,),
        )
        yield Q("DELETE FROM refusal_counts WHERE minute < %s", (cutoff,))
        yield from prune_limits(now_us)  # buckets out of their window: ~21 rows an instance stay
        yield Q("DELETE FROM changes WHERE at < %s AND seq < (SELECT max(seq) FROM changes)", (cutoff,))
        return int(gone[0][0])


def _log_filter(
    start: datetime | None, end: datetime | None, dimensions: Mapping[str, str]
) -> tuple[str, list[Any]]:
    clauses = ["requests.state IN ('settled', 'expired')"]  # the log: requests that were charged
    params: list[Any] = []
    if start is not None:
        clauses.append("requests.started_at >= %s")
        params.append(us(start))
    if end is not None:
        clauses.append("requests.started_at < %s")
        params.append(us(end))
    for dim, value in dimensions.items():
        if dim == "tag":
            clauses.append("requests.tags ? %s")
        else:
            clauses.append(f"requests.{DIM_COLUMNS[dim]} = %s")  # a fixed column name, never user text
        params.append(value)
    return " AND ".join(clauses), params


def _archived(entry: ArchivedRequest) -> tuple[Any, ...]:
    """An ended request's row, as this ledger writes its own at their ending."""
    record = entry.record
    if not isinstance(entry.estimate, Money) or not isinstance(record.cost, Money):
        raise TypeError("an archived request's estimate and cost are Money")
    a = record.attributes
    breakdown = record.breakdown_strings()
    lines = [
        [line.budget_id, line.instance, us(line.window_start),
         None if line.window_end is None else us(line.window_end)]
        for line in entry.lines
    ]  # fmt: skip
    cost = 0 if entry.state == "released" else record.cost.nanos
    status = "expired" if entry.state == "expired" else record.status
    tags = tags_list(a.tags)
    return (
        record.request_id, entry.state, entry.estimate.nanos, cost, us(record.started_at),
        us(record.finished_at), us(record.finished_at), json.dumps(lines, separators=(",", ":")),
        a.key, a.user, a.team, a.project, a.customer, a.model, None if tags is None else json.dumps(tags),
        status, record.model, json.dumps(dict(record.usage), sort_keys=True) if record.usage else None,
        json.dumps(breakdown, sort_keys=True) if breakdown else None,
    )  # fmt: skip
