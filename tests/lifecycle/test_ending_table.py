"""The ending table (docs/design.md), twice: as a table over the pure policy, and as the same
cases sent through the gateway, the openai wrapper and the anthropic wrapper, which must reach
the same ledger outcome (status, amount charged, nothing left reserved)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.conftest import Gateway, start_env
from spendgate import Guard, wrap
from spendgate.cost import cost_of
from spendgate.estimate import estimate_request
from spendgate.ledger import Ledger, open_ledger
from spendgate.lifecycle import Action, Happened, decide
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.testing import FakeUpstream, prompt_tokens_for
from spendgate.usage import Usage

USAGE = Usage(input_tokens=10, output_tokens=5)
KNOWN = Usage(input_tokens=10, output_tokens=1)

# -- the policy, as a table ------------------------------------------------------------------

TABLE: list[tuple[Happened, Usage | None, Usage | None, Action, str]] = [
    # happened,           final usage, known,  action,                    status
    (Happened.NOT_SENT, None, None, Action.RELEASE, "released"),
    (Happened.NOT_SENT, USAGE, KNOWN, Action.RELEASE, "released"),  # nothing sent: nothing billed
    (Happened.REFUSED, None, None, Action.RELEASE, "released"),
    (Happened.COMPLETE, USAGE, None, Action.SETTLE, "ok"),
    (Happened.COMPLETE, None, None, Action.CHARGE_RESERVATION, "unread"),
    (Happened.COMPLETE, None, KNOWN, Action.CHARGE_RESERVATION, "unread"),
    (Happened.CUT, USAGE, KNOWN, Action.SETTLE, "cut"),  # the usage came before the cut
    (Happened.CUT, None, KNOWN, Action.PARTIAL, "cut"),
    (Happened.CUT, None, None, Action.CHARGE_RESERVATION, "cut"),
    (Happened.CLOSED, USAGE, None, Action.SETTLE, "closed"),
    (Happened.CLOSED, None, KNOWN, Action.PARTIAL, "closed"),
    (Happened.CLOSED, None, None, Action.CHARGE_RESERVATION, "closed"),
    (Happened.LOST, USAGE, None, Action.SETTLE, "lost"),
    (Happened.LOST, None, KNOWN, Action.CHARGE_RESERVATION, "lost"),
    (Happened.LOST, None, None, Action.CHARGE_RESERVATION, "lost"),
]


@pytest.mark.parametrize(("happened", "usage", "known", "action", "status"), TABLE)
def test_the_ending_policy(
    happened: Happened, usage: Usage | None, known: Usage | None, action: Action, status: str
) -> None:
    ending = decide(happened, usage=usage, known=known)
    assert (ending.action, ending.status) == (action, status)
    assert ending.why  # every decision says why


def test_every_happening_is_in_the_table() -> None:
    assert {row[0] for row in TABLE} == set(Happened)


def test_the_table_never_settles_below_a_bound_without_usage() -> None:
    # Never under-count: without the provider's usage, only RELEASE (nothing billed), PARTIAL
    # (an upper bound on the known prompt) or the whole reservation.
    for happened, usage, _known, action, _ in TABLE:
        if usage is None and happened not in (Happened.NOT_SENT, Happened.REFUSED):
            assert action in (Action.PARTIAL, Action.CHARGE_RESERVATION), happened


# -- the same cases through every surface ----------------------------------------------------

OPENAI_MODEL = "gpt-4o"
ANTHROPIC_MODEL = "claude-haiku-4-5"
MESSAGES = [{"role": "user", "content": "How does this request end?"}]
MAX_TOKENS = 40
OUTPUT = {"x-fake-output-tokens": "12"}


@dataclass(frozen=True)
class Case:
    name: str
    stream: bool
    headers: dict[str, str]
    status: str
    #: "usage": the fake's bill; "reservation": the reserved worst case; "prompt": the prompt
    #: message_start told plus the reserved output; "none": nothing.
    charge: str
    #: Anthropic's charge where it differs (message_start tells the prompt before a cut).
    anthropic_charge: str | None = None


CASES = [
    Case("usage", False, OUTPUT, "ok", "usage"),
    Case("no_usage", False, {**OUTPUT, "x-fake-omit-usage": "1"}, "unread", "reservation"),
    Case("stream_usage", True, OUTPUT, "ok", "usage"),
    Case("stream_no_usage", True, {**OUTPUT, "x-fake-omit-usage": "1"}, "unread", "reservation"),
    Case("stream_cut", True, {**OUTPUT, "x-fake-stream-cut-after": "2"}, "cut", "reservation", "prompt"),
    Case("refused", False, {"x-fake-error": "500"}, "released", "none"),
    Case("rate_limited", False, {"x-fake-error": "429"}, "released", "none"),
]


@dataclass(frozen=True)
class Outcome:
    status: str
    charged: Money
    reserved: Money


def _body(kind: str, stream: bool) -> dict[str, Any]:
    model = OPENAI_MODEL if kind == "openai" else ANTHROPIC_MODEL
    return {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": stream}


def expected(kind: str, case: Case) -> Outcome:
    body = _body(kind, case.stream)
    price = Catalog.default().price(body["model"])
    path = "chat/completions" if kind == "openai" else "messages"
    charge = (case.anthropic_charge or case.charge) if kind == "anthropic" else case.charge
    estimate = estimate_request("chat" if kind == "openai" else "messages", body, catalog=Catalog.default())
    prompt = prompt_tokens_for(path, body)
    amounts = {
        "usage": lambda: cost_of(Usage(input_tokens=prompt, output_tokens=12), price).total,
        "reservation": lambda: estimate.amount,
        "prompt": lambda: estimate.with_prompt(prompt),
        "none": lambda: Money(0),
    }
    return Outcome(case.status, amounts[charge](), Money(0))


def _outcome(ledger: Ledger, budget: str, before: Money, request_id: str | None) -> Outcome:
    spent = ledger.usage(budget).spent - before
    records = [r for r in ledger.query_requests(limit=50) if request_id is None or r.request_id == request_id]
    status = records[0].status if records and spent else "released"
    return Outcome(status, spent, ledger.usage(budget).reserved)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, up: FakeUpstream) -> Iterator[tuple[Gateway, str]]:
    tmp = tmp_path_factory.mktemp("ending-gateway")
    gw, keys = start_env(tmp, up, keys={"alice": {"user": "alice"}})
    try:
        yield gw, keys["alice"][1]
    finally:
        gw.stop()


def through_gateway(gw: Gateway, secret: str, kind: str, case: Case) -> Outcome:
    path = "/v1/chat/completions" if kind == "openai" else "/v1/messages"
    headers = {"authorization": f"Bearer {secret}", **case.headers}
    with gw.ledger() as ledger:
        before = ledger.usage("global").spent
    with (
        httpx.Client(base_url=gw.url, timeout=20) as http,
        http.stream("POST", path, json=_body(kind, case.stream), headers=headers) as response,
    ):
        response.read()  # a cut stream ends with the gateway's error event, not a broken body
        request_id = response.headers.get("x-spendgate-request-id")
    with gw.ledger() as ledger:
        return _outcome(ledger, "global", before, request_id)


def through_sdk(up: FakeUpstream, tmp: Path, kind: str, case: Case) -> Outcome:
    guard = Guard(f"sqlite:///{tmp / f'{kind}-{case.name}.db'}", budgets=[{"id": "g", "limit": "100"}])
    body = _body(kind, case.stream)
    try:
        if kind == "openai":
            client: Any = wrap(openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=0), guard=guard)
            call = client.chat.completions.create
        else:
            client = wrap(anthropic.Anthropic(base_url=up.root_url, api_key="x", max_retries=0), guard=guard)
            call = client.messages.create
        # Whatever the SDK raises (a cut stream surfaces as its transport's own error): the
        # ledger's outcome is what is compared.
        with contextlib.suppress(Exception):
            result = call(**body, extra_headers=case.headers)
            if case.stream:
                for _ in result:
                    pass
        return _outcome(guard.ledger, "g", Money(0), None)
    finally:
        guard.close()


def upstream_bill(up: FakeUpstream, before: dict[str, Any], model: str) -> Money:
    """What the fake upstream's own tally says it billed since ``before``, priced here."""
    now = up.stats()["models"].get(model, {})
    then = before["models"].get(model, {})
    delta = {k: now.get(k, 0) - then.get(k, 0) for k in ("prompt_tokens", "cached_tokens", "output_tokens")}
    usage = Usage(
        input_tokens=delta["prompt_tokens"],
        cache_read_tokens=delta["cached_tokens"],
        output_tokens=delta["output_tokens"],
    )
    return cost_of(usage, Catalog.default().price(model)).total


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_surface_ends_a_call_alike(
    gateway: tuple[Gateway, str], up: FakeUpstream, tmp_path: Path, kind: str, case: Case
) -> None:
    want = expected(kind, case)
    model = _body(kind, case.stream)["model"]
    surfaces: list[Callable[[], Outcome]] = [
        lambda: through_sdk(up, tmp_path, kind, case),
        lambda: through_gateway(*gateway, kind, case),
    ]
    for through in surfaces:
        before = up.stats()
        assert through() == want
        # Never under-count, against the upstream's own count of what it billed.
        assert want.charged >= upstream_bill(up, before, model)


def test_an_unreachable_upstream_is_released_everywhere(gateway: tuple[Gateway, str], tmp_path: Path) -> None:
    gw, secret = gateway
    with gw.ledger() as ledger:
        before = ledger.usage("global").spent
    r = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "down-gpt", "messages": MESSAGES, "max_tokens": 5},
        headers={"authorization": f"Bearer {secret}"},
        timeout=20,
    )
    assert r.status_code == 502, r.text
    with gw.ledger() as ledger:
        assert _outcome(ledger, "global", before, None) == Outcome("released", Money(0), Money(0))

    ledger_url = f"sqlite:///{tmp_path / 'down.db'}"
    guard = Guard(ledger_url, budgets=[{"id": "g", "limit": "100"}])
    client = wrap(openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", max_retries=0), guard=guard)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=OPENAI_MODEL, messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
    assert _outcome(guard.ledger, "g", Money(0), None) == Outcome("released", Money(0), Money(0))
    guard.close()
    with open_ledger(ledger_url) as ledger:
        assert ledger.query_requests() == []  # a release leaves no charge in the log
