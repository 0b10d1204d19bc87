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
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from spendgate.budgets import EPOCH, Attributes
from spendgate.clock import Clock, SystemClock
from spendgate.errors import ConfigError
from spendgate.gateway.settings import VirtualKey

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
_US: Final = timedelta(microseconds=1)
T = TypeVar("T")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


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


class KeyStore(ABC):
    """Virtual keys over some storage; subclasses provide the rows, this class the rules and the cache."""

    def __init__(self, *, clock: Clock | None = None, cache_ttl: float = 5.0) -> None:
        if cache_ttl < 0:
            raise ValueError(f"cache_ttl must be >= 0 seconds, got {cache_ttl}")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.cache_ttl = timedelta(seconds=cache_ttl)
        self._cache: dict[str, tuple[datetime, VirtualKey | None]] = {}

    # -- storage (one row per key: the VirtualKey and the hash of its secret) ---------------
    @abstractmethod
    def _insert(self, key: VirtualKey, secret_hash: str) -> None: ...

    @abstractmethod
    def _by_hash(self, secret_hash: str) -> tuple[VirtualKey, str] | None: ...

    @abstractmethod
    def _by_id(self, key_id: str) -> VirtualKey | None: ...

    @abstractmethod
    def _all(self) -> list[VirtualKey]: ...

    @abstractmethod
    def _set_disabled(self, key_id: str, disabled: bool) -> bool: ...

    @abstractmethod
    def _set_secret(self, key_id: str, secret_hash: str, hint: str) -> bool: ...

    @abstractmethod
    def _remove(self, key_id: str) -> bool: ...

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""

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
        self._insert(key, hash_secret(secret))
        return key, secret

    def lookup(self, secret: str) -> VirtualKey | None:
        """The key a secret belongs to, disabled or expired ones included (for precise 401 messages)."""
        if not isinstance(secret, str) or len(secret) != _SECRET_LEN or not secret.startswith(SECRET_PREFIX):
            return None
        digest = hash_secret(secret)
        now = self.clock.now()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self.cache_ttl:
            return cached[1]
        found = self._by_hash(digest)
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
        key = self._by_id(key_id)
        if key is None:
            raise KeyError(key_id)
        return key

    def list(self) -> list[VirtualKey]:
        """Every key, oldest first (no secrets: they are not stored)."""
        return self._all()

    def disable(self, key_id: str) -> VirtualKey:
        return self._change(key_id, lambda: self._set_disabled(key_id, True))

    def enable(self, key_id: str) -> VirtualKey:
        return self._change(key_id, lambda: self._set_disabled(key_id, False))

    def rotate(self, key_id: str) -> tuple[VirtualKey, str]:
        """A new secret for the same key (same id, attributes and budgets); the old one stops working."""
        secret = _new_secret()
        key = self._change(key_id, lambda: self._set_secret(key_id, hash_secret(secret), _hint(secret)))
        return key, secret

    def delete(self, key_id: str) -> bool:
        """Forget a key; False if there was none. Its spend stays in the request log."""
        done = self._remove(key_id)
        self._cache.clear()
        return done

    def _change(self, key_id: str, change: Callable[[], bool]) -> VirtualKey:
        if not change():
            raise KeyError(key_id)
        # Only this process's cache can be cleared; other instances catch up within cache_ttl.
        self._cache.clear()
        return self.get(key_id)


# -- memory -------------------------------------------------------------------------------------


