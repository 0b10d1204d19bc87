"""How the SQLite backend writes values into rows and reads them back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from spendgate.budgets import Attributes
from spendgate.ledger.base import BudgetLine
from spendgate.ledger.rows import dt, us

__all__ = ["DIM_COLUMNS", "attrs_of", "dt", "public_lines", "tags_json", "us"]

#: The request log's column per dimension (tags have their own JSON column); schema.sql indexes each.
DIM_COLUMNS: Final = {
    "key": "dim_key",
    "user": "dim_user",
    "team": "dim_team",
    "project": "dim_project",
    "customer": "dim_customer",
    "model": "dim_model",
}


def public_lines(lines_json: str) -> tuple[BudgetLine, ...]:
    return tuple(
        BudgetLine(budget_id, key, dt(start), None if end is None else dt(end))
        for budget_id, key, start, end in json.loads(lines_json)
    )


def tags_json(tags: frozenset[str]) -> str | None:
    return json.dumps(sorted(tags)) if tags else None


def attrs_of(row: Sequence[Any]) -> Attributes:
    key, user, team, project, customer, model, tags = row
    return Attributes(
        key=key,
        user=user,
        team=team,
        project=project,
        customer=customer,
        model=model,
        tags=frozenset(json.loads(tags)) if tags else frozenset(),
    )
