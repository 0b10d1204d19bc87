"""``spendgate simulate``: replay the ledger's request log against proposed budgets.

The proposal is ``--budget`` (repeat; a budget in the config's inline YAML/JSON form) and
``--rate-limit`` (the same for a limit), else the ``budgets:`` and ``limits:`` of ``--config
FILE``, else the budgets and limits the ledger holds now. ``--limit`` and ``--window`` then
change them ("what if the limit were 50 USD?"). The log is read through ``query_requests``
(keyset pages by request id), filtered by ``--since``/``--until`` and dimensions, and
replayed by ``spendgate.replay`` (what is modelled and what is approximate: docs/simulate.md).
The ledger is opened as the admin commands open it (``ledger_options``, never created).
Exit codes follow spendgate.cli: 4 bad input, 1 the ledger cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, cast

import click
import yaml

from spendgate.budgets import DIMENSIONS, Budget, OnExceed, Window
from spendgate.errors import ConfigError
from spendgate.gateway.cli_admin import fail as _fail
from spendgate.gateway.cli_admin import ledger_options, opened_ledger
from spendgate.gateway.views import iso, money, parse_time
from spendgate.ledger import Ledger, RequestRecord
from spendgate.limits import Limit
from spendgate.money import Money, MoneyError
from spendgate.replay import DEFAULT_MAX_WAIT, Outcome, Replay, ReplayError, replay, unreplayable

__all__ = ["read_log", "simulate_cmd"]

PAGE = 1000
_SHOW = ("refused", "delayed", "clamped", "admitted", "all")


def read_log(
    ledger: Ledger, start: datetime | None, end: datetime | None, filters: Mapping[str, str]
) -> list[RequestRecord]:
    """Every logged request started in ``[start, end)`` matching ``filters``, oldest first,
    read in keyset pages (the log answers newest first; ``after`` is the last id of a page)."""
    out: list[RequestRecord] = []
    after: str | None = None
    while True:
        page = ledger.query_requests(start, end, limit=PAGE, after=after, **filters)
        out.extend(page)
        if len(page) < PAGE:
            break
        after = page[-1].request_id
    out.reverse()
    return out


@dataclass
class _Proposal:
    budgets: list[Budget]
    limits: list[Limit]
    source: str
    on_exceed: OnExceed | None = None
    max_wait: timedelta | None = None
    skipped: tuple[str, ...] = ()


def _inline(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        _fail(f"{what}: not valid YAML or JSON: {exc}")


def _config_section(config_path: str) -> Mapping[str, Any]:
    """The config's mapping (only ``budgets``, ``limits`` and ``defaults`` are read: this
    machine need not hold the upstreams' API keys that loading the whole config asks for)."""
    try:
        data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        _fail(f"{config_path}: cannot read it: {exc}")
    return data if isinstance(data, Mapping) else {}


def _budgets_of(items: Sequence[Any], where: str) -> list[Budget]:
    out: list[Budget] = []
    for index, item in enumerate(items):
        try:
            out.append(Budget.from_config(item, where=f"{where}[{index}]"))
        except ConfigError as exc:
            _fail(str(exc))
    ids = [b.id for b in out]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        _fail(f"{where}: budget id {dup!r} given twice (give each an id)")
    return out


def _limits_of(items: Sequence[Any], where: str) -> list[Limit]:
    out: list[Limit] = []
    for index, item in enumerate(items):
        try:
            out.append(Limit.from_config(item, where=f"{where}[{index}]"))
        except (ConfigError, ValueError) as exc:
            _fail(str(exc))
    return out


def _replayable(limits: Sequence[Limit], explicit: bool) -> tuple[list[Limit], tuple[str, ...]]:
    """The limits a log can replay; an unreplayable one given on the command line is an error,
    one from the config or the ledger is left out with a note."""
    kept: list[Limit] = []
    skipped: list[str] = []
    for limit in limits:
        why = unreplayable(limit)
        if why is None:
            kept.append(limit)
        elif explicit:
            _fail(f"--rate-limit: {why}")
        else:
            skipped.append(f"not replayed: {why}")
    return kept, tuple(skipped)


