"""``spendgate keys|budgets|limits|usage``: manage virtual keys, budgets and rate limits in the ledger.

Registered on the main group by spendgate.cli (``main.add_command(...)`` for
each of ``COMMANDS``). The ledger is ``--ledger URL``, else the ``ledger:`` of
``--config FILE`` (a relative file there is next to the config), else
``$SPENDGATE_LEDGER``, else ``sqlite:///spendgate.db``. These commands open an
existing ledger only: they never create one (``spendgate serve`` does), so a
wrong path is an error, not a new empty file. Exit codes follow spendgate.cli:
4 bad input (including an unknown key, budget or limit id, or one that may not be
changed or deleted), 1 the ledger cannot be reached or does not exist.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import yaml

from spendgate.budgets import DIMENSIONS, Budget
from spendgate.clock import Clock
from spendgate.errors import ConfigError
from spendgate.estimate import MAX_AMOUNT
from spendgate.gateway.keys import KeyStore
from spendgate.gateway.views import (
    budget_json,
    key_budget,
    key_budgets,
    key_json,
    money,
    parse_instance,
    parse_time,
)
from spendgate.ledger import Ledger, LedgerUnavailableError, open_keystore, open_ledger, resolve_url
from spendgate.limits import KINDS, Limit
from spendgate.money import Money, MoneyError

__all__ = [
    "COMMANDS",
    "budgets_group",
    "echo_json",
    "fail",
    "keys_group",
    "ledger_options",
    "limits_group",
    "opened_ledger",
    "resolve_ledger_url",
    "usage_cmd",
]

# The same numbers as spendgate.cli (not imported from there: it imports this module).
EXIT_UNAVAILABLE = 1
EXIT_BAD_INPUT = 4
DEFAULT_LEDGER = "sqlite:///spendgate.db"

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"spendgate: error: {message}", err=True)
    sys.exit(code)


def resolve_ledger_url(ledger: str | None, config: str | None) -> str:
    """--ledger, else the config's ``ledger:`` (a relative file: next to the config, as the
    gateway reads it), else $SPENDGATE_LEDGER, else the default file."""
    if ledger:
        return ledger
    if config:
        from spendgate.gateway.config import read_ledger_url

        # Idempotent: an absolute URL (already resolved by the config reader) comes back as is.
        return resolve_url(read_ledger_url(config), Path(config).parent)
    return os.environ.get("SPENDGATE_LEDGER") or DEFAULT_LEDGER


def ledger_options(func: F) -> F:
    func = click.option(
        "--ledger",
        "ledger_url",
        metavar="URL",
        default=None,
        help="Ledger URL (default: the config's ledger, else $SPENDGATE_LEDGER, else sqlite:///spendgate.db).",
    )(func)
    return click.option(
        "--config",
        "config_path",
        metavar="FILE",
        default=None,
        help="Gateway config file to read `ledger:` from.",
    )(func)


@contextmanager
def opened_ledger(
    ledger_url: str | None, config_path: str | None, *, clock: Clock | None = None
) -> Iterator[Ledger]:
    """The ledger a command works on, never created (only the gateway, and an SDK the user
    builds, starts one); an unreachable or missing one, or one that fails meanwhile, is a clear
    error and an exit code, never a traceback. Its clock: ``clock``, else the command's."""
    try:
        url = resolve_ledger_url(ledger_url, config_path)
        ledger = open_ledger(url, create=False, clock=clock or command_clock())
    except LedgerUnavailableError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except ConfigError as exc:
        fail(str(exc))
    try:
        yield ledger
    except LedgerUnavailableError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    finally:
        ledger.close()


@contextmanager
def _opened(
    ledger_url: str | None, config_path: str | None, *, keys: bool
) -> Iterator[tuple[Ledger, KeyStore | None]]:
    try:
        url = resolve_ledger_url(ledger_url, config_path)  # the config is read once, for both
    except ConfigError as exc:
        fail(str(exc))
    with opened_ledger(url, None) as ledger:
        store: KeyStore | None = None
        if keys:
            try:
                store = open_keystore(url, create=False)
            except LedgerUnavailableError as exc:
                fail(str(exc), EXIT_UNAVAILABLE)
            except ConfigError as exc:
                fail(str(exc))
        try:
            yield ledger, store
        finally:
            if store is not None:
                store.close()


