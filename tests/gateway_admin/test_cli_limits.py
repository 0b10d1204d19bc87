"""``spendgate limits list|show|create|set|delete`` against a real SQLite ledger file."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from spendgate.budgets import Attributes
from spendgate.gateway.cli_admin import COMMANDS
from spendgate.gateway.keys import open_keystore
from spendgate.ledger import open_ledger
from spendgate.limits import Demand, Limit
from spendgate.money import Money


@click.group()
def cli() -> None:
    """Stands in for spendgate.cli.main, where COMMANDS are registered."""


for command in COMMANDS:
    cli.add_command(command)

ID = "key=*/requests/10s"


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


def take(url: str, times: int, demand: Demand | None = None, **attrs: object) -> None:
    """``times`` requests reserved and settled in the ledger file (another process, as it were)."""
    ledger = open_ledger(url)
    for n in range(times):
        request_id = f"req-{attrs}-{n}-{id(demand)}"
        assert ledger.reserve(request_id, Attributes.of(**attrs), Money(0), lease=60, demand=demand).admitted
        ledger.settle(request_id, Money(demand.cost if demand else 0))  # a usd limit counts the cost
    ledger.close()


def test_limits_lifecycle(db: str) -> None:
    code, out, err = run("limits", "list", "--ledger", db)
    assert code == 0 and "no limits" in out, err
    code, out, err = run(
        "limits", "create", "requests", "10", "--per", "10s", "--selector", "key=*", "--ledger", db
    )
    assert code == 0, err
    assert out == f"{ID}: key=*: 10 requests per 10s\n"
    code, out, err = run(
        "limits", "create", "usd", "1.50", "--per", "1h", "--selector", "team=research", "--on-exceed", "wait",
        "--id", "team-usd", "--name", "team r", "--ledger", db, "--json",
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert (created["id"], created["amount"], created["on_exceed"], created["name"]) == (
        "team-usd", "1.5", "wait", "team r",
    )  # fmt: skip
    assert run("limits", "create", "concurrency", "2", "--ledger", db)[0] == 0

    take(db, 3, key="k1", team="research")
    take(db, 1, Demand(cost=Money.usd("0.3").nanos), team="research")
    code, out, err = run("limits", "list", "--ledger", db)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KIND", "USED", "AMOUNT", "%", "PER", "ON_EXCEED", "LABEL"]
    assert lines[1].split()[:7] == [f"{ID}[key=k1]", "requests", "3", "10", "30%", "10s", "raise"]
    assert lines[2].split()[:7] == ["team-usd", "usd", "0.3", "1.5", "20%", "1h", "wait"]
    assert lines[3].split()[:7] == ["global/concurrency", "concurrency", "0", "2", "0%", "-", "raise"]
    assert lines[1].endswith("key=*: 10 requests per 10s") and len(lines) == 4
    code, out, err = run("limits", "list", "--ledger", db, "--json")
    views = json.loads(out)
    assert [v["id"] for v in views] == [ID, "team-usd", "global/concurrency"]
    assert views[0]["instances"][0]["instance"] == {"key": "k1"}

    code, out, err = run("limits", "show", ID, "--ledger", db)
    assert code == 0, err
    assert "limit:      key=*: 10 requests per 10s" in out and "use key=k1: 3 of 10 (30%), 7 left" in out
    code, out, err = run("limits", "show", "team-usd", "--ledger", db)
    assert "use: 0.3 USD of 1.5 USD (20%), 1.2 USD left" in out, out
    code, out, err = run("limits", "show", ID, "--ledger", db, "--json")
    assert json.loads(out) == views[0]

    # set: the counts stay while per stays.
    code, out, err = run("limits", "set", ID, "--amount", "5", "--ledger", db)
    assert code == 0, err
    assert out.startswith(f"{ID}: key=*: 5 requests per 10s\n") and "comes back" in out
    code, out, err = run("limits", "set", ID, "--on-exceed", "wait", "--ledger", db, "--json")
    view = json.loads(out)
    assert (view["amount"], view["on_exceed"], view["instances"][0]["used"]) == ("5", "wait", "3")
    code, out, err = run("limits", "set", ID, "--per", "1m", "--ledger", db, "--json")
    assert (json.loads(out)["per"], json.loads(out)["instances"]) == ("1m", [])
    code, out, err = run("limits", "set", "team-usd", "--amount", "2.25", "--ledger", db, "--json")
    assert json.loads(out)["amount"] == "2.25"
    ledger = open_ledger(db)
    assert ledger.get_limit(ID) == Limit.from_config(
        {"id": ID, "selector": {"key": "*"}, "requests": 5, "per": "1m", "on_exceed": "wait"}
    )
    ledger.close()

    # delete asks first.
    code, _, err = run("limits", "delete", "team-usd", "--ledger", db, answer="n\n")
    assert code == 1 and "Delete limit 'team-usd' (team r: team=research: $2.25 per 1h)?" in err
    code, out, err = run("limits", "delete", "team-usd", "--ledger", db, answer="y\n")
    assert code == 0 and out.startswith("team-usd: deleted\n"), err
    code, out, err = run("limits", "delete", "global/concurrency", "--yes", "--ledger", db)
    assert code == 0 and "global/concurrency: deleted" in out, err
    ledger = open_ledger(db)
    assert [limit.id for limit in ledger.limits()] == [ID]
    ledger.close()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("create", "requests", "ten", "--per", "1m"), "AMOUNT"),
        (("create", "requests", "1" + "0" * 19, "--per", "1m"), "AMOUNT"),
        (("create", "usd", "lots", "--per", "1m"), "AMOUNT"),
        (("create", "usd", "2000000000", "--per", "1m"), "AMOUNT"),
        (("create", "requests", "10"), "--per: missing"),
        (("create", "requests", "10", "--per", "fortnight"), "--per"),
        (("create", "requests", "10", "--per", "32d"), "--per"),
        (("create", "requests", "10", "--per", "9" * 30 + "d"), "--per"),
        (("create", "concurrency", "2", "--per", "1m"), "--per"),
        (("create", "prompt_tokens", "2", "--on-exceed", "wait"), "--on-exceed"),
        (("create", "requests", "10", "--per", "1m", "--selector", "colour=red"), "--selector colour"),
        (("create", "requests", "10", "--per", "1m", "--selector", "alice"), "--selector"),
        (("create", "requests", "10", "--per", "1m", "--id", "a\nb"), "--id"),
        (("create", "requests", "10", "--per", "1m", "--name", " "), "--name"),
        (("create", "requests", "10", "--per", "10s", "--selector", "key=*"), "exists"),
        (("show", "nope"), "no limit 'nope'"),
        (("set", "nope", "--amount", "1"), "no limit 'nope'"),
        (("set", ID), "give at least one of"),
        (("set", ID, "--amount", "1.5"), "--amount"),
        (("set", ID, "--per", "1y"), "--per"),
        (("delete", "nope", "--yes"), "no limit 'nope'"),
    ],
)
def test_bad_input_exit_4(db: str, args: tuple[str, ...], words: str) -> None:
    assert (
        run("limits", "create", "requests", "10", "--per", "10s", "--selector", "key=*", "--ledger", db)[0]
        == 0
    )
    code, _, err = run("limits", *args, "--ledger", db)
    assert code == 4, (args, err)
    assert words in err and err.startswith("spendgate: error:"), (args, err)
    ledger = open_ledger(db)
    assert ledger.limits() == [Limit.from_config({"selector": {"key": "*"}, "requests": 10, "per": "10s"})]
    ledger.close()


def test_a_limit_of_the_config_is_not_changed_or_deleted(db: str, tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"ledger: {db}\nupstreams: {{}}\n"
        "limits:\n  - {selector: {key: '*'}, requests: 10, per: 10s}\n  - {id: flight, concurrency: 4}\n"
    )
    ledger = open_ledger(db)
    ledger.put_limit(Limit.from_config({"selector": {"key": "*"}, "requests": 10, "per": "10s"}))
    ledger.close()
    for args in (("set", ID, "--amount", "20"), ("delete", ID, "--yes"), ("set", "flight", "--amount", "1")):
        code, _, err = run("limits", *args, "--config", str(config))
        assert code == 4 and "defined in the gateway's config (limits:)" in err, (args, err)
    code, out, err = run("limits", "show", ID, "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["amount"] == "10", err
    # One made here, next to it, is this command's to change (and --config knows it is not the config's).
    assert (
        run("limits", "create", "requests", "1", "--per", "1s", "--id", "mine", "--config", str(config))[0]
        == 0
    )
    code, out, err = run("limits", "set", "mine", "--amount", "2", "--config", str(config))
    assert code == 0 and "comes back" not in out, err
    code, out, err = run("limits", "delete", "mine", "--yes", "--config", str(config))
    assert code == 0 and out == "mine: deleted\n", err
    config.write_text(f"ledger: {db}\nlimits:\n  - {{requests: 10}}\n")
    code, _, err = run("limits", "delete", ID, "--yes", "--config", str(config))
    assert code == 4 and "limits[0].per" in err


LIMIT_COMMANDS: list[tuple[str, ...]] = [
    ("limits", "list"),
    ("limits", "show", ID),
    ("limits", "create", "requests", "10", "--per", "10s"),
    ("limits", "set", ID, "--amount", "5"),
    ("limits", "delete", ID, "--yes"),
]


def test_limits_commands_never_create_a_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = tmp_path / "gw"
    gw.mkdir()
    (gw / "gw.yaml").write_text("ledger: sqlite:///gw.db\nupstreams: {}\n")
    monkeypatch.chdir(tmp_path)
    for args in LIMIT_COMMANDS:
        code, _, err = run(*args, "--config", "gw/gw.yaml")
        assert code == 1, (args, err)
        assert f"ledger {gw / 'gw.db'} does not exist (the gateway creates it on first start)" in err, args
        code, _, err = run(*args, "--ledger", f"sqlite:///{tmp_path / 'other.db'}")
        assert code == 1 and "does not exist" in err, (args, err)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["gw", "gw.yaml"]
