"""A key with a budget is created whole or not at all (issue 10, section 4)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from spendgate.gateway.admin import create_admin_app
from spendgate.gateway.cli_admin import COMMANDS
from spendgate.gateway.keys import open_keystore
from spendgate.ledger import open_ledger

TOKEN = "admin-" + "x" * 26
FORTY_DIGITS = "1" * 40


@click.group()
def cli() -> None:
    """Stands in for spendgate.cli.main."""


for command in COMMANDS:
    cli.add_command(command)


def test_cli_key_with_a_40_digit_budget_creates_nothing(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'spend.db'}"
    result = CliRunner().invoke(
        cli, ["keys", "create", "--user", "a", "--budget", FORTY_DIGITS, "--ledger", db]
    )
    assert result.exit_code == 4, result.output
    assert "--budget" in result.stderr and "at most" in result.stderr
    assert "sg-" not in result.stdout
    store = open_keystore(db)
    try:
        assert store.list() == []
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_api_key_with_a_40_digit_budget_creates_nothing(tmp_path: Path, kind: str) -> None:
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'spend.db'}"
    ledger, keys = open_ledger(url), open_keystore(url, cache_ttl=0)
    try:
        app = create_admin_app(keys=keys, ledger=ledger, admin_token=lambda: TOKEN)
        client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
        r = client.post("/keys", json={"user": "a", "budget": FORTY_DIGITS})
        assert r.status_code == 400, r.text
        assert keys.list() == [] and ledger.budgets() == []
    finally:
        keys.close()
        ledger.close()


def test_api_key_is_removed_when_its_budget_cannot_be_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    ledger, keys = open_ledger(url), open_keystore(url, cache_ttl=0)

    def broken(budget: object) -> None:  # the ledger failing after the key was made
        raise OSError("disk full")

    ledger.put_budget = broken  # type: ignore[method-assign]
    try:
        app = create_admin_app(keys=keys, ledger=ledger, admin_token=lambda: TOKEN)
        client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}, raise_server_exceptions=False)
        r = client.post("/keys", json={"user": "a", "budget": "5"})
        assert r.status_code == 500
        assert "sg-" not in r.text
        assert keys.list() == []
    finally:
        keys.close()
        ledger.close()
