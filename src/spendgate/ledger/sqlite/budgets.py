"""Budget administration: budgets at run time, limits, resets, and what they have spent."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from spendgate.budgets import Budget, parse_instance_key
from spendgate.ledger.base import BudgetDeleted, BudgetUsage, Event
from spendgate.ledger.sqlite.codec import us
from spendgate.ledger.sqlite.core import LedgerCore
from spendgate.ledger.sqlite.reservations import SQL_LINE
from spendgate.money import Money

__all__ = ["BudgetAdminMixin"]

# Open requests with a line in the budget (``lines`` is [[budget_id, instance, start, end], ...]).
_SQL_IN_FLIGHT = """
    SELECT count(*) FROM requests
    WHERE state = 'open'
      AND EXISTS (SELECT 1 FROM json_each(requests.lines) WHERE json_extract(json_each.value, '$[0]') = ?)"""


class BudgetAdminMixin(LedgerCore):
    """``BudgetAdmin`` over SQLite: every change is one transaction that bumps the budgets'
    version, so every process picks it up at its next transaction."""

    def put_budget(self, budget: Budget) -> None:
        events: list[Event] = []
        self._write(lambda conn: self._put_in(conn, budget, events))
        self._deliver(events)

    def delete_budget(self, budget_id: str) -> BudgetDeleted:
        events: list[Event] = []

        def body(conn: sqlite3.Connection) -> BudgetDeleted:
            catalog = self._sync(conn, events)
            old = catalog.budgets.get(budget_id)
            if old is None:
                raise KeyError(f"no budget {budget_id!r}")
            # The spend rows stay: open reservations still end on them (settle, release and
            # expiry name their lines), and re-adding the id in the same window continues there.
            conn.execute("DELETE FROM budgets WHERE id = ?", (budget_id,))
            in_flight = conn.execute(_SQL_IN_FLIGHT, (budget_id,)).fetchone()[0]
            reserved = conn.execute(
                "SELECT coalesce(sum(reserved), 0) FROM spend WHERE budget_id = ?", (budget_id,)
            ).fetchone()[0]
            budgets = {k: v for k, v in catalog.budgets.items() if k != budget_id}
            self._record_change(
                conn, catalog, budget_id, "remove", None, old.limit.nanos, None, budgets, events
            )
            return BudgetDeleted(budget_id, in_flight, Money(reserved))

        deleted = self._write(body)
        self._deliver(events)
        return deleted

    def get_budget(self, budget_id: str) -> Budget:
        budget = self._current().budgets.get(budget_id)
        if budget is None:
            raise KeyError(f"no budget {budget_id!r}")
        return budget

    def budgets(self) -> list[Budget]:
        return list(self._current().order)

    def set_limit(self, budget_id: str, limit: Money) -> None:
        nanos = self._amount(limit, "limit")
        events: list[Event] = []

        def body(conn: sqlite3.Connection) -> None:
            catalog = self._sync(conn, events)
            old = catalog.budgets.get(budget_id)
            if old is None:
                raise KeyError(f"no budget {budget_id!r}")
            conn.execute(
                "UPDATE budgets SET limit_override = ?, updated_at = ? WHERE id = ?",
                (nanos, us(self.clock.now()), budget_id),
            )
            budgets = dict(catalog.budgets)
            budgets[budget_id] = replace(old, limit=limit)
            self._record_change(
                conn, catalog, budget_id, "limit", nanos, old.limit.nanos, None, budgets, events
            )

        self._write(body)
        self._deliver(events)

    def reset(self, budget_id: str, instance: Mapping[str, str] | str | None = None) -> None:
        events: list[Event] = []

        def body(conn: sqlite3.Connection) -> None:
            catalog = self._sync(conn, events)
            budget = catalog.budgets.get(budget_id)
            if budget is None:
                raise KeyError(f"no budget {budget_id!r}")
            key = budget.instance_key(instance) if instance is not None else None
            start = us(budget.window.bounds(self.clock.now())[0])
            where = "budget_id = ? AND window_start = ?" + ("" if key is None else " AND instance = ?")
            params: tuple[Any, ...] = (budget_id, start) if key is None else (budget_id, start, key)
            conn.execute(f"UPDATE spend SET spent = 0, alerted = 0 WHERE {where}", params)
            conn.execute(f"DELETE FROM alerts WHERE {where}", params)
            self._record_change(
                conn,
                catalog,
                budget_id,
                "reset",
                budget.limit.nanos,
                None,
                key,
                dict(catalog.budgets),
                events,
            )

        self._write(body)
        self._deliver(events)

    # -- usage --------------------------------------------------------------------------
    def usage(
        self, budget_id: str, instance: Mapping[str, str] | str | None = None, *, at: datetime | None = None
    ) -> BudgetUsage:
        events: list[Event] = []
        when = at if at is not None else self.clock.now()

        def body(conn: sqlite3.Connection) -> BudgetUsage:
            budget = self._sync(conn, events).budgets.get(budget_id)
            if budget is None:
                raise KeyError(f"no budget {budget_id!r}")
            key = budget.instance_key(instance)
            window = budget.window.bounds(when)
            row = conn.execute(SQL_LINE, (budget_id, us(window[0]), key)).fetchone()
            return _usage(budget, key, window, row or (0, 0))

        result = self._read(body)
        self._deliver(events)
        return result

    def list_budgets(self) -> list[BudgetUsage]:
        events: list[Event] = []
        now = self.clock.now()

        def body(conn: sqlite3.Connection) -> list[BudgetUsage]:
            out: list[BudgetUsage] = []
            for budget in self._sync(conn, events).order:
                window = budget.window.bounds(now)
                rows = {
                    key: (spent, reserved)
                    for key, spent, reserved in conn.execute(
                        "SELECT instance, spent, reserved FROM spend WHERE budget_id = ? AND window_start = ? "
                        "ORDER BY instance",
                        (budget.id, us(window[0])),
                    )
                }
                if not budget.wildcards:
                    out.append(_usage(budget, "", window, rows.get("", (0, 0))))
                    continue
                out.extend(_usage(budget, key, window, row) for key, row in rows.items() if row[0] or row[1])
            return out

        result = self._read(body)
        self._deliver(events)
        return result


def _usage(
    budget: Budget, key: str, window: tuple[datetime, datetime | None], row: tuple[int, int]
) -> BudgetUsage:
    return BudgetUsage(
        budget_id=budget.id,
        label=budget.label(key),
        selector=budget.concrete_selector(key),
        instance=parse_instance_key(key),
        spent=Money(row[0]),
        reserved=Money(row[1]),
        limit=budget.limit,
        window_start=window[0],
        window_end=window[1],
    )
