"""The SQLite file is never started over silently: lost, replaced, missing, or not writable.

Everything here works on real files: deleted with ``os.remove``, replaced with ``os.replace``,
made unwritable with ``chattr +i`` (root ignores file modes, so a chmod proves nothing here; the
tests that need the attribute skip where the filesystem or the user cannot set it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.ledger import (
    LedgerMissingError,
    LedgerReplacedError,
    LedgerUnavailableError,
    Reservation,
    open_keystore,
    open_ledger,
)
from spendgate.ledger.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteKeyStorage, SQLiteLedger
from spendgate.money import Money

from .conftest import T0

USD = Money.usd
ALICE = Attributes(user="alice")
CAP = Budget("cap", {}, USD("10"))
T = TypeVar("T")


def _files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def _delete(path: Path) -> None:
    """``rm spend.db*`` while the ledger runs."""
    for p in _files(path):
        p.unlink()


def _in_thread(call: Callable[[], T]) -> T | BaseException:
    """``call`` on a new thread (so on new SQLite connections); its result or its exception."""
    out: list[T | BaseException] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return out[0]


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i`` on ``paths`` for the block (never the -shm file: SQLite maps it, and a write
    to an immutable mapping kills the process with SIGBUS). Skips the test where it cannot be set."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    done = subprocess.run(["chattr", "+i", *map(str, paths)], check=False, capture_output=True, text=True)
    try:
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not possible here: {done.stderr.strip()}")
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True, check=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "spend.db"


def _probes(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'probes'").fetchone()[0])


# -- deleted or replaced while in use ---------------------------------------------------------------


def test_a_deleted_file_fails_every_write_and_is_never_created_again(db: Path) -> None:
    ledger = SQLiteLedger(db, [CAP], clock=ManualClock(T0))
    assert isinstance(ledger.reserve("r1", ALICE, USD("1"), 60), Reservation)
    _delete(db)
    # The open connections could go on writing into the deleted file, unseen, until a restart
    # began an empty ledger: every write refuses instead.
    with pytest.raises(LedgerReplacedError, match="was deleted or replaced while in use"):
        ledger.reserve("r2", ALICE, USD("1"), 60)
    with pytest.raises(LedgerReplacedError, match="no file is there any more"):
        ledger.settle("r1", USD("1"))
    with pytest.raises(LedgerReplacedError):
        ledger.check_writable()
    with pytest.raises(LedgerReplacedError):
        asyncio.run(ledger.areserve("r3", ALICE, USD("1"), 60))  # the group commit checks too
    # A new thread opens new connections: they must not create the file either.
    assert isinstance(_in_thread(lambda: ledger.usage("cap")), LedgerReplacedError)
    assert not db.exists()
    ledger.close()
    assert not db.exists()


def test_a_replaced_file_is_refused(db: Path, tmp_path: Path) -> None:
    ledger = SQLiteLedger(db, [CAP], clock=ManualClock(T0))
    assert isinstance(ledger.reserve("r1", ALICE, USD("4"), 60), Reservation)
    other = tmp_path / "other.db"
    SQLiteLedger(other, [CAP]).close()
    os.replace(other, db)  # a restore from a backup, another ledger, a fresh file: not this one
    with pytest.raises(LedgerReplacedError, match="another file is there now"):
        ledger.reserve("r2", ALICE, USD("1"), 60)
    ledger.close()


def test_a_file_overwritten_in_place_is_refused(db: Path, tmp_path: Path) -> None:
    ledger = SQLiteLedger(db, [CAP], clock=ManualClock(T0))
    assert isinstance(ledger.reserve("r1", ALICE, USD("4"), 60), Reservation)
    ledger.close()  # no connection holds the file now
    other = tmp_path / "other.db"
    SQLiteLedger(other, [CAP]).close()
    inode = db.stat().st_ino
    shutil.copyfile(other, db)  # another ledger's bytes in the same inode (as `cp backup.db spend.db`)
    assert db.stat().st_ino == inode
    with pytest.raises(LedgerReplacedError, match="the file there now is another one"):
        ledger.usage("cap")  # the id stored in the file tells them apart


def test_the_same_file_moved_back_is_accepted_again(db: Path, tmp_path: Path) -> None:
    ledger = SQLiteLedger(db, [CAP], clock=ManualClock(T0))
    assert isinstance(ledger.reserve("r1", ALICE, USD("4"), 60), Reservation)
    aside = tmp_path / "aside.db"
    os.rename(db, aside)
    with pytest.raises(LedgerReplacedError):
        ledger.settle("r1", USD("3"))
    os.rename(aside, db)  # the operator puts it back: nothing was lost, nothing starts over
    assert ledger.settle("r1", USD("3")).status == "settled"
    assert ledger.usage("cap").spent == USD("3")
    ledger.close()


def test_the_key_storage_never_recreates_its_file(db: Path) -> None:
    storage = SQLiteKeyStorage(db)
    store = open_keystore(f"sqlite:///{db}", cache_ttl=0)
    key, _ = store.create(user="alice")
    _delete(db)
    with pytest.raises(LedgerReplacedError, match="virtual keys file"):
        store.create(user="bob")
    with pytest.raises(LedgerReplacedError):
        store.disable(key.id)
    assert isinstance(_in_thread(lambda: storage.by_id(key.id)), LedgerReplacedError)
    assert not db.exists()
    store.close()
    storage.close()
    assert not db.exists()


# -- create=False: open an existing ledger only --------------------------------------------------------


def test_create_false_never_creates_a_file(db: Path) -> None:
    url = f"sqlite:///{db}"
    with pytest.raises(LedgerMissingError, match=r"does not exist \(the gateway creates it on first start\)"):
        open_ledger(url, create=False)
    with pytest.raises(LedgerMissingError, match="does not exist"):
        open_ledger(url, create=False, fail_open=True)  # nothing to admit into: still an error
    with pytest.raises(LedgerMissingError, match="does not exist"):
        open_keystore(url, create=False)
    assert not db.exists()
    db.touch()  # an empty file is no ledger: it is not made into one either
    with pytest.raises(LedgerMissingError, match="holds no spendgate ledger"):
        open_ledger(url, create=False)
    assert db.stat().st_size == 0
    db.unlink()
    open_ledger(url, [CAP]).close()  # what the gateway does at its first start
    again = open_ledger(url, create=False)
    assert [b.id for b in again.budgets()] == ["cap"]
    again.close()
    open_keystore(url, create=False).close()
    # memory:// has nothing to find: it ignores the flag.
    open_ledger("memory://", create=False).close()
    open_keystore("memory://", create=False).close()


def test_an_older_file_gets_its_id_at_open(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    ledger = SQLiteLedger(db, [CAP])
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert conn.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone() is not None
    assert isinstance(ledger.reserve("r", ALICE, USD("1"), 60), Reservation)
    ledger.close()


def test_a_new_file_is_announced(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="spendgate.ledger"):
        SQLiteLedger(db).close()
    assert f"no file at {db}: created a new, empty ledger" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="spendgate.ledger"):
        SQLiteLedger(db).close()
    assert "created" not in caplog.text


# -- check_writable: the write path, proven --------------------------------------------------------


def test_check_writable_commits_a_write(db: Path) -> None:
    ledger = SQLiteLedger(db, [CAP])
    before = _probes(db)
    ledger.check_writable()
    asyncio.run(ledger.acheck_writable())
    assert _probes(db) == before + 2  # committed: another connection sees both
    ledger.close()


def test_check_writable_fails_when_writes_fail(db: Path) -> None:
    ledger = SQLiteLedger(db, [CAP])
    assert isinstance(ledger.reserve("r1", ALICE, USD("1"), 60), Reservation)
    with immutable(db, Path(f"{db}-wal")):
        # Requests cannot be recorded: the reservation's commit fails, and so does the probe.
        with pytest.raises(LedgerUnavailableError):
            ledger.reserve("r2", ALICE, USD("1"), 60)
        with pytest.raises(LedgerUnavailableError, match="not writable"):
            ledger.check_writable()
        assert ledger.usage("cap").reserved == USD("1")  # reads still answer: not a proof
    ledger.check_writable()
    assert isinstance(ledger.reserve("r3", ALICE, USD("1"), 60), Reservation)
    ledger.close()


def test_check_writable_sees_a_main_file_no_new_connection_could_write(db: Path) -> None:
    ledger = SQLiteLedger(db, [CAP])
    ledger.check_writable()
    with immutable(db):
        # The open connections still commit (into the WAL), so requests pass for now; a restart,
        # another worker or a new thread could not write at all. The probe says so now.
        assert isinstance(ledger.reserve("r1", ALICE, USD("1"), 60), Reservation)
        with pytest.raises(LedgerUnavailableError, match=r"not writable \(spend.db cannot be written\)"):
            asyncio.run(ledger.acheck_writable())
    ledger.check_writable()
    ledger.close()
