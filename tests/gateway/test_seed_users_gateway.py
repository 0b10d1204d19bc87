"""The gateway's side of issue 10 section 6: a prompt past the context window is a 400 with
OpenAI's ``context_length_exceeded``, before anything is reserved or sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spendgate.money import Money

from .inprocess import InProcessGateway

anyio = pytest.mark.anyio


@anyio
async def test_400_context_length_exceeded_before_spending(gw: InProcessGateway) -> None:
    # gpt-4 is counted exactly here (cl100k): 9,000 "hello"s are past its 8,192-token window.
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello " * 9_000}], "max_tokens": 5}
    r = await gw.http("alice").post("/chat/completions", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["type"] == "invalid_request_error" and "8,192-token context window" in error["message"]
    assert gw.upstream.received == []
    assert gw.ledger.usage("global").reserved == Money(0)
    assert gw.ledger.usage("global").spent == Money(0)


@anyio
async def test_defaults_max_output_tokens_caps_a_request_that_sets_none(tmp_path: Path) -> None:
    async with InProcessGateway.start(tmp_path, defaults={"max_output_tokens": 100}) as gw:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        r = await gw.http("alice").post("/chat/completions", json=body)
        assert r.status_code == 200, r.text
        [sent] = gw.upstream.received
        assert json.loads(sent.body)["max_completion_tokens"] == 100  # the provider cannot bill past it
        capped = await gw.http("alice").post("/chat/completions", json={**body, "max_tokens": 7})
        assert capped.status_code == 200
        assert json.loads(gw.upstream.received[-1].body).get("max_completion_tokens") is None
