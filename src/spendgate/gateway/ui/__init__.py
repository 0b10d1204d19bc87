"""The dashboard, mounted by the gateway at ``/ui`` (``docs/ui.md``: the URLs, the security model).

Pages and static files come from ``static/`` in this package (shipped in the wheel). The data
is the admin API itself: ``/ui/api/<path>`` is ``/admin/<path>``, the same handlers
(``spendgate.gateway.admin.routes``) behind the session cookie and the CSRF check instead of the
bearer token, so the dashboard, the CLI and the API show the same numbers.

Every answer carries a strict Content-Security-Policy (scripts and styles from this origin
only: no inline script runs), ``nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy:
same-origin``, and ``Cache-Control: no-store`` (pages and API; static files revalidate).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from spendgate.clock import Clock, SystemClock
from spendgate.forecasting import ForecastCache
from spendgate.gateway.admin import admin_context, routes
from spendgate.gateway.admin.context import nothing_to_flush
from spendgate.gateway.admin.errors import error_response, unmatched
from spendgate.gateway.keys import SECRET_PREFIX, KeyStore
from spendgate.gateway.ui.session import COOKIE, LoginLimiter, Session, Sessions
from spendgate.gateway.views import iso
from spendgate.ledger import Ledger

__all__ = ["CSP", "STATIC", "LoginLimiter", "Sessions", "create_ui_app"]

log = logging.getLogger("spendgate.gateway.ui")

#: The package's static files: the pages, scripts, styles and the chart library.
STATIC: Final = Path(__file__).parent / "static"
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_SAFE: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_FORM: Final = 8192
_HEADERS: Final = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


@dataclass(frozen=True)
class UiContext:
    """What the dashboard's own checks need (``app.state.ui`` of the UI and its API app)."""

    admin_token: Callable[[], str | None]
    sessions: Sessions
    limiter: LoginLimiter
    clock: Clock

    def session(self, request: Request) -> Session | None:
        return self.sessions.verify(request.cookies.get(COOKIE), self.admin_token(), self.clock.now())


def _ui(request: Request) -> UiContext:
    ctx = request.app.state.ui
    assert isinstance(ctx, UiContext)
    return ctx


def _base(request: Request) -> str:
    """The dashboard's own path: ``/ui`` (behind a path prefix: that prefix too)."""
    return str(request.scope.get("root_path", "")).rstrip("/") or "/ui"


# -- the checks -------------------------------------------------------------------------------


def _default_port(scheme: str) -> str:
    return "443" if scheme in ("https", "wss") else "80"


def same_origin(request: Request) -> bool:
    """False when the request's ``Origin`` (else ``Referer``) names another site than the one
    it was sent to (its ``Host``); True when it matches or the browser sent neither. A
    ``Sec-Fetch-Site`` other than same-origin is refused too. Schemes are not compared: a TLS
    proxy in front makes the gateway see http for an https page."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    if source == "null":
        return False
    host = request.headers.get("host", "")
    try:
        given = urlsplit(source)
        own = urlsplit(f"{request.url.scheme}://{host}")
        if not given.hostname or given.hostname != own.hostname:
            return False
        if given.port is None and own.port is None:
            return True
        return str(given.port or _default_port(given.scheme)) == str(own.port or _default_port(own.scheme))
    except ValueError:
        return False


def _csrf_refusal(request: Request, ctx: UiContext, session: Session, given: str | None) -> Response | None:
    if not same_origin(request):
        return error_response(
            403, "dashboard: this request came from another site", "permission_error", "origin_mismatch"
        )
    token = ctx.admin_token()
    if token is None or not ctx.sessions.csrf_ok(token, session, given):
        return error_response(
            403,
            "dashboard: send the X-CSRF-Token header from /ui/api/session",
            "permission_error",
            "csrf_failed",
        )
    return None


def session_check(request: Request) -> Response | None:
    """The check of every ``/ui/api`` route: a live session; a change needs its CSRF token and
    a same-origin ``Origin``/``Referer``."""
    ctx = _ui(request)
    session = ctx.session(request)
    if session is None:
        return error_response(
            401, "dashboard: log in at /ui/login", "authentication_error", "session_required"
        )
    if request.method in _SAFE:
        return None
    return _csrf_refusal(request, ctx, session, request.headers.get("x-csrf-token"))


# -- pages --------------------------------------------------------------------------------------


def _page(name: str) -> Response:
    path = STATIC / name
    if not path.is_file():
        return Response(f"{name} is missing from the package", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type="text/html; charset=utf-8")


async def index(request: Request) -> Response:
    if _ui(request).session(request) is None:
        return RedirectResponse(f"{_base(request)}/login", status_code=303)
    return _page("index.html")


async def login_page(request: Request) -> Response:
    return _page("login.html")


async def _form(request: Request) -> dict[str, str] | None:
    """The url-encoded form of the body (its first value per name), or None past ``_MAX_FORM``
    bytes or 20 fields (the login form has one, the logout form one)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            return None
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20)
    except ValueError:  # more fields than that: no form of ours
        return None
    return {name: values[0] for name, values in fields.items()}


