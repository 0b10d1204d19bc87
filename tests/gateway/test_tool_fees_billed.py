"""Hosted tool fees, end to end: real requests with tools, sent with the real openai and anthropic
SDKs through the gateway (in process, ``gw``; and as a process in front of the fake's process,
``up``, for real sockets and streams) and through the SDK wrappers (``wrap`` on clients pointed at
``up``). The fake answers with the tool calls the providers
list (Responses output items, Anthropic's ``server_tool_use``, a search model's search) and keeps
its own tally of what it billed; that tally, priced here from the catalog's rates, is the bill the
ledger must reach: at least it, and exactly it when the answer reports its usage. The reservation
holds every tool use the request allows (its cap, or the one the guard sets and sends), and
nothing is left reserved. The suite's overshoot guard (tests/conftest.py) fails any settle above
its reservation."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from spendgate import Guard, wrap
from spendgate.cost import cost_of
from spendgate.estimate import DEFAULT_MAX_TOOL_CALLS
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.testing import FakeUpstream, prompt_tokens_for
from spendgate.testing.upstream import billed_usage
from spendgate.usage import TOOL_CALL_FIELDS, Usage

from .conftest import Gateway, start_env
from .inprocess import InProcessGateway

GPT = "gpt-4o"  # web search $0.025 a call, file search $0.0025, a 1g container $0.03 a session
CLAUDE = "claude-sonnet-4-5"  # web search $0.01 a search, web fetch free
SEARCH_MODEL = "gpt-4o-search-preview"  # one $0.025 search on every request
RESULT_TOKENS = 300  # input tokens each tool use adds (x-fake-tool-result-tokens)
OUTPUT = 7
INPUT = "What did the fake find?"
MESSAGES: Any = [{"role": "user", "content": INPUT}]
SEARCH: Any = {"type": "web_search"}
FILES: Any = {"type": "file_search", "vector_store_ids": ["vs_fake"]}
CODE: Any = {"type": "code_interpreter", "container": {"type": "auto"}}
CLAUDE_SEARCH: Any = {"type": "web_search_20250305", "name": "web_search"}
CLAUDE_FETCH: Any = {"type": "web_fetch_20250910", "name": "web_fetch"}


def fee(model: str, tool: str, *, highest: bool = False) -> Money:
    """One use of ``tool`` on ``model``, from the catalog's rates (the highest size, or the
    default one)."""
    rate = Catalog.default().price(model).tool_fees[tool]
    return Money(rate.highest if highest else rate.at(None, tool))


def price(model: str, usage: Usage) -> Money:
    return cost_of(usage, Catalog.default().price(model)).total


def tokens(model: str, usage: Usage) -> Money:
    """The tokens alone at the model's standard rates (no tool fee, not even a per-request one)."""
    rates = Catalog.default().price(model).standard.base.effective
    return Money.from_femto_ceil(usage.input_tokens * rates[0] + usage.output_tokens * rates[1])


@dataclass(frozen=True)
class Case:
    name: str
    endpoint: str  # "responses", "messages" or "chat"
    body: dict[str, Any]
    #: x-fake-tool-calls: the uses the fake makes of each tool, under the request's caps.
    calls: int
    #: The tool whose uses are reserved and billed per use, and the uses the fake bills.
    tool: str
    billed: int
    #: The uses reserved (the request's cap or the guard's), None: not compared.
    reserved: int | None
    #: (field, value) the upstream must receive (a cap the guard set), None: the body as given.
    sent: tuple[str, Any] | None = None
    #: Other tools' billed uses (free ones: their tally only).
    also: dict[str, int] = field(default_factory=dict)
    #: The tool calls made, each adding its result to the input (None: the uses billed).
    ran: int | None = None

    @property
    def model(self) -> str:
        return str(self.body["model"])

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            "x-fake-tool-calls": str(self.calls),
            "x-fake-tool-result-tokens": str(RESULT_TOKENS),
            "x-fake-output-tokens": str(OUTPUT),
            **extra,
        }

    def probe(self) -> Case:
        """The same request allowing no tool use: its reservation has no tool fees."""
        if self.endpoint == "responses":
            return replace(self, body={**self.body, "max_tool_calls": 0})
        tools = [
            {**t, "max_uses": 0} if t["type"].startswith("web_search") else t for t in self.body["tools"]
        ]
        return replace(self, body={**self.body, "tools": tools})


