"""Where a call goes: read from its host, reserved and charged (no usage report says it)."""

from __future__ import annotations

from typing import Any

import pytest

from spendgate.estimate import estimate_request
from spendgate.pricing.catalog import Catalog
from spendgate.pricing.regions import Where, where_of

BODY: dict[str, Any] = {
    "model": "gpt-5.4",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 100,
}


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("https://eu.api.openai.com/v1", Where(data_residency="eu")),
        ("https://us.api.openai.com/v1/", Where(data_residency="us")),
        ("https://api.openai.com/v1", Where()),
        ("https://us-east5-aiplatform.googleapis.com/v1/projects/p", Where(endpoint_location="us-east5")),
        ("https://aiplatform.googleapis.com/v1", Where()),
        ("http://127.0.0.1:8000/v1", Where()),
        ("not a url", Where()),
        (None, Where()),
    ],
)
def test_where_of_reads_the_host(url: object, where: Where) -> None:
    assert where_of(url) == where


def test_a_regional_host_is_reserved_at_its_uplift() -> None:
    catalog = Catalog.builtin()
    plain = estimate_request("chat", BODY, catalog=catalog)
    eu = estimate_request("chat", BODY, catalog=catalog, data_residency="eu")
    # x1.1 on both rates, rounded up: never below the provider's bill.
    assert eu.prompt_rate == -(-plain.prompt_rate * 11 // 10)
    assert eu.output_rate == -(-plain.output_rate * 11 // 10)
    assert eu.amount > plain.amount
    vertex = {
        "model": "vertex_ai/claude-sonnet-4-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base = estimate_request("messages", vertex, catalog=catalog)
    regional = estimate_request("messages", vertex, catalog=catalog, endpoint_location="us-east5")
    assert regional.output_rate == -(-base.output_rate * 11 // 10)
    assert (
        estimate_request("messages", vertex, catalog=catalog, endpoint_location="global").amount
        == base.amount
    )


def test_the_guard_reserves_and_charges_the_uplift_of_where_the_call_goes() -> None:
    from spendgate.guard import Guard
    from spendgate.usage import Usage

    guard = Guard("memory://")
    plain = guard.admit("chat", BODY)
    eu = guard.admit("chat", BODY, where=Where(data_residency="eu"))
    assert eu.reserved > plain.reserved
    usage = Usage(input_tokens=8, output_tokens=50)
    guard.settle(plain, usage)
    guard.settle(eu, usage)
    base, uplifted = guard.ledger.query_requests(limit=10)[::-1]
    assert uplifted.cost > base.cost
    assert uplifted.cost.nanos * 10 >= base.cost.nanos * 11  # at least x1.1: never below the bill


def test_a_wrapped_client_on_a_regional_host_reserves_its_uplift(up: object) -> None:
    """The openai SDK talks to eu.api.openai.com; a transport carries its requests to the fake
    upstream (no network here), so the wrapper sees the regional host it would call."""
    import httpx2 as httpx  # the openai SDK's HTTP client
    import openai

    from spendgate import wrap
    from spendgate.testing.process import FakeUpstream

    assert isinstance(up, FakeUpstream)
    real = httpx.URL(up.root_url)

    class ToFake(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            request.url = request.url.copy_with(scheme=real.scheme, host=real.host, port=real.port)
            return super().handle_request(request)

    def client(base: str) -> openai.OpenAI:
        return openai.OpenAI(
            api_key="x", base_url=base, max_retries=0, http_client=httpx.Client(transport=ToFake())
        )

    from spendgate.guard import Guard

    guard = Guard("memory://")
    plain = wrap(client("https://api.openai.com/v1"), guard=guard)
    regional = wrap(client("https://eu.api.openai.com/v1"), guard=guard)
    plain.chat.completions.create(**BODY)
    regional.chat.completions.create(**BODY)
    first, second = guard.ledger.query_requests(limit=10)[::-1]
    assert second.cost.nanos * 10 >= first.cost.nanos * 11
