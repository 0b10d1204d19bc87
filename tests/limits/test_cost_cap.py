"""The per-request cost cap (issue 11, item 5): ``Guard.admit(max_cost=)``, ``spendgate.max_cost()``,
``spendgate_max_cost=`` on the wrapped SDKs. A worst case above the cap is clamped to fit
(``on_exceed="clamp"``) or refused before the ledger is touched (``raise``, and ``wait``: waiting
cannot make one request cheaper)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

import spendgate
from spendgate.errors import BudgetExceededError, CostCapExceededError, SpendgateError
from spendgate.estimate import Endpoint, Estimate
from spendgate.guard import Guard
from spendgate.integrations import wrap
from spendgate.integrations.openai import guard_of
from spendgate.money import Money
from spendgate.testing import FakeUpstream
from spendgate.usage import Usage

MESSAGES: Any = [{"role": "user", "content": "Write a long essay about budgets."}]
BODY: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES}
CLAUDE: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 4000, "messages": MESSAGES}


def sg(cap: object, **more: Any) -> dict[str, Any]:
    """spendgate's own keywords for a wrapped SDK call (not in the SDKs' signatures)."""
    return {"spendgate_max_cost": cap, **more}


def make_guard(**options: Any) -> Guard:
    options.setdefault("budgets", [{"id": "g", "limit": "100"}])
    return Guard("memory://", limits=[{"id": "rpm", "requests": 100, "per": "1m"}], **options)


def estimate_of(guard: Guard, body: dict[str, Any] = BODY, endpoint: Endpoint = "chat") -> Estimate:
    return guard.prepare(endpoint, body)[2]


def cap_for(
    guard: Guard, output_tokens: int, body: dict[str, Any] = BODY, endpoint: Endpoint = "chat"
) -> Money:
    """The cap whose largest affordable output cap is exactly ``output_tokens``."""
    return estimate_of(guard, body, endpoint).with_max_output(output_tokens).amount


def untouched(guard: Guard) -> bool:
    """Nothing reserved or counted anywhere: the refusal came before the ledger."""
    return guard.ledger.usage("g").reserved == Money(0) and guard.ledger.limit_usage("rpm").used == 0


# -- the guard ------------------------------------------------------------------------------


def test_a_worst_case_above_the_cap_is_refused_before_the_ledger() -> None:
    guard = make_guard()
    worst = estimate_of(guard)
    cap = cap_for(guard, 500)
    with pytest.raises(CostCapExceededError) as info:
        guard.admit("chat", BODY, max_cost=cap)
    err = info.value
    assert isinstance(err, SpendgateError) and not isinstance(err, BudgetExceededError)
    assert (err.max_cost, err.requested, err.fit_output_tokens) == (cap, worst.amount, 500)
    assert str(err) == (
        f"Cost cap exceeded: this request may cost up to {worst.amount.decimal_str()} USD, above its cap "
        f"of {cap.decimal_str()} USD (max_cost); set max_tokens <= 500 to fit"
    )
    assert err.to_dict() == {
        "max_cost_usd": cap.decimal_str(),
        "requested_usd": worst.amount.decimal_str(),
        "max_output_tokens_affordable": 500,
        "fit_field": "max_tokens",
    }
    assert "(x-spendgate-max-cost)" in str(err.named("x-spendgate-max-cost"))
    assert untouched(guard)


def test_a_request_within_its_cap_is_not_changed() -> None:
    guard = make_guard()
    worst = estimate_of(guard)
    admission = guard.admit("chat", BODY, max_cost=worst.amount)  # exactly the cap: fits
    assert admission.clamped_to is None and admission.reserved == worst.amount
    guard.admit("chat", BODY, max_cost=None)


def test_clamp_lowers_the_output_cap_to_fit() -> None:
    guard = make_guard()
    cap = cap_for(guard, 700)
    admission = guard.admit("chat", BODY, max_cost=cap, on_exceed="clamp")
    assert admission.clamped_to == 700
    assert admission.request["max_completion_tokens"] == 700
    assert admission.reserved <= cap
    assert guard.ledger.usage("g").reserved == admission.reserved
    guard.settle(admission, Usage(input_tokens=admission.estimate.prompt.tokens, output_tokens=700))
    # The guard's own on_exceed clamps too; a caller's max_tokens is lowered, in every cap field.
    clamping = make_guard(on_exceed="clamp")
    body = {**BODY, "max_tokens": 9000}
    admission = clamping.admit("chat", body, max_cost=cap_for(clamping, 300, body))
    assert admission.clamped_to == 300 and admission.request["max_tokens"] == 300


def test_clamp_refuses_below_min_output_tokens_and_without_an_output_cap() -> None:
    guard = make_guard(on_exceed="clamp")
    with pytest.raises(CostCapExceededError, match="set max_tokens <= 10 to fit"):
        guard.admit("chat", BODY, max_cost=cap_for(guard, 10))  # under min_output_tokens (16)
    prompt_only = estimate_of(guard).with_max_output(0).amount
    with pytest.raises(CostCapExceededError) as info:
        guard.admit("chat", BODY, max_cost=prompt_only - Money(1))  # the prompt alone is over it
    assert info.value.fit_output_tokens is None and "to fit" not in str(info.value)
    embed = {"model": "text-embedding-3-small", "input": "a long text " * 50}
    with pytest.raises(CostCapExceededError):
        guard.admit("embeddings", embed, max_cost=Money(1))
    assert untouched(guard)


def test_wait_refuses_at_once_and_joins_no_line() -> None:
    guard = make_guard(on_exceed="wait", max_wait=600)
    with pytest.raises(CostCapExceededError):
        guard.admit("chat", BODY, max_cost=cap_for(guard, 500))
    assert guard.waiting() == 0 and untouched(guard)


def test_the_cap_clamps_first_then_a_budget_may_clamp_further() -> None:
    guard = make_guard(on_exceed="clamp", budgets=[{"id": "g", "limit": "100"}])
    worst = estimate_of(guard)
    tight = make_guard(on_exceed="clamp", budgets=[{"id": "g", "limit": cap_for(guard, 200).decimal_str()}])
    admission = tight.admit("chat", BODY, max_cost=cap_for(guard, 900))
    assert admission.clamped_to == 200 and admission.request["max_completion_tokens"] == 200
    assert worst.max_output_tokens > 900


def test_the_context_and_the_call_the_smallest_cap_applies() -> None:
    guard = make_guard()
    small, large = cap_for(guard, 300), cap_for(guard, 3000)
    with spendgate.max_cost(small.decimal_str()) as cap:
        assert cap == small
        with spendgate.max_cost(float(large.decimal_str())) as inner:  # an inner block cannot loosen it
            assert inner == small
            with pytest.raises(CostCapExceededError, match="set max_tokens <= 300 to fit"):
                guard.admit("chat", BODY)
        with pytest.raises(CostCapExceededError, match="set max_tokens <= 300 to fit"):
            guard.admit("chat", BODY, max_cost=large)
    with spendgate.max_cost(large), pytest.raises(CostCapExceededError, match="<= 300 to fit"):
        guard.admit("chat", BODY, max_cost=small)
    assert spendgate.attribution.current_max_cost() is None
    with pytest.raises(ValueError), spendgate.max_cost(-1):
        pass


def test_async_refuses_and_clamps() -> None:
    async def scenario() -> None:
        guard = make_guard()
        cap = cap_for(guard, 400)
        with pytest.raises(CostCapExceededError):
            await guard.admit_async("chat", BODY, max_cost=cap, on_exceed="wait")
        assert untouched(guard)
        admission = await guard.admit_async("chat", BODY, max_cost=cap, on_exceed="clamp")
        assert admission.clamped_to == 400
        with spendgate.max_cost(cap), pytest.raises(CostCapExceededError):  # the context follows the task
            await asyncio.create_task(guard.admit_async("chat", BODY))

    asyncio.run(scenario())


def test_a_refusal_is_logged_as_one_request_line(caplog: pytest.LogCaptureFixture) -> None:
    guard = make_guard()
    with caplog.at_level(logging.INFO, logger="spendgate.requests"), pytest.raises(CostCapExceededError):
        guard.admit("chat", BODY, max_cost=Money.usd("0.01"))
    [line] = [r.spendgate for r in caplog.records if hasattr(r, "spendgate")]
    assert line["reason"] == "cost_cap_exceeded" and line["max_cost_usd"] == "0.01"


# -- the wrapped SDKs, over HTTP against the fake upstream ---------------------------------


@pytest.fixture
def oai(up: FakeUpstream) -> Iterator[openai.OpenAI]:
    client = wrap(
        openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=0),
        budgets=[{"id": "g", "limit": "100"}],
        limits=[{"id": "rpm", "requests": 100, "per": "1m"}],
        min_output_tokens=4,
    )
    yield client
    guard_of(client).close()


def sent(up: FakeUpstream) -> int:
    total: int = up.stats()["requests_total"]
    return total


def test_openai_per_call_cap_refuses_before_sending(up: FakeUpstream, oai: openai.OpenAI) -> None:
    guard = guard_of(oai)
    up.reset()
    with pytest.raises(CostCapExceededError, match="set max_tokens <= 10 to fit"):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, **sg(cap_for(guard, 10)))
    with pytest.raises(CostCapExceededError), spendgate.max_cost("0.0001"):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert sent(up) == 0 and untouched(guard)
    done = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, **sg(100))
    assert done.usage is not None and sent(up) == 1


def test_openai_per_call_cap_clamps_what_is_sent(up: FakeUpstream) -> None:
    client = wrap(
        openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=0),
        budgets=[{"id": "g", "limit": "100"}],
        on_exceed="clamp",
        min_output_tokens=4,
    )
    guard = guard_of(client)
    cap = cap_for(guard, 10)
    # The fake answers min(max_completion_tokens, 16) tokens: 10 says the clamped cap was sent.
    done = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, **sg(cap, spendgate_attributes={"user": "a"})
    )
    assert done.usage is not None and done.usage.completion_tokens == 10
    again = client.with_options(timeout=30)  # a copy stays guarded, and takes the cap too
    done = again.chat.completions.create(model="gpt-4o", messages=MESSAGES, **sg(cap))
    assert done.usage is not None and done.usage.completion_tokens == 10
    usage = guard.ledger.usage("g")
    assert usage.reserved == Money(0) and Money(0) < usage.spent <= cap + cap
    guard.close()


def test_openai_async_and_spendgate_client(up: FakeUpstream) -> None:
    async def scenario() -> None:
        client = wrap(
            openai.AsyncOpenAI(base_url=up.base_url, api_key="x", max_retries=0),
            on_exceed="clamp",
            min_output_tokens=4,
        )
        body = {**BODY, "max_tokens": 5000}
        cap = cap_for(guard_of(client), 12, body)
        with spendgate.max_cost(cap):
            done = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5000)
        assert done.usage is not None and done.usage.completion_tokens == 12  # the clamped cap was sent
        with pytest.raises(CostCapExceededError):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **sg("0.0001"))
        guard_of(client).close()

    asyncio.run(scenario())
    with spendgate.Client(
        api_key="x", base_url=up.base_url, max_retries=0, cost_tracking_budget=10
    ) as client:
        with pytest.raises(CostCapExceededError, match=r"\(max_cost\); set max_tokens <= "):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **sg(0.01))
        assert client.spent == Money(0) and client.remaining == Money.usd(10)


def test_anthropic_per_call_cap(up: FakeUpstream) -> None:
    guard = make_guard(min_output_tokens=4)
    client = spendgate.wrap(
        anthropic.Anthropic(base_url=up.root_url, api_key="x", max_retries=0), guard=guard
    )
    cap = cap_for(guard, 10, CLAUDE, "messages")
    up.reset()
    with pytest.raises(CostCapExceededError, match="set max_tokens <= 10 to fit"):
        client.messages.create(**CLAUDE, **sg(cap))
    assert sent(up) == 0 and untouched(guard)
    guard.on_exceed = "clamp"
    done = client.messages.create(**CLAUDE, **sg(cap, spendgate_attributes={"user": "a"}))
    assert done.usage.output_tokens == 10
    with client.messages.stream(**CLAUDE, **sg(cap)) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 10
    with pytest.raises(ValueError, match="spendgate_max_cost"):
        client.messages.create(**CLAUDE, **sg("lots"))

    async def scenario() -> None:
        aclient = spendgate.wrap(
            anthropic.AsyncAnthropic(base_url=up.root_url, api_key="x", max_retries=0), guard=guard
        )
        guard.on_exceed = "raise"
        with pytest.raises(CostCapExceededError):
            await aclient.messages.create(**CLAUDE, **sg(cap))

    asyncio.run(scenario())
    guard.close()
