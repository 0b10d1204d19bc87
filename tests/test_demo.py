"""The main job's demo: the whole lifecycle against the fake upstream process and a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from spendgate.cli import main
from spendgate.demo import run_demo
from spendgate.ledger import open_ledger


def test_demo_stops_at_the_budget_without_overshooting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    lines: list[str] = []
    admitted = run_demo(url, "0.05", echo=lines.append)
    # each request reserves $0.0171955 (gpt-4o at its priority rates: the request names no
    # service tier, so it may be served at priority) and costs $0.00703: 5 fit in $0.05
    assert admitted == 5
    assert any("Cost tracking budget exceeded: current usage 70% of limit 0.05 USD" in line for line in lines)
    ledger = open_ledger(url)
    usage = ledger.usage("demo")
    assert usage.spent.nanos == 5 * 7_030_000
    assert usage.reserved.nanos == 0
    assert len(ledger.query_requests()) == 5
    ledger.close()


def test_demo_command() -> None:
    result = CliRunner().invoke(main, ["demo", "--ledger", "memory://", "--limit", "0.03"])
    assert result.exit_code == 0, result.output
    assert "2 requests admitted" in result.output