def _proposal(
    ledger: Ledger, config_path: str | None, budgets: tuple[str, ...], rate_limits: tuple[str, ...]
) -> _Proposal:
    config = _config_section(config_path) if config_path else {}
    defaults = config.get("defaults") if isinstance(config.get("defaults"), Mapping) else {}
    assert isinstance(defaults, Mapping)
    on_exceed = defaults.get("on_exceed")
    if on_exceed is not None and on_exceed not in ("raise", "wait", "clamp"):
        _fail(f"{config_path}: defaults.on_exceed: must be raise, wait or clamp, got {on_exceed!r}")
    max_wait = None
    if defaults.get("max_wait") is not None:
        max_wait = _seconds(str(defaults["max_wait"]), f"{config_path}: defaults.max_wait")
    if budgets or rate_limits:
        chosen = _budgets_of([_inline(text, "--budget") for text in budgets], "--budget")
        limits = _limits_of([_inline(text, "--rate-limit") for text in rate_limits], "--rate-limit")
        kept, skipped = _replayable(limits, explicit=True)
        source = "the command line"
    elif config_path and "budgets" in config:
        raw_budgets = config.get("budgets") or []
        raw_limits = config.get("limits") or []
        if not isinstance(raw_budgets, list) or not isinstance(raw_limits, list):
            _fail(f"{config_path}: budgets and limits must be lists")
        chosen = _budgets_of(raw_budgets, "budgets")
        kept, skipped = _replayable(_limits_of(raw_limits, "limits"), explicit=False)
        source = config_path
    else:
        chosen = ledger.budgets()
        kept, skipped = _replayable(ledger.limits(), explicit=False)
        source = "the ledger's budgets"
    return _Proposal(chosen, kept, source, cast("OnExceed | None", on_exceed), max_wait, skipped)


def _seconds(text: str, what: str) -> timedelta:
    try:
        value = Decimal(text.strip().removesuffix("s"))
    except InvalidOperation:
        _fail(f"{what}: a number of seconds, got {text!r}")
    if not value.is_finite() or value < 0:
        _fail(f"{what}: a number of seconds >= 0, got {text!r}")
    micros = int((value * 1_000_000).to_integral_value())
    return timedelta(microseconds=micros)


def _with_limits(budgets: list[Budget], given: tuple[str, ...]) -> list[Budget]:
    """``--limit USD`` sets every budget's limit (with no budget proposed: a global budget of
    that limit); ``--limit ID=USD`` one budget's."""
    out = list(budgets)
    for text in given:
        budget_id, sep, amount = text.rpartition("=")
        try:
            limit = Money.parse(amount.strip(), what="--limit")
        except MoneyError as exc:
            _fail(str(exc))
        if not sep:
            out = [replace(b, limit=limit) for b in out] or [Budget("global", {}, limit)]
            continue
        if budget_id not in {b.id for b in out}:
            known = ", ".join(b.id for b in out) or "none"
            _fail(f"--limit: no budget {budget_id!r} in the proposal (budgets: {known})")
        out = [replace(b, limit=limit) if b.id == budget_id else b for b in out]
    return out


def _with_window(budgets: list[Budget], text: str | None) -> list[Budget]:
    if text is None:
        return budgets
    raw = _inline(text, "--window")
    try:
        Window.parse(raw)
    except ValueError as exc:
        _fail(f"--window: {exc}")
    out: list[Budget] = []
    for budget in budgets:
        config = budget.to_config()
        config["window"] = raw
        try:
            out.append(Budget.from_config(config, where=f"budget {budget.id!r}"))
        except ConfigError as exc:
            _fail(f"--window: {exc}")
    return out


