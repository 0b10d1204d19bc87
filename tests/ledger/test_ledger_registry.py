"""The backend registry: ledgers and the gateway's key storage by URL scheme."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from spendgate.budgets import Attributes, Budget
from spendgate.clock import Clock, ManualClock
from spendgate.errors import ConfigError
from spendgate.gateway.keys import KeyStore
from spendgate.ledger import (
    KeyStorage,
    Ledger,
    Reservation,
    known_schemes,
    open_key_storage,
    open_keystore,
    open_ledger,
    register_backend,
    registry,
    resolve_url,
)
from spendgate.ledger.memory import MemoryLedger
from spendgate.ledger.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, parse_sql
from spendgate.money import Money

from .conftest import T0


def _ledger_only(url: str, *, budgets: Sequence[Budget], clock: Clock | None, **options: Any) -> Ledger:
    return MemoryLedger(budgets, clock=clock, **options)


@pytest.fixture
def ledger_only_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    """A backend that registers a ledger and no key storage (removed again after the test)."""
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    register_backend("ledgeronly", _ledger_only)
    return "ledgeronly://"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_open_keystore_through_the_registry(backend: str, tmp_path: Path) -> None:
    url = "memory://" if backend == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"
    clock = ManualClock(T0)
    store = open_keystore(url, clock=clock, cache_ttl=0)
    assert isinstance(store, KeyStore) and isinstance(store.storage, KeyStorage)
    assert store.clock is clock
    key, secret = store.create(user="alice")
    assert store.authenticate(secret) == key
    if backend == "sqlite":  # the keys are in the file: a second store (process) finds them
        again = open_keystore(url, cache_ttl=0)
        assert again.get(key.id) == key
        again.close()
        ledger = open_ledger(url, [Budget.from_config({"id": "b", "limit": "1"})])
        assert isinstance(ledger.reserve("r", Attributes(key=key.id), Money.usd("1"), 60), Reservation)
        ledger.close()
    store.close()


def test_gateway_open_keystore_delegates(tmp_path: Path) -> None:
    from spendgate.gateway.keys import open_keystore as gateway_open_keystore

    store = gateway_open_keystore(f"sqlite:///{tmp_path / 'spend.db'}")
    assert type(store) is KeyStore
    store.close()


def test_unknown_scheme_is_a_clear_error() -> None:
    for opener in (open_keystore, open_key_storage):
        with pytest.raises(ConfigError) as info:
            opener("mongodb://user:secret@localhost:27017/0")
        assert info.value.key == "ledger"
        message = str(info.value)
        assert "unknown ledger URL" in message and "memory://" in message and "sqlite://" in message
        assert "secret" not in message  # credentials are never echoed
    with pytest.raises(ConfigError):
        open_keystore("spend.db")
    with pytest.raises(ConfigError, match="sqlite:///path"):
        open_keystore("sqlite://relative")


def test_a_backend_with_only_a_ledger(ledger_only_backend: str) -> None:
    assert "ledgeronly" in known_schemes()
    ledger = open_ledger(ledger_only_backend, [Budget.from_config({"id": "b", "limit": "1"})])
    assert isinstance(ledger.reserve("r", Attributes(), Money.usd("1"), 60), Reservation)
    with pytest.raises(ConfigError) as info:
        open_keystore(ledger_only_backend)
    message = str(info.value)
    assert "does not store virtual keys" in message
    assert "memory://" in message and "sqlite://" in message  # where keys can live


def test_registering_a_scheme_twice_needs_replace(ledger_only_backend: str) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backend("ledgeronly", _ledger_only)
    register_backend("LedgerOnly://", _ledger_only, replace=True)  # scheme names are normalised
    assert known_schemes().count("ledgeronly") == 1


def test_old_import_paths_still_work() -> None:
    from spendgate.ledger import base
    from spendgate.ledger.group_commit import GroupCommit
    from spendgate.ledger.sqlite import SQLiteLedger, sqlite_factory
    from spendgate.ledger.sqlite.group_commit import GroupCommit as MovedGroupCommit

    assert base.open_ledger is open_ledger and base.register_backend is register_backend
    assert GroupCommit is MovedGroupCommit and callable(sqlite_factory) and issubclass(SQLiteLedger, Ledger)


def test_ledger_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Ledger()  # type: ignore[abstract]


# -- the schema, kept as SQL -------------------------------------------------------------------


def test_schema_file_is_the_migrations() -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) == 6
    assert sum(s.startswith("CREATE TABLE") for s in MIGRATIONS[0]) == 6
    assert MIGRATIONS[1] == ["INSERT INTO meta (key, value) VALUES ('ledger_id', random()), ('probes', 0)"]
    # Rate limits: their definitions, window buckets, counts in flight, and what a request took.
    assert [s.split("(")[0].strip() for s in MIGRATIONS[2] if s.startswith("CREATE TABLE")] == [
        "CREATE TABLE limits",
        "CREATE TABLE limit_buckets",
        "CREATE TABLE limit_flight",
    ]
    assert "ALTER TABLE requests ADD COLUMN takes TEXT" in MIGRATIONS[2]
    # The alert outbox: its events, destinations and deliveries.
    assert [s.split("(")[0].strip() for s in MIGRATIONS[3] if s.startswith("CREATE TABLE")] == [
        "CREATE TABLE alert_events",
        "CREATE TABLE alert_destinations",
        "CREATE TABLE alert_deliveries",
    ]
    for statements in MIGRATIONS:
        assert not any(s.endswith(";") or s.lstrip().startswith("--") for s in statements)


def test_parse_sql() -> None:
    text = (
        "-- a comment\n-- migration 1\nCREATE TABLE a (x -- why; not the end\n);\n\n-- migration 2\nSELECT 1;"
    )
    assert parse_sql(text) == [["CREATE TABLE a (x -- why; not the end\n)"], ["SELECT 1"]]
    assert parse_sql("SELECT 1;\nSELECT 2\n  FROM t;") == [["SELECT 1", "SELECT 2\n  FROM t"]]
    with pytest.raises(ValueError, match="out of order"):
        parse_sql("-- migration 2\nSELECT 1;")
    with pytest.raises(ValueError, match="unterminated"):
        parse_sql("-- migration 1\nSELECT 1")


def test_resolve_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "gw"
    assert resolve_url("sqlite:///spend.db", base) == f"sqlite:///{base / 'spend.db'}"
    assert resolve_url("sqlite:///data/../x.db", str(base)) == f"sqlite:///{base / 'x.db'}"
    assert resolve_url("SQLITE:///x.db", base) == f"sqlite:///{base / 'x.db'}"  # schemes are case-blind
    # Left as they are: absolute paths, memory://, unknown schemes, what sqlite_path refuses anyway.
    for url in (
        "sqlite:////var/lib/spend.db",
        "memory://",
        "mongodb://localhost/0",
        "spend.db",
        "sqlite://rel.db",
        "sqlite:///:memory:",
        "sqlite:///x.db?mode=ro",
    ):
        assert resolve_url(url, base) == url
    # A relative base is taken against the working directory now: the result is absolute.
    monkeypatch.chdir(tmp_path)
    assert resolve_url("sqlite:///x.db", "gw") == f"sqlite:///{base / 'x.db'}"
    assert resolve_url("sqlite:///x.db", Path("gw")) == resolve_url("sqlite:///x.db", base)


def test_a_backend_may_resolve_its_own_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    register_backend("files", _ledger_only, resolve=lambda url, base: f"files://{base}/{url[8:]}")
    assert resolve_url("files://a", "/srv") == "files:///srv/a"
