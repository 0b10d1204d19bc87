"""The dashboard's sessions, CSRF tokens and failed-login limit (``docs/ui.md``).

A session is a signed cookie, no server-side store: ``v1.<session id>.<expiry>.<mac>``, the
MAC an HMAC-SHA256 under a key derived from a random per-process secret and the admin token.
So a session dies when it expires (the injected clock's time, checked here, not only the
browser's ``Max-Age``), when the admin token changes (a reload: every session is out), when the
process restarts (``spendgate serve --workers N`` gives its workers one secret per run), and
at logout (its id is kept in a bounded set of revoked ids until it would have expired: in the
process that answered the logout). The CSRF token is an HMAC of the session id under the same key: stable
for the session, worthless without its cookie.

Every method takes ``now``: the caller's clock (the ledger's), so tests move time by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["COOKIE", "SECRET_ENV", "LoginLimiter", "Session", "Sessions", "process_secret"]

#: The session cookie's name.
COOKIE: Final = "spendgate_session"
_VERSION: Final = "v1"
_MAX_REVOKED: Final = 10_000
#: Set by ``spendgate serve --workers N`` (random, per run) for its workers to share one secret.
SECRET_ENV: Final = "SPENDGATE_UI_SESSION_SECRET"


def process_secret() -> bytes:
    """The process's session secret: the workers' shared one (``SECRET_ENV``), else random."""
    shared = os.environ.get(SECRET_ENV)
    if shared:
        return hashlib.sha256(b"spendgate-ui-secret\x00" + shared.encode()).digest()
    return secrets.token_bytes(32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class Session:
    id: str
    expires_at: datetime


class Sessions:
    """Issues and verifies session cookies. One per gateway process (kept across reloads:
    only a changed admin token logs people out)."""

    def __init__(self, *, ttl: timedelta = timedelta(hours=12), secret: bytes | None = None) -> None:
        self.ttl = ttl
        self._secret = secret if secret is not None else process_secret()
        self._revoked: OrderedDict[str, datetime] = OrderedDict()

    def _key(self, token: str) -> bytes:
        return hmac.new(self._secret, b"spendgate-ui-session\x00" + token.encode(), hashlib.sha256).digest()

    def _mac(self, token: str, payload: str) -> str:
        return _b64(hmac.new(self._key(token), payload.encode(), hashlib.sha256).digest())

    def issue(self, token: str, now: datetime) -> tuple[str, Session]:
        """A new session for a login with the admin token ``token``: (cookie value, session)."""
        session = Session(secrets.token_urlsafe(18), now + self.ttl)
        payload = f"{_VERSION}.{session.id}.{int(session.expires_at.timestamp())}"
        return f"{payload}.{self._mac(token, payload)}", session

    def verify(self, cookie: str | None, token: str | None, now: datetime) -> Session | None:
        """The session of ``cookie`` when it is signed under ``token``, unexpired, not revoked."""
        if not cookie or not token:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[2].isdigit() or len(parts[2]) > 12:
            return None
        payload = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3].encode(), self._mac(token, payload).encode()):
            return None
        expires = datetime.fromtimestamp(int(parts[2]), UTC)
        if now >= expires or parts[1] in self._revoked:
            return None
        return Session(parts[1], expires)

    def csrf(self, token: str, session: Session) -> str:
        """The session's CSRF token (header ``X-CSRF-Token``)."""
        return self._mac(token, f"csrf.{session.id}")

    def csrf_ok(self, token: str, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest((given or "").encode(), self.csrf(token, session).encode())

    def revoke(self, session: Session, now: datetime) -> None:
        """Logout: the session's cookie is refused from now on, wherever a copy of it is."""
        while self._revoked:  # drop the ids whose cookies have expired anyway
            oldest, expires = next(iter(self._revoked.items()))
            if expires > now:
                break
            del self._revoked[oldest]
        if len(self._revoked) >= _MAX_REVOKED:
            # Too many to keep: a new secret ends every session (all must log in again) rather
            # than forget a revoked one.
            self._secret = secrets.token_bytes(32)
            self._revoked.clear()
            return
        self._revoked[session.id] = session.expires_at


class LoginLimiter:
    """Failed logins per client address: at most ``attempts`` per ``window``, then refused
    until the window that began with the first failure ends. Bounded: at most ``addresses``
    addresses are remembered (the oldest forgotten first)."""

    def __init__(
        self, *, attempts: int = 5, window: timedelta = timedelta(minutes=1), addresses: int = 4096
    ) -> None:
        self.attempts = attempts
        self.window = window
        self.addresses = addresses
        self._failures: OrderedDict[str, tuple[datetime, int]] = OrderedDict()

    def retry_after(self, address: str, now: datetime) -> int | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        entry = self._failures.get(address)
        if entry is None:
            return None
        start, count = entry
        if now >= start + self.window:
            del self._failures[address]
            return None
        if count < self.attempts:
            return None
        return max(1, math.ceil((start + self.window - now).total_seconds()))

    def failed(self, address: str, now: datetime) -> None:
        entry = self._failures.pop(address, None)
        if entry is None or now >= entry[0] + self.window:
            entry = (now, 0)
        self._failures[address] = (entry[0], entry[1] + 1)
        while len(self._failures) > self.addresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
