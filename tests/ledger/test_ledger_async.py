"""``areserve``/``asettle`` on every backend, and SQLite's group commit on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.ledger import LedgerUnavailableError, Refusal, Reservation, open_ledger
from spendgate.ledger.sqlite import SQLiteLedger
from spendgate.ledger.sqlite.group_commit import GroupCommit, future_job
from spendgate.limits import LimitRefusal
from spendgate.money import Money

from .conftest import T0, MakeLedger

USD = Money.usd
ALICE = Attributes(user="alice", team="research", model="gpt-4o")
BOB = Attributes(user="bob", team="research", model="gpt-4o")
T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    """One event loop per test, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(body(), timeout=30)

    return asyncio.run(bounded())


def budget(**config: Any) -> Budget:
    config.setdefault("limit", "10")
    return Budget.from_config(config)


def sqlite_ledger(tmp_path: Path, budgets: list[Budget], **options: Any) -> SQLiteLedger:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'spend.db'}", budgets, clock=ManualClock(T0), **options)
    assert isinstance(ledger, SQLiteLedger)
    return ledger


async def settle_soon(ticks: int = 1000) -> None:
    """Let queued ledger batches run (call_soon callbacks); bounded."""
    for _ in range(ticks):
        await asyncio.sleep(0)


# -- every backend ----------------------------------------------------------------------


def test_areserve_and_asettle_charge_and_report_what_is_left(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(
        [budget(id="global", limit="10"), budget(id="team", selector={"team": "*"}, limit="3")]
    )

    async def body() -> None:
        first = await ledger.areserve("r1", ALICE, USD("1"), 60)
        second = await ledger.areserve("r2", BOB, USD("1.5"), 60)
        assert isinstance(first, Reservation) and isinstance(second, Reservation)
        outcome = await ledger.asettle("r1", USD("0.25"))
        assert outcome.status == "settled"
        # team=research: 3 - 0.25 spent - 1.5 still reserved by r2; global has more.
        assert outcome.remaining == USD("1.25")
        again = await ledger.asettle("r1", USD("0.25"))
        assert again.status == "already_settled"
        assert again.remaining is None

    run(body)
    usage = ledger.usage("team", {"team": "research"})
    assert (usage.spent, usage.reserved) == (USD("0.25"), USD("1.5"))


def test_remaining_is_none_without_a_matching_budget(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="infra", selector={"team": "infra"})])
    ledger.reserve("r1", ALICE, USD("1"), 60)
    outcome = ledger.settle("r1", USD("1"))
    assert outcome.status == "settled" and outcome.remaining is None


