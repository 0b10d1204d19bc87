"""Property-based fuzz over the dashboard's routes (``/ui``), through the in-process gateway, as
``tests/gateway/test_fuzz.py`` does for ``/v1`` and ``/admin`` (and with its settings and
strategies).

Requests go to the gateway's ASGI app directly (no HTTP client in between, which would tidy the
path: ``..`` segments, ``%2e%2e``, NUL bytes and very long paths reach the app as a server would
hand them over: ``path`` percent-decoded, ``raw_path`` as sent). For each:

- never a 5xx;
- an error of ``/ui/api`` is JSON in the admin API's shape; every other error has a body;
- without a valid session nothing but the login page and the static files answers 2xx, and a
  static file's answer is one of the files under ``static/``, nothing from outside it;
- a change (any method but GET/HEAD/OPTIONS) without the session's CSRF token, or from another
  origin, changes nothing: the keys, budgets and limits are the same after it, and the session
  is not logged out;
- the ledger holds nothing reserved; the gateway (``/v1`` and ``/ui``) serves afterwards.

Bounded as the gateway's fuzz is (``FUZZ``: fixed examples, derandomized, no database).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import cookie_parser

from gateway.inprocess import ADMIN_TOKEN, InProcessGateway
from gateway.test_fuzz import (
    BASES,
    FUZZ,
    JSON_VALUES,
    RAW_BODIES,
    TEXT,
    Driver,
    Json,
    admin_requests,
    running,
    violations,
)
from gateway_ui.test_ui_server import FORM, TOKEN, Env, assert_error, cookie_header
from spendgate.gateway.ui import STATIC
from spendgate.gateway.ui.session import COOKIE, LoginLimiter, Session, Sessions
from spendgate.money import Money

HOST = "gateway.localhost"
OWN_ORIGIN = f"http://{HOST}"
#: Every file the dashboard may hand out, by content.
STATIC_FILES = frozenset(path.read_bytes() for path in STATIC.rglob("*") if path.is_file())
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


# -- the app, called as a server calls it ---------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: Any, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> Answer:
    """One request to the ASGI app: ``target`` is the request line's (ASCII) path and query."""
    raw_path, _, query = target.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii")),  # as uvicorn does
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": (HOST, 80),
    }
    delivered = False
    finished = asyncio.Event()
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    try:
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
    finally:
        finished.set()
    start = next(m for m in messages if m["type"] == "http.response.start")
    return Answer(
        start["status"],
        [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in start.get("headers", [])],
        b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"),
    )


