"""Budget administration: budgets at run time, limits, resets, and what they have spent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from spendgate.budgets import Budget, parse_instance_key
from spendgate.ledger.base import BudgetDeleted, BudgetUsage, Event
from spendgate.ledger.postgres.codec import us
from spendgate.ledger.postgres.connection import Body, Q
from spendgate.ledger.postgres.core import Changed, LedgerCore
from spendgate.ledger.sqlite.core import Catalog
from spendgate.money import Money

__all__ = ["BudgetAdminMixin"]

SQL_LINE = "SELECT spent, reserved FROM spend WHERE budget_id = %s AND window_start = %s AND instance = %s"
# Open requests with a line in the budget (``lines`` is [[budget_id, instance, start, end], ...]).
_SQL_IN_FLIGHT = """
    SELECT count(*) FROM requests
    WHERE state = 'open' AND EXISTS (SELECT 1 FROM jsonb_array_elements(requests.lines) AS e WHERE e->>0 = %s)"""


class BudgetAdminMixin(LedgerCore):
    """``BudgetAdmin`` over PostgreSQL: every change is one transaction that bumps the
    budgets' version, so every process picks it up at its next call."""

    def put_budget(self, budget: Budget) -> None:
        def change(catalog: Catalog, events: list[Event]) -> Body[Changed]:
            after = yield from self._put_in(catalog, budget, events)
            return Changed(None, after)

        self._change_budgets(change)

    def delete_budget(self, budget_id: str) -> BudgetDeleted:
        def change(catalog: Catalog, events: list[Event]) -> Body[Changed]:
            old = catalog.budgets.get(budget_id)
            if old is None:
                raise KeyError(f"no budget {budget_id!r}")
            # The spend rows stay: open reservations still end on them, and re-adding the id
            # in the same window continues there.
            yield Q("DELETE FROM budgets WHERE id = %s", (budget_id,))
            rows = yield Q(_SQL_IN_FLIGHT, (budget_id,))
            in_flight = int(rows[0][0])
            rows = yield Q("SELECT coalesce(sum(reserved), 0) FROM spend WHERE budget_id = %s", (budget_id,))
            reserved = int(rows[0][0])
            budgets = {k: v for k, v in catalog.budgets.items() if k != budget_id}
            after = yield from self._record_change(
                catalog, budget_id, "remove", None, old.limit.nanos, None, budgets, events
            )
            return Changed(BudgetDeleted(budget_id, in_flight, Money(reserved)), after)

        deleted: BudgetDeleted = self._change_budgets(change)
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

        def change(catalog: Catalog, events: list[Event]) -> Body[Changed]:
            old = catalog.budgets.get(budget_id)
            if old is None:
                raise KeyError(f"no budget {budget_id!r}")
            yield Q(
                "UPDATE budgets SET limit_override = %s, updated_at = %s WHERE id = %s",
                (nanos, us(self.clock.now()), budget_id),
            )
            budgets = dict(catalog.budgets)
            budgets[budget_id] = replace(old, limit=limit)
            after = yield from self._record_change(
                catalog, budget_id, "limit", nanos, old.limit.nanos, None, budgets, events
            )
            return Changed(None, after)

        self._change_budgets(change)

    def reset(self, budget_id: str, instance: Mapping[str, str] | str | None = None) -> None:
        def change(catalog: Catalog, events: list[Event]) -> Body[Changed]:
            budget = catalog.budgets.get(budget_id)
            if budget is None:
                raise KeyError(f"no budget {budget_id!r}")
            key = budget.instance_key(instance) if instance is not None else None
            start = us(budget.window.bounds(self.clock.now())[0])
            where = "budget_id = %s AND window_start = %s" + ("" if key is None else " AND instance = %s")
            params: tuple[Any, ...] = (budget_id, start) if key is None else (budget_id, start, key)
            yield Q(f"UPDATE spend SET spent = 0, alerted = 0 WHERE {where}", params)
            yield Q(f"DELETE FROM alerts WHERE {where}", params)
            after = yield from self._record_change(
                catalog, budget_id, "reset", budget.limit.nanos, None, key, dict(catalog.budgets), events
            )
            return Changed(None, after)

        self._change_budgets(change)

    # -- usage --------------------------------------------------------------------------
    def usage(
        self, budget_id: str, instance: Mapping[str, str] | str | None = None, *, at: datetime | None = None
    ) -> BudgetUsage:
        events: list[Event] = []
        when = at if at is not None else self.clock.now()

        def body() -> Body[BudgetUsage]:
            catalog = yield from self._catalog_body(events)
            budget = catalog.budgets.get(budget_id)
            if budget is None:
                raise KeyError(f"no budget {budget_id!r}")
            key = budget.instance_key(instance)
            window = budget.window.bounds(when)
            rows = yield Q(SQL_LINE, (budget_id, us(window[0]), key))
            return _usage(budget, key, window, rows[0] if rows else (0, 0))

        result: BudgetUsage = self._execute(body, txn=False)
        self._deliver(events)
        return result

    def list_budgets(self) -> list[BudgetUsage]:
        events: list[Event] = []
        now = self.clock.now()

        def body() -> Body[list[BudgetUsage]]:
            catalog = yield from self._catalog_body(events)
            out: list[BudgetUsage] = []
            for budget in catalog.order:
                window = budget.window.bounds(now)
                rows = yield Q(
                    "SELECT instance, spent, reserved FROM spend WHERE budget_id = %s AND window_start = %s "
                    'ORDER BY instance COLLATE "C"',
                    (budget.id, us(window[0])),
                )
                counts = {key: (spent, reserved) for key, spent, reserved in rows}
                if not budget.wildcards:
                    out.append(_usage(budget, "", window, counts.get("", (0, 0))))
                    continue
                out.extend(
                    _usage(budget, key, window, row) for key, row in counts.items() if row[0] or row[1]
                )
            return out

        result: list[BudgetUsage] = self._execute(body, txn=False)
        self._deliver(events)
        return result


def _usage(
    budget: Budget, key: str, window: tuple[datetime, datetime | None], row: tuple[Any, ...]
) -> BudgetUsage:
    return BudgetUsage(
        budget_id=budget.id,
        label=budget.label(key),
        selector=budget.concrete_selector(key),
        instance=parse_instance_key(key),
        spent=Money(int(row[0])),
        reserved=Money(int(row[1])),
        limit=budget.limit,
        window_start=window[0],
        window_end=window[1],
    )
