"""The ``spendgate`` command line.

Exit codes scripts can rely on: 0 ok; 2 bad usage (click's); 3 unknown model;
4 bad input (a file, a catalog, a number); 5 a budget refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click

from spendgate.cost import PARTS, ToolFeeError, cost_of
from spendgate.errors import ConfigError, SpendgateError, UnknownModelPriceError
from spendgate.money import nanos_per_million_to_decimal
from spendgate.pricing.catalog import Catalog, user_catalog_path
from spendgate.pricing.schema import RATE_FIELDS, ModelPrice, Rates
from spendgate.usage import TOOL_CALL_FIELDS, Usage

EXIT_UNKNOWN_MODEL = 3
EXIT_BAD_INPUT = 4
EXIT_BUDGET = 5

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(f"spendgate: error: {message}", err=True)
    sys.exit(code)


def _catalog(path: str | None) -> Catalog:
    try:
        return Catalog.load(path) if path else Catalog.default()
    except ConfigError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        raise  # unreachable; keeps type checkers honest


def _price(catalog: Catalog, model: str) -> ModelPrice:
    try:
        return catalog.price(model)
    except UnknownModelPriceError as exc:
        _fail(str(exc), EXIT_UNKNOWN_MODEL)
        raise


def catalog_option(func: F) -> F:
    return click.option(
        "--catalog",
        "catalog_path",
        metavar="FILE",
        default=None,
        envvar="SPENDGATE_CATALOG",
        help="Price catalog file (default: the one from `prices update`, else the built-in one).",
    )(func)


def _per_million(rate: int) -> str:
    return f"${nanos_per_million_to_decimal(rate):f}"


def _rates_rows(rates: Rates) -> list[tuple[str, str]]:
    return [
        (name, _per_million(value)) for name in RATE_FIELDS if (value := getattr(rates, name)) is not None
    ]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spendgate")
def main() -> None:
    """spendgate: exact cost tracking and budgets for LLM API calls."""


@main.command("price")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the price as JSON.")
@catalog_option
def price_cmd(model: str, as_json: bool, catalog_path: str | None) -> None:
    """Show what MODEL costs, per 1M tokens."""
    catalog = _catalog(catalog_path)
    price = _price(catalog, model)
    if as_json:
        click.echo(json.dumps({"model": price.name, "requested": model, **price.to_data()}, indent=2))
        return
    resolved = "" if price.name == model else f"  (resolved from {model!r})"
    click.echo(f"{price.name}{resolved}")
    click.echo(f"  provider: {price.provider or '-'}   mode: {price.mode}")
    click.echo(
        f"  max output: {price.max_output_tokens or '-'} tokens   "
        f"context window: {price.context_window or '-'} tokens"
    )
    click.echo("  USD per 1M tokens:")
    for name, value in _rates_rows(price.standard.base):
        click.echo(f"    {name:<15} {value}")
    for tier in price.standard.tiers:
        click.echo(f"  prompt above {tier.above:,} tokens (whole request):")
        for name, value in _rates_rows(tier.rates):
            click.echo(f"    {name:<15} {value}")
    for tier_name, table in price.service_tiers.items():
        rows = ", ".join(
            f"{n} {v}" for n, v in _rates_rows(table.base) if n in ("input", "output", "cache_read")
        )
        click.echo(f"  {tier_name}: {rows}")
    src = catalog.source
    click.echo(f"  catalog: {src.name or 'spendgate'} {src.version} ({src.date or 'undated'})")


def _count(name: str) -> Callable[[click.Context, click.Parameter, int | None], int]:
    def check(ctx: click.Context, param: click.Parameter, value: int | None) -> int:
        if value is None:
            return 0
        if value < 0:
            raise click.BadParameter(f"{name} must be >= 0, got {value}")
        return value

    return check


@main.command("cost")
@click.option("--model", "-m", required=True, help="Model name, e.g. gpt-4o or anthropic/claude-sonnet-4-5.")
@click.option(
    "--input",
    "input_tokens",
    type=int,
    default=0,
    callback=_count("--input"),
    help="All prompt tokens, cached ones included (as OpenAI reports prompt_tokens).",
)
@click.option(
    "--output",
    "output_tokens",
    type=int,
    default=0,
    callback=_count("--output"),
    help="All output tokens, reasoning included.",
)
@click.option(
    "--cached",
    type=int,
    default=0,
    callback=_count("--cached"),
    help="How many of the input tokens were cache reads.",
)
@click.option(
    "--cache-write",
    type=int,
    default=0,
    callback=_count("--cache-write"),
    help="How many of the input tokens were written to a 5-minute cache.",
)
@click.option(
    "--cache-write-1h",
    type=int,
    default=0,
    callback=_count("--cache-write-1h"),
    help="How many of the input tokens were written to a 1-hour cache.",
)
@click.option(
    "--reasoning",
    type=int,
    default=0,
    callback=_count("--reasoning"),
    help="How many of the output tokens were reasoning tokens.",
)
@click.option(
    "--service-tier", type=click.Choice(["standard", "batch", "flex", "priority"]), default="standard"
)
@click.option(
    "--tool-calls",
    "tool_calls",
    multiple=True,
    metavar="TOOL=N",
    help=f"Hosted tool uses billed per use, e.g. web_search=3 (repeatable; {', '.join(TOOL_CALL_FIELDS)}).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the breakdown as JSON.")
@catalog_option
def cost_cmd(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached: int,
    cache_write: int,
    cache_write_1h: int,
    reasoning: int,
    service_tier: str,
    tool_calls: tuple[str, ...],
    as_json: bool,
    catalog_path: str | None,
) -> None:
    """What a request of MODEL with these token counts costs, exactly."""
    try:
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cached,
            cache_write_tokens=cache_write,
            cache_write_1h_tokens=cache_write_1h,
            reasoning_tokens=reasoning,
        )
    except ValueError as exc:
        _fail(str(exc).replace("Usage: ", "").replace("input_tokens", "--input"), EXIT_BAD_INPUT)
        return
    usage = usage.with_tool_calls(_tool_calls(tool_calls))
    catalog = _catalog(catalog_path)
    price = _price(catalog, model)
    if service_tier != "standard" and service_tier not in price.service_tiers:
        _fail(f"{price.name} has no {service_tier} prices in the catalog", EXIT_BAD_INPUT)
    # A tool the model has no fee for: the highest of its provider's, as a reservation bounds it.
    fallback = {
        tool: fee
        for tool in usage.tool_calls()
        if tool not in price.tool_fees and (fee := catalog.highest_tool_fee(price.provider, tool)) is not None
    }
    try:
        cost = cost_of(usage, price.with_tool_fees(fallback), service_tier=service_tier)
    except ToolFeeError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        return
    breakdown = cost.breakdown()
    if as_json:
        payload = {
            "model": price.name,
            "service_tier": cost.service_tier,
            "usage": usage.as_dict(),
            **{k: f"{v.normalize():f}" for k, v in breakdown.items()},
        }
        click.echo(json.dumps(payload, indent=2))
        return
    tier = f", long-context rates (prompt above {cost.tier_above:,})" if cost.tier_above is not None else ""
    click.echo(f"{price.name} ({cost.service_tier}{tier})")
    for part in PARTS:
        if breakdown[part]:
            click.echo(f"  {part:<12} {_usd(breakdown[part])}")
    for tool, _femto in cost.tools_femto:
        calls = getattr(usage, TOOL_CALL_FIELDS[tool], 0) if tool in TOOL_CALL_FIELDS else 0
        click.echo(f"  {tool:<12} {_usd(breakdown[tool])}" + (f"  ({calls} uses)" if calls else ""))
    click.echo(f"  {'total':<12} {_usd(breakdown['total'])}")


def _tool_calls(given: tuple[str, ...]) -> dict[str, int]:
    """``--tool-calls web_search=3`` -> {"web_search": 3}."""
    calls: dict[str, int] = {}
    for item in given:
        tool, _, count = item.partition("=")
        if tool not in TOOL_CALL_FIELDS or not count.isdigit():
            _fail(
                f"--tool-calls: expected TOOL=N with TOOL one of {', '.join(TOOL_CALL_FIELDS)}, got {item!r}",
                EXIT_BAD_INPUT,
            )
        calls[tool] = calls.get(tool, 0) + int(count)
    return calls


def _usd(amount: Decimal) -> str:
    return f"${amount.normalize():f}" if amount else "$0"


@main.command("models")
@click.option("--provider", "-p", default=None, help="Only this provider's models (e.g. openai, anthropic).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@catalog_option
def models_cmd(provider: str | None, as_json: bool, catalog_path: str | None) -> None:
    """List the priced models (USD per 1M input / output tokens)."""
    catalog = _catalog(catalog_path)
    rows = list(catalog.models(provider))
    if not rows and provider:
        known = ", ".join(catalog.providers()[:40])
        _fail(f"no models for provider {provider!r}; providers include: {known}", EXIT_BAD_INPUT)
    for price in rows:
        if as_json:
            click.echo(json.dumps({"model": price.name, **price.to_data()}))
            continue
        base = price.standard.base
        click.echo(
            f"{price.name:<60} {price.provider:<24} "
            f"in {_per_million(base.input_rate()):>10}  out {_per_million(base.output_rate()):>10}"
        )


@main.group("prices")
def prices_group() -> None:
    """Manage the price catalog: where it came from, loading a newer one."""


@prices_group.command("update")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="FILE_OR_URL",
    help="A community model_prices_and_context_window.json (path or URL) or a litellm wheel.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where to store it (default: $SPENDGATE_PRICES_FILE or ~/.local/share/spendgate/prices.json).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Keep only the new source's models (default: merge them over the catalog in use).",
)
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
def prices_update_cmd(source: str, out: str | None, replace: bool, dry_run: bool) -> None:
    """Load a newer community catalog without upgrading spendgate.

    The new models are merged over the catalog in use (the file at --out if there is one,
    else the built-in data); --replace keeps the new ones only. Either way it says what changed.
    """
    from spendgate.pricing.community import convert_source, dump_document
    from spendgate.pricing.update import combine, current_document, describe

    path = Path(out) if out else user_catalog_path()
    try:
        incoming, result = convert_source(source)
        Catalog.from_document(incoming, where=source)  # validate before replacing anything
        current, current_where = current_document(path)
        document, changes = combine(current, incoming, replace=replace, current_where=current_where)
        catalog = Catalog.from_document(document, where=str(path))
    except (SpendgateError, ValueError) as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        return
    how = "replaced" if replace else f"merged over {current_where}"
    for line in describe(changes):
        click.echo(line)
    if dry_run:
        click.echo(f"dry run: nothing written ({path} would hold {len(catalog)} models, {how})")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_document(document), encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a catalog
    click.echo(
        f"stored {len(catalog)} models and {len(document['aliases'])} aliases in {path} "
        f"({how}; new source {incoming['source']['origin']} {incoming['source']['version']}, "
        f"{result.corrections_applied} corrections)"
    )


@prices_group.command("info")
@catalog_option
def prices_info_cmd(catalog_path: str | None) -> None:
    """Which catalog is in use and where it came from."""
    catalog = _catalog(catalog_path)
    src = catalog.source
    where = catalog_path or (str(user_catalog_path()) if user_catalog_path().is_file() else "built in")
    click.echo(f"catalog:   {where}")
    click.echo(f"source:    {src.name} from {src.origin or '-'}")
    click.echo(f"version:   {src.version}   date: {src.date or '-'}   sha256: {src.sha256[:16] or '-'}")
    click.echo(f"models:    {len(catalog)} across {len(catalog.providers())} providers")


@main.command("demo")
@click.option(
    "--ledger",
    "ledger_url",
    default="sqlite:///spendgate-demo.db",
    show_default=True,
    help="Ledger URL (sqlite:///PATH or memory://).",
)
@click.option("--limit", default="0.05", show_default=True, help="The demo budget's limit in USD.")
@click.option(
    "--gateway",
    "gateway_url",
    default=None,
    metavar="URL",
    help="Instead, send requests through a running gateway (its /v1 URL), e.g. `spendgate serve --demo`.",
)
@click.option("--key", default=None, help="The virtual key for --gateway.")
def demo_cmd(ledger_url: str, limit: str, gateway_url: str | None, key: str | None) -> None:
    """Show a budget being enforced: gpt-4o calls to a local fake upstream until the budget refuses."""
    from spendgate.demo import run_demo, run_gateway_demo

    if gateway_url:
        run_gateway_demo(gateway_url, key or "none", echo=click.echo)
        return
    try:
        run_demo(ledger_url, limit, echo=click.echo)
    except SpendgateError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)


def _register_gateway_commands() -> None:
    """keys, budgets and usage (they need no gateway extra); serve when the extra is installed."""
    from spendgate.gateway.cli_admin import COMMANDS

    for command in COMMANDS:
        main.add_command(command)
    main.add_command(serve_cmd)
    from spendgate.commands.alerts import alerts_group
    from spendgate.commands.report import report_cmd
    from spendgate.commands.simulate import simulate_cmd

    main.add_command(alerts_group)
    main.add_command(simulate_cmd)
    main.add_command(report_cmd)
    from spendgate.commands.forecast import register as register_budget_forecasts

    register_budget_forecasts()  # spendgate budgets forecast | advise


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="The gateway's YAML config.")
@click.option("--host", default=None, help="Listen address (default: the config's, else 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (0 picks a free one).")
@click.option("--demo", is_flag=True, help="Start a fake upstream and route every model to it.")
@click.option(
    "--loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    default="auto",
    show_default=True,
    help="The event loop: auto takes uvloop when it is installed.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Gateway processes sharing the port and the ledger (default: the config's listen.workers, "
    "else 1; more than 1 needs --config).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="SPENDGATE_LOG_LEVEL",
    help="Log to stderr from this level on; info writes one line per request (env SPENDGATE_LOG_LEVEL).",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"], case_sensitive=False),
    default=None,
    envvar="SPENDGATE_LOG_FORMAT",
    help="One JSON object or one text line per record (default: text when stderr is a terminal, "
    "else json; env SPENDGATE_LOG_FORMAT).",
)
def serve_cmd(
    config_path: str | None,
    host: str | None,
    port: int | None,
    demo: bool,
    loop: str,
    workers: int | None,
    log_level: str,
    log_format: str | None,
) -> None:
    """Run the OpenAI-compatible gateway."""
    try:  # imported here: the gateway's dependencies cost every other command 0.15 s
        from spendgate.gateway.server import serve
    except ImportError as exc:
        _fail(f"the gateway needs {exc.name}: pip install 'spendgate[gateway]'", EXIT_BAD_INPUT)
        return
    try:
        serve(
            config_path,
            demo=demo,
            host=host,
            port=port,
            loop=loop,
            workers=workers,
            log_level=log_level,
            log_format=log_format,
        )
    except ConfigError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)


_register_gateway_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
