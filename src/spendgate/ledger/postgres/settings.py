"""The ledger URL: spendgate's own parameters taken out, the rest handed to libpq.

``postgresql://user:pw@host:port/db?schema=NAME&pool_min=1&pool_max=10&timeout=2&<libpq params>``
(``postgres://`` too). ``schema`` (default ``public``) holds the ledger's tables; ``pool_min`` and
``pool_max`` size each connection pool (one for blocking calls, one per event loop);
``timeout`` (seconds, default 2) bounds the connect, every statement (``statement_timeout``,
``lock_timeout``) and the wait for a pooled connection; ``synchronous_commit`` (default ``on``)
is the hot path's commit mode: ``off`` is 2 to 3.5x the cycles per second on this machine's
disk, but a crash of the server loses the last few hundred milliseconds of commits (admitted
reservations and settled costs: spend a budget would not count), so it is an explicit choice.
Everything else is libpq's. The password never appears in an error message: messages name the
URL as ``display`` (password masked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from spendgate.errors import ConfigError

__all__ = ["PgSettings", "parse_url"]

_OURS: Final = ("schema", "pool_min", "pool_max", "timeout", "synchronous_commit")
_COMMIT_MODES: Final = ("on", "off", "local", "remote_write", "remote_apply")


@dataclass(frozen=True, slots=True)
class PgSettings:
    """A parsed ledger URL. ``conninfo`` holds the password: never put it in a message."""

    conninfo: str
    display: str
    password: str | None
    schema: str
    pool_min: int
    pool_max: int
    timeout: float
    synchronous_commit: str

    def scrub(self, text: str) -> str:
        """``text`` without the password (a driver message could echo a connection string)."""
        if self.password:
            text = text.replace(self.password, "***")
            text = text.replace(quote(self.password, safe=""), "***")
        return text


def _number(query: dict[str, str], name: str, default: float, display: str) -> float:
    raw = query.pop(name, None)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError("ledger", f"{display}: {name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError("ledger", f"{display}: {name} must be a positive number, got {raw!r}")
    return value


def parse_url(url: str, *, timeout: float | None = None) -> PgSettings:
    """Split ``url`` into libpq's connection string and spendgate's settings (ConfigError when
    a value is wrong; the message shows the URL with its password masked)."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password is not None else None
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = dict(pairs)
    display = urlunsplit(parts._replace(netloc=netloc, query=""))
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError("ledger", f"{display}: not a postgresql:// URL")
    schema = query.pop("schema", "public")
    if not schema or len(schema.encode()) > 63 or "\x00" in schema:
        raise ConfigError("ledger", f"{display}: schema must be a name of 1 to 63 bytes, got {schema!r}")
    seconds = _number(query, "timeout", 2.0 if timeout is None else timeout, display)
    if seconds <= 0:
        raise ConfigError("ledger", f"{display}: timeout must be above 0 seconds")
    pool_min = int(_number(query, "pool_min", 1, display))
    pool_max = int(_number(query, "pool_max", max(10, pool_min), display))
    if pool_max < 1 or pool_max < pool_min:
        raise ConfigError("ledger", f"{display}: pool_max must be at least 1 and at least pool_min")
    commit = query.pop("synchronous_commit", "on").lower()
    if commit not in _COMMIT_MODES:
        raise ConfigError(
            "ledger", f"{display}: synchronous_commit is one of {', '.join(_COMMIT_MODES)}, got {commit!r}"
        )
    rest = [(k, v) for k, v in pairs if k not in _OURS]
    if not any(k == "connect_timeout" for k, _ in rest):
        rest.append(("connect_timeout", str(max(2, math.ceil(seconds)))))  # libpq's minimum is 2
    if not any(k == "tcp_user_timeout" for k, _ in rest):
        # A server that stops acknowledging (a cut network) fails the call instead of hanging.
        rest.append(("tcp_user_timeout", str(max(1000, int(seconds * 1000)))))
    conninfo = urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))
    shown = urlunsplit(parts._replace(netloc=netloc, query=f"schema={quote(schema)}"))
    return PgSettings(conninfo, shown, password, schema, pool_min, pool_max, seconds, commit)