def test_remaining_never_goes_below_zero(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b", limit="1")])
    ledger.reserve("r1", ALICE, USD("1"), 60)
    # The provider billed beyond the estimate: charged in full, and nothing is left.
    assert ledger.settle("r1", USD("1.5")).remaining == USD("0")


def test_concurrent_areserve_never_overshoots(make_ledger: MakeLedger) -> None:
    ledger = make_ledger([budget(id="b", limit="1")])

    async def body() -> list[Reservation | Refusal | LimitRefusal]:
        return await asyncio.gather(*(ledger.areserve(f"r{i}", ALICE, USD("0.05"), 60) for i in range(50)))

    results = run(body)
    assert sum(isinstance(r, Reservation) for r in results) == 20
    refusals = [r for r in results if isinstance(r, Refusal)]
    assert len(refusals) == 30
    assert all(r.spent + r.reserved + r.needed > r.limit for r in refusals)
    assert ledger.usage("b").reserved == USD("1")


# -- SQLite: group commit on the event loop ----------------------------------------------


def test_one_iteration_shares_one_transaction(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path, [budget(id="b", limit="100")])

    async def body() -> int:
        results = await asyncio.gather(*(ledger.areserve(f"r{i}", ALICE, USD("1"), 60) for i in range(40)))
        assert all(isinstance(r, Reservation) for r in results)
        outcomes = await asyncio.gather(*(ledger.asettle(f"r{i}", USD("0.5")) for i in range(40)))
        assert {o.status for o in outcomes} == {"settled"}
        group = ledger._groups[asyncio.get_running_loop()]
        assert group.jobs >= 80
        return group.batches

    batches = run(body)
    assert batches < 10, batches  # 80 writes from two gathers: a handful of transactions
    assert ledger.usage("b").spent == USD("20")
    assert ledger.open_reservations() == 0
    ledger.close()


def test_a_refusal_in_a_batch_undoes_only_itself(tmp_path: Path) -> None:
    ledger = sqlite_ledger(
        tmp_path, [budget(id="global", limit="100"), budget(id="per-user", selector={"user": "*"}, limit="1")]
    )

    async def body() -> tuple[Reservation | Refusal | LimitRefusal, ...]:
        # One batch: bob fits, alice's second request passes "global" then fails "per-user".
        a = ledger.areserve("a1", ALICE, USD("0.75"), 60)
        b = ledger.areserve("b1", BOB, USD("0.5"), 60)
        c = ledger.areserve("a2", ALICE, USD("0.5"), 60)
        return tuple(await asyncio.gather(a, b, c))

    first, second, third = run(body)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert isinstance(third, Refusal) and third.budget_id == "per-user"
    assert ledger.usage("global").reserved == USD("1.25")  # a2's hold on global rolled back
    assert ledger.open_reservations() == 2  # and its request row too
    # The refused id is free: nothing of it was kept.
    assert isinstance(ledger.reserve("a2", ALICE, USD("0.25"), 60), Reservation)
    ledger.close()


def test_a_busy_write_lock_does_not_block_the_loop(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path, [budget(id="b")])
    other = sqlite3.connect(tmp_path / "spend.db", isolation_level=None)

    async def body() -> None:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        task = asyncio.ensure_future(ledger.areserve("r1", ALICE, USD("1"), 60))
        ticks = 0
        for _ in range(200):  # the loop keeps running other work meanwhile
            await asyncio.sleep(0.0005)
            ticks += 1
        assert ticks == 200
        assert not task.done()  # it cannot have written while the lock is held
        other.execute("COMMIT")
        assert isinstance(await task, Reservation)

    try:
        run(body)
    finally:
        other.close()
    assert ledger.usage("b").reserved == USD("1")
    ledger.close()


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_lock_held_past_busy_timeout(tmp_path: Path, fail_open: bool) -> None:
    ledger = sqlite_ledger(tmp_path, [budget(id="b")], busy_timeout=0.05, fail_open=fail_open)
    other = sqlite3.connect(tmp_path / "spend.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def body() -> Reservation | Refusal | LimitRefusal:
        return await ledger.areserve("r1", ALICE, USD("1"), 60)

    try:
        if fail_open:
            result = run(body)
            assert isinstance(result, Reservation) and result.unrecorded
        else:
            with pytest.raises(LedgerUnavailableError, match="unavailable"):
                run(body)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert ledger.open_reservations() == 0
    ledger.close()


def test_a_cancelled_reservation_is_released(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path, [budget(id="b")])

    async def body() -> None:
        first = asyncio.ensure_future(ledger.areserve("r0", ALICE, USD("1"), 60))
        task = asyncio.ensure_future(ledger.areserve("r1", ALICE, USD("2"), 60))
        await asyncio.sleep(0)  # both queued for this iteration's batch, nothing written yet
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert isinstance(await first, Reservation)
        await settle_soon()  # r1 was written with r0; nobody waits for it, so it is released

    run(body)
    assert ledger.open_reservations() == 1
    assert ledger.usage("b").reserved == USD("1")
    ledger.close()


def test_sync_and_async_writes_mix(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path, [budget(id="b", limit="2")])

    async def body() -> None:
        assert isinstance(await ledger.areserve("r1", ALICE, USD("1"), 60), Reservation)
        assert isinstance(ledger.reserve("r2", ALICE, USD("1"), 60), Reservation)  # the sync path
        assert isinstance(await ledger.areserve("r3", ALICE, USD("0.01"), 60), Refusal)
        assert ledger.settle("r1", USD("0.5")).status == "settled"
        assert (await ledger.asettle("r2", USD("0.5"))).remaining == USD("1")

    run(body)
    ledger.close()


def test_a_write_failing_part_way_does_not_take_its_batch_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = sqlite_ledger(tmp_path, [budget(id="b", limit="100")])
    for i in range(3):
        assert isinstance(ledger.reserve(f"r{i}", ALICE, USD("1"), 60), Reservation)
    charge = ledger._charge

    def flaky(conn: Any, catalog: Any, request_id: str, *args: Any) -> Any:
        if request_id == "r1":  # after its request row was already marked settled
            raise RuntimeError("a bug in the middle of a write")
        return charge(conn, catalog, request_id, *args)

    monkeypatch.setattr(ledger, "_charge", flaky)

    async def body() -> list[Any]:
        return await asyncio.gather(
            *(ledger.asettle(f"r{i}", USD("0.5")) for i in range(3)), return_exceptions=True
        )

    first, second, third = run(body)
    assert first.status == "settled" and third.status == "settled"
    assert isinstance(second, RuntimeError)
    assert ledger.open_reservations() == 1  # r1's half-done settle was rolled back whole
    usage = ledger.usage("b")
    assert (usage.spent, usage.reserved) == (USD("1"), USD("1"))
    ledger.close()


def test_cancelled_after_its_result_arrived_still_releases(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path, [budget(id="b")])

    async def body() -> None:
        task = asyncio.ensure_future(ledger.areserve("r1", ALICE, USD("1"), 60))
        await asyncio.sleep(0)  # queued; the batch is next in line
        asyncio.get_running_loop().call_soon(task.cancel)  # lands after the result, before the task runs
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle_soon()

    run(body)
    assert ledger.open_reservations() == 0
    assert ledger.usage("b").reserved == USD("0")
    ledger.close()


def test_a_cancelled_retry_does_not_release_the_holders_reservation(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path, [budget(id="b")])
    assert isinstance(ledger.reserve("r1", ALICE, USD("1"), 60), Reservation)  # the live holder

    async def body() -> None:
        retry = asyncio.ensure_future(ledger.areserve("r1", ALICE, USD("1"), 60))  # the same id again
        await asyncio.sleep(0)
        retry.cancel()
        with pytest.raises(asyncio.CancelledError):
            await retry
        await settle_soon()

    run(body)
    assert ledger.open_reservations() == 1
    assert ledger.settle("r1", USD("0.5")).status == "settled"
    ledger.close()


def test_close_fails_the_writes_still_queued(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path, [budget(id="b")])

    async def body() -> None:
        task = asyncio.ensure_future(ledger.areserve("r1", ALICE, USD("1"), 60))
        await asyncio.sleep(0)  # queued
        ledger.close()
        with pytest.raises(LedgerUnavailableError):
            await task
        # The ledger opens again on its next use.
        assert isinstance(await ledger.areserve("r2", ALICE, USD("1"), 60), Reservation)

    run(body)
    assert ledger.open_reservations() == 1
    ledger.close()


def test_an_interrupted_batch_fails_its_writes_and_the_next_one_runs() -> None:
    calls: list[int] = []

    def run_batch(bodies: Any) -> list[tuple[bool, Any]]:
        calls.append(len(bodies))
        if len(calls) == 1:
            raise KeyboardInterrupt
        return [(True, body(None)) for body in bodies]

    def finish(ok: bool, value: Any) -> Any:
        if not ok:
            raise value
        return value

    async def body() -> None:
        loop = asyncio.get_running_loop()
        group = GroupCommit(loop, run_batch, busy_timeout=1.0, unavailable=lambda: RuntimeError("closed"))
        job, first = future_job(lambda conn: "one", finish)
        group.submit([job])
        with pytest.raises(KeyboardInterrupt):
            group._flush()  # as the loop would; the interrupt goes through
        with pytest.raises(RuntimeError, match="interrupted"):
            await first
        job, second = future_job(lambda conn: "two", finish)
        group.submit([job])
        assert await second == "two"

    run(body)
