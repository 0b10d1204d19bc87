"""The gateway's virtual keys in the ledger's SQLite file (tables of their own, ``keys.sql``).

Same file and connection discipline as the ledger (``connection.py``): WAL,
one connection per thread reopened in a forked child, ``BEGIN IMMEDIATE``
with polling for the write lock. A read is one statement (no snapshot needed).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any, Final

from spendgate.clock import Clock, SystemClock
from spendgate.errors import ConfigError
from spendgate.gateway.settings import VirtualKey  # plain data (budgets only): no gateway machinery
from spendgate.ledger.base import LedgerMissingError, LedgerUnavailableError
from spendgate.ledger.rows import key_of
from spendgate.ledger.sqlite.codec import us
from spendgate.ledger.sqlite.connection import SQLiteFile, sqlite_path
from spendgate.ledger.sqlite.schema import KEYS_SCHEMA, KEYS_SCHEMA_VERSION

__all__ = ["SQLiteKeyStorage", "sqlite_keys_factory"]

_COLUMNS: Final = (
    "id, hint, name, dim_user, dim_team, dim_project, dim_customer, tags, models, expires_at, disabled, "
    "created_at, secret_hash"
)


class SQLiteKeyStorage(SQLiteFile):
    """``KeyStorage`` in a SQLite file (normally the ledger's), shared by every process on the machine.

    Like the ledger, it never starts the file over (``connection.py``): ``create=False`` opens
    an existing file only, and a file deleted or replaced under it fails every write.
    """

    _FILE_ID = "SELECT value FROM gateway_meta WHERE key = 'file_id'"
    _WHAT = "virtual keys file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        busy_timeout: float = 10.0,
        wal_autocheckpoint: int = 4000,
        create: bool = True,
    ) -> None:
        super().__init__(
            path, busy_timeout=busy_timeout, wal_autocheckpoint=wal_autocheckpoint, create=create
        )
        self.clock: Clock = clock if clock is not None else SystemClock()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        conn = self._conn(writer=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        self._ready = True  # _write below must not come back here
        self._write(lambda c: [c.execute(statement) for statement in KEYS_SCHEMA])
        self._remember(conn)
        version = self._one("SELECT value FROM gateway_meta WHERE key = 'keys_schema'", ())[0]
        if version > KEYS_SCHEMA_VERSION:
            raise ConfigError(
                "ledger",
                f"{self.path}: virtual keys schema {version} is newer than this spendgate; upgrade it",
            )

    def _unavailable(self, exc: BaseException) -> LedgerUnavailableError:
        return LedgerUnavailableError(f"the virtual keys in {self.path!r} are unavailable ({exc})")

    def _query(self, read: Callable[[sqlite3.Connection], Any]) -> Any:
        """One statement on this thread's reader, outside any transaction."""
        try:
            return read(self._conn(writer=False))
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # a bug, not an outage
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        return self._query(lambda conn: conn.execute(sql, params).fetchone())

    def _update(self, sql: str, params: tuple[Any, ...]) -> bool:
        return bool(self._write(lambda c: c.execute(sql, params).rowcount))

    # -- KeyStorage -----------------------------------------------------------------------------
    def insert(self, key: VirtualKey, secret_hash: str) -> None:
        a = key.attributes
        now = us(self.clock.now())
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
                    None if key.expires_at is None else us(key.expires_at),
                    us(key.created_at) if key.created_at else now,
                    now,
                ),
            )
        )

    def by_hash(self, secret_hash: str) -> tuple[VirtualKey, str] | None:
        row = self._one(f"SELECT {_COLUMNS} FROM gateway_keys WHERE secret_hash = ?", (secret_hash,))
        return key_of(row) if row else None

    def by_id(self, key_id: str) -> VirtualKey | None:
        row = self._one(f"SELECT {_COLUMNS} FROM gateway_keys WHERE id = ?", (key_id,))
        return key_of(row)[0] if row else None

    def all(self) -> list[VirtualKey]:
        rows = self._query(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM gateway_keys ORDER BY created_at, id"
            ).fetchall()
        )
        return [key_of(row)[0] for row in rows]

    def set_disabled(self, key_id: str, disabled: bool) -> bool:
        return self._update(
            "UPDATE gateway_keys SET disabled = ?, updated_at = ? WHERE id = ?",
            (int(disabled), us(self.clock.now()), key_id),
        )

    def set_secret(self, key_id: str, secret_hash: str, hint: str) -> bool:
        return self._update(
            "UPDATE gateway_keys SET secret_hash = ?, hint = ?, updated_at = ? WHERE id = ?",
            (secret_hash, hint, us(self.clock.now()), key_id),
        )

    def remove(self, key_id: str) -> bool:
        return self._update("DELETE FROM gateway_keys WHERE id = ?", (key_id,))


def sqlite_keys_factory(url: str, *, clock: Clock, **options: Any) -> SQLiteKeyStorage:
    """The virtual keys in the file of ``sqlite:///path.db`` (the ledger's URL)."""
    path = sqlite_path(url, "spendgate.db")
    try:
        return SQLiteKeyStorage(path, clock=clock, **options)
    except LedgerMissingError:
        raise  # says plainly what is missing and who creates it
    except (LedgerUnavailableError, sqlite3.Error) as exc:
        cause = exc.__cause__ if isinstance(exc, LedgerUnavailableError) and exc.__cause__ else exc
        raise ConfigError("ledger", f"cannot open virtual keys in {path!r}: {cause}") from None
