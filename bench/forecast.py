"""The budget forecast on synthetic request logs: predicted run-out against the truth.

    .venv/bin/python -m bench.forecast [--ledger memory|sqlite] [--seed 7] [--json]

Each scenario writes a request log into a real ledger (``memory://``, or a SQLite file in a
temporary directory) through reserve and settle, on a ``ManualClock`` set to each request's
instant: four weeks of history (February 2027) and then March 2027, the window of a monthly
budget ``team=research``. Requests of another team run beside them (the forecast must not count
them). Arrivals are Poisson per hour around the scenario's rate, each request's tokens uniform,
priced at $25 / $100 per 1M input / output tokens (about $0.09 a request): integer nano-USD.

The budget's limit is the team's spend over March up to day 26, 12:00 (rounded down to a
cent), so it truly runs out then. At several instants of March (``POINTS``, each before the
run-out) the forecast (``spendgate.forecasting.forecast_budget``) is asked when the budget runs
out; the table compares that to the truth: the error in hours and as a share of the time that
was left, and whether the truth lies between the earliest and latest run-out of the band.

Scenarios: ``flat`` ($0.50 an hour), ``growing`` (+15% of the first week's rate every week),
``weekday`` (office hours on weekdays, quiet nights and weekends), ``spike`` (flat, plus $60,
five days' spend, in one hour on March 2), ``new`` (flat, but the team's first request was three
days before March: the recent-rate fallback).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spendgate.budgets import Attributes, Budget, Window
from spendgate.clock import ManualClock
from spendgate.forecast import Forecast
from spendgate.forecasting import forecast_budget
from spendgate.ledger import Ledger, RequestRecord, open_ledger
from spendgate.money import NANO_PER_USD, Money

__all__ = ["POINTS", "SCENARIOS", "Row", "run", "run_scenario"]

HISTORY_START = datetime(2027, 2, 1, tzinfo=UTC)  # a Monday, four weeks before March
WINDOW_START = datetime(2027, 3, 1, tzinfo=UTC)  # a Monday
TRUE_END = datetime(2027, 3, 26, 12, tzinfo=UTC)  # the limit is the spend up to here
#: When the forecast is asked (all before the run-out), at different hours of the day.
POINTS = (
    datetime(2027, 3, 3, 12, tzinfo=UTC),
    datetime(2027, 3, 7, 9, tzinfo=UTC),
    datetime(2027, 3, 10, 18, tzinfo=UTC),
    datetime(2027, 3, 14, 6, tzinfo=UTC),
    datetime(2027, 3, 17, 12, tzinfo=UTC),
    datetime(2027, 3, 21, 15, tzinfo=UTC),
    datetime(2027, 3, 24, 9, tzinfo=UTC),
)
INPUT_NANOS = 25_000  # $25 per 1M input tokens, per token
OUTPUT_NANOS = 100_000  # $100 per 1M output tokens
MEAN_REQUEST_USD = (2000 * INPUT_NANOS + 400 * OUTPUT_NANOS) / NANO_PER_USD  # tokens below
_HOUR = timedelta(hours=1)
_WEEK = timedelta(days=7)

Rate = Callable[[datetime], float]  # USD per hour expected at an hour


def _flat(hour: datetime) -> float:
    return 0.5


def _growing(hour: datetime) -> float:
    return 0.35 * (1 + 0.15 * ((hour - HISTORY_START) / _WEEK))


def _weekday(hour: datetime) -> float:
    if hour.weekday() >= 5:
        return 0.1
    return 1.6 if 9 <= hour.hour < 18 else 0.15


SPIKE_AT = datetime(2027, 3, 2, 14, tzinfo=UTC)
SPIKE_USD = 60.0
NEW_START = datetime(2027, 2, 26, tzinfo=UTC)


@dataclass(frozen=True)
class Scenario:
    name: str
    rate: Rate
    first: datetime = HISTORY_START
    spike: bool = False


SCENARIOS = (
    Scenario("flat", _flat),
    Scenario("growing", _growing),
    Scenario("weekday", _weekday),
    Scenario("spike", _flat, spike=True),
    Scenario("new", _flat, first=NEW_START),
)


@dataclass(frozen=True)
class Row:
    scenario: str
    at: datetime
    method: str
    predicted: datetime | None
    earliest: datetime | None
    latest: datetime | None
    truth: datetime
    #: The straight line (spend so far in the window over the time elapsed), for comparison.
    straight: datetime | None = None

    @property
    def error_hours(self) -> float | None:
        return None if self.predicted is None else (self.predicted - self.truth) / _HOUR

    @property
    def error_share(self) -> float | None:
        """The error over the time that was left until the truth."""
        error = self.error_hours
        return None if error is None else error / ((self.truth - self.at) / _HOUR)

    @property
    def straight_share(self) -> float | None:
        if self.straight is None:
            return None
        return ((self.straight - self.truth) / _HOUR) / ((self.truth - self.at) / _HOUR)

    @property
    def in_band(self) -> bool:
        low = self.earliest or self.at
        return low <= self.truth and (self.latest is None or self.truth <= self.latest)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


@dataclass(frozen=True)
class _Request:
    at: datetime
    team: str
    input_tokens: int
    output_tokens: int

    @property
    def cost(self) -> Money:
        return Money(self.input_tokens * INPUT_NANOS + self.output_tokens * OUTPUT_NANOS)


def generate(scenario: Scenario, seed: int) -> list[_Request]:
    """Every request of the scenario, February and March, in time order."""
    rng = random.Random(f"{scenario.name}:{seed}")
    out: list[_Request] = []
    hour = HISTORY_START
    end = datetime(2027, 4, 1, tzinfo=UTC)
    while hour < end:
        teams = [("other", 0.1)]
        if hour >= scenario.first:
            teams.append(("research", scenario.rate(hour)))
        for team, usd in teams:
            for _ in range(_poisson(rng, usd / MEAN_REQUEST_USD)):
                at = hour + timedelta(seconds=rng.randrange(3600))
                out.append(_Request(at, team, rng.randint(500, 3500), rng.randint(100, 700)))
        if scenario.spike and hour == SPIKE_AT:
            each = _Request(SPIKE_AT + timedelta(minutes=30), "research", 2000, 400)
            out.extend([each] * round(SPIKE_USD / MEAN_REQUEST_USD))
        hour += _HOUR
    out.sort(key=lambda r: r.at)
    return out


def _truth(requests: list[_Request], limit: Money) -> datetime:
    spent = 0
    for request in requests:
        if request.team == "research" and request.at >= WINDOW_START:
            spent += request.cost.nanos
            if spent >= limit.nanos:
                return request.at
    raise AssertionError("the limit is never reached")  # pragma: no cover - set from the data


@contextmanager
def _ledger(kind: str, clock: ManualClock) -> Iterator[Ledger]:
    if kind == "memory":
        ledger = open_ledger("memory://", clock=clock)
        try:
            yield ledger
        finally:
            ledger.close()
        return
    with tempfile.TemporaryDirectory() as tmp:
        ledger = open_ledger(f"sqlite:///{Path(tmp) / 'forecast.db'}", clock=clock)
        try:
            yield ledger
        finally:
            ledger.close()


def run_scenario(scenario: Scenario, *, seed: int = 7, ledger: str = "memory") -> list[Row]:
    requests = generate(scenario, seed)
    spent = sum(r.cost.nanos for r in requests if r.team == "research" and WINDOW_START <= r.at < TRUE_END)
    limit = Money(spent - spent % (NANO_PER_USD // 100))
    truth = _truth(requests, limit)
    budget = Budget("research", {"team": "research"}, limit, Window.calendar("month"))
    clock = ManualClock(HISTORY_START)
    rows: list[Row] = []
    points = [p for p in POINTS if p < truth]
    with _ledger(ledger, clock) as book:
        pending = iter(requests)
        for number, point in enumerate(points):
            for request in pending:
                clock.set(request.at)
                if request.at >= WINDOW_START and not book.budgets():
                    book.put_budget(budget)  # made on March 1: February's spend is only in the log
                _spend(book, f"{scenario.name}-{number}-{request.at.timestamp()}-{id(request)}", request)
                if request.at >= point - timedelta(seconds=1):
                    break
            clock.set(point)
            result = forecast_budget(book, "research", now=point)
            rows.append(_row(scenario.name, result, truth))
    return rows


_ids = iter(range(10**12))


def _spend(ledger: Ledger, _hint: str, request: _Request) -> None:
    request_id = f"r{next(_ids)}"
    attributes = Attributes(team=request.team, model="synthetic")
    cost = request.cost
    reserved = ledger.reserve(request_id, attributes, cost, lease=60)
    if not reserved.admitted:  # pragma: no cover - every point is before the run-out
        return
    ledger.settle(
        request_id,
        cost,
        RequestRecord(
            request_id=request_id,
            attributes=attributes,
            cost=cost,
            started_at=request.at,
            finished_at=request.at,
            model="synthetic",
            usage={"input_tokens": request.input_tokens, "output_tokens": request.output_tokens},
        ),
    )


def _straight(result: Forecast) -> datetime | None:
    """Where spend so far, at its mean rate since the window began, meets the limit."""
    assert result.window_start is not None
    elapsed = result.now - result.window_start
    if not result.spent:
        return None
    return result.now + elapsed * ((result.limit.nanos - result.spent.nanos) / result.spent.nanos)


def _row(name: str, result: Forecast, truth: datetime) -> Row:
    return Row(
        scenario=name,
        at=result.now,
        method=result.method,
        predicted=result.runs_out_at,
        earliest=result.earliest_run_out,
        latest=result.latest_run_out,
        truth=truth,
        straight=_straight(result),
    )


def run(*, seed: int = 7, ledger: str = "memory") -> list[Row]:
    return [row for scenario in SCENARIOS for row in run_scenario(scenario, seed=seed, ledger=ledger)]


def _when(value: datetime | None) -> str:
    return value.strftime("%m-%d %H:%M") if value is not None else "never"


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | asked at | method | predicted run-out | true run-out | error (h) | error / time left "
        "| truth in band | straight line: error / time left |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        error = "-" if r.error_hours is None else f"{r.error_hours:+.1f}"
        share = "-" if r.error_share is None else f"{r.error_share:+.1%}"
        lines.append(
            f"| {r.scenario} | {_when(r.at)} | {r.method} | {_when(r.predicted)} | {_when(r.truth)} | "
            f"{error} | {share} | {'yes' if r.in_band else 'no'} | {_share(r.straight_share)} |"
        )
    shares = [abs(s) for r in rows if (s := r.error_share) is not None]
    covered = sum(r.in_band for r in rows)
    straight = sorted(abs(s) for r in rows if (s := r.straight_share) is not None)
    lines.append("")
    lines.append(
        f"{len(rows)} forecasts; largest |error| / time left {max(shares, default=0):.1%}, "
        f"median {sorted(shares)[len(shares) // 2] if shares else 0:.1%}; truth in band {covered}/{len(rows)}; "
        f"the straight line: largest {max(straight, default=0):.1%}, "
        f"median {straight[len(straight) // 2] if straight else 0:.1%}"
    )
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ledger", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="Print the rows as JSON.")
    args = parser.parse_args()
    rows = run(seed=args.seed, ledger=args.ledger)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "scenario": r.scenario,
                        "at": r.at.isoformat(),
                        "method": r.method,
                        "predicted": r.predicted.isoformat() if r.predicted else None,
                        "truth": r.truth.isoformat(),
                        "error_hours": r.error_hours,
                        "error_share": r.error_share,
                        "in_band": r.in_band,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    print(table(rows))


if __name__ == "__main__":
    main()
