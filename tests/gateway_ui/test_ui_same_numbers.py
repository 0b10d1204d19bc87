"""The dashboard shows the same numbers as the CLI: ``/ui/api/...`` (logged in) against
``spendgate ...`` (its JSON or CSV, through click's CliRunner) over one SQLite ledger file.

The data is seeded relative to the real "now" (a key's expiry is checked against it), and the
UI's ledger runs on a ``ManualClock`` set to it; every command gets that clock in ``obj``
(``cli_admin.command_clock``), so both sides read the same instant. Money is compared as the
exact decimal strings both print, never floats.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.routing import Mount, Router
from starlette.testclient import TestClient

from spendgate.alerts import AlertDispatcher, LogDestination
from spendgate.alerts.destinations import Sent
from spendgate.alerts.events import ALERT_KINDS, AlertEvent, AlertKind
from spendgate.budgets import Attributes, Budget, Window
from spendgate.cli import main
from spendgate.clock import ManualClock
from spendgate.gateway.admin import create_admin_app
from spendgate.gateway.keys import KeyStore, open_keystore
from spendgate.gateway.ui import LoginLimiter, Sessions, create_ui_app
from spendgate.gateway.views import key_budget
from spendgate.ledger import Ledger, RequestRecord, open_ledger
from spendgate.limits import Limit
from spendgate.money import Money

TOKEN = "admin-" + "n" * 26
FORM = {"content-type": "application/x-www-form-urlencoded"}
MONEY_FIELDS = ("spent", "reserved", "limit", "available")


@dataclass(slots=True)
class Pager:
    """An alert destination that is down: its deliveries stay pending with an error."""

    name: str = "pager"
    kinds: frozenset[AlertKind] = frozenset(ALERT_KINDS)
    budgets: frozenset[str] | None = None

    def send(self, event: AlertEvent, now: datetime) -> Sent:
        return Sent(False, "HTTP 503: try later")


class World:
    """One SQLite ledger with budgets, limits, keys, requests and alerts; the dashboard over it
    (logged in) and the CLI on the same file."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'spend.db'}"
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.clock = ManualClock(self.now)
        self.ledger: Ledger = open_ledger(self.url, clock=self.clock)
        self.keys: KeyStore = open_keystore(self.url, cache_ttl=0)
        args: dict[str, Any] = {"keys": self.keys, "ledger": self.ledger, "admin_token": lambda: TOKEN}
        ui = create_ui_app(**args, sessions=Sessions(), limiter=LoginLimiter(), clock=self.clock)
        app = Router(routes=[Mount("/ui", app=ui), Mount("/admin", app=create_admin_app(**args))])
        self.client = TestClient(app, follow_redirects=False)
        answer = self.client.post("/ui/login", content=f"token={TOKEN}", headers=FORM)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/", answer.text
        self.midnight = self.now.replace(hour=0, minute=0, second=0)
        self.month = self.midnight.replace(day=1)
        self.seq = 0
        self.key_id = ""

    def today(self, share: float) -> datetime:
        """An instant of today so far (``share`` of the way from midnight to now)."""
        return self.midnight + (self.now - self.midnight) * share

    def spend(self, when: datetime, cost: str, tokens: tuple[int, int] = (0, 0), **attrs: object) -> None:
        """A settled request costing ``cost`` at ``when``; the clock goes back to now."""
        self.clock.set(when)
        self.seq += 1
        rid = f"req-{self.seq:03}"
        attributes = Attributes.of(**attrs)
        amount = Money.usd(cost)
        assert self.ledger.reserve(rid, attributes, amount, lease=3600).admitted
        usage = {"input_tokens": tokens[0], "output_tokens": tokens[1]}
        record = RequestRecord(rid, attributes, amount, when, when, model=attributes.model, usage=usage)
        self.ledger.settle(rid, amount, record)
        self.clock.set(self.now)

    def ui(self, path: str, **params: str) -> Any:
        answer = self.client.get("/ui/api" + path, params=params)
        assert answer.status_code == 200, (path, answer.text)
        return answer.json()

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(main, [*args, "--ledger", self.url], obj={"clock": self.clock})
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.stdout

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args))

    def close(self) -> None:
        self.client.close()
        self.keys.close()
        self.ledger.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("same-numbers"))
    ledger, now = w.ledger, w.now
    month = Window.calendar("month")
    ledger.put_budget(Budget("team-ml", {"team": "ml"}, Money.usd("10"), month, name="ML team"))
    ledger.put_budget(Budget("team-web", {"team": "web"}, Money.usd("250.5"), Window.calendar("week")))
    ledger.put_budget(Budget("per-user", {"user": "*"}, Money.usd("5"), Window.calendar("day")))
    ledger.put_budget(Budget("lifetime", {}, Money.usd("1000"), Window.none()))
    ledger.put_limit(
        Limit.from_config({"id": "user-rpd", "selector": {"user": "*"}, "requests": 100, "per": "1d"})
    )
    ledger.put_limit(
        Limit.from_config({"id": "ml-usd", "selector": {"team": "ml"}, "usd": "50", "per": "1d"})
    )
    key, _ = w.keys.create(user="carol", team="web", tags=["prod"], name="carol-laptop")
    w.keys.create(user="dave", expires_at=now + timedelta(days=30))
    off, _ = w.keys.create(user="erin", models=["gpt-4o*"])
    w.keys.disable(off.id)
    ledger.put_budget(key_budget(key.id, "20", "day"))
    w.key_id = key.id

    alerts = AlertDispatcher(ledger, [LogDestination("log"), Pager()])
    alerts.listen()
    alerts.step()  # the destinations registered: the crossings below reach both
    # days back (the week and the month may or may not hold them: both sides read the same)
    w.spend(
        now - timedelta(days=3, hours=2),
        "2.5",
        (1200, 300),
        user="alice",
        team="ml",
        model="gpt-4o",
        tags=["batch"],
    )
    w.spend(
        now - timedelta(days=2, hours=5),
        "0.75",
        (800, 90),
        user="bob",
        team="ml",
        model="gpt-4o-mini",
        tags=["batch", "eval"],
    )
    w.spend(
        now - timedelta(hours=30),
        "1.125",
        (400, 40),
        user="carol",
        team="web",
        model="claude-sonnet-4-5",
        key=key.id,
    )
    # today: in every window and in the rate limits' last day
    w.spend(w.today(0.25), "0.000125", (5, 1), user="alice", team="ml", model="gpt-4o", tags=["eval"])
    w.spend(
        w.today(0.5), "3.2", (9000, 700), user="carol", team="web", model="gpt-4o", key=key.id, tags=["prod"]
    )
    w.spend(w.today(0.75), "1.05", (3000, 200), user="alice", team="ml", model="gpt-4o-mini")
    w.spend(w.today(0.8), "0.333333333", (100, 10), user="bob", team="ml", model="gpt-4o", tags=["eval"])
    # one request in flight: reserved, not spent
    assert ledger.reserve(
        "open-1", Attributes.of(user="bob", team="ml"), Money.usd("0.4"), lease=3600
    ).admitted
    alerts.step()
    yield w
    w.close()