def command_clock() -> Clock | None:
    """The clock a caller (a test) put in the click context's ``obj["clock"]``, else None (the
    system's): every command's "now" comes from here, so one clock moves them all."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        clock = ctx.obj.get("clock") if isinstance(ctx.obj, dict) else None
        if isinstance(clock, Clock):
            return clock
        ctx = ctx.parent
    return None


def _now() -> datetime:
    clock = command_clock()
    return clock.now() if clock is not None else datetime.now(UTC)


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


# -- keys ---------------------------------------------------------------------------------------


@click.group("keys")
def keys_group() -> None:
    """Virtual keys for the gateway: create, list, disable, enable, rotate, delete."""


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@keys_group.command("create")
@click.option("--user", default=None, help="Who the key belongs to (budgets select on it).")
@click.option("--team", default=None)
@click.option("--project", default=None)
@click.option("--customer", default=None, help="Your end customer, if the key is theirs.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat, or comma-separate).")
@click.option(
    "--models", "models", multiple=True, help="Allowed model patterns, e.g. gpt-4o,claude-* (default: all)."
)
@click.option("--budget", default=None, metavar="USD", help="Give the key its own budget of this many USD.")
@click.option(
    "--window",
    default="month",
    show_default=True,
    help="The key budget's window: hour, day, week, month, none.",
)
@click.option(
    "--expires",
    default=None,
    metavar="ISO",
    help="Expiry, e.g. 2027-01-01 (UTC) or 2027-01-01T09:00:00+02:00.",
)
@click.option("--name", default=None, help="A label for people.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the secret).")
@ledger_options
def keys_create_cmd(
    user: str | None,
    team: str | None,
    project: str | None,
    customer: str | None,
    tags: tuple[str, ...],
    models: tuple[str, ...],
    budget: str | None,
    window: str,
    expires: str | None,
    name: str | None,
    as_json: bool,
    ledger_url: str | None,
    config_path: str | None,
) -> None:
    """Create a virtual key. Its secret is printed once: store it now, it cannot be shown again."""
    try:
        expires_at = parse_time(expires, "--expires") if expires else None
        if budget is not None:
            # Refuse a bad amount before a key exists: a key whose budget then fails to be
            # written would be live without its budget and its secret never shown.
            limit = key_budget("key_check", budget, window).limit
            if limit > MAX_AMOUNT:  # the ledger stores nano-USD in 64-bit integers
                fail(f"--budget: must be at most {MAX_AMOUNT.decimal_str()} USD, got {budget}")
    except ConfigError as exc:
        fail(str(exc).replace("budget.limit", "--budget").replace("budget.window", "--window"))
    except ValueError as exc:
        fail(str(exc))
    if expires_at is not None and expires_at <= _now():
        fail(f"--expires: {expires} is in the past")
    with _opened(ledger_url, config_path, keys=True) as (ledger, store):
        assert store is not None
        try:
            key, secret = store.create(
                user=user,
                team=team,
                project=project,
                customer=customer,
                tags=_split(tags),
                models=_split(models),
                expires_at=expires_at,
                name=name,
            )
        except ValueError as exc:
            fail(str(exc))
        usage = None
        if budget is not None:
            try:
                ledger.put_budget(key_budget(key.id, budget, window))
                usage = ledger.usage(f"key:{key.id}")
            except BaseException:
                store.delete(key.id)  # all or nothing: no live key without its budget
                raise
        if as_json:
            echo_json({"secret": secret, **key_json(key, _now(), usage)})
            return
        click.echo(f"key id: {key.id}")
        click.echo(f"secret: {secret}")
        click.echo("Store the secret now: spendgate keeps only its hash and cannot show it again.")
        if usage is not None:
            click.echo(f"budget: {usage.budget_id}: {money(usage.limit)} USD, {usage.label}")


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
def keys_list_cmd(as_json: bool, ledger_url: str | None, config_path: str | None) -> None:
    """List keys (never their secrets) with the spend of each key's own budget."""
    with _opened(ledger_url, config_path, keys=True) as (ledger, store):
        assert store is not None
        keys = store.list()
        usages = key_budgets(ledger, keys)
        now = _now()
        rows = [key_json(key, now, usages.get(key.id)) for key in keys]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no keys yet; create one with `spendgate keys create --user NAME`")
        return
    click.echo(f"{'ID':<21} {'HINT':<9} {'STATE':<8} {'ATTRIBUTES':<34} {'MODELS':<20} SPEND")
    for row in rows:
        attrs = ", ".join(f"{k}={row[k]}" for k in ("user", "team", "project", "customer") if row[k])
        if row["tags"]:
            attrs += (", " if attrs else "") + "tags=" + "|".join(row["tags"])
        spend = "-"
        if row["budget"]:
            b = row["budget"]
            spend = f"{b['spent']}/{b['limit']} USD ({b['percent']}%)"
        click.echo(
            f"{row['id']:<21} {row['hint']:<9} {row['state']:<8} {attrs or '-':<34} "
            f"{','.join(row['models']) or '*':<20} {spend}"
        )


