"""The gateway's SSE tracker on hand-written streams: events framed and forwarded whole, the
usage found by the lifecycle's reader, the added usage chunk hidden, text never mistaken for usage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spendgate.lifecycle import Happened
from spendgate.lifecycle.sse import StreamTracker
from spendgate.usage import Usage


def sse(obj: Any, name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(obj).encode() + b"\n\n"


def chat_chunk(text: str | None, usage: Any = None, **extra: Any) -> dict[str, Any]:
    choices = [] if text is None else [{"index": 0, "delta": {"content": text}}]
    return {"object": "chat.completion.chunk", "choices": choices, "usage": usage, **extra}


def run(tracker: StreamTracker, stream: bytes, piece: int = 7) -> bytes:
    """Feed ``stream`` in small pieces, as a network would, and collect what is forwarded."""
    out = b"".join(tracker.feed(stream[i : i + piece]) for i in range(0, len(stream), piece))
    return out + tracker.flush()


def test_chat_usage_is_found_and_the_added_chunk_hidden() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    stream = (
        sse(chat_chunk("Hel"))
        + sse(chat_chunk("lo", service_tier="default"))
        + sse(chat_chunk(None, usage=usage, service_tier="default"))
        + b"data: [DONE]\n\n"
    )
    tracker = StreamTracker("chat", hide_usage=True)
    out = run(tracker, stream)
    reader = tracker.reader
    assert reader.usage(Happened.COMPLETE) == Usage(input_tokens=9, output_tokens=3)
    assert reader.usage(Happened.CUT) == Usage(input_tokens=9, output_tokens=3)  # the final chunk came
    assert reader.tier == "default"
    assert b'"prompt_tokens"' not in out and out.endswith(b"data: [DONE]\n\n")
    assert out.count(b"data: ") == 3  # two text chunks and [DONE]

    kept = StreamTracker("chat", hide_usage=False)
    assert run(kept, stream) == stream  # the caller asked for usage: forwarded untouched


def test_a_running_total_counts_only_at_the_end() -> None:
    # Some compatible servers put a running total in every chunk, text included: the last one
    # is the bill when the stream completes; a stream cut after it knows only the prompt.
    first = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    last = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    stream = sse(chat_chunk("a", usage=first)) + sse(chat_chunk("b", usage=last))
    tracker = StreamTracker("chat", hide_usage=True)
    out = run(tracker, stream)
    reader = tracker.reader
    assert reader.usage(Happened.COMPLETE) == Usage(input_tokens=9, output_tokens=2)
    assert reader.usage(Happened.CUT) is None
    assert reader.known() == Usage(input_tokens=9, output_tokens=2)
    assert out.count(b'"usage": null') + out.count(b'"usage":null') == 2


def test_text_that_mentions_usage_is_not_mistaken_for_it() -> None:
    tricky = 'the JSON "usage": {"prompt_tokens": 1} and "type":"message_delta"'
    tracker = StreamTracker("chat", hide_usage=True)
    out = run(tracker, sse(chat_chunk(tricky)))
    assert tracker.reader.usage(Happened.COMPLETE) is None and tracker.reader.known() is None
    assert json.loads(out.split(b"data: ", 1)[1])["choices"][0]["delta"]["content"] == tricky


def test_completions_without_usage() -> None:
    chunk = {"object": "text_completion", "choices": [{"index": 0, "text": "Once"}]}
    tracker = StreamTracker("completions", hide_usage=True)
    stream = sse(chunk) + sse({**chunk, "choices": [{"index": 0, "text": " upon"}]})
    assert run(tracker, stream) == stream
    assert tracker.reader.usage(Happened.COMPLETE) is None


@pytest.mark.parametrize("named", [True, False])
def test_anthropic_usage_from_start_and_delta(named: bool) -> None:
    def ev(name: str, obj: dict[str, Any]) -> bytes:
        return sse({"type": name, **obj}, name if named else None)

    start_usage = {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5}
    stream = (
        ev("message_start", {"message": {"id": "m", "usage": {**start_usage, "service_tier": "standard"}}})
        + ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        + ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi "}})
        + ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "there"}})
    )
    tracker = StreamTracker("messages", hide_usage=False)
    assert run(tracker, stream) == stream
    reader = tracker.reader
    # Cut here: no final usage, but message_start told the exact prompt (cache reads included).
    assert reader.usage(Happened.CUT) is None
    assert reader.known() == Usage(input_tokens=30, output_tokens=1, cache_read_tokens=5)
    assert reader.tier == "standard"
    run(tracker, ev("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}))
    assert reader.usage(Happened.CUT) == Usage(input_tokens=30, output_tokens=2, cache_read_tokens=5)


@pytest.mark.parametrize("named", [True, False])
def test_responses_usage(named: bool) -> None:
    def ev(obj: dict[str, Any]) -> bytes:
        return sse(obj, obj["type"] if named else None)

    usage = {"input_tokens": 8, "output_tokens": 2, "total_tokens": 10}
    stream = (
        ev({"type": "response.created", "response": {"id": "r", "usage": None}})
        + ev({"type": "response.output_text.delta", "delta": "Hey"})
        + ev({"type": "response.output_text.delta", "delta": "!"})
        + ev({"type": "response.completed", "response": {"id": "r", "usage": usage, "service_tier": "flex"}})
    )
    tracker = StreamTracker("responses", hide_usage=False)
    assert run(tracker, stream) == stream
    assert tracker.reader.usage(Happened.COMPLETE) == Usage(input_tokens=8, output_tokens=2)
    assert tracker.reader.tier == "flex"