# -- helpers ----------------------------------------------------------------------------------------


def decimal(text: str) -> Decimal:
    assert isinstance(text, str), text  # money is a decimal string on both sides, never a float
    return Decimal(text)


def instance_args(instance: dict[str, str]) -> list[str]:
    return [arg for dim, value in instance.items() for arg in ("--instance", f"{dim}={value}")]


def same_rows(mine: list[dict[str, Any]], theirs: list[dict[str, Any]], what: str) -> None:
    assert len(mine) == len(theirs), what
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a.keys() == b.keys(), (what, i)
        for field in a:
            assert a[field] == b[field], (what, i, field, a[field], b[field])


# -- the views ------------------------------------------------------------------------------------


def test_the_seed_is_what_the_views_show(world: World) -> None:
    """The data reaches both sides (a test of equal zeros would prove nothing)."""
    rows = world.ui("/budgets")["data"]
    assert {(r["id"], tuple(r["instance"].items())) for r in rows} >= {
        ("team-ml", ()),
        ("per-user", (("user", "alice"),)),
        ("per-user", (("user", "carol"),)),
        ("per-user", (("user", "bob"),)),
        ("lifetime", ()),
        (f"key:{world.key_id}", ()),
    }
    carol = next(r for r in rows if r["instance"] == {"user": "carol"})
    assert carol["spent"] == "3.2" and carol["percent"] == 64
    assert next(r for r in rows if r["id"] == "lifetime")["spent"] == "8.958458333"
    assert len(world.ui("/alerts")["data"]) >= 2


def test_budgets_list(world: World) -> None:
    """``budgets list --json`` against /budgets (the budgets page and the overview's rows)."""
    ui = world.ui("/budgets")["data"]
    cli = world.cli_json("budgets", "list", "--json")
    same_rows(cli, ui, "budgets")
    for row in ui:
        spent, reserved, limit, available = (decimal(row[f]) for f in MONEY_FIELDS)
        assert available == max(limit - spent - reserved, Decimal(0)), row
    # the table people read: the same amounts in its columns
    table = world.cli("budgets", "list").splitlines()[1:]
    assert len(table) == len(ui)
    for line, row in zip(table, ui, strict=True):
        cells = line.split()
        assert cells[-5:-1] == [row["spent"], row["reserved"], row["limit"], f"{row['percent']}%"], line