def _key_action(verb: str, action: Callable[[KeyStore, str], Any]) -> Callable[..., None]:
    @ledger_options
    @click.argument("key_id")
    def command(key_id: str, ledger_url: str | None, config_path: str | None) -> None:
        with _opened(ledger_url, config_path, keys=True) as (_, store):
            assert store is not None
            try:
                result = action(store, key_id)
            except KeyError:
                fail(f"no key {key_id!r}; see `spendgate keys list`")
        if verb == "rotate":
            key, secret = result
            click.echo(f"key id: {key.id}")
            click.echo(f"secret: {secret}")
            click.echo("The old secret no longer works (other gateway instances: within seconds).")
        else:
            click.echo(f"{verb} {key_id}")

    return command


def _delete(store: KeyStore, key_id: str) -> bool:
    if not store.delete(key_id):
        raise KeyError(key_id)
    return True


keys_group.command("disable", help="Disable a key (it stops working within seconds everywhere).")(
    _key_action("disabled", lambda s, k: s.disable(k))
)
keys_group.command("enable", help="Enable a disabled key again.")(
    _key_action("enabled", lambda s, k: s.enable(k))
)
keys_group.command("rotate", help="Give a key a new secret; the old one stops working.")(
    _key_action("rotate", lambda s, k: s.rotate(k))
)
keys_group.command("delete", help="Delete a key (its spend stays in the request log).")(
    _key_action("deleted", _delete)
)


# -- budgets ---------------------------------------------------------------------------------------


@click.group("budgets")
def budgets_group() -> None:
    """Budgets in the ledger: list with spend, change a limit, reset a window, delete."""


@budgets_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
def budgets_list_cmd(as_json: bool, ledger_url: str | None, config_path: str | None) -> None:
    """Every budget (and wildcard instance with spend) in its current window."""
    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        rows = [budget_json(u) for u in ledger.list_budgets()]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no budgets; add them to the config's budgets: or with `spendgate keys create --budget`")
        return
    click.echo(f"{'ID':<26} {'LABEL':<34} {'SPENT':>12} {'RESERVED':>12} {'LIMIT':>10} {'%':>4}  RESETS AT")
    for r in rows:
        ident = r["id"] + (
            f"[{','.join(f'{k}={v}' for k, v in r['instance'].items())}]" if r["instance"] else ""
        )
        click.echo(
            f"{ident:<26} {r['label']:<34} {r['spent']:>12} {r['reserved']:>12} {r['limit']:>10} "
            f"{r['percent']:>3}%  {r['resets_at'] or 'never'}"
        )


@budgets_group.command("set-limit")
@click.argument("budget_id")
@click.argument("amount")
@ledger_options
def budgets_set_limit_cmd(
    budget_id: str, amount: str, ledger_url: str | None, config_path: str | None
) -> None:
    """Raise or lower BUDGET_ID's limit to AMOUNT USD, now, for every process (waiting requests wake)."""
    try:
        limit = Money.parse(amount, what="AMOUNT")
    except MoneyError as exc:
        fail(str(exc))
    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        try:
            ledger.set_limit(budget_id, limit)
        except KeyError:
            fail(f"no budget {budget_id!r}; see `spendgate budgets list`")
    click.echo(f"{budget_id}: limit {money(limit)} USD")


@budgets_group.command("reset")
@click.argument("budget_id")
@click.option(
    "--instance", "instance", multiple=True, metavar="DIM=VALUE", help="Reset one instance, e.g. user=alice."
)
@ledger_options
def budgets_reset_cmd(
    budget_id: str, instance: tuple[str, ...], ledger_url: str | None, config_path: str | None
) -> None:
    """Zero BUDGET_ID's spend in its current window (every instance, or one)."""
    try:
        values = parse_instance(instance) or None
    except ConfigError as exc:
        fail(str(exc).replace("instance:", "--instance:"))
    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        try:
            ledger.reset(budget_id, values)
        except KeyError:
            fail(f"no budget {budget_id!r}; see `spendgate budgets list`")
        except ValueError as exc:
            fail(str(exc))
    click.echo(f"{budget_id}: reset" + (f" ({', '.join(instance)})" if instance else ""))


