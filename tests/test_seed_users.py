"""Issue 10 section 6, "the seed's own users": what a first user types and meets.

Floats where a person types money; a paused (limit 0) budget in wait mode; a prompt past the
context window; a default output cap and a 429 that says how to fit.
"""

from __future__ import annotations

import math
import threading
from decimal import Decimal
from typing import Any

import pytest

from spendgate.budgets import Budget
from spendgate.client import AsyncClient, Client
from spendgate.clock import ManualClock
from spendgate.errors import BudgetExceededError, ConfigError
from spendgate.estimate import ContextLengthExceededError, estimate_request
from spendgate.gateway.config import parse_settings
from spendgate.guard import Guard
from spendgate.money import Money, MoneyError, rate_to_nanos_per_million
from spendgate.pricing.catalog import Catalog
from spendgate.testing import FakeUpstream
from spendgate.tokens import default_counter
from test_guard import until

BODY: dict[str, Any] = {
    "model": "gpt-4",
    "messages": [{"role": "user", "content": "hello world"}],
    "max_tokens": 100,
}


# -- 1. floats where a person types money ------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "exact"), [(0.1, "0.1"), (0.5, "0.5"), (1e-7, "0.0000001"), (2.675, "2.675"), (1.0, "1")]
)
def test_a_float_is_read_as_the_decimal_it_shows(typed: float, exact: str) -> None:
    assert Money.parse(typed) == Money.parse(exact)
    assert Money.parse(typed).nanos == int(Decimal(exact) * 10**9)


def test_float_money_adds_up_exactly() -> None:
    tenth = Money.parse(0.1)
    assert tenth + tenth + tenth == Money.parse(0.3)  # 0.1 + 0.1 + 0.1 != 0.3 in floats


@pytest.mark.parametrize(("bad", "problem"), [(math.nan, "finite"), (math.inf, "finite"), (-0.5, "negative")])
def test_nan_inf_and_negative_floats_are_refused_clearly(bad: float, problem: str) -> None:
    with pytest.raises(MoneyError, match=f"limit: .*{problem}"):
        Money.parse(bad, what="limit")
    with pytest.raises(ConfigError, match=rf"budgets\[0\]\.limit: .*{problem}"):
        Budget.from_config({"limit": bad}, where="budgets[0]")
    with pytest.raises(MoneyError, match=problem):
        rate_to_nanos_per_million(bad)


def test_float_prices_are_exact() -> None:
    assert rate_to_nanos_per_million(2.5) == 2_500_000_000
    assert rate_to_nanos_per_million(0.15) == 150_000_000
    catalog = Catalog.builtin()
    catalog.set_price("my-model", {"input": 0.15, "output": 0.6, "max_output_tokens": 100})
    assert catalog.price("my-model").standard.base.input == 150_000_000


def test_wrap_budgets_and_budget_config_take_floats() -> None:
    budget = Budget.from_config({"id": "b", "limit": 0.5}, where="budgets[0]")
    assert budget.limit == Money.parse("0.5")
    guard = Guard("memory://", budgets=[{"id": "b", "limit": 0.05}])
    assert guard.ledger.get_budget("b").limit == Money.parse("0.05")


