"""The shipped price data: loadable, sane, broad, with known prices right."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from spendgate.pricing.schema import MODES, RATE_FIELDS, ModelPrice, Rates

DATA = Path(__file__).resolve().parents[2] / "src" / "spendgate" / "pricing" / "data" / "prices.json"


@cache
def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DATA.read_text("utf-8"))
    return doc


@cache
def models() -> dict[str, ModelPrice]:
    return {name: ModelPrice.from_data(name, data) for name, data in document()["models"].items()}


def all_rates(price: ModelPrice) -> list[Rates]:
    tables = [price.standard, *price.service_tiers.values()]
    return [rates for table in tables for rates in (table.base, *(t.rates for t in table.tiers))]


def test_document_records_its_source() -> None:
    doc = document()
    assert doc["schema_version"] == 3
    source = doc["source"]
    assert source["name"] == "model_prices_and_context_window.json"
    assert re.fullmatch(r"litellm \d+\.\d+\.\d+\S*", source["version"])
    assert re.fullmatch(r"[0-9a-f]{64}", source["sha256"])
    date.fromisoformat(source["date"])
    assert source["origin"]
    assert isinstance(doc["corrections"], int) and doc["corrections"] >= 0


def test_every_model_loads_with_sane_prices() -> None:
    assert list(document()["models"]) == sorted(document()["models"])
    for name, price in models().items():
        assert price.mode in MODES, name
        assert price.standard.base.input is not None or price.standard.base.output is not None, name
        for rates in all_rates(price):
            for field in RATE_FIELDS:
                value = getattr(rates, field)
                assert value is None or value >= 0, (name, field)
        thresholds = [t.above for t in price.standard.tiers]
        assert thresholds == sorted(set(thresholds)), name
        assert set(price.service_tiers) <= {"batch", "flex", "priority"}, name


def test_the_data_round_trips() -> None:
    for name, price in models().items():
        assert price.to_data() == document()["models"][name], name


def test_aliases_point_at_models() -> None:
    aliases = document()["aliases"]
    assert len(aliases) >= 50
    for alias, target in aliases.items():
        assert target in models(), alias
        assert alias not in models(), alias


def test_thousands_of_models_across_many_providers() -> None:
    providers = Counter(price.provider for price in models().values())
    assert len(models()) >= 1500
    assert len(providers) >= 40
    for provider in (
        "openai",
        "anthropic",
        "gemini",
        "vertex_ai-language-models",
        "azure",
        "bedrock",
        "bedrock_converse",
        "mistral",
        "deepseek",
        "xai",
        "groq",
        "together_ai",
        "fireworks_ai",
    ):
        assert providers[provider] > 0, provider


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-4o", {"input": 2_500_000_000, "output": 10_000_000_000, "cache_read": 1_250_000_000}),
        (
            "claude-sonnet-4-5",
            {
                "input": 3_000_000_000,
                "output": 15_000_000_000,
                "cache_write": 3_750_000_000,
                "cache_read": 300_000_000,
            },
        ),
    ],
)
def test_spot_check_prices(name: str, expected: dict[str, int]) -> None:
    base = models()[name].standard.base
    assert {field: getattr(base, field) for field in expected} == expected


def test_gemini_2_5_pro_long_context_tier() -> None:
    price = models()["gemini-2.5-pro"]
    assert price.standard.base.input == 1_250_000_000
    tiers = {t.above: t.rates for t in price.standard.tiers}
    assert tiers[200000].input == 2_500_000_000
    assert price.rates(200_001).input == 2_500_000_000
    assert price.rates(200_000).input == 1_250_000_000


def test_embedding_models_are_there() -> None:
    embedding = models()["text-embedding-3-small"]
    assert embedding.mode == "embedding"
    assert embedding.standard.base.input == 20_000_000


def test_shipped_corrections_are_applied() -> None:
    aliases = document()["aliases"]
    assert aliases["mistral-large-latest"] == "mistral/mistral-large-latest"
    assert (
        models()["vercel_ai_gateway/anthropic/claude-sonnet-4.5"].standard.base.cache_write_1h
        == 6_000_000_000
    )
    assert models()["vercel_ai_gateway/mistral/mistral-embed"].mode == "embedding"


def test_data_file_stays_small() -> None:
    assert DATA.stat().st_size < 2_000_000


def test_shipped_data_carries_12h_writes_image_output_and_multipliers() -> None:
    gpt = models()["gpt-5.6"]
    assert gpt.standard.base.cache_write == 5_000_000_000
    assert gpt.standard.base.cache_write_12h == 10_000_000_000
    assert gpt.multipliers["data_residency"] == {"eu": "1.1", "us": "1.1", "fedramp": "1.1"}
    assert models()["claude-opus-4-6"].multipliers == {"inference_geo": {"us": "1.1"}}
    assert models()["claude-opus-5"].multipliers == {"inference_geo": {"us": "1.1"}, "speed": {"fast": "2"}}
    assert models()["vertex_ai/claude-sonnet-4-5"].multipliers == {"endpoint_location": {"regional": "1.1"}}
    image = models()["vertex_ai/deep-research-pro-preview-12-2025"].standard.base
    assert image.image_output == 120_000_000_000
