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


# -- issue 10 section 2: usage fields that were dropped or mis-read ------------------------


def test_xai_reasoning_outside_completion_is_added() -> None:
    # xAI: total = prompt + completion + reasoning, so reasoning is beside the completion.
    usage = Usage.from_openai(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 300,
            "total_tokens": 3300,
            "completion_tokens_details": {"reasoning_tokens": 2000},
        }
    )
    assert usage == Usage(input_tokens=1000, output_tokens=2300, reasoning_tokens=2000)


def test_xai_reasoning_without_total_is_never_clamped_away() -> None:
    # More reasoning than completion cannot be inside it: it is added, never dropped.
    usage = Usage.from_openai(
        {"prompt_tokens": 10, "completion_tokens": 3, "completion_tokens_details": {"reasoning_tokens": 20}}
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (23, 20)


def test_openai_reasoning_inside_completion_is_not_double_counted() -> None:
    # OpenAI: total = prompt + completion, reasoning is part of the completion.
    usage = Usage.from_openai(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 3000,
            "total_tokens": 4000,
            "completion_tokens_details": {"reasoning_tokens": 2000},
        }
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (3000, 2000)


def test_xai_responses_reasoning_outside_output() -> None:
    usage = Usage.from_openai_responses(
        {
            "input_tokens": 1000,
            "output_tokens": 300,
            "total_tokens": 3300,
            "output_tokens_details": {"reasoning_tokens": 2000},
        }
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (2300, 2000)


def test_openai_chat_cache_writes() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 100_000,
            "completion_tokens": 3000,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 75_000},
        }
    )
    assert usage == Usage(input_tokens=100_000, output_tokens=3000, cache_write_tokens=75_000)


def test_openai_responses_cache_writes_by_ttl() -> None:
    usage = Usage.from_openai_responses(
        {
            "input_tokens": 100_000,
            "input_tokens_details": {
                "cached_tokens": 10_000,
                "cache_write_tokens": 75_000,
                "cache_write_tokens_details": {"ttl_30m_tokens": 50_000, "ttl_12h_tokens": 25_000},
            },
            "output_tokens": 3000,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 103_000,
        }
    )
    assert usage == Usage(
        input_tokens=100_000,
        output_tokens=3000,
        cache_read_tokens=10_000,
        cache_write_tokens=50_000,
        cache_write_12h_tokens=25_000,
    )


def test_openai_cache_write_split_without_total_counts_the_rest_as_default_ttl() -> None:
    usage = Usage.from_openai_responses(
        {
            "input_tokens": 1000,
            "output_tokens": 1,
            "input_tokens_details": {
                "cache_write_tokens": 900,
                "cache_write_tokens_details": {"ttl_12h_tokens": 600},
            },
        }
    )
    assert (usage.cache_write_tokens, usage.cache_write_12h_tokens) == (300, 600)


def test_image_output_tokens_openai_and_gemini() -> None:
    chat = Usage.from_openai(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 1500,
            "completion_tokens_details": {"image_tokens": 1290, "text_tokens": 210},
        }
    )
    assert (chat.output_tokens, chat.image_output_tokens) == (1500, 1290)
    images_api = Usage.from_openai_responses(
        {
            "input_tokens": 50,
            "output_tokens": 4160,
            "output_tokens_details": {"image_tokens": 4160, "text_tokens": 0},
        }
    )
    assert images_api.image_output_tokens == 4160
    gemini = Usage.from_gemini(
        {
            "promptTokenCount": 1000,
            "candidatesTokenCount": 2000,
            "candidatesTokensDetails": [
                {"modality": "TEXT", "tokenCount": 710},
                {"modality": "IMAGE", "tokenCount": 1290},
            ],
        }
    )
    assert (gemini.output_tokens, gemini.image_output_tokens) == (2000, 1290)


def test_anthropic_inference_geo_and_speed_are_kept() -> None:
    usage = Usage.from_anthropic(
        {"input_tokens": 10, "output_tokens": 5, "inference_geo": "us", "speed": "fast"}
    )
    assert (usage.inference_geo, usage.speed) == ("us", "fast")
    assert usage.as_dict() == {"input_tokens": 10, "output_tokens": 5}
    plain = Usage.from_anthropic({"input_tokens": 10, "output_tokens": 5, "inference_geo": "not_available"})
    assert plain.inference_geo == "not_available"
    assert (usage + Usage(1, 1)).inference_geo == "us"


def test_bedrock_converse_usage() -> None:
    converse = {
        "inputTokens": 1000,
        "outputTokens": 500,
        "cacheReadInputTokens": 5000,
        "cacheWriteInputTokens": 2000,
        "totalTokens": 8500,
    }
    expected = Usage(input_tokens=8000, output_tokens=500, cache_read_tokens=5000, cache_write_tokens=2000)
    assert Usage.from_bedrock(converse) == expected
    response = {"output": {"message": {}}, "stopReason": "end_turn", "usage": converse, "metrics": {}}
    assert Usage.from_response(response) == expected
    # the stream's metadata event
    assert Usage.from_response({"metadata": {"usage": converse}}) == expected
    assert Usage.from_response({"usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}}) == Usage(
        3, 4
    )


def test_bedrock_cache_inside_input_when_the_total_says_so() -> None:
    # A proxy that folds the cache into inputTokens: total = input + output.
    usage = Usage.from_bedrock(
        {"inputTokens": 6000, "outputTokens": 10, "cacheReadInputTokens": 5000, "totalTokens": 6010}
    )
    assert (usage.input_tokens, usage.cache_read_tokens) == (6000, 5000)


def test_tool_uses_are_counts_like_tokens() -> None:
    one = Usage(input_tokens=5, web_search_calls=2, code_interpreter_calls=1)
    both = one + Usage(input_tokens=1, web_search_calls=1, file_search_calls=4)
    assert both.tool_calls() == {"web_search": 3, "file_search": 4, "code_interpreter": 1}
    assert both.as_dict() == {
        "input_tokens": 6,
        "web_search_calls": 3,
        "file_search_calls": 4,
        "code_interpreter_calls": 1,
    }
    with pytest.raises(ValueError, match="web_fetch_calls"):
        Usage(web_fetch_calls=-1)