class MemoryKeyStore(KeyStore):
    """Keys in this process only (tests, demos, ``memory://`` ledgers)."""

    def __init__(self, *, clock: Clock | None = None, cache_ttl: float = 5.0) -> None:
        super().__init__(clock=clock, cache_ttl=cache_ttl)
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[VirtualKey, str]] = {}
        self._hashes: dict[str, str] = {}

    def _insert(self, key: VirtualKey, secret_hash: str) -> None:
        with self._lock:
            self._keys[key.id] = (key, secret_hash)
            self._hashes[secret_hash] = key.id

    def _by_hash(self, secret_hash: str) -> tuple[VirtualKey, str] | None:
        with self._lock:
            key_id = self._hashes.get(secret_hash)
            return self._keys.get(key_id) if key_id is not None else None

    def _by_id(self, key_id: str) -> VirtualKey | None:
        with self._lock:
            found = self._keys.get(key_id)
        return found[0] if found else None

    def _all(self) -> list[VirtualKey]:
        with self._lock:
            return [key for key, _ in self._keys.values()]

    def _set_disabled(self, key_id: str, disabled: bool) -> bool:
        with self._lock:
            found = self._keys.get(key_id)
            if found is None:
                return False
            self._keys[key_id] = (replace(found[0], disabled=disabled), found[1])
            return True

    def _set_secret(self, key_id: str, secret_hash: str, hint: str) -> bool:
        with self._lock:
            found = self._keys.get(key_id)
            if found is None:
                return False
            del self._hashes[found[1]]
            self._keys[key_id] = (replace(found[0], hint=hint), secret_hash)
            self._hashes[secret_hash] = key_id
            return True

    def _remove(self, key_id: str) -> bool:
        with self._lock:
            found = self._keys.pop(key_id, None)
            if found is None:
                return False
            self._hashes.pop(found[1], None)
            return True


# -- SQLite -------------------------------------------------------------------------------------

