"""``spendgate budgets forecast`` and ``spendgate budgets advise``: where spend is heading, and
what limit fits it.

    spendgate budgets forecast [BUDGET_ID] [--instance user=alice] [--json]
    spendgate budgets advise [BUDGET_ID] [--instance ...] [--headroom 20]
        [--what-if-model gpt-4o (--requests-per-day 2000 --input-tokens 1500 --output-tokens 300
                                 | --traffic-of key=k1 [--days 7])] [--json]

``register()`` adds both to ``spendgate.gateway.cli_admin.budgets_group`` (spendgate.cli calls
it). Without BUDGET_ID: every budget without wildcards and every wildcard instance with spend
this window (``list_budgets``). The math is ``spendgate.forecast`` and ``spendgate.advice``
(docs/forecasts.md). The ledger is opened as the admin commands open it (``ledger_options``,
never created). "Now" is the clock in ``ctx.obj["clock"]`` when a caller (a test) gives one,
else the ledger's. Exit codes follow spendgate.cli: 3 unknown model, 4 bad input (an unknown
budget among them), 1 the ledger cannot be reached.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

import click

from spendgate.advice import DEFAULT_HEADROOM, Advice, advise_budget, traffic, what_if, window_days
from spendgate.budgets import Budget
from spendgate.errors import ConfigError, UnknownModelPriceError
from spendgate.forecast import Forecast
from spendgate.forecasting import forecast_budget, ledger_now
from spendgate.gateway.cli_admin import budgets_group, ledger_options, opened_ledger
from spendgate.gateway.cli_admin import fail as _fail
from spendgate.gateway.views import parse_instance
from spendgate.ledger import Ledger
from spendgate.pricing.catalog import Catalog

__all__ = ["budgets_advise_cmd", "budgets_forecast_cmd", "register"]

EXIT_UNKNOWN_MODEL = 3


def _instance(pairs: tuple[str, ...]) -> dict[str, str] | None:
    try:
        return parse_instance(pairs) or None
    except ConfigError as exc:
        _fail(str(exc).replace("instance:", "--instance:"))


def _targets(ledger: Ledger, budget_id: str | None, instance: dict[str, str] | None) -> list[tuple[str, Any]]:
    """(budget id, instance) pairs to report on: the one asked, or every row of list_budgets()."""
    if budget_id is not None:
        try:
            ledger.get_budget(budget_id)
        except KeyError:
            _fail(f"no budget {budget_id!r}; see `spendgate budgets list`")
        return [(budget_id, instance)]
    if instance:
        _fail("--instance needs a BUDGET_ID")
    return [(u.budget_id, u.instance) for u in ledger.list_budgets()]


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def _name(budget_id: str | None, instance: Any) -> str:
    ident = budget_id or "-"
    if instance:
        ident += "[" + ",".join(f"{k}={v}" for k, v in dict(instance).items()) + "]"
    return ident


# -- forecast ------------------------------------------------------------------------------------


@click.command("forecast")
@click.argument("budget_id", required=False)
@click.option(
    "--instance", "instance", multiple=True, metavar="DIM=VALUE", help="One instance, e.g. user=alice."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
@click.pass_context
def budgets_forecast_cmd(
    ctx: click.Context,
    budget_id: str | None,
    instance: tuple[str, ...],
    as_json: bool,
    ledger_url: str | None,
    config_path: str | None,
) -> None:
    """Expected spend at the end of the window, with a band, and when the budget runs out.

    From the request log: the recent rate and the same hour of the week in past weeks
    (docs/forecasts.md). Without BUDGET_ID: every budget (and wildcard instance with spend).
    """
    values = _instance(instance)
    with opened_ledger(ledger_url, config_path) as ledger:
        now = ledger_now(ledger)
        results: list[Forecast] = []
        for ident, inst in _targets(ledger, budget_id, values):
            try:
                results.append(forecast_budget(ledger, ident, inst, now=now))
            except KeyError:
                continue  # deleted since it was listed
            except ValueError as exc:
                _fail(str(exc))
    if as_json:
        payload: Any = results[0].to_dict() if budget_id is not None else [f.to_dict() for f in results]
        click.echo(json.dumps(payload, indent=2))
        return
    if budget_id is not None:
        _forecast_detail(results[0])
        return
    if not results:
        click.echo("no budgets; add them to the config's budgets: or with `spendgate keys create --budget`")
        return
    click.echo(
        f"{'BUDGET':<26} {'SPENT':>10} {'LIMIT':>10} {'EXPECTED':>10} {'LOW-HIGH':>21}  "
        f"{'RUNS OUT':<17} {'EARLIEST':<17} METHOD"
    )
    for f in results:
        band = f"{f.low.format()}-{f.high.format()}"
        click.echo(
            f"{_name(f.budget_id, f.instance):<26} {f.spent.format():>10} {f.limit.format():>10} "
            f"{f.expected.format():>10} {band:>21}  {_when(f.runs_out_at):<17} "
            f"{_when(f.earliest_run_out):<17} {f.method}"
        )


def _forecast_detail(f: Forecast) -> None:
    end = "never resets" if f.window_end is None else f"ends {_when(f.window_end)}"
    click.echo(f"{_name(f.budget_id, f.instance)}: {f.label} ({end})")
    click.echo(f"  spent        {f.spent.format()} of {f.limit.format()} (at {_when(f.now)})")
    until = "window end" if f.window_end is not None else f"{_when(f.horizon_end)}"
    click.echo(
        f"  expected     {f.expected.format()} by the {until} (band {f.low.format()} to {f.high.format()})"
    )
    if f.runs_out_at is None:
        runs = "not before the window ends" if f.window_end is not None else "not within the horizon"
        if f.earliest_run_out is not None:
            runs += f" (possibly from {_when(f.earliest_run_out)})"
    else:
        runs = (
            f"{_when(f.runs_out_at)} (earliest {_when(f.earliest_run_out)}, latest {_when(f.latest_run_out)})"
        )
    click.echo(f"  runs out     {runs}")
    click.echo(
        f"  rate         {f.rate_per_hour.format()} an hour now; last 24 h {f.recent_rate_per_hour.format()} an hour"
    )
    click.echo(
        f"  method       {f.method}: {f.history_hours} h of history, {f.weeks} whole weeks, "
        f"trend {f.trend_per_week.format()} a week, spikes clipped {f.spikes_clipped}"
    )
    for note in f.notes:
        click.echo(f"  note         {note}")


# -- advise ---------------------------------------------------------------------------------------


def _fraction(text: str | None, what: str) -> Fraction | None:
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        _fail(f"{what}: expected a number, got {text!r}")
    if not value.is_finite() or value < 0:
        _fail(f"{what}: expected a number >= 0, got {text!r}")
    return Fraction(value)


@click.command("advise")
@click.argument("budget_id", required=False)
@click.option(
    "--instance", "instance", multiple=True, metavar="DIM=VALUE", help="One instance, e.g. user=alice."
)
@click.option(
    "--headroom",
    type=click.IntRange(0, 1000),
    default=DEFAULT_HEADROOM,
    show_default=True,
    help="Percent above the basis.",
)
@click.option("--what-if-model", "model", metavar="MODEL", default=None, help="Price this traffic on MODEL.")
@click.option("--requests-per-day", "requests_per_day", metavar="N", default=None, help="Requests a day.")
@click.option(
    "--input-tokens", "input_tokens", type=click.IntRange(0), default=None, help="Input tokens a request."
)
@click.option(
    "--output-tokens", "output_tokens", type=click.IntRange(0), default=None, help="Output tokens a request."
)
@click.option(
    "--traffic-of",
    "traffic_of",
    multiple=True,
    metavar="DIM=VALUE",
    help="Take requests a day and tokens from this traffic in the log (e.g. key=k1, model=gpt-4o).",
)
@click.option(
    "--days", type=click.IntRange(1, 90), default=7, show_default=True, help="Days of traffic to read."
)
@click.option(
    "--catalog",
    "catalog_path",
    metavar="FILE",
    default=None,
    envvar="SPENDGATE_CATALOG",
    help="Price catalog file (default: the one from `prices update`, else the built-in one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@ledger_options
@click.pass_context
def budgets_advise_cmd(
    ctx: click.Context,
    budget_id: str | None,
    instance: tuple[str, ...],
    headroom: int,
    model: str | None,
    requests_per_day: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    traffic_of: tuple[str, ...],
    days: int,
    catalog_path: str | None,
    as_json: bool,
    ledger_url: str | None,
    config_path: str | None,
) -> None:
    """A recommended limit: the 95th percentile of past windows' spend plus headroom.

    With --what-if-model: what traffic (given, or --traffic-of a key or model in the log)
    would cost on MODEL per window of BUDGET_ID (else 30 days), and the limit that fits it.
    """
    values = _instance(instance)
    rate = _fraction(requests_per_day, "--requests-per-day")
    what_if_given = rate is not None or input_tokens is not None or output_tokens is not None or traffic_of
    if what_if_given and model is None:
        _fail("--requests-per-day, --input-tokens, --output-tokens and --traffic-of need --what-if-model")
    seen_filter = _instance(traffic_of) if traffic_of else None
    with opened_ledger(ledger_url, config_path) as ledger:
        now = ledger_now(ledger)
        advices: list[Advice] = []
        budget: Budget | None = None
        if budget_id is not None:
            try:
                budget = ledger.get_budget(budget_id)
            except KeyError:
                _fail(f"no budget {budget_id!r}; see `spendgate budgets list`")
        if model is None or budget_id is not None:
            for ident, inst in _targets(ledger, budget_id, values):
                try:
                    advices.append(advise_budget(ledger, ident, inst, now=now, headroom_percent=headroom))
                except KeyError:
                    continue
                except ValueError as exc:
                    _fail(str(exc))
        scenario = None
        if model is not None:
            basis = ""
            if seen_filter is not None:
                try:
                    seen = traffic(ledger, seen_filter, now, days)
                except ValueError as exc:
                    _fail(f"--traffic-of: {exc}")
                if not seen.requests:
                    _fail(f"--traffic-of: no requests of {', '.join(traffic_of)} in the last {days} days")
                rate = seen.requests_per_day if rate is None else rate
                input_tokens = seen.input_per_request if input_tokens is None else input_tokens
                output_tokens = seen.output_per_request if output_tokens is None else output_tokens
                basis = seen.describe()
            missing = [
                name
                for name, value in (
                    ("--requests-per-day", rate),
                    ("--input-tokens", input_tokens),
                    ("--output-tokens", output_tokens),
                )
                if value is None
            ]
            if missing:
                _fail(f"--what-if-model needs {', '.join(missing)} (or --traffic-of DIM=VALUE)")
            assert rate is not None and input_tokens is not None and output_tokens is not None
            price = _model_price(catalog_path, model)
            span, label = window_days(budget, now)
            scenario = what_if(
                price,
                requests_per_day=rate,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                days=span,
                window_label=label,
                headroom_percent=headroom,
                basis=basis,
            )
    if as_json:
        body: dict[str, Any] = {"advice": [a.to_dict() for a in advices]}
        if scenario is not None:
            body["what_if"] = scenario.to_dict()
        click.echo(json.dumps(body, indent=2))
        return
    if not advices and scenario is None:
        click.echo("no budgets; add them to the config's budgets: or with `spendgate keys create --budget`")
        return
    for advice in advices:
        click.echo(f"{_name(advice.budget_id, advice.instance)}: {advice.label}")
        click.echo(f"  {advice.explanation}")
    if scenario is not None:
        click.echo(f"what-if: {scenario.explanation}")


def _model_price(catalog_path: str | None, model: str) -> Any:
    try:
        catalog = Catalog.load(catalog_path) if catalog_path else Catalog.default()
    except ConfigError as exc:
        _fail(str(exc))
    try:
        return catalog.price(model)
    except UnknownModelPriceError as exc:
        _fail(str(exc), EXIT_UNKNOWN_MODEL)


def register() -> None:
    """Add ``forecast`` and ``advise`` to ``spendgate budgets``."""
    for command in (budgets_forecast_cmd, budgets_advise_cmd):
        if command.name not in budgets_group.commands:
            budgets_group.add_command(command)