def responses(*tools: Any, **body: Any) -> dict[str, Any]:
    return {"model": GPT, "input": INPUT, "max_output_tokens": 40, "tools": list(tools), **body}


def messages(*tools: Any) -> dict[str, Any]:
    return {"model": CLAUDE, "messages": MESSAGES, "max_tokens": 40, "tools": list(tools)}


CASES = [
    Case("web_search_capped", "responses", responses(SEARCH, max_tool_calls=3), 2, "web_search", 2, 3),
    Case(
        "web_search_default_cap",
        "responses",
        responses(SEARCH),
        2,
        "web_search",
        2,
        DEFAULT_MAX_TOOL_CALLS,
        sent=("max_tool_calls", DEFAULT_MAX_TOOL_CALLS),
    ),
    Case("file_search", "responses", responses(FILES, max_tool_calls=2), 2, "file_search", 2, 2),
    # three calls in the one container of the request: one session billed
    Case(
        "code_interpreter", "responses", responses(CODE, max_tool_calls=4), 3, "code_interpreter", 1, 4, ran=3
    ),
    Case(
        "claude_web_search_max_uses",
        "messages",
        messages({**CLAUDE_SEARCH, "max_uses": 3}),
        5,
        "web_search",
        3,
        3,
    ),
    Case(
        "claude_web_search_default_cap",
        "messages",
        messages(CLAUDE_SEARCH, CLAUDE_FETCH),
        2,
        "web_search",
        2,
        DEFAULT_MAX_TOOL_CALLS,
        sent=("tools", [{**CLAUDE_SEARCH, "max_uses": DEFAULT_MAX_TOOL_CALLS}, CLAUDE_FETCH]),
        also={"web_fetch": 2},
    ),
    Case(
        "search_model",
        "chat",
        {"model": SEARCH_MODEL, "messages": MESSAGES, "max_tokens": 40},
        1,
        "web_search",
        1,
        None,
    ),
]
IDS = [c.name for c in CASES]


@dataclass
class Outcome:
    charged: Money  # what the ledger's budget was charged
    left: Money  # what its budget still holds reserved
    billed: Usage  # the fake's own tally of what it billed
    answered: int  # the billed tool uses the answer showed the client
    status: str
    reserved: Money | None = None  # the request's reservation (its log line), if seen here
    sent: dict[str, Any] | None = None  # the body the upstream received, if seen here


