"""The community catalog converter: exact values from a hand-made sample, no network."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from spendgate.pricing import community
from spendgate.pricing.community import (
    CommunityCatalogError,
    ConvertResult,
    apply_corrections,
    build_document,
    convert_catalog,
    dump_document,
    load_community_source,
    load_corrections,
    parse_community_json,
    per_million,
    wheel_version,
)
from spendgate.pricing.schema import ModelPrice, Rates, RateTable, Tier, ToolFee

W12 = 5_000_000_000  # gpt-long-test's 12-hour cache write, 5 per 1M
FIXTURE = Path(__file__).parent / "fixtures" / "community_sample.json"
ROOT = Path(__file__).resolve().parents[2]


def sample_raw() -> dict[str, Any]:
    return parse_community_json(FIXTURE.read_bytes())


@pytest.fixture
def result() -> ConvertResult:
    return convert_catalog(sample_raw())


# Nano-USD per 1M tokens: 2.5e-06 USD a token = 2.5 USD per 1M = 2_500_000_000.
EXPECTED: dict[str, ModelPrice] = {
    "gpt-test": ModelPrice(
        name="gpt-test",
        provider="openai",
        mode="chat",
        max_output_tokens=16384,
        context_window=128000,
        standard=RateTable(Rates(input=2_500_000_000, output=10_000_000_000, cache_read=1_250_000_000)),
        service_tiers={
            # cache read not given for batch: the standard rate, never $0
            "batch": RateTable(Rates(input=1_250_000_000, output=5_000_000_000, cache_read=1_250_000_000)),
            "flex": RateTable(Rates(input=1_250_000_000, output=5_000_000_000, cache_read=625_000_000)),
            "priority": RateTable(
                Rates(input=4_250_000_000, output=17_000_000_000, cache_read=2_125_000_000)
            ),
        },
        # search_context_cost_per_query: USD per search by search_context_size, in nano-USD
        tool_fees={"web_search": ToolFee(sizes={"low": 30_000_000, "high": 50_000_000})},
    ),
    "claude-test": ModelPrice(
        name="claude-test",
        provider="anthropic",
        mode="chat",
        max_output_tokens=64000,
        context_window=200000,
        standard=RateTable(
            Rates(
                input=3_000_000_000,
                output=15_000_000_000,
                cache_read=300_000_000,
                cache_write=3_750_000_000,
                cache_write_1h=6_000_000_000,
            )
        ),
        service_tiers={
            "batch": RateTable(
                Rates(
                    input=1_500_000_000,
                    output=7_500_000_000,
                    cache_read=150_000_000,
                    cache_write=1_875_000_000,
                    cache_write_1h=6_000_000_000,
                )
            )
        },
    ),
    "claude-1m-test": ModelPrice(
        name="claude-1m-test",
        provider="bedrock_converse",
        mode="chat",
        max_output_tokens=64000,
        context_window=1000000,
        standard=RateTable(
            Rates(
                input=3_000_000_000,
                output=15_000_000_000,
                cache_read=300_000_000,
                cache_write=3_750_000_000,
                cache_write_1h=6_000_000_000,
            ),
            (
                Tier(
                    200000,
                    Rates(
                        input=6_000_000_000,
                        output=22_500_000_000,
                        cache_read=600_000_000,
                        cache_write=7_500_000_000,
                        cache_write_1h=12_000_000_000,
                    ),
                ),
            ),
        ),
        service_tiers={
            "batch": RateTable(
                Rates(
                    input=1_500_000_000,
                    output=7_500_000_000,
                    cache_read=300_000_000,
                    cache_write=3_750_000_000,
                    cache_write_1h=6_000_000_000,
                ),
                (
                    # input/output above 200k given for batch; the cache rates are not, and
                    # the standard table raises them above 200k: never understated.
                    Tier(
                        200000,
                        Rates(
                            input=3_000_000_000,
                            output=11_250_000_000,
                            cache_read=600_000_000,
                            cache_write=7_500_000_000,
                            cache_write_1h=12_000_000_000,
                        ),
                    ),
                ),
            )
        },
    ),
    "gemini-test": ModelPrice(
        name="gemini-test",
        provider="vertex_ai-language-models",
        mode="chat",
        max_output_tokens=65535,
        context_window=1048576,
        standard=RateTable(
            Rates(
                input=1_250_000_000, output=10_000_000_000, cache_read=125_000_000, reasoning=10_000_000_000
            ),
            # reasoning priced as output in the base: it follows the tier's output
            (
                Tier(
                    200000,
                    Rates(
                        input=2_500_000_000,
                        output=15_000_000_000,
                        cache_read=250_000_000,
                        reasoning=15_000_000_000,
                    ),
                ),
            ),
        ),
        service_tiers={
            "batch": RateTable(
                Rates(
                    input=625_000_000, output=5_000_000_000, cache_read=125_000_000, reasoning=5_000_000_000
                ),
                (
                    Tier(
                        200000,
                        Rates(
                            input=1_250_000_000,
                            output=7_500_000_000,
                            cache_read=250_000_000,
                            reasoning=7_500_000_000,
                        ),
                    ),
                ),
            ),
            "priority": RateTable(
                Rates(
                    input=2_250_000_000,
                    output=18_000_000_000,
                    cache_read=125_000_000,
                    reasoning=18_000_000_000,
                ),
                (
                    # no priority long-context price at all: the higher of priority base
                    # and standard long-context rate, for each rate the standard raises
                    Tier(
                        200000,
                        Rates(
                            input=2_500_000_000,
                            output=18_000_000_000,
                            cache_read=250_000_000,
                            reasoning=18_000_000_000,
                        ),
                    ),
                ),
            ),
        },
    ),
    "gpt-long-test": ModelPrice(
        name="gpt-long-test",
        provider="openai",
        mode="responses",
        max_output_tokens=128000,
        context_window=1050000,
        # the 12-hour write (5) is carried, and kept by the tiers that do not price it apart
        standard=RateTable(
            Rates(input=2_500_000_000, output=15_000_000_000, cache_read=250_000_000, cache_write_12h=W12),
            (
                Tier(
                    272000,
                    Rates(
                        input=5_000_000_000,
                        output=22_500_000_000,
                        cache_read=500_000_000,
                        cache_write_12h=W12,
                    ),
                ),
            ),
        ),
        service_tiers={
            "priority": RateTable(
                Rates(
                    input=5_000_000_000, output=30_000_000_000, cache_read=250_000_000, cache_write_12h=W12
                ),
                (
                    Tier(
                        272000,
                        Rates(
                            input=10_000_000_000,
                            output=45_000_000_000,
                            cache_read=500_000_000,
                            cache_write_12h=2 * W12,
                        ),
                    ),
                ),
            )
        },
    ),
    "audio-test": ModelPrice(
        name="audio-test",
        provider="openai",
        mode="chat",
        max_output_tokens=16384,
        context_window=128000,
        standard=RateTable(
            Rates(
                input=2_500_000_000,
                output=10_000_000_000,
                reasoning=12_000_000_000,
                audio_input=40_000_000_000,
                audio_output=80_000_000_000,
            )
        ),
    ),
    "dashscope/qwen-tiered-test": ModelPrice(
        name="dashscope/qwen-tiered-test",
        provider="dashscope",
        mode="chat",
        max_output_tokens=32768,
        context_window=252000,
        standard=RateTable(
            Rates(input=400_000_000, output=1_200_000_000, reasoning=4_000_000_000),
            (
                Tier(
                    32000,
                    Rates(
                        input=1_200_000_000,
                        output=3_600_000_000,
                        cache_read=240_000_000,
                        reasoning=12_000_000_000,
                    ),
                ),
                # a range is all-or-nothing: its missing reasoning rate is its own output
                Tier(128000, Rates(input=2_000_000_000, output=6_000_000_000, reasoning=6_000_000_000)),
            ),
        ),
    ),
    "xai/grok-test": ModelPrice(
        name="xai/grok-test",
        provider="xai",
        mode="chat",
        context_window=256000,
        # xai thresholds are inclusive: a prompt of exactly 128000 tokens is "above 128k"
        standard=RateTable(
            Rates(input=2_000_000_000, output=6_000_000_000),
            (Tier(127999, Rates(input=4_000_000_000, output=12_000_000_000)),),
        ),
    ),
    "tiny-embedding-test": ModelPrice(
        name="tiny-embedding-test",
        provider="openai",
        mode="embedding",
        context_window=8191,
        standard=RateTable(Rates(input=110_000_000, output=0)),
    ),
    "float-artifact-test": ModelPrice(
        name="float-artifact-test",
        provider="databricks",
        mode="chat",
        standard=RateTable(Rates(input=100_000_000, output=300_020_000)),
    ),
    "ollama/free-local-test": ModelPrice(
        name="ollama/free-local-test",
        provider="ollama",
        mode="completion",
        context_window=8192,
        standard=RateTable(Rates(input=0, output=0)),
    ),
    "modeless-test": ModelPrice(
        name="modeless-test",
        provider="fireworks_ai",
        mode="chat",
        standard=RateTable(Rates(input=200_000_000, output=200_000_000)),
    ),
    "modeless-embedding-test": ModelPrice(
        name="modeless-embedding-test",
        provider="fireworks_ai-embedding-models",
        mode="embedding",
        standard=RateTable(Rates(input=8_000_000, output=0)),
    ),
    "legacy-max-tokens-test": ModelPrice(
        name="legacy-max-tokens-test",
        provider="text-completion-openai",
        mode="completion",
        max_output_tokens=4096,
        context_window=16385,
        standard=RateTable(Rates(input=1_500_000_000, output=2_000_000_000)),
    ),
}


# -- conversion -----------------------------------------------------------------
def test_converts_the_sample_to_exactly_the_expected_prices(result: ConvertResult) -> None:
    assert sorted(result.models) == sorted(EXPECTED)
    for name, expected in EXPECTED.items():
        assert result.models[name] == expected, name


def test_converted_models_round_trip_through_the_data_shape(result: ConvertResult) -> None:
    for name, price in result.models.items():
        assert ModelPrice.from_data(name, json.loads(json.dumps(price.to_data()))) == price


def test_skipped_entries_are_counted_not_listed(result: ConvertResult) -> None:
    assert result.skipped == {
        "documentation entry": 1,
        "mode image_generation": 1,
        "no standard input or output token price": 2,
        "alias of a model not kept": 1,
    }
    assert result.examples["no standard input or output token price"] == [
        "no-price-test",
        "priority-only-test",
    ]
    assert result.notes["float digits rounded to 15 significant"] == 2
    assert result.notes["ignored price key input_cost_per_token_ultrafast"] == 1
    assert result.notes["ignored price key cache_creation_input_token_cost_above_12hr"] == 0  # carried now
    assert result.notes["batch long-context rate missing, standard long-context rate used"] == 2
    summary = result.summary()
    assert summary[0] == "models kept: 14 across 11 providers"
    assert "  openai: 4" in summary
    assert "aliases: 2" in summary
    assert "skipped: 5" in summary
    assert len(summary) < 40


def test_aliases_are_resolved_and_kept_only_for_kept_models(result: ConvertResult) -> None:
    assert result.aliases == {"gpt-test-latest": "gpt-test", "gpt-test-chain": "gpt-test"}


def test_long_context_thresholds_price_the_whole_request(result: ConvertResult) -> None:
    gemini = result.models["gemini-test"]
    assert gemini.rates(200_000).input == 1_250_000_000
    assert gemini.rates(200_001).input == 2_500_000_000
    assert gemini.rates(200_001, "batch").input == 1_250_000_000
    grok = result.models["xai/grok-test"]
    assert grok.rates(127_999).input == 2_000_000_000
    assert grok.rates(128_000).input == 4_000_000_000
    qwen = result.models["dashscope/qwen-tiered-test"]
    assert [qwen.rates(n).input for n in (32_000, 32_001, 128_000, 128_001)] == [
        400_000_000,
        1_200_000_000,
        1_200_000_000,
        2_000_000_000,
    ]


def test_threshold_multiplier_k_is_1000() -> None:
    raw = {
        "m": {
            "mode": "chat",
            "input_cost_per_token": Decimal("1e-06"),
            "output_cost_per_token": Decimal("2e-06"),
            "input_cost_per_token_above_128k_tokens": Decimal("2e-06"),
            "input_cost_per_token_above_256k_tokens": Decimal("3e-06"),
            "input_cost_per_token_above_32000_tokens": Decimal("1.5e-06"),
        }
    }
    tiers = convert_catalog(raw).models["m"].standard.tiers
    assert [(t.above, t.rates.input) for t in tiers] == [
        (32000, 1_500_000_000),
        (128000, 2_000_000_000),
        (256000, 3_000_000_000),
    ]


# -- exactness --------------------------------------------------------------------
def test_prices_keep_their_exact_decimal_text() -> None:
    assert per_million(Decimal("1.1e-07"), where="x") == ("0.11", False)
    assert per_million(Decimal("2.5e-06"), where="x") == ("2.5", False)
    assert per_million(Decimal("3e-05"), where="x") == ("30", False)
    assert per_million(Decimal("0.0"), where="x") == ("0", False)
    assert per_million("4e-07", where="x") == ("0.4", False)
    assert per_million(0, where="x") == ("0", False)
    # a float's decimal expansion is cleaned to what the float meant
    assert per_million(Decimal("1.0000000000000001e-07"), where="x") == ("0.1", True)


def test_parsing_never_produces_a_float() -> None:
    def walk(value: object) -> Iterator[object]:
        if isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)
        else:
            yield value

    values = list(walk(sample_raw()))
    assert not any(isinstance(v, float) for v in values)
    assert Decimal("1.1e-07") in values
    # the float nearest 1.1e-07 is not 1.1e-07: the text is kept, never the float
    assert Decimal(1.1e-07) != Decimal("1.1e-07")  # noqa: RUF032 - the point of the test


def test_float_prices_are_refused_naming_entry_and_field() -> None:
    raw = json.loads(FIXTURE.read_text())  # plain json: floats
    with pytest.raises(CommunityCatalogError, match=r"gpt-test\.input_cost_per_token: .*float"):
        convert_catalog(raw, strict=True)


@pytest.mark.parametrize(
    ("value", "problem"),
    [("abc", "cannot read"), (Decimal("-1e-06"), "negative"), (True, "boolean"), ([1], "list")],
)
def test_bad_prices_name_the_entry_and_field(value: object, problem: str) -> None:
    raw = sample_raw()
    raw["bad-test"] = {
        "mode": "chat",
        "input_cost_per_token": value,
        "output_cost_per_token": Decimal("1e-06"),
    }
    with pytest.raises(CommunityCatalogError, match=rf"bad-test\.input_cost_per_token: .*{problem}"):
        convert_catalog(raw, strict=True)
    lenient = convert_catalog(raw)
    assert "bad-test" not in lenient.models
    assert lenient.skipped["invalid entry"] == 1
    assert lenient.examples["invalid entry"][0].startswith("bad-test: bad-test.input_cost_per_token")


def test_bad_tiered_pricing_names_the_range() -> None:
    raw = {
        "m": {"mode": "chat", "tiered_pricing": [{"range": "all", "input_cost_per_token": Decimal("1e-06")}]}
    }
    with pytest.raises(CommunityCatalogError, match=r"m\.tiered_pricing\[0\]\.range"):
        convert_catalog(raw, strict=True)


def test_not_json_or_nan_is_refused() -> None:
    with pytest.raises(CommunityCatalogError, match="not a JSON document"):
        parse_community_json(b"{nope")
    with pytest.raises(CommunityCatalogError, match="NaN is not a price"):
        parse_community_json(b'{"m": {"input_cost_per_token": NaN}}')
    with pytest.raises(CommunityCatalogError, match="expected a JSON object"):
        parse_community_json(b"[]")


# -- corrections ------------------------------------------------------------------
def test_corrections_patch_create_delete_and_alias(result: ConvertResult) -> None:
    corrections = {
        "_comment": "test",
        "models": {
            "claude-test": {
                "why": "1h write",
                "prices": {"cache_write_1h": "7"},
                "batch": {"cache_write_1h": "3"},
            },
            "modeless-embedding-test": {"why": "really an embedding model", "mode": "completion"},
            "new-test": {"why": "missing", "provider": "acme", "prices": {"input": "1", "output": "2"}},
            "image-test": {"why": "gone upstream", "mode": "chat"},
            "modeless-test": None,
            "gpt-test": {"why": "same as upstream", "prices": {"input": "2.5"}},
        },
        "aliases": {
            "claude-latest-test": {"target": "claude-test", "why": "typed by users"},
            "gpt-alias-test": {"target": "gpt-test-latest", "why": "alias of an alias"},
            "gpt-test-chain": None,
            "gone-test": {"target": "no-such-model", "why": "stale"},
        },
    }
    applied = apply_corrections(result, corrections)
    assert applied == 7
    assert result.corrections_applied == 7
    claude = result.models["claude-test"]
    assert claude.standard.base.cache_write_1h == 7_000_000_000
    assert claude.service_tiers["batch"].base.cache_write_1h == 3_000_000_000
    assert claude.standard.base.cache_write == 3_750_000_000  # the rest untouched
    assert result.models["modeless-embedding-test"].mode == "completion"
    assert result.models["new-test"] == ModelPrice(
        name="new-test", provider="acme", standard=RateTable(Rates(input=1_000_000_000, output=2_000_000_000))
    )
    assert "modeless-test" not in result.models
    assert "image-test" not in result.models  # a patch does not create a model without prices
    assert result.aliases == {
        "gpt-test-latest": "gpt-test",
        "claude-latest-test": "claude-test",
        "gpt-alias-test": "gpt-test",
    }
    assert result.notes["stale correction: already in the community data"] == 1
    assert result.notes["stale correction: model not in the catalog"] == 1
    assert result.notes["stale correction: alias target not in the catalog"] == 1


def test_corrections_need_a_why_and_valid_data(result: ConvertResult) -> None:
    with pytest.raises(CommunityCatalogError, match=r"corrections\.models\['gpt-test'\]\.why"):
        apply_corrections(result, {"models": {"gpt-test": {"mode": "chat"}}})
    with pytest.raises(CommunityCatalogError, match=r"corrections\.aliases\['a'\]\.why"):
        apply_corrections(result, {"aliases": {"a": {"target": "gpt-test"}}})
    with pytest.raises(CommunityCatalogError, match=r"corrections\.aliases\['a'\]: expected"):
        apply_corrections(result, {"aliases": {"a": "gpt-test"}})
    with pytest.raises(ValueError, match=r"corrections\.models\['gpt-test'\]\.prices\.input"):
        apply_corrections(result, {"models": {"gpt-test": {"why": "x", "prices": {"input": "lots"}}}})
    with pytest.raises(CommunityCatalogError, match="unknown key"):
        apply_corrections(result, {"model": {}})


def test_a_correction_that_aliases_a_model_name_is_stale(result: ConvertResult) -> None:
    assert apply_corrections(result, {"aliases": {"claude-test": {"target": "gpt-test", "why": "x"}}}) == 0
    assert result.notes["stale correction: alias is a model now"] == 1


def test_the_shipped_corrections_file_is_valid() -> None:
    corrections = load_corrections()
    assert set(corrections) == {"_comment", "models", "aliases", "tool_fees"}
    assert (
        5 <= len(corrections["models"]) + len(corrections["aliases"]) <= 40
    )  # small enough to review by hand
    fees = corrections["tool_fees"]
    for entry in [*corrections["models"].values(), *corrections["aliases"].values(), *fees.values()]:
        assert isinstance(entry, dict)
        assert len(entry["why"]) > 20
    # on a catalog that lacks their models, every one is a counted stale note, not an error; the
    # provider-wide tool fees reach the sample's openai and anthropic models (not azure's: none)
    sample = convert_catalog(sample_raw())
    assert apply_corrections(sample, corrections) == 2
    stale = sum(n for what, n in sample.notes.items() if what.startswith("stale correction"))
    assert stale == len(corrections["models"]) + len(corrections["aliases"]) + len(fees) - 2
    assert sample.models["gpt-long-test"].tool_fees["file_search"] == ToolFee(fee=2_500_000)
    assert sample.models["claude-test"].tool_fees["web_fetch"] == ToolFee(fee=0)
    assert "file_search" not in sample.models["tiny-embedding-test"].tool_fees  # no tools there


# -- the document -------------------------------------------------------------------
def test_document_metadata_and_order(result: ConvertResult) -> None:
    data = FIXTURE.read_bytes()
    apply_corrections(
        result, {"aliases": {"a-test": {"target": "gpt-test", "why": "w"}}, "models": {"modeless-test": None}}
    )
    doc = build_document(
        result,
        origin="litellm-9.8.7-py3-none-any.whl",
        version=wheel_version("litellm-9.8.7-py3-none-any.whl"),
        sha256=community.sha256_hex(data),
        date="2025-01-02",
    )
    assert doc["schema_version"] == 3
    assert doc["source"] == {
        "name": "model_prices_and_context_window.json",
        "origin": "litellm-9.8.7-py3-none-any.whl",
        "version": "litellm 9.8.7",
        "sha256": hashlib.sha256(data).hexdigest(),
        "date": "2025-01-02",
    }
    assert doc["corrections"] == 2
    assert list(doc["models"]) == sorted(doc["models"])
    assert list(doc["aliases"]) == sorted(doc["aliases"])
    assert doc["models"]["gpt-test"] == {
        "provider": "openai",
        "mode": "chat",
        "max_output_tokens": 16384,
        "context_window": 128000,
        "prices": {"input": "2.5", "output": "10", "cache_read": "1.25"},
        "batch": {"input": "1.25", "output": "5", "cache_read": "1.25"},
        "flex": {"input": "1.25", "output": "5", "cache_read": "0.625"},
        "priority": {"input": "4.25", "output": "17", "cache_read": "2.125"},
        "tool_fees": {"web_search": {"high": "0.05", "low": "0.03"}},
    }
    text = dump_document(doc)
    assert json.loads(text) == doc
    lines = text.splitlines()
    assert any(line.startswith('  "gpt-test": {"provider":"openai"') for line in lines)
    assert len(lines) == len(doc["models"]) + len(doc["aliases"]) + 9


def test_wheel_version_from_file_name() -> None:
    assert wheel_version("litellm-1.110.2-cp310-abi3-manylinux_2_28_x86_64.whl") == "litellm 1.110.2"
    assert wheel_version("/tmp/x/litellm-1.80.0-py3-none-any.whl") == "litellm 1.80.0"
    assert wheel_version("prices.json") == "unknown"


# -- sources ------------------------------------------------------------------------
def make_wheel(path: Path, member: str = "litellm/model_prices_and_context_window_backup.json") -> bytes:
    data = FIXTURE.read_bytes()
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("litellm/__init__.py", "")
        wheel.writestr(member, data)
    return data


def test_load_from_a_json_path() -> None:
    data, origin, version = load_community_source(str(FIXTURE))
    assert data == FIXTURE.read_bytes()
    assert origin == str(FIXTURE)
    assert version == "unknown"


def test_load_from_a_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "litellm-1.2.3-py3-none-any.whl"
    expected = make_wheel(wheel)
    data, origin, version = load_community_source(str(wheel))
    assert (data, origin, version) == (expected, "litellm-1.2.3-py3-none-any.whl", "litellm 1.2.3")
    assert sorted(convert_catalog(parse_community_json(data)).models) == sorted(EXPECTED)


def test_load_errors_name_the_source(tmp_path: Path) -> None:
    wheel = tmp_path / "litellm-1.2.3-py3-none-any.whl"
    make_wheel(wheel, member="litellm/other.json")
    with pytest.raises(CommunityCatalogError, match=r"litellm-1\.2\.3-py3-none-any\.whl: the wheel has none"):
        load_community_source(str(wheel))
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CommunityCatalogError, match="not a readable wheel"):
        load_community_source(str(broken))
    with pytest.raises(CommunityCatalogError, match=r"missing\.json: cannot read"):
        load_community_source(str(tmp_path / "missing.json"))


class FakeResponse(io.BytesIO):
    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_load_from_a_url_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    wheel_bytes_source = make_wheel(wheel)
    served = {
        "https://example.invalid/prices.json": FIXTURE.read_bytes(),
        "https://example.invalid/litellm-2.0.0-py3-none-any.whl": wheel.read_bytes(),
    }
    seen: list[tuple[str, float]] = []

    def fake_urlopen(url: str, timeout: float) -> FakeResponse:
        seen.append((url, timeout))
        if url not in served:
            raise OSError("connection refused")
        return FakeResponse(served[url])

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    data, origin, version = load_community_source("https://example.invalid/prices.json")
    assert (data, origin, version) == (FIXTURE.read_bytes(), "https://example.invalid/prices.json", "unknown")
    data, _, version = load_community_source("https://example.invalid/litellm-2.0.0-py3-none-any.whl")
    assert (data, version) == (wheel_bytes_source, "litellm 2.0.0")
    with pytest.raises(CommunityCatalogError, match=r"https://example\.invalid/gone\.json: cannot download"):
        load_community_source("https://example.invalid/gone.json")
    assert all(timeout > 0 for _, timeout in seen)


# -- the update script ----------------------------------------------------------------
def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_prices", ROOT / "scripts" / "update_prices.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_script_writes_the_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "prices.json"
    script = load_script()
    assert script.main(["--from", str(FIXTURE), "--out", str(out), "--date", "2025-01-02"]) == 0
    doc = json.loads(out.read_text())
    assert doc["source"]["date"] == "2025-01-02"
    assert doc["source"]["sha256"] == hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    assert sorted(doc["models"]) == sorted(EXPECTED)
    printed = capsys.readouterr().out
    assert "models kept: 14" in printed
    assert "corrections applied: 2" in printed  # the shipped provider-wide tool fees


def test_update_script_downloads_the_wheel_with_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        make_wheel(Path(command[command.index("-d") + 1]) / "litellm-3.1.4-py3-none-any.whl")
        return subprocess.CompletedProcess(command, 0, "", "")

    script = load_script()
    monkeypatch.setattr(script.subprocess, "run", fake_run)
    out = tmp_path / "prices.json"
    assert script.main(["--out", str(out), "--date", "2025-01-02"]) == 0
    assert calls and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    doc = json.loads(out.read_text())
    assert doc["source"]["version"] == "litellm 3.1.4"
    assert doc["source"]["origin"] == "litellm-3.1.4-py3-none-any.whl"


def test_update_script_refuses_a_bad_date(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        load_script().main(
            ["--from", str(FIXTURE), "--out", str(tmp_path / "p.json"), "--date", "02/01/2025"]
        )


def test_convert_source_in_one_call() -> None:
    doc, result = community.convert_source(str(FIXTURE), corrections={}, date="2025-01-02")
    assert doc["corrections"] == 0
    assert set(doc["models"]) == set(result.models) == set(EXPECTED)
    assert copy.deepcopy(doc) == json.loads(dump_document(doc))


# -- issue 10 section 2: 12-hour writes, image output, multipliers ------------------------
def test_12h_cache_writes_and_image_output_rates_are_carried() -> None:
    raw = {
        "m": {
            "litellm_provider": "openai",
            "mode": "chat",
            "input_cost_per_token": Decimal("4e-06"),
            "output_cost_per_token": Decimal("2e-05"),
            "cache_creation_input_token_cost": Decimal("5e-06"),
            "cache_creation_input_token_cost_above_12hr": Decimal("1e-05"),
            "cache_creation_input_token_cost_above_12hr_above_272k_tokens": Decimal("2e-05"),
            "cache_creation_input_token_cost_above_12hr_priority": Decimal("2e-05"),
            "input_cost_per_token_priority": Decimal("8e-06"),
            "output_cost_per_image_token": Decimal("1.2e-04"),
        }
    }
    result = convert_catalog(raw, strict=True)
    price = result.models["m"]
    assert price.standard.base.cache_write_12h == 10_000_000_000
    assert price.standard.base.image_output == 120_000_000_000
    assert price.rates(272_001).cache_write_12h == 20_000_000_000
    assert price.rates(1, "priority").cache_write_12h == 20_000_000_000
    assert not any("12hr" in note or "image_token" in note for note in result.notes)
    data = price.to_data()
    assert data["prices"]["cache_write_12h"] == "10"
    assert data["prices"]["image_output"] == "120"
    assert ModelPrice.from_data("m", data) == price


def test_missing_12h_and_image_rates_fall_back_to_their_covering_rates() -> None:
    rates = Rates(input=3, output=15, cache_write=4, cache_write_1h=6)
    assert rates.cache_write_12h_rate() == 6  # the 1-hour write covers a longer one
    assert rates.image_output_rate() == 15  # image output is output
    assert Rates(input=3, output=15).cache_write_12h_rate() == 3  # down to input, never $0


def test_multipliers_are_carried_from_the_community_data() -> None:
    raw = {
        "claude": {
            "litellm_provider": "anthropic",
            "mode": "chat",
            "input_cost_per_token": Decimal("5e-06"),
            "output_cost_per_token": Decimal("2.5e-05"),
            "provider_specific_entry": {"us": Decimal("1.1"), "fast": Decimal("2.0")},
        },
        "gpt": {
            "litellm_provider": "openai",
            "mode": "chat",
            "input_cost_per_token": Decimal("2.5e-06"),
            "output_cost_per_token": Decimal("1.5e-05"),
            "regional_processing_uplift_multiplier_eu": Decimal("1.1"),
            "regional_processing_uplift_multiplier_us": Decimal("1.1"),
            "fedramp_uplift_multiplier": Decimal("1.1"),
        },
        "vertex": {
            "litellm_provider": "vertex_ai-anthropic_models",
            "mode": "chat",
            "input_cost_per_token": Decimal("3e-06"),
            "output_cost_per_token": Decimal("1.5e-05"),
            "regional_endpoint_uplift_multiplier": Decimal("1.1"),
        },
        "azure-realtime": {
            "litellm_provider": "azure",
            "mode": "chat",
            "input_cost_per_token": Decimal("1e-06"),
            "output_cost_per_token": Decimal("1e-06"),
            "provider_specific_entry": {"realtime_ga_only": 1},
        },
    }
    models = convert_catalog(raw, strict=True).models
    assert models["claude"].multipliers == {"inference_geo": {"us": "1.1"}, "speed": {"fast": "2"}}
    assert models["gpt"].multipliers == {"data_residency": {"eu": "1.1", "fedramp": "1.1", "us": "1.1"}}
    assert models["vertex"].multipliers == {"endpoint_location": {"regional": "1.1"}}
    assert models["azure-realtime"].multipliers == {}
    for price in models.values():
        assert ModelPrice.from_data(price.name, price.to_data()) == price
    assert models["claude"].to_data()["multipliers"] == {
        "inference_geo": {"us": "1.1"},
        "speed": {"fast": "2"},
    }


def test_multiplier_selection() -> None:
    price = ModelPrice.from_data(
        "m",
        {
            "prices": {"input": "1", "output": "1"},
            "multipliers": {
                "inference_geo": {"us": "1.1"},
                "speed": {"fast": "2"},
                "data_residency": {"eu": "1.1"},
                "endpoint_location": {"regional": "1.1"},
            },
        },
    )
    assert price.multiplier() == (1, 1)
    assert price.multiplier(inference_geo="US") == (11, 10)
    assert price.multiplier(inference_geo="global") == (1, 1)
    assert price.multiplier(speed="fast", inference_geo="us") == (22, 10)
    assert price.multiplier(data_residency="eu", endpoint_location="europe-west4") == (121, 100)
    assert price.multiplier(endpoint_location="global") == (1, 1)
    with pytest.raises(ValueError, match="multipliers"):
        ModelPrice.from_data("m", {"prices": {"input": "1"}, "multipliers": {"speed": {"fast": "0.5"}}})
    with pytest.raises(ValueError, match="multipliers"):
        ModelPrice.from_data("m", {"prices": {"input": "1"}, "multipliers": {"colour": {"red": "2"}}})


def test_old_data_files_still_load() -> None:
    # A schema-1 entry (no 12-hour rate, no image rate, no multipliers) loads unchanged.
    old = {
        "provider": "openai",
        "mode": "chat",
        "prices": {"input": "2.5", "output": "10", "cache_write_1h": "5"},
    }
    price = ModelPrice.from_data("old", old)
    assert price.multipliers == {}
    assert price.standard.base.cache_write_12h_rate() == 5_000_000_000
    assert price.to_data() == old


def test_catalog_reads_schema_1_to_3_and_refuses_a_newer_one() -> None:
    from spendgate.errors import ConfigError
    from spendgate.pricing.catalog import Catalog

    entry = {"prices": {"input": "1", "output": "2"}}
    for version in (None, 1, 2, 3):
        doc: dict[str, Any] = {"models": {"m": entry}}
        if version is not None:
            doc["schema_version"] = version
        assert "m" in Catalog.from_document(doc)
    # a version-2 reader would bill a version-3 file's tool fees at $0: it must refuse it
    with pytest.raises(ConfigError, match="schema_version 4"):
        Catalog.from_document({"schema_version": 4, "models": {"m": entry}})


# -- per-use tool fees (issue 10 section 1) -------------------------------------------------------


def test_tool_fees_are_converted_as_the_community_cost_code_reads_them() -> None:
    token = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "mode": "chat"}
    flat = {
        "search_context_size_low": 0.01,
        "search_context_size_medium": 0.01,
        "search_context_size_high": 0.01,
    }
    raw = parse_community_json(
        json.dumps(
            {
                "openai/container": {
                    "litellm_provider": "openai",
                    "mode": "chat",
                    "code_interpreter_cost_per_session": 0.03,
                },
                "gpt-x": {**token, "litellm_provider": "openai", "search_context_cost_per_query": flat},
                "gpt-x-search-preview": {
                    **token,
                    "litellm_provider": "openai",
                    "search_context_cost_per_query": {**flat, "search_context_size_high": 0.05},
                },
                "gpt-x-embed": {**token, "litellm_provider": "openai", "mode": "embedding"},
                "claude-x": {**token, "litellm_provider": "anthropic", "search_context_cost_per_query": flat},
                "gemini-2-x": {
                    **token,
                    "litellm_provider": "gemini",
                    "search_context_cost_per_query": flat,
                    "google_maps_grounding_cost_per_query": 0.025,
                },
                "gemini-3-x": {
                    **token,
                    "litellm_provider": "gemini",
                    "search_context_cost_per_query": flat,
                    "web_search_billing_unit": "per_query",
                },
                "perplexity/online-x": {
                    **token,
                    "litellm_provider": "perplexity",
                    "input_cost_per_request": 0.005,
                },
                "files-x": {**token, "litellm_provider": "other", "file_search_cost_per_1k_calls": 2.5},
                "embed-per-query-x": {
                    "output_cost_per_token": 0,
                    "input_cost_per_query": 7e-05,
                    "mode": "embedding",
                },
            }
        )
    )
    result = convert_catalog(raw)
    fees = {
        name: {t: f.to_data() for t, f in price.tool_fees.items()} for name, price in result.models.items()
    }
    assert fees == {
        # the <provider>/container session fee prices the default container of every chat model
        "gpt-x": {"web_search": "0.01", "code_interpreter": {"1g": "0.03"}},
        # a search model searches on every request, at the size the request asks for
        "gpt-x-search-preview": {
            "web_search": {"low": "0.01", "medium": "0.01", "high": "0.05", "per": "request"},
            "code_interpreter": {"1g": "0.03"},
        },
        "gpt-x-embed": {},
        "claude-x": {"web_search": "0.01"},
        # Gemini grounding: per grounded prompt unless the entry says per query
        "gemini-2-x": {
            "web_search": {"fee": "0.01", "per": "prompt"},
            "google_maps": {"fee": "0.025", "per": "prompt"},
        },
        "gemini-3-x": {"web_search": "0.01"},
        "perplexity/online-x": {"web_search": {"fee": "0.005", "per": "request"}},
        "files-x": {"file_search": "0.0025"},
    }
    # priced per query and nothing per input token: left out (refused), not kept at $0
    assert result.skipped["priced per query, not per input token"] == 1
    assert not any("search_context" in note or "per_request" in note for note in result.notes)
