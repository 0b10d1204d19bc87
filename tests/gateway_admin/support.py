"""Shared by the admin tests: put real spend into a ledger through reserve + settle."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from spendgate.budgets import Attributes
from spendgate.ledger import Ledger, RequestRecord
from spendgate.money import Money

_ids = itertools.count()


def spend(ledger: Ledger, amount: str, **attrs: object) -> str:
    """One settled request costing ``amount`` USD, charged to every budget it matches."""
    request_id = f"req-{next(_ids)}"
    attributes = Attributes.of(**attrs)
    cost = Money.usd(amount)
    result = ledger.reserve(request_id, attributes, cost, lease=60)
    assert result.admitted, result
    now = datetime.now(UTC)
    ledger.settle(
        request_id,
        cost,
        RequestRecord(
            request_id=request_id,
            attributes=attributes,
            cost=cost,
            started_at=now,
            finished_at=now,
            model=attributes.model,
            usage={"input_tokens": 10, "output_tokens": 5},
            breakdown={"input": cost},
        ),
    )
    return request_id