def test_budget_forecasts(world: World) -> None:
    """``budgets forecast ID [--instance ...] --json`` against /budgets/ID/forecast?dim=value for
    every row of the budgets page, and ``budgets forecast --json`` (all of them) against the same."""
    rows = world.ui("/budgets")["data"]
    everything = world.cli_json("budgets", "forecast", "--json")
    assert len(everything) == len(rows)
    for row, listed in zip(rows, everything, strict=True):
        ui = world.ui(f"/budgets/{row['id']}/forecast", **row["instance"])
        one = world.cli_json("budgets", "forecast", row["id"], *instance_args(row["instance"]), "--json")
        assert one.keys() == ui.keys()
        for field in ui:
            assert one[field] == ui[field], (row["id"], row["instance"], field, one[field], ui[field])
            assert listed[field] == ui[field], (row["id"], row["instance"], field)
        assert ui["spent"] == row["spent"] and ui["limit"] == row["limit"], row["id"]


def test_budget_advice(world: World) -> None:
    """``budgets advise ID --json`` against /budgets/ID/advice."""
    for row in world.ui("/budgets")["data"]:
        ui = world.ui(f"/budgets/{row['id']}/advice", **row["instance"])
        cli = world.cli_json("budgets", "advise", row["id"], *instance_args(row["instance"]), "--json")
        assert cli["advice"] == [ui], row["id"]


def test_limits_list(world: World) -> None:
    """``limits list --json`` against /limits (the budgets page's rate limits)."""
    ui = world.ui("/limits")["data"]
    cli = world.cli_json("limits", "list", "--json")
    same_rows(cli, ui, "limits")
    used = {(v["id"], tuple(u["instance"].items())): u["used"] for v in ui for u in v["instances"]}
    assert used[("user-rpd", (("user", "alice"),))] == "2"
    assert used[("ml-usd", ())] == "1.783458333"  # today's ML requests, the one in flight too
    for view in cli:
        for use in view["instances"]:
            assert decimal(use["used"]) + decimal(use["remaining"]) == decimal(use["amount"]), use


def test_keys_list(world: World) -> None:
    """``keys list --json`` against /keys (with each key's own budget)."""
    ui = world.ui("/keys")["data"]
    cli = world.cli_json("keys", "list", "--json")
    same_rows(cli, ui, "keys")
    budgets = [k["budget"] for k in ui if k["budget"]]
    assert len(budgets) == 1 and budgets[0]["spent"] == "3.2"
    assert sorted(k["state"] for k in ui) == ["active", "active", "disabled"]


@pytest.mark.parametrize("by", ["user", "team", "model", "key", "tag"])
@pytest.mark.parametrize("until", [False, True])
def test_usage_by(world: World, by: str, until: bool) -> None:
    """``usage --by X --since ISO [--until ISO] --json`` against /usage?by=X&since=ISO[&until=ISO]
    (and the text's total line)."""
    span = {"since": (world.now - timedelta(days=2, hours=12)).isoformat()}
    if until:
        span["until"] = world.today(0.6).isoformat()
    ui = world.ui("/usage", by=by, **span)
    args = [arg for name, value in span.items() for arg in (f"--{name}", value)]
    cli = world.cli_json("usage", "--by", by, *args, "--json")
    assert cli["by"] == ui["by"] == by
    assert [(r[by], r["cost"]) for r in cli["usage"]] == [(r["value"], r["cost"]) for r in ui["data"]]
    assert ui["data"], by
    assert sum((decimal(r["cost"]) for r in ui["data"]), Decimal(0)) == decimal(ui["total"])
    last = world.cli("usage", "--by", by, *args).splitlines()[-1].split()
    assert last == ["total", ui["total"]]


# The usage page's own queries (its defaults: the last 7 days by day), grouped and filtered.
SERIES = [
    ("7d", "day", None, {}),
    ("7d", "day", "model", {}),
    ("7d", "day", "user", {"team": "ml"}),
    ("48h", "hour", "team", {}),
    ("7d", "day", "tag", {}),
    ("24h", "hour", None, {"tag": "eval"}),
]