class Lines(logging.Handler):
    """The request lines (``spendgate.requests``): each request's reservation."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "spendgate", None)
        if isinstance(fields, dict) and "reserved_usd" in fields:
            self.fields.append(fields)

    def last_reserved(self) -> Money:
        return Money.parse(self.fields[-1]["reserved_usd"])


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("spendgate.requests")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- what the client saw ------------------------------------------------------------------------


def answered(case: Case, result: Any, events: list[Any]) -> int:
    """The billed uses of ``case.tool`` the answer (or the stream's events) showed."""
    if case.endpoint == "responses":
        done = [e.response for e in events if e.type == "response.completed"]
        output = (done[-1] if done else result).output
        kinds = {"web_search": "web_search_call", "file_search": "file_search_call"}
        if case.tool == "code_interpreter":
            return len({i.container_id for i in output if i.type == "code_interpreter_call"})
        return sum(1 for i in output if i.type == kinds[case.tool])
    if case.endpoint == "messages":
        usage = [e.usage for e in events if e.type == "message_delta"]
        server = (usage[-1] if usage else result.usage).server_tool_use
        return int(getattr(server, f"{case.tool}_requests"))
    return 1  # a search model's search shows only in its bill


# -- the surfaces ---------------------------------------------------------------------------------


async def via_gateway(
    gw: InProcessGateway, lines: Lines, case: Case, stream: bool, **headers: str
) -> Outcome:
    before_spent = gw.ledger.usage("global").spent
    before = gw.upstream.stats()
    kwargs: dict[str, Any] = {**case.body, "stream": stream, "extra_headers": case.headers(**headers)}
    events: list[Any] = []
    result: Any = None
    status = "ok"
    try:
        if case.endpoint == "messages":
            claude = gw.anthropic("alice")
            result = await claude.messages.create(**kwargs)
        elif case.endpoint == "responses":
            result = await gw.openai("alice").responses.create(**kwargs)
        else:
            result = await gw.openai("alice").chat.completions.create(**kwargs)
        if stream:
            events = [event async for event in result]
    except (openai.APIError, anthropic.APIError):
        status = "error"  # a cut stream: the gateway's error event
    sent = json.loads(gw.upstream.received[-1].body)
    return Outcome(
        reserved=lines.last_reserved(),
        charged=gw.ledger.usage("global").spent - before_spent,
        left=gw.ledger.usage("global").reserved,
        billed=billed_usage(gw.upstream.stats(), case.model, before),
        sent=sent,
        answered=answered(case, result, events) if status == "ok" else -1,
        status=status,
    )


def via_wrapper(up: FakeUpstream, lines: Lines, case: Case, stream: bool, **headers: str) -> Outcome:
    guard = Guard(budgets=[{"id": "g", "limit": "100"}])
    bodies: list[bytes] = []
    http = httpx2.Client(event_hooks={"request": [lambda request: bodies.append(request.read())]})
    before = up.stats()
    kwargs: dict[str, Any] = {**case.body, "stream": stream, "extra_headers": case.headers(**headers)}
    events: list[Any] = []
    result: Any = None
    status = "ok"
    try:
        if case.endpoint == "messages":
            claude = wrap(
                anthropic.Anthropic(base_url=up.root_url, api_key="x", max_retries=0, http_client=http),
                guard=guard,
            )
            result = claude.messages.create(**kwargs)
        else:
            oai = wrap(
                openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=0, http_client=http), guard=guard
            )
            create = oai.responses.create if case.endpoint == "responses" else oai.chat.completions.create
            result = create(**kwargs)
        if stream:
            events = list(result)
    except (openai.APIError, anthropic.APIError, httpx2.TransportError):
        status = "error"  # a cut stream: the transport's own error
    try:
        return Outcome(
            reserved=lines.last_reserved(),
            charged=guard.ledger.usage("g").spent,
            left=guard.ledger.usage("g").reserved,
            billed=up.billed(case.model, since=before),
            sent=json.loads(bodies[-1]),
            answered=answered(case, result, events) if status == "ok" else -1,
            status=status,
        )
    finally:
        http.close()
        guard.close()


def via_gateway_process(
    env: tuple[Gateway, str], up: FakeUpstream, case: Case, stream: bool, **headers: str
) -> Outcome:
    """The gateway as a process in front of the fake's: real sockets, streams passed on as they
    come. Its request lines and what it sent are in another process: not compared here."""
    gateway, secret = env
    with gateway.ledger() as ledger:
        before_spent = ledger.usage("global").spent
    before = up.stats()
    kwargs: dict[str, Any] = {**case.body, "stream": stream, "extra_headers": case.headers(**headers)}
    events: list[Any] = []
    result: Any = None
    status = "ok"
    try:
        if case.endpoint == "messages":
            claude = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)
            result = claude.messages.create(**kwargs)
        else:
            oai = openai.OpenAI(base_url=gateway.base_url, api_key=secret, max_retries=0)
            create = oai.responses.create if case.endpoint == "responses" else oai.chat.completions.create
            result = create(**kwargs)
        if stream:
            events = list(result)
    except (openai.APIError, anthropic.APIError):
        status = "error"  # a cut stream: the gateway's error event
    with gateway.ledger() as ledger:
        return Outcome(
            charged=ledger.usage("global").spent - before_spent,
            left=ledger.usage("global").reserved,
            billed=up.billed(case.model, since=before),
            answered=answered(case, result, events) if status == "ok" else -1,
            status=status,
        )


# -- the checks -----------------------------------------------------------------------------------


