from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.cost import cost_of
from spendgate.errors import UnknownModelPriceError
from spendgate.estimate import DEFAULT_MAX_TOOL_CALLS, EstimateError, estimate_request
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.usage import Usage

CATALOG = Catalog.builtin()
HELLO = [{"role": "user", "content": "hello world"}]


def est(endpoint: Any, **body: Any) -> Any:
    return estimate_request(endpoint, body, catalog=CATALOG)


def test_exact_prompt_and_requested_max_tokens() -> None:
    e = est("chat", model="gpt-4", messages=HELLO, max_tokens=100)
    assert e.prompt.exact and e.prompt.tokens == 9  # cl100k: 3 + 1 (role) + 2 ("hello world") + 3
    # 9*30 + 100*60 per 1M
    assert e.amount == Money(6_270_000)
    assert e.output_source == "request"


def test_both_output_caps_reserve_the_larger() -> None:
    # Servers read one field or the other: max_completion_tokens 0 beside max_tokens 100 may
    # still generate 100 tokens.
    for small, big in ((10, 100), (0, 100), (100, 10)):
        e = est("chat", model="gpt-4", messages=HELLO, max_completion_tokens=small, max_tokens=big)
        assert e.max_output_tokens == max(small, big)


def test_no_max_tokens_uses_the_models_max_output() -> None:
    e = est("chat", model="gpt-4o", messages=HELLO, service_tier="default")
    assert e.max_output_tokens == 16384
    assert e.output_source == "model"
    assert e.amount == Money.from_femto_ceil(e.prompt.tokens * 2_500_000_000 + 16384 * 10_000_000_000)


@pytest.mark.parametrize(
    ("tier", "rates"),
    [
        # gpt-4o: $2.50/$10 standard, $4.25/$17 priority, $1.25/$5 batch (per 1M)
        ("default", (2_500_000_000, 10_000_000_000)),  # names the standard tier
        ("priority", (4_250_000_000, 17_000_000_000)),
        ("batch", (1_250_000_000, 5_000_000_000)),
        # none, "auto", or a tier the catalog does not know: it may be served at priority
        (None, (4_250_000_000, 17_000_000_000)),
        ("auto", (4_250_000_000, 17_000_000_000)),
        ("fast", (4_250_000_000, 17_000_000_000)),
    ],
)
def test_the_reservation_is_at_the_highest_tier_the_request_may_be_served_at(
    tier: str | None, rates: tuple[int, int]
) -> None:
    body: dict[str, Any] = {"messages": HELLO, "max_tokens": 10}
    if tier is not None:
        body["service_tier"] = tier
    e = est("chat", model="gpt-4o", **body)
    assert (e.prompt_rate, e.output_rate) == rates


