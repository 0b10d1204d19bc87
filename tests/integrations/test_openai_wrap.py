"""spendgate.wrap() around the real openai SDK, over HTTP, against the fake upstream process."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import spendgate
from spendgate.attribution import attribute
from spendgate.estimate import Endpoint, estimate_request
from spendgate.guard import Guard
from spendgate.integrations import wrap
from spendgate.integrations.openai import AsyncGuardedStream, GuardedStream, guard_of
from spendgate.money import Money
from spendgate.testing import FakeUpstream

from .conftest import billed, requests_total

MODEL = "gpt-4o"
MESSAGES: Any = [  # Any: the SDK's TypedDict params are not the point here
    {"role": "system", "content": "You are terse and exact."},
    {"role": "user", "content": "What does a token cost? Answer in one sentence, please."},
]
BODY: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
OUT = {"x-fake-output-tokens": "40"}


@pytest.fixture
def oai(up: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=0)


@pytest.fixture
def aoai(up: FakeUpstream) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=up.base_url, api_key="x", max_retries=0)


@pytest.fixture
def client(oai: openai.OpenAI) -> Iterator[openai.OpenAI]:
    wrapped = wrap(oai, budgets=[{"id": "g", "limit": "50"}])
    yield wrapped
    guard_of(wrapped).close()


def spent(client: openai.OpenAI | openai.AsyncOpenAI, budget: str = "g") -> Money:
    return guard_of(client).ledger.usage(budget).spent


def reserved(client: openai.OpenAI | openai.AsyncOpenAI, budget: str = "g") -> Money:
    return guard_of(client).ledger.usage(budget).reserved


def reservation(guard: Guard, endpoint: Endpoint, body: dict[str, Any]) -> Money:
    """What a call ended without usage is charged: its reserved worst case. Never the text seen:
    hidden reasoning and the served tier are unknown (docs/design.md, the ending table)."""
    return estimate_request(endpoint, body, catalog=guard.catalog, counter=guard.counter).amount


# -- the wrapped client ---------------------------------------------------------------


def test_wrap_keeps_the_type_and_leaves_the_original_alone(oai: openai.OpenAI) -> None:
    wrapped = wrap(oai)
    assert isinstance(wrapped, openai.OpenAI)
    assert wrapped is not oai
    assert "create" not in vars(oai.chat.completions)  # the caller's client is not patched
    assert wrapped.base_url == oai.base_url
    assert wrapped.models.list().data  # unguarded resources fall through unchanged


def test_wrap_refuses_unknown_clients_and_mixed_options() -> None:
    with pytest.raises(TypeError, match=r"supported clients: openai\.OpenAI"):
        wrap(object())
    guard = Guard()
    with pytest.raises(TypeError, match="not both"):
        wrap(openai.OpenAI(api_key="x"), guard=guard, budgets=[{"limit": "1"}])


def test_spendgate_does_not_import_the_sdks() -> None:
    import subprocess
    import sys

    code = (
        "import sys, spendgate, spendgate.integrations, spendgate.client; "
        "print('openai' in sys.modules, 'anthropic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- costs ----------------------------------------------------------------------------


def test_chat_settles_the_exact_cost(client: openai.OpenAI) -> None:
    r1 = client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers=OUT)
    r2 = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        extra_headers={"x-fake-output-tokens": "7", "x-fake-cached-tokens": "9"},
    )
    assert r1.usage is not None and r1.usage.completion_tokens == 40
    assert r2.usage is not None and r2.usage.prompt_tokens_details is not None
    assert r2.usage.prompt_tokens_details.cached_tokens == 9
    assert spent(client) == billed("chat", BODY, 40) + billed("chat", BODY, 7, cached=9)
    assert reserved(client) == Money(0)


def test_async_chat_settles_the_exact_cost(aoai: openai.AsyncOpenAI) -> None:
    client = wrap(aoai, budgets=[{"id": "g", "limit": "50"}])
    assert isinstance(client, openai.AsyncOpenAI)

    async def main() -> None:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers=OUT)
        await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=MODEL,
                    messages=MESSAGES,
                    extra_headers={"x-fake-output-tokens": "3", "x-fake-cached-tokens": "5"},
                )
                for _ in range(3)
            )
        )
        await client.close()

    asyncio.run(main())
    assert spent(client) == billed("chat", BODY, 40) + billed("chat", BODY, 3, cached=5) * 3
    assert reserved(client) == Money(0)


def test_the_guard_sets_max_tokens_and_extra_body_counts(client: openai.OpenAI) -> None:
    # No max tokens: the guard reserves the model's max output and tells the provider.
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert b'"max_completion_tokens":16384' in raw.http_request.content
    # A cap in extra_body is what the provider sees: the reservation uses it too.
    guard = guard_of(client)
    small = estimate_request("chat", {**BODY, "max_tokens": 5}, catalog=guard.catalog, counter=guard.counter)
    tight = wrap(openai.OpenAI(base_url=client.base_url, api_key="x"), budgets=[{"limit": str(small.amount)}])
    with pytest.raises(spendgate.BudgetExceededError):
        tight.chat.completions.create(model=MODEL, messages=MESSAGES)
    raw = tight.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, extra_body={"max_tokens": 5}
    )
    assert raw.parse().usage is not None
    assert b"max_completion_tokens" not in raw.http_request.content


def test_with_options_copies_stay_guarded(client: openai.OpenAI) -> None:
    copy = client.with_options(timeout=30, max_retries=1)
    assert isinstance(copy, openai.OpenAI)
    copy.chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers=OUT)
    assert spent(client) == billed("chat", BODY, 40)
    assert guard_of(copy) is guard_of(client)


def test_messages_as_a_generator_and_default_sentinels(client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=MODEL, messages=(m for m in MESSAGES), temperature=openai.omit, extra_headers=OUT
    )
    assert spent(client) == billed("chat", BODY, 40)


# -- streams --------------------------------------------------------------------------


def test_stream_hides_the_usage_chunk_it_asked_for(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT)
    assert isinstance(stream, openai.Stream) and isinstance(stream, GuardedStream)
    assert stream.admission.added_stream_usage
    chunks = list(stream)
    assert chunks and all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok " * 40
    assert spent(client) == billed("chat", BODY, 40)  # invariant 4: as if not streamed
    assert reserved(client) == Money(0)


def test_stream_shows_the_usage_chunk_the_caller_asked_for(client: openai.OpenAI) -> None:
    with client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-output-tokens": "12", "x-fake-cached-tokens": "4"},
    ) as stream:
        chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 12
    assert spent(client) == billed("chat", BODY, 12, cached=4)


def test_stream_closed_early_charges_the_reservation(client: openai.OpenAI) -> None:
    seen = ""
    with client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_headers={"x-fake-output-tokens": "200"}
    ) as stream:
        for chunk in stream:
            seen += chunk.choices[0].delta.content or ""
            if seen.count("tok") == 5:
                break
    assert reserved(client) == Money(0)
    assert spent(client) == reservation(guard_of(client), "chat", BODY)
    assert spent(client) > billed("chat", BODY, 200)  # an upper bound of any bill


def test_stream_dropped_or_never_read_leaves_no_reservation(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    next(iter(stream))
    del stream
    gc.collect()
    assert reserved(client) == Money(0)
    unread = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    unread.close()
    assert reserved(client) == Money(0)
    assert spent(client) == reservation(guard_of(client), "chat", BODY) * 2


def test_cut_stream_raises_the_sdk_error_and_charges_the_reservation(client: openai.OpenAI) -> None:
    seen = ""
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_headers={"x-fake-stream-cut-after": "3", **OUT}
    )
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            seen += chunk.choices[0].delta.content or ""
    assert seen == "tok " * 3
    assert reserved(client) == Money(0)
    assert spent(client) == reservation(guard_of(client), "chat", BODY)


def test_async_stream_hides_usage_and_closes_early(aoai: openai.AsyncOpenAI) -> None:
    client = wrap(aoai, budgets=[{"id": "g", "limit": "50"}])

    async def main() -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT
        )
        assert isinstance(stream, openai.AsyncStream) and isinstance(stream, AsyncGuardedStream)
        chunks = [c async for c in stream]
        assert all(c.choices and c.usage is None for c in chunks)
        seen = ""
        async with await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT
        ) as early:
            async for chunk in early:
                seen += chunk.choices[0].delta.content or ""
                if "tok" in seen:
                    break
        await client.close()
        return seen

    asyncio.run(main())
    assert reserved(client) == Money(0)
    expected = billed("chat", BODY, 40) + reservation(guard_of(client), "chat", BODY)
    assert spent(client) == expected


def test_stream_helper_is_guarded(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=MESSAGES, max_completion_tokens=9, stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
    assert spent(client) == billed("chat", BODY, 9)


# -- other endpoints ------------------------------------------------------------------


# The fake bills an embedding input at ceil(bytes / 4) tokens; the estimate counts it exactly
# (tiktoken's cl100k_base), which is what OpenAI bills and can be less: the fake's own rule,
# not a provider's, bills above the reservation here.
@pytest.mark.overshoot
def test_embeddings_and_completions(client: openai.OpenAI) -> None:
    inputs = ["first text to embed", "second, longer text to embed here"]
    client.embeddings.create(model="text-embedding-3-small", input=inputs)
    emb = billed("embeddings", {"model": "text-embedding-3-small", "input": inputs}, 0)
    assert spent(client) == emb
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test, in ten words or fewer."}
    client.completions.create(model=body["model"], prompt=body["prompt"], max_tokens=20, extra_headers=OUT)
    assert spent(client) == emb + billed("completions", body, 40)
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=body["model"], prompt=body["prompt"], stream=True, extra_headers=OUT
        )
        if c.choices
    )
    assert text == "tok " * 40
    assert spent(client) == emb + billed("completions", body, 40) * 2


def test_responses_plain_and_streamed_cost_the_same(client: openai.OpenAI) -> None:
    body = {"model": MODEL, "instructions": "Be brief.", "input": "Name three prime numbers."}
    headers = {"x-fake-output-tokens": "25", "x-fake-cached-tokens": "3"}
    resp = client.responses.create(
        model=MODEL, instructions="Be brief.", input=body["input"], extra_headers=headers
    )
    assert resp.usage is not None
    one = billed("responses", body, 25, cached=3)
    assert spent(client) == one
    events = list(
        client.responses.create(
            model=MODEL, instructions="Be brief.", input=body["input"], stream=True, extra_headers=headers
        )
    )
    assert events[-1].type == "response.completed"
    assert spent(client) == one * 2
    assert reserved(client) == Money(0)


# The fake bills an embedding input at ceil(bytes / 4) tokens; the estimate counts it exactly
# (tiktoken's cl100k_base), which is what OpenAI bills and can be less: the fake's own rule,
# not a provider's, bills above the reservation here.
@pytest.mark.overshoot
def test_with_raw_response_returns_the_raw_response(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, extra_headers=OUT)
    assert raw.headers.get("x-request-id", "").startswith("req_")
    assert raw.parse().choices[0].message.content == "tok " * 40
    raw2 = client.with_raw_response.embeddings.create(model="text-embedding-3-small", input="hello")
    assert raw2.parse().data
    raw3 = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT
    )
    chunks = list(raw3.parse())
    assert all(c.usage is None for c in chunks)
    emb = billed("embeddings", {"model": "text-embedding-3-small", "input": "hello"}, 0)
    assert spent(client) == billed("chat", BODY, 40) * 2 + emb
    assert reserved(client) == Money(0)


def test_with_streaming_response_is_guarded(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, extra_headers=OUT
    ) as response:
        assert response.parse().usage is not None
    assert spent(client) == billed("chat", BODY, 40)


def test_a_raw_streamed_response_read_line_by_line_is_charged_its_usage(client: openai.OpenAI) -> None:
    """with_streaming_response + stream=True read raw (iter_lines): the SSE is read as its bytes
    pass, so the usage the guard asked for is charged (not the worst case) and hidden."""
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and sum('"content":"tok "' in line for line in lines) == 40
    assert all('"usage":{' not in line for line in lines)  # the usage chunk it asked for: hidden
    assert spent(client) == billed("chat", BODY, 40) and reserved(client) == Money(0)
    assert [r.status for r in guard_of(client).ledger.query_requests()] == ["ok"]  # read to its end


def test_a_raw_streamed_response_parsed_is_charged_once(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, extra_headers=OUT
    ) as response:
        chunks = list(response.parse())
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 40  # asked: shown
    assert spent(client) == billed("chat", BODY, 40) and reserved(client) == Money(0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT
    )
    assert all(c.usage is None for c in raw.parse())
    assert spent(client) == billed("chat", BODY, 40) * 2


def test_a_raw_streamed_response_left_unread_or_early_ends_its_reservation(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT
    ):
        pass  # never read
    assert reserved(client) == Money(0)
    worst = reservation(guard_of(client), "chat", BODY)
    assert spent(client) == worst
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT
    ) as response:
        for line in response.iter_lines():
            if "tok" in line:
                break  # closed early: the usage never came
    assert reserved(client) == Money(0) and spent(client) == worst * 2
    assert [r.status for r in guard_of(client).ledger.query_requests()] == ["closed", "closed"]


def test_a_raw_streamed_response_dropped_unread_ends_its_reservation(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, stream=True)
    assert reserved(client) > Money(0)
    del raw
    gc.collect()
    assert reserved(client) == Money(0)
    assert spent(client) == reservation(guard_of(client), "chat", BODY)


def test_an_async_raw_streamed_response_is_charged_its_usage(aoai: openai.AsyncOpenAI) -> None:
    client = wrap(aoai, budgets=[{"id": "g", "limit": "50"}])

    async def main() -> list[str]:
        async with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT
        ) as response:
            lines = [line async for line in response.iter_lines() if line]
        async with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=OUT
        ) as parsed:
            assert [c async for c in await parsed.parse()]
        await client.close()
        return lines

    lines = asyncio.run(main())
    assert lines[-1] == "data: [DONE]" and all('"usage":{' not in line for line in lines)
    assert spent(client) == billed("chat", BODY, 40) * 2 and reserved(client) == Money(0)


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"), [(500, openai.InternalServerError), (429, openai.RateLimitError)]
)
def test_provider_errors_pass_through_and_release(
    client: openai.OpenAI, up: FakeUpstream, status: int, error: type[Exception]
) -> None:
    before = requests_total(up)
    with pytest.raises(error) as info:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_headers={"x-fake-error": str(status)}
        )
    assert type(info.value) is error
    assert requests_total(up) == before + 1
    assert spent(client) == Money(0) and reserved(client) == Money(0)


def test_sdk_retries_end_in_one_release(up: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    client = wrap(
        openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=2), budgets=[{"id": "g", "limit": "50"}]
    )
    before = requests_total(up)
    with caplog.at_level("INFO", logger="spendgate.requests"), pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers={"x-fake-error": "503"})
    assert requests_total(up) == before + 3  # the SDK retried twice inside the one guarded call
    releases = [r for r in caplog.records if "released" in r.getMessage()]
    assert len(releases) == 1
    assert spent(client) == Money(0) and reserved(client) == Money(0)


# -- budgets --------------------------------------------------------------------------


def test_budget_admits_exactly_k_requests_then_refuses_before_sending(
    up: FakeUpstream, oai: openai.OpenAI
) -> None:
    guard = Guard()
    worst = estimate_request("chat", BODY, catalog=guard.catalog, counter=guard.counter).amount
    actual = billed("chat", BODY, 16)  # the fake's default output, under the guard's cap
    k = 4
    limit = actual * (k - 1) + worst  # after k-1 settled calls, exactly one worst case is left
    client = wrap(oai, budgets=[{"id": "g", "limit": str(limit.to_decimal())}])
    for _ in range(k):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    before = requests_total(up)
    with pytest.raises(spendgate.BudgetExceededError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert requests_total(up) == before  # refused before any HTTP request
    message = str(info.value)
    assert message.startswith("Cost tracking budget exceeded: current usage ")
    assert "% of limit " in message and '(budget "global, total"); this request needs up to ' in message
    assert info.value.requested == worst and info.value.spent == actual * k
    assert spent(client) == actual * k and reserved(client) == Money(0)


def test_async_budget_refusal(aoai: openai.AsyncOpenAI) -> None:
    client = wrap(aoai, budgets=[{"id": "g", "limit": "0.01"}])

    async def main() -> None:
        with pytest.raises(spendgate.BudgetExceededError):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100)
        await client.close()

    asyncio.run(main())
    assert spent(client) == billed("chat", BODY, 16)


def test_attribution_by_context_kwarg_and_user(oai: openai.OpenAI) -> None:
    client = wrap(oai, budgets=[{"id": "per-user", "selector": {"user": "*"}, "limit": "5"}])
    ledger = guard_of(client).ledger
    with attribute(user="alice"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers=OUT)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, user="bob", extra_headers=OUT)
    client.chat.completions.create(  # type: ignore[call-overload]  # spendgate's own keyword
        model=MODEL, messages=MESSAGES, spendgate_attributes={"user": "carol"}, extra_headers=OUT
    )
    one = billed("chat", {**BODY, "user": "x"}, 40)
    for name in ("alice", "bob", "carol"):
        assert ledger.usage("per-user", {"user": name}).spent == one
    records = ledger.query_requests(user="bob")
    assert len(records) == 1 and records[0].cost == one


def test_unknown_model_is_refused_before_sending(client: openai.OpenAI, up: FakeUpstream) -> None:
    before = requests_total(up)
    with pytest.raises(spendgate.UnknownModelPriceError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert requests_total(up) == before


def test_parse_and_its_client_side_errors_are_charged(client: openai.OpenAI) -> None:
    import pydantic

    class Answer(pydantic.BaseModel):
        text: str

    # The fake stops at the length limit: the SDK raises after a whole, billed response.
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Answer, max_tokens=5)
    assert spent(client) == billed("chat", BODY, 5)
    parsed = client.responses.parse(model=MODEL, input="Name a prime.", extra_headers=OUT)
    assert parsed.usage is not None
    one = billed("responses", {"model": MODEL, "input": "Name a prime."}, 40)
    assert spent(client) == billed("chat", BODY, 5) + one
    with client.responses.stream(model=MODEL, input="Name a prime.", extra_headers=OUT) as stream:
        for _ in stream:
            pass
    assert spent(client) == billed("chat", BODY, 5) + one * 2
    assert reserved(client) == Money(0)


def test_a_response_without_usage_charges_the_reservation(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from spendgate.integrations.openai import _finish

    guard = Guard(budgets=[{"id": "g", "limit": "5"}])
    admission = guard.admit("chat", BODY)
    message = SimpleNamespace(content="tok tok tok", refusal=None, tool_calls=None)
    response = SimpleNamespace(usage=None, choices=[SimpleNamespace(message=message)])
    with caplog.at_level("WARNING", logger="spendgate.requests"):
        assert _finish(guard, admission, response) is response
    assert "carries no usage" in caplog.text
    assert admission.ended == "settled"
    assert guard.ledger.usage("g").spent == reservation(guard, "chat", BODY)
