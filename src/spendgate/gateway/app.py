"""The gateway's ASGI app: the /v1 proxy routes, models, health, metrics, the admin API and the
dashboard (``/ui``, ``spendgate.gateway.ui``).

The /v1 POST routes are dispatched by a dict lookup straight to ``proxy.handle``
(measured: a framework router and Request/Response objects cost more than the
rest of the gateway's own work on a call); everything else goes through a
Starlette router.

``/readyz`` proves the write path: a probe write committed through the
ledger's own writer (``Readiness``: at most one per second, the answer shared
by the calls in between), so a gateway whose ledger cannot record a request is
taken out of rotation instead of answering 200.

A ``GatewayState`` is everything a request needs (settings, guard, keys, the
upstream client, metrics). A reload builds a new one and swaps it in with one
assignment: a request takes the state once, when it starts, and keeps it to
the end, so in-flight requests finish with the settings they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, Router

from spendgate import telemetry
from spendgate.alerts.dispatcher import AlertDispatcher
from spendgate.alerts.forecasts import forecast_alerts
from spendgate.clock import Clock
from spendgate.forecasting import ForecastCache, start_warming
from spendgate.gateway import proxy
from spendgate.gateway.metrics import CONTENT_TYPE, Metrics
from spendgate.gateway.settings import GatewaySettings, Upstream, VirtualKey
from spendgate.gateway.upstream_client import UpstreamClient, UpstreamResponse
from spendgate.guard import Guard
from spendgate.ledger import Ledger, open_ledger
from spendgate.pricing.catalog import Catalog

if TYPE_CHECKING:
    from spendgate.gateway.ui.session import LoginLimiter, Sessions

log = logging.getLogger("spendgate.gateway")

ASGIApp = Callable[[proxy.Scope, proxy.Receive, proxy.Send], Awaitable[None]]

MAX_LISTED_MODELS = 1000
_GLOB = frozenset("*?[")


class KeyLookup(Protocol):
    """What the proxy needs of a key store (``spendgate.gateway.keys.KeyStore`` has it)."""

    def authenticate(self, secret: str) -> VirtualKey | None: ...


class UpstreamCaller(Protocol):
    """What the proxy needs of an upstream client: ``UpstreamClient`` in production; tests pass
    one that answers in process (``GatewayState.build(client=...)``)."""

    async def open(
        self, upstream: Upstream, path: str, body: bytes, forwarded: Iterable[tuple[str, str]]
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class NoKeys:
    """A key store that knows no key (the store could not be opened, or keys are not used)."""

    def authenticate(self, secret: str) -> VirtualKey | None:
        return None


class Readiness:
    """``/readyz``'s answer: the ledger's write probe, run at most once per ``interval``.

    A probe is a real committed write through the ledger's asyncio writer (SQLite: the group
    commit that requests use). Calls within ``interval`` of the last probe, by ``clock`` (the
    ledger's, so tests move it by hand), get its result; calls while one runs wait for it, so
    a load balancer polling hard costs the ledger one small write a second. A probe that takes
    longer than ``timeout`` seconds counts as failed: a ledger that slow cannot serve either.
    """

    def __init__(self, ledger: Ledger, clock: Clock, *, interval: float = 1.0, timeout: float = 2.0) -> None:
        self.ledger = ledger
        self.clock = clock
        self.interval = timedelta(seconds=interval)
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._checked: datetime | None = None
        self._problem: str | None = None
        self._kind = ""

    async def check(self) -> tuple[str, str] | None:
        """None when the ledger took a write; else (the error's type name, what went wrong)."""
        async with self._lock:
            now = self.clock.now()
            if self._checked is None or not (self._checked <= now < self._checked + self.interval):
                self._kind, self._problem = await self._probe()
                self._checked = now
            return None if self._problem is None else (self._kind, self._problem)

    async def _probe(self) -> tuple[str, str | None]:
        try:
            await asyncio.wait_for(self.ledger.acheck_writable(), self.timeout)
        except TimeoutError:
            problem = f"the ledger did not commit a probe write within {self.timeout:g} s"
            log.warning("readyz: %s", problem)
            return "TimeoutError", problem
        except Exception as exc:
            log.warning("readyz: the ledger cannot take a write: %s", exc)
            return type(exc).__name__, str(exc)
        return "", None


@dataclass(eq=False)
class GatewayState:
    settings: GatewaySettings
    guard: Guard
    keys: KeyLookup
    client: UpstreamCaller
    metrics: Metrics
    #: Closed by ``aclose`` (False when shared with the state that replaced this one).
    owns_ledger: bool = True
    owns_client: bool = True
    #: ``keys.alookup`` when the store has it (disabled and expired keys too: precise 401s; a
    #: cache miss reads on a thread), else its ``lookup`` or ``authenticate``.
    find_key: Callable[[str], Awaitable[VirtualKey | None]] = field(init=False, repr=False)
    readiness: Readiness = field(init=False, repr=False)
    _models: list[tuple[str, str]] | None = field(default=None, repr=False)
    _admin: ASGIApp | None = field(default=None, repr=False)
    _admin_tried: bool = field(default=False, repr=False)
    _ui: ASGIApp | None = field(default=None, repr=False)
    _ui_tried: bool = field(default=False, repr=False)
    _forecasts: ForecastCache | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        alookup = getattr(self.keys, "alookup", None)
        if callable(alookup):
            self.find_key = alookup
        else:
            lookup = getattr(self.keys, "lookup", None)
            find: Callable[[str], VirtualKey | None] = lookup if callable(lookup) else self.keys.authenticate

            async def find_key(secret: str) -> VirtualKey | None:
                return find(secret)

            self.find_key = find_key
        self.readiness = Readiness(self.guard.ledger, self.guard.clock)

    @classmethod
    def build(
        cls,
        settings: GatewaySettings,
        *,
        keys: KeyLookup | None = None,
        metrics: Metrics | None = None,
        client: UpstreamCaller | None = None,
        ledger: Ledger | None = None,
        catalog: Catalog | None = None,
    ) -> GatewayState:
        """A state for ``settings``; ``ledger``/``client``/``metrics`` are reused when given."""
        owns_ledger = ledger is None
        if ledger is None:
            ledger = open_ledger(settings.ledger, budgets=settings.budgets)
        if catalog is None:
            catalog = Catalog.default()
            if settings.default_price is not None:
                # set_price validates the config shape; the default is not a model, so it goes again.
                catalog.default_price = catalog.set_price("spendgate-default-price", settings.default_price)
                catalog.remove_price("spendgate-default-price")
            catalog.unknown_model = settings.unknown_model
        if settings.prices:
            catalog.apply_overrides(settings.prices)
        guard = Guard(
            ledger,
            budgets=settings.budgets,
            limits=settings.limits,  # put into the ledger (a limit's window counts are kept)
            catalog=catalog,
            on_exceed=settings.on_exceed,
            max_wait=settings.max_wait,
            lease=settings.lease,
            default_max_output_tokens=settings.default_max_output_tokens,
            refusal_interval=settings.refusal_interval,
        )
        if metrics is None:
            metrics = Metrics()
        # Only these names become model labels (clients choose the rest: unbounded).
        exact = [r.model for r in settings.routes if not any(c in r.model for c in "*?[")]
        exact += [r.upstream_model for r in settings.routes if r.upstream_model]
        metrics.known_models(exact, catalog)
        return cls(
            settings=settings,
            guard=guard,
            keys=keys if keys is not None else NoKeys(),
            client=client if client is not None else UpstreamClient(),
            metrics=metrics,
            owns_ledger=owns_ledger,
            owns_client=client is None,
        )

    def successor(self, settings: GatewaySettings, *, keys: KeyLookup | None = None) -> GatewayState:
        """The state for reloaded ``settings``: the same client, metrics and, when its URL is
        unchanged, the same ledger and keys (ownership moves to the successor).

        A rate limit the old config defined and the new one does not is removed from the
        ledger (the config is its source: a limit left behind would keep refusing requests
        nobody configured it for); limits made through the admin API are not touched."""
        same_ledger = settings.ledger == self.settings.ledger
        new = GatewayState.build(
            settings,
            keys=keys if keys is not None else (self.keys if same_ledger else None),
            metrics=self.metrics,
            client=self.client,
            ledger=self.ledger if same_ledger else None,
        )
        new.owns_client, self.owns_client = self.owns_client, False
        if same_ledger:
            new.owns_ledger, self.owns_ledger = self.owns_ledger, False
            kept = {limit.id for limit in settings.limits}
            for limit in self.settings.limits:
                if limit.id in kept:
                    continue
                try:
                    if new.ledger.remove_limit(limit.id):
                        log.warning("reload: removed limit %r (no longer in the config)", limit.id)
                except Exception:  # the reload stands; the limit stays until removed by hand
                    log.exception("reload: could not remove limit %r from the ledger", limit.id)
        return new

    @property
    def ledger(self) -> Ledger:
        return self.guard.ledger

    def routed_models(self) -> list[tuple[str, str]]:
        """(model, upstream) for every exact route, and catalog models that glob routes match."""
        if self._models is None:
            settings = self.settings
            seen: dict[str, str] = {}
            for route in settings.routes:
                if route.upstream not in settings.upstreams:
                    continue
                if not _GLOB.intersection(route.model):
                    seen.setdefault(route.model, route.upstream)
                    continue
                for price in self.guard.catalog.models():
                    if len(seen) >= MAX_LISTED_MODELS:
                        break
                    if route.matches(price.name):
                        seen.setdefault(price.name, route.upstream)
            self._models = sorted(seen.items())[:MAX_LISTED_MODELS]
        return self._models

    def _admin_args(self, what: str) -> dict[str, Any] | None:
        """What the admin API and the dashboard are built from; None (and why, logged) without
        a key store."""
        from spendgate.gateway.keys import KeyStore

        if not isinstance(self.keys, KeyStore):
            log.warning("no key store: %s is off", what)
            return None
        token = self.settings.admin_token
        # Deleting one of these through the API would not last: every start and reload
        # of the gateway puts the config's budgets (and limits) back.
        configured = frozenset(budget.id for budget in self.settings.budgets)
        configured_limits = frozenset(limit.id for limit in self.settings.limits)
        tally, ledger = self.guard.refusals, self.guard.ledger
        if self._forecasts is None:  # one for /admin and /ui/api: a forecast kept for one serves both
            # over the process's hourly series, shared with /metrics' forecasts and the alerts
            self._forecasts = ForecastCache(history=self.metrics.forecasts.history)
        return {
            "keys": self.keys,
            "ledger": self.ledger,
            "admin_token": lambda: token,
            "config_budgets": lambda: configured,
            "config_limits": lambda: configured_limits,
            "forecasts": self._forecasts,
            # The overview writes this process's refusal counts before it reads everyone's.
            "flush_refusals": lambda: tally.flush(ledger),
        }

    def admin_app(self) -> ASGIApp | None:
        if not self._admin_tried:
            self._admin_tried = True
            try:
                from spendgate.gateway.admin import create_admin_app
            except ImportError:
                log.info("spendgate.gateway.admin is not available: /admin is off")
                return None
            args = self._admin_args("/admin")
            if args is not None:
                self._admin = create_admin_app(**args)
        return self._admin

    def ui_app(self, sessions: Sessions, limiter: LoginLimiter) -> ASGIApp | None:
        """The dashboard (``spendgate.gateway.ui``) over this state; ``sessions`` and ``limiter``
        are the process's (``GatewayApp``'s), so a reload keeps sessions and failed logins."""
        if not self._ui_tried:
            self._ui_tried = True
            from spendgate.gateway.ui import create_ui_app

            args = self._admin_args("/ui")
            if args is not None:
                self._ui = create_ui_app(**args, sessions=sessions, limiter=limiter, clock=self.guard.clock)
        return self._ui

    async def aclose(self) -> None:
        if self.guard.refusals.pending():  # written before the ledger closes (a blocking write)
            await asyncio.to_thread(self.guard.refusals.flush, self.guard.ledger)
        self.guard.close()  # unsubscribes; the guard never owns a ledger passed to it
        if self.owns_client:
            await self.client.aclose()
        if self.owns_ledger:
            await self.ledger.aclose()  # its asyncio connections belong to this loop
        closer = getattr(self.keys, "close", None)
        if callable(closer) and self.owns_ledger:
            closer()


class GatewayApp:
    """The ASGI app. ``swap(state)`` replaces the state for requests that start afterwards."""

    def __init__(self, source: GatewayState | Callable[[], GatewayState]) -> None:
        self._factory: Callable[[], GatewayState] | None = None
        self._state: GatewayState | None = None
        if isinstance(source, GatewayState):
            self._state = source
        else:
            self._factory = source
        self._inflight: dict[GatewayState, int] = {}
        self._telemetry = False  # this app started telemetry (lifespan), so it shuts it down
        self._alerts: AlertDispatcher | None = None  # started by the lifespan (docs/alerts.md)
        self._sweeper: asyncio.Task[None] | None = None  # the refusal counts' writer (lifespan)
        self._retired: list[GatewayState] = []
        # The dashboard's sessions and failed-login counts (spendgate.gateway.ui): the process's,
        # kept across reloads; made at the first /ui request.
        self._ui_auth: tuple[Sessions, LoginLimiter] | None = None
        self._router = Router(
            routes=[
                _Route("/healthz", self._healthz, methods=["GET", "HEAD"]),
                _Route("/readyz", self._readyz, methods=["GET", "HEAD"]),
                _Route("/metrics", self._metrics, methods=["GET"]),
                _Route("/v1/models", self._models, methods=["GET"]),
                Mount("/admin", app=self._admin),
                _Route("/ui", self._ui_root, methods=["GET", "HEAD"]),
                Mount("/ui", app=self._ui),
            ],
            default=proxy.unmatched,
            redirect_slashes=False,  # a redirect is no answer an API client reads: a JSON 404
        )

    @property
    def state(self) -> GatewayState:
        if self._state is None:
            assert self._factory is not None
            self._state = self._factory()
        return self._state

    def swap(self, new: GatewayState) -> GatewayState:
        """Make ``new`` the state of new requests; the old one closes once its requests end."""
        old = self.state
        self._state = new
        if old is not new:
            if self._alerts is not None and (
                new.settings.alerts != old.settings.alerts or new.guard.ledger is not old.guard.ledger
            ):
                self._stop_alerts()
                self._start_alerts(new)
            self._retired.append(old)
            self._close_idle()
        return old

    def _start_alerts(self, state: GatewayState) -> None:
        forecaster = partial(forecast_alerts, history=state.metrics.forecasts.history)
        dispatcher = state.settings.alerts.dispatcher(state.guard.ledger, forecaster=forecaster)
        if dispatcher is not None:
            dispatcher.start()
        self._alerts = dispatcher

    def _stop_alerts(self) -> None:
        # Waits at most for one delivery in progress (its send timeout): a reload or shutdown
        # is rare, and a delivery cut short is only re-sent after its lease.
        if self._alerts is not None:
            self._alerts.stop()
            self._alerts = None

    def _close_idle(self) -> None:
        for old in list(self._retired):
            if not self._inflight.get(old):
                self._retired.remove(old)
                task = asyncio.get_running_loop().create_task(old.aclose())
                task.add_done_callback(_log_failure)

    async def aclose(self) -> None:
        for old in self._retired:
            await old.aclose()
        self._retired.clear()
        if self._state is not None:
            await self._state.aclose()

    async def __call__(self, scope: proxy.Scope, receive: proxy.Receive, send: proxy.Send) -> None:
        kind = scope["type"]
        if kind == "http":
            spec = proxy.ENDPOINTS.get(scope["path"])
            if spec is not None and scope["method"] != "POST":
                await proxy.unmatched(scope, receive, send, allowed="POST")
                return
            if spec is not None:
                state = self.state  # taken once: a reload does not change it under this request
                counts = self._inflight
                counts[state] = counts.get(state, 0) + 1
                try:
                    await proxy.handle(state, spec, scope, receive, send)
                finally:
                    left = counts[state] - 1
                    if left:
                        counts[state] = left
                    else:
                        del counts[state]
                        if self._retired:
                            self._close_idle()
                return
            await self._router(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self._router(scope, receive, send)

    async def _lifespan(self, receive: proxy.Receive, send: proxy.Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    telemetry_settings = self.state.settings.telemetry
                    if telemetry_settings is not None:  # read at start: a reload does not change it
                        telemetry.start(telemetry_settings)
                        self._telemetry = True
                    self._start_alerts(self.state)
                    if self.state.settings.admin_token:  # the dashboard's first forecasts, off the loop
                        start_warming(self.state.metrics.forecasts.history, self.state.ledger)
                    self._sweeper = asyncio.get_running_loop().create_task(self._sweep_refusals())
                except Exception as exc:
                    log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # uvicorn calls this after in-flight requests finished (and settled).
                try:
                    if self._sweeper is not None:
                        self._sweeper.cancel()
                        self._sweeper = None
                    await asyncio.to_thread(self._stop_alerts)  # before the ledger closes
                    await self.aclose()
                    if self._telemetry:  # export what is queued (spans, a last metric export)
                        self._telemetry = False
                        await asyncio.to_thread(telemetry.shutdown)
                except Exception as exc:
                    log.exception("gateway shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _sweep_refusals(self) -> None:
        """Every ``refusal_interval``: write the refusal counts this process still holds. A
        refusal writes them itself when a write is due; this catches the last ones before a
        quiet spell, so the overview of any process sees them within the interval."""
        while True:
            state = self.state
            await asyncio.sleep(max(state.settings.refusal_interval, 0.5))
            tally = state.guard.refusals
            if tally.claim():
                await asyncio.to_thread(tally.flush, state.guard.ledger)  # logs its own failure

    # -- the other routes -------------------------------------------------------------------
    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        failed = await self.state.readiness.check()
        if failed is not None:
            kind, reason = failed
            return JSONResponse({"status": "unavailable", "ledger": kind, "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready", "ledger": "writable"})

    async def _metrics(self, request: Request) -> Response:
        state = self.state
        token = state.settings.metrics_token
        if token is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse(
                    {
                        "error": {
                            "message": "metrics: send Authorization: Bearer <metrics token>",
                            "type": "invalid_request_error",
                            "code": "invalid_metrics_token",
                        }
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        await state.metrics.forecasts.refresh(state.ledger)  # on a thread, at most every minute
        return Response(state.metrics.render(state.ledger), media_type=CONTENT_TYPE)

    async def _models(self, request: Request) -> Response:
        state = self.state
        secret: str | None = None
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            secret = auth[7:].strip() or None
        secret = secret or request.headers.get("x-api-key") or None
        try:
            key = await proxy._authenticate(state, secret)
        except proxy.GatewayError as err:
            return JSONResponse(err.payload(False), status_code=err.status)
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": upstream}
            for model, upstream in state.routed_models()
            if key is None or key.allows(model)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _admin(self, scope: proxy.Scope, receive: proxy.Receive, send: proxy.Send) -> None:
        app = self.state.admin_app()
        if app is None:
            response = JSONResponse(
                {"error": {"message": "The admin API is not available."}}, status_code=404
            )
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    async def _ui_root(self, request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/", status_code=307)

    async def _ui(self, scope: proxy.Scope, receive: proxy.Receive, send: proxy.Send) -> None:
        if self._ui_auth is None:
            from spendgate.gateway.ui import LoginLimiter, Sessions

            self._ui_auth = (Sessions(), LoginLimiter())
        app = self.state.ui_app(*self._ui_auth)
        if app is None:
            response = JSONResponse(
                {"error": {"message": "The dashboard is not available."}}, status_code=404
            )
            await response(scope, receive, send)
            return
        await app(scope, receive, send)


class _Route(Route):
    """A route whose wrong-method answer is a JSON error, as every other answer of the gateway
    (Starlette's own is plain text)."""

    async def handle(self, scope: proxy.Scope, receive: proxy.Receive, send: proxy.Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await proxy.unmatched(scope, receive, send, allowed=", ".join(sorted(self.methods)))
            return
        await super().handle(scope, receive, send)


def _log_failure(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            log.error("closing a replaced gateway state failed: %r", exc)


def create_app(source: GatewayState | Callable[[], GatewayState]) -> GatewayApp:
    """The gateway's ASGI app over a state, or a factory called at startup."""
    return GatewayApp(source)
