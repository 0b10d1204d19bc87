"""``HourlyHistory``: the hourly series kept between forecasts must answer exactly as a fresh
read (``forecast_budget`` without it), on real ledgers (a SQLite file, memory) and a manual clock."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spendgate.budgets import Attributes, Budget, Window
from spendgate.clock import ManualClock
from spendgate.forecast import LOOKBACK
from spendgate.forecasting import (
    ForecastCache,
    HourlyHistory,
    forecast_budget,
    forecast_budgets,
    hourly_spend,
    start_warming,
    warm_history,
)
from spendgate.ledger import Ledger, RequestRecord, UsagePoint, open_ledger
from spendgate.money import Money

START = datetime(2027, 3, 1, tzinfo=UTC)  # a Monday
H = timedelta(hours=1)
M = timedelta(minutes=1)


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Ledger, ManualClock]]:
    clock = ManualClock(START)
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"
    book = open_ledger(url, clock=clock)
    book.put_budget(Budget("ml", {"team": "ml"}, Money.usd(5000), Window.calendar("month")))
    book.put_budget(Budget("per-user", {"user": "*"}, Money.usd(900), Window.calendar("month")))
    yield book, clock
    book.close()


_ids = iter(range(10**9))


def log(
    book: Ledger,
    clock: ManualClock,
    started: datetime,
    cents: int,
    *,
    ended: datetime | None = None,
    **attrs: Any,
) -> None:
    """A request reserved at ``started`` and logged (settled) at ``ended`` (default: then)."""
    clock.set(started)
    rid = f"r{next(_ids)}"
    attributes = Attributes.of(**attrs)
    cost = Money(cents * 10_000_000)
    assert book.reserve(rid, attributes, cost, lease=6 * 3600).admitted
    if ended is not None:
        clock.set(ended)
    book.settle(rid, cost, RequestRecord(rid, attributes, cost, started, ended or started))


def fill(book: Ledger, clock: ManualClock, hours: int) -> None:
    """Two teams' requests every hour from START for ``hours``, varying by the hour of the day."""
    for hour in range(hours):
        when = START + H * hour + 7 * M
        log(book, clock, when, 100 + 40 * (hour % 24 in range(9, 18)) + hour % 7, team="ml", user="alice")
        log(book, clock, when + M, 30, team="web", user="bob")


def same(book: Ledger, history: HourlyHistory, now: datetime, budget: str = "ml", **kw: Any) -> None:
    """Through the history, the forecast (and the series) equals a fresh one exactly."""
    instance = kw.pop("instance", None)
    kept = forecast_budget(book, budget, instance, now=now, history=history, **kw).to_dict()
    fresh = forecast_budget(book, budget, instance, now=now, **kw).to_dict()
    assert kept == fresh
    # The series too: a clipped spike would hide a difference from the forecast.
    rule = book.get_budget(budget)
    selector = rule.concrete_selector(rule.instance_key(instance))
    lookback = kw.get("lookback", LOOKBACK)
    assert history.spend(book, selector, now, lookback) == hourly_spend(book, selector, now, lookback)


