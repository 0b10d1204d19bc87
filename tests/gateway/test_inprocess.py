"""The in-process harness answers as the process pair does: same costs, headers and settlement."""

from __future__ import annotations

from typing import Any

import pytest

from spendgate.money import Money

from .conftest import billed, usd
from .inprocess import InProcessGateway

pytestmark = pytest.mark.anyio

CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Hello"}],
    "max_tokens": 5,
}


async def test_chat_is_priced_and_the_upstream_sees_its_own_key_only(gw: InProcessGateway) -> None:
    r = await gw.http("alice").post("/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    cost = billed("/v1/chat/completions", CHAT, 5)
    assert r.headers["x-spendgate-cost"] == usd(cost)
    assert r.headers["x-request-id"].startswith("req_")  # the provider's header passes through
    [sent] = gw.upstream.received
    assert sent.path == "/v1/chat/completions"
    assert gw.secret("alice") not in str(sent.headers)
    [record] = gw.ledger.query_requests(limit=5, key=gw.key("alice").id)
    assert (record.status, record.cost) == ("ok", cost)
    assert gw.ledger.usage("global").spent == cost


async def test_stream_settles_what_the_plain_call_costs(gw: InProcessGateway) -> None:
    client = gw.openai("alice")
    stream = await client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    usages = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert [u.completion_tokens for u in usages] == [5]
    assert gw.ledger.usage("global").spent == billed("/v1/chat/completions", CHAT, 5)
    assert gw.upstream.stats()["models"]["gpt-4o"]["output_tokens"] == 5


async def test_cut_stream_settles_the_part_sent(gw: InProcessGateway) -> None:
    body = {**CHAT, "max_tokens": 10, "stream": True}
    r = await gw.http("alice").post("/chat/completions", json=body, headers={"x-fake-stream-cut-after": "3"})
    assert r.status_code == 200
    [record] = gw.ledger.query_requests(limit=5)
    assert record.status == "cut" and record.cost > Money(0)  # counted by the gateway from what it saw
    assert gw.ledger.usage("global").reserved == Money(0)
    assert gw.upstream.stats()["streams_cut"] == 1
