"""Costs worked out by hand from the providers' published prices, to the nano-dollar.

Each row: the model name as a user types it, a provider usage report (in
that provider's own convention), the service tier, and the expected total in
nano-USD with the arithmetic beside it (prices in USD per 1M tokens).
"""

from __future__ import annotations

from typing import Any

import pytest

from spendgate.cost import cost_of
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.usage import Usage


def oa(
    prompt: int,
    completion: int,
    cached: int = 0,
    reasoning: int = 0,
    audio_in: int = 0,
    audio_out: int = 0,
    cache_write: int = 0,
) -> Usage:
    return Usage.from_openai(
        {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {
                "cached_tokens": cached,
                "audio_tokens": audio_in,
                "cache_write_tokens": cache_write,
            },
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": audio_out},
        }
    )


def xai(prompt: int, completion: int, reasoning: int) -> Usage:
    return Usage.from_openai(
        {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion + reasoning,
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    )


def resp_ttl(inp: int, out: int, cached: int, ttl_30m: int, ttl_12h: int) -> Usage:
    return Usage.from_openai_responses(
        {
            "input_tokens": inp,
            "output_tokens": out,
            "total_tokens": inp + out,
            "input_tokens_details": {
                "cached_tokens": cached,
                "cache_write_tokens": ttl_30m + ttl_12h,
                "cache_write_tokens_details": {"ttl_30m_tokens": ttl_30m, "ttl_12h_tokens": ttl_12h},
            },
            "output_tokens_details": {"reasoning_tokens": 0},
        }
    )


def an(
    inp: int,
    out: int,
    read: int = 0,
    write: int = 0,
    write_1h: int | None = None,
    geo: str | None = None,
    speed: str | None = None,
) -> Usage:
    usage: dict[str, Any] = {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }
    if write_1h is not None:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": write - write_1h,
            "ephemeral_1h_input_tokens": write_1h,
        }
    if geo is not None:
        usage["inference_geo"] = geo
    if speed is not None:
        usage["speed"] = speed
    return Usage.from_anthropic(usage)


def gm(
    prompt: int, candidates: int, thoughts: int = 0, cached: int = 0, audio: int = 0, image_out: int = 0
) -> Usage:
    meta: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "thoughtsTokenCount": thoughts,
        "cachedContentTokenCount": cached,
    }
    if audio:
        meta["promptTokensDetails"] = [
            {"modality": "TEXT", "tokenCount": prompt - audio},
            {"modality": "AUDIO", "tokenCount": audio},
        ]
    if image_out:
        meta["candidatesTokensDetails"] = [
            {"modality": "TEXT", "tokenCount": candidates - image_out},
            {"modality": "IMAGE", "tokenCount": image_out},
        ]
    return Usage.from_gemini(meta)