# Own tables next to the ledger's, in the same file; the ledger's PRAGMA user_version is not
# ours to touch, so this schema's version lives in gateway_meta.
_SCHEMA: Final = [
    "CREATE TABLE IF NOT EXISTS gateway_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS gateway_keys (
        id          TEXT PRIMARY KEY,       -- key_<16 hex>
        secret_hash TEXT NOT NULL UNIQUE,   -- SHA-256 hex of the secret; the secret is never stored
        hint        TEXT NOT NULL,          -- 'sg-abcd…'
        name        TEXT,
        dim_user    TEXT,
        dim_team    TEXT,
        dim_project TEXT,
        dim_customer TEXT,
        tags        TEXT NOT NULL,          -- JSON array
        models      TEXT NOT NULL,          -- JSON array of glob patterns
        expires_at  INTEGER,                -- µs since the epoch, UTC
        disabled    INTEGER NOT NULL DEFAULT 0,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    )""",
    "INSERT INTO gateway_meta (key, value) VALUES ('keys_schema', 1) ON CONFLICT DO NOTHING",
]
_KEYS_SCHEMA: Final = 1
_COLUMNS: Final = (
    "id, hint, name, dim_user, dim_team, dim_project, dim_customer, tags, models, expires_at, disabled, "
    "created_at, secret_hash"
)


def _us(when: datetime) -> int:
    return (when - EPOCH) // _US


def _dt(us: int | None) -> datetime | None:
    return None if us is None else EPOCH + timedelta(microseconds=us)


def _row_key(row: Sequence[Any]) -> tuple[VirtualKey, str]:
    key_id, hint, name, user, team, project, customer, tags, models, expires, disabled, created, digest = row
    key = VirtualKey(
        id=key_id,
        hint=hint,
        attributes=Attributes(
            key=key_id,
            user=user,
            team=team,
            project=project,
            customer=customer,
            tags=frozenset(json.loads(tags)),
        ),
        models=tuple(json.loads(models)),
        expires_at=_dt(expires),
        disabled=bool(disabled),
        created_at=_dt(created),
        name=name,
    )
    return key, digest


class _Local(threading.local):
    pid: int = -1
    conn: sqlite3.Connection | None = None


class SQLiteKeyStore(KeyStore):
    """Keys in a SQLite file (normally the ledger's), shared by every process on the machine.

    Same discipline as the SQLite ledger: WAL, ``busy_timeout``, one connection
    per thread, reopened in a forked child, ``BEGIN IMMEDIATE`` for writes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        cache_ttl: float = 5.0,
        busy_timeout: float = 10.0,
    ) -> None:
        super().__init__(clock=clock, cache_ttl=cache_ttl)
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file::memory:"):
            raise ConfigError("ledger", "an in-memory SQLite file is per connection; use memory:// instead")
        self.busy_timeout = busy_timeout
        self._local = _Local()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._setup()

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        pid = os.getpid()
        if local.pid == pid and local.conn is not None:
            return local.conn
        if pid != self._pid:  # a forked child must not use, nor later close, its parent's handles
            self._pid, self._lock, self._conns = pid, threading.Lock(), []
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA synchronous = NORMAL")
        local.pid, local.conn = pid, conn
        with self._lock:
            self._conns.append(conn)
        return conn

    def _setup(self) -> None:
        conn = self._conn()
        conn.execute("PRAGMA journal_mode = WAL")
        self._write(lambda c: [c.execute(statement) for statement in _SCHEMA])
        version = conn.execute("SELECT value FROM gateway_meta WHERE key = 'keys_schema'").fetchone()[0]
        if version > _KEYS_SCHEMA:
            raise ConfigError(
                "ledger",
                f"{self.path}: virtual keys schema {version} is newer than this spendgate; upgrade it",
            )

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
            conn.execute("COMMIT")
            return result
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        self._local = _Local()
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _insert(self, key: VirtualKey, secret_hash: str) -> None:
        a = key.attributes
        now = _us(self.clock.now())
        self._write(
            lambda c: c.execute(
                "INSERT INTO gateway_keys (id, secret_hash, hint, name, dim_user, dim_team, dim_project, "
                "dim_customer, tags, models, expires_at, disabled, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (
                    key.id,
                    secret_hash,
                    key.hint,
                    key.name,
                    a.user,
                    a.team,
                    a.project,
                    a.customer,
                    json.dumps(sorted(a.tags)),
                    json.dumps(list(key.models)),
                    None if key.expires_at is None else _us(key.expires_at),
                    _us(key.created_at) if key.created_at else now,
                    now,
                ),
            )
        )

    def _by_hash(self, secret_hash: str) -> tuple[VirtualKey, str] | None:
        row = (
            self._conn()
            .execute(f"SELECT {_COLUMNS} FROM gateway_keys WHERE secret_hash = ?", (secret_hash,))
            .fetchone()
        )
        return _row_key(row) if row else None

    def _by_id(self, key_id: str) -> VirtualKey | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM gateway_keys WHERE id = ?", (key_id,)).fetchone()
        return _row_key(row)[0] if row else None

    def _all(self) -> list[VirtualKey]:
        rows = self._conn().execute(f"SELECT {_COLUMNS} FROM gateway_keys ORDER BY created_at, id").fetchall()
        return [_row_key(row)[0] for row in rows]

    def _update(self, sql: str, params: tuple[Any, ...]) -> bool:
        return bool(self._write(lambda c: c.execute(sql, params).rowcount))

    def _set_disabled(self, key_id: str, disabled: bool) -> bool:
        return self._update(
            "UPDATE gateway_keys SET disabled = ?, updated_at = ? WHERE id = ?",
            (int(disabled), _us(self.clock.now()), key_id),
        )

    def _set_secret(self, key_id: str, secret_hash: str, hint: str) -> bool:
        return self._update(
            "UPDATE gateway_keys SET secret_hash = ?, hint = ?, updated_at = ? WHERE id = ?",
            (secret_hash, hint, _us(self.clock.now()), key_id),
        )

    def _remove(self, key_id: str) -> bool:
        return self._update("DELETE FROM gateway_keys WHERE id = ?", (key_id,))


def open_keystore(url: str, *, clock: Clock | None = None, cache_ttl: float = 5.0) -> KeyStore:
    """``memory://`` or ``sqlite:///path.db`` (the ledger's URL: keys live in the same file)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "memory":
        return MemoryKeyStore(clock=clock, cache_ttl=cache_ttl)
    if sep and scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2 or "?" in rest:
            raise ConfigError("ledger", f"write a SQLite URL as sqlite:///path/to/spendgate.db, got {url!r}")
        try:
            return SQLiteKeyStore(rest[1:], clock=clock, cache_ttl=cache_ttl)
        except sqlite3.Error as exc:
            raise ConfigError("ledger", f"cannot open virtual keys in {rest[1:]!r}: {exc}") from None
    shown = url.rsplit("@", maxsplit=1)[-1]
    raise ConfigError("ledger", f"virtual keys are stored in memory:// or sqlite:/// ledgers, not {shown!r}")
