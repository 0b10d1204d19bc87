from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from spendgate.budgets import Attributes, Budget
from spendgate.gateway.cli_admin import COMMANDS, resolve_ledger_url
from spendgate.gateway.keys import open_keystore
from spendgate.ledger import open_ledger
from spendgate.money import Money

from .support import spend


@click.group()
def cli() -> None:
    """Stands in for spendgate.cli.main, where the lead registers COMMANDS."""


for command in COMMANDS:
    cli.add_command(command)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A ledger file as the gateway leaves it at its first start (these commands never create one)."""
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    open_ledger(url).close()
    open_keystore(url).close()
    return url


def run(*args: str, answer: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=answer)
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
    # A relative file in a config is next to the config (as the gateway reads it), wherever the
    # command runs.
    assert resolve_ledger_url(None, str(config)) == f"sqlite:///{tmp_path / 'from-config.db'}"
    assert resolve_ledger_url(None, None) == "sqlite:///from-env.db"
    monkeypatch.delenv("SPENDGATE_LEDGER")
    assert resolve_ledger_url(None, None) == "sqlite:///spendgate.db"
    code, _, err = run("budgets", "list", "--config", str(tmp_path / "missing.yaml"))
    assert code == 4 and "cannot read config" in err
    code, _, err = run("budgets", "list", "--ledger", "bogus://x")
    assert code == 4 and "unknown ledger URL" in err


ADMIN_COMMANDS: list[tuple[str, ...]] = [
    ("keys", "list"),
    ("keys", "create", "--user", "alice"),
    ("keys", "disable", "key_0000000000000000"),
    ("budgets", "list"),
    ("budgets", "set-limit", "global", "5"),
    ("budgets", "reset", "global"),
    ("budgets", "delete", "global", "--yes"),
    ("usage",),
]


def test_admin_commands_never_create_a_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gw, elsewhere = tmp_path / "gw", tmp_path / "elsewhere"
    gw.mkdir()
    elsewhere.mkdir()
    (gw / "gw.yaml").write_text("ledger: sqlite:///gw.db\nupstreams: {}\n")
    monkeypatch.chdir(elsewhere)
    for args in ADMIN_COMMANDS:
        code, _, err = run(*args, "--config", "../gw/gw.yaml")
        assert code == 1, (args, err)
        assert f"ledger {gw / 'gw.db'} does not exist (the gateway creates it on first start)" in err, args
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["elsewhere", "gw", "gw.yaml"]
    # Once the gateway has made it (next to its config), the same command reads it from anywhere.
    open_ledger(f"sqlite:///{gw / 'gw.db'}", [Budget.from_config({"id": "global", "limit": "7"})]).close()
    code, out, err = run("budgets", "list", "--config", "../gw/gw.yaml", "--json")
    assert code == 0, err
    assert [row["id"] for row in json.loads(out)] == ["global"]
    assert not (elsewhere / "gw.db").exists()


def test_budgets_delete(db: str, tmp_path: Path) -> None:
    ledger = open_ledger(db, [Budget.from_config({"id": b, "limit": "100"}) for b in ("a", "b", "global")])
    spend(ledger, "3")
    held = ledger.reserve("in-flight", Attributes(), Money.usd("2"), lease=60)
    assert held.admitted

    code, _, err = run("budgets", "delete", "a", "--ledger", db, answer="n\n")
    assert code == 1 and "Delete budget 'a' (100 USD" in err
    assert "a" in {b.id for b in ledger.budgets()}  # asked, refused: nothing done
    code, out, err = run("budgets", "delete", "a", "--ledger", db, answer="y\n")
    assert code == 0, err
    assert "a: deleted" in out and "1 request(s) in flight against it (2 USD held)" in out
    assert "comes back when that starts" in out  # no --config: it cannot check one
    code, out, err = run("budgets", "delete", "b", "--yes", "--ledger", db)
    assert code == 0 and "b: deleted" in out, err
    assert {b.id for b in ledger.budgets()} == {"global"}
    assert ledger.settle("in-flight", Money.usd("2")).status == "settled"

    code, _, err = run("budgets", "delete", "nope", "--yes", "--ledger", db)
    assert code == 4 and "no budget 'nope'" in err
    # Defined in the gateway's config: it would come back at the next start or reload.
    config = tmp_path / "gw.yaml"
    config.write_text(f"ledger: {db}\nupstreams: {{}}\nbudgets:\n  - {{id: global, limit: 100}}\n")
    code, _, err = run("budgets", "delete", "global", "--yes", "--config", str(config))
    assert code == 4 and "defined in the gateway's config" in err
    # A live key keeps the budget it was created with.
    code, out, err = run("keys", "create", "--user", "alice", "--budget", "5", "--ledger", db, "--json")
    key_id = json.loads(out)["id"]
    code, _, err = run("budgets", "delete", f"key:{key_id}", "--yes", "--ledger", db)
    assert code == 4 and "delete the key first" in err
    assert run("keys", "delete", key_id, "--ledger", db)[0] == 0
    code, _, err = run("budgets", "delete", f"key:{key_id}", "--yes", "--ledger", db)
    assert code == 0, err
    assert {b.id for b in ledger.budgets()} == {"global"}
    ledger.close()