CASES: list[tuple[str, str, Usage, str | None, int]] = [
    # id, model, usage, service tier, expected nano-USD
    ("gpt-4o plain", "gpt-4o", oa(1000, 500), None, 7_500_000),  # 1000*2.50 + 500*10 = 0.0075
    # 600*2.50 + 400*1.25 + 200*10 = 0.0015 + 0.0005 + 0.002
    ("gpt-4o cached read, OpenAI convention", "gpt-4o", oa(1000, 200, cached=400), None, 4_000_000),
    ("provider prefix", "openai/gpt-4o", oa(1000, 500), None, 7_500_000),
    ("dated snapshot priced like family", "gpt-4o-2024-08-06", oa(1000, 500), None, 7_500_000),
    # the 2024-05-13 snapshot is priced apart at 5 / 15 and wins over gpt-4o: 0.005 + 0.0075
    ("explicit snapshot wins", "gpt-4o-2024-05-13", oa(1000, 500), None, 12_500_000),
    ("gpt-4o-mini 1M each", "gpt-4o-mini", oa(1_000_000, 1_000_000), None, 750_000_000),  # 0.15 + 0.60
    ("gpt-4o-mini few tokens", "gpt-4o-mini", oa(7, 3), None, 2_850),  # 7*0.15 + 3*0.60 = 1.05e-6 + 1.8e-6
    ("gpt-4o batch", "gpt-4o", oa(1000, 500), "batch", 3_750_000),  # 1000*1.25 + 500*5
    # reasoning tokens are output tokens at the output rate: 2000*1.25 + 3000*10
    ("gpt-5 reasoning", "gpt-5", oa(2000, 3000, reasoning=2500), None, 32_500_000),
    # 2000*1.25 + 8000*0.125 + 100*10
    ("gpt-5 cached", "gpt-5", oa(10_000, 100, cached=8000), None, 4_500_000),
    ("gpt-5 batch", "gpt-5", oa(10_000, 1000), "batch", 11_250_000),  # 10000*0.625 + 1000*5
    ("gpt-5 flex", "gpt-5", oa(10_000, 1000), "flex", 11_250_000),  # 10000*0.625 + 1000*5
    ("gpt-5 priority", "gpt-5", oa(10_000, 1000), "priority", 45_000_000),  # 10000*2.5 + 1000*20
    # batch cache read 0.0625 per 1M = 62.5 nano a token: one token rounds UP to 63
    ("rounding up one token", "gpt-5", oa(1, 0, cached=1), "batch", 63),
    ("rounding up three tokens", "gpt-5", oa(3, 0, cached=3), "batch", 188),  # 187.5 -> 188
    # at the threshold (not above) base rates: 272000*2.5 + 1000*15
    ("gpt-5.4 at 272k", "gpt-5.4", oa(272_000, 1000), None, 695_000_000),
    # one token above: the WHOLE request at 5 / 22.5: 272001*5 + 1000*22.5 = 1.360005 + 0.0225
    ("gpt-5.4 above 272k", "gpt-5.4", oa(272_001, 1000), None, 1_382_505_000),
    # above the tier, cached reads at the tier's 0.5: 100000*5 + 200000*0.5
    ("gpt-5.4 above 272k cached", "gpt-5.4", oa(300_000, 0, cached=200_000), None, 600_000_000),
    # Anthropic convention (input excludes cache): 1000*3 + 5000*0.30 + 2000*3.75 + 500*15
    ("claude cache read+write", "claude-sonnet-4-5", an(1000, 500, read=5000, write=2000), None, 19_500_000),
    # 100*3 + 1000*3.75 (5-minute) + 2000*6 (1-hour)
    ("claude 1h cache writes", "claude-sonnet-4-5", an(100, 0, write=3000, write_1h=2000), None, 16_050_000),
    (
        "anthropic/ prefix",
        "anthropic/claude-sonnet-4-5",
        an(1000, 500, read=5000, write=2000),
        None,
        19_500_000,
    ),
    ("claude-haiku-4-5 1M each", "claude-haiku-4-5", an(1_000_000, 1_000_000), None, 6_000_000_000),  # 1 + 5
    ("claude-haiku-4-5 batch", "claude-haiku-4-5", an(1000, 1000), "batch", 3_000_000),  # 1000*0.5 + 1000*2.5
    # Gemini: thoughts beside candidates, both at output: 100000*1.25 + (500+1500)*10
    ("gemini thoughts", "gemini-2.5-pro", gm(100_000, 500, thoughts=1500), None, 145_000_000),
    ("gemini above 200k", "gemini-2.5-pro", gm(250_000, 1000), None, 640_000_000),  # 250000*2.5 + 1000*15
    # 150000*2.5 + 100000*0.25 (cached, tier rate)
    ("gemini above 200k cached", "gemini-2.5-pro", gm(250_000, 0, cached=100_000), None, 400_000_000),
    # 600*0.30 (text) + 400*1.00 (audio) + (100+200)*2.50
    (
        "gemini audio input",
        "gemini/gemini-2.5-flash",
        gm(1000, 100, thoughts=200, audio=400),
        None,
        1_330_000,
    ),
    ("o3 reasoning", "o3", oa(500, 4000, reasoning=3500), None, 33_000_000),  # 500*2 + 4000*8
    ("o4-mini odd counts", "o4-mini", oa(1234, 567), None, 3_852_200),  # 1234*1.1 + 567*4.4
    ("embedding small", "text-embedding-3-small", oa(1_000_000, 0), None, 20_000_000),  # 1M * 0.02
    ("embedding large", "text-embedding-3-large", oa(8191, 0), None, 1_064_830),  # 8191 * 0.13
    ("azure prefix", "azure/gpt-4o", oa(1000, 500), None, 7_500_000),
    # bedrock/ prefix stripped to the explicit bedrock entry: 1000*3 + 100*15
    ("bedrock model id", "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", oa(1000, 100), None, 4_500_000),
    # 100000*0.28 + 900000*0.028 + 10000*0.42
    ("deepseek cached", "deepseek/deepseek-chat", oa(1_000_000, 10_000, cached=900_000), None, 57_400_000),
    # audio priced apart: 200*2.5 + 800*32 + 100*10 + 400*64
    ("audio tokens", "gpt-audio", oa(1000, 500, audio_in=800, audio_out=400), None, 52_700_000),
    ("gpt-4.1 long output", "gpt-4.1", oa(1_000_000, 32_768), None, 2_262_144_000),  # 2 + 32768*8
    (
        "mistral prefix",
        "mistral/mistral-large-latest",
        oa(3000, 1000),
        None,
        3_000_000,
    ),  # 3000*0.5 + 1000*1.5
    ("nothing used", "gpt-4o", oa(0, 0), None, 0),
    # -- issue 10 section 2 -----------------------------------------------------------------
    # xAI: reasoning beside the completion (total 3300 = 1000 + 300 + 2000): 1000*1.25 + (300+2000)*2.5
    ("xai reasoning outside completion", "xai/grok-4.3", xai(1000, 300, 2000), None, 7_000_000),
    # OpenAI 30-minute cache writes at 5: 25000*4 + 75000*5 + 3000*20 = 0.1 + 0.375 + 0.06
    ("openai cache writes", "gpt-5.6", oa(100_000, 3000, cache_write=75_000), None, 535_000_000),
    # 15000*4 + 10000*0.4 + 50000*5 (30m) + 25000*10 (12h) + 3000*20 = 0.06+0.004+0.25+0.25+0.06
    (
        "openai 12h cache writes",
        "gpt-5.6",
        resp_ttl(100_000, 3000, 10_000, 50_000, 25_000),
        None,
        624_000_000,
    ),
    # image output at 120, text output at 12: 1000*2 + 710*12 + 1290*120 = 0.002 + 0.00852 + 0.1548
    (
        "gemini image output",
        "vertex_ai/deep-research-pro-preview-12-2025",
        gm(1000, 2000, image_out=1290),
        None,
        165_320_000,
    ),
    # Anthropic US-only inference x1.1: (1000*5 + 500*25) * 1.1 = 0.0175 * 1.1
    ("anthropic inference_geo us", "claude-opus-4-6", an(1000, 500, geo="us"), None, 19_250_000),
    ("anthropic inference_geo global", "claude-opus-4-6", an(1000, 500, geo="global"), None, 17_500_000),
    # fast mode x2 and US-only x1.1: 0.0175 * 2 * 1.1
    ("anthropic speed fast", "claude-opus-5", an(1000, 500, geo="us", speed="fast"), None, 38_500_000),
    # Bedrock Converse, cache beside inputTokens: 1000*3 + 5000*0.30 + 2000*3.75 + 500*15
    (
        "bedrock converse cache",
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        Usage.from_bedrock(
            {
                "inputTokens": 1000,
                "outputTokens": 500,
                "cacheReadInputTokens": 5000,
                "cacheWriteInputTokens": 2000,
                "totalTokens": 8500,
            }
        ),
        None,
        19_500_000,
    ),
]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.builtin()


