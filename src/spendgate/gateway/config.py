"""The gateway's YAML config -> ``GatewaySettings``, validated, with errors naming file, line and key.

    settings = load_settings("spendgate.yaml")

Every problem raises ``GatewayConfigError`` (a ``ConfigError``) whose ``key``
is the dotted/indexed path (``budgets[2].limit``) and whose message reads
``spendgate.yaml:12: upstreams.openai.base_url: must be an http(s) URL``.
The format is documented in docs/gateway-config.md.

Secrets never live in the file: upstream API keys and the admin token come
from environment variables named in it (an inline ``admin_token`` is accepted,
with a warning). An upstream whose key variable is unset is refused at load
time, unless it is marked ``api_key_optional: true`` or its host is the local
machine (Ollama, vLLM, the fake upstream), so a typo never shows up later as
401s from the provider.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

import yaml

from spendgate.alerts.config import DESTINATION_TYPES, AlertSettings, DestinationSettings
from spendgate.alerts.destinations import kinds_of
from spendgate.alerts.dispatcher import RetryPolicy
from spendgate.budgets import Budget
from spendgate.errors import ConfigError
from spendgate.gateway.settings import (
    DEFAULT_POOL_TIMEOUT,
    GatewaySettings,
    Route,
    Upstream,
    UpstreamKind,
)
from spendgate.ledger import resolve_url
from spendgate.limits import KINDS as LIMIT_KINDS
from spendgate.limits import Limit
from spendgate.telemetry import INSTALL_HINT, TelemetrySettings
from spendgate.telemetry import available as telemetry_available

__all__ = [
    "DEFAULT_ADMIN_TOKEN_ENV",
    "GatewayConfigError",
    "load_settings",
    "parse_settings",
    "read_ledger_url",
]

log = logging.getLogger("spendgate.gateway.config")

DEFAULT_ADMIN_TOKEN_ENV: Final = "SPENDGATE_ADMIN_TOKEN"
_TOP_KEYS: Final = (
    "listen",
    "ledger",
    "ledger_env",
    "admin_token_env",
    "admin_token",
    "metrics_token_env",
    "keys",
    "upstreams",
    "routes",
    "budgets",
    "limits",
    "prices",
    "defaults",
    "telemetry",
    "alerts",
)
_ALERTS_KEYS: Final = ("enabled", "destinations", "retry", "poll_interval", "forecast_interval", "lease")
_DESTINATION_KEYS: Final = ("name", "type", "url", "url_env", "secret_env", "timeout", "events", "budgets")
_RETRY_KEYS: Final = ("max_attempts", "backoff", "max_backoff")
_LISTEN_KEYS: Final = ("host", "port", "workers", "header_timeout", "keep_alive_timeout", "max_connections")
_KEYS_KEYS: Final = ("required",)
_UPSTREAM_KEYS: Final = (
    "kind",
    "base_url",
    "api_key_env",
    "api_key_optional",
    "timeout",
    "connect_timeout",
    "headers",
    "max_connections",
    "pool_timeout",
)
_ROUTE_KEYS: Final = ("model", "upstream", "upstream_model")
_TELEMETRY_KEYS: Final = (
    "enabled",
    "endpoint",
    "headers_env",
    "service_name",
    "capture_user",
    "traces",
    "metrics",
    "export_interval",
)
_DEFAULT_KEYS: Final = (
    "on_exceed",
    "max_wait",
    "unknown_model",
    "default_price",
    "max_body_bytes",
    "request_timeout",
    "lease",
    "max_output_tokens",
    "refusal_interval",
)
_LIMIT_KEYS: Final = ("id", "name", "selector", "per", "on_exceed", *LIMIT_KINDS)
_COUNT_KINDS: Final = tuple(kind for kind in LIMIT_KINDS if kind != "usd")
_KINDS: Final = ("openai", "anthropic")
_ON_EXCEED: Final = ("raise", "wait", "clamp")
_UNKNOWN_MODEL: Final = ("refuse", "default_price", "free")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOCAL_HOSTS: Final = ("localhost", "host.docker.internal")


class GatewayConfigError(ConfigError):
    """A ConfigError that also knows the file and line it points at."""

    def __init__(self, key: str, problem: str, *, source: str | None = None, line: int | None = None) -> None:
        super().__init__(key, problem)
        self.source = source
        self.line = line
        where = f"{source}:{line}: " if source and line else f"{source}: " if source else ""
        body = f"{key}: {problem}" if key else problem
        self.args = (where + body,)


# -- YAML with line numbers -----------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """safe_load, except that YAML floats become Decimal: money in config stays exact."""


def _decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    text = str(loader.construct_scalar(cast(yaml.ScalarNode, node))).replace("_", "").lower()
    if text in (".inf", "+.inf", "-.inf", ".nan"):
        return Decimal("NaN") if text == ".nan" else Decimal(text.replace(".", ""))
    return Decimal(text)


_Loader.add_constructor("tag:yaml.org,2002:float", _decimal)


def _lines(node: yaml.Node | None, path: str, out: dict[str, int], source: str) -> None:
    """Map every key path to its 1-based line; refuse duplicate keys (YAML keeps the last silently)."""
    if node is None:
        return
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in seen:
                raise GatewayConfigError(
                    child, "listed twice", source=source, line=key_node.start_mark.line + 1
                )
            seen.add(key)
            out[child] = key_node.start_mark.line + 1
            _lines(value_node, child, out, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, f"{path}[{index}]", out, source)


# -- entry points ------------------------------------------------------------------------


def load_settings(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> GatewaySettings:
    """Read and validate a YAML config file."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise GatewayConfigError("", f"cannot read config: {exc.strerror or exc}", source=source) from None
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise GatewayConfigError("", f"not valid YAML: {problem}", source=source, line=line) from None
    lines: dict[str, int] = {}
    _lines(root, "", lines, source)
    if data is None:
        data = {}
    settings = _parse(data, source=source, lines=lines, environ=environ)
    # A relative ledger path means next to the config file, wherever the command runs from.
    return dataclasses.replace(settings, ledger=resolve_url(settings.ledger, Path(source).parent))


