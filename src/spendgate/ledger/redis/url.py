"""``redis://`` ledger URLs: where Redis is, the key prefix, and the durable store beside it.

redis://[:password@]host:port/db?prefix=NAME&durable=<url-encoded ledger URL>
    &timeout=2&on_reset=fail_closed|rebuild
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from spendgate.errors import ConfigError

__all__ = ["OnReset", "RedisURL", "parse_redis_url", "resolve_redis_url"]

OnReset = Literal["fail_closed", "rebuild"]
_OURS: Final = ("prefix", "durable", "timeout", "on_reset")
_SAFE: Final = "/:"  # keep a durable URL readable: sqlite:////abs/x.db stays as written


@dataclass(frozen=True, slots=True)
class RedisURL:
    connection: str  # the URL redis-py connects to (our parameters taken out)
    prefix: str
    durable: str
    timeout: float
    on_reset: OnReset
    shown: str  # host:port/db, for messages (never the password)


def _query(text: str) -> list[tuple[str, str]]:
    # Not parse_qsl: it reads '+' as a space, and a file name may hold a '+'.
    pairs = []
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def _encode(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(name, safe='')}={quote(value, safe=_SAFE)}" for name, value in pairs)


def parse_redis_url(url: str) -> RedisURL:
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ConfigError(
            "ledger", f"a Redis ledger URL starts with redis://, got {url.rsplit('@', 1)[-1]!r}"
        )
    values = dict(_query(parts.query))
    rest = [(k, v) for k, v in _query(parts.query) if k not in _OURS]
    shown = f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"
    durable = values.get("durable", "")
    if not durable:
        raise ConfigError(
            "ledger",
            f"redis://{shown}: durable=<ledger URL> is required (the store of budget definitions, "
            "the request log and the virtual keys), e.g. durable=sqlite:////var/lib/spendgate/spend.db",
        )
    if durable.startswith("redis:"):
        raise ConfigError("ledger", f"redis://{shown}: the durable store cannot be Redis itself")
    prefix = values.get("prefix", "spendgate")
    if not prefix or any(c in prefix for c in "*?[]\\ "):
        raise ConfigError("ledger", f"redis://{shown}: prefix must be a plain name, got {prefix!r}")
    try:
        timeout = float(values.get("timeout", "2"))
    except ValueError:
        raise ConfigError(
            "ledger", f"redis://{shown}: timeout is seconds, got {values['timeout']!r}"
        ) from None
    if not 0 < timeout <= 60:
        raise ConfigError("ledger", f"redis://{shown}: timeout must be in (0, 60] seconds, got {timeout}")
    on_reset = values.get("on_reset", "fail_closed")
    if on_reset not in ("fail_closed", "rebuild"):
        raise ConfigError("ledger", f"redis://{shown}: on_reset is fail_closed or rebuild, got {on_reset!r}")
    connection = urlunsplit(parts._replace(query=_encode(rest)))
    return RedisURL(connection, prefix, durable, timeout, on_reset, shown)  # type: ignore[arg-type]


def resolve_redis_url(url: str, base_dir: str | os.PathLike[str]) -> str:
    """``url`` with a relative durable ``sqlite:///x.db`` made absolute against ``base_dir``
    (re-encoded in place); anything else unchanged."""
    from spendgate.ledger.registry import resolve_url

    parts = urlsplit(url)
    pairs = _query(parts.query)
    changed = False
    out = []
    for name, value in pairs:
        if name == "durable" and value:
            resolved = resolve_url(value, base_dir)
            changed = changed or resolved != value
            value = resolved  # noqa: PLW2901
        out.append((name, value))
    if not changed:
        return url
    return urlunsplit(parts._replace(query=_encode(out)))
