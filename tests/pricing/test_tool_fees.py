"""Tool fees in the price schema and the catalog: read, written, and never $0 by omission."""

from __future__ import annotations

from typing import Any

import pytest

from spendgate.errors import ConfigError
from spendgate.pricing.catalog import Catalog
from spendgate.pricing.schema import ModelPrice, ToolFee

BASE = {"provider": "acme", "prices": {"input": "1", "output": "2"}}


def price(fees: Any) -> ModelPrice:
    return ModelPrice.from_data("m", {**BASE, "tool_fees": fees})


def test_a_fee_reads_and_writes_as_decimal_text() -> None:
    fees = {
        "web_search": {"low": "0.005", "medium": "0.008", "high": "0.012", "per": "request"},
        "code_interpreter": {"1g": "0.03"},
        "file_search": "0.0025",
        "google_maps": {"fee": "0.025", "per": "prompt"},
    }
    p = price(fees)
    assert p.tool_fees["file_search"] == ToolFee(fee=2_500_000)
    search = p.tool_fees["web_search"]
    assert (search.highest, search.at("low", "web_search"), search.at(None, "web_search")) == (
        12_000_000,
        5_000_000,
        8_000_000,  # the default size, medium
    )
    assert search.at("huge", "web_search") == 12_000_000  # a size not priced: the highest
    assert ModelPrice.from_data("m", p.to_data()) == p
    assert list(p.to_data()["tool_fees"]) == ["web_search", "file_search", "code_interpreter", "google_maps"]


@pytest.mark.parametrize(
    ("fees", "problem"),
    [
        ({"telepathy": "1"}, "unknown tool"),
        ({"web_search": "-0.01"}, "negative"),
        ({"web_search": {"fee": "0.01", "low": "0.01"}}, "either one 'fee'"),
        ({"web_search": {"per": "call"}}, "either one 'fee'"),
        ({"web_search": {"fee": "0.01", "per": "week"}}, "per"),
        ({"web_search": {"Low": "0.01"}}, "lowercase"),
        ({"web_search": "lots"}, "cannot read"),
    ],
)
def test_a_bad_fee_is_refused_with_its_place(fees: Any, problem: str) -> None:
    catalog = Catalog({})
    with pytest.raises(ConfigError, match=problem) as info:
        catalog.set_price("m", {**BASE, "tool_fees": fees})
    assert "tool_fees" in str(info.value)


def test_a_model_without_a_fee_is_bounded_by_its_providers_highest() -> None:
    catalog = Catalog({})
    catalog.set_price("a", {**BASE, "tool_fees": {"web_search": {"low": "0.01", "high": "0.03"}}})
    catalog.set_price("b", {**BASE, "tool_fees": {"web_search": "0.02"}})
    catalog.set_price("c", BASE)
    assert catalog.highest_tool_fee("acme", "web_search") == ToolFee(fee=30_000_000)
    assert catalog.highest_tool_fee("acme", "file_search") is None
    assert catalog.highest_tool_fee("other", "web_search") is None
    catalog.set_price("d", {**BASE, "tool_fees": {"web_search": "0.05"}})  # overrides count, at once
    assert catalog.highest_tool_fee("acme", "web_search") == ToolFee(fee=50_000_000)


def test_free_unknown_models_use_their_tools_free_too() -> None:
    free = Catalog({}, unknown_model="free").price("anything")
    assert all(fee == ToolFee(fee=0) for fee in free.tool_fees.values()) and "web_search" in free.tool_fees


def test_the_shipped_catalog_prices_the_tools_providers_publish() -> None:
    catalog = Catalog.builtin()
    gpt = catalog.price("gpt-5").tool_fees
    assert gpt["web_search"] == ToolFee(fee=10_000_000)  # $10 per 1,000 searches
    assert gpt["file_search"] == ToolFee(fee=2_500_000)  # $2.50 per 1,000 calls (a correction)
    assert gpt["code_interpreter"] == ToolFee(sizes={"1g": 30_000_000})  # $0.03 a container
    claude = catalog.price("claude-sonnet-4-5").tool_fees
    assert claude["web_search"] == ToolFee(fee=10_000_000) and claude["web_fetch"] == ToolFee(fee=0)
    assert catalog.price("gpt-4o-search-preview").tool_fees["web_search"].per == "request"
    assert "twelvelabs.marengo-embed-2-7-v1:0" not in catalog  # priced per query: refused, not $0