def _config_ids(config_path: str, section: str, read: Callable[[Any, str], str]) -> frozenset[str]:
    """The ids of what a gateway config's ``section`` (``budgets:``, ``limits:``) defines, each
    read by ``read(item, where)``: only that section (an admin's machine need not hold the
    upstreams' API keys that loading the whole config asks for)."""
    try:
        data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        fail(f"{config_path}: cannot read its {section}: {exc}")
    raw = data.get(section) if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return frozenset()
    try:
        return frozenset(read(item, f"{section}[{i}]") for i, item in enumerate(raw))
    except ConfigError as exc:
        fail(f"{config_path}: {exc}")


def _config_budget_ids(config_path: str) -> frozenset[str]:
    return _config_ids(config_path, "budgets", lambda item, where: Budget.from_config(item, where=where).id)


@budgets_group.command("delete")
@click.argument("budget_id")
@click.option("--yes", is_flag=True, help="Delete without asking.")
@ledger_options
def budgets_delete_cmd(budget_id: str, yes: bool, ledger_url: str | None, config_path: str | None) -> None:
    """Stop enforcing BUDGET_ID, now, for every process.

    Requests in flight against it end as usual and stay counted; its spend is kept (re-creating
    the id in the same window continues from it: to zero it, use reset). A budget of the
    gateway's config (pass --config to check) or a live key's own budget is refused.
    """
    from spendgate.gateway.admin.handlers.budgets import why_not_delete  # the API's rule (and Starlette)

    configured = _config_budget_ids(config_path) if config_path else frozenset()
    with _opened(ledger_url, config_path, keys=True) as (ledger, store):
        refused = why_not_delete(budget_id, configured=configured, keys=store)
        if refused is not None:
            fail(refused)
        try:
            budget = ledger.get_budget(budget_id)
        except KeyError:
            fail(f"no budget {budget_id!r}; see `spendgate budgets list`")
        if not yes:
            click.confirm(
                f"Delete budget {budget_id!r} ({money(budget.limit)} USD, {budget.label('')})? "
                "Requests stop being checked against it",
                abort=True,
                err=True,
            )
        try:
            deleted = ledger.delete_budget(budget_id)
        except KeyError:
            fail(f"no budget {budget_id!r}; see `spendgate budgets list`")
    click.echo(f"{budget_id}: deleted")
    if deleted.in_flight:
        click.echo(
            f"{deleted.in_flight} request(s) in flight against it ({money(deleted.reserved)} USD held) "
            "end as usual and stay counted."
        )
    if not config_path:
        click.echo(
            "If a gateway config or an app defines this budget, it comes back when that starts: "
            "remove it there too (--config FILE checks a gateway config)."
        )


# -- limits ------------------------------------------------------------------------------------------

#: The option each field of a limit comes from, for messages (the API's name the body's fields).
_LIMIT_OPTIONS = {
    "per": "--per",
    "on_exceed": "--on-exceed",
    "selector": "--selector",
    "id": "--id",
    "name": "--name",
}


def _limit_input(read: Callable[[], Limit], amount_option: str) -> Limit:
    """``read()``: a limit through the API's own checks; a 400 of theirs as a CLI error that
    names the option (``amount_option``: where the amount came from)."""
    from spendgate.gateway.admin.errors import ApiError

    options = {**_LIMIT_OPTIONS, "amount": amount_option, **dict.fromkeys(KINDS, amount_option)}
    try:
        return read()
    except ApiError as exc:
        field, sep, rest = exc.message.partition(":")
        top, _, sub = field.partition(".")
        if sep and top in options:
            fail(f"{options[top]}{' ' + sub if sub else ''}:{rest}")
        fail(exc.message)


def _config_limit_ids(config_path: str) -> frozenset[str]:
    return _config_ids(config_path, "limits", lambda item, where: Limit.from_config(item, where=where).id)


