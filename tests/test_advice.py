"""Budget advice: the percentile rule in plain words, too little history, what-ifs at catalog prices."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest

from spendgate.advice import (
    WindowSpend,
    advise_budget,
    nice_ceiling,
    percentile,
    recommend,
    traffic,
    what_if,
    window_days,
)
from spendgate.budgets import Attributes, Budget, Window
from spendgate.clock import ManualClock
from spendgate.cost import cost_of
from spendgate.ledger import Ledger, RequestRecord, open_ledger
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.usage import Usage

START = datetime(2027, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def test_percentile_is_exact_and_linear() -> None:
    assert percentile([10, 1, 2, 3, 4, 5, 6, 7, 8, 9], 95) == Fraction(955, 100)
    assert percentile([7], 95) == 7
    assert percentile([1, 3], 50) == 2
    with pytest.raises(ValueError):
        percentile([], 95)


def test_nice_ceiling_rounds_up_to_two_significant_figures() -> None:
    assert nice_ceiling(Money.usd("123.4")) == Money.usd(130)
    assert nice_ceiling(Money.usd("0.0123")) == Money.usd("0.013")
    assert nice_ceiling(Money.usd(120)) == Money.usd(120)
    assert nice_ceiling(Money(0)) == Money(0)


def windows(*amounts: str) -> list[WindowSpend]:
    return [WindowSpend(START + DAY * i, START + DAY * (i + 1), Money.usd(a)) for i, a in enumerate(amounts)]


def test_recommendation_from_past_windows_in_words() -> None:
    advice = recommend(
        windows("80", "95", "110", "90", "100", "120"), limit=Money.usd(200), window_label="monthly"
    )
    assert advice.source == "windows"
    assert (advice.lowest, advice.highest) == (Money.usd(80), Money.usd(120))
    assert advice.p95 == Money.usd("117.5")  # 0.75 of the way from 110 to 120
    assert advice.with_headroom == Money.usd(141)
    assert advice.recommended == Money.usd(150)
    assert advice.explanation.startswith(
        "Over the last 6 monthly windows, spend ranged $80.00–$120.00; 95th percentile $117.50; "
        "with 20% headroom: $141.00. Recommended limit: $150.00 (now $200.00)."
    )
    assert advice.binding == 0
    body = advice.to_dict()
    assert body["recommended"] == "150" and len(body["windows"]) == 6


def test_a_binding_limit_is_pointed_out() -> None:
    advice = recommend(
        windows("99", "100", "60"), limit=Money.usd(100), window_label="daily", headroom_percent=0
    )
    assert advice.binding == 2 and "binding" in advice.explanation
    assert advice.with_headroom == advice.p95
    assert "passed the current limit" not in advice.explanation
    newer = recommend(windows("120", "130", "90"), limit=Money.usd(100), window_label="daily")
    assert newer.binding == 0 and "In 2 of them spend passed the current limit" in newer.explanation


def test_too_little_history_says_so() -> None:
    advice = recommend(
        windows("80"), limit=Money.usd(100), window_label="monthly", coverage="it keeps 30 days"
    )
    assert advice.source == "none" and advice.recommended is None
    assert "Only 1 complete monthly window in the request log (it keeps 30 days)" in advice.explanation
    assert "too little history" in advice.explanation


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Ledger, ManualClock]]:
    clock = ManualClock(START)
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'a.db'}"
    book = open_ledger(url, clock=clock)
    yield book, clock
    book.close()


def spend(book: Ledger, clock: ManualClock, when: datetime, cost: Money, **attrs: object) -> None:
    clock.set(when)
    attributes = Attributes.of(**attrs)
    request_id = f"r-{when.timestamp()}-{sorted(attrs.items())}"
    assert book.reserve(request_id, attributes, cost, lease=60).admitted
    book.settle(
        request_id,
        cost,
        RequestRecord(
            request_id, attributes, cost, when, when, usage={"input_tokens": 1000, "output_tokens": 200}
        ),
    )


def test_advise_budget_reads_past_windows(ledger: tuple[Ledger, ManualClock]) -> None:
    book, clock = ledger
    book.put_budget(Budget("daily", {"team": "ml"}, Money.usd(50), Window.calendar("day")))
    for day in range(10):  # $10, $11, ... $19 a day, in 4 requests from 06:00
        for i in range(4):
            when = START + DAY * day + timedelta(hours=6 + i)
            spend(book, clock, when, Money((10 + day) * 10**9 // 4), team="ml")
        spend(book, clock, START + DAY * day + timedelta(hours=7), Money.usd(1), team="other")
    now = START + DAY * 10 + timedelta(hours=3)
    clock.set(now)
    advice = advise_budget(book, "daily")
    # The first day began before the first logged request (06:00): not a whole window of it.
    assert advice.source == "windows" and len(advice.windows) == 9
    assert [w.spent for w in advice.windows] == [Money.usd(10 + d) for d in range(1, 10)]
    assert advice.p95 == Money.usd("18.6")  # 18 + 0.6 of the way to 19
    assert advice.with_headroom == Money.usd("22.32")
    assert advice.recommended == Money.usd(23)
    assert advice.forecast is not None and advice.forecast.budget_id == "daily"
    assert advice.budget_id == "daily" and advice.label is not None
    assert "Over the last 9 daily windows, spend ranged $11.00–$19.00" in advice.explanation

    book.put_budget(Budget("monthly", {"team": "ml"}, Money.usd(500), Window.calendar("month")))
    few = advise_budget(book, "monthly", headroom_percent=10)
    assert few.source == "forecast" and few.recommended is not None
    assert "Only 0 complete monthly windows" in few.explanation and "forecast" in few.explanation

    seen = traffic(book, {"team": "ml"}, now, days=7)
    assert seen.requests == 28 and seen.input_per_request == 1000 and seen.output_per_request == 200
    assert seen.requests_per_day == 4
    with pytest.raises(KeyError):
        advise_budget(book, "nope")


def test_what_if_prices_with_the_catalog() -> None:
    price = Catalog.default().price("gpt-4o")
    result = what_if(price, requests_per_day=2000, input_tokens=1500, output_tokens=300)
    one = cost_of(Usage(input_tokens=1500, output_tokens=300), price).total
    assert result.per_request == one
    assert result.per_day == one * 2000 and result.per_window == one * 60_000
    assert result.with_headroom.nanos == -(-one.nanos * 60_000 * 120 // 100)
    assert result.recommended >= result.with_headroom
    assert result.explanation.startswith("gpt-4o: 1,500 input + 300 output tokens cost")
    assert result.to_dict()["per_window"] == (one * 60_000).decimal_str()

    budget = Budget("m", {}, Money.usd(10), Window.calendar("month"))
    days, label = window_days(budget, datetime(2027, 2, 10, tzinfo=UTC))
    assert (days, label) == (Fraction(28), "monthly")
    assert window_days(None, START) == (Fraction(30), "30-day")
    with pytest.raises(ValueError):
        what_if(price, requests_per_day=-1, input_tokens=1, output_tokens=1)
