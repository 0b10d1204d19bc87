"""Forecasts and advice in the admin API (``/budgets/{id}/forecast``, ``/advice``) and the CLI
(``spendgate budgets forecast|advise``), on a real SQLite ledger whose clock the test moves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from spendgate.budgets import Attributes, Budget, Window
from spendgate.cli import main
from spendgate.clock import ManualClock
from spendgate.gateway.admin import OPENAPI, create_admin_app
from spendgate.gateway.keys import open_keystore
from spendgate.ledger import Ledger, RequestRecord, open_ledger
from spendgate.money import Money

TOKEN = "admin-" + "x" * 26
START = datetime(2027, 3, 1, tzinfo=UTC)
NOW = START + timedelta(days=3, hours=12)
H = timedelta(hours=1)


def fill(url: str) -> None:
    """$2 an hour of team ml (alice) and $1 an hour of team web (bob) for three and a half days."""
    clock = ManualClock(START)
    ledger = open_ledger(url, clock=clock)
    ledger.put_budget(Budget("ml-daily", {"team": "ml"}, Money.usd(100), Window.calendar("day")))
    ledger.put_budget(Budget("per-user", {"user": "*"}, Money.usd(500), Window.calendar("month")))
    ledger.put_budget(Budget("team=ml/total", {"team": "ml"}, Money.usd(10_000)))
    for hour in range(84):
        if hour == 72:  # made this morning: earlier days' $48 would not have fitted it
            ledger.put_budget(Budget("small", {"team": "ml"}, Money.usd(30), Window.calendar("day")))
        for user, team, cost in (("alice", "ml", "2"), ("bob", "web", "1")):
            when = START + H * hour + timedelta(minutes=5)
            clock.set(when)
            attrs = Attributes.of(user=user, team=team)
            rid = f"{user}-{hour}"
            assert ledger.reserve(rid, attrs, Money.usd(cost), lease=60).admitted
            usage = {"input_tokens": 1000, "output_tokens": 100}
            ledger.settle(
                rid, Money.usd(cost), RequestRecord(rid, attrs, Money.usd(cost), when, when, usage=usage)
            )
    ledger.close()


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    fill(url)
    open_keystore(url).close()
    return url


class Api:
    def __init__(self, url: str) -> None:
        self.ledger: Ledger = open_ledger(url, clock=ManualClock(NOW), create=False)
        self.keys = open_keystore(url, cache_ttl=0)
        app = create_admin_app(keys=self.keys, ledger=self.ledger, admin_token=lambda: TOKEN)
        self.client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def api(db: str) -> Iterator[Api]:
    a = Api(db)
    yield a
    a.keys.close()
    a.ledger.close()


def error(response: object, status: int, code: str, words: str) -> None:
    assert getattr(response, "status_code", None) == status, getattr(response, "text", "")
    body = response.json()["error"]  # type: ignore[attr-defined]
    assert body["code"] == code and words in body["message"], body


def test_forecast_route(api: Api) -> None:
    r = api.client.get("/budgets/ml-daily/forecast")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["budget_id"] == "ml-daily" and body["now"] == "2027-03-04T12:00:00Z"
    assert body["spent"] == "24" and body["limit"] == "100" and body["method"] == "recent"
    assert body["rate_per_hour"] == "2" and body["expected"] == "48"
    assert body["runs_out_at"] is None and body["window_end"] == "2027-03-05T00:00:00Z"

    small = api.client.get("/budgets/small/forecast").json()
    assert small["runs_out_at"] == "2027-03-04T15:00:00Z" and small["runs_out_before_end"] is True

    alice = api.client.get("/budgets/per-user/forecast", params={"user": "alice"}).json()
    assert alice["instance"] == {"user": "alice"} and alice["spent"] == "168"
    total = api.client.get("/budgets/team=ml/total/forecast").json()  # an id with a slash
    assert total["window_end"] is None and total["horizon_end"] == "2027-04-03T12:00:00Z"

    error(api.client.get("/budgets/per-user/forecast"), 400, "invalid_field", "user")
    error(api.client.get("/budgets/nope/forecast"), 404, "not_found", "nope")
    error(api.client.get("/budgets/ml-daily/forecast", params={"usr": "x"}), 400, "invalid_field", "usr")


def test_a_kept_forecast_within_max_age(api: Api) -> None:
    """max_age: a forecast made at most that long ago, at the same limit, stands in for a fresh
    one (the dashboard's budgets page asks for 60 s); without it, every answer is fresh."""
    clock = api.ledger.clock
    assert isinstance(clock, ManualClock)
    first = api.client.get("/budgets/ml-daily/forecast", params={"max_age": 60}).json()
    assert first["now"] == "2027-03-04T12:00:00Z"
    clock.advance(30)
    again = api.client.get("/budgets/ml-daily/forecast", params={"max_age": 60}).json()
    assert again == first  # kept
    fresh = api.client.get("/budgets/ml-daily/forecast").json()
    assert fresh["now"] == "2027-03-04T12:00:30Z"
    assert api.client.get("/budgets/ml-daily/forecast", params={"max_age": 0}).json()["now"] == fresh["now"]
    clock.advance(61)
    later = api.client.get("/budgets/ml-daily/forecast", params={"max_age": 60}).json()
    assert later["now"] == "2027-03-04T12:01:31Z"  # too old: made again
    api.ledger.set_limit("ml-daily", Money.usd(20))
    paused = api.client.get("/budgets/ml-daily/forecast", params={"max_age": 3600}).json()
    assert paused["limit"] == "20" and paused["runs_out_at"] == paused["now"]  # another limit: fresh
    alice = api.client.get("/budgets/per-user/forecast", params={"user": "alice", "max_age": 60}).json()
    assert alice["instance"] == {"user": "alice"}
    for bad in ("-1", "3601", "1.5", "soon"):
        error(
            api.client.get("/budgets/ml-daily/forecast", params={"max_age": bad}),
            400,
            "invalid_field",
            "max_age",
        )
    error(api.client.get("/budgets/per-user/forecast", params={"max_age": 60}), 400, "invalid_field", "user")
    error(api.client.get("/budgets/nope/forecast", params={"max_age": 60}), 404, "not_found", "nope")


def test_the_budgets_list_with_its_forecasts(api: Api) -> None:
    """?forecasts=N: the first N rows carry the forecast /budgets/{id}/forecast gives (one
    request for a page of rows); the rest carry none; max_age as for one forecast."""
    plain = api.client.get("/budgets").json()["data"]
    assert all("forecast" not in row for row in plain)
    rows = api.client.get("/budgets", params={"forecasts": 3}).json()["data"]
    assert [r["id"] for r in rows] == [r["id"] for r in plain] and len(rows) > 3
    for row in rows[:3]:
        one = api.client.get(f"/budgets/{row['id']}/forecast", params=row["instance"]).json()
        assert row["forecast"] == one, row["id"]
    assert all("forecast" not in row for row in rows[3:])
    clock = api.ledger.clock
    assert isinstance(clock, ManualClock)
    clock.advance(10)
    kept = api.client.get("/budgets", params={"forecasts": 1, "max_age": 60}).json()["data"][0]["forecast"]
    assert kept == rows[0]["forecast"]  # made 10 s ago: kept
    fresh = api.client.get("/budgets", params={"forecasts": 1}).json()["data"][0]["forecast"]
    assert fresh["now"] == "2027-03-04T12:00:10Z"
    for name, bad in (("forecasts", "-1"), ("forecasts", "1001"), ("forecasts", "x"), ("max_age", "9999")):
        error(api.client.get("/budgets", params={name: bad}), 400, "invalid_field", name)
    error(api.client.get("/budgets", params={"with": "forecast"}), 400, "invalid_field", "with")


def test_advice_route(api: Api) -> None:
    body = api.client.get("/budgets/ml-daily/advice").json()
    assert body["source"] == "windows" and [w["spent"] for w in body["windows"]] == ["48", "48", "48"]
    assert body["p95"] == "48" and body["recommended"] == "58"  # 57.6 up to two figures
    assert body["explanation"].startswith("Over the last 3 daily windows, spend ranged $48.00–$48.00")
    assert api.client.get("/budgets/ml-daily/advice", params={"headroom": "0"}).json()["recommended"] == "48"
    error(
        api.client.get("/budgets/ml-daily/advice", params={"headroom": "-1"}),
        400,
        "invalid_field",
        "headroom",
    )
    monthly = api.client.get("/budgets/per-user/advice", params={"user": "bob"}).json()
    assert monthly["source"] == "forecast" and "too little history" in monthly["explanation"]
    error(api.client.get("/budgets/nope/advice"), 404, "not_found", "nope")


def test_openapi_documents_both() -> None:
    paths = OPENAPI["paths"]
    assert "get" in paths["/budgets/{id}/forecast"] and "get" in paths["/budgets/{id}/advice"]
    assert "Forecast" in OPENAPI["components"]["schemas"]


# -- the CLI --------------------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), obj={"clock": ManualClock(NOW)})
    return result.exit_code, result.stdout, result.stderr


def test_cli_forecast(db: str) -> None:
    code, out, err = cli("budgets", "forecast", "small", "--ledger", db)
    assert code == 0, err
    assert "runs out     2027-03-04 15:00Z" in out and "spent        $24.00 of $30.00" in out
    code, out, err = cli(
        "budgets", "forecast", "per-user", "--instance", "user=bob", "--ledger", db, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["spent"] == "84" and json.loads(out)["instance"] == {"user": "bob"}
    code, out, err = cli("budgets", "forecast", "--ledger", db)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("BUDGET") and any(line.startswith("per-user[user=alice]") for line in lines)
    assert any(line.startswith("small ") and "2027-03-04 15:00Z" in line for line in lines)
    code, out, err = cli("budgets", "forecast", "nope", "--ledger", db)
    assert code == 4 and "no budget 'nope'" in err
    code, out, err = cli("budgets", "forecast", "per-user", "--ledger", db)
    assert code == 4 and "instance" in err


def test_cli_advise_and_what_if(db: str) -> None:
    code, out, err = cli("budgets", "advise", "ml-daily", "--ledger", db)
    assert code == 0, err
    assert "Over the last 3 daily windows" in out and "Recommended limit: $58.00" in out
    code, out, err = cli(
        "budgets", "advise", "ml-daily", "--what-if-model", "gpt-4o", "--requests-per-day", "1000",
        "--input-tokens", "1000", "--output-tokens", "100", "--ledger", db, "--json",
    )  # fmt: skip
    assert code == 0, err
    body = json.loads(out)
    assert body["advice"][0]["budget_id"] == "ml-daily"
    scenario = body["what_if"]
    assert scenario["model"] == "gpt-4o" and scenario["days"] == "1" and scenario["window"] == "daily"
    assert scenario["per_window"] == scenario["per_day"]
    code, out, err = cli(
        "budgets", "advise", "--what-if-model", "gpt-4o-mini", "--traffic-of", "team=ml", "--ledger", db
    )
    assert code == 0, err
    assert out.startswith(
        "what-if: From team=ml over the last 3 days: 24.0 requests a day, 1,000 input and 100 output tokens"
    )
    code, out, err = cli("budgets", "advise", "--what-if-model", "no-such-model-x", "--requests-per-day", "1",
                         "--input-tokens", "1", "--output-tokens", "1", "--ledger", db)  # fmt: skip
    assert code == 3, err
    code, out, err = cli("budgets", "advise", "--requests-per-day", "5", "--ledger", db)
    assert code == 4 and "--what-if-model" in err
    code, out, err = cli("budgets", "advise", "--what-if-model", "gpt-4o", "--ledger", db)
    assert code == 4 and "--requests-per-day" in err