def _refuse_config_limit(limit_id: str, config_path: str | None) -> None:
    from spendgate.gateway.admin.handlers.limits import why_not_change  # the API's rule (and Starlette)

    configured = _config_limit_ids(config_path) if config_path else frozenset()
    refused = why_not_change(limit_id, configured=configured)
    if refused is not None:
        fail(refused)


def _no_limit(limit_id: str) -> NoReturn:
    fail(f"no limit {limit_id!r}; see `spendgate limits list`")


def _limit_view(ledger: Ledger, limit_id: str) -> dict[str, Any]:
    from spendgate.gateway.admin.handlers.limits import limit_views

    try:
        return limit_views(ledger, limit_id)[0]
    except KeyError:
        _no_limit(limit_id)


def _instance_text(instance: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in instance.items())


def _echo_limit(view: dict[str, Any]) -> None:
    """One limit for people: its definition, then what each instance holds now."""
    click.echo(f"id:         {view['id']}")
    click.echo(f"limit:      {view['label']}")
    click.echo(f"on_exceed:  {view['on_exceed']}")
    unit = " USD" if view["kind"] == "usd" else ""
    if not view["instances"]:
        wild = ", ".join(dim for dim, value in view["selector"].items() if value == "*")
        click.echo(f"use:        nothing counted in the window yet (one instance per {wild})")
    for use in view["instances"]:
        scope = f" {_instance_text(use['instance'])}" if use["instance"] else ""
        click.echo(
            f"use{scope}: {use['used']}{unit} of {use['amount']}{unit} ({use['percent']}%), "
            f"{use['remaining']}{unit} left"
        )


@click.group("limits")
def limits_group() -> None:
    """Rate limits in the ledger: list with current use, show, create, change, delete."""


@limits_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
def limits_list_cmd(as_json: bool, ledger_url: str | None, config_path: str | None) -> None:
    """Every limit, with what each instance holds now (a wildcard limit: each instance that counted
    something in its window)."""
    from spendgate.gateway.admin.handlers.limits import limit_views

    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        views = limit_views(ledger)
    if as_json:
        echo_json(views)
        return
    if not views:
        click.echo("no limits; add them to the config's limits: or with `spendgate limits create`")
        return
    rows: list[tuple[str, ...]] = []
    for v in views:
        uses = v["instances"] or [None]
        for use in uses:
            ident = v["id"] + (f"[{_instance_text(use['instance'])}]" if use and use["instance"] else "")
            used, percent = (use["used"], f"{use['percent']}%") if use else ("-", "-")
            rows.append(
                (ident, v["kind"], used, v["amount"], percent, v["per"] or "-", v["on_exceed"], v["label"])
            )
    header = ("ID", "KIND", "USED", "AMOUNT", "%", "PER", "ON_EXCEED", "LABEL")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    right = {2, 3, 4}  # numbers
    for row in (header, *rows):
        cells = [
            f"{cell:>{widths[i]}}" if i in right else f"{cell:<{widths[i]}}"
            for i, cell in enumerate(row[:-1])
        ]
        click.echo("  ".join([*cells, row[-1]]))


