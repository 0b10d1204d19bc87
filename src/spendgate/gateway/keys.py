"""Virtual keys: handed out once, stored only as a SHA-256 hash, checked on every request.

    store = open_keystore("sqlite:///spendgate.db")   # the ledger's file: its own table
    key, secret = store.create(user="alice", team="research", models=("gpt-4o", "claude-*"))
    store.authenticate(secret)      # -> VirtualKey, or None (unknown, disabled, expired)

A secret is ``sg-`` + 43 URL-safe characters (256 random bits). Such a secret
cannot be guessed or brute-forced from its hash, so a fast hash is enough (a
slow password hash would only add latency to every request). Lookups go by
the hash through an index; the one comparison of hashes in Python is
constant-time anyway.

``authenticate`` is the hot path: answers are cached in-process by hash for
``cache_ttl`` seconds (5 by default), so a key disabled on one gateway
instance stops working on every instance within that time without a
database read per request.

Storage is the ledger backend's (``spendgate.ledger.KeyStorage``), found by
the ledger's URL through the backend registry (``spendgate.ledger.open_keystore``):
a backend that stores keys serves the gateway with no change here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Final

from spendgate.budgets import Attributes
from spendgate.clock import Clock, SystemClock
from spendgate.gateway.settings import VirtualKey
from spendgate.ledger.protocols import KeyStorage

__all__ = [
    "SECRET_PREFIX",
    "KeyStore",
    "MemoryKeyStore",
    "SQLiteKeyStore",
    "hash_secret",
    "open_keystore",
]

SECRET_PREFIX: Final = "sg-"
_SECRET_LEN: Final = len(SECRET_PREFIX) + 43
_HINT_LEN: Final = len(SECRET_PREFIX) + 4
_CACHE_MAX: Final = 10_000  # bounded: random secrets from an attacker must not grow memory


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _digest_of(secret: object) -> str | None:
    """The hash to look a secret up by; None for what cannot be a secret (never stored)."""
    if not isinstance(secret, str) or len(secret) != _SECRET_LEN or not secret.startswith(SECRET_PREFIX):
        return None
    return hash_secret(secret)


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _new_id() -> str:
    return "key_" + secrets.token_hex(8)


def _hint(secret: str) -> str:
    return secret[:_HINT_LEN] + "…"


def _text(value: object, what: str, *, limit: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValueError(f"{what} must be a non-empty string of at most {limit} characters, got {value!r}")
    if any(ord(c) < 32 for c in value):
        raise ValueError(f"{what} must not contain control characters")
    return value


def _texts(values: Iterable[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        checked = _text(value, what)
        if checked is not None and checked not in out:
            out.append(checked)
    return tuple(out)


def _instant(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None:
        raise ValueError(f"{what} must carry a time zone (e.g. 2027-01-01T00:00:00Z)")
    return value.astimezone(UTC)


class KeyStore:
    """Virtual keys over a backend's ``KeyStorage``: this class has the rules and the cache."""

    def __init__(
        self,
        storage: KeyStorage,
        *,
        clock: Clock | None = None,
        cache_ttl: float = 5.0,
        read_timeout: float = 3.0,
    ) -> None:
        if cache_ttl < 0:
            raise ValueError(f"cache_ttl must be >= 0 seconds, got {cache_ttl}")
        if not read_timeout > 0:
            raise ValueError(f"read_timeout must be > 0 seconds, got {read_timeout}")
        #: How long ``alookup`` waits for the storage on a cache miss (then: fail closed, a 503).
        self.read_timeout = read_timeout
        self.storage = storage
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.cache_ttl = timedelta(seconds=cache_ttl)
        self._cache: dict[str, tuple[datetime, VirtualKey | None]] = {}
        self._reading: dict[str, asyncio.Future[tuple[VirtualKey, str] | None]] = {}

    def close(self) -> None:
        """Release the storage's connections."""
        self.storage.close()

    # -- the API ---------------------------------------------------------------------------
    def create(
        self,
        *,
        user: str | None = None,
        team: str | None = None,
        project: str | None = None,
        customer: str | None = None,
        tags: Iterable[str] = (),
        models: Iterable[str] = (),
        expires_at: datetime | None = None,
        name: str | None = None,
    ) -> tuple[VirtualKey, str]:
        """A new key and its secret. The secret is returned only here: show it once, then forget it."""
        key_id = _new_id()
        attributes = Attributes(
            key=key_id,
            user=_text(user, "user"),
            team=_text(team, "team"),
            project=_text(project, "project"),
            customer=_text(customer, "customer"),
            tags=frozenset(_texts(tags, "each tag")),
        )
        secret = _new_secret()
        key = VirtualKey(
            id=key_id,
            hint=_hint(secret),
            attributes=attributes,
            models=_texts(models, "each model pattern"),
            expires_at=_instant(expires_at, "expires_at"),
            disabled=False,
            created_at=self.clock.now(),
            name=_text(name, "name"),
        )
        self.storage.insert(key, hash_secret(secret))
        return key, secret

    def lookup(self, secret: str) -> VirtualKey | None:
        """The key a secret belongs to, disabled or expired ones included (for precise 401 messages)."""
        digest = _digest_of(secret)
        if digest is None:
            return None
        now = self.clock.now()
        hit = self._cached(digest, now)
        if hit is not None:
            return hit[0]
        return self._remember(digest, now, self.storage.by_hash(digest))

    async def alookup(self, secret: str) -> VirtualKey | None:
        """``lookup`` for the event loop: a cache miss reads the storage on a thread, so a slow or
        unreachable database server stalls only the requests that need that key, never the loop.
        Concurrent misses of one secret share one read."""
        digest = _digest_of(secret)
        if digest is None:
            return None
        now = self.clock.now()
        hit = self._cached(digest, now)
        if hit is not None:
            return hit[0]
        pending = self._reading.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self.storage.by_hash, digest))
            self._reading[digest] = pending
            pending.add_done_callback(lambda _: self._reading.pop(digest, None))
        try:
            # Shielded: one caller's cancellation must not cancel the read the others wait on.
            async with asyncio.timeout(self.read_timeout):
                found = await asyncio.shield(pending)
        except TimeoutError:
            # A server that accepts connections and never answers (hung, or a partition that
            # drops nothing) would hold every request for this key: give up, fail closed.
            raise TimeoutError(f"the key store did not answer within {self.read_timeout:g} s") from None
        return self._remember(digest, now, found)

    def _cached(self, digest: str, now: datetime) -> tuple[VirtualKey | None] | None:
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self.cache_ttl:
            return (cached[1],)
        return None

    def _remember(
        self, digest: str, now: datetime, found: tuple[VirtualKey, str] | None
    ) -> VirtualKey | None:
        key: VirtualKey | None = None
        if found is not None and hmac.compare_digest(found[1], digest):
            key = found[0]
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (now, key)
        return key

    def authenticate(self, secret: str) -> VirtualKey | None:
        """The usable key for a secret; None when unknown, disabled or expired."""
        key = self.lookup(secret)
        if key is None or not key.usable(self.clock.now()):
            return None
        return key

    def get(self, key_id: str) -> VirtualKey:
        """The key with this id; KeyError if there is none."""
        key = self.storage.by_id(key_id)
        if key is None:
            raise KeyError(key_id)
        return key

    def list(self) -> list[VirtualKey]:
        """Every key, oldest first (no secrets: they are not stored)."""
        return self.storage.all()

    def disable(self, key_id: str) -> VirtualKey:
        return self._change(key_id, lambda: self.storage.set_disabled(key_id, True))

    def enable(self, key_id: str) -> VirtualKey:
        return self._change(key_id, lambda: self.storage.set_disabled(key_id, False))

    def rotate(self, key_id: str) -> tuple[VirtualKey, str]:
        """A new secret for the same key (same id, attributes and budgets); the old one stops working."""
        secret = _new_secret()
        key = self._change(
            key_id, lambda: self.storage.set_secret(key_id, hash_secret(secret), _hint(secret))
        )
        return key, secret

    def delete(self, key_id: str) -> bool:
        """Forget a key; False if there was none. Its spend stays in the request log."""
        done = self.storage.remove(key_id)
        self._cache.clear()
        return done

    def _change(self, key_id: str, change: Callable[[], bool]) -> VirtualKey:
        if not change():
            raise KeyError(key_id)
        # Only this process's cache can be cleared; other instances catch up within cache_ttl.
        self._cache.clear()
        return self.get(key_id)


