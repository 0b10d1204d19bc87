"""The gateway's SSE tracker on hand-written streams: usage found, the added usage chunk hidden,
and the text of a cut stream counted from events it only parses when needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spendgate.gateway.proxy import StreamTracker


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
    assert tracker.usage == usage and tracker.tier == "default"
    assert b'"prompt_tokens"' not in out and out.endswith(b"data: [DONE]\n\n")
    assert out.count(b"data: ") == 3  # two text chunks and [DONE]
    assert tracker.text() == "Hello"

    kept = StreamTracker("chat", hide_usage=False)
    assert run(kept, stream) == stream  # the caller asked for usage: forwarded untouched


def test_chat_usage_next_to_text_and_in_every_chunk() -> None:
    # Some compatible servers put a running total in every chunk, text included: the last wins,
    # the text stays visible and the usage is blanked for a caller who did not ask for it.
    first = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    last = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    stream = sse(chat_chunk("a", usage=first)) + sse(chat_chunk("b", usage=last))
    tracker = StreamTracker("chat", hide_usage=True)
    out = run(tracker, stream)
    assert tracker.usage == last
    assert out.count(b'"usage": null') + out.count(b'"usage":null') == 2
    assert tracker.text() == "ab"


def test_text_that_mentions_usage_is_not_mistaken_for_it() -> None:
    tricky = 'the JSON "usage": {"prompt_tokens": 1} and "type":"message_delta"'
    tracker = StreamTracker("chat", hide_usage=True)
    out = run(tracker, sse(chat_chunk(tricky)))
    assert tracker.usage is None and tracker.text() == tricky
    assert json.loads(out.split(b"data: ", 1)[1])["choices"][0]["delta"]["content"] == tricky


def test_completions_text() -> None:
    chunk = {"object": "text_completion", "choices": [{"index": 0, "text": "Once"}]}
    tracker = StreamTracker("completions", hide_usage=True)
    run(tracker, sse(chunk) + sse({**chunk, "choices": [{"index": 0, "text": " upon"}]}))
    assert tracker.usage is None and tracker.text() == "Once upon"


@pytest.mark.parametrize("named", [True, False])
def test_anthropic_usage_from_start_and_delta(named: bool) -> None:
    def ev(name: str, obj: dict[str, Any]) -> bytes:
        return sse({"type": name, **obj}, name if named else None)

    start_usage = {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5}
    stream = (
        ev("message_start", {"message": {"id": "m", "usage": start_usage}})
        + ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        + ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi "}})
        + ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "there"}})
    )
    tracker = StreamTracker("messages", hide_usage=False)
    assert run(tracker, stream) == stream
    assert tracker.usage == start_usage and not tracker.anthropic_final  # cut here: no final usage
    assert tracker.text() == "Hi there"
    run(tracker, ev("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}))
    assert tracker.anthropic_final
    assert tracker.usage == {**start_usage, "output_tokens": 2}


@pytest.mark.parametrize("named", [True, False])
def test_responses_usage_and_text(named: bool) -> None:
    def ev(obj: dict[str, Any]) -> bytes:
        return sse(obj, obj["type"] if named else None)

    usage = {"input_tokens": 8, "output_tokens": 2, "total_tokens": 10}
    stream = (
        ev({"type": "response.created", "response": {"id": "r"}})
        + ev({"type": "response.output_text.delta", "delta": "Hey"})
        + ev({"type": "response.output_text.delta", "delta": "!"})
        + ev({"type": "response.completed", "response": {"id": "r", "usage": usage, "service_tier": "flex"}})
    )
    tracker = StreamTracker("responses", hide_usage=False)
    assert run(tracker, stream) == stream
    assert (tracker.usage, tracker.tier) == (usage, "flex")
    assert tracker.text() == "Hey!"
