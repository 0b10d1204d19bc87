"""``spendgate report`` on a real SQLite ledger, and the report it is built from."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from spendgate.budgets import Attributes, Budget
from spendgate.cli import main
from spendgate.clock import ManualClock
from spendgate.ledger import Ledger, RequestRecord, Reservation, open_ledger
from spendgate.money import Money
from spendgate.reports import CSV_COLUMNS, pivot
from spendgate.reports.span import parse_bucket, parse_instant
from spendgate.reports.table import bar, sparkline

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
SPAN = ["--since", "2026-03-09", "--until", "2026-03-13"]


def people() -> list[tuple[str, Attributes, str, dict[str, int]]]:
    """(when, who, cost, usage): three days, one of them (the 11th) empty, one day before."""
    alice = Attributes(user="alice", team="research", model="gpt-4o", tags=frozenset({"batch"}))
    bob = Attributes(user="bob", team="research", model="gpt-4o-mini", tags=frozenset({"batch", "eval"}))
    anon = Attributes(model="gpt-4o")
    return [
        ("0h", alice, "0.012345678", {"input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 1000}),
        ("1h", bob, "0.5", {"input_tokens": 40, "output_tokens": 2000, "reasoning_tokens": 1500}),
        ("1h", anon, "0.000000001", {"input_tokens": 1}),
        ("5h", alice, "1.25", {"input_tokens": 9000, "output_tokens": 100}),
        ("48h", bob, "0.1", {"input_tokens": 10, "output_tokens": 10}),
        ("49h", alice, "2", {"input_tokens": 5, "output_tokens": 7}),
    ]


@pytest.fixture
def ledger_url(tmp_path: Path) -> Iterator[str]:
    """A real SQLite ledger file with logged requests, then closed (the command opens it)."""
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    clock = ManualClock(T0)
    ledger = open_ledger(url, [Budget.from_config({"id": "g", "limit": "1000"})], clock=clock)
    for i, (at, attrs, cost, usage) in enumerate(people()):
        clock.set(T0 + int(at.removesuffix("h")) * HOUR)
        _log(ledger, clock, f"r{i}", attrs, cost, usage)
    clock.set(T0 + 50 * HOUR)
    assert isinstance(ledger.reserve("dead", Attributes(user="carol"), Money.usd("0.75"), 60), Reservation)
    clock.advance(120)
    ledger.expire_leases()  # charged its estimate, no tokens
    ledger.close()
    yield url


def _log(
    ledger: Ledger, clock: ManualClock, rid: str, attrs: Attributes, cost: str, usage: dict[str, int]
) -> None:
    assert isinstance(ledger.reserve(rid, attrs, Money.usd("5"), 60), Reservation)
    record = RequestRecord(rid, attrs, Money.usd(cost), clock.now(), clock.now(), usage=usage)
    ledger.settle(rid, Money.usd(cost), record)


def run(*args: str, clock: ManualClock | None = None) -> Result:
    obj = {"clock": clock} if clock is not None else None
    return CliRunner().invoke(main, ["report", *args], obj=obj, catch_exceptions=False)


def read(url: str) -> Ledger:
    return open_ledger(url, create=False)


def test_table_per_user_and_per_day(ledger_url: str) -> None:
    result = run("--ledger", ledger_url, *SPAN, "--by", "user")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Spend per day by user, 2026-03-09 00:00 to 2026-03-13 00:00 UTC" in out
    lines = out.splitlines()
    row = {line.split()[0]: line.split() for line in lines if line.strip()}
    # Costs line up with as many places as the finest amount needs: exact, never rounded.
    assert row["alice"][1:6] == ["$3.262345678", "70.7%", "3", "10,205", "407"]
    assert row["bob"][1:6] == ["$0.600000000", "13.0%", "2", "50", "2,010"]
    assert row["carol"][1:6] == ["$0.750000000", "16.2%", "1", "0", "0"]  # an expired lease: no tokens
    assert "(no user)" in out
    assert [line.split()[0:3] for line in lines if line.lstrip().startswith("2026-03-")] == [
        ["2026-03-09", "Mon", "$0.000000000"],  # empty buckets are shown
        ["2026-03-10", "Tue", "$1.762345679"],
        ["2026-03-11", "Wed", "$0.000000000"],
        ["2026-03-12", "Thu", "$2.850000000"],
    ]
    totals = [line.split() for line in lines if line.lstrip().startswith("total")]
    assert totals == [["total", "$4.612345679", "7", "10,256", "2,417"]] * 2
    assert row["alice"][6:] == ["▆", "█"]  # a sparkline over the four days (blank: nothing spent)
    assert row["2026-03-12"][-1] == "█" * 24  # the dearest day's bar is full width


def test_json_matches_the_ledger(ledger_url: str) -> None:
    result = run("--ledger", ledger_url, *SPAN, "--bucket", "hour", "--by", "tag", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    ledger = read(ledger_url)
    try:
        start, end = datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 13, tzinfo=UTC)
        points = ledger.usage_timeseries(start, end, HOUR, by="tag")
        records = ledger.query_requests(start, end)
    finally:
        ledger.close()
    assert (data["bucket"], data["bucket_seconds"], data["by"]) == ("hour", 3600, "tag")
    assert data["start"] == "2026-03-09T00:00:00Z" and data["end"] == "2026-03-13T00:00:00Z"
    assert [(p["start"], p["group"], p["cost"], p["requests"]) for p in data["points"]] == [
        (p.start.isoformat().replace("+00:00", "Z"), p.group, p.cost.decimal_str(), p.requests)
        for p in points
    ]
    # Grouped by tag a request counts once per tag; the total counts it once.
    assert data["total"]["cost"] == sum((r.cost for r in records), Money(0)).decimal_str() == "4.612345679"
    assert data["total"]["requests"] == len(records) == 7
    assert {g["group"]: g["cost"] for g in data["groups"]} == {
        "batch": "3.862345678",
        None: "0.750000001",
        "eval": "0.6",
    }


def test_csv_export_reads_back_exactly(ledger_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.csv"
    result = run("--ledger", ledger_url, *SPAN, "--by", "model", "--format", "csv", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.output == ""
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    ledger = read(ledger_url)
    try:
        start, end = datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 13, tzinfo=UTC)
        points = ledger.usage_timeseries(start, end, DAY, by="model")
        records = ledger.query_requests(start, end)
    finally:
        ledger.close()
    assert len(rows) == len(points) == 5
    for row, point in zip(rows, points, strict=True):
        assert datetime.fromisoformat(row["start"]) == point.start
        assert row["start"].endswith("Z") and datetime.fromisoformat(row["end"]) == point.start + DAY
        assert row["by"] == "model" and (row["group"] or None) == point.group
        assert Money.from_decimal(Decimal(row["cost_usd"])) == point.cost  # exact to the nano-USD
        assert (int(row["requests"]), int(row["input_tokens"]), int(row["output_tokens"])) == (
            point.requests,
            point.input_tokens,
            point.output_tokens,
        )
    assert sum(Decimal(r["cost_usd"]) for r in rows) == sum((r.cost for r in records), Money(0)).to_decimal()
    # Input tokens include cache reads (1000 of alice's 1200) once; output includes reasoning.
    assert sum(int(r["input_tokens"]) for r in rows) == 1200 + 40 + 1 + 9000 + 10 + 5


def test_relative_since_starts_at_its_bucket(ledger_url: str) -> None:
    clock = ManualClock(datetime(2026, 3, 12, 15, 30, tzinfo=UTC))
    result = run("--ledger", ledger_url, "--since", "2d", "--format", "json", clock=clock)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["start"], data["end"]) == ("2026-03-10T00:00:00Z", "2026-03-12T15:30:00Z")
    assert [p["start"] for p in data["points"]] == ["2026-03-10T00:00:00Z", "2026-03-12T00:00:00Z"]
    hourly = run("--ledger", ledger_url, "--since", "6h", "--bucket", "hour", "--format", "json", clock=clock)
    assert json.loads(hourly.output)["start"] == "2026-03-12T09:00:00Z"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since: cannot read 'yesterday'"),
        (["--since", "2026-03-12", "--until", "2026-03-10"], "must be after --since"),
        (["--since", "2000-01-01", "--bucket", "hour"], "at most 100000"),
    ],
)
def test_bad_input_exits_4(ledger_url: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["report", "--ledger", ledger_url, *args])
    assert result.exit_code == 4, result.output
    assert message in result.output


def test_a_missing_ledger_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    result = CliRunner().invoke(main, ["report", "--ledger", f"sqlite:///{path}"])
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert not path.exists()


def test_an_empty_span_says_so(ledger_url: str) -> None:
    result = run("--ledger", ledger_url, "--since", "2026-01-01", "--until", "2026-01-02")
    assert result.exit_code == 0
    assert "No requests logged in that span." in result.output


# -- the parts -------------------------------------------------------------------------------------


def test_pivot_fills_every_bucket_and_sums_exactly(ledger_url: str) -> None:
    ledger = read(ledger_url)
    try:
        start, end = T0, T0 + 3 * DAY
        report = pivot(ledger.usage_timeseries(start, end, HOUR, by="user"), start, end, HOUR, by="user")
    finally:
        ledger.close()
    assert len(report.buckets) == 72 and report.buckets[0] == T0
    assert report.groups == ("alice", "carol", "bob", None)  # dearest first, no group last
    assert [c.requests for c in report.row("alice")][:6] == [1, 0, 0, 0, 0, 1]
    assert report.total.cost == Money.usd("4.612345679")
    assert report.cell(T0 + HOUR, "bob").cost == Money.usd("0.5")
    with pytest.raises(ValueError, match="ungrouped"):
        pivot([], start, end, HOUR, by="tag")


def test_sparkline_and_bar() -> None:
    assert sparkline([0, 1, 2, 4, 8]) == " ▁▂▄█"
    assert sparkline([0, 0]) == "  "
    assert len(sparkline(list(range(100)), width=10)) == 10  # summed into columns
    assert bar(0, 10) == "" and bar(10, 10, width=4) == "████"
    assert bar(1, 10**9, width=4) == "▏"  # never hides a nonzero amount
    assert bar(5, 10, width=3) == "█▌"


def test_span_parsing() -> None:
    now = datetime(2026, 3, 12, 15, 30, tzinfo=UTC)
    assert parse_instant("7d", "--since", now) == now - 7 * DAY
    assert parse_instant("2026-03-01", "--since", now) == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_instant("2026-03-01T05:00+02:00", "--since", now) == datetime(2026, 3, 1, 3, tzinfo=UTC)
    assert parse_bucket("Hour") == HOUR
    with pytest.raises(ValueError, match="hour, day"):
        parse_bucket("week")


def test_csv_groups_a_spreadsheet_would_run_are_quoted(tmp_path: Path) -> None:
    """A user id (client-chosen) that a spreadsheet reads as a formula gets a leading quote;
    a number-like value stays as it is."""
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    clock = ManualClock(T0)
    ledger = open_ledger(url, clock=clock)
    for i, user in enumerate(['=HYPERLINK("http://x.example","x")', "@SUM(A1)", "-5", "+1-2", "plain"]):
        _log(ledger, clock, f"r{i}", Attributes(user=user), "0.01", {"input_tokens": 1})
    ledger.close()
    out = tmp_path / "report.csv"
    result = run("--ledger", url, *SPAN, "--by", "user", "--format", "csv", "--output", str(out))
    assert result.exit_code == 0, result.output
    with out.open(newline="", encoding="utf-8") as f:
        groups = sorted(row["group"] for row in csv.DictReader(f))
    assert groups == sorted(['\'=HYPERLINK("http://x.example","x")', "'@SUM(A1)", "-5", "'+1-2", "plain"])
