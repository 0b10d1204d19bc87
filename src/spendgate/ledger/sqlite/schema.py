"""The schema, kept as SQL in ``schema.sql`` (the ledger) and ``keys.sql`` (virtual keys).

The files are package data, read once at import. ``migrate`` brings a file to
``SCHEMA_VERSION`` (``PRAGMA user_version``) in the open transaction.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources
from typing import Final

from spendgate.ledger.base import LedgerUnavailableError

__all__ = ["KEYS_SCHEMA", "KEYS_SCHEMA_VERSION", "MIGRATIONS", "SCHEMA_VERSION", "migrate", "parse_sql"]

_MIGRATION: Final = re.compile(r"--\s*migration\s+(\d+)\b")


def parse_sql(text: str) -> list[list[str]]:
    """Statements grouped by their ``-- migration N`` header (one group if there is none).

    A statement ends with the line that completes it (``;`` outside quotes and
    comments): one statement per line end. Comment lines between statements
    are dropped; a statement's own text (its trailing comments included) is
    kept as written, without the semicolon.
    """
    sections: list[list[str]] = [[]]
    numbered = 0
    buffer: list[str] = []
    for line in text.splitlines():
        if not buffer:
            marker = _MIGRATION.fullmatch(line.strip())
            if marker is not None:
                if int(marker.group(1)) != numbered + 1:
                    raise ValueError(f"migration {marker.group(1)} is out of order")
                if numbered == 0 and sections[0]:
                    raise ValueError("statements before the first migration")
                if numbered:
                    sections.append([])
                numbered += 1
                continue
            if not line.strip() or line.lstrip().startswith("--"):
                continue
        buffer.append(line)
        statement = "\n".join(buffer)
        if sqlite3.complete_statement(statement):
            sections[-1].append(statement.strip().removesuffix(";").rstrip())
            buffer = []
    if buffer:
        raise ValueError(f"unterminated SQL statement: {buffer[0]!r}")
    return sections


def _load(name: str) -> str:
    return resources.files("spendgate.ledger.sqlite").joinpath(name).read_text(encoding="utf-8")


#: MIGRATIONS[n] takes a file from schema version n to n+1.
MIGRATIONS: Final[list[list[str]]] = parse_sql(_load("schema.sql"))
SCHEMA_VERSION: Final = len(MIGRATIONS)

KEYS_SCHEMA: Final[list[str]] = parse_sql(_load("keys.sql"))[0]
KEYS_SCHEMA_VERSION: Final = 1


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the file to ``SCHEMA_VERSION`` inside the caller's open write transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LedgerUnavailableError(
            f"spendgate ledger {path!r} has schema version {version}, newer than this "
            f"spendgate understands ({SCHEMA_VERSION}); upgrade spendgate"
        )
    for statements in MIGRATIONS[version:]:
        for statement in statements:
            conn.execute(statement)
    # PRAGMA takes no parameters; the value is our own integer.
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
