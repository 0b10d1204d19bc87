"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright), in
front of a real gateway process and the fake upstream process: log in, watch a budget's bar move
after requests go through the gateway, pause a budget and see the next request refused, create,
disable and rotate a key, export the usage CSV and read it back, and an XSS attempt through a
model name, a user and a tag rendered as text. The last test takes the screenshots of
docs/ui.md (into docs/ui/ with ``SPENDGATE_UI_SCREENSHOTS=1``, else into a temporary folder).

No ``playwright install``: the browser is the system's, at ``/usr/bin/chromium``. Every wait is
bounded (``TIMEOUT_MS``).
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest
from click.testing import CliRunner

from gateway.conftest import Gateway, base_config, closed_port
from spendgate.budgets import Attributes
from spendgate.cli import main
from spendgate.clock import ManualClock
from spendgate.ledger import RequestRecord, open_ledger
from spendgate.money import Money
from spendgate.testing import FakeUpstream

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
ADMIN_TOKEN = "ui-test-admin-token-0123456789abcdef"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "ui"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
PAGES = ("overview", "budgets", "usage", "keys", "requests", "alerts")

#: Attacker-controlled strings: a model name, a user id, a tag. Rendered, any of them would set
#: window.__xss.
XSS_MODEL = "gpt-<img src=x onerror=window.__xss=1>"
XSS_USER = "<img src=x onerror=window.__xss=2>"
XSS_TAG = "<script>window.__xss=3</script>"
#: A rate limit of the gateway's config: listed, but the admin API refuses to change or delete it.
CONFIG_LIMIT = "config-requests"
HISTORY_MODELS = ("gpt-4o-mini", "gpt-4o", "claude-3-5-haiku")
HISTORY_TEAMS = ("search", "support", "research")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"
)

Page = Any  # playwright.sync_api.Page: the package is optional, so no import at module level


@dataclass
class UiEnv:
    gateway: Gateway
    admin: httpx.Client
    secrets: dict[str, str]

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, name: str) -> openai.OpenAI:
        return self.client_for(self.secrets[name])

    def client_for(self, secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.base_url, api_key=secret, max_retries=0, timeout=10)

    def budget(self, budget_id: str) -> dict[str, Any]:
        rows = self.admin.get("/budgets").raise_for_status().json()["data"]
        return next(row for row in rows if row["id"] == budget_id)


def chat(client: openai.OpenAI, model: str = "gpt-4o") -> None:
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello from the browser test"}], max_tokens=16
    )


