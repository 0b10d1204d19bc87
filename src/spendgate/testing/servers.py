"""Ledger URLs of their own for tests on the real PostgreSQL and Redis servers.

Each test gets a schema (PostgreSQL) or a key prefix (Redis) of its own, dropped when it
ends, so tests never see each other's budgets and never touch data that is not theirs.
The servers come from the environment, as ``scripts/services.sh`` leaves it:

- ``SPENDGATE_TEST_POSTGRES``: a database the tests may create schemas in
  (default ``postgresql://postgres@127.0.0.1:5432/spendgate_test``);
- ``SPENDGATE_TEST_REDIS``: a Redis database the tests may write under their prefixes
  (default ``redis://127.0.0.1:6379/15``).
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = [
    "DEFAULT_TEST_POSTGRES",
    "DEFAULT_TEST_REDIS",
    "drop_postgres_schema",
    "drop_redis_prefix",
    "postgres_test_url",
    "redis_test_url",
    "with_query",
]

DEFAULT_TEST_POSTGRES = "postgresql://postgres@127.0.0.1:5432/spendgate_test"
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/15"


def with_query(url: str, **params: str) -> str:
    """``url`` with query parameters added (or replaced)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote, safe="/:")))


def postgres_test_url(tag: str = "t") -> str:
    """A URL of the test database with a new schema of its own (created by the ledger)."""
    base = os.environ.get("SPENDGATE_TEST_POSTGRES", DEFAULT_TEST_POSTGRES)
    return with_query(base, schema=f"{tag}_{secrets.token_hex(6)}")


def redis_test_url(durable: str, tag: str = "t") -> str:
    """A URL of the test Redis database under a new key prefix, beside ``durable``."""
    base = os.environ.get("SPENDGATE_TEST_REDIS", DEFAULT_TEST_REDIS)
    return with_query(base, prefix=f"{tag}-{secrets.token_hex(6)}", durable=durable)


def drop_postgres_schema(url: str) -> None:
    """Drop the schema a ``postgres_test_url`` named, with everything in it."""
    import psycopg
    from psycopg import sql

    from spendgate.ledger.postgres.settings import parse_url

    if "schema" not in dict(parse_qsl(urlsplit(url).query)):
        raise ValueError(f"{url!r} names no schema: refusing to drop anything")
    settings = parse_url(url)  # spendgate's own parameters out, the rest libpq's
    with psycopg.connect(settings.conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.schema)))


def drop_redis_prefix(url: str) -> int:
    """Delete every key under the prefix a ``redis_test_url`` named; how many."""
    import redis

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    prefix = query.get("prefix")
    if not prefix:
        raise ValueError(f"{url!r} names no prefix: refusing to delete anything")
    client = redis.Redis.from_url(urlunsplit(parts._replace(query="")), socket_timeout=5)
    try:
        deleted = 0
        pattern = prefix.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?").replace("[", "\\[")
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{pattern}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    finally:
        client.close()
