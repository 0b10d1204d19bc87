"""The real ``anthropic`` SDK, wrapped, over HTTP against the fake upstream: costs equal the engine's."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from spendgate.attribution import attribute
from spendgate.cost import cost_of
from spendgate.errors import BudgetExceededError
from spendgate.estimate import estimate_request
from spendgate.guard import Guard
from spendgate.integrations.anthropic import guard_of, wrap_anthropic, wrap_async_anthropic
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.testing.process import FakeUpstream
from spendgate.testing.upstream import prompt_tokens_for
from spendgate.usage import Usage

MODEL = "claude-haiku-4-5"
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "What does a budget guard do, in short?"}]
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "system": "Be brief.", "messages": MESSAGES}
PRICE = Catalog.default().price(MODEL)


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream.start() as up:
        yield up


def make_guard(*budgets: dict[str, Any]) -> Guard:
    return Guard(ledger="memory://", budgets=[{"id": "all", "limit": "10"}, *budgets])


def clients(up: FakeUpstream, guard: Guard) -> tuple[anthropic.Anthropic, anthropic.Anthropic]:
    plain = anthropic.Anthropic(base_url=up.root_url, api_key="x", max_retries=0)
    return plain, wrap_anthropic(plain, guard)


def async_client(up: FakeUpstream, guard: Guard) -> anthropic.AsyncAnthropic:
    plain = anthropic.AsyncAnthropic(base_url=up.root_url, api_key="x", max_retries=0)
    return wrap_async_anthropic(plain, guard)


def directives(output: int, cached: int = 0, **more: str) -> dict[str, str]:
    return {"x-fake-output-tokens": str(output), "x-fake-cached-tokens": str(cached), **more}


def expected(output: int, cached: int = 0, body: dict[str, Any] = BODY) -> Money:
    """The fake's usage for ``body``, in Anthropic's shape, priced by the engine."""
    prompt = prompt_tokens_for("messages", body)
    usage = Usage.from_anthropic(
        {
            "input_tokens": prompt - cached,  # Anthropic's input excludes cache reads
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
            "output_tokens": output,
        }
    )
    cost = cost_of(usage, PRICE).total
    # By hand, from the catalog's rates ($1, $0.10 cache read, $5 per 1M): 1000, 100, 5000 nano-USD a token.
    assert cost == Money((prompt - cached) * 1000 + cached * 100 + output * 5000)
    return cost


def partial(guard: Guard, body: dict[str, Any] = BODY) -> Money:
    """A stream ended before its usage: the input message_start reported (the fake's predictable
    count) plus the reserved output bound. Never the text seen: hidden (or summarised) thinking
    is billed beyond it (docs/design.md, the ending table)."""
    estimate = estimate_request("messages", body, catalog=guard.catalog, counter=guard.counter)
    return estimate.with_prompt(prompt_tokens_for("messages", body))


def assert_settled(guard: Guard, cost: Money, *, status: str = "ok", requests: int = 1) -> None:
    usage = guard.ledger.usage("all")
    assert (usage.spent, usage.reserved) == (cost * requests, Money(0))
    records = guard.ledger.query_requests()
    assert len(records) == requests  # every reservation ended exactly once
    assert (records[0].cost, records[0].status) == (cost, status)


def text_of(event: Any) -> str:
    if event.type == "content_block_delta" and event.delta.type == "text_delta":
        return str(event.delta.text)
    return ""


# -- create ---------------------------------------------------------------------------------


def test_create_settles_the_exact_cost_with_cache_reads(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    plain, client = clients(anthropic_upstream, guard)
    message = client.messages.create(**BODY, extra_headers=directives(7, cached=5), timeout=30)
    assert isinstance(message, anthropic.types.Message)
    assert (message.usage.output_tokens, message.usage.cache_read_input_tokens) == (7, 5)
    assert_settled(guard, expected(7, cached=5))
    assert expected(7, cached=5) < expected(7)  # cache reads priced below input
    assert guard_of(client) is guard and guard_of(plain) is None


def test_async_create_settles_the_exact_cost(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()

    async def run() -> anthropic.types.Message:
        client = async_client(anthropic_upstream, guard)
        message: anthropic.types.Message = await client.messages.create(
            **BODY, extra_headers=directives(9, cached=3)
        )
        return message

    message = asyncio.run(run())
    assert isinstance(message, anthropic.types.Message)
    assert_settled(guard, expected(9, cached=3))


def test_the_callers_client_is_untouched_and_copies_stay_guarded(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    plain, client = clients(anthropic_upstream, guard)
    assert isinstance(client, anthropic.Anthropic) and client is not plain
    plain.messages.create(**BODY)
    assert guard.ledger.query_requests() == []
    client.with_options(timeout=20).messages.create(**BODY, extra_headers=directives(4))
    client.copy(max_retries=1).messages.create(**BODY, extra_headers=directives(4))
    assert_settled(guard, expected(4), requests=2)
    assert wrap_anthropic(client, guard) is not client  # the same guard again: a fresh copy
    with pytest.raises(ValueError, match="already guarded"):
        wrap_anthropic(client, make_guard())


def test_extra_body_is_estimated_as_sent(anthropic_upstream: FakeUpstream) -> None:
    """extra_body is part of what is sent: a max_tokens in it bounds the reservation."""
    small = {**BODY, "max_tokens": 5}
    guard = Guard(ledger="memory://", budgets=[{"id": "all", "limit": "0.0002"}])
    assert estimate_request("messages", BODY, catalog=guard.catalog).amount > Money.usd("0.0002")
    _, client = clients(anthropic_upstream, guard)
    message = client.messages.create(**BODY, extra_body={"max_tokens": 5}, extra_headers={"x-a": "b"})
    assert message.usage.output_tokens == 5  # the fake honoured the merged cap
    assert_settled(guard, expected(5, body=small))


def test_with_raw_response_create(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    _, client = clients(anthropic_upstream, guard)
    raw = client.messages.with_raw_response.create(**BODY, extra_headers=directives(6, cached=2))
    assert raw.headers.get("x-request-id")
    assert raw.parse().usage.output_tokens == 6
    raw = client.with_raw_response.messages.create(**BODY, extra_headers=directives(6, cached=2))
    assert isinstance(raw.parse(), anthropic.types.Message)
    assert_settled(guard, expected(6, cached=2), requests=2)


def test_with_raw_response_stream(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    _, client = clients(anthropic_upstream, guard)
    raw = client.messages.with_raw_response.create(**BODY, stream=True, extra_headers=directives(6))
    assert guard.ledger.usage("all").reserved > Money(0)  # held until the stream ends
    assert [e.type for e in raw.parse()][-1] == "message_stop"
    with client.messages.with_streaming_response.create(**BODY, extra_headers=directives(6)) as response:
        assert response.parse().usage.output_tokens == 6
    assert_settled(guard, expected(6), requests=2)


# -- streams --------------------------------------------------------------------------------


def test_create_stream_costs_the_same_as_create(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    _, client = clients(anthropic_upstream, guard)
    stream = client.messages.create(**BODY, stream=True, extra_headers=directives(11, cached=4))
    assert isinstance(stream, anthropic.Stream)
    events = list(stream)
    assert [events[0].type, events[-1].type] == ["message_start", "message_stop"]
    assert "".join(text_of(e) for e in events) == "tok " * 11
    assert_settled(guard, expected(11, cached=4))


def test_a_raw_streamed_response_costs_the_same_as_create(anthropic_upstream: FakeUpstream) -> None:
    """with_streaming_response + stream=True, read raw (iter_lines) or parsed: its SSE is read
    as its bytes pass, so it settles on the stream's usage, once."""
    guard = make_guard()
    _, client = clients(anthropic_upstream, guard)
    with client.messages.with_streaming_response.create(
        **BODY, stream=True, extra_headers=directives(7, cached=2)
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert "event: message_stop" in lines
    assert_settled(guard, expected(7, cached=2))
    with client.messages.with_streaming_response.create(
        **BODY, stream=True, extra_headers=directives(7, cached=2)
    ) as response:
        events = list(response.parse())
    assert events[-1].type == "message_stop"
    assert_settled(guard, expected(7, cached=2), requests=2)


def test_an_async_raw_streamed_response_costs_the_same_as_create(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()

    async def run() -> list[str]:
        client = async_client(anthropic_upstream, guard)
        async with client.messages.with_streaming_response.create(
            **BODY, stream=True, extra_headers=directives(5)
        ) as response:
            lines = [line async for line in response.iter_lines() if line]
        await client.close()
        return lines

    assert "event: message_stop" in asyncio.run(run())
    assert_settled(guard, expected(5))


def test_messages_stream_helper_costs_the_same_as_create(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    _, client = clients(anthropic_upstream, guard)
    with client.messages.stream(**BODY, extra_headers=directives(8, cached=3)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok " * 8
    assert (final.usage.output_tokens, final.usage.cache_read_input_tokens) == (8, 3)
    assert_settled(guard, expected(8, cached=3))


def test_async_streams_cost_the_same_as_create(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()

    async def run() -> str:
        client = async_client(anthropic_upstream, guard)
        stream = await client.messages.create(**BODY, stream=True, extra_headers=directives(5, cached=2))
        assert isinstance(stream, anthropic.AsyncStream)
        text = "".join([text_of(e) async for e in stream])
        async with client.messages.stream(**BODY, extra_headers=directives(5, cached=2)) as helper:
            text += "".join([t async for t in helper.text_stream])
            assert (await helper.get_final_message()).usage.output_tokens == 5
        return text

    assert asyncio.run(run()) == "tok " * 10
    assert_settled(guard, expected(5, cached=2), requests=2)


def test_a_stream_closed_early_settles_what_was_seen_once(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    _, client = clients(anthropic_upstream, guard)
    stream = client.messages.create(**BODY, stream=True, extra_headers=directives(50))
    seen = ""
    for event in stream:
        seen += text_of(event)
        if seen.count("tok") == 3:
            break
    stream.close()
    stream.close()  # a second close changes nothing
    assert_settled(guard, partial(guard), status="closed")
    assert partial(guard) < estimate_request("messages", BODY, catalog=guard.catalog).amount


def test_messages_stream_left_early_and_a_dropped_stream_settle(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    _, client = clients(anthropic_upstream, guard)
    with client.messages.stream(**BODY, extra_headers=directives(50)) as helper:
        for _text in helper.text_stream:
            break
    assert_settled(guard, partial(guard), status="closed")

    stream = client.messages.create(**BODY, stream=True, extra_headers=directives(50))
    for _ in stream:
        break  # never closed: dropping it ends the reservation
    del stream
    gc.collect()
    usage = guard.ledger.usage("all")
    assert usage.reserved == Money(0)
    assert [r.status for r in guard.ledger.query_requests()] == ["closed", "closed"]


def test_an_async_stream_closed_early_settles(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()

    async def run() -> str:
        client = async_client(anthropic_upstream, guard)
        stream = await client.messages.create(**BODY, stream=True, extra_headers=directives(50))
        seen = ""
        async for event in stream:
            seen += text_of(event)
            if seen:
                break
        await stream.close()
        return seen

    asyncio.run(run())
    assert_settled(guard, partial(guard), status="closed")


def test_a_cut_stream_settles_partially_and_the_error_passes_through(
    anthropic_upstream: FakeUpstream,
) -> None:
    guard = make_guard()
    plain, client = clients(anthropic_upstream, guard)
    cut = {**directives(20), "x-fake-stream-cut-after": "3"}
    with pytest.raises(Exception) as bare:
        list(plain.messages.create(**BODY, stream=True, extra_headers=cut))
    seen = ""
    with pytest.raises(type(bare.value)) as guarded:
        for event in client.messages.create(**BODY, stream=True, extra_headers=cut):
            seen += text_of(event)
    assert type(guarded.value) is type(bare.value)  # whatever the SDK raises, unchanged
    assert seen == "tok " * 3
    assert_settled(guard, partial(guard), status="cut")

    with pytest.raises(type(bare.value)), client.messages.stream(**BODY, extra_headers=cut) as helper:
        helper.get_final_message()
    assert guard.ledger.usage("all").reserved == Money(0)
    assert [r.status for r in guard.ledger.query_requests()] == ["cut", "cut"]


# -- errors and budgets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"), [("500", anthropic.InternalServerError), ("429", anthropic.RateLimitError)]
)
def test_provider_errors_pass_through_and_release(
    anthropic_upstream: FakeUpstream, status: str, error: type[anthropic.APIStatusError]
) -> None:
    guard = make_guard()
    _, client = clients(anthropic_upstream, guard)
    headers = {"x-fake-error": status}
    with pytest.raises(error) as raised:
        client.messages.create(**BODY, extra_headers=headers)
    assert type(raised.value) is error
    with pytest.raises(error):
        client.messages.create(**BODY, stream=True, extra_headers=headers)
    with pytest.raises(error), client.messages.stream(**BODY, extra_headers=headers):
        pass

    async def run() -> None:
        with pytest.raises(error):
            await async_client(anthropic_upstream, guard).messages.create(**BODY, extra_headers=headers)

    asyncio.run(run())
    usage = guard.ledger.usage("all")
    assert (usage.spent, usage.reserved) == (Money(0), Money(0))
    assert guard.ledger.query_requests() == []


def test_sdk_retries_hold_one_reservation_and_release_it(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    client = wrap_anthropic(anthropic.Anthropic(base_url=anthropic_upstream.root_url, api_key="x"), guard)
    anthropic_upstream.reset()
    with pytest.raises(anthropic.InternalServerError):
        client.with_options(max_retries=2).messages.create(**BODY, extra_headers={"x-fake-error": "500"})
    assert anthropic_upstream.stats()["requests"] == {"/v1/messages": 3}
    assert guard.ledger.usage("all").reserved == Money(0)
    assert guard.ledger.query_requests() == []


def test_a_budget_for_exactly_k_requests_refuses_the_next_before_sending(
    anthropic_upstream: FakeUpstream,
) -> None:
    k, cap = 3, 40
    body = {**BODY, "max_tokens": cap}
    worst = estimate_request("messages", body, catalog=Catalog.default()).amount
    actual = expected(cap, body=body)
    limit = actual * (k - 1) + worst  # after k-1 settled calls, exactly one more worst case fits
    guard = Guard(ledger="memory://", budgets=[{"id": "all", "limit": str(limit.to_decimal())}])
    _, client = clients(anthropic_upstream, guard)
    anthropic_upstream.reset()
    for _ in range(k):
        client.messages.create(**body, extra_headers=directives(cap))
    with pytest.raises(BudgetExceededError, match='budget "global'):
        client.messages.create(**body, extra_headers=directives(cap))
    with pytest.raises(BudgetExceededError), client.messages.stream(**body):
        pass
    assert anthropic_upstream.stats()["requests"] == {"/v1/messages": k}
    usage = guard.ledger.usage("all")
    assert (usage.spent, usage.reserved) == (actual * k, Money(0))


def test_attribution_reaches_team_and_user_budgets(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard(
        {"id": "team-x", "selector": {"team": "x"}, "limit": "1"},
        {"id": "per-user", "selector": {"user": "*"}, "limit": "1"},
    )
    sent: list[Any] = []
    http = anthropic.DefaultHttpxClient(event_hooks={"request": [sent.append]})
    plain = anthropic.Anthropic(base_url=anthropic_upstream.root_url, api_key="x", http_client=http)
    client = wrap_anthropic(plain, guard)
    cost = expected(3)
    with attribute(team="x"):
        client.messages.create(**BODY, extra_headers=directives(3))
    assert guard.ledger.usage("team-x").spent == cost
    # The wrapped client is typed as the SDK's, which does not declare the spendgate keyword.
    team_x: dict[str, Any] = {"spendgate_attributes": {"team": "x"}}
    client.messages.create(**BODY, extra_headers=directives(3), **team_x)
    with client.messages.stream(**BODY, extra_headers=directives(3), **team_x) as s:
        s.until_done()
    client.messages.create(**BODY, extra_headers=directives(3))  # no team: not this budget's
    assert guard.ledger.usage("team-x").spent == cost * 3
    assert sent and not [r for r in sent if any(name.startswith("x-spendgate") for name in r.headers)]

    client.messages.create(**BODY, metadata={"user_id": "u1"}, extra_headers=directives(3))
    with attribute(user="ctx"):  # a context user wins over metadata
        client.messages.create(**BODY, metadata={"user_id": "u1"}, extra_headers=directives(3))
    assert guard.ledger.usage("per-user", {"user": "u1"}).spent == cost
    assert guard.ledger.usage("per-user", {"user": "ctx"}).spent == cost
    assert guard.ledger.usage("all").spent == cost * 6


def test_a_stream_dropped_before_it_is_read_ends(anthropic_upstream: FakeUpstream) -> None:
    guard = make_guard()
    _, client = clients(anthropic_upstream, guard)
    stream = client.messages.create(**BODY, stream=True, extra_headers=directives(5))
    del stream  # never read, never closed: its finalizer ends the reservation
    gc.collect()
    assert guard.ledger.usage("all").reserved == Money(0)
    assert [r.status for r in guard.ledger.query_requests()] == ["closed"]
