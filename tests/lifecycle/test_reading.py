"""One set of readers for every endpoint, over parsed JSON and SDK objects alike."""

from __future__ import annotations

from typing import Any

import anthropic.types
import openai.types
import openai.types.chat
import openai.types.responses
import pytest

from spendgate.estimate import Endpoint
from spendgate.lifecycle import Happened, Show, StreamReader, read_response
from spendgate.lifecycle.reading import may_carry_usage
from spendgate.usage import Usage

CHAT = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 4,
        "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 3},
    },
    "service_tier": "priority",
}
RESPONSE = {
    "id": "r",
    "object": "response",
    "created_at": 1,
    "model": "gpt-4o",
    "output": [],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "status": "completed",
    "usage": {
        "input_tokens": 8,
        "output_tokens": 2,
        "total_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    },
    "service_tier": "flex",
}
MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 5,
        "output_tokens": 3,
        "cache_read_input_tokens": 4,
        "service_tier": "standard",
    },
}
EMBEDDING = {
    "object": "list",
    "model": "text-embedding-3-small",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
    "usage": {"prompt_tokens": 6, "total_tokens": 6},
}

CASES: list[tuple[Endpoint, dict[str, Any], Any, Usage, str | None]] = [
    (
        "chat",
        CHAT,
        openai.types.chat.ChatCompletion,
        Usage(input_tokens=9, output_tokens=4, cache_read_tokens=2, reasoning_tokens=3),
        "priority",
    ),
    ("responses", RESPONSE, openai.types.responses.Response, Usage(input_tokens=8, output_tokens=2), "flex"),
    (
        "messages",
        MESSAGE,
        anthropic.types.Message,
        Usage(input_tokens=9, output_tokens=3, cache_read_tokens=4),
        "standard",
    ),
    ("embeddings", EMBEDDING, openai.types.CreateEmbeddingResponse, Usage(input_tokens=6), None),
]


@pytest.mark.parametrize(("endpoint", "doc", "sdk_type", "usage", "tier"), CASES)
def test_a_whole_answer_reads_alike_as_json_and_as_an_sdk_object(
    endpoint: Endpoint, doc: dict[str, Any], sdk_type: Any, usage: Usage, tier: str | None
) -> None:
    for answer in (doc, sdk_type.model_validate(doc)):
        read = read_response(endpoint, answer)
        assert (read.usage, read.tier, read.problem) == (usage, tier, None)


@pytest.mark.parametrize("bad", [None, {}, "12", 12, [], {"total_tokens": 3}])
def test_no_usage_or_an_unreadable_one_is_never_a_silent_zero(bad: Any) -> None:
    read = read_response("chat", {**CHAT, "usage": bad})
    assert read.usage is None and read.problem


def test_a_chat_stream_of_sdk_chunks_hides_the_added_usage_chunk() -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    chunks = [
        openai.types.chat.ChatCompletionChunk.model_validate(
            {**base, "choices": [{"index": 0, "delta": {"content": "hi"}}]}
        ),
        openai.types.chat.ChatCompletionChunk.model_validate(
            {**base, "choices": [], "usage": CHAT["usage"], "service_tier": "default"}
        ),
    ]
    reader = StreamReader("chat", hide_usage=True)
    assert [reader.see(c) for c in chunks] == [Show.KEEP, Show.DROP]
    assert reader.usage(Happened.COMPLETE) == Usage(
        input_tokens=9, output_tokens=4, cache_read_tokens=2, reasoning_tokens=3
    )
    assert reader.tier == "default" and reader.events == 2


def test_an_anthropic_stream_of_sdk_events_merges_start_and_delta() -> None:
    start = anthropic.types.RawMessageStartEvent.model_validate(
        {"type": "message_start", "message": {**MESSAGE, "usage": {**MESSAGE["usage"], "output_tokens": 1}}}
    )
    delta = anthropic.types.RawMessageDeltaEvent.model_validate(
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}
    )
    reader = StreamReader("messages")
    reader.see(start)
    assert reader.usage(Happened.COMPLETE) is None  # a stream without message_delta: no bill read
    assert reader.known() == Usage(input_tokens=9, output_tokens=1, cache_read_tokens=4)
    reader.see(delta)
    assert reader.usage(Happened.CUT) == Usage(input_tokens=9, output_tokens=7, cache_read_tokens=4)
    report = reader.report(Happened.CUT)
    assert report.usage == reader.usage(Happened.CUT) and report.tier == "standard"