@click.command("simulate")
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    metavar="YAML",
    help="A proposed budget in the config's inline form, e.g. "
    "'{id: ml, selector: {team: ml}, limit: 50, window: month}' (repeat for more).",
)
@click.option(
    "--rate-limit",
    "rate_limits",
    multiple=True,
    metavar="YAML",
    help="A proposed rate limit, e.g. '{requests: 60, per: 1m, selector: {key: \"*\"}}' "
    "(requests, usd and concurrency can be replayed).",
)
@click.option(
    "--limit",
    "limits",
    multiple=True,
    metavar="USD|ID=USD",
    help="Set every proposed budget's limit (USD; with none proposed: a global budget), or one budget's (ID=USD).",
)
@click.option("--window", default=None, metavar="WINDOW", help="Give every proposed budget this window.")
@click.option(
    "--on-exceed",
    type=click.Choice(["raise", "wait", "clamp"]),
    default=None,
    help="Override every budget's on_exceed (default: the config's defaults.on_exceed, else each budget's).",
)
@click.option(
    "--max-wait",
    default=None,
    metavar="SECONDS",
    help=f"How long a waiting request waits (default: the config's, else {int(DEFAULT_MAX_WAIT.total_seconds())}).",
)
@click.option(
    "--since", default=None, metavar="ISO", help="Replay requests from this instant (UTC if no offset)."
)
@click.option("--until", default=None, metavar="ISO", help="Up to (not including) this instant.")
@click.option("--key", default=None, help="Only this key's requests (likewise --user, --team, ...).")
@click.option("--user", default=None)
@click.option("--team", default=None)
@click.option("--project", default=None)
@click.option("--customer", default=None)
@click.option("--model", default=None)
@click.option("--tag", default=None)
@click.option(
    "--show",
    "show",
    multiple=True,
    type=click.Choice(_SHOW),
    help="Also list the requests with this outcome (repeat; all: every request).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
def simulate_cmd(
    budgets: tuple[str, ...],
    rate_limits: tuple[str, ...],
    limits: tuple[str, ...],
    window: str | None,
    on_exceed: str | None,
    max_wait: str | None,
    since: str | None,
    until: str | None,
    key: str | None,
    user: str | None,
    team: str | None,
    project: str | None,
    customer: str | None,
    model: str | None,
    tag: str | None,
    show: tuple[str, ...],
    as_json: bool,
    ledger_url: str | None,
    config_path: str | None,
) -> None:
    """Replay the request log against proposed budgets: which requests would have been
    refused, delayed or clamped, and what would have been spent.

    The proposal: --budget/--rate-limit, else the budgets: and limits: of --config, else the
    ledger's own budgets and limits; --limit and --window change it. See docs/simulate.md.
    """
    try:
        start = parse_time(since, "--since") if since else None
        end = parse_time(until, "--until") if until else None
    except ValueError as exc:
        _fail(str(exc))
    if start and end and end <= start:
        _fail("--until must be after --since")
    values = {"key": key, "user": user, "team": team, "project": project,
              "customer": customer, "model": model, "tag": tag}  # fmt: skip
    filters = {dim: value for dim, value in values.items() if value is not None and dim in DIMENSIONS}
    with opened_ledger(ledger_url, config_path) as ledger:
        proposal = _proposal(ledger, config_path, budgets, rate_limits)
        records = read_log(ledger, start, end, filters)
    proposal.budgets = _with_window(_with_limits(proposal.budgets, limits), window)
    wait = _seconds(max_wait, "--max-wait") if max_wait is not None else proposal.max_wait
    chosen = cast("OnExceed | None", on_exceed) or proposal.on_exceed
    try:
        result = replay(
            records,
            proposal.budgets,
            proposal.limits,
            on_exceed=chosen,
            max_wait=DEFAULT_MAX_WAIT if wait is None else wait,
        )
    except ReplayError as exc:
        _fail(str(exc))
    shown = _shown(result, show)
    if as_json:
        click.echo(json.dumps(_json(result, proposal, chosen, start, end, shown), indent=2))
        return
    _print(result, proposal, shown)


def _shown(result: Replay, show: tuple[str, ...]) -> list[Outcome]:
    if not show:
        return []
    if "all" in show:
        return list(result.outcomes)
    return [o for o in result.outcomes if o.status in show]


# -- output ---------------------------------------------------------------------------------------


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    record = outcome.record
    return {
        "index": outcome.index,
        "request_id": record.request_id,
        "model": record.model,
        "attributes": record.attributes.to_dict(),
        "logged_started_at": iso(record.started_at),
        "logged_cost": money(record.cost),
        "estimate": None if record.estimate is None else money(record.estimate),
        "outcome": outcome.status,
        "started_at": iso(outcome.started_at),
        "finished_at": iso(outcome.finished_at),
        "delay_seconds": str(Decimal(outcome.delay // timedelta(microseconds=1)).scaleb(-6).normalize()),
        "reserved": money(outcome.reserved),
        "cost": money(outcome.cost),
        "by": outcome.by,
        "by_kind": None if outcome.by is None else "limit" if outcome.by_limit else "budget",
        "reason": outcome.reason,
    }


def _json(
    result: Replay,
    proposal: _Proposal,
    chosen: OnExceed | None,
    start: datetime | None,
    end: datetime | None,
    shown: list[Outcome],
) -> dict[str, Any]:
    first = result.outcomes[0].record.started_at if result.outcomes else None
    last = result.outcomes[-1].record.started_at if result.outcomes else None
    return {
        "proposal": {
            "source": proposal.source,
            "budgets": [b.to_config() for b in proposal.budgets],
            "limits": [lim.to_config() for lim in proposal.limits],
            "on_exceed": chosen,
            "not_replayed": list(proposal.skipped),
        },
        "log": {
            "since": iso(start),
            "until": iso(end),
            "first": iso(first),
            "last": iso(last),
            "requests": len(result.outcomes),
            "without_estimate": result.without_estimate,
        },
        "totals": {
            "requests": len(result.outcomes),
            "admitted": len(result.outcomes) - result.count("refused"),
            "delayed": result.count("delayed"),
            "clamped": result.count("clamped"),
            "refused": result.count("refused"),
            "logged_cost": money(result.logged),
            "spent": money(result.spent),
            "avoided": money(result.avoided),
        },
        "budgets": [
            {
                "id": t.budget_id,
                "label": t.label,
                "limit": money(t.limit),
                "on_exceed": chosen or t.on_exceed,
                "matched": t.matched,
                "admitted": t.admitted,
                "delayed": t.delayed,
                "clamped": t.clamped,
                "refused": t.refused,
                "spent": money(t.spent),
                "avoided": money(t.avoided),
                "windows": [{"start": iso(s), "spent": money(v)} for s, v in t.windows.items()],
            }
            for t in result.budgets
        ],
        "limits": [{"id": limit_id, "refused": n} for limit_id, n in result.limit_refusals.items()],
        "requests": [_outcome_json(o) for o in shown],
    }


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)),
        ]
        click.echo("  ".join(cells).rstrip())


