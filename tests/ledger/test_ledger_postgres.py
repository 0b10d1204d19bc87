"""What only the PostgreSQL backend has: a schema to migrate, a URL of its own, a server that
can be unreachable, the archive, and processes on other hosts (here: other processes).

The server is the test suite's (``spendgate.testing.servers``); each test works in schemas
of its own, dropped at its end. An outage is a local TCP forwarder the test cuts and
restores, never the shared server itself.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.errors import ConfigError
from spendgate.ledger import (
    ArchivedRequest,
    BudgetLine,
    Ledger,
    LedgerMissingError,
    LedgerUnavailableError,
    RequestArchive,
    RequestRecord,
    Reservation,
    open_key_storage,
    open_ledger,
)
from spendgate.ledger.postgres import SCHEMA_VERSION, PostgresLedger
from spendgate.ledger.postgres.settings import parse_url
from spendgate.money import Money
from spendgate.testing.servers import drop_postgres_schema, postgres_test_url, with_query
from spendgate.testing.tcpproxy import TcpProxy

from . import workers
from .conftest import T0
from .workers import collect

USD = Money.usd
ALICE = Attributes(user="alice", team="research")
CAP = Budget("cap", {}, USD("10"))


def schema_of(url: str) -> str:
    return parse_url(url).schema


def admin(url: str) -> psycopg.Connection[Any]:
    """A plain connection to the test database (the URL without spendgate's parameters)."""
    return psycopg.connect(parse_url(url).conninfo, autocommit=True)


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = postgres_test_url("pgtest")
    yield url
    drop_postgres_schema(url)


def ledger_at(url: str, budgets: list[Budget] | None = None, **options: Any) -> PostgresLedger:
    ledger = open_ledger(url, budgets or [], clock=options.pop("clock", ManualClock(T0)), **options)
    assert isinstance(ledger, PostgresLedger)
    return ledger


# -- schema and migrations -------------------------------------------------------------------


def test_migrations_are_applied_once_and_versioned(pg_url: str) -> None:
    first = ledger_at(pg_url, [CAP])
    with admin(pg_url) as conn:
        schema = sql.Identifier(schema_of(pg_url))
        version = conn.execute(sql.SQL("SELECT version FROM {}.spendgate_schema").format(schema)).fetchall()
        assert version == [(SCHEMA_VERSION,)]
        changes = conn.execute(sql.SQL("SELECT count(*) FROM {}.changes").format(schema)).fetchone()
        # A second open with the same budgets changes nothing: no migration, no budget change.
        second = ledger_at(pg_url, [CAP])
        again = conn.execute(sql.SQL("SELECT version FROM {}.spendgate_schema").format(schema)).fetchall()
        assert again == [(SCHEMA_VERSION,)]
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.changes").format(schema)).fetchone() == changes
    assert isinstance(second.reserve("r1", ALICE, USD("4"), 60), Reservation)
    assert first.usage("cap").reserved == USD("4")
    first.close()
    second.close()


def test_ledgers_opened_together_on_a_fresh_schema_all_work(pg_url: str) -> None:
    count = 4
    barrier = threading.Barrier(count)
    opened: list[PostgresLedger] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start(index: int) -> None:
        barrier.wait(30)
        try:
            ledger = ledger_at(pg_url, [CAP])
            assert isinstance(ledger.reserve(f"r{index}", ALICE, USD("1"), 60), Reservation)
            with lock:
                opened.append(ledger)
        except BaseException as exc:  # reported below
            with lock:
                errors.append(exc)

    workers.run_threads(start, count)
    assert errors == []
    assert len(opened) == count
    assert opened[0].usage("cap").reserved == USD(str(count))
    for ledger in opened:
        ledger.close()


def test_create_false_on_an_empty_schema_creates_nothing(pg_url: str) -> None:
    with pytest.raises(LedgerMissingError, match="holds no spendgate ledger"):
        open_ledger(pg_url, create=False)
    with pytest.raises(LedgerMissingError):
        open_key_storage(pg_url, create=False)
    with admin(pg_url) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_of(pg_url),)).fetchall()
    assert found == []
    ledger_at(pg_url, [CAP]).close()  # the gateway creates it; then the admin CLI opens it
    existing = open_ledger(pg_url, create=False)
    assert existing.get_budget("cap").limit == USD("10")
    existing.close()


