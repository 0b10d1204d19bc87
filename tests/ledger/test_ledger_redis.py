"""The Redis ledger beyond the conformance suites: scripts by SHA, the generation marker and
rebuild, the drainer, Redis unreachable (through a proxy that a test cuts, never stopping the
shared server), and several processes on one budget.

Every test has a key prefix of its own in database 15, dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import redis

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.ledger import (
    LedgerMissingError,
    LedgerUnavailableError,
    Refusal,
    Reservation,
    open_ledger,
    resolve_url,
)
from spendgate.ledger.redis import RedisLedger
from spendgate.ledger.redis.url import parse_redis_url
from spendgate.money import Money
from spendgate.testing.servers import drop_redis_prefix, redis_test_url, with_query
from spendgate.testing.tcpproxy import TcpProxy

from . import workers
from .conftest import T0
from .workers import collect

USD = Money.usd
ALICE = Attributes(user="alice", team="research")
BOB = Attributes(user="bob", team="research")
REDIS = redis.Redis(db=15, decode_responses=True)


def budget(**config: Any) -> Budget:
    return Budget.from_config({"limit": "10", **config})


@pytest.fixture
def urls(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Redis ledger URLs of this test (a prefix each time asked, or the one given back)."""
    made: list[str] = []

    def make(**params: str) -> str:
        url = redis_test_url(f"sqlite:///{tmp_path / 'durable.db'}", "rt")
        url = with_query(url, **params) if params else url
        made.append(url)
        return url

    yield make
    for url in made:
        drop_redis_prefix(url)


@pytest.fixture
def ledgers() -> Iterator[list[RedisLedger]]:
    opened: list[RedisLedger] = []
    yield opened
    for ledger in opened:
        ledger.close()


def open_redis(
    url: str, opened: list[RedisLedger], budgets: list[Budget] | None = None, **options: Any
) -> RedisLedger:
    options.setdefault("clock", ManualClock(T0))
    ledger = open_ledger(url, budgets or [], **options)
    assert isinstance(ledger, RedisLedger)
    opened.append(ledger)
    return ledger


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll (bounded) for what a background thread does."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def spend(ledger: RedisLedger, request_id: str, attrs: Attributes, amount: str) -> None:
    result = ledger.reserve(request_id, attrs, USD(amount), 60)
    assert isinstance(result, Reservation), result
    assert ledger.settle(request_id, USD(amount)).status == "settled"


def prefix_keys(url: str) -> list[str]:
    prefix = parse_redis_url(url).prefix
    return list(REDIS.scan_iter(match=f"{prefix}:*", count=1000))


# -- URLs -------------------------------------------------------------------------------------


def test_url_needs_a_durable_store_and_resolves_it(tmp_path: Path) -> None:
    from spendgate.errors import ConfigError

    with pytest.raises(ConfigError, match="durable"):
        open_ledger("redis://127.0.0.1:6379/15?prefix=x")
    url = "redis://:pw@127.0.0.1:6379/15?prefix=p1&durable=sqlite%3A%2F%2F%2Fspend.db&timeout=0.5"
    resolved = resolve_url(url, tmp_path)
    config = parse_redis_url(resolved)
    assert config.durable == f"sqlite:///{tmp_path / 'spend.db'}"
    assert (config.prefix, config.timeout, config.on_reset) == ("p1", 0.5, "fail_closed")
    assert "pw" not in config.shown and config.connection.startswith("redis://:pw@127.0.0.1:6379/15")
    absolute = "redis://127.0.0.1/15?prefix=p&durable=sqlite:////abs/x.db"
    assert resolve_url(absolute, tmp_path) == absolute


# -- scripts ----------------------------------------------------------------------------------


def test_scripts_run_by_sha_and_load_again_after_script_flush(
    urls: Callable[..., str], ledgers: list[RedisLedger]
) -> None:
    ledger = open_redis(urls(), ledgers, [budget(id="b")])
    spend(ledger, "r1", ALICE, "1")
    sha = ledger._s.reserve.sha
    assert REDIS.script_exists(sha) == [True]
    REDIS.script_flush()  # as after a restart or a failover: every cached script is gone
    assert REDIS.script_exists(sha) == [False]
    spend(ledger, "r2", ALICE, "2")  # NOSCRIPT, loaded again, run
    assert REDIS.script_exists(sha) == [True]
    assert ledger.usage("b").spent == USD("3")