@pytest.mark.parametrize(
    ("endpoint", "name", "data", "may"),
    [
        ("chat", None, b'{"choices":[],"usage":{"prompt_tokens":1}}', True),
        ("chat", None, b'{"choices":[{"delta":{"content":"\\"usage\\": {"}}]}', False),
        ("messages", b"content_block_delta", b'{"type":"message_delta"}', False),  # the name decides
        ("messages", None, b'{"type": "message_start"}', True),
        ("responses", b"response.completed", b"{}", True),
        ("responses", None, b'{"type":"response.output_text.delta"}', False),
    ],
)
def test_which_sse_events_can_carry_usage(
    endpoint: Endpoint, name: bytes | None, data: bytes, may: bool
) -> None:
    assert may_carry_usage(endpoint, name, data) is may


# -- hosted tool uses billed per use (issue 10 section 1) ------------------------------------------

TOOL_OUTPUT: list[dict[str, Any]] = [
    {
        "id": "ws_1",
        "type": "web_search_call",
        "status": "completed",
        "action": {"type": "search", "query": "q"},
    },
    {
        "id": "ws_2",
        "type": "web_search_call",
        "status": "completed",
        "action": {"type": "open_page", "url": "u"},
    },
    {"id": "fs_1", "type": "file_search_call", "status": "completed", "queries": ["q"], "results": None},
    {"id": "ci_1", "type": "code_interpreter_call", "status": "completed", "code": "1", "container_id": "c1"},
    {"id": "ci_2", "type": "code_interpreter_call", "status": "completed", "code": "2", "container_id": "c1"},
    {"id": "ci_3", "type": "code_interpreter_call", "status": "completed", "code": "3", "container_id": "c2"},
]
TOOL_CALLS = {"web_search": 2, "file_search": 1, "code_interpreter": 2}  # two containers, two sessions


def test_a_responses_answer_bills_the_tool_calls_its_output_lists() -> None:
    doc = {**RESPONSE, "output": TOOL_OUTPUT}
    for answer in (doc, openai.types.responses.Response.model_validate(doc)):
        usage = read_response("responses", answer).usage
        assert usage is not None and usage.tool_calls() == TOOL_CALLS
        assert Usage.from_response(answer).tool_calls() == TOOL_CALLS


def test_a_responses_stream_bills_the_tool_calls_of_its_completed_event() -> None:
    done = {
        "type": "response.completed",
        "sequence_number": 9,
        "response": {**RESPONSE, "output": TOOL_OUTPUT},
    }
    for event in (done, openai.types.responses.ResponseCompletedEvent.model_validate(done)):
        reader = StreamReader("responses")
        reader.see({"type": "response.web_search_call.completed", "item_id": "ws_1"})
        reader.see(event)
        usage = reader.usage(Happened.COMPLETE)
        assert usage is not None and usage.tool_calls() == TOOL_CALLS


def test_an_anthropic_answer_bills_its_server_tool_uses() -> None:
    usage = {**MESSAGE["usage"], "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 1}}
    doc = {**MESSAGE, "usage": usage}
    for answer in (doc, anthropic.types.Message.model_validate(doc)):
        read = read_response("messages", answer).usage
        assert read is not None and read.tool_calls() == {"web_search": 3, "web_fetch": 1}


def test_an_anthropic_stream_bills_the_server_tool_uses_of_its_last_delta() -> None:
    start = {
        "type": "message_start",
        "message": {**MESSAGE, "usage": {**MESSAGE["usage"], "output_tokens": 1}},
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 7, "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 0}},
    }
    for events in (
        (start, delta),
        (
            anthropic.types.RawMessageStartEvent.model_validate(start),
            anthropic.types.RawMessageDeltaEvent.model_validate(delta),
        ),
    ):
        reader = StreamReader("messages")
        for event in events:
            reader.see(event)
        usage = reader.usage(Happened.COMPLETE)
        assert usage is not None and usage.tool_calls() == {"web_search": 2}


def test_a_compatible_chat_answer_bills_the_searches_it_reports() -> None:
    # LiteLLM reports Anthropic's searches as server_tool_use, Gemini's in prompt_tokens_details
    reported: dict[str, Any] = dict(CHAT["usage"])  # type: ignore[call-overload]
    for extra in (
        {"server_tool_use": {"web_search_requests": 2}},
        {"prompt_tokens_details": {"cached_tokens": 0, "web_search_requests": 2}},
    ):
        usage = read_response("chat", {**CHAT, "usage": {**reported, **extra}}).usage
        assert usage is not None and usage.web_search_calls == 2
