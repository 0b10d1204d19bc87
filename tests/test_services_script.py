"""``scripts/services.sh``, which brings up the test servers, against the servers already up.

These runs only take the paths that leave a running server alone (or add a database of the
test's own, dropped after): starting servers is checked by hand on free ports, not here.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

from spendgate.testing.servers import DEFAULT_TEST_POSTGRES, DEFAULT_TEST_REDIS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "services.sh"
POSTGRES = os.environ.get("SPENDGATE_TEST_POSTGRES", DEFAULT_TEST_POSTGRES)
REDIS = os.environ.get("SPENDGATE_TEST_REDIS", DEFAULT_TEST_REDIS)


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _databases() -> set[str]:
    with psycopg.connect(POSTGRES, connect_timeout=3) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


@pytest.fixture(scope="module")
def servers_up() -> None:
    """Both servers answer: otherwise the script would start some, which is not for a test."""
    try:
        psycopg.connect(POSTGRES, connect_timeout=3).close()
        client = redis.Redis.from_url(REDIS, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except (psycopg.Error, redis.RedisError) as e:
        # The suite runs through scripts/test.sh, which starts them: not up is a failure, not a skip.
        pytest.fail(f"the test servers are not up (scripts/test.sh starts them): {e}")


def run(postgres: str = POSTGRES, redis_url: str = REDIS, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPENDGATE_TEST_POSTGRES": postgres, "SPENDGATE_TEST_REDIS": redis_url}
    return subprocess.run(
        list(command) or ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_defaults_are_the_servers_modules() -> None:
    text = SCRIPT.read_text()
    defaults = dict(re.findall(r'export (SPENDGATE_TEST_\w+)="\$\{\1:-([^}]+)\}"', text))
    assert defaults == {
        "SPENDGATE_TEST_POSTGRES": DEFAULT_TEST_POSTGRES,
        "SPENDGATE_TEST_REDIS": DEFAULT_TEST_REDIS,
    }


@pytest.mark.usefixtures("servers_up")
def test_servers_that_answer_are_left_alone_quickly() -> None:
    before = _databases()
    start = time.monotonic()
    result = run()
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    # Every install, start or creation says so on stderr: nothing was done.
    assert result.stderr == ""
    assert result.stdout == ""
    assert elapsed < 2, f"{elapsed:.2f}s with both servers up"
    assert _databases() == before


@pytest.mark.usefixtures("servers_up")
def test_sourced_it_exports_the_urls_and_returns() -> None:
    script = (
        "set -euo pipefail\n"
        f"source {str(SCRIPT)!r}\n"
        'env | grep "^SPENDGATE_TEST_" | sort\n'
        "declare -F | grep -c ' _sg_' || true\n"
        "echo still here\n"
    )
    result = run(POSTGRES, REDIS, "bash", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"SPENDGATE_TEST_POSTGRES={POSTGRES}",
        f"SPENDGATE_TEST_REDIS={REDIS}",
        "0",
        "still here",
    ]


@pytest.fixture
def new_database(servers_up: None) -> Iterator[str]:
    """A database name of the test's own on the test server (dropped after)."""
    name = f"spendgate_services_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES, connect_timeout=3, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        if not (row and row[0]):
            pytest.skip("the test role may not create databases")
        try:
            yield name
        finally:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def test_a_missing_database_is_created(new_database: str) -> None:
    url = _with_database(POSTGRES, new_database)
    result = run(url)
    assert result.returncode == 0, result.stderr
    assert f"creating database {new_database}" in result.stderr
    assert new_database in _databases()
    again = run(url)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""


def test_an_unreachable_server_elsewhere_fails_with_a_message() -> None:
    # 127.0.0.2 is loopback (refuses at once) but not one this script starts servers on.
    result = run("postgresql://postgres@127.0.0.2:1/spendgate_test")
    assert result.returncode != 0
    assert "PostgreSQL at 127.0.0.2:1 is not reachable" in result.stderr
    assert "127.0.0.1/localhost only" in result.stderr