@pytest.mark.parametrize(
    ("endpoint", "extra"),
    [
        ("responses", {"previous_response_id": "resp_1"}),
        ("responses", {"conversation": "conv_1"}),
        ("responses", {"prompt": {"id": "pmpt_1"}}),
        ("responses", {"tools": [{"type": "web_search"}]}),
        ("responses", {"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}),
        ("responses", {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
        ("messages", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        # a model whose searches are bounded (one fee per grounded prompt), or it is refused
        ("chat", {"web_search_options": {}, "model": "gemini-2.5-flash"}),
    ],
)
def test_input_not_in_the_body_is_bounded_by_the_context_window(endpoint: str, extra: dict[str, Any]) -> None:
    extra = dict(extra)
    model = extra.pop("model", "claude-sonnet-4-5" if endpoint == "messages" else "gpt-4o")
    base: dict[str, Any] = {
        "model": model,
        "max_tokens" if endpoint != "responses" else "max_output_tokens": 5,
    }
    if endpoint == "responses":
        base["input"] = "hi"
    else:
        base["messages"] = HELLO
    body = {**base, **extra}
    window = CATALOG.price(model).context_window
    assert window
    e = estimate_request(endpoint, body, catalog=CATALOG)  # type: ignore[arg-type]
    assert e.prompt.tokens == window and e.prompt.method == "context_window"
    assert estimate_request(endpoint, base, catalog=CATALOG).prompt.tokens < 100  # type: ignore[arg-type]
    with pytest.raises(EstimateError, match="cannot bound the input"):
        estimate_request(endpoint, body, catalog=CATALOG, unbounded_policy="refuse")  # type: ignore[arg-type]


def test_n_multiplies_the_output_not_the_prompt() -> None:
    one = est("chat", model="gpt-4", messages=HELLO, max_tokens=100)
    three = est("chat", model="gpt-4", messages=HELLO, max_tokens=100, n=3)
    assert three.amount - one.amount == Money(2 * 100 * 60_000)  # two more outputs of 100 at $60/1M


def test_cache_control_reserves_at_the_write_rate() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "long policy", "cache_control": {"type": "ephemeral"}}],
        "messages": HELLO,
    }
    with_cache = estimate_request("messages", body, catalog=CATALOG)
    assert with_cache.prompt_rate == 6_000_000_000  # the 1-hour write rate, the highest prompt rate
    body.pop("system")
    assert estimate_request("messages", body, catalog=CATALOG).prompt_rate == 3_000_000_000


def test_embeddings_have_no_output() -> None:
    e = est("embeddings", model="text-embedding-3-small", input=["a", "b"])
    assert e.max_output_tokens == 0
    assert e.prompt.exact
    assert e.amount == Money.from_femto_ceil(e.prompt.tokens * 20_000_000)


def test_long_context_tier_is_reserved_when_the_prompt_may_pass_it() -> None:
    big = "word " * 300_000
    e = est(
        "chat",
        model="gpt-5.4",
        messages=[{"role": "user", "content": big}],
        max_tokens=10,
        service_tier="default",
    )
    assert e.prompt_rate == 5_000_000_000 and e.output_rate == 22_500_000_000


def test_responses_and_completions() -> None:
    r = est("responses", model="gpt-4o", input="hi", instructions="be brief", max_output_tokens=5)
    assert r.max_output_tokens == 5
    c = est("completions", model="gpt-4o", prompt="hi", max_tokens=7, best_of=2, n=1)
    assert c.n == 2


def test_unknown_model_and_bad_values() -> None:
    with pytest.raises(UnknownModelPriceError):
        est("chat", model="gpt-4q", messages=HELLO)
    with pytest.raises(EstimateError, match="max_tokens"):
        est("chat", model="gpt-4o", messages=HELLO, max_tokens=-1)
    with pytest.raises(EstimateError, match="'n'"):
        est("chat", model="gpt-4o", messages=HELLO, n=0)
    with pytest.raises(EstimateError, match="model"):
        est("chat", messages=HELLO)
    with pytest.raises(EstimateError, match="messages"):
        est("chat", model="gpt-4o", messages="hi")


def test_no_bound_without_max_output() -> None:
    catalog = Catalog.builtin()
    catalog.set_price("mystery", {"input": "1", "output": "1"})
    with pytest.raises(EstimateError, match="cannot bound the output"):
        estimate_request("chat", {"model": "mystery", "messages": HELLO}, catalog=catalog)
    catalog.set_price("windowed", {"input": "1", "output": "1", "context_window": 1000})
    e = estimate_request("chat", {"model": "windowed", "messages": HELLO}, catalog=catalog)
    assert e.output_source == "context" and e.max_output_tokens == 1000 - e.prompt.tokens


def test_max_output_affordable() -> None:
    e = est("chat", model="gpt-4", messages=HELLO, max_tokens=100)
    assert e.max_output_affordable(e.amount) == 100
    assert e.max_output_affordable(Money(0)) == 0
    k = e.max_output_affordable(Money(1_000_000))  # $0.001: (1e-3 - 9*30e-6) / 60e-6 = 12.16
    assert k == 12
    assert e.with_max_output(k).amount <= Money(1_000_000) < e.with_max_output(k + 1).amount


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(["gpt-4", "gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro", "gpt-5.4", "o3"]),
    text=st.text(max_size=400),
    max_tokens=st.integers(min_value=0, max_value=5000),
    data=st.data(),
)
def test_actual_cost_never_exceeds_the_estimate(
    model: str, text: str, max_tokens: int, data: st.DataObject
) -> None:
    """Any usage a provider can bill for the request costs at most the reservation."""
    e = est("chat", model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens)
    prompt = data.draw(st.integers(min_value=0, max_value=e.prompt.tokens))
    cached = data.draw(st.integers(min_value=0, max_value=prompt))
    output = data.draw(st.integers(min_value=0, max_value=max_tokens))
    reasoning = data.draw(st.integers(min_value=0, max_value=output))
    usage = Usage(
        input_tokens=prompt, cache_read_tokens=cached, output_tokens=output, reasoning_tokens=reasoning
    )
    assert cost_of(usage, e.price).total <= e.amount


# -- what the bound must include (each fails if the estimate leaves its part out) ---------------

LONG = "Answer as a careful accountant who double-checks every figure. " * 40


def _prompt(endpoint: Any, **body: Any) -> int:
    return int(est(endpoint, **body).prompt.tokens)


def test_tools_system_and_instructions_are_part_of_the_prompt_bound() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"lookup_{i}",
                "description": "Look a figure up in the ledger by its account and period.",
                "parameters": {"type": "object", "properties": {"account": {"type": "string"}}},
            },
        }
        for i in range(20)
    ]
    bare = _prompt("chat", model="gpt-4o", messages=HELLO, max_tokens=5)
    assert _prompt("chat", model="gpt-4o", messages=HELLO, max_tokens=5, tools=tools) > bare + 20 * 20
    a_bare = _prompt("messages", model="claude-sonnet-4-5", messages=HELLO, max_tokens=5)
    with_system = _prompt("messages", model="claude-sonnet-4-5", messages=HELLO, max_tokens=5, system=LONG)
    assert with_system > a_bare + len(LONG) // 8
    r_bare = _prompt("responses", model="gpt-4o", input="hi", max_output_tokens=5)
    with_instructions = _prompt(
        "responses", model="gpt-4o", input="hi", max_output_tokens=5, instructions=LONG
    )
    assert with_instructions > r_bare + len(LONG) // 8