def check(case: Case, got: Outcome, probe: Outcome | None) -> None:
    tally = got.billed
    # The fake billed what the case asked for, and the answer showed the client just that.
    assert getattr(tally, TOOL_CALL_FIELDS[case.tool]) == case.billed, tally
    for tool, uses in case.also.items():
        assert getattr(tally, TOOL_CALL_FIELDS[tool]) == uses, tally
    assert got.answered == case.billed
    # The upstream got the cap the guard reserved for.
    if case.sent is not None and got.sent is not None:
        name, value = case.sent
        assert got.sent[name] == value
    # Reserved: every use the request allows, at the catalog's (highest) fee.
    if probe is not None and case.reserved is not None:
        assert got.reserved is not None and probe.reserved is not None
        assert got.reserved - probe.reserved == fee(case.model, case.tool, highest=True) * case.reserved
    # Settled: the tokens billed (tool results included in the prompt) plus each use's fee, which
    # is exactly the fake's own tally priced here.
    uses = case.billed + sum(case.also.values()) if case.ran is None else case.ran
    prompt = prompt_tokens_for(case.endpoint.replace("chat", "chat/completions"), case.body)
    assert (tally.input_tokens, tally.output_tokens) == (prompt + uses * RESULT_TOKENS, OUTPUT)
    fees = fee(case.model, case.tool) * case.billed
    assert got.charged == price(case.model, tally) == tokens(case.model, tally) + fees
    assert got.reserved is None or got.charged <= got.reserved
    assert got.left == Money(0)


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_the_gateway_reserves_and_settles_the_tool_fees(
    gw: InProcessGateway, lines: Lines, case: Case, stream: bool
) -> None:
    probe = await via_gateway(gw, lines, case.probe(), stream) if case.reserved is not None else None
    check(case, await via_gateway(gw, lines, case, stream), probe)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_sdk_wrappers_reserve_and_settle_the_tool_fees(
    up: FakeUpstream, lines: Lines, case: Case, stream: bool
) -> None:
    probe = via_wrapper(up, lines, case.probe(), stream) if case.reserved is not None else None
    check(case, via_wrapper(up, lines, case, stream), probe)


@pytest.fixture(scope="module")
def process(tmp_path_factory: pytest.TempPathFactory, up: FakeUpstream) -> Iterator[tuple[Gateway, str]]:
    gateway, keys = start_env(tmp_path_factory.mktemp("tool-fees"), up, keys={"alice": {"user": "alice"}})
    try:
        yield gateway, keys["alice"][1]
    finally:
        gateway.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_gateway_process_settles_the_tool_fees(
    process: tuple[Gateway, str], up: FakeUpstream, case: Case, stream: bool
) -> None:
    check(case, via_gateway_process(process, up, case, stream), None)


#: Streams cut after their tool uses ran, before their usage came.
CUT = [c for c in CASES if c.name in ("web_search_capped", "code_interpreter", "claude_web_search_max_uses")]


def check_cut(case: Case, got: Outcome) -> None:
    assert got.status == "error"
    assert getattr(got.billed, TOOL_CALL_FIELDS[case.tool]) == case.billed
    # Never under-count: at least what the fake billed, tool uses and their results included.
    assert got.charged >= price(case.model, got.billed)
    assert got.reserved is None or got.charged <= got.reserved
    assert got.left == Money(0)


@pytest.mark.anyio
@pytest.mark.parametrize("case", CUT, ids=[c.name for c in CUT])
async def test_a_cut_stream_through_the_gateway_is_charged_at_least_its_tool_uses(
    gw: InProcessGateway, lines: Lines, case: Case
) -> None:
    check_cut(case, await via_gateway(gw, lines, case, True, **{"x-fake-stream-cut-after": "1"}))


@pytest.mark.parametrize("case", CUT, ids=[c.name for c in CUT])
def test_a_cut_stream_through_the_wrappers_is_charged_at_least_its_tool_uses(
    up: FakeUpstream, lines: Lines, case: Case
) -> None:
    check_cut(case, via_wrapper(up, lines, case, True, **{"x-fake-stream-cut-after": "1"}))


@pytest.mark.parametrize("case", CUT, ids=[c.name for c in CUT])
def test_a_cut_stream_through_the_gateway_process_is_charged_at_least_its_tool_uses(
    process: tuple[Gateway, str], up: FakeUpstream, case: Case
) -> None:
    check_cut(case, via_gateway_process(process, up, case, True, **{"x-fake-stream-cut-after": "1"}))