@pytest.mark.parametrize(
    ("model", "usage", "tier", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_cost_matches_hand_computation(
    catalog: Catalog, model: str, usage: Usage, tier: str | None, expected: int
) -> None:
    cost = cost_of(usage, catalog.price(model), service_tier=tier)
    assert cost.total == Money(expected), cost.as_dict()
    assert sum(v for k, v in cost.breakdown().items() if k != "total") <= cost.total.to_decimal()


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_cached_tokens_same_cost_in_both_conventions(catalog: Catalog) -> None:
    # 6000 prompt tokens of which 5000 read from cache, said the OpenAI way and the Anthropic way.
    openai_way = oa(6000, 100, cached=5000)
    anthropic_way = an(1000, 100, read=5000)
    assert openai_way == anthropic_way
    price = catalog.price("claude-sonnet-4-5")
    assert (
        cost_of(openai_way, price).total == cost_of(anthropic_way, price).total == Money(6_000_000)
    )  # 1000*3 + 5000*0.30 + 100*15


def test_breakdown_parts(catalog: Catalog) -> None:
    cost = cost_of(an(1000, 500, read=5000, write=2000), catalog.price("claude-sonnet-4-5"))
    parts = cost.as_dict()
    assert parts == {
        "input": "0.003",
        "cache_read": "0.0015",
        "cache_write": "0.0075",
        "output": "0.0075",
        "reasoning": "0",
        "total": "0.0195",
    }


# -- issue 10 section 2: multipliers a request's endpoint selects ---------------------------


@pytest.mark.parametrize(
    ("model", "options", "expected"),
    [
        # OpenAI regional processing (eu./us.api.openai.com) x1.1: (1000*2.5 + 500*15) * 1.1
        ("gpt-5.4", {"data_residency": "eu"}, 11_000_000),
        ("gpt-5.4", {"data_residency": "us"}, 11_000_000),
        ("gpt-5.4", {"data_residency": "fedramp"}, 11_000_000),
        ("gpt-5.4", {}, 10_000_000),
        # Vertex non-global endpoint x1.1: (1000*3 + 500*15) * 1.1
        ("vertex_ai/claude-sonnet-4-5", {"endpoint_location": "us-east5"}, 11_550_000),
        ("vertex_ai/claude-sonnet-4-5", {"endpoint_location": "global"}, 10_500_000),
        # a model without a multiplier for the condition: list price
        ("gpt-4o-mini", {"data_residency": "eu"}, 450_000),  # 1000*0.15 + 500*0.60
    ],
)
def test_endpoint_multipliers(catalog: Catalog, model: str, options: dict[str, str], expected: int) -> None:
    cost = cost_of(oa(1000, 500), catalog.price(model), **options)
    assert cost.total == Money(expected), cost.as_dict()
    assert sum(v for k, v in cost.breakdown().items() if k != "total") <= cost.total.to_decimal()


def test_multiplier_rounds_up_once(catalog: Catalog) -> None:
    # gpt-5 batch cache read 0.0625 per 1M = 62.5 nano-USD a token, x1.1 FedRAMP = 68.75 -> 69
    cost = cost_of(oa(1, 0, cached=1), catalog.price("gpt-5"), service_tier="batch", data_residency="fedramp")
    assert cost.total == Money(69)


def test_12h_write_without_its_own_rate_falls_back_to_the_1h_rate(catalog: Catalog) -> None:
    # claude-sonnet-4-5 has no 12-hour rate: the 1-hour one (6) covers it, never $0.
    usage = Usage(input_tokens=1000, cache_write_12h_tokens=1000)
    assert cost_of(usage, catalog.price("claude-sonnet-4-5")).total == Money(6_000_000)


# -- issue 10 section 1: hosted tool fees billed per use ------------------------------------


def resp_tools(inp: int, out: int, output: list[dict[str, Any]]) -> Usage:
    """A Responses answer: hosted tool calls are its output items, not usage fields."""
    usage = {
        "input_tokens": inp,
        "output_tokens": out,
        "input_tokens_details": {},
        "output_tokens_details": {},
    }
    return Usage.from_response({"object": "response", "output": output, "usage": usage})


SEARCH = {"type": "web_search_call", "status": "completed", "action": {"type": "search"}}


def gemini_grounded(prompt: int, candidates: int, queries: int) -> Usage:
    return Usage.from_response(
        {
            "candidates": [{"groundingMetadata": {"webSearchQueries": [f"q{i}" for i in range(queries)]}}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": candidates},
        }
    )


TOOL_CASES: list[tuple[str, str, Usage, dict[str, str], int]] = [
    # Anthropic web search $10 per 1,000: 1000*3 + 500*15 per 1M + 3 searches x $0.01
    (
        "claude-sonnet-4-5 3 searches",
        "claude-sonnet-4-5",
        Usage.from_anthropic(
            {"input_tokens": 1000, "output_tokens": 500, "server_tool_use": {"web_search_requests": 3}}
        ),
        {},
        10_500_000 + 30_000_000,
    ),
    # web fetch is free beyond its tokens (the correction's "0")
    (
        "claude-sonnet-4-5 fetches",
        "claude-sonnet-4-5",
        Usage.from_anthropic(
            {"input_tokens": 1000, "output_tokens": 500, "server_tool_use": {"web_fetch_requests": 4}}
        ),
        {},
        10_500_000,
    ),
    # gpt-5 ($1.25/$10): 2 searches x $0.01 + 2 code_interpreter calls in one 1g container $0.03
    # + 1 file search $0.0025
    (
        "gpt-5 responses tools",
        "gpt-5",
        resp_tools(
            1000,
            500,
            [
                SEARCH,
                SEARCH,
                {"type": "code_interpreter_call", "container_id": "cntr_1", "status": "completed"},
                {"type": "code_interpreter_call", "container_id": "cntr_1", "status": "completed"},
                {"type": "file_search_call", "queries": ["q"], "status": "completed"},
            ],
        ),
        {},
        1_250_000 + 5_000_000 + 20_000_000 + 30_000_000 + 2_500_000,
    ),
    # two containers: two sessions (Azure's container is $0.033)
    (
        "azure two containers",
        "azure/gpt-4.1",
        resp_tools(
            0,
            0,
            [
                {"type": "code_interpreter_call", "container_id": "cntr_1"},
                {"type": "code_interpreter_call", "container_id": "cntr_2"},
            ],
        ),
        {},
        66_000_000,
    ),
    # a search model bills one search on every request, reported or not: gpt-4o-search-preview
    # $2.50/$10 + $0.025
    ("gpt-4o-search-preview", "gpt-4o-search-preview", oa(1000, 500), {}, 7_500_000 + 25_000_000),
    # Perplexity's request fee at the default size, medium: sonar $1/$1 + $0.008
    ("perplexity/sonar", "perplexity/sonar", oa(1000, 500), {}, 1_500_000 + 8_000_000),
    # Gemini 2.5 grounding is billed per grounded prompt ($35 per 1,000): 3 queries, one fee
    (
        "gemini-2.5-flash grounded",
        "gemini-2.5-flash",
        gemini_grounded(1000, 500, 3),
        {},
        1_550_000 + 35_000_000,
    ),
    # Gemini 3 per search query ($14 per 1,000): 3 queries, three fees ($0.50/$3 per 1M)
    (
        "gemini-3-flash-preview grounded",
        "gemini-3-flash-preview",
        gemini_grounded(1000, 500, 3),
        {},
        2_000_000 + 42_000_000,
    ),
    # an uplift applies to the whole bill, the fee included: (10_500_000 + 10_000_000) x 1.1,
    # on claude-opus-5 ($5/$25): (1000*5 + 500*25 = 17_500_000 + 10_000_000) x 1.1
    (
        "claude-opus-5 us search",
        "claude-opus-5",
        Usage.from_anthropic(
            {
                "input_tokens": 1000,
                "output_tokens": 500,
                "inference_geo": "us",
                "server_tool_use": {"web_search_requests": 1},
            }
        ),
        {},
        30_250_000,
    ),
]


@pytest.mark.parametrize(
    ("model", "usage", "options", "expected"), [c[1:] for c in TOOL_CASES], ids=[c[0] for c in TOOL_CASES]
)
def test_tool_fees_match_hand_computation(
    catalog: Catalog, model: str, usage: Usage, options: dict[str, str], expected: int
) -> None:
    cost = cost_of(usage, catalog.price(model), **options)
    assert cost.total == Money(expected), cost.as_dict()
    assert sum(v for k, v in cost.breakdown().items() if k != "total") <= cost.total.to_decimal()


def test_tool_fees_show_in_the_breakdown(catalog: Catalog) -> None:
    usage = Usage(input_tokens=1000, output_tokens=500, web_search_calls=3)
    parts = cost_of(usage, catalog.price("claude-sonnet-4-5")).as_dict()
    assert parts["web_search"] == "0.03" and parts["total"] == "0.0405"
    assert "web_search" not in cost_of(Usage(input_tokens=1000), catalog.price("claude-sonnet-4-5")).as_dict()


def test_tool_uses_without_a_fee_are_refused_not_free(catalog: Catalog) -> None:
    from spendgate.cost import ToolFeeError

    with pytest.raises(ToolFeeError, match="no web_search fee"):
        cost_of(Usage(input_tokens=10, web_search_calls=1), catalog.price("mistral/mistral-large-latest"))