@dataclass
class Ui:
    """The in-process gateway, a live session of its dashboard, and the calls on its loop."""

    driver: Driver
    cookie: str = ""
    csrf: str = ""

    @property
    def gw(self) -> InProcessGateway:
        return self.driver.gw

    def send(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> Answer:
        async def go() -> Answer:
            return await call(self.gw.app, method, target, headers, body)

        return self.driver.portal.call(go)

    def auth(self) -> tuple[Sessions, LoginLimiter]:
        made = self.gw.app._ui_auth
        assert made is not None
        return made

    def now(self) -> Any:
        return self.gw.state.guard.clock.now()

    def login(self) -> None:
        """A session through the login form (as a browser gets one); its CSRF token."""
        self.auth()[1].succeeded("127.0.0.1")  # forget the fuzz's failed logins
        answer = self.send(
            "POST",
            b"/ui/login",
            [(b"host", HOST.encode()), (b"content-type", b"application/x-www-form-urlencoded")],
            f"token={ADMIN_TOKEN}".encode(),
        )
        assert answer.status == 303 and answer.header("location") == "/ui/", answer
        cookie = answer.header("set-cookie") or ""
        self.cookie = cookie.split(";", 1)[0].split("=", 1)[1]
        info = self.send(
            "GET",
            b"/ui/api/session",
            [(b"host", HOST.encode()), (b"cookie", f"{COOKIE}={self.cookie}".encode())],
        )
        assert info.status == 200, info
        self.csrf = info.json()["csrf"]

    def session_of(self, cookie_header: str | None) -> Session | None:
        """The session the server sees in a ``Cookie`` header (the same parser, the same check)."""
        if cookie_header is None:
            return None
        value = cookie_parser(cookie_header).get(COOKIE)
        return self.auth()[0].verify(value, ADMIN_TOKEN, self.now())

    def alive(self) -> bool:
        return self.session_of(f"{COOKIE}={self.cookie}") is not None

    def snapshot(self) -> tuple[str, ...]:
        """What a change could change: the keys, the budgets (definitions and use), the limits."""

        def take() -> tuple[str, ...]:
            ledger = self.gw.ledger
            return (
                repr(self.gw.store.list()),
                repr(ledger.list_budgets()),
                repr([ledger.get_budget(b.budget_id) for b in ledger.list_budgets()]),
                repr(ledger.limits()),
            )

        return self.driver.portal.call(take)

    def reserved(self) -> Money:
        return self.driver.reserved()


def start(driver: Driver) -> Ui:
    ui = Ui(driver)
    assert ui.send("GET", b"/ui/login", [(b"host", HOST.encode())]).status == 200  # makes the sessions
    ui.login()
    return ui


# -- values ---------------------------------------------------------------------------------------

SEGMENTS = st.sampled_from(
    ["..", "%2e%2e", "%2E%2E", ".%2e", ".", "", "static", "api", "js", "pages", "login", "keys",
     "budgets", "%00", "%2f", "%5c", "..%2f", "..\\", "app.css", "__init__.py", "session.py", "%ff",
     "%c0%ae%c0%ae", "~", "index.html", "%252e%252e", "admin", "gateway", "etc", "passwd"]
)  # fmt: skip
FIXED_TARGETS = st.sampled_from(
    [
        b"/ui", b"/ui/", b"/ui/login", b"/ui/login?error=1", b"/ui/login?error=%ff%00", b"/ui/logout",
        b"/ui/static/app.css", b"/ui/static/js/app.js", b"/ui/static/js/pages/keys.js", b"/ui/static/",
        b"/ui/static", b"/ui/static/../__init__.py", b"/ui/static/../../session.py",
        b"/ui/static/%2e%2e/session.py", b"/ui/static/%2e%2e%2f%2e%2e%2fapp.py",
        b"/ui/static/..%2f..%2f..%2f..%2fpyproject.toml", b"/ui/static/%00", b"/ui/static/app.css%00.py",
        b"/ui/static/js/%2e%2e/%2e%2e/__init__.py", b"/ui/static//etc/passwd", b"/ui/static/%2fetc%2fpasswd",
        b"/ui/static/..%5c__init__.py", b"/ui/static/vendor/", b"/ui/static/index.html?x=%00",
        b"/ui/api", b"/ui/api/", b"/ui/api/session", b"/ui/api/overview", b"/ui/api/budgets",
        b"/ui/api/keys", b"/ui/api/budgets/global", b"/ui/api/budgets/global/reset", b"/ui/api/keys/x/rotate",
        b"/ui/api/limits/a/b/c", b"/ui/api/nothing", b"/ui/api/../../admin/keys", b"/ui/%2e%2e/admin/keys",
        b"/ui/api/%2e%2e/%2e%2e/admin/keys", b"/ui//api/keys", b"/ui/api//keys",
        b"/ui/api/usage/timeseries?bucket=%ff&start=%00", b"/ui/api/requests?limit=-1&cursor=%ff",
        b"/ui/api/alerts/retry", b"/ui/api/openapi.json", b"/ui/login/", b"/ui/logout/", b"/ui/index.html",
    ]
)  # fmt: skip


def _quoted(text: str) -> bytes:
    return quote(text.encode("utf-8", "surrogatepass"), safe="/").encode()


STATIC_TARGETS = st.one_of(
    FIXED_TARGETS.filter(lambda t: t.startswith(b"/ui/static")),
    st.lists(SEGMENTS, min_size=1, max_size=6).map(lambda parts: ("/ui/static/" + "/".join(parts)).encode()),
    TEXT.map(lambda text: b"/ui/static/" + _quoted(text)),
    st.integers(1, 70_000).map(lambda n: b"/ui/static/" + b"a" * n),
)
TARGETS = st.one_of(
    FIXED_TARGETS,
    FIXED_TARGETS,
    st.lists(SEGMENTS, min_size=1, max_size=6).map(lambda parts: ("/ui/" + "/".join(parts)).encode()),
    st.lists(SEGMENTS, min_size=1, max_size=6).map(lambda parts: ("/ui/static/" + "/".join(parts)).encode()),
    TEXT.map(lambda text: b"/ui/static/" + _quoted(text)),
    TEXT.map(lambda text: b"/ui/api/" + _quoted(text)),
    st.integers(1, 70_000).map(lambda n: b"/ui/static/" + b"a" * n),
    st.integers(1, 5_000).map(lambda n: b"/ui/api/limits/" + b"x/" * n),
    st.integers(1, 5_000).map(lambda n: b"/ui/login?" + b"error=1&" * n),
)
METHODS = st.sampled_from(
    ["GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "get"]
)
CHANGES = st.sampled_from(["POST", "POST", "PATCH", "PUT", "DELETE"])
#: Routes of /ui/api that change something; KEY is one of the fuzz's keys (never alice's).
API_CHANGES = st.sampled_from(
    [b"/ui/api/budgets", b"/ui/api/budgets/global", b"/ui/api/budgets/global/reset", b"/ui/api/budgets/team-x",
     b"/ui/api/keys", b"/ui/api/keys/KEY", b"/ui/api/keys/KEY/disable", b"/ui/api/keys/KEY/enable",
     b"/ui/api/keys/KEY/rotate", b"/ui/api/limits", b"/ui/api/limits/fuzz/limit", b"/ui/api/alerts/retry"]
)  # fmt: skip
API_READS = st.sampled_from(
    [b"/ui/api/session", b"/ui/api/overview", b"/ui/api/budgets", b"/ui/api/keys", b"/ui/api/keys/KEY",
     b"/ui/api/limits", b"/ui/api/requests?limit=5", b"/ui/api/usage/timeseries?bucket=hour",
     b"/ui/api/alerts", b"/ui/api/openapi.json", b"/ui/api/budgets/global/forecast"]
)  # fmt: skip
PAGES = st.sampled_from([b"/ui", b"/ui/", b"/ui/login", b"/ui/login?error=expired"])
#: (method, target): the routes' own methods most of the time, anything at all some of it.
REQUESTS = st.one_of(
    st.tuples(st.just("POST"), st.just(b"/ui/login")),
    st.tuples(st.just("POST"), st.just(b"/ui/login")),
    st.tuples(st.just("POST"), st.just(b"/ui/logout")),
    st.tuples(st.sampled_from(["GET", "HEAD"]), PAGES),
    st.tuples(st.sampled_from(["GET", "HEAD"]), STATIC_TARGETS),
    st.tuples(st.sampled_from(["GET", "HEAD"]), API_READS),
    st.tuples(CHANGES, API_CHANGES),
    st.tuples(CHANGES, API_CHANGES),
    st.tuples(CHANGES, API_CHANGES),
    st.tuples(METHODS, TARGETS),
    st.tuples(METHODS, TARGETS),
)

#: A cookie, as a plan (the valid cookie is only known once the gateway runs).
COOKIES = st.one_of(
    st.just(("none",)),
    st.just(("valid",)),
    st.just(("valid",)),
    st.tuples(st.just("tamper"), st.integers(0, 200), st.sampled_from("A0_-.=;\x00é")),
    st.tuples(st.just("truncate"), st.integers(0, 80)),
    st.sampled_from([("expired",), ("other-token",), ("other-secret",), ("longer-life",)]),
    st.tuples(st.just("garbage"), st.binary(max_size=60)),
    st.tuples(st.just("many"), st.integers(1, 300), st.booleans()),
)
CSRFS = st.one_of(
    st.just("valid"),
    st.just("valid"),
    st.sampled_from(["none", "valid+x", "empty", "other", "prefix"]),
    TEXT.map(lambda t: "text:" + t),
)
#: (value, whether it is this gateway's own origin)
ORIGINS = st.sampled_from(
    [
        (None, True), (None, True), (OWN_ORIGIN, True), (f"http://{HOST}:80", True), ("null", False),
        ("http://evil.example", False), (f"http://{HOST}:8080", False), (f"https://{HOST}", False),
        ("http://[::1", False), (f"http://{HOST}@evil.example", False), ("://", False), ("", True),
        (f"http://evil.example/{HOST}", False), (f"http://{HOST}.evil.example", False),
        ("http://GATEWAY.localhost", True), (f"http://{HOST}:99999", False), ("\x00", False),
    ]
)  # fmt: skip
FETCH_SITES = st.sampled_from([(None, True), ("same-origin", True), ("none", True), ("cross-site", False),
                               ("same-site", False), ("", False), ("Same-Origin", False)])  # fmt: skip
CONTENT_TYPES = st.sampled_from(
    [None, "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=latin-1",
     "application/json", "multipart/form-data; boundary=x", "text/plain", "application/x-www-form-urlencodedX",
     "\xff\xfe", ""]
)  # fmt: skip
FORM_BODIES = st.one_of(
    st.just(f"token={ADMIN_TOKEN}".encode()),
    st.just(f"token=a&token={ADMIN_TOKEN}".encode()),
    st.just(f"token={ADMIN_TOKEN}&token=a".encode()),
    st.just(b"token=" + b"a" * 9000),
    st.just(f"x={'y' * 9000}&token={ADMIN_TOKEN}".encode()),
    st.just(b"&".join(b"token=%d" % i for i in range(100))),
    st.just(b"token=\xff\xfe\x00"),
    st.just(b"token=%zz%ff%00"),
    st.just(b"token=sg-" + b"k" * 40),
    st.just(b"token"),
    st.just(b"csrf=valid"),  # replaced by the session's token
    TEXT.map(lambda text: b"token=" + _quoted(text)),
    TEXT.map(lambda text: b"csrf=" + _quoted(text)),
    RAW_BODIES,
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
)
EXTRA_HEADERS = st.lists(
    st.tuples(
        st.sampled_from([b"x-forwarded-proto", b"x-forwarded-for", b"authorization", b"accept", b"if-none-match",
                         b"range", b"if-modified-since", b"accept-encoding", b"x-csrf-token", b"content-length"]),
        st.binary(max_size=40),
    ),
    max_size=3,
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    request: tuple[str, bytes]
    cookie: tuple[Any, ...]
    csrf: str
    origin: tuple[str | None, bool]
    referer: tuple[str | None, bool]
    fetch_site: tuple[str | None, bool]
    content_type: str | None
    body: bytes
    host: bytes | None
    extra: list[tuple[bytes, bytes]]


PLANS = st.builds(
    Plan,
    request=REQUESTS,
    cookie=COOKIES,
    csrf=CSRFS,
    origin=ORIGINS,
    referer=ORIGINS.map(lambda o: (o[0] + "/ui/" if o[0] else o[0], o[1])),
    fetch_site=FETCH_SITES,
    content_type=CONTENT_TYPES,
    body=st.none().map(lambda _: b"") | FORM_BODIES,
    host=st.one_of(*[st.just(HOST.encode())] * 6, st.sampled_from([None, b"evil.example", b"", b"\xff"])),
    extra=EXTRA_HEADERS,
)


def cookie_value(ui: Ui, plan: tuple[Any, ...]) -> str | None:
    """The ``Cookie`` header of a plan (latin-1 text, as the server decodes it)."""
    kind = plan[0]
    valid = ui.cookie
    if kind == "none":
        return None
    if kind == "valid":
        return f"{COOKIE}={valid}"
    if kind == "tamper":
        at = plan[1] % len(valid)
        return f"{COOKIE}={valid[:at]}{plan[2]}{valid[at + 1 :]}"
    if kind == "truncate":
        return f"{COOKIE}={valid[: plan[1]]}"
    if kind == "garbage":
        return f"{COOKIE}={plan[1].decode('latin-1')}"
    if kind == "many":
        others = "; ".join(f"c{i}=v{i}" for i in range(plan[1]))
        return f"{others}; {COOKIE}={valid}" if plan[2] else f"{COOKIE}={valid}; {others}; {COOKIE}=x"
    sessions, _ = ui.auth()
    now = ui.now()
    if kind == "expired":
        value, _ = sessions.issue(ADMIN_TOKEN, now - timedelta(hours=13))
    elif kind == "other-token":
        value, _ = sessions.issue("another-admin-token-000000", now)
    elif kind == "other-secret":
        value, _ = Sessions().issue(ADMIN_TOKEN, now)
    else:  # a longer life, under the old signature
        version, sid, expiry, mac = valid.split(".")
        value = f"{version}.{sid}.{int(expiry) + 86400}.{mac}"
    return f"{COOKIE}={value}"


def csrf_value(ui: Ui, plan: str) -> str | None:
    return {
        "none": None,
        "valid": ui.csrf,
        "valid+x": ui.csrf + "x",
        "empty": "",
        "other": Sessions().csrf(ADMIN_TOKEN, Session("someone-else", ui.now())),
        "prefix": ui.csrf[:-1],
    }.get(plan, plan.removeprefix("text:"))


def headers_of(ui: Ui, plan: Plan) -> tuple[list[tuple[bytes, bytes]], str | None, str | None]:
    """The request's headers, its ``Cookie`` and its ``X-CSRF-Token`` (None: not sent)."""
    headers: list[tuple[bytes, bytes]] = [] if plan.host is None else [(b"host", plan.host)]
    cookie = cookie_value(ui, plan.cookie)
    if cookie is not None:
        headers.append((b"cookie", cookie.encode("latin-1", "replace")))
    csrf = csrf_value(ui, plan.csrf)
    if csrf is not None:
        headers.append((b"x-csrf-token", csrf.encode("utf-8", "surrogatepass")))
    for name, (value, _) in (
        (b"origin", plan.origin),
        (b"referer", plan.referer),
        (b"sec-fetch-site", plan.fetch_site),
    ):
        if value is not None:
            headers.append((name, value.encode()))
    if plan.content_type is not None:
        headers.append((b"content-type", plan.content_type.encode("latin-1")))
    headers += [(k, v) for k, v in plan.extra if k != b"x-csrf-token" or csrf is None]
    return headers, cookie, csrf


def assert_clear_error(answer: Answer, method: str, path: str) -> None:
    assert answer.status < 500, (answer.status, answer.body[:300])
    if answer.status < 400 or method == "HEAD":
        return
    if path.startswith("/ui/api/"):
        ctype = answer.header("content-type") or ""
        assert ctype.startswith("application/json"), (answer.status, ctype, answer.body[:300])
        error = answer.json()["error"]
        assert isinstance(error["message"], str) and error["message"], error
    else:
        assert answer.body, answer


# -- the pages, the files, the login and the checks, with odd input -------------------------------


def test_every_ui_route_with_odd_input(tmp_path: Path) -> None:
    with running(tmp_path) as driver:
        ui = start(driver)
        key = ui.gw.key("tiny").id

        @FUZZ
        @given(PLANS)
        def check(plan: Plan) -> None:
            method, target = plan.request
            target = target.replace(b"KEY", key.encode())
            headers, cookie, csrf = headers_of(ui, plan)
            body = plan.body.replace(b"csrf=valid", f"csrf={ui.csrf}".encode())
            session = ui.session_of(cookie)
            if plan.host != HOST.encode():
                origin_ok = plan.origin[0] in (None, "") and plan.referer[0] in (None, "")
            else:
                origin_ok = plan.origin[1] if plan.origin[0] else plan.referer[1]
            origin_ok = origin_ok and plan.fetch_site[1]
            form_csrf = csrf is None and (plan.content_type or "").startswith(
                "application/x-www-form-urlencoded"
            )
            may_change = session is not None and origin_ok and (csrf == ui.csrf or form_csrf)
            was_alive = ui.alive()
            before = ui.snapshot()

            answer = ui.send(method, target, headers, body)

            path = unquote(target.partition(b"?")[0].decode("ascii"))
            assert_clear_error(answer, method, path)
            if session is None and 200 <= answer.status < 300:
                assert method in ("GET", "HEAD"), (plan, answer.status)
                if path.startswith("/ui/static/"):
                    assert method == "HEAD" or answer.body in STATIC_FILES, (plan, answer.body[:200])
                else:
                    assert path == "/ui/login", (plan, answer.status, answer.body[:200])
            if session is None and path.startswith("/ui/api/"):
                assert answer.status in (401, 404, 405), (plan, answer.status, answer.body[:300])
                if answer.status == 401:
                    assert answer.json()["error"]["code"] == "session_required"
            if session is None and path == "/ui/" and method in ("GET", "HEAD"):
                assert answer.status == 303 and answer.header("location") == "/ui/login", answer
            if method not in _SAFE and not may_change:
                assert ui.snapshot() == before, plan
                if was_alive:
                    assert ui.alive(), ("a refused change logged the session out", plan)
                if path.startswith("/ui/api/") and session is not None:
                    assert answer.status in (403, 404, 405), (plan, answer.status, answer.body[:300])
            if 200 <= answer.status < 300 and path.startswith("/ui/static/"):
                assert method == "HEAD" or answer.body in STATIC_FILES, (plan, answer.body[:200])
            assert ui.reserved() == Money(0)
            if not ui.alive():  # a valid logout (or the fuzz's own): a new session for the next
                ui.login()

        check()
        assert_still_serves(ui)


def assert_still_serves(ui: Ui) -> None:
    """After the fuzz: the dashboard logs in and answers, and /v1 serves."""
    ui.login()
    cookie = (b"cookie", f"{COOKIE}={ui.cookie}".encode())
    host = (b"host", HOST.encode())
    assert ui.send("GET", b"/ui/", [host, cookie]).status == 200
    assert ui.send("GET", b"/ui/api/overview", [host, cookie]).status == 200
    made = ui.send(
        "POST",
        b"/ui/api/keys",
        [host, cookie, (b"x-csrf-token", ui.csrf.encode()), (b"content-type", b"application/json")],
        json.dumps({"user": "after-the-fuzz"}).encode(),
    )
    assert made.status == 201, made
    r = ui.send(
        "POST",
        b"/v1/chat/completions",
        [
            host,
            (b"authorization", f"Bearer {ui.gw.secret('alice')}".encode()),
            (b"content-type", b"application/json"),
        ],
        json.dumps(BASES["/v1/chat/completions"]).encode(),
    )
    assert r.status in (200, 429), r
    assert ui.reserved() == Money(0)


# -- /ui/api with a session: the admin API's operations ------------------------------------------


def test_ui_api_with_a_session_keeps_the_admin_contract(tmp_path: Path) -> None:
    with running(tmp_path) as driver:
        ui = start(driver)
        gw = ui.gw
        limit = {"id": "fuzz/limit", "selector": {"user": "nobody"}, "requests": 5, "per": "1m"}
        made = ui.send(
            "POST",
            b"/ui/api/limits",
            [(b"host", HOST.encode()), (b"cookie", f"{COOKIE}={ui.cookie}".encode()),
             (b"x-csrf-token", ui.csrf.encode()), (b"content-type", b"application/json")],
            json.dumps(limit).encode(),
        )  # fmt: skip
        assert made.status == 201, made
        ids = ["global", *(gw.key(name).id for name in ("mini", "tiny", "off")), "key:" + gw.key("tiny").id,
               "fuzz/limit"]  # fmt: skip

        @FUZZ
        @given(admin_requests(ids))
        def check(request: tuple[str, str, dict[str, str], bytes | None, Json]) -> None:
            method, admin_path, admin_headers, body, op = request
            # The admin token's three cases become the session's: the right CSRF token, none, a wrong one.
            token = admin_headers["authorization"].removeprefix("Bearer ")
            csrf = {ADMIN_TOKEN: ui.csrf, "": None}.get(token, "wrong")
            path = "/ui/api" + admin_path.removeprefix("/admin")
            headers = [(b"host", HOST.encode()), (b"cookie", f"{COOKIE}={ui.cookie}".encode()),
                       (b"content-type", b"application/json")]  # fmt: skip
            if csrf is not None:
                headers.append((b"x-csrf-token", csrf.encode()))
            before = ui.snapshot()

            answer = ui.send(method, path.encode("ascii"), headers, body or b"")

            assert answer.status < 500, (answer.status, answer.body[:300])
            if path == "/ui/api" and answer.status == 307:  # the mount's own slash (/admin: 404)
                assert answer.header("location") == f"{OWN_ORIGIN}/ui/api/", answer
                return
            assert (answer.header("content-type") or "").startswith("application/json"), answer
            result = answer.json()
            if method not in _SAFE and csrf != ui.csrf:
                assert ui.snapshot() == before, (method, path)
                assert answer.status in (403, 404, 405), (method, path, answer.status, result)
                if answer.status == 403:
                    assert result["error"]["code"] == "csrf_failed", result
            elif op is None:
                assert answer.status in (404, 405) and not violations(
                    result, {"$ref": "#/components/schemas/Error"}
                ), (method, path, answer.status, result)
            else:
                documented = op["responses"].get(str(answer.status))
                assert documented is not None, (
                    f"{method} {path} answered an undocumented {answer.status}: {result}"
                )
                problems = violations(result, documented["content"]["application/json"]["schema"])
                assert not problems, (method, path, answer.status, problems, result)
            assert ui.reserved() == Money(0)

        check()
        driver.portal.call(lambda: [gw.ledger.remove_limit(made.id) for made in gw.ledger.limits()])
        assert_still_serves(ui)


# -- what the fuzz's oracle relies on ----------------------------------------------------------


def test_the_oracle_sees_the_session_as_the_server_does(tmp_path: Path) -> None:
    """The fuzz's own view of a cookie header (``Ui.session_of``) against the server's answer."""
    with running(tmp_path) as driver:
        ui = start(driver)
        cases: list[tuple[str, Callable[[str], str]]] = [
            ("valid", lambda c: f"{COOKIE}={c}"),
            ("last wins", lambda c: f"{COOKIE}={c}; {COOKIE}=x"),
            ("first loses", lambda c: f"{COOKIE}=x; {COOKIE}={c}"),
            ("garbage", lambda c: f"{COOKIE}=\xff\x00"),
        ]
        for name, header in cases:
            value = header(ui.cookie)
            answer = ui.send(
                "GET", b"/ui/api/session", [(b"host", HOST.encode()), (b"cookie", value.encode("latin-1"))]
            )
            assert (answer.status == 200) == (ui.session_of(value) is not None), name


# -- regressions --------------------------------------------------------------------------------


def test_another_site_cannot_log_anyone_out() -> None:
    """A cross-site form POST to /ui/logout carries no cookie (SameSite=Strict), but its answer
    cleared the cookie all the same: a forced logout. Now refused before anything, as the login
    is; the same site's logout without a session (an expired one) still clears the cookie."""
    env = Env("memory://")
    try:
        client, csrf = env.logged_in()
        cookie = client.cookies["spendgate_session"]
        anon = env.client()
        for foreign in (
            {"Origin": "https://evil.example"},
            {"Referer": "https://evil.example/x"},
            {"Origin": "null"},
        ):
            answer = anon.post("/ui/logout", content=b"", headers={**FORM, **foreign})
            assert_error(answer, 403, "origin_mismatch")
            assert "set-cookie" not in answer.headers
        # with the cookie and the CSRF token, from another site: refused, the session lives
        answer = client.post("/ui/logout", headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"})
        assert_error(answer, 403, "origin_mismatch")
        assert client.get("/ui/api/session").status_code == 200
        assert client.cookies["spendgate_session"] == cookie
        # the same site, no session: the cookie is cleared as before
        answer = anon.post("/ui/logout", headers={"Origin": "http://testserver"})
        assert answer.status_code == 303 and "Max-Age=0" in cookie_header(answer)
    finally:
        env.keys.close()
        env.ledger.close()


def test_a_form_of_many_fields_is_a_failed_login_not_a_500() -> None:
    """parse_qs raised past its 20 fields (found by the fuzz): a 500 on the login form."""
    env = Env("memory://")
    try:
        client = env.client()
        body = "&".join(f"f{i}=x" for i in range(25)) + f"&token={TOKEN}"
        answer = client.post("/ui/login", content=body.encode(), headers=FORM)
        assert answer.status_code == 303 and "error=" in answer.headers["location"], answer.text
        assert client.get("/ui/api/session").status_code == 401  # no session
        answer = client.post(
            "/ui/logout", content=body.encode(), headers={**FORM, "Origin": "http://testserver"}
        )
        assert answer.status_code in (303, 403), answer.text
    finally:
        env.keys.close()
        env.ledger.close()