def _print(result: Replay, proposal: _Proposal, shown: list[Outcome]) -> None:
    outcomes = result.outcomes
    if not outcomes:
        click.echo("no requests logged in that range: nothing to replay")
        return
    first, last = outcomes[0].record.started_at, outcomes[-1].record.started_at
    click.echo(
        f"replayed {len(outcomes)} logged requests from {iso(first)} to {iso(last)} "
        f"against {len(proposal.budgets)} budget(s) and {len(proposal.limits)} rate limit(s) "
        f"from {proposal.source}"
    )
    for note in proposal.skipped:
        click.echo(note)
    if result.without_estimate:
        click.echo(
            f"{result.without_estimate} request(s) logged without their estimate: their cost was reserved instead"
        )
    click.echo("")
    head = ["", "REQUESTS", "ADMITTED", "DELAYED", "CLAMPED", "REFUSED", "SPENT (USD)", "AVOIDED (USD)"]
    rows = [
        head,
        [
            "logged",
            str(len(outcomes)),
            str(len(outcomes)),
            "",
            "",
            "",
            money(result.logged),
            "",
        ],
        [
            "simulated",
            str(len(outcomes)),
            str(len(outcomes) - result.count("refused")),
            str(result.count("delayed")),
            str(result.count("clamped")),
            str(result.count("refused")),
            money(result.spent),
            money(result.avoided),
        ],
    ]
    for t in result.budgets:
        rows.append(
            [
                f"budget {t.budget_id} ({money(t.limit)} USD, {t.on_exceed})",
                str(t.matched),
                str(t.admitted),
                str(t.delayed),
                str(t.clamped),
                str(t.refused),
                money(t.spent),
                money(t.avoided),
            ]
        )
        if len(t.windows) > 1:
            for window_start, spent in t.windows.items():
                rows.append([f"  window from {iso(window_start)}", "", "", "", "", "", money(spent), ""])
    for limit in result.limits:
        refused = result.limit_refusals.get(limit.id, 0)
        rows.append([f"limit {limit.label()}", "", "", "", "", str(refused), "", ""])
    _table(rows)
    if shown:
        click.echo("")
        detail = [["LOGGED START", "REQUEST", "MODEL", "COST (USD)", "OUTCOME", "BY", "REASON"]]
        for o in shown:
            status: str = o.status
            if o.delay:
                status += f" {o.delay.total_seconds():g}s"
            detail.append(
                [
                    iso(o.record.started_at) or "",
                    o.record.request_id,
                    o.record.model or "",
                    money(o.record.cost),
                    status,
                    o.by or "",
                    o.reason or "",
                ]
            )
        widths = [max(len(row[i]) for row in detail) for i in range(len(detail[0]))]
        for row in detail:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
