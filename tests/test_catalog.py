from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from spendgate.errors import ConfigError, UnknownModelPriceError
from spendgate.pricing.catalog import Catalog
from spendgate.pricing.schema import ModelPrice

DOC: dict[str, Any] = {
    "schema_version": 1,
    "source": {"name": "test", "version": "t1", "date": "2026-11-01"},
    "models": {
        "gpt-4o": {
            "provider": "openai",
            "mode": "chat",
            "max_output_tokens": 16384,
            "prices": {"input": "2.5", "output": "10"},
        },
        "gpt-4o-2024-05-13": {"provider": "openai", "prices": {"input": "5", "output": "15"}},
        "claude-sonnet-4-5": {
            "provider": "anthropic",
            "prices": {"input": "3", "output": "15", "cache_write": "3.75"},
        },
        "gemini/gemini-2.5-pro": {"provider": "gemini", "prices": {"input": "1.25", "output": "10"}},
        "gemini-2.5-pro": {"provider": "vertex_ai", "prices": {"input": "1.30", "output": "10"}},
        "anthropic.claude-3-5-sonnet-20240620-v1:0": {
            "provider": "bedrock",
            "prices": {"input": "3", "output": "15"},
        },
    },
    "aliases": {"claude-sonnet-latest": "claude-sonnet-4-5"},
}


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.from_document(DOC)


@pytest.mark.parametrize(
    ("asked", "resolved"),
    [
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("openai/gpt-4o", "gpt-4o"),
        ("azure/gpt-4o", "gpt-4o"),
        ("openrouter/openai/gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),  # snapshot not priced apart: its family
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # priced apart: wins
        ("openai/gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("claude-sonnet-latest", "claude-sonnet-4-5"),  # alias
        ("anthropic/claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("gemini/gemini-2.5-pro", "gemini/gemini-2.5-pro"),  # provider entry beats the bare name
        ("vertex_ai/gemini-2.5-pro", "gemini-2.5-pro"),
        ("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    ],
)
def test_resolution(catalog: Catalog, asked: str, resolved: str) -> None:
    found = catalog.lookup(asked)
    assert found is not None
    assert found.name == resolved


def test_unknown_model_refused_with_suggestions(catalog: Catalog) -> None:
    with pytest.raises(UnknownModelPriceError) as info:
        catalog.price("gpt-4q")
    err = info.value
    assert err.model == "gpt-4q"
    assert "gpt-4o" in err.suggestions
    assert "gpt-4q" in str(err)
    assert "will not count it as free" in str(err)
    assert "prices update" in str(err)


def test_unknown_model_free_policy_warns_each_time(caplog: pytest.LogCaptureFixture) -> None:
    catalog = Catalog.from_document(DOC, unknown_model="free")
    with caplog.at_level(logging.WARNING, logger="spendgate.pricing"):
        price = catalog.price("mystery-1")
        catalog.price("mystery-1")
    assert price.standard.base.input == 0
    assert sum("FREE" in r.getMessage() for r in caplog.records) == 2


def test_unknown_model_default_price() -> None:
    default = ModelPrice.from_data("default", {"prices": {"input": "10", "output": "30"}})
    catalog = Catalog.from_document(DOC, unknown_model="default_price", default_price=default)
    price = catalog.price("mystery-2")
    assert price.name == "mystery-2"
    assert price.standard.base.output == 30_000_000_000
    with pytest.raises(ConfigError, match="default_price"):
        Catalog.from_document(DOC, unknown_model="default_price")
    with pytest.raises(ConfigError, match="unknown_model"):
        Catalog.from_document(DOC, unknown_model="ignore")


def test_overrides_win_and_can_be_removed(catalog: Catalog) -> None:
    catalog.set_price("gpt-4o", {"input": "1", "output": "2"})
    assert catalog.price("openai/gpt-4o").standard.base.input == 1_000_000_000
    catalog.set_price("my-finetune", {"input": "0.3", "output": "1.2", "max_output_tokens": 4096})
    assert catalog.price("my-finetune").max_output_tokens == 4096
    assert catalog.remove_price("gpt-4o")
    assert catalog.price("gpt-4o").standard.base.input == 2_500_000_000


def test_bad_override_names_the_key(catalog: Catalog) -> None:
    with pytest.raises(ConfigError, match=r"prices\['x'\].*input.*finite"):
        catalog.set_price("x", {"input": float("nan"), "output": "1"})
    with pytest.raises(ConfigError, match="negative"):
        catalog.set_price("x", {"input": "-1", "output": "1"})
    with pytest.raises(ConfigError, match=r"unknown field.*outptu"):
        catalog.set_price("x", {"input": "1", "outptu": "1"})


def test_bad_catalog_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Catalog.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        Catalog.load(tmp_path / "missing.json")
    bad.write_text(json.dumps({"models": {"m": {"prices": {"input": "x"}}}}))
    with pytest.raises(ConfigError, match=r"models\['m'\]"):
        Catalog.load(bad)


def test_models_listing_and_providers(catalog: Catalog) -> None:
    names = [p.name for p in catalog.models("openai")]
    assert names == ["gpt-4o", "gpt-4o-2024-05-13"]
    assert "anthropic" in catalog.providers()
    assert len(catalog) == len(DOC["models"])
    assert "openai/gpt-4o" in catalog


def test_default_prefers_updated_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.json"
    monkeypatch.setenv("SPENDGATE_PRICES_FILE", str(path))
    assert Catalog.default().source.version != "t1"  # the built-in one
    path.write_text(json.dumps(DOC))
    assert Catalog.default().source.version == "t1"


def test_builtin_is_shared_but_overrides_are_not() -> None:
    a = Catalog.builtin()
    b = Catalog.builtin()
    a.set_price("gpt-4o", {"input": "99", "output": "99"})
    assert b.price("gpt-4o").standard.base.input == 2_500_000_000
    assert a.source.version and a.source.sha256


def test_made_up_model_names_do_not_grow_the_lookup_cache_without_end() -> None:
    from spendgate.pricing.catalog import LOOKUP_CACHE_SIZE

    catalog = Catalog.builtin()
    for i in range(3 * LOOKUP_CACHE_SIZE):
        assert catalog.lookup(f"made-up-model-{i}") is None
        assert len(catalog._cache) <= LOOKUP_CACHE_SIZE
    price = catalog.lookup("gpt-4o")  # real names still resolve after the cache started over
    assert price is not None and price.name == "gpt-4o"
