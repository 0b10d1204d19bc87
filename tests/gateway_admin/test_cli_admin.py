from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from spendgate.gateway.cli_admin import COMMANDS, resolve_ledger_url
from spendgate.gateway.keys import open_keystore
from spendgate.ledger import open_ledger

from .support import spend


@click.group()
def cli() -> None:
    """Stands in for spendgate.cli.main, where the lead registers COMMANDS."""


for command in COMMANDS:
    cli.add_command(command)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'spend.db'}"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_key_with_budget_lifecycle(db: str) -> None:
    code, out, err = run(
        "keys", "create", "--user", "alice", "--team", "research", "--tag", "a,b", "--budget", "50",
        "--window", "month", "--models", "gpt-4o,claude-*", "--expires", "2099-01-01", "--name", "laptop",
        "--ledger", db, "--json",
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    secret, key_id = created["secret"], created["id"]
    assert created["budget"]["limit"] == "50" and created["budget"]["id"] == f"key:{key_id}"
    assert created["models"] == ["gpt-4o", "claude-*"] and created["tags"] == ["a", "b"]

    # The budget persists in the SQLite file and selects on the key id.
    ledger = open_ledger(db)
    assert ledger.get_budget(f"key:{key_id}").selector == {"key": key_id}
    spend(ledger, "12.5", key=key_id, user="alice", model="gpt-4o")
    spend(ledger, "1", user="bob", model="gpt-4o-mini")
    ledger.close()

    code, out, _ = run("keys", "list", "--ledger", db)
    assert code == 0
    assert key_id in out and "12.5/50 USD (25%)" in out and "user=alice" in out
    assert secret not in out and secret[7:] not in out

    code, out, _ = run("keys", "disable", key_id, "--ledger", db)
    assert code == 0 and "disabled" in out
    store = open_keystore(db)
    assert store.authenticate(secret) is None
    code, _, _ = run("keys", "enable", key_id, "--ledger", db)
    assert code == 0 and open_keystore(db, cache_ttl=0).authenticate(secret) is not None
    code, out, _ = run("keys", "rotate", key_id, "--ledger", db)
    assert code == 0
    new_secret = out.split("secret: ")[1].split()[0]
    fresh = open_keystore(db, cache_ttl=0)
    assert fresh.authenticate(secret) is None and fresh.authenticate(new_secret) is not None

    code, out, _ = run("budgets", "list", "--ledger", db, "--json")
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows[f"key:{key_id}"]["spent"] == "12.5" and rows[f"key:{key_id}"]["percent"] == 25
    code, out, _ = run("budgets", "list", "--ledger", db)
    assert code == 0 and f"key:{key_id}" in out and "12.5" in out

    code, out, _ = run("budgets", "set-limit", f"key:{key_id}", "75", "--ledger", db)
    assert code == 0 and "75 USD" in out
    assert open_ledger(db).usage(f"key:{key_id}").limit.to_decimal() == 75

    code, _, _ = run("budgets", "reset", f"key:{key_id}", "--ledger", db)
    assert code == 0
    assert open_ledger(db).usage(f"key:{key_id}").spent.nanos == 0

    code, out, _ = run("usage", "--by", "user", "--ledger", db, "--json")
    assert code == 0
    assert json.loads(out)["usage"] == [{"user": "alice", "cost": "12.5"}, {"user": "bob", "cost": "1"}]
    code, out, _ = run("usage", "--by", "model", "--ledger", db)
    assert "gpt-4o " in out and "total" in out and "13.5" in out
    code, out, _ = run("usage", "--by", "key", "--since", "2099-01-01", "--ledger", db)
    assert code == 0 and "no requests" in out

    code, out, _ = run("keys", "delete", key_id, "--ledger", db)
    assert code == 0


def test_bad_input_exit_4(db: str) -> None:
    for args, words in [
        (("keys", "create", "--budget", "lots"), "--budget"),
        (("keys", "create", "--budget", "5", "--window", "fortnight"), "--window"),
        (("keys", "create", "--expires", "tomorrow"), "--expires"),
        (("keys", "create", "--expires", "2001-01-01"), "in the past"),
        (("keys", "disable", "key_0000000000000000"), "no key"),
        (("budgets", "set-limit", "nope", "5"), "no budget"),
        (("budgets", "set-limit", "nope", "five"), "AMOUNT"),
        (("budgets", "reset", "nope"), "no budget"),
        (("budgets", "reset", "nope", "--instance", "alice"), "dimension=value"),
        (("usage", "--since", "yesterday"), "--since"),
    ]:
        code, _, err = run(*args, "--ledger", db)
        assert code == 4, (args, err)
        assert words in err and err.startswith("spendgate: error:"), (args, err)
    assert open_keystore(db).list() == []  # no orphan key from a refused create


def test_reset_one_instance(db: str) -> None:
    ledger = open_ledger(db, [])
    from spendgate.budgets import Budget

    ledger.put_budget(
        Budget.from_config({"id": "per-user", "selector": {"user": "*"}, "limit": "10", "window": "day"})
    )
    spend(ledger, "2", user="alice")
    spend(ledger, "3", user="bob")
    code, _, err = run("budgets", "reset", "per-user", "--instance", "user=alice", "--ledger", db)
    assert code == 0, err
    assert ledger.usage("per-user", {"user": "alice"}).spent.nanos == 0
    assert ledger.usage("per-user", {"user": "bob"}).spent.to_decimal() == 3
    code, _, err = run("budgets", "reset", "per-user", "--instance", "team=x", "--ledger", db)
    assert code == 4 and "wildcard" in err


def test_ledger_url_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "spendgate.yaml"
    config.write_text("ledger: sqlite:///from-config.db\nupstreams: {}\n")
    monkeypatch.setenv("SPENDGATE_LEDGER", "sqlite:///from-env.db")
    assert resolve_ledger_url("memory://", str(config)) == "memory://"
    assert resolve_ledger_url(None, str(config)) == "sqlite:///from-config.db"
    assert resolve_ledger_url(None, None) == "sqlite:///from-env.db"
    monkeypatch.delenv("SPENDGATE_LEDGER")
    assert resolve_ledger_url(None, None) == "sqlite:///spendgate.db"
    code, _, err = run("budgets", "list", "--config", str(tmp_path / "missing.yaml"))
    assert code == 4 and "cannot read config" in err
    code, _, err = run("budgets", "list", "--ledger", "bogus://x")
    assert code == 4 and "unknown ledger URL" in err
