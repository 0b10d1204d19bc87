"""The ledger conformance fixture: every registered backend runs the same tests.

A backend joins the suite by adding a URL builder to ``BACKEND_URLS``; a
registered scheme without one fails ``test_every_registered_backend_is_tested``.
Backends listed in ``SHARED`` keep state outside the ledger object, so two
ledgers opened on the same URL see each other (the multi-process cases).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pytest

from spendgate.budgets import Budget
from spendgate.clock import Clock, ManualClock
from spendgate.ledger import Ledger, open_ledger
from spendgate.testing.servers import (
    drop_postgres_schema,
    drop_redis_prefix,
    postgres_test_url,
    redis_test_url,
)

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

BACKEND_URLS: dict[str, Callable[[Path], str]] = {
    "memory": lambda tmp: "memory://",
    "sqlite": lambda tmp: f"sqlite:///{tmp / 'spend.db'}",
    # A schema of the test's own in the test database (scripts/services.sh brings the server up).
    "postgresql": lambda tmp: postgres_test_url("ledger"),
    # A key prefix of the test's own, its durable request log and keys in a SQLite file.
    "redis": lambda tmp: redis_test_url(f"sqlite:///{tmp / 'durable.db'}", "ledger"),
}
SHARED = {"sqlite", "postgresql", "redis"}
#: Other spellings of a tested scheme (libpq takes both): tested once, under the main one.
ALIASES = {"postgres": "postgresql"}


def drop_test_data(url: str) -> None:
    """Drop what a test's server-backed ledger left (its schema or its keys)."""
    if url.startswith(("postgresql://", "postgres://")):
        drop_postgres_schema(url.replace("postgres://", "postgresql://", 1))
    elif url.startswith("redis://"):
        drop_redis_prefix(url)


class MakeLedger(Protocol):
    backend: str
    url: str

    def __call__(
        self, budgets: Iterable[Budget] = (), clock: Clock | None = None, **options: Any
    ) -> Ledger: ...


class _Maker:
    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend = backend
        self.tmp = tmp
        self.url = BACKEND_URLS[backend](tmp)
        self.opened: list[Ledger] = []

    def __call__(self, budgets: Iterable[Budget] = (), clock: Clock | None = None, **options: Any) -> Ledger:
        ledger = open_ledger(self.url, budgets, clock=clock or ManualClock(T0), **options)
        self.opened.append(ledger)
        return ledger


@pytest.fixture(params=sorted(BACKEND_URLS))
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLedger]:
    maker = _Maker(request.param, tmp_path)
    yield maker
    for ledger in maker.opened:
        ledger.close()
    drop_test_data(maker.url)


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A ledger several processes of one test share: a SQLite file, or a PostgreSQL schema."""
    url = f"sqlite:///{tmp_path / 'spend.db'}" if request.param == "sqlite" else postgres_test_url("shared")
    yield url
    drop_test_data(url)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)