def test_incremental_reads_answer_as_a_fresh_read(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    fill(book, clock, 24 * 16)  # 16 days: the seasonal method
    history = HourlyHistory(refresh=timedelta(days=30))  # no full re-read in this test
    now = START + timedelta(days=16, minutes=5)
    clock.set(now)
    same(book, history, now)
    same(book, history, now, "per-user", instance={"user": "alice"})
    assert (history.full_reads, history.partial_reads) == (2, 2)  # (same() reads each twice)
    assert forecast_budget(book, "ml", now=now, history=history).method == "seasonal"

    # Requests in the current hour: not in the series yet (the hour is not over), then in it.
    log(book, clock, now + 10 * M, 50, team="ml", user="alice")
    now += 20 * M
    same(book, history, now)
    now += H
    clock.set(now)
    same(book, history, now)

    # Logged late: started in an hour that was over at the last read, settled after that read.
    read_at = now  # hh:25: the series it read ends at hh:00
    log(book, clock, hour_of(read_at) - 2 * M, 60, ended=read_at + 5 * M, team="ml", user="carol")
    now = read_at + 10 * M
    same(book, history, now)
    # Started in the hour before, settled 70 minutes later, in the next hour.
    log(book, clock, hour_of(now) - 5 * M, 40, ended=hour_of(now) + 65 * M, team="ml", user="carol")
    now = hour_of(now) + 70 * M
    clock.set(now)
    same(book, history, now)
    assert history.full_reads == 2  # every one since the first read only the last hours

    # The window moves on by two days with new requests in every hour.
    for hour in range(48):
        log(book, clock, hour_of(now) + H * hour + 11 * M, 80 + hour, team="ml", user="alice")
    now = hour_of(now) + timedelta(days=2, minutes=3)
    clock.set(now)
    same(book, history, now)
    same(book, history, now, "per-user", instance={"user": "alice"})
    assert history.full_reads == 2
    # forecast_budgets (the alerts' call) goes through it alike.
    fresh = [f.to_dict() for f in forecast_budgets(book, now=now)]
    assert [f.to_dict() for f in forecast_budgets(book, now=now, history=history)] == fresh


def hour_of(when: datetime) -> datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def test_hours_older_than_the_lookback_drop_out(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    fill(book, clock, 24 * 3)
    history = HourlyHistory(refresh=timedelta(days=30))
    lookback = timedelta(days=2)
    now = START + timedelta(days=3, minutes=1)
    first = history.spend(book, {"team": "ml"}, now, lookback)
    assert first.start == START + timedelta(days=1) and len(first.nanos) == 48
    assert first == hourly_spend(book, {"team": "ml"}, now, lookback)
    same(book, history, now, lookback=lookback)
    # A day later with nothing logged: the first kept day is out, the quiet hours are zeros.
    now += timedelta(days=1)
    later = history.spend(book, {"team": "ml"}, now, lookback)
    assert history.full_reads == 1
    assert later.start == START + timedelta(days=2) and later.end == hour_of(now)
    assert later.nanos[24:] == (0,) * 24
    assert later == hourly_spend(book, {"team": "ml"}, now, lookback)
    same(book, history, now, lookback=lookback)
    # Three days later nothing is left within the lookback: no history at all, as fresh.
    now += timedelta(days=3)
    assert history.spend(book, {"team": "ml"}, now, lookback) == hourly_spend(
        book, {"team": "ml"}, now, lookback
    )
    assert history.spend(book, {"team": "ml"}, now, lookback).nanos == ()
    assert history.full_reads == 2  # moved past the whole lookback: read afresh, once


def test_the_whole_lookback_is_read_again_after_refresh(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    fill(book, clock, 24 * 4)
    history = HourlyHistory(late=H, refresh=timedelta(hours=3))
    now = START + timedelta(days=4, minutes=2)
    same(book, history, now)
    # Logged five hours after it started (a lease beyond ``late``): not seen by a partial read...
    log(book, clock, now - 4 * H, 5000, ended=now + H, team="ml", user="dave")
    now += H + M
    kept = history.spend(book, {"team": "ml"}, now)
    fresh = hourly_spend(book, {"team": "ml"}, now)
    assert kept != fresh and (history.full_reads, history.partial_reads) == (1, 2)
    # ... until the refresh period is over: then the whole lookback is read and it is there.
    now = START + timedelta(days=4, hours=3, minutes=2)
    assert history.spend(book, {"team": "ml"}, now) == hourly_spend(book, {"team": "ml"}, now)
    assert (history.full_reads, history.partial_reads) == (2, 2)
    same(book, history, now)


def test_a_question_about_the_past_is_read_in_full_and_changes_nothing(
    ledger: tuple[Ledger, ManualClock],
) -> None:
    book, clock = ledger
    fill(book, clock, 24 * 3)
    history = HourlyHistory()
    now = START + timedelta(days=3)
    same(book, history, now)
    same(book, history, now - timedelta(days=1))  # an earlier hour
    same(book, history, now)
    assert history.full_reads == 1 and history.partial_reads == 3  # the past: neither


def test_a_lookback_of_part_hours_is_not_kept(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    fill(book, clock, 24 * 2)
    history = HourlyHistory()
    now = START + timedelta(days=2, minutes=30)
    odd = timedelta(days=1, minutes=30)
    assert history.spend(book, {"team": "ml"}, now, odd) == hourly_spend(book, {"team": "ml"}, now, odd)
    assert len(history) == 0


def test_the_history_is_bounded_least_recently_used_first(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    fill(book, clock, 24)
    history = HourlyHistory(size=2)
    now = START + timedelta(days=1, minutes=5)
    for selector in ({"team": "ml"}, {"team": "web"}, {"team": "ml"}, {"user": "bob"}):
        assert history.spend(book, selector, now) == hourly_spend(book, selector, now)
    assert len(history) == 2
    assert (history.full_reads, history.partial_reads) == (3, 1)
    history.spend(book, {"team": "ml"}, now)  # kept: used after team=web, which went
    assert history.full_reads == 3
    history.spend(book, {"team": "web"}, now)
    assert history.full_reads == 4


def test_each_ledger_has_its_own_hours(tmp_path: Path) -> None:
    clock = ManualClock(START)
    one, two = (
        open_ledger("memory://", clock=clock),
        open_ledger(f"sqlite:///{tmp_path / 'b.db'}", clock=clock),
    )
    fill(one, clock, 24)
    history = HourlyHistory()
    now = START + timedelta(days=1)
    assert history.spend(one, {"team": "ml"}, now).nanos
    assert history.spend(two, {"team": "ml"}, now).nanos == ()
    two.close()


class SlowLog:
    """A request log whose first read waits until the test lets it go; counts every read."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.reads: list[tuple[datetime, datetime]] = []

    def usage_timeseries(
        self, start: datetime, end: datetime, bucket: timedelta, *, by: str | None = None, **dims: str
    ) -> list[UsagePoint]:
        self.reads.append((start, end))
        if len(self.reads) == 1:
            assert self.gate.wait(10)
        return self.inner.usage_timeseries(start, end, bucket, by=by, **dims)


def test_two_threads_missing_at_once_read_the_lookback_once(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    fill(book, clock, 24 * 2)
    slow = SlowLog(book)
    history = HourlyHistory()
    now = START + timedelta(days=2, minutes=5)
    got: dict[str, Any] = {}

    def ask(name: str) -> None:
        got[name] = history.spend(slow, {"team": "ml"}, now)  # type: ignore[arg-type]

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    deadline = time.monotonic() + 10
    while not slow.reads:  # the first is in its read (holding the selector)
        assert time.monotonic() < deadline
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    # The second waits for the first's read (inside spend, at the selector's lock), or, were
    # there no lock, reads the whole lookback itself.
    source, _ = inspect.getsourcelines(HourlyHistory.spend)
    at_lock = HourlyHistory.spend.__code__.co_firstlineno + next(
        i for i, line in enumerate(source) if "with kept.lock" in line
    )
    while len(slow.reads) < 2:
        frame = _frames().get(second.ident or 0)
        if frame is not None and frame.f_code.co_name == "spend" and frame.f_lineno == at_lock:
            break
        assert time.monotonic() < deadline
    slow.gate.set()
    first.join(10)
    second.join(10)
    assert got["first"] == got["second"] == hourly_spend(book, {"team": "ml"}, now)
    assert history.full_reads == 1 and history.partial_reads == 1
    assert slow.reads[1][0] > slow.reads[0][0]  # the second read only the last hours


def _frames() -> Mapping[int, Any]:
    import sys

    return sys._current_frames()


def test_forecast_cache_reads_through_its_history(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    fill(book, clock, 24 * 2)
    shared = HourlyHistory()
    cache = ForecastCache(history=shared)
    now = START + timedelta(days=2, minutes=5)
    row = next(u for u in book.list_budgets() if u.budget_id == "ml")
    assert cache.get(book, row, now).to_dict() == forecast_budget(book, "ml", now=now).to_dict()
    later = now + timedelta(seconds=30)
    assert cache.get(book, row, later).now == now  # kept a minute
    assert forecast_budget(book, "ml", now=later, history=shared).to_dict() == (
        forecast_budget(book, "ml", now=later).to_dict()
    )
    assert (shared.full_reads, shared.partial_reads) == (1, 1)
    assert ForecastCache().history is not ForecastCache().history


def test_warm_history_reads_the_most_used_rows_first(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    fill(book, clock, 24 * 2)
    now = START + timedelta(days=2, minutes=5)
    clock.set(now)
    history = HourlyHistory()
    # The rows: per-user alice (6% of $900 used), bob (1.6%), ml (1.1% of $5000).
    assert warm_history(history, book, limit=2) == 2
    assert len(history) == 2 and history.full_reads == 2
    same(book, history, now, "per-user", instance={"user": "alice"})
    same(book, history, now, "per-user", instance={"user": "bob"})
    assert history.full_reads == 2  # the overview's first forecasts read only the last hours
    same(book, history, now)
    assert history.full_reads == 3  # not warmed: the third row
    thread = start_warming(history, book)
    thread.join(10)
    assert (history.full_reads, len(history)) == (3, 3)


def test_the_gateway_shares_one_history(tmp_path: Path) -> None:
    """The overview's cache, the forecast and advice routes (admin API and dashboard), the
    /metrics gauges and the alerts' forecaster of one gateway process read through one history."""
    from starlette.testclient import TestClient

    from spendgate.gateway.app import GatewayState
    from spendgate.gateway.config import parse_settings
    from spendgate.gateway.keys import open_keystore

    url = f"sqlite:///{tmp_path / 'gw.db'}"
    token = "admin-" + "t" * 26
    raw = {
        "ledger": url,
        "upstreams": {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "routes": [{"model": "gpt-*", "upstream": "fake"}],
        "budgets": [{"id": "ml", "selector": {"team": "ml"}, "limit": "5000", "window": "month"}],
        "alerts": {"enabled": False},
    }
    settings = parse_settings(raw, environ={"SPENDGATE_ADMIN_TOKEN": token})
    clock = ManualClock(START)
    book = open_ledger(url, clock=clock, budgets=settings.budgets)
    store = open_keystore(url)
    fill(book, clock, 24 * 2)
    clock.set(START + timedelta(days=2, minutes=5))
    state = GatewayState.build(settings, keys=store, ledger=book)
    shared = state.metrics.forecasts.history
    admin, ui = state._admin_args("/admin"), state._admin_args("/ui")
    assert admin is not None and ui is not None
    assert admin["forecasts"].history is shared and ui["forecasts"].history is shared
    app = state.admin_app()
    assert app is not None
    client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    first = client.get("/budgets/ml/forecast")
    assert first.status_code == 200, first.text
    assert first.json() == forecast_budget(book, "ml").to_dict()
    assert (shared.full_reads, shared.partial_reads) == (1, 0)
    assert client.get("/budgets/ml/advice").status_code == 200
    assert client.get("/overview").status_code == 200
    assert (shared.full_reads, shared.partial_reads) == (1, 2)
    store.close()
    book.close()
