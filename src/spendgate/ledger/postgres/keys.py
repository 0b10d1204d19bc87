"""The gateway's virtual keys in the ledger's PostgreSQL schema (tables of their own, ``keys.sql``).

Same pools and runner as the ledger (``connection.py``): one statement per call, autocommit.
Like the ledger, the key storage can be opened while the server is down (``create=True``):
its setup is retried by every call until it succeeds, each failing closed meanwhile.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from spendgate.clock import Clock, SystemClock
from spendgate.errors import ConfigError
from spendgate.gateway.settings import VirtualKey  # plain data (budgets only): no gateway machinery
from spendgate.ledger.base import LedgerMissingError, LedgerUnavailableError
from spendgate.ledger.postgres.codec import us
from spendgate.ledger.postgres.connection import Body, PgStore, Q, ServerUnavailableError
from spendgate.ledger.postgres.schema import KEYS_SCHEMA, KEYS_SCHEMA_VERSION, lock_schema
from spendgate.ledger.postgres.settings import parse_url
from spendgate.ledger.rows import key_of

__all__ = ["PostgresKeyStorage", "postgres_keys_factory"]

log = logging.getLogger("spendgate.ledger")

_COLUMNS: Final = (
    "id, hint, name, dim_user, dim_team, dim_project, dim_customer, tags, models, expires_at, disabled, "
    "created_at, secret_hash"
)


class PostgresKeyStorage(PgStore):
    """``KeyStorage`` in a PostgreSQL schema (normally the ledger's), shared by every process
    and host. ``create=False`` opens an existing ledger's schema only (LedgerMissingError)."""

    _WHAT = "virtual keys in"

    def __init__(
        self, url: str, *, clock: Clock | None = None, create: bool = True, timeout: float | None = None
    ) -> None:
        super().__init__(parse_url(url, timeout=timeout), create=create)
        self.clock: Clock = clock if clock is not None else SystemClock()
        try:
            self._setup_done(self._execute_raw(self._setup_body, txn=True))
        except ServerUnavailableError as exc:
            if not create:
                self.close()
                raise
            log.error("spendgate: %s; its setup is deferred to the first call that reaches it", exc)
        except BaseException:
            self.close()
            raise

    def _setup_body(self) -> Body[None]:
        yield from lock_schema(self.settings.schema, self.create)
        if not self.create:
            rows = yield Q("SELECT to_regclass('spendgate_schema') IS NOT NULL")
            if not rows[0][0]:
                raise LedgerMissingError(
                    f"{self.settings.display} holds no spendgate ledger (the gateway creates it on first start)"
                )
        yield Q(KEYS_SCHEMA)
        rows = yield Q("SELECT value FROM gateway_meta WHERE key = 'keys_schema'")
        if int(rows[0][0]) > KEYS_SCHEMA_VERSION:
            raise ConfigError(
                "ledger",
                f"{self.settings.display}: virtual keys schema {rows[0][0]} is newer than this spendgate; "
                "upgrade it",
            )

    def _one(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def body() -> Body[list[tuple[Any, ...]]]:
            return (yield Q(sql, params))

        rows: list[tuple[Any, ...]] = self._execute(body, txn=False)
        return rows

    # -- KeyStorage -----------------------------------------------------------------------------
    def insert(self, key: VirtualKey, secret_hash: str) -> None:
        a = key.attributes
        now = us(self.clock.now())
        self._one(
            "INSERT INTO gateway_keys (id, secret_hash, hint, name, dim_user, dim_team, dim_project, "
            "dim_customer, tags, models, expires_at, disabled, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, false, %s, %s)",
            (
                key.id, secret_hash, key.hint, key.name, a.user, a.team, a.project, a.customer,
                json.dumps(sorted(a.tags)), json.dumps(list(key.models)),
                None if key.expires_at is None else us(key.expires_at),
                us(key.created_at) if key.created_at else now, now,
            ),
        )  # fmt: skip

    def by_hash(self, secret_hash: str) -> tuple[VirtualKey, str] | None:
        rows = self._one(f"SELECT {_COLUMNS} FROM gateway_keys WHERE secret_hash = %s", (secret_hash,))
        return key_of(rows[0]) if rows else None

    def by_id(self, key_id: str) -> VirtualKey | None:
        rows = self._one(f"SELECT {_COLUMNS} FROM gateway_keys WHERE id = %s", (key_id,))
        return key_of(rows[0])[0] if rows else None

    def all(self) -> list[VirtualKey]:
        rows = self._one(f'SELECT {_COLUMNS} FROM gateway_keys ORDER BY created_at, id COLLATE "C"', ())
        return [key_of(row)[0] for row in rows]

    def set_disabled(self, key_id: str, disabled: bool) -> bool:
        return bool(
            self._one(
                "UPDATE gateway_keys SET disabled = %s, updated_at = %s WHERE id = %s RETURNING 1",
                (disabled, us(self.clock.now()), key_id),
            )
        )

    def set_secret(self, key_id: str, secret_hash: str, hint: str) -> bool:
        return bool(
            self._one(
                "UPDATE gateway_keys SET secret_hash = %s, hint = %s, updated_at = %s WHERE id = %s RETURNING 1",
                (secret_hash, hint, us(self.clock.now()), key_id),
            )
        )

    def remove(self, key_id: str) -> bool:
        return bool(self._one("DELETE FROM gateway_keys WHERE id = %s RETURNING 1", (key_id,)))


def postgres_keys_factory(url: str, *, clock: Clock, **options: Any) -> PostgresKeyStorage:
    """The virtual keys in the schema of ``postgresql://...`` (the ledger's URL)."""
    try:
        return PostgresKeyStorage(url, clock=clock, **options)
    except (LedgerMissingError, ConfigError):
        raise
    except LedgerUnavailableError as exc:
        raise ConfigError("ledger", f"cannot open virtual keys: {exc}") from None
