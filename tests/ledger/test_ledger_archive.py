"""``RequestArchive``: requests ended in a hot store (Redis), written into a durable request log.

Run over the durable backends (``BACKEND_URLS`` "sqlite" and "postgresql"): what is archived
is answered by ``query_requests`` and ``usage_by`` like the ledger's own ended requests, and
archiving again writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from spendgate.budgets import Attributes
from spendgate.clock import ManualClock
from spendgate.ledger import ArchivedRequest, BudgetLine, Ledger, RequestArchive, RequestRecord, open_ledger
from spendgate.ledger.base import UnknownReservationError
from spendgate.money import Money

from .conftest import BACKEND_URLS, T0, drop_test_data

USD = Money.usd
ALICE = Attributes(user="alice", team="research", model="gpt-4o", tags=frozenset({"batch", "eval"}))
BOB = Attributes(user="bob", key="vk-1")


@pytest.fixture(params=["sqlite", "postgresql"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    url = BACKEND_URLS[request.param](tmp_path)
    ledger = open_ledger(url, clock=ManualClock(T0))
    yield ledger
    ledger.close()
    drop_test_data(url)


def ended(
    request_id: str,
    attrs: Attributes,
    cost: str,
    state: str = "settled",
    *,
    start: int = 0,
    estimate: str = "1",
    **record: object,
) -> ArchivedRequest:
    started = T0 + timedelta(seconds=start)
    line = BudgetLine("g", "", T0.replace(day=1, hour=0), None)
    return ArchivedRequest(
        record=RequestRecord(
            request_id=request_id,
            attributes=attrs,
            cost=USD(cost),
            started_at=started,
            finished_at=started + timedelta(seconds=2),
            **record,  # type: ignore[arg-type]
        ),
        state=state,  # type: ignore[arg-type]
        estimate=USD(estimate),
        lines=(line,),
    )


def test_archived_requests_are_the_request_log(durable: Ledger) -> None:
    assert isinstance(durable, RequestArchive)
    entries = [
        ended(
            "r1",
            ALICE,
            "0.25",
            model="gpt-4o-2024-08-06",
            usage={"input_tokens": 100, "output_tokens": 5},
            breakdown={"input": USD("0.2"), "output": "0.05"},
        ),
        ended("r2", BOB, "1", "expired", start=10, status="expired"),
        ended("r3", ALICE, "0", "released", start=20),
    ]
    assert durable.archive(entries) == 3
    records = durable.query_requests()
    assert [r.request_id for r in records] == ["r2", "r1"]  # newest first; released is not logged
    expired, settled = records
    assert (expired.status, expired.cost, expired.model) == ("expired", USD("1"), None)
    assert settled.attributes == ALICE
    assert (settled.cost, settled.model, settled.status) == (USD("0.25"), "gpt-4o-2024-08-06", "ok")
    assert settled.usage == {"input_tokens": 100, "output_tokens": 5}
    assert settled.breakdown == {"input": "0.2", "output": "0.05"}
    assert (settled.started_at, settled.finished_at) == (T0, T0 + timedelta(seconds=2))
    assert durable.usage_by("user") == {"alice": USD("0.25"), "bob": USD("1")}
    assert durable.usage_by("tag") == {"batch": USD("0.25"), "eval": USD("0.25")}
    assert [r.request_id for r in durable.query_requests(key="vk-1")] == ["r2"]
    assert [r.request_id for r in durable.query_requests(after="r2")] == ["r1"]
    with pytest.raises(UnknownReservationError):
        durable.query_requests(after="r3")  # released: not in the log


def test_archiving_again_writes_nothing_twice(durable: Ledger) -> None:
    assert isinstance(durable, RequestArchive)
    first = [ended("a", ALICE, "0.5"), ended("b", BOB, "0.75", start=1)]
    assert durable.archive(first) == 2
    # A copy retried after a crash, with one new request: only the new one counts, and an id
    # already logged keeps what it had (even if the retry says otherwise).
    again = [ended("a", ALICE, "9"), ended("b", BOB, "0.75", start=1), ended("c", BOB, "1", start=2)]
    assert durable.archive(again) == 1
    assert durable.archive([]) == 0
    assert durable.usage_by("user") == {"alice": USD("0.5"), "bob": USD("1.75")}
    assert len(durable.query_requests()) == 3


def test_a_bad_entry_writes_nothing(durable: Ledger) -> None:
    assert isinstance(durable, RequestArchive)
    bad = ended("bad", ALICE, "1", breakdown={"input": 0.1})  # a float amount is refused
    with pytest.raises(TypeError):
        durable.archive([ended("good", ALICE, "1"), bad])
    assert durable.query_requests() == []


def test_retention_purges_archived_requests(durable: Ledger) -> None:
    assert isinstance(durable, RequestArchive)
    durable.archive([ended("old", ALICE, "1"), ended("new", ALICE, "1", start=86400 * 20)])
    clock = durable.clock
    assert isinstance(clock, ManualClock)
    clock.set(T0 + durable.retention + timedelta(days=1))
    durable.purge()
    assert [r.request_id for r in durable.query_requests()] == ["new"]
