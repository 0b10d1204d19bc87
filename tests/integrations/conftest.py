"""Helpers to count and price what the fake upstream (``up``, in tests/conftest.py) bills."""

from __future__ import annotations

from typing import Any

from spendgate.cost import cost_of
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.testing import FakeUpstream, prompt_tokens_for
from spendgate.usage import Usage


def requests_total(up: FakeUpstream) -> int:
    """HTTP requests the fake has answered (its control paths excluded)."""
    total: int = up.stats()["requests_total"]
    return total


_PATHS = {"chat": "chat/completions"}  # spendgate's endpoint names -> the fake's paths


def billed(endpoint: str, body: dict[str, Any], output: int, cached: int = 0) -> Money:
    """What the fake's usage for ``body`` costs, computed apart from spendgate's guard."""
    price = Catalog.default().price(body["model"])
    prompt = prompt_tokens_for(_PATHS.get(endpoint, endpoint), body)
    usage = Usage(input_tokens=prompt, output_tokens=output, cache_read_tokens=min(cached, prompt))
    return cost_of(usage, price).total