def test_amounts_beyond_exact_doubles_are_refused(
    urls: Callable[..., str], ledgers: list[RedisLedger]
) -> None:
    ledger = open_redis(urls(), ledgers, [budget(id="b")])
    with pytest.raises(ValueError, match="2\\^53"):
        ledger.reserve("big", ALICE, Money(2**53), 60)
    with pytest.raises(ValueError, match="2\\^53"):
        ledger.put_budget(budget(id="huge", limit="10000000"))


# -- the generation marker --------------------------------------------------------------------


def test_a_redis_that_lost_its_data_fails_closed_until_rebuilt(
    urls: Callable[..., str], ledgers: list[RedisLedger]
) -> None:
    url = urls()
    budgets = [budget(id="team", selector={"team": "research"}, limit="10", window="month", thresholds=[50]),
               budget(id="user", selector={"user": "*"}, limit="6", window="day")]  # fmt: skip
    ledger = open_redis(url, ledgers, budgets)
    spend(ledger, "a1", ALICE, "4")
    spend(ledger, "b1", BOB, "2")
    assert len(ledger.query_requests()) == 2  # drained into the durable log
    # Redis restarted without persistence (or flushed, or an empty replica took over).
    assert drop_redis_prefix(url) > 0
    started = time.monotonic()
    with pytest.raises(LedgerUnavailableError, match="lost its state") as lost:
        ledger.reserve("a2", ALICE, USD("1"), 60)
    assert time.monotonic() - started < 2
    assert "rebuild" in str(lost.value)
    with pytest.raises(LedgerUnavailableError):
        ledger.check_writable()
    with pytest.raises(LedgerUnavailableError):
        ledger.usage("team")
    # Another process opening now is refused the same way (it would admit against zeros).
    with pytest.raises(LedgerUnavailableError, match="lost its state"):
        open_redis(url, ledgers, budgets, create=False)
    events: list[Any] = []
    ledger.subscribe(events.append)
    report = ledger.rebuild()
    assert (report.requests, report.budget_lines) == (2, 3)
    assert ledger.usage("team").spent == USD("6")
    assert ledger.usage("user", {"user": "alice"}).spent == USD("4")
    assert ledger.usage("user", "user=bob").spent == USD("2")
    # Admits again, against the rebuilt spend.
    assert isinstance(ledger.reserve("a2", ALICE, USD("2"), 60), Reservation)
    refusal = ledger.reserve("a3", ALICE, USD("0.5"), 60)
    assert isinstance(refusal, Refusal) and refusal.budget_id == "user"
    assert isinstance(ledger.reserve("b2", BOB, USD("2"), 60), Reservation)
    refusal = ledger.reserve("b3", BOB, USD("0.01"), 60)
    assert isinstance(refusal, Refusal) and refusal.budget_id == "team"
    ledger.settle("a2", USD("2"))
    # 4 of 6 was 50% before the loss (marked by the rebuild); 6 of 6 crosses only what is new.
    assert [(e.budget_id, e.threshold) for e in events] == [("user", 80), ("user", 90), ("user", 100)]
    # A process holding the old generation adopts the new one by itself.
    other = open_redis(url, ledgers, budgets)
    assert other.usage("team").spent == USD("8")


def test_on_reset_rebuild_does_it_by_itself(urls: Callable[..., str], ledgers: list[RedisLedger]) -> None:
    url = urls(on_reset="rebuild")
    ledger = open_redis(url, ledgers, [budget(id="b", limit="5")])
    spend(ledger, "r1", ALICE, "3")
    ledger.query_requests()  # drained
    drop_redis_prefix(url)
    assert isinstance(ledger.reserve("r2", ALICE, USD("2"), 60), Reservation)
    assert isinstance(ledger.reserve("r3", ALICE, USD("0.01"), 60), Refusal)
    assert ledger.usage("b").spent == USD("3")


def test_another_generation_in_redis_fails_closed(
    urls: Callable[..., str], ledgers: list[RedisLedger]
) -> None:
    url = urls()
    ledger = open_redis(url, ledgers, [budget(id="b")])
    REDIS.set(f"{parse_redis_url(url).prefix}:generation", "from-another-ledger")
    with pytest.raises(LedgerUnavailableError, match="do not belong together"):
        ledger.reserve("r1", ALICE, USD("1"), 60)