def test_audio_is_reserved_at_the_audio_rates() -> None:
    # gpt-audio: $2.50/$10 text, $32/$64 audio per 1M
    audio_in = [
        {
            "role": "user",
            "content": [{"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}],
        }
    ]
    e = est("chat", model="gpt-audio", messages=audio_in, max_tokens=5)
    assert e.prompt_rate == 32_000_000_000
    spoken = est("chat", model="gpt-audio", messages=HELLO, max_tokens=5, modalities=["text", "audio"])
    assert spoken.output_rate == 64_000_000_000
    assert est("chat", model="gpt-audio", messages=HELLO, max_tokens=5).prompt_rate == 2_500_000_000


@settings(max_examples=60, deadline=None)
@given(
    system=st.none() | st.text(max_size=200),
    tools=st.integers(min_value=0, max_value=5),
    tier=st.sampled_from([None, "auto", "default", "priority", "flex", "batch", "fast"]),
    max_tokens=st.integers(min_value=0, max_value=5000),
    n=st.integers(min_value=1, max_value=3),
    model=st.sampled_from(["gpt-4o", "gpt-5", "gpt-4.1", "o3"]),
)
def test_no_tier_a_request_may_be_served_at_bills_above_its_estimate(
    system: str | None, tools: int, tier: str | None, max_tokens: int, n: int, model: str
) -> None:
    from spendgate.estimate import tables_for

    messages: list[dict[str, Any]] = [{"role": "user", "content": "What does this cost?"}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "n": n}
    if tools:
        body["tools"] = [
            {"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}}
            for i in range(tools)
        ]
    if tier is not None:
        body["service_tier"] = tier
    e = estimate_request("chat", body, catalog=CATALOG)
    price = CATALOG.price(model)
    served = [name for name, table in price.service_tiers.items() if table in tables_for(price, tier)]
    if price.standard in tables_for(price, tier):
        served.append("standard")
    worst_usage = Usage(input_tokens=e.prompt.tokens, output_tokens=max_tokens * n)
    for name in served:
        assert cost_of(worst_usage, price, service_tier=name).total <= e.amount, name
    # a body with less in it never reserves more
    assert estimate_request("chat", {**body, "messages": messages[-1:]}, catalog=CATALOG).amount <= e.amount


def test_an_uplift_the_request_asks_for_is_reserved() -> None:
    # claude-opus-5: $5/$25 per 1M; inference_geo "us" x1.1, speed "fast" x2
    base = {"messages": HELLO, "max_tokens": 10}
    plain = est("messages", model="claude-opus-5", **base)
    assert (plain.prompt_rate, plain.output_rate) == (5_000_000_000, 25_000_000_000)
    us_fast = est("messages", model="claude-opus-5", inference_geo="us", speed="fast", **base)
    assert (us_fast.prompt_rate, us_fast.output_rate) == (11_000_000_000, 55_000_000_000)


def test_openai_cache_writes_are_reserved_without_cache_control() -> None:
    # gpt-5.6: $4 input, $5 cache write, $10 12-hour write per 1M: OpenAI writes unasked
    e = est("chat", model="gpt-5.6", messages=HELLO, max_tokens=10, service_tier="default")
    assert e.prompt_rate == 10_000_000_000


# -- hosted tools billed per use (issue 10 section 1) --------------------------------------------

SEARCH_FEE = Money(10_000_000)  # gpt-5's and Claude's web search: $10 per 1,000
BASE_CLAUDE = CATALOG.price("claude-sonnet-4-5").to_data()


def _responses(model: str = "gpt-5", **body: Any) -> dict[str, Any]:
    return {"model": model, "input": "hi", "max_output_tokens": 5, **body}


def test_web_search_with_max_tool_calls_reserves_each_allowed_call() -> None:
    search = [{"type": "web_search"}]
    three = estimate_request("responses", _responses(tools=search, max_tool_calls=3), catalog=CATALOG)
    none = estimate_request("responses", _responses(tools=search, max_tool_calls=0), catalog=CATALOG)
    assert three.amount - none.amount == SEARCH_FEE * 3
    assert dict(three.tool_calls) == {"web_search": 3} and not three.body_changes
    # what a request ended without usage is charged includes them, and its parts sum to it
    assert three.bound_cost().total == three.amount
    assert three.bound_cost().usage.web_search_calls == 3


def test_a_request_allowing_any_number_of_tool_calls_gets_the_default_cap_in_the_body() -> None:
    body = _responses(tools=[{"type": "web_search_preview"}])
    e = estimate_request("responses", body, catalog=CATALOG)
    assert dict(e.body_changes) == {"max_tool_calls": DEFAULT_MAX_TOOL_CALLS}
    assert dict(e.tool_calls) == {"web_search": DEFAULT_MAX_TOOL_CALLS}
    capped = estimate_request(
        "responses", {**body, "max_tool_calls": DEFAULT_MAX_TOOL_CALLS}, catalog=CATALOG
    )
    assert e.amount == capped.amount
    with pytest.raises(EstimateError, match="set 'max_tool_calls'"):
        estimate_request("responses", body, catalog=CATALOG, default_max_tool_calls=None)


def test_the_guard_sends_the_tool_cap_it_reserved() -> None:
    from spendgate.guard import Guard

    guard = Guard(catalog=CATALOG, default_max_tool_calls=4)
    _, _, e, sent, _ = guard.prepare("responses", _responses(tools=[{"type": "web_search"}]))
    assert sent["max_tool_calls"] == 4 and e.tool_calls == {"web_search": 4}
    tools = [
        {"type": "web_search_20250305", "name": "web_search"},
        {"type": "web_fetch_20250910", "name": "f"},
    ]
    body = {"model": "claude-sonnet-4-5", "messages": HELLO, "max_tokens": 5, "tools": tools}
    _, _, e, sent, _ = guard.prepare("messages", body)
    # the search gets max_uses; the free fetch needs no cap; the caller's list is left alone
    assert sent["tools"] == [{**tools[0], "max_uses": 4}, tools[1]] and "max_uses" not in tools[0]
    assert e.tool_calls == {"web_search": 4}
    guard.close()


def test_anthropic_max_uses_bounds_each_server_tool() -> None:
    def messages(*tools: dict[str, Any]) -> Any:
        body = {"model": "claude-sonnet-4-5", "messages": HELLO, "max_tokens": 5, "tools": list(tools)}
        return estimate_request("messages", body, catalog=CATALOG)

    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    fetch = {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 50}
    one, two = messages(search), messages(search, {**search, "max_uses": 2})
    assert one.tools_femto == (("web_search", 3 * SEARCH_FEE.nanos * 10**6),)
    assert two.amount - one.amount == SEARCH_FEE * 2
    assert messages(search, fetch).amount == one.amount  # web fetch costs only its tokens
    # code execution is billed by container time: nothing bounds it, so it is refused...
    with pytest.raises(EstimateError, match="code_execution"):
        messages({"type": "code_execution_20250825", "name": "code_execution"})
    # ...unless the price says what to count for it (here: nothing, knowingly)
    catalog = Catalog.builtin()
    catalog.set_price("claude-sonnet-4-5", {**BASE_CLAUDE, "tool_fees": {"code_execution": "0"}})
    body = {"model": "claude-sonnet-4-5", "messages": HELLO, "max_tokens": 5}
    body["tools"] = [{"type": "code_execution_20250825", "name": "code_execution"}]
    assert estimate_request("messages", body, catalog=catalog).tool_calls == {}
    # or a fee per request that offers it, reserved once and, since no answer counts it, charged
    catalog.set_price(
        "claude-sonnet-4-5",
        {**BASE_CLAUDE, "tool_fees": {"code_execution": {"fee": "0.05", "per": "prompt"}}},
    )
    e = estimate_request("messages", body, catalog=catalog)
    assert e.tool_calls == {"code_execution": 1}
    assert cost_of(Usage(), e.price).total == Money(50_000_000) == Money(e.tool_femto // 10**6)


def test_a_tool_fee_the_model_lacks_is_its_providers_highest_never_zero() -> None:
    # gpt-5-codex can search but the catalog has no fee for it: OpenAI's highest, $0.025
    e = estimate_request(
        "responses",
        _responses("gpt-5-codex", tools=[{"type": "web_search"}], max_tool_calls=2),
        catalog=CATALOG,
    )
    assert e.tool_calls == {"web_search": 2} and e.tool_femto == 2 * 25_000_000 * 10**6
    assert cost_of(Usage(input_tokens=1, web_search_calls=2), e.price).total >= Money(50_000_000)
    catalog = Catalog.builtin()
    catalog.set_price("lonely", {"provider": "nobody", "input": "1", "output": "1", "context_window": 1000})
    with pytest.raises(EstimateError, match="knows no web_search fee"):
        estimate_request("responses", _responses("lonely", tools=[{"type": "web_search"}]), catalog=catalog)


def test_a_size_the_fee_table_does_not_price_is_refused() -> None:
    auto = {"type": "code_interpreter", "container": {"type": "auto"}}
    e = estimate_request("responses", _responses(tools=[auto], max_tool_calls=2), catalog=CATALOG)
    assert e.tool_femto == 2 * 30_000_000 * 10**6  # the default 1g container, $0.03 a session
    big = {"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}}
    with pytest.raises(EstimateError, match="not '4g'"):
        estimate_request("responses", _responses(tools=[big], max_tool_calls=2), catalog=CATALOG)


def test_a_search_model_reserves_the_dearest_size_and_settles_at_the_one_asked() -> None:
    # perplexity/sonar's request fee: low $0.005, medium $0.008, high $0.012 on every request
    base = {"model": "perplexity/sonar", "messages": HELLO, "max_tokens": 5}
    for options, settled in (({"search_context_size": "low"}, 5_000_000), (None, 8_000_000)):
        body = {**base, "web_search_options": options} if options else base
        e = estimate_request("chat", body, catalog=CATALOG)
        assert e.tools_femto == (("web_search", 12_000_000 * 10**6),)
        assert e.prompt.method == "context_window"  # its search results are input
        # the settle: one search, at the size asked (medium when none), whatever usage says
        assert cost_of(Usage(), e.price).total == Money(settled)


def test_web_search_options_on_a_model_that_searches_without_bound_is_refused() -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "max_tokens": 5, "web_search_options": {}}
    with pytest.raises(EstimateError, match="not a search model"):
        est("chat", **body)
    # a search model searches once a request: reserved with or without web_search_options
    searching = est("chat", **{**body, "model": "gpt-4o-search-preview"})
    assert searching.tool_calls == {"web_search": 1}
    assert est("chat", model="gpt-4o-search-preview", messages=HELLO, max_tokens=5).tool_calls == {
        "web_search": 1
    }


def test_a_stored_prompt_may_bring_any_hosted_tool() -> None:
    e = estimate_request("responses", _responses(prompt={"id": "pmpt_1"}), catalog=CATALOG)
    assert e.body_changes == {"max_tool_calls": DEFAULT_MAX_TOOL_CALLS}
    # the dearest of gpt-5's tools, a $0.03 container, for each call
    assert e.tools_femto == (("code_interpreter", DEFAULT_MAX_TOOL_CALLS * 30_000_000 * 10**6),)


def test_clamping_leaves_room_for_the_tool_fees() -> None:
    e = estimate_request(
        "responses", _responses(tools=[{"type": "web_search"}], max_tool_calls=3), catalog=CATALOG
    )
    budget = e.amount - Money(1)
    k = e.max_output_affordable(budget)
    assert e.with_max_output(k).amount <= budget < e.with_max_output(k + 1).amount


@settings(max_examples=200, deadline=None)
@given(
    case=st.sampled_from(
        [
            ("responses", "gpt-5"),
            ("responses", "gpt-4o"),
            ("responses", "azure/gpt-4.1"),
            ("messages", "claude-sonnet-4-5"),
            ("messages", "claude-opus-5"),
            ("chat", "gpt-4o-search-preview"),
            ("chat", "perplexity/sonar"),
            ("chat", "gemini-2.5-flash"),
        ]
    ),
    cap=st.none() | st.integers(min_value=0, max_value=6),
    size=st.sampled_from([None, "low", "medium", "high"]),
    geo=st.sampled_from([None, "us"]),
    data=st.data(),
)
def test_actual_cost_with_tools_never_exceeds_the_estimate(
    case: tuple[str, str], cap: int | None, size: str | None, geo: str | None, data: st.DataObject
) -> None:
    """Any tool uses the provider may bill for the request, with any tokens it may bill, cost at
    most the reservation (the cap, where the request sets none, is the one sent)."""
    endpoint, model = case
    body: dict[str, Any] = {"model": model}
    search: dict[str, Any] = {"search_context_size": size} if size else {}
    if endpoint == "responses":
        body.update(input="hi", max_output_tokens=50)
        body["tools"] = [{"type": "web_search", **search}, {"type": "file_search", "vector_store_ids": ["v"]}]
        body["tools"].append({"type": "code_interpreter", "container": {"type": "auto"}})
        if cap is not None:
            body["max_tool_calls"] = cap
    elif endpoint == "messages":
        body.update(messages=HELLO, max_tokens=50)
        body["tools"] = [
            {
                "type": "web_search_20250305",
                "name": "web_search",
                **({"max_uses": cap} if cap is not None else {}),
            },
            {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 3},
        ]
        if geo:
            body["inference_geo"] = geo
    else:
        body.update(messages=HELLO, max_tokens=50, web_search_options=search)
    e = estimate_request(endpoint, body, catalog=CATALOG)  # type: ignore[arg-type]
    allowed = DEFAULT_MAX_TOOL_CALLS if cap is None else cap
    calls: dict[str, int] = {}
    if endpoint == "responses":
        searches = data.draw(st.integers(min_value=0, max_value=allowed))
        files = data.draw(st.integers(min_value=0, max_value=allowed - searches))
        containers = data.draw(st.integers(min_value=0, max_value=allowed - searches - files))
        calls = {"web_search": searches, "file_search": files, "code_interpreter": containers}
    elif endpoint == "messages":
        calls = {
            "web_search": data.draw(st.integers(min_value=0, max_value=allowed)),
            "web_fetch": data.draw(st.integers(min_value=0, max_value=3)),
        }
    else:  # search models bill one search a request, whatever the answer says
        calls = {"web_search": data.draw(st.integers(min_value=0, max_value=3))}
    prompt = data.draw(st.integers(min_value=0, max_value=e.prompt.tokens))
    output = data.draw(st.integers(min_value=0, max_value=50))
    usage = Usage(input_tokens=prompt, output_tokens=output, inference_geo=geo or "").with_tool_calls(calls)
    assert cost_of(usage, e.price).total <= e.amount


def test_the_guard_settles_the_tool_uses_the_answer_reports() -> None:
    from spendgate.guard import Guard
    from spendgate.lifecycle import Happened, Report, read_response

    guard = Guard(catalog=CATALOG, budgets=[{"id": "all", "selector": {}, "limit": "100", "window": "day"}])
    body = _responses(tools=[{"type": "web_search", "search_context_size": "high"}], max_tool_calls=5)
    answer = {
        "object": "response",
        "output": [{"type": "web_search_call", "status": "completed"}] * 2,
        "usage": {"input_tokens": 1000, "output_tokens": 5},
    }
    admission = guard.admit("responses", body)
    read = read_response("responses", answer)
    ended = guard.end(admission, Report(Happened.COMPLETE, usage=read.usage))
    # gpt-5: 1000*1.25 + 5*10 per 1M, and two searches at $0.01
    assert ended.charged == Money(1_250_000 + 50_000 + 20_000_000)
    assert ended.cost is not None and ended.cost.as_dict()["web_search"] == "0.02"
    # an answer never read: the reservation, tool fees included, is what is charged
    lost = guard.admit("responses", body)
    assert guard.end(lost, Report(Happened.LOST)).charged == lost.reserved
    assert lost.estimate.tool_calls == {"web_search": 5}
    guard.close()
