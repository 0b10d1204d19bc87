"""The schema, kept as SQL in ``schema.sql`` (the ledger) and ``keys.sql`` (virtual keys).

The files are package data, read once at import. ``migrate`` brings the URL's schema to
``SCHEMA_VERSION`` (``spendgate_schema.version``) inside the caller's transaction, holding a
transaction-scoped advisory lock on the schema's name: instances starting together take
turns, and the second finds the work done. Each migration is one script (its functions'
bodies hold semicolons), sent in one round trip.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

from psycopg import sql

from spendgate.ledger.base import LedgerMissingError, LedgerUnavailableError
from spendgate.ledger.postgres.connection import Body, Q

__all__ = ["KEYS_SCHEMA", "KEYS_SCHEMA_VERSION", "MIGRATIONS", "SCHEMA_VERSION", "lock_schema", "migrate"]

_MIGRATION: Final = re.compile(r"^--\s*migration\s+(\d+)\s*$", re.MULTILINE)


def split_migrations(text: str) -> list[str]:
    """The scripts after each ``-- migration N`` header, in order (N = 1, 2, ...)."""
    marks = list(_MIGRATION.finditer(text))
    for expected, mark in enumerate(marks, start=1):
        if int(mark.group(1)) != expected:
            raise ValueError(f"migration {mark.group(1)} is out of order")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [text[mark.end() : end].strip() for mark, end in zip(marks, ends, strict=True)]


def _load(name: str) -> str:
    return resources.files("spendgate.ledger.postgres").joinpath(name).read_text(encoding="utf-8")


#: MIGRATIONS[n] takes a schema from version n to n+1.
MIGRATIONS: Final[list[str]] = split_migrations(_load("schema.sql"))
SCHEMA_VERSION: Final = len(MIGRATIONS)

KEYS_SCHEMA: Final = _load("keys.sql")
KEYS_SCHEMA_VERSION: Final = 1


def lock_schema(schema: str, create: bool) -> Body[None]:
    """Take the schema's setup lock (until the transaction ends) and, with ``create``, make the
    schema. The lock comes first: two ``CREATE SCHEMA IF NOT EXISTS`` at once can still collide."""
    yield Q("SELECT pg_advisory_xact_lock(hashtextextended('spendgate schema ' || %s, 0))", (schema,))
    if create:
        yield Q(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def migrate(schema: str, display: str, *, create: bool) -> Body[None]:
    """Bring ``schema`` to ``SCHEMA_VERSION`` in the open transaction (``search_path`` names it).

    ``create=False``: LedgerMissingError when it holds no ledger (nothing is created). A
    schema newer than this code: LedgerUnavailableError saying to upgrade.
    """
    yield from lock_schema(schema, create)
    rows = yield Q("SELECT to_regclass('spendgate_schema') IS NOT NULL")
    version = 0
    if rows[0][0]:
        rows = yield Q("SELECT version FROM spendgate_schema")
        version = int(rows[0][0])
    elif not create:
        raise LedgerMissingError(
            f"{display} holds no spendgate ledger (schema {schema!r}; the gateway creates it on first start)"
        )
    if version > SCHEMA_VERSION:
        raise LedgerUnavailableError(
            f"spendgate ledger {display} has schema version {version}, newer than this spendgate "
            f"understands ({SCHEMA_VERSION}); upgrade spendgate"
        )
    if version == SCHEMA_VERSION:
        return
    for script in MIGRATIONS[version:]:
        yield Q(script)
    yield Q("UPDATE spendgate_schema SET version = %s", (SCHEMA_VERSION,))