@limits_group.command("show")
@click.argument("limit_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
def limits_show_cmd(limit_id: str, as_json: bool, ledger_url: str | None, config_path: str | None) -> None:
    """One limit and what each of its instances holds now."""
    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        view = _limit_view(ledger, limit_id)
    if as_json:
        echo_json(view)
    else:
        _echo_limit(view)


@limits_group.command("create")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("amount")
@click.option(
    "--per",
    default=None,
    metavar="WINDOW",
    help="The window: 10s, 1m, 1h, 1d (not for concurrency or prompt_tokens).",
)
@click.option(
    "--selector",
    "selector",
    multiple=True,
    metavar="DIM=VALUE",
    help="Which requests, e.g. key=* (one limit per key) or team=research; repeat (default: all).",
)
@click.option(
    "--on-exceed",
    type=click.Choice(["raise", "wait"]),
    default=None,
    help="raise (default): refuse over the limit; wait: delay until it fits.",
)
@click.option("--id", "limit_id", default=None, help="Default: <selector>/<kind>[/<per>].")
@click.option("--name", default=None, help="A label for people.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
def limits_create_cmd(
    kind: str,
    amount: str,
    per: str | None,
    selector: tuple[str, ...],
    on_exceed: str | None,
    limit_id: str | None,
    name: str | None,
    as_json: bool,
    ledger_url: str | None,
    config_path: str | None,
) -> None:
    """Add a limit of KIND: AMOUNT per --per (requests, input_tokens, output_tokens, tokens; USD
    for usd), AMOUNT at once (concurrency) or per request (prompt_tokens). Now, for every process.

    \b
    spendgate limits create requests 10 --per 10s --selector key=*
    spendgate limits create usd 5 --per 1h --selector team=research --on-exceed wait
    """
    from spendgate.gateway.admin.handlers.limits import read_limit

    try:
        values = parse_instance(selector)
    except ConfigError as exc:
        fail("--selector: " + exc.problem.replace("an instance", "a selector").replace("user=alice", "key=*"))
    config: dict[str, Any] = {"selector": values}
    options = {"id": limit_id, "name": name, "per": per, "on_exceed": on_exceed}
    config |= {field: value for field, value in options.items() if value is not None}
    config[kind] = amount if kind == "usd" else _limit_amount(amount)
    limit = _limit_input(lambda: read_limit(config), "AMOUNT")
    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        try:
            ledger.get_limit(limit.id)
        except KeyError:
            ledger.put_limit(limit)
        else:
            fail(f"limit {limit.id!r} exists; change it with `spendgate limits set`")
        view = _limit_view(ledger, limit.id)
    if as_json:
        echo_json(view)
    else:
        click.echo(f"{limit.id}: {limit.label()}")


def _limit_amount(text: str) -> int:
    from spendgate.gateway.admin.handlers.limits import MAX_COUNT

    if not (text.isascii() and text.isdigit()) or int(text) > MAX_COUNT:
        fail(f"AMOUNT: a whole number from 0 to {MAX_COUNT}, got {text!r}")
    return int(text)


@limits_group.command("set")
@click.argument("limit_id")
@click.option("--amount", default=None, help="The new amount (USD for a usd limit).")
@click.option("--per", default=None, metavar="WINDOW", help="A new window (its counts then start over).")
@click.option("--on-exceed", type=click.Choice(["raise", "wait"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
def limits_set_cmd(
    limit_id: str,
    amount: str | None,
    per: str | None,
    on_exceed: str | None,
    as_json: bool,
    ledger_url: str | None,
    config_path: str | None,
) -> None:
    """Change LIMIT_ID's amount, window or on_exceed, now, for every process. What it counted so
    far is kept unless --per changes. A limit of the gateway's config (pass --config to check)
    is refused: change it there."""
    from spendgate.gateway.admin.handlers.limits import change_limit

    changes = {"amount": amount, "per": per, "on_exceed": on_exceed}
    changes = {field: value for field, value in changes.items() if value is not None}
    if not changes:
        fail("give at least one of --amount, --per, --on-exceed")
    _refuse_config_limit(limit_id, config_path)
    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        try:
            old = ledger.get_limit(limit_id)
        except KeyError:
            _no_limit(limit_id)
        new = _limit_input(lambda: change_limit(old, changes), "--amount")
        ledger.put_limit(new)
        view = _limit_view(ledger, limit_id)
    if as_json:
        echo_json(view)
        return
    click.echo(f"{limit_id}: {new.label()}")
    if not config_path:
        click.echo(
            "If a gateway config or an app defines this limit, its own definition comes back when "
            "that starts: change it there too (--config FILE checks a gateway config)."
        )


@limits_group.command("delete")
@click.argument("limit_id")
@click.option("--yes", is_flag=True, help="Delete without asking.")
@ledger_options
def limits_delete_cmd(limit_id: str, yes: bool, ledger_url: str | None, config_path: str | None) -> None:
    """Stop enforcing LIMIT_ID, now, for every process; what it counted goes (created again, it
    counts from zero). A limit of the gateway's config (pass --config to check) is refused."""
    _refuse_config_limit(limit_id, config_path)
    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        try:
            limit = ledger.get_limit(limit_id)
        except KeyError:
            _no_limit(limit_id)
        if not yes:
            click.confirm(
                f"Delete limit {limit_id!r} ({limit.label()})? Requests stop being checked against it",
                abort=True,
                err=True,
            )
        if not ledger.remove_limit(limit_id):
            _no_limit(limit_id)
    click.echo(f"{limit_id}: deleted")
    if not config_path:
        click.echo(
            "If a gateway config or an app defines this limit, it comes back when that starts: "
            "remove it there too (--config FILE checks a gateway config)."
        )


# -- usage -------------------------------------------------------------------------------------------


@click.command("usage")
@click.option("--by", "dimension", type=click.Choice(DIMENSIONS), default="user", show_default=True)
@click.option("--since", default=None, metavar="ISO", help="From this instant (UTC if no offset).")
@click.option("--until", default=None, metavar="ISO", help="Up to (not including) this instant.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
def usage_cmd(
    dimension: str,
    since: str | None,
    until: str | None,
    as_json: bool,
    ledger_url: str | None,
    config_path: str | None,
) -> None:
    """Spend per user, team, key, model, project, customer or tag, from the request log."""
    try:
        start = parse_time(since, "--since") if since else None
        end = parse_time(until, "--until") if until else None
    except ValueError as exc:
        fail(str(exc))
    if start and end and end <= start:
        fail("--until must be after --since")
    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        totals = ledger.usage_by(dimension, start, end)
    rows = sorted(totals.items(), key=lambda item: (-item[1].nanos, item[0]))
    if as_json:
        echo_json(
            {"by": dimension, "usage": [{dimension: value, "cost": money(cost)} for value, cost in rows]}
        )
        return
    if not rows:
        click.echo("no requests logged in that range")
        return
    width = max(len(dimension), *(len(value) for value, _ in rows))
    click.echo(f"{dimension.upper():<{width}}  COST (USD)")
    for value, cost in rows:
        click.echo(f"{value:<{width}}  {money(cost)}")
    click.echo(f"{'total':<{width}}  {money(sum((c for _, c in rows), Money(0)))}")


# -- the ledger itself ----------------------------------------------------------------------------


@click.group("ledger")
def ledger_group() -> None:
    """The ledger itself: prove it takes writes; rebuild a Redis ledger's counters."""


@ledger_group.command("check")
@ledger_options
def ledger_check_cmd(ledger_url: str | None, config_path: str | None) -> None:
    """Commit a probe write the way requests are written (what /readyz does); exit 1 if it cannot."""
    with _opened(ledger_url, config_path, keys=False) as (ledger, _):
        ledger.check_writable()
        click.echo(f"ledger {type(ledger).scheme}:// takes writes")


@ledger_group.command("rebuild")
@click.option("--yes", is_flag=True, help="Rebuild without asking.")
@ledger_options
def ledger_rebuild_cmd(yes: bool, ledger_url: str | None, config_path: str | None) -> None:
    """Start a redis:// ledger's counters over from its durable request log.

    For a Redis that lost its data (restarted without persistence, flushed, failed over to an
    empty replica): the ledger refuses every request until this runs (fail closed). Spend in the
    current windows is summed from the durable log; what had not reached it, and reservations
    open at the loss, are not counted (docs/deploy.md).
    """
    try:
        url = resolve_ledger_url(ledger_url, config_path)
    except ConfigError as exc:
        fail(str(exc))
    if not url.lower().startswith("redis://"):
        fail(
            f"only a redis:// ledger keeps counters apart from its log; {url.split('://')[0]}:// has none to rebuild"
        )
    from spendgate.ledger.redis.url import parse_redis_url

    try:
        durable = parse_redis_url(url).durable
        # The durable store must exist already: an admin command never creates a ledger.
        open_ledger(durable, create=False).close()
    except LedgerUnavailableError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except ConfigError as exc:
        fail(str(exc))
    if not yes:
        click.confirm(
            "Rebuild the Redis counters from the durable log? Requests that ended in Redis but never "
            "reached the log, and reservations open when Redis lost its data, will not be counted",
            abort=True,
        )
    from spendgate.ledger.redis import RedisLedger

    try:
        ledger = open_ledger(url)  # a lost Redis does not stop the open: setup waits for the rebuild
    except LedgerUnavailableError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    try:
        if not isinstance(ledger, RedisLedger):
            fail(f"{url.split('@')[-1]!r} did not open a Redis ledger")
        report = ledger.rebuild()
    except LedgerUnavailableError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    finally:
        ledger.close()
    click.echo(
        f"rebuilt from {report.requests} logged requests: {report.budget_lines} budget instances, "
        f"{report.limit_buckets} rate limit buckets; generation {report.generation}"
    )
    for budget_id in report.short:
        click.echo(
            f"warning: budget {budget_id!r}'s window reaches past the log's retention: older spend is not counted"
        )


COMMANDS: tuple[click.Command, ...] = (keys_group, budgets_group, limits_group, usage_cmd, ledger_group)
