"""The fake upstream as a real process, with the real openai and anthropic SDKs as clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from spendgate.testing import TOKEN_TEXT, FakeUpstream, output_tokens_for, prompt_tokens_for

CLAUDE = "claude-haiku-4-5"
MESSAGES: Any = [  # Any: the SDKs' TypedDict params are not the point here
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "héllo, how much does this cost?"},
]


@pytest.fixture
def oai(up: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=0)


@pytest.fixture
def claude(up: FakeUpstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=up.root_url, api_key="x", max_retries=0)


def _post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_prompt_tokens_rules() -> None:
    # "héllo" is 6 UTF-8 bytes: ceil(6/4) = 2, plus 3 per message.
    assert prompt_tokens_for("chat/completions", {"messages": [{"role": "user", "content": "héllo"}]}) == 5
    parts = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert prompt_tokens_for("/v1/chat/completions", {"messages": [{"role": "user", "content": parts}]}) == 4
    assert (
        prompt_tokens_for("messages", {"system": "abcdefgh", "messages": [{"role": "user", "content": "a"}]})
        == 9
    )
    assert prompt_tokens_for("completions", {"prompt": ["abcde", "x"]}) == 3
    assert prompt_tokens_for("embeddings", {"input": [[1, 2, 3], [4]]}) == 4
    assert prompt_tokens_for("responses", {"instructions": "abcd", "input": "abcd"}) == 8
    assert output_tokens_for("chat/completions", {"max_completion_tokens": 5}) == 5
    assert output_tokens_for("chat/completions", {"max_tokens": 500}) == 16
    assert output_tokens_for("embeddings", {}) == 0


def test_chat_usage_is_predicted(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.usage is not None
    assert r.usage.prompt_tokens == prompt_tokens_for("chat/completions", {"messages": MESSAGES})
    assert r.usage.completion_tokens == 16
    assert r.choices[0].message.content == TOKEN_TEXT * 16

    r = oai.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_completion_tokens=5,
        extra_headers={"x-fake-cached-tokens": "4", "x-fake-reasoning-tokens": "2"},
    )
    assert r.usage is not None and r.usage.prompt_tokens_details and r.usage.completion_tokens_details
    assert r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens_details.cached_tokens == 4
    assert r.usage.completion_tokens_details.reasoning_tokens == 2
    assert r.choices[0].message.content == TOKEN_TEXT * 3

    r = oai.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_tokens=5,
        extra_headers={"x-fake-output-tokens": "40"},  # a provider billing past max_tokens
    )
    assert r.usage is not None and r.usage.completion_tokens == 40


def test_chat_stream_usage_chunk_only_when_asked(oai: openai.OpenAI) -> None:
    plain = list(oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, max_tokens=4))
    assert len(plain) == 1 + 4 + 1  # role, one per token, finish
    assert all(c.usage is None for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == TOKEN_TEXT * 4

    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            max_tokens=4,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) == 1 + 4 + 1 + 1
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == prompt_tokens_for("chat/completions", {"messages": MESSAGES})


def test_cut_stream_bills_only_sent_tokens(up: FakeUpstream, oai: openai.OpenAI) -> None:
    up.reset()
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        stream = oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fake-stream-cut-after": "3"},
        )
        for chunk in stream:
            assert chunk.usage is None
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == TOKEN_TEXT * 3
    stats = up.stats()
    assert stats["streams_cut"] == 1
    assert stats["models"]["gpt-4o-mini"]["output_tokens"] == 3
    assert stats["models"]["gpt-4o-mini"]["prompt_tokens"] == prompt_tokens_for(
        "chat/completions", {"messages": MESSAGES}
    )


def test_paced_stream_and_paced_cut(
    up: FakeUpstream, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    up.reset()
    start = time.monotonic()
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            max_tokens=5,
            extra_headers={"x-fake-chunk-delay-ms": "10"},
        )
    )
    assert time.monotonic() - start >= 0.06  # 7 events, 6 gaps of 10 ms
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TOKEN_TEXT * 5
    headers = {"x-fake-chunk-delay-ms": "5", "x-fake-stream-cut-after": "2"}
    received: list[str] = []
    # The anthropic SDK lets the HTTP client's protocol error through unwrapped.
    with (
        pytest.raises(Exception),  # noqa: B017
        claude.messages.stream(
            model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_headers=headers
        ) as stream,
    ):
        received.extend(stream.text_stream)
    assert "".join(received) == TOKEN_TEXT * 2
    stats = up.stats()
    assert stats["streams_cut"] == 1
    assert stats["models"][CLAUDE]["output_tokens"] == 2
    assert stats["models"]["gpt-4o"]["output_tokens"] == 5


def test_embeddings_completions_models(oai: openai.OpenAI) -> None:
    e = oai.embeddings.create(model="text-embedding-3-small", input=["abcd", "efghi"])
    assert e.usage.prompt_tokens == 3 and len(e.data) == 2 and len(e.data[0].embedding) == 8
    e = oai.embeddings.create(
        model="text-embedding-3-small", input="abcd", encoding_format="float", dimensions=4
    )
    assert len(e.data[0].embedding) == 4

    c = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="abcdefgh", max_tokens=3)
    assert c.usage is not None and (c.usage.prompt_tokens, c.usage.completion_tokens) == (2, 3)
    assert c.choices[0].text == TOKEN_TEXT * 3
    chunks = list(
        oai.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="ab",
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2

    assert "gpt-4o" in {m.id for m in oai.models.list()}


def test_responses_plain_and_stream(oai: openai.OpenAI) -> None:
    items: Any = [{"role": "user", "content": "hello world"}]
    expected = prompt_tokens_for("responses", {"instructions": "be brief", "input": items})
    r = oai.responses.create(model="gpt-4o", max_output_tokens=6, instructions="be brief", input=items)
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens) == (expected, 6)
    assert r.output_text == TOKEN_TEXT * 6

    with oai.responses.stream(
        model="gpt-4o",
        max_output_tokens=6,
        instructions="be brief",
        input=items,
        extra_headers={"x-fake-cached-tokens": "2"},
    ) as stream:
        deltas = [ev.delta for ev in stream if ev.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == TOKEN_TEXT * 6
    assert final.usage is not None and final.usage.output_tokens == 6
    assert final.usage.input_tokens_details.cached_tokens == 2


def test_injected_errors_and_latency(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-fake-error": "429"})
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-fake-error": "503"})

    start = time.monotonic()
    oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-fake-latency-ms": "150"})
    assert time.monotonic() - start >= 0.15


def test_bad_json_error_shapes(up: FakeUpstream) -> None:
    status, body = _post(up.base_url + "/chat/completions", b"{nope", {"content-type": "application/json"})
    assert status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    status, body = _post(up.base_url + "/messages", b"[1,", {"content-type": "application/json"})
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


def test_anthropic_create_uses_anthropic_cache_convention(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "hello there, claude"}]
    prompt = prompt_tokens_for("messages", {"system": "be brief", "messages": messages})
    m = claude.messages.create(
        model=CLAUDE,
        max_tokens=7,
        system="be brief",
        messages=messages,
        extra_headers={"x-fake-cached-tokens": "3"},
    )
    assert m.usage.input_tokens == prompt - 3  # Anthropic excludes cache reads from input_tokens
    assert m.usage.cache_read_input_tokens == 3
    assert m.usage.output_tokens == 7
    assert m.content[0].type == "text" and m.content[0].text == TOKEN_TEXT * 7

    with claude.messages.stream(model=CLAUDE, max_tokens=5, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TOKEN_TEXT * 5
    assert final.usage.output_tokens == 5
    assert final.usage.input_tokens == prompt_tokens_for("messages", {"messages": messages})

    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.create(
            model=CLAUDE,
            max_tokens=5,
            messages=messages,
            extra_headers={"x-fake-error": "429"},
        )
    assert info.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(
            model=CLAUDE,
            max_tokens=5,
            messages=messages,
            extra_headers={"x-fake-error": "500"},
        )


def test_stats_and_reset(up: FakeUpstream, oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    up.reset()
    assert up.stats()["requests_total"] == 0
    for _ in range(3):
        oai.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            max_tokens=4,
            extra_headers={"x-fake-cached-tokens": "2"},
        )
    claude.messages.create(model=CLAUDE, max_tokens=2, messages=[{"role": "user", "content": "abcd"}])
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-fake-error": "429"})
    stats = up.stats()
    prompt = prompt_tokens_for("chat/completions", {"messages": MESSAGES})
    assert stats["requests"] == {"/v1/chat/completions": 4, "/v1/messages": 1}
    assert stats["errors"] == {"429": 1}
    assert stats["models"]["gpt-4o"] == {
        "requests": 3,
        "prompt_tokens": 3 * prompt,
        "cached_tokens": 6,
        "output_tokens": 12,
        "reasoning_tokens": 0,
        "web_search_calls": 0,
        "web_fetch_calls": 0,
        "file_search_calls": 0,
        "code_interpreter_sessions": 0,
    }
    assert stats["models"][CLAUDE]["prompt_tokens"] == 4 and stats["models"][CLAUDE]["output_tokens"] == 2
    up.reset()
    assert up.stats() == {
        "requests": {},
        "requests_total": 0,
        "errors": {},
        "streams_cut": 0,
        "models": {},
        "held": {},
    }


def test_require_key_and_clean_sigterm_exit() -> None:
    with FakeUpstream.start(require_key="sekret", latency_ms=1) as guarded:
        bad = openai.OpenAI(base_url=guarded.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        bad_claude = anthropic.Anthropic(base_url=guarded.root_url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            bad_claude.messages.create(
                model=CLAUDE, max_tokens=1, messages=[{"role": "user", "content": "x"}]
            )
        good = openai.OpenAI(base_url=guarded.base_url, api_key="sekret", max_retries=0)
        assert good.chat.completions.create(model="gpt-4o", messages=MESSAGES).usage is not None
        good_claude = anthropic.Anthropic(base_url=guarded.root_url, api_key="sekret", max_retries=0)
        good_claude.messages.create(model=CLAUDE, max_tokens=1, messages=[{"role": "user", "content": "x"}])
        assert guarded.stop() == 0  # SIGTERM: graceful shutdown, exit code 0


def test_the_fake_exits_when_its_parent_is_killed() -> None:
    """A test run killed mid-way leaves no upstream process behind."""
    code = (
        "from spendgate.testing.process import FakeUpstream; import os, time; "
        "up = FakeUpstream.start(); print(up.proc.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, 9)
    raise AssertionError("the fake upstream outlived its killed parent")


def test_hold_keeps_requests_until_released(up: FakeUpstream) -> None:
    """``x-fake-hold``: a test counts the requests at the upstream instead of timing them."""
    from concurrent.futures import ThreadPoolExecutor

    name = "fake-hold-test"
    url = up.base_url + "/chat/completions"
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 2}).encode()
    headers = {"content-type": "application/json", "x-fake-hold": name}
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_post, url, body, headers) for _ in range(3)]
        deadline = time.monotonic() + 10
        while up.held(name) < 3 and time.monotonic() < deadline:  # bounded poll, not a timing
            time.sleep(0.02)
        assert up.held(name) == 3
        assert not any(f.done() for f in futures)  # held: none can have an answer yet
        up.release(name)
        assert [f.result(timeout=10)[0] for f in futures] == [200, 200, 200]
    assert up.held(name) == 0
    assert _post(url, body, headers)[0] == 200  # released: passes at once until a reset


# -- hosted tools ---------------------------------------------------------------------------------

SEARCH: Any = {"type": "web_search"}
FILES: Any = {"type": "file_search", "vector_store_ids": ["vs_1"]}
CODE: Any = {"type": "code_interpreter", "container": {"type": "auto"}}
CLAUDE_SEARCH: Any = {"type": "web_search_20250305", "name": "web_search"}
CLAUDE_FETCH: Any = {"type": "web_fetch_20250910", "name": "web_fetch"}
CAPPED_SEARCH: Any = [{**CLAUDE_SEARCH, "max_uses": 3}]


def _calls(k: int, result_tokens: int = 0) -> dict[str, str]:
    return {"x-fake-tool-calls": str(k), "x-fake-tool-result-tokens": str(result_tokens)}


def test_responses_list_the_hosted_tool_calls_they_make(up: FakeUpstream, oai: openai.OpenAI) -> None:
    from openai.types.responses import (
        ResponseCodeInterpreterToolCall,
        ResponseFileSearchToolCall,
        ResponseFunctionWebSearch,
    )

    from spendgate.usage import tool_calls_in_output

    def create(*tools: Any, k: int | None = None, **body: Any) -> Any:
        headers = _calls(k) if k is not None else {}
        return oai.responses.create(
            model="gpt-4o", input="hi", max_output_tokens=3, tools=list(tools), extra_headers=headers, **body
        )

    up.reset()
    # K = min(x-fake-tool-calls, max_tool_calls); the message comes after the calls
    r = create(SEARCH, k=2, max_tool_calls=3)
    assert [type(i) for i in r.output[:-1]] == [ResponseFunctionWebSearch] * 2
    assert r.output[-1].type == "message" and r.output_text == TOKEN_TEXT * 3
    assert all(i.status == "completed" and i.action.type == "search" for i in r.output[:-1])
    assert len(create(SEARCH, k=5, max_tool_calls=3).output) == 3 + 1
    assert len(create(SEARCH).output) == 1 + 1  # one call by default
    assert len(create({"type": "web_search_preview"}, k=4, max_tool_calls=0).output) == 1  # none allowed
    assert up.billed("gpt-4o").web_search_calls == 2 + 3 + 1
    # file search; a code interpreter's calls run in one container a request (one session billed)
    files = create(FILES, k=2)
    assert [type(i) for i in files.output[:-1]] == [ResponseFileSearchToolCall] * 2
    code = create(CODE, k=3)
    assert [type(i) for i in code.output[:-1]] == [ResponseCodeInterpreterToolCall] * 3
    containers = {i.container_id for i in code.output[:-1]}
    assert len(containers) == 1 and containers.pop().startswith("cntr_fake")
    named = create({"type": "code_interpreter", "container": "cntr_mine"}, CODE, k=4)
    assert [getattr(i, "container_id", None) for i in named.output] == [
        "cntr_mine",
        named.output[1].container_id,
        "cntr_mine",
        named.output[1].container_id,
        None,
    ]
    # several tools: the calls take them in turn; only hosted tools make calls
    function: Any = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    mixed = create(SEARCH, function, FILES, k=3)
    assert [i.type for i in mixed.output] == [
        "web_search_call",
        "file_search_call",
        "web_search_call",
        "message",
    ]
    assert len(create(function, k=3).output) == 1
    # the tally: what the answers listed, read as spendgate reads them
    billed = up.billed("gpt-4o")
    assert (billed.web_search_calls, billed.file_search_calls, billed.code_interpreter_calls) == (8, 3, 3)
    assert tool_calls_in_output(named.output) == {"code_interpreter": 2}
    assert up.stats()["models"]["gpt-4o"]["code_interpreter_sessions"] == 3


def test_a_responses_stream_streams_the_tool_calls_and_lists_them_when_completed(
    up: FakeUpstream, oai: openai.OpenAI
) -> None:
    up.reset()
    with oai.responses.stream(
        model="gpt-4o",
        input="hi",
        max_output_tokens=2,
        tools=[SEARCH, CODE],
        max_tool_calls=2,
        extra_headers=_calls(3, result_tokens=10),
    ) as stream:
        events: list[Any] = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[2:12] == [
        "response.output_item.added",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call.completed",
        "response.output_item.done",
    ]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.type, e.item.status) for e in added] == [
        (0, "web_search_call", "in_progress"),
        (1, "code_interpreter_call", "in_progress"),
        (2, "message", "in_progress"),
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert {e.output_index for e in deltas} == {2}
    assert [i.type for i in final.output] == ["web_search_call", "code_interpreter_call", "message"]
    assert (
        final.usage is not None
        and final.usage.input_tokens == prompt_tokens_for("responses", {"input": "hi"}) + 20
    )
    billed = up.billed("gpt-4o")
    assert (billed.web_search_calls, billed.code_interpreter_calls, billed.input_tokens) == (
        1,
        1,
        final.usage.input_tokens,
    )


def test_anthropic_server_tools_report_their_uses_in_usage(
    up: FakeUpstream, claude: anthropic.Anthropic
) -> None:
    messages: Any = [{"role": "user", "content": "look it up"}]
    prompt = prompt_tokens_for("messages", {"messages": messages})
    tools: Any = [{**CLAUDE_SEARCH, "max_uses": 2}, CLAUDE_FETCH]
    up.reset()
    m = claude.messages.create(
        model=CLAUDE, max_tokens=3, messages=messages, tools=tools, extra_headers=_calls(3, result_tokens=100)
    )
    # min(K, max_uses) searches, K fetches (no max_uses), each use and its result before the text
    assert [b.type for b in m.content] == [
        *["server_tool_use", "web_search_tool_result"] * 2,
        *["server_tool_use", "web_fetch_tool_result"] * 3,
        "text",
    ]
    uses = [b for b in m.content if b.type == "server_tool_use"]
    results: list[Any] = [b for b in m.content if b.type.endswith("_tool_result")]
    assert [b.name for b in uses] == ["web_search"] * 2 + ["web_fetch"] * 3
    assert [r.tool_use_id for r in results] == [u.id for u in uses]
    assert m.usage.server_tool_use is not None
    assert (m.usage.server_tool_use.web_search_requests, m.usage.server_tool_use.web_fetch_requests) == (2, 3)
    assert m.usage.input_tokens == prompt + 5 * 100  # the results are input
    assert m.content[-1].type == "text" and m.content[-1].text == TOKEN_TEXT * 3

    # streamed: message_start tells the prompt before any result and no use yet; message_delta
    # the cumulative counts
    with claude.messages.stream(
        model=CLAUDE, max_tokens=3, messages=messages, tools=tools, extra_headers=_calls(1, result_tokens=100)
    ) as stream:
        events: list[Any] = list(stream)
        final = stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    assert start.message.usage.input_tokens == prompt
    assert start.message.usage.server_tool_use is not None
    assert start.message.usage.server_tool_use.web_search_requests == 0
    assert delta.usage.input_tokens == prompt + 2 * 100
    assert delta.usage.server_tool_use is not None
    assert (
        delta.usage.server_tool_use.web_search_requests,
        delta.usage.server_tool_use.web_fetch_requests,
    ) == (1, 1)
    assert [b.type for b in final.content] == [
        "server_tool_use",
        "web_search_tool_result",
        "server_tool_use",
        "web_fetch_tool_result",
        "text",
    ]
    assert getattr(final.content[0], "input", None) == {"query": "fake query"}
    billed = up.billed(CLAUDE)
    assert (billed.web_search_calls, billed.web_fetch_calls) == (3, 4)
    assert billed.input_tokens == 2 * prompt + 7 * 100

    # no server tool offered (a client tool, an OpenAI-style name): no use, no server_tool_use
    not_server: Any = [{"name": "f", "input_schema": {"type": "object"}}, {"type": "web_search"}]
    plain = claude.messages.create(
        model=CLAUDE,
        max_tokens=3,
        messages=messages,
        tools=not_server,
        extra_headers=_calls(3),
    )
    assert [b.type for b in plain.content] == ["text"] and plain.usage.server_tool_use is None


def test_a_search_model_bills_one_search_a_request(up: FakeUpstream, oai: openai.OpenAI) -> None:
    up.reset()
    oai.chat.completions.create(model="gpt-4o-search-preview", messages=MESSAGES, max_tokens=2)
    list(oai.chat.completions.create(model="gpt-5-search-api", messages=MESSAGES, max_tokens=2, stream=True))
    oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert up.billed("gpt-4o-search-preview").web_search_calls == 1
    assert up.billed("gpt-5-search-api").web_search_calls == 1
    assert up.billed("gpt-4o").web_search_calls == 0


def test_a_cut_stream_bills_the_tool_uses_that_ran_before_it(
    up: FakeUpstream, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    up.reset()
    # The SDKs let the HTTP client's protocol error through unwrapped, or wrap it.
    cut = (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.TransportError)
    with pytest.raises(cut):
        for _ in oai.responses.create(
            model="gpt-4o",
            input="hi",
            max_output_tokens=5,
            tools=[SEARCH],
            stream=True,
            extra_headers={**_calls(2), "x-fake-stream-cut-after": "1"},
        ):
            pass
    with pytest.raises(cut):
        for _ in claude.messages.create(
            model=CLAUDE,
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            tools=CAPPED_SEARCH,
            stream=True,
            extra_headers={**_calls(2, result_tokens=50), "x-fake-stream-cut-after": "1"},
        ):
            pass
    assert up.stats()["streams_cut"] == 2
    assert (up.billed("gpt-4o").web_search_calls, up.billed("gpt-4o").output_tokens) == (2, 1)
    claude_bill = up.billed(CLAUDE)
    assert (claude_bill.web_search_calls, claude_bill.output_tokens) == (2, 1)
    assert (
        claude_bill.input_tokens
        == prompt_tokens_for("messages", {"messages": [{"role": "user", "content": "hi"}]}) + 100
    )


def test_billed_usage_is_a_delta_of_the_tally(up: FakeUpstream, oai: openai.OpenAI) -> None:
    from spendgate.testing.upstream import billed_usage
    from spendgate.usage import Usage

    up.reset()
    oai.responses.create(
        model="gpt-4o", input="hi", max_output_tokens=2, tools=[FILES], extra_headers=_calls(2)
    )
    before = up.stats()
    oai.responses.create(
        model="gpt-4o",
        input="hi",
        max_output_tokens=3,
        tools=[SEARCH],
        extra_headers={**_calls(1), "x-fake-cached-tokens": "2", "x-fake-reasoning-tokens": "1"},
    )
    prompt = prompt_tokens_for("responses", {"input": "hi"})
    assert up.billed("gpt-4o", since=before) == Usage(
        input_tokens=prompt, cache_read_tokens=2, output_tokens=3, reasoning_tokens=1, web_search_calls=1
    )
    assert billed_usage(up.stats(), "gpt-4o").file_search_calls == 2  # since the reset
    assert billed_usage(up.stats(), "nobody") == Usage()
