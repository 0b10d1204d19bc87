from __future__ import annotations

from types import SimpleNamespace

import pytest

from spendgate.usage import Usage


def test_openai_chat() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
        }
    )
    assert usage == Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=1024, reasoning_tokens=128)


def test_openai_sdk_object_with_none_details() -> None:
    obj = SimpleNamespace(
        prompt_tokens=10, completion_tokens=5, prompt_tokens_details=None, completion_tokens_details=None
    )
    assert Usage.from_openai(obj) == Usage(input_tokens=10, output_tokens=5)


def test_responses_api() -> None:
    usage = Usage.from_openai_responses(
        {
            "input_tokens": 500,
            "input_tokens_details": {"cached_tokens": 100},
            "output_tokens": 900,
            "output_tokens_details": {"reasoning_tokens": 800},
            "total_tokens": 1400,
        }
    )
    assert usage == Usage(input_tokens=500, output_tokens=900, cache_read_tokens=100, reasoning_tokens=800)


def test_anthropic_input_excludes_cache() -> None:
    usage = Usage.from_anthropic(
        {
            "input_tokens": 50,
            "cache_creation_input_tokens": 2000,
            "cache_read_input_tokens": 10_000,
            "output_tokens": 400,
        }
    )
    assert usage.input_tokens == 12_050
    assert usage.cache_read_tokens == 10_000
    assert usage.cache_write_tokens == 2000
    assert usage.cache_write_1h_tokens == 0


def test_anthropic_ttl_split() -> None:
    usage = Usage.from_anthropic(
        {
            "input_tokens": 5,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            "output_tokens": 1,
        }
    )
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens, usage.input_tokens) == (100, 200, 305)


def test_gemini_thoughts_are_beside_candidates() -> None:
    usage = Usage.from_gemini(
        {
            "promptTokenCount": 100,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 80,
            "cachedContentTokenCount": 60,
        }
    )
    assert usage == Usage(input_tokens=100, output_tokens=100, cache_read_tokens=60, reasoning_tokens=80)
    snake = Usage.from_gemini(
        {"prompt_token_count": 100, "candidates_token_count": 20, "thoughts_token_count": 80}
    )
    assert snake.output_tokens == 100


def test_from_response_detects_provider() -> None:
    assert Usage.from_response(
        {"object": "chat.completion", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    ) == Usage(3, 4)
    anthropic = {"id": "msg_01", "type": "message", "usage": {"input_tokens": 3, "output_tokens": 4}}
    assert Usage.from_response(anthropic) == Usage(3, 4)
    responses = {"id": "resp_1", "object": "response", "usage": {"input_tokens": 3, "output_tokens": 4}}
    assert Usage.from_response(responses) == Usage(3, 4)
    assert Usage.from_response(
        {"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}
    ) == Usage(3, 4)
    with pytest.raises(ValueError, match="no token usage"):
        Usage.from_response({"choices": []})


def test_invalid_usage_refused() -> None:
    with pytest.raises(ValueError, match="part of input_tokens"):
        Usage(input_tokens=10, cache_read_tokens=11)
    with pytest.raises(ValueError, match="reasoning"):
        Usage(output_tokens=1, reasoning_tokens=2)
    with pytest.raises(ValueError):
        Usage(input_tokens=-1)
    with pytest.raises(ValueError, match="negative"):
        Usage.from_openai({"prompt_tokens": -3, "completion_tokens": 1})


def test_add() -> None:
    assert Usage(1, 2, cache_read_tokens=1) + Usage(3, 4) == Usage(4, 6, cache_read_tokens=1)