def test_a_schema_from_a_newer_spendgate_is_refused(pg_url: str) -> None:
    ledger_at(pg_url).close()
    with admin(pg_url) as conn:
        table = sql.SQL("{}.spendgate_schema").format(sql.Identifier(schema_of(pg_url)))
        conn.execute(sql.SQL("UPDATE {} SET version = 99").format(table))
    with pytest.raises(LedgerUnavailableError, match="upgrade spendgate"):
        open_ledger(pg_url)


def test_postgres_alias(pg_url: str) -> None:
    ledger = ledger_at(pg_url, [CAP])
    assert isinstance(ledger.reserve("r1", ALICE, USD("2"), 60), Reservation)
    alias = open_ledger(pg_url.replace("postgresql://", "postgres://", 1))
    assert isinstance(alias, PostgresLedger)
    assert alias.usage("cap").reserved == USD("2")  # the same schema, the same numbers
    alias.close()
    ledger.close()


# -- the URL ---------------------------------------------------------------------------------


def test_url_parameters_are_spendgates_or_libpqs(pg_url: str) -> None:
    url = with_query(pg_url, pool_min="0", pool_max="3", timeout="1.5", application_name="sg-test")
    settings = parse_url(url)
    assert (settings.pool_min, settings.pool_max, settings.timeout) == (0, 3, 1.5)
    for ours in ("schema=", "pool_min", "pool_max", "timeout=1.5"):
        assert ours not in settings.conninfo
    assert "application_name=sg-test" in settings.conninfo
    ledger = ledger_at(url, [CAP])
    with ledger._sync_pool().connection() as conn:
        shown = conn.execute("SELECT current_setting('application_name'), current_setting('statement_timeout'), "
                             "current_setting('lock_timeout'), current_schema()").fetchone()  # fmt: skip
    assert shown == ("sg-test", "1500ms", "1500ms", schema_of(pg_url))
    ledger.close()
    for bad in ("pool_max=0", "timeout=never", "timeout=0", "pool_min=5&pool_max=2", "synchronous_commit=x"):
        with pytest.raises(ConfigError):
            open_ledger(f"{pg_url}&{bad}")


def test_the_password_is_never_in_an_error() -> None:
    secret = "s3cr3t-Pa55"
    # Nothing listens on port 1: the connection is refused at once.
    url = f"postgresql://spender:{secret}@127.0.0.1:1/spendgate_test?schema=x&timeout=0.5"
    for make in (
        lambda: open_ledger(url, create=False),
        lambda: open_ledger(url + "&pool_max=0"),
        lambda: open_key_storage(url, create=False),
    ):
        with pytest.raises(Exception) as info:
            make()
        assert secret not in str(info.value) and secret not in repr(info.value.args)
    assert secret not in parse_url(url).display and "***" in parse_url(url).display


