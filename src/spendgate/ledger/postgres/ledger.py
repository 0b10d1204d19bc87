"""``PostgresLedger``: the jobs of the PostgreSQL backend composed into one ledger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spendgate.budgets import Budget
from spendgate.clock import Clock
from spendgate.ledger.postgres.budgets import BudgetAdminMixin
from spendgate.ledger.postgres.connection import Body, Q
from spendgate.ledger.postgres.limits import LimitAdminMixin
from spendgate.ledger.postgres.outbox import AlertOutboxMixin
from spendgate.ledger.postgres.refusals import RefusalCountsMixin
from spendgate.ledger.postgres.request_log import RequestLogMixin
from spendgate.ledger.postgres.reservations import ReservationsMixin
from spendgate.ledger.postgres.settings import parse_url

__all__ = ["PostgresLedger", "postgres_factory"]


class PostgresLedger(
    ReservationsMixin,
    BudgetAdminMixin,
    LimitAdminMixin,
    RequestLogMixin,
    AlertOutboxMixin,
    RefusalCountsMixin,
):
    """A ledger in one PostgreSQL schema; safe for many threads, processes and hosts.

    ``timeout`` (seconds; also the URL's ``timeout``) bounds the connect, each statement and
    the wait for a pooled connection; ``busy_timeout`` (default ``timeout``) the wait for a row
    lock. ``expiry_interval`` spaces the opportunistic lease expiry that ``reserve`` runs;
    ``purge_interval`` the retention purge. Ended requests are the request log, kept for
    ``retention``: that is also how long a settle retry is recognised as one.

    The jobs live in their own modules: pools and the two runners (``connection.py``), state,
    catalog and ops (``core.py``), reservations, budget administration, rate limits, the
    request log, the alert outbox and the refusal counts (one mixin each); the hot path's SQL is in server-side
    functions (``schema.sql``).
    """

    def open_reservations(self) -> int:
        """How many reservations are open (for tests)."""

        def body() -> Body[int]:
            rows = yield Q("SELECT count(*) FROM requests WHERE state = 'open'")
            return int(rows[0][0])

        count: int = self._execute(body, txn=False)
        return count


def postgres_factory(
    url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any
) -> PostgresLedger:
    """``postgresql://user:pw@host:port/db?schema=NAME&pool_min=1&pool_max=10&timeout=2&<libpq>``."""
    timeout = options.pop("timeout", None)
    return PostgresLedger(parse_url(url, timeout=timeout), budgets, clock=clock, **options)
