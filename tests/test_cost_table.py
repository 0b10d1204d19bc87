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
    prompt: int, completion: int, cached: int = 0, reasoning: int = 0, audio_in: int = 0, audio_out: int = 0
) -> Usage:
    return Usage.from_openai(
        {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": audio_in},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": audio_out},
        }
    )


def an(inp: int, out: int, read: int = 0, write: int = 0, write_1h: int | None = None) -> Usage:
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
    return Usage.from_anthropic(usage)


def gm(prompt: int, candidates: int, thoughts: int = 0, cached: int = 0, audio: int = 0) -> Usage:
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