# -- the server unreachable: a forwarder the test cuts --------------------------------------


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    """A forwarder to the test server: ``cut()`` resets every connection through it and each
    new one; ``restore()`` forwards again."""
    parts = urlsplit(pg_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as forwarder:
        yield forwarder


def through(url: str, proxy: TcpProxy, timeout: float = 1.0) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return with_query(urlunsplit(parts._replace(netloc=netloc)), timeout=str(timeout))


def eventually(check: Any, seconds: float = 20.0) -> Any:
    """``check()``'s result once it stops raising LedgerUnavailableError (the pool reconnects
    in the background); bounded."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return check()
        except LedgerUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_unreachable_fails_closed_quickly_and_service_resumes(pg_url: str, proxy: TcpProxy) -> None:
    url = through(pg_url, proxy, timeout=1.0)
    ledger = ledger_at(url, [CAP])
    assert isinstance(ledger.reserve("before", ALICE, USD("1"), 60), Reservation)
    proxy.cut()
    for attempt in range(3):  # a broken pooled connection, then no connection at all
        started = time.monotonic()
        with pytest.raises(LedgerUnavailableError, match="unavailable") as info:
            ledger.reserve(f"during-{attempt}", ALICE, USD("1"), 60)
        assert time.monotonic() - started < 3.0  # about ``timeout``: never a hang
        assert "fail closed" in str(info.value)
    with pytest.raises(LedgerUnavailableError):
        ledger.settle("before", USD("0.5"))
    proxy.restore()
    # The same ledger object serves again once the pool has reconnected: nothing reopened.
    result = eventually(lambda: ledger.reserve("after", ALICE, USD("1"), 60))
    assert isinstance(result, Reservation)
    assert ledger.settle("before", USD("0.5")).status == "settled"
    assert ledger.usage("cap").reserved == USD("1")
    ledger.close()


def test_fail_open_admits_unrecorded_while_unreachable(
    pg_url: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = ledger_at(through(pg_url, proxy), [CAP], fail_open=True)
    proxy.cut()
    with caplog.at_level(logging.ERROR, logger="spendgate.ledger"):
        started = time.monotonic()
        result = ledger.reserve("open-1", ALICE, USD("100"), 60)  # over the cap: nobody can tell
        assert time.monotonic() - started < 3.0
    assert isinstance(result, Reservation) and result.unrecorded
    assert any("FAIL-OPEN" in r.getMessage() for r in caplog.records)
    assert ledger.settle("open-1", USD("1")).status == "unrecorded"
    with pytest.raises(LedgerUnavailableError):
        ledger.check_writable()  # fail_open admits; it does not make the ledger writable
    proxy.restore()
    eventually(ledger.check_writable)
    assert ledger.settle("open-1", USD("1")).status == "unrecorded"  # never recorded, still known
    assert isinstance(ledger.reserve("open-2", ALICE, USD("1"), 60), Reservation)
    assert not ledger.reserve("open-3", ALICE, USD("1"), 60).unrecorded  # type: ignore[union-attr]
    ledger.close()


def test_opened_while_the_server_is_down_it_sets_up_when_it_returns(pg_url: str, proxy: TcpProxy) -> None:
    proxy.cut()
    url = through(pg_url, proxy)
    with pytest.raises(LedgerUnavailableError):
        open_ledger(url, create=False)  # the admin CLI: an answer now
    started = time.monotonic()
    ledger = ledger_at(url, [CAP])  # a gateway starting before its database
    assert time.monotonic() - started < 3.0
    with pytest.raises(LedgerUnavailableError):
        ledger.reserve("r1", ALICE, USD("1"), 60)
    proxy.restore()
    assert eventually(lambda: ledger.get_budget("cap")) == CAP  # the config's budgets were put
    assert isinstance(ledger.reserve("r1", ALICE, USD("1"), 60), Reservation)
    ledger.close()


def test_asyncio_calls_fail_closed_and_resume(pg_url: str, proxy: TcpProxy) -> None:
    ledger = ledger_at(through(pg_url, proxy), [CAP])

    async def body() -> None:
        assert isinstance(await ledger.areserve("a1", ALICE, USD("1"), 60), Reservation)
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(LedgerUnavailableError):
            await ledger.areserve("a2", ALICE, USD("1"), 60)
        with pytest.raises(LedgerUnavailableError):
            await ledger.acheck_writable()
        assert time.monotonic() - started < 5.0
        proxy.restore()
        deadline = time.monotonic() + 20
        while True:
            try:
                outcome = await ledger.asettle("a1", USD("0.5"))
                break
            except LedgerUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert outcome.status == "settled"
        await ledger.aclose()  # before the loop ends (its pool reconnected in the background)

    asyncio.run(asyncio.wait_for(body(), 60))
    # The blocking pool's idle connection broke too: found and replaced on its first use.
    assert ledger.usage("cap").spent == USD("0.5")
    ledger.close()


# -- asyncio: cancelled callers ----------------------------------------------------------------


def test_a_cancelled_asettle_still_settles_and_a_cancelled_areserve_is_released(pg_url: str) -> None:
    ledger = ledger_at(pg_url, [CAP])

    async def body() -> None:
        assert isinstance(await ledger.areserve("r1", ALICE, USD("1"), 60), Reservation)
        settling = asyncio.ensure_future(ledger.asettle("r1", USD("0.25")))
        reserving = asyncio.ensure_future(ledger.areserve("r2", ALICE, USD("2"), 60))
        await asyncio.sleep(0)  # both started
        settling.cancel()
        reserving.cancel()
        for task in (settling, reserving):
            with pytest.raises(asyncio.CancelledError):
                await task
        for _ in range(200):  # the writes go on without their callers; bounded
            if ledger.open_reservations() == 0:
                break
            await asyncio.sleep(0.02)
        await ledger.aclose()

    asyncio.run(asyncio.wait_for(body(), 30))
    assert ledger.open_reservations() == 0
    usage = ledger.usage("cap")
    assert (usage.spent, usage.reserved) == (USD("0.25"), USD("0"))
    ledger.close()


# -- leases: concurrent expirers ---------------------------------------------------------------


def test_concurrent_expirers_charge_each_lease_once(pg_url: str) -> None:
    count, estimate = 60, USD("0.1")
    clock = ManualClock(T0)
    holder = ledger_at(pg_url, [Budget("cap", {}, USD("100"))], clock=clock)
    for index in range(count):
        assert isinstance(holder.reserve(f"r{index}", ALICE, estimate, 30), Reservation)
    later = ManualClock(T0 + timedelta(seconds=31))
    expirers = [ledger_at(pg_url, clock=later) for _ in range(4)]
    expired: list[int] = []
    lock = threading.Lock()

    def expire(index: int) -> None:
        total = 0
        for _ in range(5):  # each takes what the others have not (SKIP LOCKED), until none is left
            total += expirers[index].expire_leases()
        with lock:
            expired.append(total)

    workers.run_threads(expire, len(expirers))
    assert sum(expired) == count
    usage = holder.usage("cap")
    assert (usage.spent, usage.reserved) == (Money(count * estimate.nanos), Money(0))
    logged = holder.query_requests(limit=1000)
    assert len(logged) == count and {r.status for r in logged} == {"expired"}
    for ledger in [holder, *expirers]:
        ledger.close()


# -- the archive: requests ended in a hot store ------------------------------------------------


def archived(request_id: str, cost: str, state: str = "settled", **attrs: Any) -> ArchivedRequest:
    attributes = Attributes(**attrs)
    record = RequestRecord(
        request_id,
        attributes,
        USD(cost),
        T0,
        T0 + timedelta(seconds=2),
        model="gpt-4o-2024",
        usage={"input_tokens": 10},
        breakdown={"input": "0.0001"},
    )
    line = BudgetLine("cap", "", T0, None)
    return ArchivedRequest(record, state, USD("1"), (line,))  # type: ignore[arg-type]


def test_the_archive_takes_ended_requests_once(pg_url: str) -> None:
    ledger = ledger_at(pg_url, [CAP])
    assert isinstance(ledger, RequestArchive)
    assert isinstance(ledger.reserve("own", ALICE, USD("1"), 60), Reservation)
    ledger.settle("own", USD("0.5"))
    entries = [
        archived("hot-1", "0.25", user="bob", team="ml", tags=frozenset({"x"})),
        archived("hot-2", "0.75", "expired", user="bob"),
        archived("hot-3", "0", "released", user="bob"),
    ]
    assert ledger.archive(entries) == 3
    assert ledger.archive(entries) == 0  # a retried copy writes nothing twice
    assert ledger.archive([*entries, archived("hot-4", "1", user="carol")]) == 1
    assert ledger.archive([]) == 0
    logged = {r.request_id: r for r in ledger.query_requests()}
    assert set(logged) == {"own", "hot-1", "hot-2", "hot-4"}  # released ones cost nothing: not logged
    assert logged["hot-1"].cost == USD("0.25") and logged["hot-1"].model == "gpt-4o-2024"
    assert logged["hot-1"].usage == {"input_tokens": 10} and logged["hot-1"].breakdown == {"input": "0.0001"}
    assert logged["hot-2"].status == "expired"
    assert ledger.usage_by("user") == {"alice": USD("0.5"), "bob": USD("1"), "carol": USD("1")}
    assert ledger.usage_by("tag") == {"x": USD("0.25")}
    assert [r.request_id for r in ledger.query_requests(user="bob")] == ["hot-1", "hot-2"]
    assert ledger.usage("cap").spent == USD("0.5")  # the archive is the log, not the budgets' numbers
    ledger.close()


# -- processes: one budget, never over, used up -------------------------------------------------

ctx = mp.get_context("spawn")


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


def test_processes_and_threads_never_overshoot_and_use_the_budget_up(
    pg_url: str, processes: list[Any]
) -> None:
    procs, threads, affordable = 4, 5, 9
    estimate = Money.usd("0.37").nanos
    limit = affordable * estimate
    parent = ledger_at(pg_url, [Budget("research", {"team": "research"}, Money(limit))])
    go, settle_go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    for proc in range(procs):
        child = ctx.Process(
            target=workers.contend, args=(pg_url, proc, threads, estimate, go, settle_go, out), daemon=True
        )
        child.start()
        processes.append(child)
    deadline = time.monotonic() + 60
    collect(out, "ready", procs, deadline)
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        for _ in range(10_000):  # bounded; stopped long before
            if stop.is_set():
                return
            usage = parent.usage("research")
            samples.append((usage.spent.nanos, usage.reserved.nanos))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    go.set()
    reserved = collect(out, "reserved", procs, deadline)
    settle_go.set()
    settled = collect(out, "settled", procs, deadline)
    stop.set()
    sampler.join(10)
    attempts = {rid: ok for report in reserved.values() for rid, ok in report.items()}
    admitted = sorted(rid for rid, ok in attempts.items() if ok)
    assert len(attempts) == procs * threads
    assert len(admitted) == affordable  # exactly what fits: never over, and used up
    assert samples and all(spent + held <= limit for spent, held in samples)
    outcomes = {rid: result for report in settled.values() for rid, result in report.items()}
    assert sorted(outcomes) == admitted
    expected = 0
    for rid, (first, charged, retry) in outcomes.items():
        assert (first, retry) in {("settled", "already_settled"), ("released", "already_released")}, rid
        expected += charged
    usage = parent.usage("research")
    assert (usage.spent.nanos, usage.reserved.nanos) == (expected, 0)
    parent.close()


def test_a_ledger_is_usable_from_a_forked_child(pg_url: str) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("fork is POSIX")
    ledger = ledger_at(pg_url, [CAP])
    assert isinstance(ledger.reserve("parent", ALICE, USD("1"), 60), Reservation)
    fork = mp.get_context("fork")
    out = fork.Queue()
    child = fork.Process(target=_reserve_in_child, args=(ledger, out))
    child.start()
    assert out.get(timeout=30) == "ok"
    child.join(30)
    assert ledger.usage("cap").reserved == USD("3")  # the parent's pool still works too
    ledger.close()


def _reserve_in_child(ledger: Ledger, out: Any) -> None:
    result = ledger.reserve("child", ALICE, USD("2"), 60)
    out.put("ok" if isinstance(result, Reservation) else repr(result))