def _secure(request: Request) -> bool:
    """Whether to mark the cookie ``Secure``: the request came over https, or through a proxy
    that says so (``X-Forwarded-Proto``: trusted for this alone, since it can only make the
    cookie stricter for the one who sent it)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _cookie(request: Request, value: str, max_age: int) -> str:
    parts = [
        f"{COOKIE}={value}",
        f"Max-Age={max_age}",
        f"Path={_base(request)}",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if _secure(request):
        parts.append("Secure")
    return "; ".join(parts)


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "?"


async def login(request: Request) -> Response:
    """The login form's post: the admin token, compared in constant time."""
    ctx = _ui(request)
    base = _base(request)
    if not same_origin(request):
        return error_response(
            403, "dashboard: this request came from another site", "permission_error", "origin_mismatch"
        )
    now = ctx.clock.now()
    address = _client(request)
    wait = ctx.limiter.retry_after(address, now)
    if wait is not None:
        return RedirectResponse(
            f"{base}/login?error=rate", status_code=303, headers={"Retry-After": str(wait)}
        )
    form = await _form(request)
    given = (form or {}).get("token", "").strip()
    expected = ctx.admin_token()
    if expected and given and hmac.compare_digest(given.encode(), expected.encode()):
        ctx.limiter.succeeded(address)
        value, _ = ctx.sessions.issue(expected, now)
        response = RedirectResponse(f"{base}/", status_code=303)
        response.headers.append("set-cookie", _cookie(request, value, int(ctx.sessions.ttl.total_seconds())))
        log.info("dashboard: login from %s", address)
        return response
    ctx.limiter.failed(address, now)
    if not expected:
        log.warning("dashboard: a login, but no admin token is set (SPENDGATE_ADMIN_TOKEN)")
    why = "key" if given.startswith(SECRET_PREFIX) else "1"
    return RedirectResponse(f"{base}/login?error={why}", status_code=303)


async def logout(request: Request) -> Response:
    """Ends the session (revoked here, the cookie cleared); needs its CSRF token (header or form
    field ``csrf``), and is refused from another site even without a session."""
    ctx = _ui(request)
    if not same_origin(request):
        # Even without a session: another site's form would otherwise clear the cookie (a
        # forced logout: SameSite keeps the cookie from being sent, not from being cleared).
        return error_response(
            403, "dashboard: this request came from another site", "permission_error", "origin_mismatch"
        )
    session = ctx.session(request)
    if session is not None:
        given = request.headers.get("x-csrf-token")
        if given is None and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            given = ((await _form(request)) or {}).get("csrf")
        refused = _csrf_refusal(request, ctx, session, given)
        if refused is not None:
            return refused
        ctx.sessions.revoke(session, ctx.clock.now())
    response = RedirectResponse(f"{_base(request)}/login", status_code=303)
    response.headers.append("set-cookie", _cookie(request, "", 0))
    return response


async def session_info(request: Request) -> Response:
    """``/ui/api/session``: the CSRF token of the session, and when it ends."""
    ctx = _ui(request)
    session = ctx.session(request)
    token = ctx.admin_token()
    if session is None or token is None:
        return error_response(
            401, "dashboard: log in at /ui/login", "authentication_error", "session_required"
        )
    return JSONResponse({"csrf": ctx.sessions.csrf(token, session), "expires_at": iso(session.expires_at)})


# -- the app ------------------------------------------------------------------------------------


class _SecurityHeaders:
    """Adds the security headers to every answer; ``Cache-Control: no-store`` except for
    static files (``no-cache``: kept, revalidated by their ETag)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        static = path.removeprefix(root).startswith("/static/")
        cache = b"no-cache" if static else b"no-store"

        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"cache-control", *(name for name, _ in _HEADERS))
                ]
                message["headers"] = [*headers, *_HEADERS, (b"cache-control", cache)]
            await send(message)

        await self.app(scope, receive, headed)


def create_ui_app(
    *,
    keys: KeyStore,
    ledger: Ledger,
    admin_token: Callable[[], str | None],
    config_budgets: Callable[[], frozenset[str]] = frozenset,
    config_limits: Callable[[], frozenset[str]] = frozenset,
    flush_refusals: Callable[[], None] = nothing_to_flush,
    forecasts: ForecastCache | None = None,
    sessions: Sessions | None = None,
    limiter: LoginLimiter | None = None,
    clock: Clock | None = None,
) -> ASGIApp:
    """The dashboard as an ASGI app (mount it at ``/ui``). The arguments are the admin app's
    (``create_admin_app``), plus ``sessions`` and ``limiter`` (pass the same ones to successive
    apps of one process: a reload that keeps the admin token keeps the sessions) and ``clock``
    (sessions' expiry and the login limit; default the ledger's)."""
    ui = UiContext(
        admin_token=admin_token,
        sessions=sessions if sessions is not None else Sessions(),
        limiter=limiter if limiter is not None else LoginLimiter(),
        clock=clock if clock is not None else getattr(ledger, "clock", None) or SystemClock(),
    )
    api = Starlette(
        routes=[Route("/session", session_info, methods=["GET"]), *routes(session_check)],
        exception_handlers={HTTPException: unmatched},
    )
    api.state.admin = admin_context(
        keys=keys,
        ledger=ledger,
        admin_token=admin_token,
        config_budgets=config_budgets,
        config_limits=config_limits,
        flush_refusals=flush_refusals,
        forecasts=forecasts,
    )
    api.state.ui = ui
    app = Starlette(
        routes=[
            Route("/", index, methods=["GET", "HEAD"]),
            Route("/login", login_page, methods=["GET", "HEAD"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=STATIC, check_dir=False)),
            Mount("/api", app=api),
        ],
    )
    app.state.ui = ui
    return _SecurityHeaders(app)
