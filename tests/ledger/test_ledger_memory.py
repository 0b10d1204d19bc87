"""What only the memory backend has: bounded in-process structures."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from spendgate.budgets import Attributes, Budget
from spendgate.clock import ManualClock
from spendgate.ledger.memory import MemoryLedger
from spendgate.money import Money

from .conftest import T0


def test_bounded_memory() -> None:
    clock = ManualClock(T0)
    ledger = MemoryLedger([Budget("g", {}, Money.usd("1000000"))], clock=clock, max_log=100, max_finished=500)
    for n in range(10_000):
        ledger.reserve(f"r{n}", Attributes(user="u"), Money.usd("0.01"), 60)
        ledger.settle(f"r{n}", Money.usd("0.01"))
        if n % 1000 == 0:
            clock.advance(1)
    assert len(ledger._log) == 100
    assert len(ledger._ended) == 500
    assert len(ledger._heap) <= 2 * ledger.open_reservations() + 4096 + 1
    assert ledger.usage("g").spent == Money.usd("100")


def test_old_windows_are_dropped_after_retention() -> None:
    clock = ManualClock(T0)
    ledger = MemoryLedger(
        [Budget.from_config({"id": "h", "limit": "1", "window": "hour"})],
        clock=clock,
        retention=timedelta(days=1),
    )
    for hour in range(72):
        ledger.reserve(f"r{hour}", Attributes(), Money.usd("0.5"), 60)
        ledger.settle(f"r{hour}", Money.usd("0.5"))
        clock.advance(3600)
    ledger.expire_leases()  # also the maintenance pass
    assert 20 <= len(ledger._states["h"].windows) <= 26


def test_bench_runs() -> None:
    bench = Path(__file__).parents[2] / "bench" / "ledger.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--seconds", "0.2", "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line.split()[:2] for line in done.stdout.splitlines()[3:]]
    assert rows == [["memory", "1"], ["memory", "2"], ["sqlite", "1"], ["sqlite", "2"]], done.stdout