def test_gateway_config_takes_float_limits_and_prices() -> None:
    # A config built in Python (or any loader but the gateway's YAML one) holds real floats.
    settings = parse_settings(
        {
            "ledger": "sqlite:///x.db",
            "keys": {"required": False},
            "upstreams": {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:9"}},
            "routes": [{"model": "*", "upstream": "fake"}],
            "budgets": [{"id": "global", "limit": 0.1}],
            "prices": {"my-model": {"input": 0.3, "output": 1.2, "max_output_tokens": 100}},
        },
        environ={},
    )
    assert settings.budgets[0].limit == Money.parse("0.1")
    catalog = Catalog.builtin()
    catalog.apply_overrides(settings.prices)
    assert catalog.price("my-model").standard.base.output == 1_200_000_000


def test_client_takes_a_float_budget(up: FakeUpstream) -> None:
    client = Client(api_key="x", base_url=up.base_url, max_retries=0, cost_tracking_budget=0.5)
    try:
        assert client.limit == Money.parse("0.5")
        assert client.remaining == Money.parse("0.5")
    finally:
        client.close()
    with pytest.raises(ConfigError, match=r"cost_tracking_budget: .*finite"):
        Client(api_key="x", base_url=up.base_url, cost_tracking_budget=math.nan)


# -- 2. a paused budget (limit 0) waits for a raise ------------------------------------------------


def paused_guard(**options: Any) -> Guard:
    clock = ManualClock("2026-11-28T12:00:00Z")
    budget = {"id": "team", "selector": {"team": "a"}, "limit": "0", "window": "day"}
    return Guard("memory://", budgets=[budget], clock=clock, **options)


def test_a_paused_budget_says_it_is_paused() -> None:
    guard = paused_guard()
    with pytest.raises(BudgetExceededError) as info:
        guard.admit("chat", BODY, attributes={"team": "a"})
    message = str(info.value)
    assert "paused" in message and "limit of 0 USD" in message
    assert "%" not in message  # no "current usage 552000000% of limit 0 USD"
    assert info.value.to_dict()["paused"] is True


def test_wait_holds_a_request_on_a_paused_budget_until_the_limit_is_raised() -> None:
    guard = paused_guard(on_exceed="wait", max_wait=600, poll_interval=0.01)
    admitted = threading.Event()
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            guard.admit("chat", BODY, attributes={"team": "a"})
            admitted.set()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    until(lambda: guard.waiting() == 1 or bool(errors), "the request to wait")
    assert not errors and not admitted.is_set()
    budget = guard.ledger.get_budget("team")
    guard.ledger.put_budget(Budget.from_config({**budget.to_config(), "limit": "1"}, where="raise"))
    assert admitted.wait(10), errors
    thread.join(10)
    assert guard.ledger.usage("team").reserved > Money(0)


def test_wait_on_a_paused_budget_gives_up_at_max_wait_saying_paused() -> None:
    guard = paused_guard(on_exceed="wait", max_wait=30, poll_interval=0.01)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            guard.admit("chat", BODY, attributes={"team": "a"})
        except BudgetExceededError as exc:
            errors.append(exc)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    until(lambda: guard.waiting() == 1, "the request to wait")
    guard.clock.advance(31)  # type: ignore[attr-defined]
    guard.poke()
    until(lambda: len(errors) == 1, "the waiter to give up")
    thread.join(10)
    assert "paused" in str(errors[0])
    assert guard.waiting() == 0 and guard.ledger.usage("team").reserved == Money(0)


def test_client_passes_max_wait_to_its_guard(up: FakeUpstream) -> None:
    client = Client(api_key="x", base_url=up.base_url, cost_tracking_budget=0, on_exceed="wait", max_wait=2.5)
    try:
        assert client.guard.max_wait == 2.5
    finally:
        client.close()
    aclient = AsyncClient(api_key="x", base_url=up.base_url, cost_tracking_budget=1, max_wait=0)
    assert aclient.guard.max_wait == 0
    aclient._close_guard()
    with pytest.raises(ConfigError, match="max_wait"):
        Client(api_key="x", base_url=up.base_url, cost_tracking_budget=1, max_wait=-1)


# -- 3. a prompt past the context window ----------------------------------------------------------


def test_an_exact_prompt_past_the_context_window_is_refused() -> None:
    catalog = Catalog.builtin()
    window = catalog.price("gpt-4").context_window
    assert window == 8192
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello " * 20_000}], "max_tokens": 5}
    assert default_counter().count_prompt("gpt-4", "hello").exact  # cl100k is on this machine
    with pytest.raises(ContextLengthExceededError) as info:
        estimate_request("chat", body, catalog=catalog)
    assert info.value.prompt_tokens > 8192 and info.value.context_window == 8192
    assert "20,0" in str(info.value) and "8,192-token context window" in str(info.value)
    # The guard refuses before reserving anything.
    guard = Guard("memory://", budgets=[{"id": "g", "limit": "100"}])
    with pytest.raises(ContextLengthExceededError):
        guard.admit("chat", body)
    assert guard.ledger.usage("g").reserved == Money(0)


def test_a_prompt_that_fits_or_is_only_bounded_is_not_refused() -> None:
    catalog = Catalog.builtin()
    fits = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello " * 7000}], "max_tokens": 5}
    assert estimate_request("chat", fits, catalog=catalog).prompt.exact
    # A byte bound over the window may still be a prompt that fits (a token can cover many
    # bytes): never refused on a bound.
    spaces = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": " " * 400_000}]}
    prompt = estimate_request("messages", {**spaces, "max_tokens": 5}, catalog=catalog).prompt
    assert not prompt.exact and prompt.tokens > (catalog.price("claude-sonnet-4-5").context_window or 0)


def test_input_bounded_by_the_window_on_purpose_is_not_refused() -> None:
    body = {"model": "gpt-4o", "input": "hi", "previous_response_id": "resp_1", "max_output_tokens": 5}
    estimate = estimate_request("responses", body, catalog=Catalog.builtin())
    assert estimate.prompt.method == "context_window"


# -- 4. a default output cap, and a 429 that says how to fit ---------------------------------------

NO_CAP: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_the_default_output_cap_is_reserved_and_sent() -> None:
    guard = Guard("memory://", budgets=[{"id": "g", "limit": "0.05"}], default_max_output_tokens=1000)
    adm = guard.admit("chat", NO_CAP)
    assert adm.request["max_completion_tokens"] == 1000  # the provider cannot bill past it
    assert adm.estimate.max_output_tokens == 1000 and adm.estimate.output_source == "default"
    guard.release(adm)
    asked = guard.admit("chat", {**NO_CAP, "max_tokens": 3000})  # the caller's own cap wins
    assert asked.estimate.max_output_tokens == 3000 and "max_completion_tokens" not in asked.request
    guard.release(asked)
    small = Guard("memory://", default_max_output_tokens=10**9)  # above the model's max: the max
    assert small.admit("chat", NO_CAP).estimate.max_output_tokens == 16384


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_a_bad_default_output_cap_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="default_max_output_tokens"):
        Guard("memory://", default_max_output_tokens=bad)  # type: ignore[arg-type]


def test_the_429_says_which_max_tokens_fits() -> None:
    guard = Guard("memory://", budgets=[{"id": "g", "limit": "0.005"}])
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BudgetExceededError) as info:
        guard.admit("chat", body)
    worst = estimate_request("chat", body, catalog=guard.catalog, counter=guard.counter)
    affordable = worst.max_output_affordable(Money.parse("0.005"))
    assert 0 < affordable < worst.max_output_tokens
    assert f"set max_tokens <= {affordable}" in str(info.value)
    assert info.value.to_dict()["max_output_tokens_affordable"] == affordable
    adm = guard.admit("chat", {**body, "max_tokens": affordable})  # and that cap does fit
    guard.release(adm)
    # The Responses API names its cap max_output_tokens.
    with pytest.raises(BudgetExceededError, match=r"set max_output_tokens <= \d+"):
        guard.admit("responses", {"model": "gpt-4o", "input": "hi"})
