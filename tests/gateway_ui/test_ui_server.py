"""The dashboard's server side (``spendgate.gateway.ui``): login, sessions, CSRF, the headers, the
admin API under ``/ui/api`` and the overview. Real parts: the UI and admin apps over a real
ledger and key store (memory and SQLite) on a ``ManualClock``, and the whole gateway app for
the mount and the refusal counts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Router
from starlette.testclient import TestClient

from spendgate.budgets import Attributes, Budget, Window
from spendgate.clock import ManualClock
from spendgate.forecasting import forecast_budget
from spendgate.gateway.admin import create_admin_app
from spendgate.gateway.app import GatewayState, create_app
from spendgate.gateway.config import parse_settings
from spendgate.gateway.keys import KeyStore, open_keystore
from spendgate.gateway.ui import CSP, STATIC, LoginLimiter, Sessions, create_ui_app
from spendgate.gateway.ui.session import SECRET_ENV
from spendgate.ledger import Ledger, RequestRecord, open_ledger
from spendgate.money import Money
from spendgate.refusal_tally import RefusalTally

TOKEN = "admin-" + "u" * 26
START = datetime(2027, 3, 15, 10, 30, tzinfo=UTC)
FORM = {"content-type": "application/x-www-form-urlencoded"}


class Env:
    """The UI and the admin API over one ledger, mounted as the gateway mounts them."""

    def __init__(self, url: str) -> None:
        self.token: str | None = TOKEN
        self.clock = ManualClock(START)
        self.ledger: Ledger = open_ledger(url, clock=self.clock)
        self.keys: KeyStore = open_keystore(url, cache_ttl=0)
        self.seconds = 0.0
        # this process's refusals, not yet written: the overview writes them before it reads
        self.tally = RefusalTally(self.clock, monotonic=lambda: self.seconds)
        args: dict[str, Any] = {
            "keys": self.keys,
            "ledger": self.ledger,
            "admin_token": lambda: self.token,
            "flush_refusals": lambda: self.tally.flush(self.ledger),
        }
        self.ui = create_ui_app(**args, sessions=Sessions(), limiter=LoginLimiter(), clock=self.clock)
        self.app = Router(routes=[Mount("/ui", app=self.ui), Mount("/admin", app=create_admin_app(**args))])

    def client(self, base_url: str = "http://testserver") -> TestClient:
        return TestClient(self.app, base_url=base_url, follow_redirects=False)

    def admin(self) -> TestClient:
        return TestClient(self.app, headers={"Authorization": f"Bearer {TOKEN}"})

    def logged_in(self, base_url: str = "http://testserver") -> tuple[TestClient, str]:
        """A client with a session, and the session's CSRF token."""
        client = self.client(base_url)
        answer = login(client)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/", answer.text
        csrf = client.get("/ui/api/session").json()["csrf"]
        return client, csrf

    def spend(self, when: datetime, cost: str, **attrs: object) -> None:
        """A settled request costing ``cost`` at ``when`` (the clock is left there)."""
        self.clock.set(when)
        attributes = Attributes.of(**attrs)
        rid = f"req-{when.isoformat()}-{cost}-{sorted(attrs.items())}"
        amount = Money.usd(cost)
        assert self.ledger.reserve(rid, attributes, amount, lease=60).admitted
        self.ledger.settle(
            rid, amount, RequestRecord(rid, attributes, amount, when, when, model=attributes.model)
        )