def read_ledger_url(path: str | os.PathLike[str]) -> str:
    """Only the ``ledger:`` of a config file (the admin CLI needs no upstream keys in its environment)."""
    source = os.fspath(path)
    try:
        data = yaml.load(Path(source).read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as exc:
        raise GatewayConfigError("", f"cannot read config: {exc.strerror or exc}", source=source) from None
    except yaml.YAMLError as exc:
        raise GatewayConfigError("", f"not valid YAML: {exc}", source=source) from None
    base = Path(source).parent
    if not isinstance(data, Mapping):
        return resolve_url(GatewaySettings().ledger, base)
    found = _ledger_of(_Reader(source, {}), {k: v for k, v in data.items() if v is not None}, os.environ)
    return resolve_url(found or GatewaySettings().ledger, base)


def parse_settings(
    data: Mapping[str, Any], *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> GatewaySettings:
    """Validate an already-parsed config mapping (no line numbers)."""
    return _parse(data, source=source, lines={}, environ=environ)


# -- validation -----------------------------------------------------------------------------


class _Reader:
    """Error helpers that know the source and the line of each key path."""

    def __init__(self, source: str, lines: Mapping[str, int]) -> None:
        self.source = source
        self.lines = lines

    def line_of(self, key: str) -> int | None:
        probe = key
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return self.lines.get("")

    def error(self, key: str, problem: str) -> GatewayConfigError:
        return GatewayConfigError(key, problem, source=self.source, line=self.line_of(key))

    def rewrap(self, exc: ConfigError, line_key: str | None = None) -> GatewayConfigError:
        return GatewayConfigError(
            exc.key, exc.problem, source=self.source, line=self.line_of(line_key or exc.key)
        )

    def mapping(self, value: object, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a mapping, got {_kind(value)}")
        return value

    def known(self, data: Mapping[str, Any], allowed: Iterable[str], prefix: str) -> None:
        allowed = tuple(allowed)
        for key in data:
            if key not in allowed:
                name = str(key)
                close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(
                    f"{prefix}.{name}" if prefix else name,
                    f"unknown key{hint} (known: {', '.join(allowed)})",
                )

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {_kind(value)}")
        return value.strip()

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_kind(value)}")
        return value

    def seconds(self, value: object, key: str, *, zero_ok: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise self.error(key, f"must be a number of seconds, got {_kind(value)}")
        number = float(value)
        if not (number >= 0 if zero_ok else number > 0) or not math.isfinite(number):
            raise self.error(key, f"must be a {'' if zero_ok else 'positive '}number of seconds, got {value}")
        return number

    def whole(self, value: object, key: str, *, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            raise self.error(key, f"must be {bound}, got {value}")
        return value

    def choice(self, value: object, key: str, choices: Iterable[str]) -> str:
        choices = tuple(choices)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def env_name(self, value: object, key: str) -> str:
        name = self.string(value, key)
        if not _ENV_NAME.match(name):
            raise self.error(key, f"must be an environment variable name like OPENAI_API_KEY, got {name!r}")
        return name


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float | Decimal):
        return f"the number {value}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _parse(
    data: object, *, source: str, lines: Mapping[str, int], environ: Mapping[str, str] | None
) -> GatewaySettings:
    env: Mapping[str, str] = os.environ if environ is None else environ
    r = _Reader(source, lines)
    top = r.mapping(data, "")
    r.known(top, _TOP_KEYS, "")

    host, port, workers = "127.0.0.1", 4000, 1
    if "listen" in top:
        listen = r.mapping(top["listen"], "listen")
        r.known(listen, _LISTEN_KEYS, "listen")
        if "host" in listen:
            host = r.string(listen["host"], "listen.host")
        if "port" in listen:
            port = r.whole(listen["port"], "listen.port", low=0, high=65535)
        if "workers" in listen:
            workers = r.whole(listen["workers"], "listen.workers", low=1, high=256)
    listen_limits = _listen_limits(r, top.get("listen") or {})

    ledger = _ledger_of(r, top, env) or "sqlite:///spendgate.db"

    admin_token = _admin_token(r, top, env)
    metrics_token = _metrics_token(r, top, env)

    keys_required = True
    if "keys" in top:
        keys = r.mapping(top["keys"], "keys")
        r.known(keys, _KEYS_KEYS, "keys")
        if "required" in keys:
            keys_required = r.boolean(keys["required"], "keys.required")

    # An upstream's pool defaults to the process's own cap: by default the pool never binds first.
    pool = listen_limits.get("max_connections", GatewaySettings().max_connections)
    upstreams = _upstreams(r, top.get("upstreams"), env, pool)
    routes = _routes(r, top.get("routes"), upstreams)
    budgets = _budgets(r, top.get("budgets"))
    limits = _limits(r, top.get("limits"))
    prices = _prices(r, top.get("prices"))

    defaults: Mapping[str, Any] = {}
    if "defaults" in top:
        defaults = r.mapping(top["defaults"], "defaults")
        r.known(defaults, _DEFAULT_KEYS, "defaults")
    on_exceed = None
    if defaults.get("on_exceed") is not None:
        on_exceed = r.choice(defaults["on_exceed"], "defaults.on_exceed", _ON_EXCEED)
    unknown_model = r.choice(
        defaults.get("unknown_model", "refuse"), "defaults.unknown_model", _UNKNOWN_MODEL
    )
    default_price: Mapping[str, Any] | None = None
    if "default_price" in defaults:
        raw = r.mapping(defaults["default_price"], "defaults.default_price")
        _check_price(r, "(default)", raw, "defaults.default_price")
        default_price = dict(raw)
    if unknown_model == "default_price" and default_price is None:
        raise r.error(
            "defaults.default_price",
            'required when unknown_model is default_price, e.g. {input: "5", output: "15"} (USD per 1M tokens)',
        )
    base = GatewaySettings()
    return GatewaySettings(
        host=host,
        port=port,
        workers=workers,
        ledger=ledger,
        admin_token=admin_token,
        metrics_token=metrics_token,
        **listen_limits,
        upstreams=upstreams,
        routes=routes,
        budgets=budgets,
        limits=limits,
        prices=prices,
        default_price=default_price,
        unknown_model=cast(Any, unknown_model),
        on_exceed=cast(Any, on_exceed),
        max_wait=_default(r, defaults, "max_wait", base.max_wait, r.seconds, zero_ok=True),
        default_max_output_tokens=(
            r.whole(defaults["max_output_tokens"], "defaults.max_output_tokens", low=1, high=2**31 - 1)
            if defaults.get("max_output_tokens") is not None
            else None
        ),
        max_body_bytes=(
            r.whole(defaults["max_body_bytes"], "defaults.max_body_bytes", low=1)
            if "max_body_bytes" in defaults
            else base.max_body_bytes
        ),
        request_timeout=_default(r, defaults, "request_timeout", base.request_timeout, r.seconds),
        lease=_default(r, defaults, "lease", base.lease, r.seconds),
        refusal_interval=_default(
            r, defaults, "refusal_interval", base.refusal_interval, r.seconds, zero_ok=True
        ),
        keys_required=keys_required,
        telemetry=_telemetry(r, top.get("telemetry"), env),
        alerts=_alerts(r, top.get("alerts"), env),
    )


def _default(
    r: _Reader,
    defaults: Mapping[str, Any],
    name: str,
    fallback: float,
    check: Callable[..., float],
    **options: Any,
) -> float:
    return check(defaults[name], f"defaults.{name}", **options) if name in defaults else fallback


def _ledger_of(r: _Reader, top: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """``ledger:``, or the URL in the environment variable ``ledger_env:`` names (a URL with a
    password, e.g. Redis's, then never sits in the file); None for the default."""
    if "ledger_env" in top:
        if "ledger" in top:
            raise r.error("ledger_env", "give either ledger or ledger_env, not both")
        name = r.env_name(top["ledger_env"], "ledger_env")
        value = env.get(name)
        if not value:
            raise r.error(
                "ledger_env", f"the environment variable {name} is not set (it holds the ledger URL)"
            )
        return _ledger_url(r, value)
    if "ledger" in top:
        return _ledger_url(r, top["ledger"])
    return None


def _ledger_url(r: _Reader, value: object) -> str:
    from spendgate.ledger import known_schemes

    url = r.string(value, "ledger")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in known_schemes():
        shown = url.rsplit("@", maxsplit=1)[-1]  # a URL may carry a password: never echo it
        known = ", ".join(s + "://" for s in known_schemes())
        raise r.error("ledger", f"unknown ledger URL {shown!r}; known schemes: {known}")
    if scheme.lower() == "sqlite" and (not rest.startswith("/") or len(rest) < 2):
        raise r.error("ledger", f"write a SQLite ledger URL as sqlite:///path/to/spendgate.db, got {url!r}")
    return url


def _admin_token(r: _Reader, top: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    explicit = "admin_token_env" in top
    name = r.env_name(top["admin_token_env"], "admin_token_env") if explicit else DEFAULT_ADMIN_TOKEN_ENV
    from_env = env.get(name) or None
    inline = None
    if "admin_token" in top and top["admin_token"] is not None:
        inline = r.string(top["admin_token"], "admin_token")
        log.warning(
            "spendgate: %s: admin_token is written in the config file; prefer admin_token_env "
            "(a secret in a file ends up in backups and version control)",
            r.source,
        )
    token = from_env or inline
    if token is None and explicit:
        # Naming a variable says the admin API is wanted: an unset one is a mistake, not "disabled".
        raise r.error("admin_token_env", f"environment variable {name} is not set")
    if token is not None and len(token) < 16:
        log.warning("spendgate: the admin token is shorter than 16 characters; use a long random one")
    return token


def _listen_limits(r: _Reader, listen: Mapping[str, Any]) -> dict[str, Any]:
    """``listen.header_timeout``, ``keep_alive_timeout`` (seconds), ``max_connections``."""
    out: dict[str, Any] = {}
    for name in ("header_timeout", "keep_alive_timeout"):
        if name in listen:
            out[name] = r.seconds(listen[name], f"listen.{name}")
    if "max_connections" in listen:
        out["max_connections"] = r.whole(listen["max_connections"], "listen.max_connections", low=1)
    return out


def _alerts(r: _Reader, value: object, env: Mapping[str, str]) -> AlertSettings:
    """``alerts:`` (docs/alerts.md): on by default, to the log."""
    if value is None:
        return AlertSettings()
    section = r.mapping(value, "alerts")
    r.known(section, _ALERTS_KEYS, "alerts")
    base = AlertSettings()
    enabled = r.boolean(section.get("enabled", True), "alerts.enabled")
    destinations = base.destinations
    if "destinations" in section:
        raw = section["destinations"]
        if not isinstance(raw, list):
            raise r.error("alerts.destinations", "must be a list of destinations")
        destinations = tuple(
            _destination(r, item, f"alerts.destinations[{i}]", env) for i, item in enumerate(raw)
        )
        names = [d.name for d in destinations]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise r.error(f"alerts.destinations[{i}].name", f"{name!r} is used twice")
    retry = base.retry
    if "retry" in section:
        raw_retry = r.mapping(section["retry"], "alerts.retry")
        r.known(raw_retry, _RETRY_KEYS, "alerts.retry")
        backoff = r.seconds(raw_retry.get("backoff", retry.backoff), "alerts.retry.backoff")
        retry = RetryPolicy(
            max_attempts=r.whole(raw_retry.get("max_attempts", retry.max_attempts), "alerts.retry.max_attempts",
                                 low=1, high=1000),
            backoff=backoff,
            max_backoff=max(backoff, r.seconds(raw_retry.get("max_backoff", retry.max_backoff),
                                               "alerts.retry.max_backoff")),
        )  # fmt: skip
    forecast: float | None = base.forecast_interval
    if "forecast_interval" in section:
        given = section["forecast_interval"]
        forecast = None if given is False or given == 0 else r.seconds(given, "alerts.forecast_interval")
    return AlertSettings(
        enabled=enabled,
        destinations=destinations,
        retry=retry,
        poll_interval=r.seconds(section.get("poll_interval", base.poll_interval), "alerts.poll_interval"),
        forecast_interval=forecast,
        lease=r.seconds(section["lease"], "alerts.lease") if "lease" in section else None,
    )


def _destination(r: _Reader, value: object, key: str, env: Mapping[str, str]) -> DestinationSettings:
    item = r.mapping(value, key)
    r.known(item, _DESTINATION_KEYS, key)
    if "name" not in item:
        raise r.error(f"{key}.name", "missing: every destination has a name (deliveries are kept by it)")
    name = r.string(item["name"], f"{key}.name")
    kind = r.choice(item.get("type", "webhook"), f"{key}.type", DESTINATION_TYPES)
    url: str | None = None
    secret: str | None = None
    if kind != "log":
        if ("url" in item) == ("url_env" in item):
            raise r.error(f"{key}.url", "give one of url and url_env (an environment variable holding it)")
        if "url_env" in item:
            var = r.env_name(item["url_env"], f"{key}.url_env")
            if not env.get(var):
                raise r.error(f"{key}.url_env", f"environment variable {var} is not set")
            url = _http_url(r, env[var], f"{key}.url_env")
        else:
            url = _http_url(r, item["url"], f"{key}.url")
    elif "url" in item or "url_env" in item:
        raise r.error(f"{key}.url", "a log destination has no url")
    if "secret_env" in item:
        if kind != "webhook":
            raise r.error(f"{key}.secret_env", "only a webhook destination signs its body")
        var = r.env_name(item["secret_env"], f"{key}.secret_env")
        secret = env.get(var)
        if not secret:
            raise r.error(f"{key}.secret_env", f"environment variable {var} is not set")
    try:
        kinds = kinds_of(_strings(r, item["events"], f"{key}.events") if "events" in item else None)
    except ValueError as exc:
        raise r.error(f"{key}.events", str(exc)) from None
    budgets = frozenset(_strings(r, item["budgets"], f"{key}.budgets")) if "budgets" in item else None
    return DestinationSettings(
        name=name,
        type=cast(Any, kind),
        url=url,
        secret=secret,
        timeout=r.seconds(item.get("timeout", 5.0), f"{key}.timeout"),
        kinds=kinds,
        budgets=budgets,
    )


def _strings(r: _Reader, value: object, key: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise r.error(key, "must be a non-empty list of strings")
    return [r.string(v, f"{key}[{i}]") for i, v in enumerate(value)]


def _telemetry(r: _Reader, value: object, env: Mapping[str, str]) -> TelemetrySettings | None:
    """``telemetry:`` (docs/telemetry.md): None when absent or ``enabled: false``."""
    if value is None:
        return None
    section = r.mapping(value, "telemetry")
    r.known(section, _TELEMETRY_KEYS, "telemetry")
    if not r.boolean(section.get("enabled", True), "telemetry.enabled"):
        return None
    base = TelemetrySettings()
    headers: dict[str, str] | None = None
    if section.get("headers_env") is not None:
        name = r.env_name(section["headers_env"], "telemetry.headers_env")
        raw = env.get(name)
        if raw is None:
            raise r.error("telemetry.headers_env", f"environment variable {name} is not set")
        headers = {}
        for item in raw.split(","):
            if not item.strip():
                continue
            header, sep, text = item.partition("=")
            if not sep or not header.strip():
                raise r.error(
                    "telemetry.headers_env",
                    f"{name} must be name=value pairs separated by commas (as OTEL_EXPORTER_OTLP_HEADERS)",
                )
            headers[header.strip().lower()] = unquote(text.strip())
    settings = TelemetrySettings(
        endpoint=_http_url(r, section["endpoint"], "telemetry.endpoint") if "endpoint" in section else None,
        headers=headers,
        service_name=(
            r.string(section["service_name"], "telemetry.service_name")
            if "service_name" in section
            else base.service_name
        ),
        capture_user=r.boolean(section.get("capture_user", False), "telemetry.capture_user"),
        traces=r.boolean(section.get("traces", True), "telemetry.traces"),
        metrics=r.boolean(section.get("metrics", True), "telemetry.metrics"),
        export_interval=(
            r.seconds(section["export_interval"], "telemetry.export_interval")
            if "export_interval" in section
            else base.export_interval
        ),
    )
    if not telemetry_available():
        raise r.error("telemetry", f"needs OpenTelemetry, which is not installed: {INSTALL_HINT}")
    return settings


def _metrics_token(r: _Reader, top: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """The token /metrics wants, from the variable ``metrics_token_env`` names (unset: an error)."""
    if top.get("metrics_token_env") is None:
        return None
    name = r.env_name(top["metrics_token_env"], "metrics_token_env")
    token = env.get(name) or None
    if token is None:
        raise r.error("metrics_token_env", f"environment variable {name} is not set")
    return token


def _upstreams(r: _Reader, value: object, env: Mapping[str, str], default_pool: int) -> dict[str, Upstream]:
    if value is None:
        raise r.error("upstreams", "missing: name at least one upstream (e.g. openai) to send requests to")
    section = r.mapping(value, "upstreams")
    if not section:
        raise r.error("upstreams", "empty: name at least one upstream")
    out: dict[str, Upstream] = {}
    for raw_name, raw in section.items():
        name = str(raw_name)
        where = f"upstreams.{name}"
        if not _NAME.match(name):
            raise r.error(where, "an upstream name is letters, digits, '_', '.', '-' (up to 64)")
        item = r.mapping(raw, where)
        r.known(item, _UPSTREAM_KEYS, where)
        if "kind" not in item:
            raise r.error(f"{where}.kind", f"missing: one of {', '.join(_KINDS)}")
        kind = r.choice(item["kind"], f"{where}.kind", _KINDS)
        if "base_url" not in item:
            raise r.error(f"{where}.base_url", "missing: the upstream's URL, e.g. https://api.openai.com/v1")
        base_url = _http_url(r, item["base_url"], f"{where}.base_url")
        optional = (
            r.boolean(item["api_key_optional"], f"{where}.api_key_optional")
            if "api_key_optional" in item
            else False
        )
        api_key: str | None = None
        if item.get("api_key_env") is not None:
            var = r.env_name(item["api_key_env"], f"{where}.api_key_env")
            api_key = env.get(var) or None
            if api_key is None and not (optional or _is_local(base_url)):
                raise r.error(
                    f"{where}.api_key_env",
                    f"environment variable {var} is not set; export it, or mark the upstream "
                    "api_key_optional: true if it needs no key",
                )
        elif not (optional or _is_local(base_url)):
            raise r.error(
                f"{where}.api_key_env",
                "missing: name the environment variable holding this upstream's API key "
                "(or set api_key_optional: true)",
            )
        headers: dict[str, str] = {}
        if "headers" in item:
            raw_headers = r.mapping(item["headers"], f"{where}.headers")
            for header, header_value in raw_headers.items():
                key = f"{where}.headers.{header}"
                if not isinstance(header_value, str | int) or isinstance(header_value, bool):
                    raise r.error(key, f"must be a string, got {_kind(header_value)}")
                if str(header).lower() in ("authorization", "x-api-key", "api-key"):
                    raise r.error(key, "credentials come from api_key_env, never from the config file")
                headers[str(header)] = str(header_value)
        out[name] = Upstream(
            name=name,
            kind=cast(UpstreamKind, kind),
            base_url=base_url,
            api_key=api_key,
            timeout=r.seconds(item["timeout"], f"{where}.timeout") if "timeout" in item else 600.0,
            connect_timeout=(
                r.seconds(item["connect_timeout"], f"{where}.connect_timeout")
                if "connect_timeout" in item
                else 10.0
            ),
            headers=headers,
            max_connections=(
                r.whole(item["max_connections"], f"{where}.max_connections", low=1)
                if "max_connections" in item
                else default_pool
            ),
            pool_timeout=(
                r.seconds(item["pool_timeout"], f"{where}.pool_timeout", zero_ok=True)
                if "pool_timeout" in item
                else DEFAULT_POOL_TIMEOUT
            ),
        )
    return out


def _http_url(r: _Reader, value: object, key: str) -> str:
    url = r.string(value, key)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise r.error(key, f"must be an http(s) URL, got {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.error(key, f"must be an http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise r.error(key, "must not carry credentials; use api_key_env")
    if parts.query or parts.fragment:
        raise r.error(key, f"must not have a query or fragment, got {url!r}")
    return url.rstrip("/")


def _is_local(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOCAL_HOSTS or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _routes(r: _Reader, value: object, upstreams: Mapping[str, Upstream]) -> tuple[Route, ...]:
    if value is None:
        raise r.error(
            "routes", 'missing: map model names to upstreams, e.g. [{model: "gpt-*", upstream: openai}]'
        )
    if not isinstance(value, list):
        raise r.error("routes", f"must be a list of {{model, upstream}} entries, got {_kind(value)}")
    out: list[Route] = []
    for index, raw in enumerate(value):
        where = f"routes[{index}]"
        item = r.mapping(raw, where)
        r.known(item, _ROUTE_KEYS, where)
        for required in ("model", "upstream"):
            if required not in item:
                raise r.error(f"{where}.{required}", "missing")
        model = r.string(item["model"], f"{where}.model")
        upstream = r.string(item["upstream"], f"{where}.upstream")
        if upstream not in upstreams:
            close = difflib.get_close_matches(upstream, list(upstreams), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise r.error(
                f"{where}.upstream", f"no upstream named {upstream!r}{hint} (known: {', '.join(upstreams)})"
            )
        target = None
        if item.get("upstream_model") is not None:
            target = r.string(item["upstream_model"], f"{where}.upstream_model")
            if any(c in model for c in "*?["):
                raise r.error(
                    f"{where}.upstream_model",
                    f"a glob route ({model!r}) cannot rename models; give an exact model name",
                )
        out.append(Route(model=model, upstream=upstream, upstream_model=target))
    return tuple(out)


def _budgets(r: _Reader, value: object) -> tuple[Budget, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.error("budgets", f"must be a list of budgets, got {_kind(value)}")
    out: list[Budget] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(value):
        where = f"budgets[{index}]"
        try:
            budget = Budget.from_config(raw, where=where)
        except ConfigError as exc:
            raise r.rewrap(exc) from None
        if budget.id in seen:
            raise r.error(
                f"{where}.id", f"budget id {budget.id!r} is also used by budgets[{seen[budget.id]}]"
            )
        seen[budget.id] = index
        out.append(budget)
    return tuple(out)


def _limits(r: _Reader, value: object) -> tuple[Limit, ...]:
    """``limits:``: rate limits (``spendgate.limits.Limit.from_config``), ids unique."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.error("limits", f"must be a list of limits, got {_kind(value)}")
    out: list[Limit] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(value):
        where = f"limits[{index}]"
        if isinstance(raw, Mapping):
            r.known(raw, _LIMIT_KEYS, where)  # with a did-you-mean for a misspelt kind
            for kind in _COUNT_KINDS:
                if isinstance(raw.get(kind), Decimal):
                    raise r.error(f"{where}.{kind}", f"must be a whole number >= 0, got {raw[kind]}")
        try:
            limit = Limit.from_config(raw, where=where)
        except ConfigError as exc:
            raise r.rewrap(exc) from None
        except ValueError as exc:  # the Limit's own checks (a selector's values, an amount)
            raise r.error(where, str(exc)) from None
        if limit.id in seen:
            raise r.error(f"{where}.id", f"limit id {limit.id!r} is also used by limits[{seen[limit.id]}]")
        seen[limit.id] = index
        out.append(limit)
    return tuple(out)


def _prices(r: _Reader, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    section = r.mapping(value, "prices")
    out: dict[str, Any] = {}
    for raw_name, raw in section.items():
        name = str(raw_name)
        where = f"prices.{name}"
        item = r.mapping(raw, where)
        _check_price(r, name, item, where)
        out[name] = dict(item)
    return out


def _check_price(r: _Reader, name: str, price: Mapping[str, Any], where: str) -> None:
    """Validate by applying the override to a throwaway catalog: the same code the gateway will run."""
    from spendgate.pricing.catalog import Catalog

    try:
        Catalog.builtin().apply_overrides({name: dict(price)})
    except ConfigError as exc:
        raise GatewayConfigError(
            exc.key if where.startswith("prices") else where,
            exc.problem,
            source=r.source,
            line=r.line_of(where),
        ) from None
    except (ValueError, TypeError) as exc:
        raise r.error(where, str(exc)) from None