def test_a_durable_store_that_does_not_know_redis(
    urls: Callable[..., str], ledgers: list[RedisLedger], tmp_path: Path
) -> None:
    url = urls()
    open_redis(url, ledgers, [budget(id="b")])
    elsewhere = with_query(url, durable=f"sqlite:///{tmp_path / 'other.db'}")
    stranger = open_redis(elsewhere, ledgers)  # opens (a gateway must start), admits nothing
    with pytest.raises(LedgerUnavailableError, match="knows nothing of"):
        stranger.reserve("r1", ALICE, USD("1"), 60)
    with pytest.raises(LedgerMissingError):
        open_redis(with_query(urls(), durable=f"sqlite:///{tmp_path / 'other.db'}"), ledgers, create=False)


# -- the drainer ------------------------------------------------------------------------------


def test_the_drainer_copies_ended_requests_and_loses_none_while_the_store_fails(
    urls: Callable[..., str], ledgers: list[RedisLedger], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = open_redis(urls(), ledgers, [budget(id="b", limit="100")], drain_interval=0.02)
    durable = ledger._durable
    assert durable is not None and ledger._archive is not None
    spend(ledger, "first", ALICE, "1")
    wait_for(lambda: len(durable.query_requests()) == 1)  # by the thread, not by a query
    real = ledger._archive.archive
    failures = 0

    def failing(entries: Any) -> int:
        nonlocal failures
        failures += 1
        raise LedgerUnavailableError("durable store down (test)")

    monkeypatch.setattr(durable, "archive", failing)
    for i in range(20):
        spend(ledger, f"r{i}", BOB, "1")
    assert ledger.release("first").status == "settled"
    wait_for(lambda: failures >= 2)
    assert len(durable.query_requests()) == 1  # nothing copied, nothing lost: waiting in Redis
    monkeypatch.setattr(durable, "archive", real)
    wait_for(lambda: len(durable.query_requests(limit=100)) == 21, seconds=40)  # backoff is bounded
    assert ledger.usage_by("user") == {"alice": USD("1"), "bob": USD("20")}
    assert REDIS.xlen(ledger.k_stream) == 0


# -- Redis unreachable ----------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A forwarder to the test Redis: ``cut()`` resets every connection and each new one (Redis
    down); ``stall()`` accepts connections and answers none (a network partition)."""
    with TcpProxy("127.0.0.1", 6379) as made:
        yield made


def proxied(proxy: TcpProxy, tmp_path: Path, timeout: str = "0.5", **params: str) -> str:
    url = redis_test_url(f"sqlite:///{tmp_path / 'durable.db'}", "rt")
    query = url.partition("?")[2]
    return with_query(f"redis://127.0.0.1:{proxy.port}/15?{query}", timeout=timeout, **params)


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_redis_unreachable_fails_closed_quickly_and_recovers(
    proxy: TcpProxy, tmp_path: Path, ledgers: list[RedisLedger], mode: Literal["refuse", "blackhole"]
) -> None:
    url = proxied(proxy, tmp_path)
    try:
        ledger = open_redis(url, ledgers, [budget(id="b")])
        spend(ledger, "before", ALICE, "1")
        if mode == "refuse":
            proxy.cut()
        else:
            proxy.stall()
        for request_id in ("r1", "r2"):
            started = time.monotonic()
            with pytest.raises(LedgerUnavailableError, match="unavailable"):
                ledger.reserve(request_id, ALICE, USD("1"), 60)
            assert time.monotonic() - started < 1.5  # refused at once; a partition: the 0.5 s timeout
        with pytest.raises(LedgerUnavailableError):
            asyncio.run(ledger.acheck_writable())
        proxy.restore()
        # Back by itself: no reopening.
        spend(ledger, "after", ALICE, "1")
        asyncio.run(ledger.acheck_writable())
        assert ledger.usage("b").spent == USD("2")
    finally:
        drop_redis_prefix(url)


def test_fail_open_admits_unrecorded(
    proxy: TcpProxy, tmp_path: Path, ledgers: list[RedisLedger], caplog: pytest.LogCaptureFixture
) -> None:
    url = proxied(proxy, tmp_path)
    try:
        ledger = open_redis(url, ledgers, [budget(id="b")], fail_open=True)
        proxy.cut()
        with caplog.at_level(logging.ERROR, logger="spendgate.ledger"):
            result = ledger.reserve("r1", ALICE, USD("1"), 60)
        assert isinstance(result, Reservation) and result.unrecorded and result.lines == ()
        assert "FAIL-OPEN" in caplog.text
        assert ledger.settle("r1", USD("1")).status == "unrecorded"
        with pytest.raises(LedgerUnavailableError):
            ledger.check_writable()  # whatever fail_open says
        proxy.restore()
        assert ledger.settle("r1", USD("1")).status == "unrecorded"  # known as unrecorded
        assert ledger.release("r1").status == "unrecorded"
        spend(ledger, "r2", ALICE, "1")
        assert ledger.usage("b").spent == USD("1")
    finally:
        drop_redis_prefix(url)


def test_opening_while_redis_is_down(proxy: TcpProxy, tmp_path: Path, ledgers: list[RedisLedger]) -> None:
    url = proxied(proxy, tmp_path)
    try:
        proxy.cut()
        with pytest.raises(LedgerUnavailableError):
            open_redis(url, ledgers, create=False)
        ledger = open_redis(url, ledgers, [budget(id="b", limit="3")])  # a gateway starts anyway
        with pytest.raises(LedgerUnavailableError):
            ledger.reserve("r1", ALICE, USD("1"), 60)
        proxy.restore()
        spend(ledger, "r1", ALICE, "3")
        assert isinstance(ledger.reserve("r2", ALICE, USD("1"), 60), Refusal)  # its budgets were set up
    finally:
        drop_redis_prefix(url)


# -- asyncio --------------------------------------------------------------------------------------


def test_cancelled_asyncio_calls(urls: Callable[..., str], ledgers: list[RedisLedger]) -> None:
    ledger = open_redis(urls(), ledgers, [budget(id="b", limit="5")])

    async def body() -> None:
        task = asyncio.ensure_future(ledger.areserve("held", ALICE, USD("1"), 60))
        await asyncio.sleep(0)  # started, not finished
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert isinstance(await ledger.areserve("kept", ALICE, USD("2"), 60), Reservation)
        settle = asyncio.ensure_future(ledger.asettle("kept", USD("2")))
        await asyncio.sleep(0)
        settle.cancel()  # the caller gives up: the settle goes on
        with contextlib.suppress(asyncio.CancelledError):
            await settle
        for _ in range(200):  # bounded: the shielded tasks finish on their own
            if not ledger._tasks:
                break
            await asyncio.sleep(0.01)

    asyncio.run(body())
    usage = ledger.usage("b")
    assert (usage.spent, usage.reserved) == (USD("2"), USD("0"))  # "held" released, "kept" settled
    assert ledger.open_reservations() == 0


# -- several processes ----------------------------------------------------------------------------

PROCESSES = 4
THREADS = 25
AFFORDABLE = 40
ESTIMATE = Money.usd("0.37").nanos
ctx = mp.get_context("spawn")


def test_processes_never_overshoot_and_use_it_up(
    urls: Callable[..., str], ledgers: list[RedisLedger]
) -> None:
    url = urls()
    limit = AFFORDABLE * ESTIMATE
    research = Budget("research", {"team": "research"}, Money(limit), thresholds=(50, 100))
    parent = open_redis(url, ledgers, [research], clock=None)
    go, settle_go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    children = [
        ctx.Process(
            target=workers.contend, args=(url, proc, THREADS, ESTIMATE, go, settle_go, out), daemon=True
        )
        for proc in range(PROCESSES)
    ]
    try:
        for child in children:
            child.start()
        deadline = time.monotonic() + 90
        collect(out, "ready", PROCESSES, deadline)
        violations: list[tuple[int, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                usage = parent.usage("research")
                if usage.spent.nanos + usage.reserved.nanos > limit:
                    violations.append((usage.spent.nanos, usage.reserved.nanos))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        go.set()
        reserved = collect(out, "reserved", PROCESSES, deadline)
        attempts = {rid: ok for report in reserved.values() for rid, ok in report.items()}
        assert len(attempts) == PROCESSES * THREADS
        admitted = sorted(rid for rid, ok in attempts.items() if ok)
        assert len(admitted) == AFFORDABLE  # used up, not one more
        assert parent.usage("research").reserved.nanos == limit
        settle_go.set()
        settled = collect(out, "settled", PROCESSES, deadline)
        stop.set()
        sampler.join(10)
        outcomes = {rid: result for report in settled.values() for rid, result in report.items()}
        assert sorted(outcomes) == admitted
        expected = 0
        for rid, (first, charged, retry) in outcomes.items():
            assert (first, retry) in {("settled", "already_settled"), ("released", "already_released")}, rid
            expected += charged
        usage = parent.usage("research")
        assert (usage.spent.nanos, usage.reserved.nanos) == (expected, 0)
        logged = parent.query_requests(limit=10_000, team="research")
        assert sorted(r.request_id for r in logged) == sorted(
            r for r, o in outcomes.items() if o[0] == "settled"
        )
        assert violations == []
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
