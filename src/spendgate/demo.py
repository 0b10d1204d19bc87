"""``spendgate demo``: a budget enforced on the embedded SQLite ledger, end to end.

A loop of gpt-4o chat requests goes to the fake OpenAI-compatible upstream (a
real HTTP server process) through the request lifecycle of docs/design.md: price,
worst-case estimate, atomic reservation, the call, settlement with the
actual cost. The budget stops the loop before it is overshot, with the error
users see. (The SDK wrapper and the gateway put this same lifecycle behind
the client people already use.)
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from spendgate.budgets import Attributes, Budget
from spendgate.cost import cost_of
from spendgate.estimate import estimate_request
from spendgate.ledger import RequestRecord, open_ledger
from spendgate.pricing.catalog import Catalog
from spendgate.usage import Usage

MODEL = "gpt-4o"
MAX_REQUESTS = 200  # bounded whatever the limit


def run_demo(ledger_url: str, limit: str = "0.05", echo: Callable[[str], None] = print) -> int:
    """Run the loop until the budget refuses; returns how many requests were admitted."""
    from spendgate.testing.process import FakeUpstream

    catalog = Catalog.builtin()
    budget = Budget.from_config({"id": "demo", "selector": {"team": "demo"}, "limit": limit, "window": "day"})
    ledger = open_ledger(ledger_url, budgets=[budget])
    ledger.reset("demo")  # a demo run starts from zero even on a kept database
    attrs = Attributes.of(team="demo", user="alice", model=MODEL)
    echo(f"budget {budget.label()}: limit {budget.limit.format()} on {ledger_url}")
    admitted = 0
    with FakeUpstream.start() as upstream:
        for i in range(1, MAX_REQUESTS + 1):
            body: dict[str, Any] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Summarise report number {i} in a page."}],
                "max_tokens": 1000,
            }
            estimate = estimate_request("chat", body, catalog=catalog)
            request_id = f"demo-{uuid.uuid4().hex}"
            result = ledger.reserve(request_id, attrs, estimate.amount, lease=60)
            if not result.admitted:
                echo(f"request {i:>3}: refused before calling the provider:")
                echo(f"  {result.to_error()}")  # type: ignore[union-attr]
                break
            started = datetime.now(UTC)
            response = _post(f"{upstream.base_url}/chat/completions", body, {"x-fake-output-tokens": "700"})
            cost = cost_of(Usage.from_response(response), estimate.price)
            ledger.settle(
                request_id,
                cost.total,
                RequestRecord(
                    request_id=request_id,
                    attributes=attrs,
                    cost=cost.total,
                    started_at=started,
                    finished_at=datetime.now(UTC),
                    model=MODEL,
                    usage=cost.usage.as_dict(),
                    breakdown={k: v for k, v in cost.as_dict().items() if k != "total"},
                ),
            )
            admitted += 1
            used = ledger.usage("demo")
            echo(
                f"request {i:>3}: reserved up to {estimate.amount.format()}, cost {cost.total.format()}; "
                f"spent {used.spent.format()} of {used.limit.format()} ({used.percent}%)"
            )
    final = ledger.usage("demo")
    echo(
        f"{admitted} requests admitted; spent {final.spent.format()}, never above the limit {final.limit.format()}"
    )
    ledger.close()
    return admitted


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer demo", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def run_gateway_demo(base_url: str, key: str, echo: Callable[[str], None] = print) -> int:
    """gpt-4o calls through a running gateway with the official openai SDK, until its 429.

    Returns how many requests were admitted. Each asks the demo upstream for 3,000
    output tokens, so the demo key's budget runs out in a few dozen requests.
    """
    try:
        import openai
    except ImportError:  # pragma: no cover - the dev extra installs it
        raise SystemExit("the gateway demo uses the openai SDK: pip install openai") from None

    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long report."}],
        "max_tokens": 4000,
    }
    for i in range(1, MAX_REQUESTS + 1):
        try:
            raw = client.chat.completions.with_raw_response.create(
                **body, extra_headers={"x-fake-output-tokens": "3000"}
            )
        except openai.RateLimitError as exc:
            response = exc.response
            echo(
                f"request {i:>3}: HTTP {response.status_code}, Retry-After: {response.headers.get('retry-after')}"
            )
            echo(json.dumps(response.json(), indent=2))
            return i - 1
        raw.parse()
        echo(
            f"request {i:>3}: HTTP {raw.http_response.status_code}, "
            f"cost ${raw.headers.get('x-spendgate-cost')}, "
            f"budget remaining ${raw.headers.get('x-spendgate-budget-remaining')}"
        )
    return MAX_REQUESTS
