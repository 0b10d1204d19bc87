"""The generation marker's durable half: which Redis state the durable store belongs with.

A random generation is written to Redis (``{prefix}:generation``) and here, in a small table
of this package's own in the durable store, ``spendgate_redis_generation``: one row per key
prefix, ``confirmed`` once Redis was seen holding it. A confirmed marker whose generation
Redis does not hold means Redis lost its data (or is another Redis): the ledger fails closed
instead of admitting against zeroed counters. An unconfirmed one is a first setup that did
not finish: the next process completes it.
"""

from __future__ import annotations

import sqlite3
import time
from typing import NamedTuple, Protocol

from spendgate.errors import ConfigError
from spendgate.ledger.base import Ledger, LedgerUnavailableError

__all__ = ["Marker", "MarkerStore", "marker_store"]

_TABLE = "spendgate_redis_generation"
_CREATE = f"""
    CREATE TABLE IF NOT EXISTS {_TABLE} (
        prefix     TEXT PRIMARY KEY,
        generation TEXT NOT NULL,
        confirmed  INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    )"""


class Marker(NamedTuple):
    generation: str
    confirmed: bool


class MarkerStore(Protocol):
    def get(self) -> Marker | None: ...

    def create(self, generation: str) -> None:
        """Insert an unconfirmed marker unless there is one (another process may race)."""

    def confirm(self, generation: str) -> None: ...

    def replace(self, generation: str) -> None:
        """A rebuild's new generation, confirmed."""


class SQLiteMarkers:
    """Through the durable SQLite ledger's own connections and transactions."""

    def __init__(self, ledger: Ledger, prefix: str) -> None:
        from spendgate.ledger.sqlite import SQLiteLedger

        assert isinstance(ledger, SQLiteLedger)
        self.ledger = ledger
        self.prefix = prefix

    def get(self) -> Marker | None:
        def body(conn: sqlite3.Connection) -> Marker | None:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
            ).fetchone()
            if exists is None:
                return None
            row = conn.execute(
                f"SELECT generation, confirmed FROM {_TABLE} WHERE prefix = ?", (self.prefix,)
            ).fetchone()
            return None if row is None else Marker(row[0], bool(row[1]))

        return self.ledger._read(body)

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute(_CREATE)
            conn.execute(sql, params)

        self.ledger._write(body)

    def create(self, generation: str) -> None:
        self._write(
            f"INSERT INTO {_TABLE} (prefix, generation, confirmed, updated_at) VALUES (?, ?, 0, ?) "
            "ON CONFLICT (prefix) DO NOTHING",
            (self.prefix, generation, int(time.time())),
        )

    def confirm(self, generation: str) -> None:
        self._write(
            f"UPDATE {_TABLE} SET confirmed = 1, updated_at = ? WHERE prefix = ? AND generation = ?",
            (int(time.time()), self.prefix, generation),
        )

    def replace(self, generation: str) -> None:
        self._write(
            f"INSERT INTO {_TABLE} (prefix, generation, confirmed, updated_at) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (prefix) DO UPDATE SET generation = excluded.generation, confirmed = 1, "
            "updated_at = excluded.updated_at",
            (self.prefix, generation, int(time.time())),
        )


class PostgresMarkers:
    """A connection of its own per call (markers are read at setup and on a generation
    change only), in the schema the URL's ``schema`` parameter names (else the default)."""

    def __init__(self, url: str, prefix: str) -> None:
        from spendgate.ledger.postgres.settings import parse_url

        settings = parse_url(url)  # the PostgreSQL ledger's own reading of the URL
        self.schema: str | None = settings.schema
        self.conninfo = settings.conninfo
        self.timeout = max(settings.timeout, 1.0)
        self.prefix = prefix

    def _run(self, sql: str, params: tuple[object, ...], *, create: bool) -> Marker | None:
        try:
            import psycopg
            from psycopg import sql as pgsql
        except ImportError as exc:  # pragma: no cover - an install without the postgres extra
            raise ConfigError("ledger", "a PostgreSQL durable store needs spendgate[postgres]") from exc
        table = pgsql.Identifier(self.schema, _TABLE) if self.schema else pgsql.Identifier(_TABLE)
        try:
            with psycopg.connect(
                self.conninfo, autocommit=False, connect_timeout=int(self.timeout + 1)
            ) as conn:
                if create:
                    # Instances starting together: CREATE TABLE IF NOT EXISTS races in PostgreSQL
                    # (a unique violation in its catalog), so one at a time.
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_TABLE,))
                    conn.execute(pgsql.SQL(_CREATE.replace(_TABLE, "{}")).format(table))
                elif conn.execute(
                    "SELECT to_regclass(%s)", (f"{self.schema + '.' if self.schema else ''}{_TABLE}",)
                ).fetchone() == (None,):
                    return None
                row = conn.execute(pgsql.SQL(sql).format(table), params).fetchone()
                conn.commit()
        except psycopg.Error as exc:
            raise LedgerUnavailableError(f"the durable store is unavailable ({exc})") from exc
        return None if row is None else Marker(str(row[0]), bool(row[1]))

    def get(self) -> Marker | None:
        return self._run(
            "SELECT generation, confirmed FROM {} WHERE prefix = %s", (self.prefix,), create=False
        )

    def create(self, generation: str) -> None:
        self._run(
            "INSERT INTO {} (prefix, generation, confirmed, updated_at) VALUES (%s, %s, 0, %s) "
            "ON CONFLICT (prefix) DO NOTHING RETURNING generation, confirmed",
            (self.prefix, generation, int(time.time())),
            create=True,
        )

    def confirm(self, generation: str) -> None:
        self._run(
            "UPDATE {} SET confirmed = 1, updated_at = %s WHERE prefix = %s AND generation = %s "
            "RETURNING generation, confirmed",
            (int(time.time()), self.prefix, generation),
            create=True,
        )

    def replace(self, generation: str) -> None:
        self._run(
            "INSERT INTO {} (prefix, generation, confirmed, updated_at) VALUES (%s, %s, 1, %s) "
            "ON CONFLICT (prefix) DO UPDATE SET generation = excluded.generation, confirmed = 1, "
            "updated_at = excluded.updated_at RETURNING generation, confirmed",
            (self.prefix, generation, int(time.time())),
            create=True,
        )


def marker_store(durable: Ledger, durable_url: str, prefix: str) -> MarkerStore:
    if durable.scheme == "sqlite":
        return SQLiteMarkers(durable, prefix)
    if durable_url.startswith(("postgresql://", "postgres://")):
        return PostgresMarkers(durable_url.replace("postgres://", "postgresql://", 1), prefix)
    raise ConfigError(
        "ledger",
        f"a Redis ledger's durable store must be sqlite:// or postgresql://, got {durable.scheme}://",
    )