# -- storage by backend -------------------------------------------------------------------------


class MemoryKeyStore(KeyStore):
    """Keys in this process only (tests, demos, ``memory://`` ledgers)."""

    def __init__(self, *, clock: Clock | None = None, cache_ttl: float = 5.0) -> None:
        from spendgate.ledger.memory import MemoryKeyStorage

        super().__init__(MemoryKeyStorage(), clock=clock, cache_ttl=cache_ttl)


class SQLiteKeyStore(KeyStore):
    """Keys in a SQLite file (normally the ledger's), shared by every process on the machine."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        cache_ttl: float = 5.0,
        busy_timeout: float = 10.0,
    ) -> None:
        from spendgate.ledger.sqlite import SQLiteKeyStorage

        clock = clock if clock is not None else SystemClock()
        storage = SQLiteKeyStorage(path, clock=clock, busy_timeout=busy_timeout)
        super().__init__(storage, clock=clock, cache_ttl=cache_ttl)


def open_keystore(url: str, *, clock: Clock | None = None, cache_ttl: float = 5.0) -> KeyStore:
    """The keys of the ledger at ``url`` (``memory://``, ``sqlite:///path.db``: the same file),
    from whichever backend the registry has for its scheme."""
    from spendgate.ledger import open_keystore as open_from_registry

    return open_from_registry(url, clock=clock, cache_ttl=cache_ttl)