@pytest.mark.parametrize(("since", "bucket", "by", "filters"), SERIES)
def test_report_against_the_usage_series(
    world: World, since: str, bucket: str, by: str | None, filters: dict[str, str]
) -> None:
    """``report --format json|csv`` against /usage/timeseries for the same span, bucket,
    grouping and filters: every point, and the report's totals against the points' sums."""
    params = {"start": since, "bucket": bucket, **({"by": by} if by else {}), **filters}
    ui = world.ui("/usage/timeseries", **params)
    assert not ui["has_more"]
    args = ["report", "--since", since, "--bucket", bucket, *(["--by", by] if by else [])]
    args += [arg for dim, value in filters.items() for arg in (f"--{dim}", value)]
    report = world.cli_json(*args, "--format", "json")
    for field in ("start", "end", "bucket", "bucket_seconds", "by", "filters"):
        assert report[field] == ui[field], field
    same_rows(report["points"], ui["data"], "points")
    assert ui["data"], params
    sums: dict[str | None, list[Decimal]] = {}
    for p in ui["data"]:
        got = sums.setdefault(p["group"], [Decimal(0)] * 4)
        for i, field in enumerate(("cost", "requests", "input_tokens", "output_tokens")):
            got[i] += decimal(p[field]) if field == "cost" else p[field]
    if by is not None:
        groups = {
            g["group"]: [decimal(g["cost"]), g["requests"], g["input_tokens"], g["output_tokens"]]
            for g in report["groups"]
        }
        assert groups == sums
    if by != "tag":  # by tag a request counts once per tag in the points, once in the totals
        total = report["total"]
        assert [decimal(total["cost"]), total["requests"], total["input_tokens"], total["output_tokens"]] == [
            sum(col) for col in zip(*sums.values(), strict=True)
        ]
    rows = list(csv.DictReader(io.StringIO(world.cli(*args, "--format", "csv"))))
    assert [
        (
            r["start"],
            r["end"],
            r["group"] or None,
            r["cost_usd"],
            int(r["requests"]),
            int(r["input_tokens"]),
            int(r["output_tokens"]),
        )
        for r in rows
    ] == [
        (p["start"], p["end"], p["group"], p["cost"], p["requests"], p["input_tokens"], p["output_tokens"])
        for p in ui["data"]
    ]


def test_overview(world: World) -> None:
    """/overview: its spend today and this month against ``report`` totals from midnight and
    from the first of the month; its budget rows against ``budgets list``; their forecasts
    against ``budgets forecast``. (Its refusal counts have no CLI.)"""
    view = world.ui("/overview")
    assert view["now"] == world.now.isoformat().replace("+00:00", "Z")
    for name, start in (("today", world.midnight), ("month", world.month)):
        report = world.cli_json("report", "--since", start.isoformat(), "--bucket", "day", "--format", "json")
        assert view["spend"][name]["start"] == report["start"], name
        assert view["spend"][name]["cost"] == report["total"]["cost"], name
        assert view["spend"][name]["requests"] == report["total"]["requests"], name
    assert view["spend"]["today"]["requests"] == 4
    listed = {(r["id"], tuple(r["instance"].items())): r for r in world.cli_json("budgets", "list", "--json")}
    assert view["budgets_total"] == len(listed)
    for row in view["budgets"]:
        forecast = row.pop("forecast")
        assert row == listed[(row["id"], tuple(row["instance"].items()))]
        cli = world.cli_json("budgets", "forecast", row["id"], *instance_args(row["instance"]), "--json")
        assert forecast == {field: cli[field] for field in forecast}, row["id"]


def test_alerts_list(world: World) -> None:
    """``alerts list --json`` against /alerts (the alerts page), and each state's filter."""
    ui = world.ui("/alerts")["data"]
    same_rows(world.cli_json("alerts", "list", "--json"), ui, "alerts")
    assert {r["state"] for r in ui} == {"delivered", "pending"}
    crossed = [r for r in ui if r["event"]["type"] == "budget.threshold"]
    assert crossed and all(decimal(r["event"]["spent"]) > 0 for r in crossed)
    for state in ("delivered", "pending"):
        mine = world.ui("/alerts", state=state)["data"]
        same_rows(world.cli_json("alerts", "list", "--state", state, "--json"), mine, state)


def test_request_log_against_the_report(world: World) -> None:
    """/requests (the requests page) has no CLI; its costs add up to ``report``'s total."""
    page = world.ui("/requests", limit="1000")
    assert not page["has_more"]
    start = min(r["finished_at"] for r in page["data"])
    report = world.cli_json("report", "--since", start, "--bucket", "day", "--format", "json")
    assert len(page["data"]) == report["total"]["requests"] == 7
    assert sum((decimal(r["cost"]) for r in page["data"]), Decimal(0)) == decimal(report["total"]["cost"])
