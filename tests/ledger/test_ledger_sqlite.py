"""What only the SQLite backend has: a file that can be missing, corrupt, old, new or forked."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.errors import ConfigError, SpendgateError
from spendgate.ledger import LedgerUnavailableError, Reservation, open_ledger
from spendgate.ledger.sqlite import SCHEMA_VERSION, SQLiteLedger
from spendgate.money import Money

from .conftest import T0

USD = Money.usd
ALICE = Attributes(user="alice")
CAP = Budget("cap", {}, USD("10"))


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_ledger(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(absolute, SQLiteLedger) and absolute.path == str(tmp_path / "a.db")
    monkeypatch.chdir(tmp_path)
    relative = open_ledger("sqlite:///rel.db")
    # Relative to the working directory at open, made absolute then: a later chdir cannot
    # point new connections at another file.
    assert isinstance(relative, SQLiteLedger) and relative.path == str(tmp_path / "rel.db")
    assert (tmp_path / "rel.db").exists()
    for bad in ("sqlite://", "sqlite://rel.db", "sqlite:///x.db?mode=ro", "sqlite:///:memory:"):
        with pytest.raises(ConfigError):
            open_ledger(bad)
    absolute.close()
    relative.close()


def test_schema_is_versioned(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    SQLiteLedger(path, [CAP]).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerUnavailableError, match="newer than this spendgate"):
        SQLiteLedger(path)


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    first = SQLiteLedger(path, [CAP], clock=ManualClock(T0))
    assert isinstance(first.reserve("r1", ALICE, USD("4"), 60), Reservation)
    first.settle("r1", USD("3"))
    first.close()
    again = SQLiteLedger(path, clock=ManualClock(T0))  # no budgets given: the file has them
    assert [b.id for b in again.budgets()] == ["cap"]
    assert again.usage("cap").spent == USD("3")
    assert again.settle("r1", USD("3")).status == "already_settled"
    again.close()


def test_corrupt_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    with pytest.raises(LedgerUnavailableError, match="fail closed") as info:
        SQLiteLedger(path, [CAP])
    assert isinstance(info.value, SpendgateError)


def test_unreachable_file_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(LedgerUnavailableError, match="unavailable"):
        open_ledger(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'spend.db'}", [CAP])


def test_file_lost_while_running_fails_closed(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "spend.db", [CAP])
    assert isinstance(ledger.reserve("r1", ALICE, USD("1"), 60), Reservation)
    _break(ledger)
    with pytest.raises(LedgerUnavailableError):
        ledger.reserve("r2", ALICE, USD("1"), 60)


def _break(ledger: SQLiteLedger) -> None:
    """Make every later statement fail as an unreadable file would."""
    ledger.close()
    ledger.path = str(Path(ledger.path).parent / "gone" / "spend.db")


def test_fail_open_admits_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "no" / "spend.db"
    with caplog.at_level(logging.ERROR, logger="spendgate.ledger"):
        ledger = open_ledger(f"sqlite:///{missing}", [CAP], fail_open=True)
        result = ledger.reserve("r1", ALICE, USD("1000"), 60)
    assert isinstance(result, Reservation) and result.unrecorded and result.lines == ()
    assert "FAIL-OPEN" in caplog.text
    assert ledger.settle("r1", USD("1")).status == "unrecorded"
    assert ledger.release("r1").status == "unrecorded"
    # Once the file is reachable, the ledger works and enforces again.
    missing.parent.mkdir()
    assert isinstance(ledger.reserve("r2", ALICE, USD("10"), 60), Reservation)
    assert not isinstance(ledger.reserve("r3", ALICE, USD("1"), 60), Reservation)
    ledger.close()


def test_connection_per_thread_and_close(tmp_path: Path) -> None:
    import threading

    ledger = SQLiteLedger(tmp_path / "spend.db", [CAP])
    seen: list[int] = []

    def body() -> None:
        seen.append(id(ledger._conn(writer=True)))

    threads = [threading.Thread(target=body) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 3
    ledger.close()
    assert ledger.usage("cap").spent == USD("0")  # reconnects lazily after close


def _child_reserves(ledger: SQLiteLedger, out: Any) -> None:
    result = ledger.reserve("child", ALICE, USD("2"), 60)
    out.put((os.getpid(), isinstance(result, Reservation)))


@pytest.mark.skipif(sys.platform == "win32" or "fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "spend.db", [CAP])
    assert isinstance(ledger.reserve("parent", ALICE, USD("1"), 60), Reservation)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_reserves, args=(ledger, out))
    child.start()
    pid, ok = out.get(timeout=30)
    child.join(10)
    assert (pid != os.getpid(), ok, child.exitcode) == (True, True, 0)
    assert ledger.usage("cap").reserved == USD("3")
    ledger.close()
