"""The budget forecast: its math on hand-made series, its reads from real ledgers, and its error
bound on the synthetic logs of ``bench/forecast.py`` (seeded: the same numbers every run)."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spendgate.budgets import Attributes, Budget, Window
from spendgate.clock import ManualClock
from spendgate.forecast import HourlySpend, forecast, hour_floor
from spendgate.forecasting import forecast_budget, forecast_budgets, hourly_spend
from spendgate.ledger import Ledger, RequestRecord, open_ledger
from spendgate.money import Money

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.forecast import SCENARIOS, run, run_scenario  # noqa: E402

H = timedelta(hours=1)
MONDAY = datetime(2027, 3, 1, tzinfo=UTC)  # a Monday
USD = 1_000_000_000


def hourly(values: list[int], end: datetime) -> HourlySpend:
    return HourlySpend(end - H * len(values), tuple(values))


def test_flat_series_runs_out_where_the_line_crosses_the_limit() -> None:
    now = MONDAY + timedelta(days=10)
    history = hourly([USD] * (28 * 24), now)  # $1 an hour for four weeks
    result = forecast(
        history,
        spent=Money.usd(240),
        limit=Money.usd(500),
        now=now,
        window_start=MONDAY,
        window_end=MONDAY + timedelta(days=31),
    )
    assert result.method == "seasonal" and result.weeks == 4
    assert result.trend_per_week == Money(0) and result.spikes_clipped == 0
    assert result.runs_out_at == now + timedelta(hours=260)
    left = 21 * 24
    assert result.expected == Money.usd(240 + left)
    assert result.low <= result.expected <= result.high
    assert result.rate_per_hour == Money.usd(1) and result.recent_rate_per_hour == Money.usd(1)
    assert result.runs_out_before_end
    assert result.earliest_run_out is not None and result.earliest_run_out <= result.runs_out_at
    body = result.to_dict()
    assert body["expected"] == str(240 + left) and body["runs_out_at"] == "2027-03-21T20:00:00Z"


def test_weekday_pattern_is_a_shape_not_a_trend() -> None:
    def weekday(hour: datetime) -> int:
        return 10 * USD if hour.weekday() < 5 and 9 <= hour.hour < 17 else USD // 10

    now = MONDAY + timedelta(days=28, hours=9)  # a Monday morning: the quiet weekend just ended
    start = now - timedelta(days=28)
    history = HourlySpend(start, tuple(weekday(start + H * i) for i in range(28 * 24)))
    end = now + timedelta(days=3)
    result = forecast(
        history, spent=Money(0), limit=Money.usd(10**6), now=now, window_start=now, window_end=end
    )
    truth = sum(weekday(now + H * i) for i in range(72))
    assert result.trend_per_week == Money(0)
    # The weekday hours ahead are expected at their weekday level (the neighbours' smoothing
    # spreads an hour at each edge of the working day).
    assert abs(result.expected.nanos - truth) / truth < 0.1
    assert result.rate_per_hour.nanos > 5 * USD


def test_a_spike_is_clipped_and_not_repeated() -> None:
    now = MONDAY + timedelta(days=28)
    values = [USD] * (28 * 24)
    values[-100] = 500 * USD  # one hour four days ago
    result = forecast(
        hourly(values, now),
        spent=Money(0),
        limit=Money.usd(10**6),
        now=now,
        window_start=now,
        window_end=now + timedelta(days=7),
    )
    assert result.spikes_clipped == 1
    assert any("spike" in note for note in result.notes)
    assert abs(result.expected.nanos - 168 * USD) / (168 * USD) < 0.03


def test_growth_is_followed() -> None:
    now = MONDAY + timedelta(days=28)
    values = [USD + i * USD // 200 for i in range(28 * 24)]  # +$0.84 an hour every week
    result = forecast(
        hourly(values, now), spent=Money(0), limit=Money.usd(10**6), now=now,
        window_start=now, window_end=now + timedelta(days=7),
    )  # fmt: skip
    truth = sum(USD + i * USD // 200 for i in range(28 * 24, 35 * 24))
    assert result.trend_per_week > Money(0)
    assert abs(result.expected.nanos - truth) / truth < 0.02


def test_little_history_falls_back_to_the_recent_rate_and_says_so() -> None:
    now = MONDAY + timedelta(days=2, hours=5)
    result = forecast(
        hourly([2 * USD] * 30, now), spent=Money.usd(60), limit=Money.usd(100), now=now,
        window_start=MONDAY, window_end=MONDAY + timedelta(days=7),
    )  # fmt: skip
    assert result.method == "recent" and result.weeks == 0
    assert any("recent rate" in note for note in result.notes)
    assert any("wide band" in note for note in result.notes)
    assert result.runs_out_at == now + timedelta(hours=20)
    assert result.earliest_run_out is not None and result.earliest_run_out < result.runs_out_at
    assert result.latest_run_out is None or result.latest_run_out > result.runs_out_at


def test_no_history_no_forecast() -> None:
    now = MONDAY
    result = forecast(
        HourlySpend.empty(now), spent=Money(0), limit=Money.usd(10), now=now,
        window_start=now, window_end=now + timedelta(days=1),
    )  # fmt: skip
    assert result.method == "none" and result.runs_out_at is None
    assert result.expected == result.low == result.high == Money(0)
    assert "nothing to forecast" in result.notes[0]


def test_exhausted_runs_out_now() -> None:
    now = MONDAY + timedelta(hours=3)
    result = forecast(
        hourly([USD] * 3, now), spent=Money.usd(10), limit=Money.usd(10), now=now,
        window_start=MONDAY, window_end=MONDAY + timedelta(days=1),
    )  # fmt: skip
    assert result.exhausted and result.runs_out_at == result.earliest_run_out == now


def test_a_budget_that_never_resets_is_forecast_over_the_horizon() -> None:
    now = MONDAY + timedelta(minutes=30)
    result = forecast(
        hourly([USD] * (15 * 24), hour_floor(now)), spent=Money.usd(100), limit=Money.usd(1000),
        now=now, window_start=None, window_end=None, horizon=timedelta(days=10),
    )  # fmt: skip
    assert result.window_end is None and result.horizon_end == now + timedelta(days=10)
    assert result.runs_out_at is None and not result.runs_out_before_end
    assert result.expected == Money.usd(340)
    assert "never resets" in result.notes[0]


def test_hourly_spend_from_points() -> None:
    end = MONDAY + timedelta(hours=5, minutes=20)
    series = HourlySpend.from_points(
        [(MONDAY + timedelta(hours=1, minutes=5), Money(3)), (MONDAY + timedelta(hours=1, minutes=50), Money(4)),
         (MONDAY + timedelta(hours=3), Money(5))],
        end,
    )  # fmt: skip
    assert series.start == MONDAY + H and series.nanos == (7, 0, 5, 0)
    assert series.end == hour_floor(end)
    with pytest.raises(ValueError, match="on an hour"):
        HourlySpend(MONDAY + timedelta(minutes=1), ())


# -- from a ledger -------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Ledger, ManualClock]]:
    clock = ManualClock(MONDAY)
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'f.db'}"
    book = open_ledger(url, clock=clock)
    yield book, clock
    book.close()


def spend(book: Ledger, clock: ManualClock, when: datetime, amount: str, **attrs: object) -> None:
    clock.set(when)
    attributes = Attributes.of(**attrs)
    cost = Money.usd(amount)
    request_id = f"r-{when.timestamp()}-{amount}-{sorted(attrs.items())}"
    assert book.reserve(request_id, attributes, cost, lease=60).admitted
    book.settle(request_id, cost, RequestRecord(request_id, attributes, cost, when, when))


def test_forecast_budget_reads_the_instance_only(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    book.put_budget(Budget("per-user", {"team": "ml", "user": "*"}, Money.usd(200), Window.calendar("day")))
    book.put_budget(Budget("batch", {"tag": "batch"}, Money.usd(1000), Window.calendar("month")))
    for hour in range(48):
        when = MONDAY + H * hour + timedelta(minutes=10)
        spend(book, clock, when, "2", team="ml", user="alice", tags=["batch"])
        spend(book, clock, when + timedelta(minutes=1), "5", team="ml", user="bob")
        spend(book, clock, when + timedelta(minutes=2), "7", team="other", user="alice", tags=["x"])
    now = MONDAY + timedelta(days=2)
    clock.set(now)
    alice = forecast_budget(book, "per-user", {"user": "alice"})
    assert alice.budget_id == "per-user" and dict(alice.instance) == {"user": "alice"}
    assert alice.method == "recent" and alice.now == now
    assert alice.spent == Money(0)  # a new day: nothing spent in this window yet
    assert alice.rate_per_hour == Money.usd(2) and alice.recent_rate_per_hour == Money.usd(2)
    assert alice.expected == Money.usd(2 * 24)
    assert alice.runs_out_at is None  # $48 of $200 by midnight
    bob = forecast_budget(book, "per-user", "user=bob", now=now)
    assert bob.rate_per_hour == Money.usd(5)
    tagged = forecast_budget(book, "batch", now=now)
    assert tagged.rate_per_hour == Money.usd(2) and tagged.spent == Money.usd(96)
    assert hourly_spend(book, {"tag": "x"}, now).nanos == (7 * USD,) * 48
    with pytest.raises(KeyError):
        forecast_budget(book, "nope", now=now)
    with pytest.raises(ValueError, match="instance"):
        forecast_budget(book, "per-user", now=now)
    every = forecast_budgets(book, now=now)
    assert {(f.budget_id, tuple(f.instance.items())) for f in every} == {("batch", ())}  # no user spend today


# -- the error bound on synthetic logs (docs/forecasts.md) ----------------------------------------

#: The stated bound: every forecast's run-out within 15% of the time that was left until the
#: truth, half of them within 3%, and the truth inside the band at least 4 times in 5.
MAX_SHARE = 0.15
MEDIAN_SHARE = 0.03
BAND_SHARE = 0.8


def test_forecast_error_bound_on_synthetic_logs() -> None:
    rows = run(seed=7)
    assert len(rows) == 35
    shares = [r.error_share for r in rows]
    assert all(s is not None for s in shares), "every scenario runs out within its window"
    errors = [abs(s) for s in shares if s is not None]
    assert max(errors) <= MAX_SHARE, [(r.scenario, r.at, r.error_share) for r in rows]
    assert statistics.median(errors) <= MEDIAN_SHARE
    assert sum(r.in_band for r in rows) >= BAND_SHARE * len(rows)
    methods = {(r.scenario, r.method) for r in rows}
    assert ("new", "recent") in methods and ("new", "seasonal") in methods
    assert {m for s, m in methods if s != "new"} == {"seasonal"}


def test_sqlite_and_memory_ledgers_forecast_alike() -> None:
    spike = next(s for s in SCENARIOS if s.name == "spike")
    assert run_scenario(spike, seed=7, ledger="sqlite") == run_scenario(spike, seed=7, ledger="memory")
