"""What the gateway runs with, as plain immutable values.

``config.py`` builds a ``GatewaySettings`` from YAML (validated, with errors
naming the key); the app, the admin API and the CLI only ever see these
types, so each can be built and tested on its own.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from spendgate.alerts.config import AlertSettings
from spendgate.budgets import Attributes, Budget
from spendgate.limits import Limit
from spendgate.telemetry import TelemetrySettings

UpstreamKind = Literal["openai", "anthropic"]

#: An upstream's pool when the config gives none (it gives ``listen.max_connections`` then):
#: LLM calls are held for seconds to minutes, so a process holds thousands at once.
DEFAULT_UPSTREAM_CONNECTIONS = 10_000
#: Seconds a request waits for a free connection of a full pool before it fails (nothing sent).
DEFAULT_POOL_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """A provider or any OpenAI-compatible server (Azure, vLLM, Ollama, the fake upstream)."""

    name: str
    kind: UpstreamKind
    base_url: str  # e.g. "https://api.openai.com/v1", "https://api.anthropic.com"
    api_key: str | None = field(default=None, repr=False)  # resolved from the environment; never logged
    timeout: float = 600.0  # seconds for a whole upstream call
    connect_timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)  # extra headers (e.g. anthropic-version)
    #: This upstream's own pool: requests in flight to it at once, per process (one connection
    #: each); beyond it a request waits up to ``pool_timeout`` for one to come free.
    max_connections: int = DEFAULT_UPSTREAM_CONNECTIONS
    pool_timeout: float = DEFAULT_POOL_TIMEOUT


@dataclass(frozen=True, slots=True)
class Route:
    """A public model name (a glob such as ``claude-*`` allowed) served by an upstream."""

    model: str
    upstream: str
    upstream_model: str | None = None  # None: the same name as asked

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.model)

    def target(self, model: str) -> str:
        return self.upstream_model or model


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 4000
    workers: int = 1  # gateway processes (spendgate serve --workers overrides it)
    # A connection must finish its request headers this long after it opens (or after its
    # request's first byte): a client that sends nothing or dribbles headers is closed.
    header_timeout: float = 30.0
    keep_alive_timeout: float = 30.0  # an idle connection between requests
    max_connections: int = 10_000  # connections and requests at once; beyond it, 503
    ledger: str = "sqlite:///spendgate.db"
    admin_token: str | None = field(default=None, repr=False)  # from the environment or config; never logged
    metrics_token: str | None = field(default=None, repr=False)  # /metrics wants it when set; never logged
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    budgets: tuple[Budget, ...] = ()
    limits: tuple[Limit, ...] = ()  # rate limits (spendgate.limits), put into the ledger at start and reload
    prices: Mapping[str, Any] = field(default_factory=dict)  # price overrides, Catalog.set_price shape
    default_price: Mapping[str, Any] | None = None  # set_price shape, for unknown_model "default_price"
    unknown_model: Literal["refuse", "default_price", "free"] = "refuse"
    on_exceed: Literal["raise", "wait", "clamp"] | None = None
    max_wait: float = 30.0
    #: The output cap reserved (and sent) for a request that sets none; None: the model's max.
    default_max_output_tokens: int | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    request_timeout: float = 900.0  # a whole client request, waiting included
    lease: float = 900.0  # ledger lease for a request in flight
    #: Seconds between two writes of one process's refusal counts (spendgate.refusal_tally).
    refusal_interval: float = 5.0
    keys_required: bool = True  # False only for local demos: unauthenticated requests get no key attribute
    telemetry: TelemetrySettings | None = None  # OpenTelemetry (docs/telemetry.md); None: off
    alerts: AlertSettings = field(default_factory=AlertSettings)  # docs/alerts.md; to the log by default

    def route(self, model: str) -> tuple[Upstream, str] | None:
        """The upstream and upstream model name for a public model name; first matching route wins."""
        for route in self.routes:
            if route.matches(model):
                upstream = self.upstreams.get(route.upstream)
                if upstream is not None:
                    return upstream, route.target(model)
        return None


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A key the gateway hands out. The secret itself is never stored, only its hash."""

    id: str  # stable public id, e.g. "key_3f9a..."; what budgets select on (dimension "key")
    hint: str  # the first characters of the secret, to recognise it in lists ("sg-abcd…")
    attributes: Attributes  # user, team, project, customer, tags; `key` is set to `id`
    models: tuple[str, ...] = ()  # glob patterns this key may use; empty = every routed model
    expires_at: datetime | None = None
    disabled: bool = False
    created_at: datetime | None = None
    name: str | None = None

    def allows(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def usable(self, now: datetime) -> bool:
        return not self.disabled and (self.expires_at is None or now < self.expires_at)


#: The shortest admin token accepted when the gateway listens beyond the loopback interface.
MIN_EXPOSED_ADMIN_TOKEN: int = 32


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` binds the loopback interface only (``0.0.0.0``, ``::``, other names: no)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything: treat it as reachable


def exposure_problem(settings: GatewaySettings, host: str) -> str | None:
    """Why ``settings`` must not serve on ``host``, or None.

    An admin token short enough to guess, on an address other machines reach, hands them
    every key and budget: refused. On loopback the config load only warns (local tests)."""
    token = settings.admin_token
    if token is None or is_loopback_host(host) or len(token) >= MIN_EXPOSED_ADMIN_TOKEN:
        return None
    return (
        f"the admin token is {len(token)} characters long; listening on {host} (beyond loopback) "
        f"needs one of at least {MIN_EXPOSED_ADMIN_TOKEN} "
        "(e.g. SPENDGATE_ADMIN_TOKEN=$(openssl rand -hex 24)), or listen on 127.0.0.1"
    )
