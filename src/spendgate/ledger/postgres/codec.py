"""How the PostgreSQL backend writes values into rows and reads them back.

Instants and amounts are encoded as in the SQLite backend (``sqlite.codec``: BIGINT µs since
the epoch, BIGINT nano-USD); ``lines``, ``tags`` and ``takes`` are ``jsonb``, which psycopg
reads back as Python lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spendgate.budgets import Attributes
from spendgate.ledger.base import BudgetLine
from spendgate.ledger.sqlite.codec import DIM_COLUMNS, dt, us

__all__ = ["DIM_COLUMNS", "attrs_of", "dt", "lines_of", "tags_list", "us"]


def lines_of(lines: Sequence[Sequence[Any]]) -> tuple[BudgetLine, ...]:
    """``[[budget_id, instance, start_us, end_us], ...]`` as budget lines."""
    return tuple(
        BudgetLine(budget_id, key, dt(start), None if end is None else dt(end))
        for budget_id, key, start, end in lines
    )


def tags_list(tags: frozenset[str]) -> list[str] | None:
    return sorted(tags) if tags else None


def attrs_of(row: Sequence[Any]) -> Attributes:
    """The attributes from ``dim_key, dim_user, dim_team, dim_project, dim_customer, dim_model, tags``."""
    key, user, team, project, customer, model, tags = row
    return Attributes(
        key=key,
        user=user,
        team=team,
        project=project,
        customer=customer,
        model=model,
        tags=frozenset(tags) if tags else frozenset(),
    )