@pytest.fixture(params=["memory", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"
    e = Env(url)
    yield e
    e.keys.close()
    e.ledger.close()


def login(client: TestClient, token: str = TOKEN, **headers: str) -> Any:
    return client.post("/ui/login", content=f"token={token}", headers={**FORM, **headers})


def cookie_header(answer: Any) -> str:
    values: list[str] = [v for k, v in answer.headers.multi_items() if k == "set-cookie"]
    assert len(values) == 1, values
    return values[0]


def assert_error(answer: Any, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code, answer.text


# -- login ------------------------------------------------------------------------------------


def test_login_sets_a_strict_session_cookie(env: Env) -> None:
    client = env.client()
    answer = login(client)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
    cookie = cookie_header(answer)
    name, _, rest = cookie.partition("=")
    assert name == "spendgate_session"
    attributes = [part.strip() for part in rest.split(";")[1:]]
    assert {"HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"} <= set(attributes)
    assert "Secure" not in attributes  # plain http
    assert TOKEN not in cookie
    assert client.get("/ui/api/session").status_code == 200
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.content == (STATIC / "index.html").read_bytes()


def test_secure_cookie_over_https_and_behind_a_tls_proxy(env: Env) -> None:
    assert "Secure" in cookie_header(login(env.client("https://testserver")))
    assert "Secure" in cookie_header(login(env.client(), **{"X-Forwarded-Proto": "https"}))
    client, _ = env.logged_in("https://testserver")
    assert client.get("/ui/api/budgets").status_code == 200


@pytest.mark.parametrize("token", ["wrong", "", TOKEN + "x", TOKEN[:-1]])
def test_a_wrong_token_gets_no_session(env: Env, token: str) -> None:
    client = env.client()
    answer = login(client, token)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login?error=1"
    assert "set-cookie" not in answer.headers
    assert_error(client.get("/ui/api/budgets"), 401, "session_required")


def test_a_virtual_key_never_gets_in(env: Env) -> None:
    _, secret = env.keys.create(user="alice")
    assert secret.startswith("sg-")
    client = env.client()
    answer = login(client, secret)
    assert answer.headers["location"] == "/ui/login?error=key" and "set-cookie" not in answer.headers
    assert_error(client.get("/ui/api/keys"), 401, "session_required")
    # nor as a bearer token or a cookie on /ui/api
    assert_error(
        client.get("/ui/api/keys", headers={"Authorization": f"Bearer {secret}"}), 401, "session_required"
    )
    assert_error(
        client.get("/ui/api/keys", headers={"Authorization": f"Bearer {TOKEN}"}), 401, "session_required"
    )


def test_no_admin_token_no_login(env: Env) -> None:
    env.token = None
    client = env.client()
    assert login(client, "").headers["location"] == "/ui/login?error=1"
    assert login(client, "None").headers["location"] == "/ui/login?error=1"


def test_failed_logins_are_rate_limited_per_address(env: Env) -> None:
    client = env.client()
    for _ in range(5):
        assert login(client, "guess").headers["location"] == "/ui/login?error=1"
    blocked = login(client)  # even the right token, until the minute is over
    assert blocked.status_code == 303 and blocked.headers["location"] == "/ui/login?error=rate"
    assert 1 <= int(blocked.headers["retry-after"]) <= 60 and "set-cookie" not in blocked.headers
    env.clock.advance(timedelta(seconds=59))
    assert login(client).headers["location"] == "/ui/login?error=rate"
    env.clock.advance(timedelta(seconds=2))
    assert login(client).headers["location"] == "/ui/"


def test_login_limiter_is_bounded() -> None:
    limiter = LoginLimiter(attempts=1, addresses=3)
    for address in ("a", "b", "c", "d"):
        limiter.failed(address, START)
    assert limiter.retry_after("a", START) is None  # forgotten: the oldest
    assert limiter.retry_after("d", START) == 60


def test_login_from_another_site_is_refused(env: Env) -> None:
    client = env.client()
    assert_error(login(client, Origin="https://evil.example"), 403, "origin_mismatch")
    assert login(client, Origin="http://testserver").headers["location"] == "/ui/"


# -- sessions -----------------------------------------------------------------------------------


def test_session_expires_by_the_clock(env: Env) -> None:
    client, _ = env.logged_in()
    expires = client.get("/ui/api/session").json()["expires_at"]
    assert expires == "2027-03-15T22:30:00Z"
    env.clock.advance(timedelta(hours=12) - timedelta(seconds=1))
    assert client.get("/ui/api/budgets").status_code == 200
    env.clock.advance(timedelta(seconds=1))
    assert_error(client.get("/ui/api/budgets"), 401, "session_required")
    assert_error(client.get("/ui/api/session"), 401, "session_required")
    page = client.get("/ui/")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"


def test_a_changed_admin_token_ends_every_session(env: Env) -> None:
    client, _ = env.logged_in()
    env.token = "another-" + "t" * 24
    assert_error(client.get("/ui/api/budgets"), 401, "session_required")
    env.token = TOKEN  # the old token back: the old cookie is good again (its key is the token's)
    assert client.get("/ui/api/budgets").status_code == 200


def test_forged_and_tampered_cookies_are_refused(env: Env) -> None:
    client, _ = env.logged_in()
    good = client.cookies["spendgate_session"]
    version, sid, expiry, mac = good.split(".")
    forged = [
        f"{version}.{sid}.{int(expiry) + 3600}.{mac}",  # a longer life
        f"{version}.other{sid}.{expiry}.{mac}",
        f"{version}.{sid}.{expiry}.{mac[:-2]}AA",
        "v1.x.1.y",
        "garbage",
    ]
    for value in forged:
        anon = env.client()
        anon.cookies.set("spendgate_session", value)
        assert_error(anon.get("/ui/api/budgets"), 401, "session_required")
    anon = env.client()
    anon.cookies.set("spendgate_session", good)  # the control: the same way, the real cookie
    assert anon.get("/ui/api/budgets").status_code == 200
    # another process (another secret) does not take this one's cookies
    other = Sessions().verify(good, TOKEN, START)
    assert other is None


def test_logout_needs_csrf_and_ends_the_session_everywhere(env: Env) -> None:
    client, csrf = env.logged_in()
    cookie = client.cookies["spendgate_session"]
    assert_error(client.post("/ui/logout"), 403, "csrf_failed")
    assert_error(client.post("/ui/logout", headers={"X-CSRF-Token": "nope"}), 403, "csrf_failed")
    assert client.get("/ui/api/budgets").status_code == 200
    out = client.post("/ui/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    cleared = cookie_header(out)
    assert cleared.startswith("spendgate_session=;") and "Max-Age=0" in cleared and "Path=/ui" in cleared
    # a copy of the cookie kept elsewhere is dead too
    copy = env.client()
    copy.cookies.set("spendgate_session", cookie)
    assert_error(copy.get("/ui/api/budgets"), 401, "session_required")
    # the form way: field csrf
    client, csrf = env.logged_in()
    assert client.post("/ui/logout", content=f"csrf={csrf}", headers=FORM).status_code == 303
    assert_error(client.get("/ui/api/budgets"), 401, "session_required")


def test_workers_of_one_run_share_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "0f" * 32)
    cookie, session = Sessions().issue(TOKEN, START)
    other = Sessions()  # another worker of the same run
    assert other.verify(cookie, TOKEN, START) == session
    assert other.csrf(TOKEN, session) == Sessions().csrf(TOKEN, session)
    monkeypatch.setenv(SECRET_ENV, "1e" * 32)  # another run
    assert Sessions().verify(cookie, TOKEN, START) is None
    monkeypatch.delenv(SECRET_ENV)
    assert Sessions().verify(cookie, TOKEN, START) is None


def test_revoked_sessions_are_bounded() -> None:
    sessions = Sessions()
    _, first = sessions.issue(TOKEN, START)
    for _ in range(3):
        cookie, session = sessions.issue(TOKEN, START)
        sessions.revoke(session, START)
        assert sessions.verify(cookie, TOKEN, START) is None
    # past their expiry, revoked ids are dropped as new ones come
    later = START + timedelta(hours=13)
    cookie, session = sessions.issue(TOKEN, later)
    sessions.revoke(session, later)
    assert len(sessions._revoked) == 1
    assert first.id not in sessions._revoked


# -- CSRF -----------------------------------------------------------------------------------------


def test_changes_need_the_csrf_token_and_our_origin(env: Env) -> None:
    env.ledger.put_budget(Budget("team-ml", {"team": "ml"}, Money.usd(50), Window.calendar("month")))
    client, csrf = env.logged_in()

    def limit() -> str:
        return str(env.ledger.get_budget("team-ml").limit.decimal_str())

    pause = {"limit": "0"}
    assert_error(client.patch("/ui/api/budgets/team-ml", json=pause), 403, "csrf_failed")
    assert_error(
        client.patch("/ui/api/budgets/team-ml", json=pause, headers={"X-CSRF-Token": csrf + "x"}),
        403,
        "csrf_failed",
    )
    assert_error(
        client.patch(
            "/ui/api/budgets/team-ml", json=pause, headers={"X-CSRF-Token": "", "Origin": "http://testserver"}
        ),
        403,
        "csrf_failed",
    )
    for foreign in (
        {"Origin": "https://evil.example"},
        {"Origin": "http://testserver:8080"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        answer = client.patch(
            "/ui/api/budgets/team-ml", json=pause, headers={"X-CSRF-Token": csrf, **foreign}
        )
        assert_error(answer, 403, "origin_mismatch")
    assert_error(client.delete("/ui/api/budgets/team-ml"), 403, "csrf_failed")
    assert_error(client.post("/ui/api/budgets/team-ml/reset", json={}), 403, "csrf_failed")
    assert_error(client.post("/ui/api/keys", json={"user": "mallory"}), 403, "csrf_failed")
    assert limit() == "50" and env.keys.list() == []
    # another session's token does not do either
    _, other_csrf = env.logged_in()
    assert other_csrf != csrf
    assert_error(
        client.patch("/ui/api/budgets/team-ml", json=pause, headers={"X-CSRF-Token": other_csrf}),
        403,
        "csrf_failed",
    )
    assert limit() == "50"

    ok = client.patch(
        "/ui/api/budgets/team-ml",
        json=pause,
        headers={"X-CSRF-Token": csrf, "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["limit"] == "0" and limit() == "0"
    made = client.post(
        "/ui/api/keys",
        json={"user": "bob"},
        headers={"X-CSRF-Token": csrf, "Referer": "http://testserver/ui/"},
    )
    assert made.status_code == 201 and made.json()["secret"].startswith("sg-")
    assert client.delete("/ui/api/budgets/team-ml", headers={"X-CSRF-Token": csrf}).status_code == 200


def test_the_csrf_token_is_stable_per_session(env: Env) -> None:
    client, csrf = env.logged_in()
    assert client.get("/ui/api/session").json()["csrf"] == csrf
    env.clock.advance(timedelta(hours=1))
    assert client.get("/ui/api/session").json()["csrf"] == csrf


# -- the same API -------------------------------------------------------------------------------


def test_ui_api_answers_as_the_admin_api(env: Env) -> None:
    env.ledger.put_budget(Budget("team-ml", {"team": "ml"}, Money.usd(50), Window.calendar("month")))
    env.ledger.put_budget(Budget("per-user", {"user": "*"}, Money.usd(5), Window.calendar("day")))
    env.spend(START - timedelta(hours=2), "1.25", user="alice", team="ml", model="gpt-4o")
    env.spend(START - timedelta(hours=1), "0.5", user="bob", team="ml", model="gpt-4o-mini", tags=["x"])
    env.keys.create(user="alice", name="alice-laptop")
    client, _ = env.logged_in()
    admin = env.admin()
    for path in (
        "/budgets",
        "/keys",
        "/limits",
        "/usage?by=model",
        "/usage/timeseries?bucket=hour&start=2027-03-15&end=2027-03-16&by=user",
        "/requests?limit=10",
        "/budgets/team-ml/forecast",
        "/budgets/per-user/forecast?user=alice",
        "/budgets/team-ml/advice",
        "/alerts",
        "/overview",
        "/refusals",
        "/refusals?start=1d",
        "/openapi.json",
        "/budgets/nope/forecast",
        "/no-such-route",
    ):
        mine, theirs = client.get("/ui/api" + path), admin.get("/admin" + path)
        assert mine.status_code == theirs.status_code, path
        if path == "/no-such-route":
            assert mine.status_code == 404
            continue
        assert mine.json() == theirs.json(), path


def test_unauthenticated(env: Env) -> None:
    client = env.client()
    for path in ("/ui/api/budgets", "/ui/api/session", "/ui/api/overview", "/ui/api/openapi.json"):
        assert_error(client.get(path), 401, "session_required")
    assert_error(client.patch("/ui/api/budgets/x", json={"limit": "0"}), 401, "session_required")
    page = client.get("/ui/")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"
    login_page = client.get("/ui/login")
    assert login_page.status_code == 200 and login_page.content == (STATIC / "login.html").read_bytes()
    assert client.get("/ui/static/js/app.js").status_code == 200  # the files hold no data
    assert client.get("/ui/static/../__init__.py").status_code == 404
    assert client.get("/ui/static/..%2f__init__.py").status_code == 404
    assert client.get("/ui/static/%2e%2e/session.py").status_code == 404


# -- headers --------------------------------------------------------------------------------------


def test_security_headers_everywhere(env: Env) -> None:
    client, _ = env.logged_in()
    answers = {
        "page": client.get("/ui/"),
        "login": client.get("/ui/login"),
        "redirect": env.client().get("/ui/"),
        "api": client.get("/ui/api/budgets"),
        "api error": env.client().get("/ui/api/budgets"),
        "csrf error": client.post("/ui/api/keys", json={}),
        "not found": client.get("/ui/api/nothing"),
        "static": client.get("/ui/static/app.css"),
        "static js": client.get("/ui/static/js/app.js"),
        "static missing": client.get("/ui/static/none.css"),
    }
    for what, answer in answers.items():
        headers = answer.headers
        assert headers["content-security-policy"] == CSP, what
        assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert headers["x-content-type-options"] == "nosniff", what
        assert headers["referrer-policy"] == "same-origin", what
        assert headers["x-frame-options"] == "DENY", what
        assert len(headers.get_list("content-security-policy")) == 1, what
        cache = headers["cache-control"]
        assert cache == ("no-cache" if what.startswith("static") else "no-store"), what
    assert (
        answers["static js"].headers["content-type"].startswith(("text/javascript", "application/javascript"))
    )
    assert answers["static"].headers.get("etag")


# -- the overview -------------------------------------------------------------------------------


def test_overview_numbers_against_the_ledger(env: Env) -> None:
    month = Window.calendar("month")
    env.ledger.put_budget(Budget("team-ml", {"team": "ml"}, Money.usd(10), month))
    env.ledger.put_budget(Budget("team-web", {"team": "web"}, Money.usd(100), month))
    env.ledger.put_budget(Budget("paused", {"team": "ops"}, Money.usd(0), month))
    env.ledger.put_budget(Budget("per-user", {"user": "*"}, Money.usd(4), Window.calendar("day")))
    for i in range(12):  # more budgets than the overview lists
        env.ledger.put_budget(Budget(f"idle-{i:02}", {"project": f"p{i}"}, Money.usd(1000), month))
    env.spend(datetime(2027, 2, 28, 23, 59, tzinfo=UTC), "100", team="web")  # last month
    env.spend(datetime(2027, 3, 1, 0, 0, tzinfo=UTC), "2.5", team="ml", user="alice")
    env.spend(datetime(2027, 3, 14, 23, 59, 59, tzinfo=UTC), "4", team="ml", user="bob")
    env.spend(datetime(2027, 3, 15, 0, 0, tzinfo=UTC), "1.25", team="web", user="alice")
    env.spend(datetime(2027, 3, 15, 9, 0, tzinfo=UTC), "0.000125", team="ml", user="alice")
    env.clock.set(START)
    # one request in flight: reserved, not spent
    assert env.ledger.reserve(
        "open", Attributes.of(team="ml", user="carol"), Money.usd("1"), lease=60
    ).admitted
    env.tally.add("budget", "team-ml")
    env.tally.add("budget", "team-ml")
    env.tally.add("rate_limit", "rpm")
    # another process's counts, already in the ledger: 30 minutes ago, and just over the hour
    env.ledger.add_refusals(
        {
            (datetime(2027, 3, 15, 10, 0, tzinfo=UTC), "budget", "paused"): 5,
            (datetime(2027, 3, 15, 10, 0, tzinfo=UTC), "cost_cap", ""): 1,
            (datetime(2027, 3, 15, 9, 30, tzinfo=UTC), "budget", "team-ml"): 7,
        }
    )

    client, _ = env.logged_in()
    view = client.get("/ui/api/overview").json()
    assert view == env.admin().get("/admin/overview").json()
    assert view["now"] == "2027-03-15T10:30:00Z"
    assert view["spend"] == {
        "today": {"cost": "1.250125", "requests": 2, "start": "2027-03-15T00:00:00Z"},
        "month": {"cost": "7.750125", "requests": 4, "start": "2027-03-01T00:00:00Z"},
    }
    # the same as the request log's own series
    series = env.admin().get("/admin/usage/timeseries?bucket=day&start=2027-03-01&end=2027-03-16").json()
    assert sum(int(p["requests"]) for p in series["data"]) == 4

    rows = {(r.budget_id, r.instance_key): r for r in env.ledger.list_budgets()}
    assert view["budgets_total"] == len(rows) == 3 + 12 + 2  # per-user: alice and carol, today
    budgets = view["budgets"]
    assert len(budgets) == 10
    first = [(b["id"], b["instance"]) for b in budgets[:5]]
    assert first == [
        ("paused", {}),  # a limit of 0 first: it refuses everything
        ("team-ml", {}),  # 75%
        ("per-user", {"user": "alice"}),  # 31%
        ("per-user", {"user": "carol"}),  # 25%: reserved only
        ("team-web", {}),  # 1%
    ]
    ml = budgets[1]
    assert (ml["spent"], ml["reserved"], ml["limit"], ml["percent"]) == ("6.500125", "1", "10", 75)
    assert ml["resets_at"] == "2027-04-01T00:00:00Z" and ml["window_start"] == "2027-03-01T00:00:00Z"
    expected = forecast_budget(env.ledger, "team-ml", now=START).to_dict()
    assert ml["forecast"]["runs_out_at"] == expected["runs_out_at"]
    assert ml["forecast"]["expected"] == expected["expected"]
    assert budgets[2]["instance"] == {"user": "alice"} and budgets[2]["spent"] == "1.250125"
    for row in budgets:  # every field of /budgets' row, as it stands
        usage = rows[(row["id"], "&".join(f"{k}={v}" for k, v in sorted(row["instance"].items())))]
        assert row["spent"] == usage.spent.decimal_str() and row["percent"] == usage.percent
    refusals = view["refusals"]
    per_minute = refusals.pop("per_minute")
    assert refusals == {
        "window_seconds": 3600,
        "start": "2027-03-15T09:31:00Z",  # 60 minutes, the current one (10:30) last
        "end": "2027-03-15T10:31:00Z",
        "total": 9,
        "budget": 7,
        "rate_limit": 1,
        "cost_cap": 1,
        "top": [
            {"kind": "budget", "id": "paused", "count": 5, "last_minute": "2027-03-15T10:00:00Z"},
            {"kind": "budget", "id": "team-ml", "count": 2, "last_minute": "2027-03-15T10:30:00Z"},
            {"kind": "cost_cap", "id": "", "count": 1, "last_minute": "2027-03-15T10:00:00Z"},
            {"kind": "rate_limit", "id": "rpm", "count": 1, "last_minute": "2027-03-15T10:30:00Z"},
        ],
    }
    # /refusals: the same counts for any span (by default the same last hour), every budget and limit
    listed = client.get("/ui/api/refusals").json()
    assert listed == env.admin().get("/admin/refusals").json()
    assert {k: listed[k] for k in ("start", "end", "total", "budget")} == {
        "start": "2027-03-15T09:31:00Z",
        "end": "2027-03-15T10:31:00Z",
        "total": 9,
        "budget": 7,
    }
    assert listed["data"] == refusals["top"]
    longer = client.get("/ui/api/refusals?start=2h").json()  # 09:30 counts now
    assert longer["start"] == "2027-03-15T08:30:00Z" and longer["budget"] == 14
    assert longer["data"][0] == {
        "kind": "budget",
        "id": "team-ml",
        "count": 9,
        "last_minute": "2027-03-15T10:30:00Z",
    }
    for bad in ("start=tomorrow", "start=40d", "end=2027-03-15T09:00:00&start=2027-03-15T10:00:00", "x=1"):
        answer = client.get("/ui/api/refusals?" + bad)
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error", bad
    assert env.tally.pending() == 0  # written by the overview
    assert per_minute["budget"][59] == 2 and per_minute["budget"][29] == 5 and sum(per_minute["budget"]) == 7
    assert per_minute["rate_limit"][59] == 1 and per_minute["cost_cap"][29] == 1
    assert all(len(counts) == 60 for counts in per_minute.values())
    env.clock.set(START + timedelta(hours=1))  # an hour on: gone
    assert client.get("/ui/api/overview").json()["refusals"]["total"] == 0


def test_admin_app_alone_reads_the_ledgers_refusal_counts(tmp_path: Path) -> None:
    ledger = open_ledger("memory://", clock=ManualClock(START))
    keys = open_keystore("memory://")
    app = create_admin_app(keys=keys, ledger=ledger, admin_token=lambda: TOKEN)
    view = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}).get("/overview").json()
    assert view["refusals"]["total"] == 0 and view["budgets"] == [] and view["spend"]["today"]["cost"] == "0"
    ledger.add_refusals({(datetime(2027, 3, 15, 10, 30, tzinfo=UTC), "rate_limit", "rpm"): 3})
    view = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}).get("/overview").json()
    assert view["refusals"]["rate_limit"] == 3 and view["refusals"]["top"] == [
        {"kind": "rate_limit", "id": "rpm", "count": 3, "last_minute": "2027-03-15T10:30:00Z"}
    ]


# -- in the gateway -----------------------------------------------------------------------------


def test_the_gateway_serves_the_dashboard(tmp_path: Path) -> None:
    """Mounted at /ui of the gateway's app; a budget paused through /ui/api refuses the next
    request, which the overview counts."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    settings = parse_settings(
        {
            "ledger": url,
            "upstreams": {"nowhere": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "routes": [{"model": "gpt-*", "upstream": "nowhere"}],
            "budgets": [{"id": "global", "limit": "100", "window": "day"}],
        },
        environ={"SPENDGATE_ADMIN_TOKEN": TOKEN},
    )
    clock = ManualClock(START)
    ledger = open_ledger(url, clock=clock)
    store = open_keystore(url)
    try:
        _, secret = store.create(user="alice")
        app = create_app(GatewayState.build(settings, keys=store, ledger=ledger))
        client = TestClient(app, follow_redirects=False)
        root = client.get("/ui")
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        assert client.get("/ui/").headers["location"] == "/ui/login"
        assert login(client).headers["location"] == "/ui/"
        assert client.get("/ui/").status_code == 200
        csrf = client.get("/ui/api/session").json()["csrf"]
        paused = client.patch("/ui/api/budgets/global", json={"limit": "0"}, headers={"X-CSRF-Token": csrf})
        assert paused.status_code == 200 and paused.json()["limit"] == "0"
        before = client.get("/ui/api/overview").json()["refusals"]
        assert before["budget"] == 0
        refused = client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert refused.status_code == 429, refused.text
        after = client.get("/ui/api/overview").json()
        assert after["refusals"]["budget"] == 1 and after["refusals"]["total"] == 1
        assert [(t["kind"], t["id"], t["count"]) for t in after["refusals"]["top"]] == [
            ("budget", "global", 1)
        ]
        assert after["budgets"][0]["id"] == "global" and after["budgets"][0]["limit"] == "0"
        admin = client.get("/admin/overview", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert admin["refusals"] == after["refusals"]
        # the admin token is not a session: /ui/api needs the cookie; /admin the bearer token
        assert client.get("/admin/budgets").status_code == 401
    finally:
        store.close()
        ledger.close()


@pytest.mark.anyio
async def test_a_reload_keeps_sessions_unless_the_token_changes(tmp_path: Path) -> None:
    """The process's sessions outlive a reload (a new GatewayState); a new admin token ends them."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    config: dict[str, Any] = {
        "ledger": url,
        "upstreams": {"nowhere": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "routes": [{"model": "gpt-*", "upstream": "nowhere"}],
    }
    store = open_keystore(url)
    ledger = open_ledger(url, clock=ManualClock(START))
    state = GatewayState.build(
        parse_settings(config, environ={"SPENDGATE_ADMIN_TOKEN": TOKEN}), keys=store, ledger=ledger
    )
    app = create_app(state)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answer = await client.post("/ui/login", content=f"token={TOKEN}", headers=FORM)
            assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
            assert (await client.get("/ui/api/session")).status_code == 200
            app.swap(state.successor(parse_settings(config, environ={"SPENDGATE_ADMIN_TOKEN": TOKEN})))
            assert (await client.get("/ui/api/session")).status_code == 200
            other = "changed-" + "c" * 24
            app.swap(app.state.successor(parse_settings(config, environ={"SPENDGATE_ADMIN_TOKEN": other})))
            assert_error(await client.get("/ui/api/session"), 401, "session_required")
    finally:
        await app.aclose()
        store.close()
        ledger.close()