def seed_history(ledger_url: str) -> None:
    """Three days of settled requests, one per model and hour, for the charts (and forecasts)."""
    clock = ManualClock()
    ledger = open_ledger(ledger_url, clock=clock)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        for hour in range(72, 0, -1):
            started_hour = now - timedelta(hours=hour)
            # A day's rhythm: busy in the (UTC) afternoon, quiet at night.
            rhythm = 1 + math.sin((started_hour.hour - 8) / 24 * 2 * math.pi)
            for n, model in enumerate(HISTORY_MODELS):
                team = HISTORY_TEAMS[(hour + n) % len(HISTORY_TEAMS)]
                tags = ["seed", "eval"] if n == 0 else ["seed"]  # two tags: counted under each
                attributes = Attributes.of(user=f"{team}-bot", team=team, model=model, tags=tags)
                micros = int((12_000, 30_000, 8_000)[n] * (0.2 + rhythm)) + hour * 13
                cost = Money.usd(str(Decimal(micros).scaleb(-6)))
                request_id = f"seed-{hour}-{n}"
                started = started_hour + timedelta(minutes=n * 7)
                clock.set(started)  # the log counts a request at its reservation
                assert ledger.reserve(request_id, attributes, cost, lease=60).admitted
                record = RequestRecord(
                    request_id=request_id,
                    attributes=attributes,
                    cost=cost,
                    started_at=started,
                    finished_at=started + timedelta(seconds=2),
                    model=model,
                    usage={"input_tokens": 400 + hour * 10, "output_tokens": 150 + n * 40},
                    breakdown={"input": cost},
                )
                ledger.settle(request_id, cost, record)
    finally:
        close = getattr(ledger, "close", None)
        if callable(close):
            close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, up: FakeUpstream) -> Iterator[UiEnv]:
    tmp = tmp_path_factory.mktemp("ui")
    ledger_url = f"sqlite:///{tmp / 'ledger.db'}"
    seed_history(ledger_url)
    config = base_config(
        up,
        ledger_url,
        budgets=[
            {"id": "global", "limit": "100", "window": "day"},
            {
                "id": "team-ui",
                "selector": {"team": "ui"},
                "limit": "0.002",
                "window": "month",
                "thresholds": [10, 25],
            },
        ],
        alerts={
            "destinations": [
                {"name": "log", "type": "log"},
                {"name": "ops-down", "type": "webhook", "url": f"http://127.0.0.1:{closed_port()}/hook"},
            ],
            "retry": {"max_attempts": 1, "backoff": 1},
            "poll_interval": 0.5,
        },
        prices={XSS_MODEL: {"input": "2.50", "output": "10"}},
        limits=[{"id": CONFIG_LIMIT, "selector": {"user": "config-limited"}, "requests": 1000, "per": "1m"}],
    )
    gateway = Gateway.start(config, tmp / "gateway.yaml", env={"SPENDGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    admin = httpx.Client(
        base_url=gateway.url + "/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )
    try:
        admin.post(
            "/budgets",
            json={"id": "pausable", "selector": {"user": "pauser"}, "limit": "10", "window": "day"},
        ).raise_for_status()
        specs = {
            "ui": {"name": "ui-team", "user": "ui-user", "team": "ui"},
            "pauser": {"name": "pauser", "user": "pauser"},
            "xss": {"name": "xss", "user": XSS_USER, "tags": [XSS_TAG]},
        }
        secrets = {
            name: admin.post("/keys", json=spec).raise_for_status().json()["secret"]
            for name, spec in specs.items()
        }
        yield UiEnv(gateway, admin, secrets)
    finally:
        admin.close()
        gateway.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            yield launched
        finally:
            launched.close()


class Watch:
    """What went wrong in the page: uncaught errors, CSP violations, failed console lines."""

    def __init__(self, page: Page) -> None:
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text or (message.type == "error" and "Failed to load" not in text):
            self.problems.append(f"console {message.type}: {text}")


def new_page(browser: Any, ui: UiEnv, viewport: dict[str, int] = LAPTOP) -> tuple[Any, Page, Watch]:
    context = browser.new_context(base_url=ui.url, viewport=viewport, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    return context, page, Watch(page)


def log_in(page: Page, token: str = ADMIN_TOKEN) -> None:
    page.goto("/ui/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")


def ready(page: Page, name: str) -> None:
    page.wait_for_selector(f"#main[data-ready='{name}']")


def open_page(page: Page, route: str) -> None:
    page.goto(f"/ui/#/{route}")
    ready(page, route.split("?", maxsplit=1)[0])


@pytest.fixture
def page(browser: Any, ui: UiEnv) -> Iterator[Page]:
    """A logged-in page at laptop width; the test fails on any script error or CSP violation."""
    context, page, watch = new_page(browser, ui)
    try:
        log_in(page)
        ready(page, "overview")
        yield page
        assert page.evaluate("window.__xss") is None
        assert not watch.problems, watch.problems
    finally:
        context.close()


def bar_width(row: Any) -> float:
    """The spent part of a row's bar, in percent of the limit."""
    style = row.locator(".bar-spent").first.get_attribute("style") or ""
    found = re.search(r"width:\s*([0-9.]+)%", style)
    return float(found.group(1)) if found else 0.0


def confirm(page: Page) -> None:
    """OK in the open confirmation dialog, then wait for it to be gone: its "close" event, which
    starts the change (and marks the page busy), comes a task after ``open`` is dropped, and
    the page removes the dialog in that same event."""
    page.locator("dialog[open] button[value=ok]").click()
    page.locator("dialog.modal").wait_for(state="detached")


# -- the tests ------------------------------------------------------------------------------------


def test_log_in_with_the_admin_token_only(browser: Any, ui: UiEnv) -> None:
    context, page, watch = new_page(browser, ui)
    try:
        page.goto("/ui/")
        page.wait_for_url(re.compile(r"/ui/login"))  # no session: the login form
        log_in(page, "not-the-admin-token")
        page.wait_for_url(re.compile(r"/ui/login\?error=1"))
        assert "not the admin token" in page.locator("#error").inner_text()
        log_in(page, ui.secrets["ui"])  # a virtual key never gets in
        page.wait_for_url(re.compile(r"/ui/login\?error=key"))
        assert "virtual key" in page.locator("#error").inner_text()
        log_in(page)
        ready(page, "overview")
        cookie = next(c for c in context.cookies() if c["name"] == "spendgate_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert "spendgate_session" not in page.evaluate("document.cookie")
        page.click("#logout")
        page.wait_for_url(re.compile(r"/ui/login"))
        page.goto("/ui/")
        page.wait_for_url(re.compile(r"/ui/login"))
        assert not watch.problems, watch.problems
    finally:
        context.close()


def test_a_budget_bar_moves_as_requests_go_through(page: Page, ui: UiEnv) -> None:
    open_page(page, "budgets")
    row = page.locator("tr[data-budget='team-ui']")
    before = bar_width(row)
    assert row.locator("[data-testid=spent]").inner_text() == "$" + ui.budget("team-ui")["spent"]
    client = ui.client("ui")
    for _ in range(3):
        chat(client)
    page.click("#refresh")
    ready(page, "budgets")
    spent = ui.budget("team-ui")["spent"]
    assert Money.usd(spent) > Money(0)
    row = page.locator("tr[data-budget='team-ui']")
    assert row.locator("[data-testid=spent]").inner_text() == "$" + spent
    after = bar_width(row)
    assert after > before
    assert after == pytest.approx(float(spent) / 0.002 * 100, abs=0.5)
    # The overview shows the same budget with the same numbers (it is the closest to its limit).
    open_page(page, "overview")
    top = page.locator("[data-testid=overview-budgets] tr[data-budget='team-ui']")
    assert top.locator("[data-testid=spent]").inner_text() == "$" + spent
    assert bar_width(top) == pytest.approx(after, abs=0.01)


def test_pausing_a_budget_refuses_the_next_request(page: Page, ui: UiEnv) -> None:
    client = ui.client("pauser")
    chat(client)  # allowed while the budget has room
    open_page(page, "budgets")
    row = page.locator("tr[data-budget='pausable']")
    row.get_by_role("button", name="Pause").click()
    confirm(page)
    ready(page, "budgets")
    page.locator("tr[data-budget='pausable'] [data-testid=limit]", has_text="paused").wait_for()
    assert ui.budget("pausable")["limit"] == "0"
    with pytest.raises(openai.RateLimitError):
        chat(client)
    # The overview counts the refusal, and names the budget that refused.
    open_page(page, "overview")
    refuser = page.locator("[data-testid=overview-refusers] tr", has_text="pausable")
    refuser.wait_for()
    assert int(refuser.locator("td.num").inner_text().replace(",", "")) >= 1
    assert int(page.locator("[data-testid=refusals-budget] .value").inner_text().replace(",", "")) >= 1
    page.locator("[data-testid=overview-refusals] .uplot").wait_for()  # the per-minute chart drew
    open_page(page, "budgets")
    page.locator(
        "tr[data-budget='pausable'] [data-testid=refused]", has_text="refused in the last hour"
    ).wait_for()
    # Change the limit back in the UI: requests go through again.
    page.locator("tr[data-budget='pausable']").get_by_role("button", name="Change limit").click()
    page.fill("dialog[open] input", "10")
    confirm(page)
    ready(page, "budgets")
    page.locator("tr[data-budget='pausable'] [data-testid=limit]", has_text="$10").wait_for()
    chat(client)


def test_reset_and_delete_a_budget(page: Page, ui: UiEnv) -> None:
    ui.admin.post(
        "/budgets", json={"id": "scratch", "selector": {"team": "scratch"}, "limit": "5", "window": "day"}
    ).raise_for_status()
    key = ui.admin.post("/keys", json={"name": "scratch", "team": "scratch"}).raise_for_status().json()
    chat(ui.client_for(key["secret"]))
    assert Money.usd(ui.budget("scratch")["spent"]) > Money(0)
    open_page(page, "budgets")
    page.locator("tr[data-budget='scratch']").get_by_role("button", name="Reset").click()
    confirm(page)
    ready(page, "budgets")
    page.locator(".notice.ok", has_text="reset").wait_for()
    assert ui.budget("scratch")["spent"] == "0"
    assert page.locator("tr[data-budget='scratch'] [data-testid=spent]").inner_text() == "$0"
    # Cancel leaves it; OK deletes it.
    page.locator("tr[data-budget='scratch']").get_by_role("button", name="Delete").click()
    page.locator("dialog[open] button[value=cancel]").click()
    assert page.locator("tr[data-budget='scratch']").count() == 1
    page.locator("tr[data-budget='scratch']").get_by_role("button", name="Delete").click()
    confirm(page)
    ready(page, "budgets")
    assert page.locator("tr[data-budget='scratch']").count() == 0
    assert all(row["id"] != "scratch" for row in ui.admin.get("/budgets").json()["data"])
    # A budget of the config cannot be deleted: the admin API's reason is shown.
    page.locator("tr[data-budget='global']").get_by_role("button", name="Delete").click()
    confirm(page)
    page.locator(".notice.error", has_text="config").wait_for()
    assert page.locator("tr[data-budget='global']").count() == 1


def test_change_and_delete_a_rate_limit(page: Page, ui: UiEnv) -> None:
    key = ui.admin.post("/keys", json={"name": "limited", "user": "limited"}).raise_for_status().json()
    made = (
        ui.admin.post("/limits", json={"selector": {"key": key["id"]}, "requests": 60, "per": "1m"})
        .raise_for_status()
        .json()
    )
    limit_id = made["id"]
    assert "/" in limit_id  # the default id, e.g. key=key_.../requests/1m: URL-encoded by the UI
    admin_path = "/limits/" + quote(limit_id, safe="")
    open_page(page, "budgets")
    row = page.locator(f"[data-testid=limits] tr[data-limit='{limit_id}']")
    assert row.locator("[data-testid=amount]").inner_text() == "60"
    assert "requests" in row.inner_text() and "1m" in row.inner_text()
    assert row.locator("[data-testid=used]").inner_text() == "0"
    assert bar_width(row) == 0
    # A bad amount is refused in the page; 1 request a minute goes to the admin API.
    row.get_by_role("button", name="Change amount").click()
    page.fill("dialog[open] input", "lots")
    confirm(page)
    page.locator("[data-testid=limits-section] .notice.error", has_text="not an amount").wait_for()
    page.locator(f"tr[data-limit='{limit_id}']").get_by_role("button", name="Change amount").click()
    page.fill("dialog[open] input", "1")
    confirm(page)
    ready(page, "budgets")
    page.locator("[data-testid=limits-section] .notice.ok", has_text="amount now 1").wait_for()
    row = page.locator(f"tr[data-limit='{limit_id}']")
    assert row.locator("[data-testid=amount]").inner_text() == "1"
    assert ui.admin.get(admin_path).raise_for_status().json()["amount"] == "1"
    client = ui.client_for(key["secret"])
    chat(client)
    with pytest.raises(openai.RateLimitError):
        chat(client)
    page.click("#refresh")
    ready(page, "budgets")
    row = page.locator(f"tr[data-limit='{limit_id}']")
    assert row.locator("[data-testid=used]").inner_text() == "1"
    assert bar_width(row) == 100
    assert row.locator("[data-testid=refused]").inner_text().startswith("1 refused in the last hour")
    # Cancel leaves it; OK deletes it, and requests go through again.
    row.get_by_role("button", name="Delete").click()
    page.locator("dialog[open] button[value=cancel]").click()
    assert page.locator(f"tr[data-limit='{limit_id}']").count() == 1
    page.locator(f"tr[data-limit='{limit_id}']").get_by_role("button", name="Delete").click()
    confirm(page)
    ready(page, "budgets")
    page.locator("[data-testid=limits-section] .notice.ok", has_text="deleted").wait_for()
    assert page.locator(f"tr[data-limit='{limit_id}']").count() == 0
    assert ui.admin.get(admin_path).status_code == 404
    assert all(row["id"] != limit_id for row in ui.admin.get("/limits").json()["data"])
    chat(client)
    # A limit of the config cannot be changed or deleted: the admin API's reason is shown.
    configured = page.locator(f"tr[data-limit='{CONFIG_LIMIT}']")
    configured.get_by_role("button", name="Delete").click()
    confirm(page)
    page.locator("[data-testid=limits-section] .notice.error", has_text="config").wait_for()
    ready(page, "budgets")
    assert configured.count() == 1
    configured.get_by_role("button", name="Change amount").click()
    page.fill("dialog[open] input", "5")
    confirm(page)
    page.locator("[data-testid=limits-section] .notice.error", has_text="config").wait_for()
    assert ui.admin.get("/limits/" + CONFIG_LIMIT).json()["amount"] == "1000"


def test_create_disable_and_rotate_a_key(page: Page, ui: UiEnv) -> None:
    open_page(page, "keys")
    page.fill("#key-name", "made-in-ui")
    page.fill("#key-user", "maker")
    page.fill("#key-tags", "ui, browser")
    page.click("#create-key button[type=submit]")
    ready(page, "keys")
    first = page.locator("[data-testid=secret]").inner_text()
    assert first.startswith("sg-")
    chat(ui.client_for(first))
    key = next(k for k in ui.admin.get("/keys").json()["data"] if k["name"] == "made-in-ui")
    assert key["user"] == "maker" and key["tags"] == ["browser", "ui"]
    page.get_by_role("button", name="Done").click()
    assert page.locator("[data-testid=secret]").count() == 0  # shown once

    row = page.locator(f"tr[data-key='{key['id']}']")
    row.get_by_role("button", name="Disable").click()
    confirm(page)
    ready(page, "keys")
    page.locator(f"tr[data-key='{key['id']}'] .badge", has_text="disabled").wait_for()
    with pytest.raises(openai.AuthenticationError):
        chat(ui.client_for(first))
    page.locator(f"tr[data-key='{key['id']}']").get_by_role("button", name="Enable").click()
    ready(page, "keys")
    page.locator(f"tr[data-key='{key['id']}'] .badge", has_text="active").wait_for()
    chat(ui.client_for(first))

    page.locator(f"tr[data-key='{key['id']}']").get_by_role("button", name="Rotate").click()
    confirm(page)
    ready(page, "keys")
    second = page.locator("[data-testid=secret]").inner_text()
    assert second.startswith("sg-") and second != first
    chat(ui.client_for(second))
    with pytest.raises(openai.AuthenticationError):
        chat(ui.client_for(first))


def test_alerts_show_deliveries_and_retry_a_failure(page: Page, ui: UiEnv) -> None:
    """team-ui crossed its thresholds (the bar test): the log got the alert, the webhook that
    nothing listens on failed it; Retry makes it due again."""
    for _ in range(2):  # past 10% of team-ui's limit at least (enough when this test runs alone)
        chat(ui.client("ui"))
    open_page(page, "alerts")
    failed = page.locator("[data-testid=alerts] tr[data-destination='ops-down']", has_text="failed")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while failed.count() == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(300)
        page.click("#refresh")
        ready(page, "alerts")
    assert failed.count() >= 1
    delivered = page.locator("[data-testid=alerts] tr[data-destination='log']", has_text="delivered")
    assert delivered.filter(has_text="team=ui").count() >= 1
    event_id = failed.first.get_attribute("data-event")
    failed.first.get_by_role("button", name="Retry").click()
    ready(page, "alerts")
    page.get_by_text("Retrying", exact=False).wait_for()
    rows = ui.admin.get("/alerts", params={"destination": "ops-down"}).json()["data"]
    retried = next(r for r in rows if r["event"]["id"] == event_id)
    assert retried["state"] in ("pending", "failed")  # due again (and maybe failed again already)


def test_usage_csv_export_has_the_admin_api_numbers(page: Page, ui: UiEnv, tmp_path: Path) -> None:
    chat(ui.client("ui"), "gpt-4o-mini")
    query = {"start": "4d", "bucket": "hour", "by": "model"}
    open_page(page, "usage?" + "&".join(f"{k}={v}" for k, v in query.items()))
    page.wait_for_selector("#usage-chart canvas")
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        page.click("#export-csv")
    path = tmp_path / "usage.csv"
    download.value.save_as(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    api = ui.admin.get("/usage/timeseries", params={**query, "limit": 10000}).raise_for_status().json()
    assert not api["has_more"]
    expected = [
        {
            "start": p["start"],
            "end": p["end"],
            "by": "model",
            "group": p["group"] or "",
            "cost_usd": p["cost"],
            **{k: str(p[k]) for k in ("requests", "input_tokens", "output_tokens")},
        }
        for p in api["data"]
    ]
    assert rows == expected
    assert {row["group"] for row in rows} >= {"gpt-4o-mini", "gpt-4o"}
    assert sum(int(row["requests"]) for row in rows) == sum(p["requests"] for p in api["data"])
    # The same file `spendgate report --format csv` writes for that span (its columns, its rows)
    cli = CliRunner().invoke(
        main,
        [
            "report",
            "--ledger",
            ui.gateway.ledger_url,
            "--since",
            api["start"].removesuffix("Z"),
            "--until",
            api["end"].removesuffix("Z"),
            "--bucket",
            "hour",
            "--by",
            "model",
            "--format",
            "csv",
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert path.read_text(encoding="utf-8") == cli.stdout


def test_usage_by_tag_counts_each_request_once_in_its_total(page: Page, ui: UiEnv) -> None:
    """A request with two tags is in both tags' rows, and once in the headline (as in the
    ungrouped series and `spendgate report`'s total)."""
    query = {"start": "4d", "bucket": "day", "by": "tag"}
    open_page(page, "usage?" + "&".join(f"{k}={v}" for k, v in query.items()))
    page.wait_for_selector("#usage-chart canvas")
    headline = page.locator(".card .page-head h2").first.inner_text()
    whole = ui.admin.get("/usage/timeseries", params={**query, "by": "", "limit": 10000}).json()["data"]
    by_tag = ui.admin.get("/usage/timeseries", params={**query, "limit": 10000}).json()["data"]
    requests = sum(p["requests"] for p in whole)
    assert sum(p["requests"] for p in by_tag) > requests  # the "eval" requests count twice there
    assert f"{requests:,} requests" in headline, headline


def test_an_xss_attempt_is_rendered_as_text(page: Page, ui: UiEnv) -> None:
    chat(ui.client("xss"), XSS_MODEL)
    visits = {
        "requests": [XSS_MODEL, XSS_USER],
        "usage?by=model&start=2d": [XSS_MODEL],
        "usage?by=user&start=2d": [XSS_USER],
        "usage?by=tag&start=2d": [XSS_TAG],
        "keys": [XSS_USER, XSS_TAG],
    }
    for route, texts in visits.items():
        open_page(page, route)
        for text in texts:
            assert page.get_by_text(text, exact=True).count() >= 1, (route, text)
        assert page.locator("#main img, #main script").count() == 0
        assert page.evaluate("window.__xss") is None
    # One request's detail shows the model, the user and the tag as text too.
    open_page(page, "requests?model=" + quote(XSS_MODEL, safe=""))
    page.locator("[data-testid=requests] tbody tr").first.click()
    detail = page.locator("#request-detail")
    detail.wait_for()
    assert detail.get_by_text(XSS_MODEL, exact=True).count() >= 1
    assert detail.get_by_text(XSS_USER, exact=True).count() >= 1
    assert page.evaluate("window.__xss") is None


def test_screenshots_of_every_page(browser: Any, ui: UiEnv, tmp_path: Path) -> None:
    """docs/ui/<page>.png at laptop width, docs/ui/<page>-phone.png at phone width."""
    into = DOCS if os.environ.get("SPENDGATE_UI_SCREENSHOTS") == "1" else tmp_path
    into.mkdir(parents=True, exist_ok=True)
    context, page, watch = new_page(browser, ui)
    try:
        page.goto("/ui/login")
        page.screenshot(path=into / "login.png")
        log_in(page)
        ready(page, "overview")
        for name in PAGES:
            open_page(page, "usage?by=model&start=3d&bucket=hour" if name == "usage" else name)
            if name == "usage":
                page.wait_for_selector("#usage-chart canvas")
            if name == "requests":  # with one request's detail open
                page.locator("[data-testid=requests] tbody tr").first.click()
                page.locator("#request-detail").wait_for()
            if name == "budgets":  # the forecasts come after the table
                page.locator("[data-testid=budgets] td.wrap", has_text="…").first.wait_for(state="detached")
            # The request log is long: its first screen (the detail and the newest requests).
            page.screenshot(path=into / f"{name}.png", full_page=name != "requests")
        page.set_viewport_size(PHONE)
        for name in ("overview", "budgets", "usage"):
            open_page(page, "usage?by=model&start=3d" if name == "usage" else name)
            if name == "usage":
                page.wait_for_selector("#usage-chart canvas")
            page.screenshot(path=into / f"{name}-phone.png", full_page=True)
        # At phone width the navigation folds behind the menu button.
        assert not page.locator("nav a[data-route=keys]").is_visible()
        page.click(".nav-toggle")
        page.locator("nav a[data-route=keys]").click()
        ready(page, "keys")
        assert not watch.problems, watch.problems
    finally:
        context.close()
    shots = sorted(p.name for p in into.glob("*.png"))
    assert len(shots) >= len(PAGES) + 4, shots
