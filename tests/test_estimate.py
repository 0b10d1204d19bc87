from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.cost import cost_of
from spendgate.errors import UnknownModelPriceError
from spendgate.estimate import EstimateError, estimate_request
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


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    e = est("chat", model="gpt-4", messages=HELLO, max_completion_tokens=10, max_tokens=100)
    assert e.max_output_tokens == 10


def test_no_max_tokens_uses_the_models_max_output() -> None:
    e = est("chat", model="gpt-4o", messages=HELLO)
    assert e.max_output_tokens == 16384
    assert e.output_source == "model"
    assert e.amount == Money.from_femto_ceil(e.prompt.tokens * 2_500_000_000 + 16384 * 10_000_000_000)


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
    e = est("chat", model="gpt-5.4", messages=[{"role": "user", "content": big}], max_tokens=10)
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
