"""The worst case a request can cost: what the ledger reserves before the call.

    prompt upper bound x worst prompt rate  +  n x max output x worst output rate
      +  allowed hosted tool uses x their highest per-use fee

The prompt rate is the input rate, or the highest cache-write rate where the
provider may write to its cache (Anthropic ``cache_control``; OpenAI always),
or the audio rate where the request carries audio; the output rate is the
highest of output, reasoning, audio and image output. Rates are the highest
among the service tiers the request may be served at and the long-context
tiers its prompt bound may pass, times an uplift it asks for. Input the body
does not hold is bounded by the context window. The prompt is billed once
whatever ``n`` is, as providers bill it. Hosted tools billed per use (web
search, file search, code-interpreter containers) are reserved per use the
request allows (``max_tool_calls``, a tool's ``max_uses``; where it allows any
number, a cap is set in the body sent, or the request is refused).
docs/design.md tabulates the cases.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal

from spendgate.cost import FEMTO_PER_NANO, Cost
from spendgate.errors import SpendgateError
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.pricing.schema import ModelPrice, Rates, RateTable, ToolFee
from spendgate.tokens import TokenCount, TokenCounter, default_counter
from spendgate.usage import TOOL_CALL_FIELDS, Usage

Endpoint = Literal["chat", "completions", "embeddings", "responses", "messages"]
ENDPOINTS: tuple[Endpoint, ...] = ("chat", "completions", "embeddings", "responses", "messages")


class EstimateError(SpendgateError, ValueError):
    """The request cannot be bounded (for example no max output is known)."""


class ContextLengthExceededError(EstimateError):
    """The prompt alone is longer than the model's context window: the provider would refuse
    it, so it is refused before anything is reserved or sent."""

    def __init__(self, model: str, prompt_tokens: int, context_window: int) -> None:
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window
        super().__init__(
            f"this request's prompt is {prompt_tokens:,} tokens, over the {context_window:,}-token "
            f"context window of {model!r}; shorten the input"
        )


# -- what a request body must be (checked before anything walks, counts, stores or sends it) --

#: The most one request may reserve: a billion USD. Ledgers keep nano-USD in 64-bit integers; a
#: worst case past this is a request no budget could admit (and would overflow the storage).
MAX_AMOUNT: Final = Money(10**18)
#: Counts past this are refused (a signed 32-bit integer: the most servers parse).
MAX_COUNT: Final = 2**31 - 1
#: Deeper nesting is refused: no real request needs it, and recursive code over a body (JSON
#: encoders, the token counter's content walk) would fail on it.
MAX_NESTING: Final = 100
#: The hosted tool uses reserved, and set in the body sent, for a request that allows any number
#: (no ``max_tool_calls``; an Anthropic tool without ``max_uses``). Responses'
#: ``max_tool_calls`` counts every built-in tool call, MCP and image generation included.
DEFAULT_MAX_TOOL_CALLS: Final = 10

_COUNTS: Final = ("n", "best_of", "max_tokens", "max_completion_tokens", "max_output_tokens")
#: A lone surrogate (``"\ud800"`` in JSON) is no text: it cannot be encoded, stored or sent.
_SURROGATES: Final = re.compile("[\ud800-\udfff]")
_NUMBERS: Final = frozenset({int, float, bool, type(None)})
_TEXT_OR_LIST: Final = ((str, list), "a string or a list")
#: The JSON types the estimate relies on, where a field is present and not null.
_SHAPES: Final[dict[str, tuple[tuple[type, ...], str]]] = {
    "stream_options": ((Mapping,), "an object"),
    "tools": ((list,), "a list"),
    "functions": ((list,), "a list"),
}
_ENDPOINT_SHAPES: Final[dict[str, dict[str, tuple[tuple[type, ...], str]]]] = {
    "chat": {"messages": ((list,), "a list of messages")},
    "completions": {"prompt": _TEXT_OR_LIST},
    "embeddings": {"input": _TEXT_OR_LIST},
    "responses": {"input": _TEXT_OR_LIST},
    "messages": {"messages": ((list,), "a list of messages"), "system": _TEXT_OR_LIST},
}


def check_request(endpoint: Endpoint, request: Mapping[str, Any]) -> None:
    """Refuse, with ``EstimateError``, a body no provider accepts and that would fail further on:
    a field of the wrong JSON type, a count past ``MAX_COUNT``, nesting past ``MAX_NESTING``
    levels, a lone surrogate in any string."""
    for name, (types, said) in (*_SHAPES.items(), *_ENDPOINT_SHAPES.get(endpoint, {}).items()):
        value = request.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise EstimateError(f"'{name}' must be {said}, got {type(value).__name__}")
    for name in _COUNTS:
        value = request.get(name)
        if isinstance(value, int) and value > MAX_COUNT:
            raise EstimateError(f"'{name}' must be at most {MAX_COUNT}")
    _check_nesting_and_text(request)


def _check_nesting_and_text(request: Mapping[str, Any]) -> None:
    """Iterative, so that no depth can exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(request, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            raise EstimateError(f"the request is nested more than {MAX_NESTING} levels deep")
        if isinstance(item, Mapping):
            for key in item:
                if type(key) is str and not key.isascii() and _SURROGATES.search(key):
                    raise _surrogate_error()
            values: Iterable[Any] = item.values()
        elif _NUMBERS.issuperset(map(type, item)):
            continue  # token ids: one pass in C, not one loop turn per number
        else:
            values = item
        for value in values:
            kind = type(value)
            if kind is str:
                if not value.isascii() and _SURROGATES.search(value):
                    raise _surrogate_error()
            elif kind in _CONTAINERS or (kind not in _SCALARS and isinstance(value, Mapping | list | tuple)):
                stack.append((value, depth + 1))


def _surrogate_error() -> EstimateError:
    return EstimateError(
        "the request holds a lone UTF-16 surrogate (such as \\ud800), which is not text; send valid Unicode"
    )


def _storable(estimate: Estimate) -> None:
    amount = estimate.amount
    if amount > MAX_AMOUNT:
        raise EstimateError(
            f"the worst case of this request, {amount}, is over the most one request may reserve "
            f"({MAX_AMOUNT}); lower max_tokens (or n)"
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """The worst-case cost of one request, and how it was reached."""

    model: str
    price: ModelPrice
    prompt: TokenCount
    max_output_tokens: int
    #: "request" (the caller set it), "model" (the model's max output), "context"
    #: (what the context window leaves), "default" (the guard's default_max_output_tokens)
    #: or "none" (embeddings).
    output_source: str
    n: int
    prompt_rate: int
    output_rate: int
    #: Hosted tool fees reserved: (tool, femto-USD) pairs, the request's uplift applied.
    tools_femto: tuple[tuple[str, int], ...] = ()
    #: The tool uses reserved for (tool -> uses; a cap shared by several tools is counted
    #: under the dearest of them).
    tool_calls: Mapping[str, int] = field(default_factory=dict)
    #: Fields the guard sets in the body sent, so the provider cannot bill more tool uses than
    #: reserved: ``max_tool_calls`` (Responses) or ``tools`` with ``max_uses`` (Anthropic).
    body_changes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tool_femto(self) -> int:
        return sum(femto for _tool, femto in self.tools_femto)

    @property
    def amount(self) -> Money:
        femto = self.prompt.tokens * self.prompt_rate + self.n * self.max_output_tokens * self.output_rate
        return Money.from_femto_ceil(femto + self.tool_femto)

    def with_max_output(self, max_output_tokens: int) -> Estimate:
        """The same request with a lower output cap (clamp mode)."""
        return replace(self, max_output_tokens=max_output_tokens, output_source="request")

    def with_prompt(self, prompt_tokens: int) -> Money:
        """The worst case with the prompt the provider reported in place of its bound."""
        return self.bound_cost(prompt_tokens).total

    def bound_cost(self, prompt_tokens: int | None = None) -> Cost:
        """The worst case as a Cost whose parts sum to it (the prompt at the worst prompt rate,
        the output cap at the worst output rate): what a request ended without usage is
        charged, with ``prompt_tokens`` the provider reported in place of the bound."""
        prompt = self.prompt.tokens if prompt_tokens is None else prompt_tokens
        output = self.n * self.max_output_tokens
        usage = Usage(input_tokens=prompt, output_tokens=output)
        return Cost(
            model=self.model,
            usage=usage.with_tool_calls({t: n for t, n in self.tool_calls.items() if t in TOOL_CALL_FIELDS}),
            input_femto=prompt * self.prompt_rate,
            cache_read_femto=0,
            cache_write_femto=0,
            output_femto=output * self.output_rate,
            reasoning_femto=0,
            tools_femto=self.tools_femto,
        )

    def max_output_affordable(self, budget: Money) -> int:
        """The largest output cap whose worst case fits in ``budget`` (0 if none)."""
        left = budget.nanos * 10**6 - self.prompt.tokens * self.prompt_rate - self.tool_femto
        per_token = self.n * self.output_rate
        if left < 0:
            return 0
        if per_token == 0:
            return self.max_output_tokens
        return min(self.max_output_tokens, left // per_token)


def estimate_request(
    endpoint: Endpoint,
    request: Mapping[str, Any],
    *,
    catalog: Catalog,
    counter: TokenCounter | None = None,
    model: str | None = None,
    unbounded_policy: UnboundedInputPolicy = "context_window",
    default_max_tool_calls: int | None = DEFAULT_MAX_TOOL_CALLS,
    data_residency: str | None = None,
    endpoint_location: str | None = None,
) -> Estimate:
    """Bound the cost of ``request`` (the body sent to ``endpoint``).

    ``data_residency`` (``eu``/``us``/``fedramp``: the OpenAI host called) and
    ``endpoint_location`` (a Vertex location) are where the call goes: not in the body, so the
    caller says them, and their uplift is reserved.

    ``unbounded_policy``: for a request whose input is not all in its body (see
    ``unbounded_input``): bound the prompt by the model's context window, or refuse.
    ``default_max_tool_calls``: the hosted tool uses reserved (and set in the body sent, see
    ``Estimate.body_changes``) where the request allows any number; None refuses it."""
    if endpoint not in ENDPOINTS:
        raise EstimateError(f"unknown endpoint {endpoint!r}; known: {', '.join(ENDPOINTS)}")
    counter = counter or default_counter()
    model = model or request.get("model")
    if not isinstance(model, str) or not model:
        raise EstimateError("the request names no model ('model' is required)")
    check_request(endpoint, request)
    price = catalog.price(model)

    prompt = _count_prompt(endpoint, request, model, counter)
    _check_context(model, price, prompt)
    unbounded = unbounded_input(endpoint, request)
    per_request = any(fee.per == "request" for fee in price.tool_fees.values())
    if unbounded is None and per_request:
        unbounded = f"{model!r} searches on every request and adds the results to the input"
    if unbounded is not None:
        prompt = _context_bound(price, prompt, unbounded, unbounded_policy)
    n = _choices(endpoint, request)
    if endpoint == "embeddings":
        max_out, source = 0, "none"
    else:
        max_out, source = _max_output(endpoint, request, price, prompt.tokens)

    rates = _worst_rates(price, prompt.tokens, request.get("service_tier"))
    prompt_rate = rates.input_rate()
    # Anthropic writes to its cache where the request says cache_control; OpenAI writes on its
    # own (and bills it where the model prices writes), whatever the request says.
    if price.provider in _CACHES_UNASKED or _mentions(request, "cache_control"):
        prompt_rate = max(
            prompt_rate, rates.cache_write_rate(), rates.cache_write_1h_rate(), rates.cache_write_12h_rate()
        )
    if _has_audio(request):
        prompt_rate = max(prompt_rate, rates.audio_input_rate())
    output_rate = max(
        rates.output_rate(), rates.reasoning_rate(), rates.audio_output_rate(), rates.image_output_rate()
    )
    # An uplift the request asks for (Anthropic's inference_geo, speed: fast), or where it is
    # sent (a regional host or location), rounded up.
    num, den = price.multiplier(
        inference_geo=_word(request.get("inference_geo")),
        speed=_word(request.get("speed")),
        data_residency=data_residency,
        endpoint_location=endpoint_location,
    )
    if (num, den) != (1, 1):
        prompt_rate, output_rate = -(-prompt_rate * num // den), -(-output_rate * num // den)
    tools = _NO_TOOLS
    if (
        request.get("tools")
        or request.get("web_search_options") is not None
        or request.get("prompt")
        or per_request
    ):
        tools = _ToolBounder(endpoint, request, price, catalog, default_max_tool_calls).bound()
    estimate = Estimate(
        model=model,
        price=price.with_tool_fees(tools.fees) if tools.fees else price,
        prompt=prompt,
        max_output_tokens=max_out,
        output_source=source,
        n=n,
        prompt_rate=prompt_rate,
        output_rate=output_rate,
        tools_femto=tuple((tool, -(-femto * num // den)) for tool, femto in tools.parts),
        tool_calls=tools.calls,
        body_changes=tools.body,
    )
    _storable(estimate)
    return estimate


def _count_prompt(
    endpoint: Endpoint, request: Mapping[str, Any], model: str, counter: TokenCounter
) -> TokenCount:
    tools = request.get("tools") or request.get("functions")
    if endpoint in ("chat", "messages"):
        messages = list(request.get("messages") or [])
        if not isinstance(request.get("messages"), list):
            raise EstimateError("'messages' must be a list of messages")
        system = request.get("system")
        if endpoint == "messages" and system:
            messages = [{"role": "system", "content": system}, *messages]
        return counter.count_messages(model, messages, tools=tools)
    if endpoint == "completions":
        return counter.count_prompt(model, request.get("prompt") or "")
    if endpoint == "embeddings":
        return counter.count_prompt(model, request.get("input") or "")
    # responses: instructions + input (a string or a list of items)
    items = request.get("input")
    messages = []
    if request.get("instructions"):
        messages.append({"role": "system", "content": request["instructions"]})
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        messages.extend(
            item if isinstance(item, Mapping) else {"role": "user", "content": str(item)} for item in items
        )
    return counter.count_messages(model, messages, tools=tools)


def _check_context(model: str, price: ModelPrice, prompt: TokenCount) -> None:
    """Refuse a prompt of the body that is surely past the context window. Only an exact count
    is trusted: a bound (``exact=False``) may be far above the true count and no sound lower
    bound follows from it (one BPE token can cover dozens of bytes), so a bound never refuses:
    a request that fits is never refused. Input the body does not hold is bounded by the window
    afterwards, on purpose, and is not checked here."""
    window = price.context_window
    if prompt.exact and window and prompt.tokens > window:
        raise ContextLengthExceededError(model, prompt.tokens, window)


def _choices(endpoint: Endpoint, request: Mapping[str, Any]) -> int:
    if endpoint not in ("chat", "completions"):
        return 1
    counts = {"n": request.get("n"), "best_of": request.get("best_of") if endpoint == "completions" else None}
    checked: list[int] = []
    for name, given in counts.items():
        value = 1 if given is None else given
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EstimateError(f"'{name}' must be a whole number >= 1, got {value!r}")
        checked.append(value)
    return max(checked)  # best_of completions are generated (and billed), n returned


def _max_output(
    endpoint: Endpoint, request: Mapping[str, Any], price: ModelPrice, prompt_tokens: int
) -> tuple[int, str]:
    names = {
        "chat": ("max_completion_tokens", "max_tokens"),
        "completions": ("max_tokens",),
        "responses": ("max_output_tokens",),
        "messages": ("max_tokens",),
    }[endpoint]
    given: list[int] = []
    for name in names:
        value = request.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise EstimateError(f"'{name}' must be a whole number >= 0, got {value!r}")
            given.append(value)
    if given:
        # Servers read one field or the other: the request may generate up to the larger.
        return max(given), "request"
    if price.max_output_tokens:
        return price.max_output_tokens, "model"
    if price.context_window and price.context_window > prompt_tokens:
        return price.context_window - prompt_tokens, "context"
    raise EstimateError(
        f"cannot bound the output of {price.name!r}: the request sets no {names[-1]} and the "
        "catalog knows no max output or context window for the model; set "
        f"{names[0]} in the request or max_output_tokens in the model's price"
    )


#: Service tiers a request names that pin the standard rates (OpenAI's "default", Anthropic's
#: "standard_only"). A request naming none, "auto", or a tier this catalog does not know may be
#: served at any tier the provider runs by default, priority included: it is reserved at the
#: highest of them (flex and batch are never served unasked).
_STANDARD_TIERS: Final = frozenset({"default", "standard", "standard_only"})
_ASKED_ONLY: Final = frozenset({"batch", "flex"})


def tables_for(price: ModelPrice, service_tier: object) -> list[RateTable]:
    """The rate tables a request asking for ``service_tier`` may be billed at."""
    if isinstance(service_tier, str) and service_tier in price.service_tiers:
        return [price.service_tiers[service_tier]]
    if isinstance(service_tier, str) and service_tier in _STANDARD_TIERS:
        return [price.standard]
    return [price.standard, *(t for name, t in price.service_tiers.items() if name not in _ASKED_ONLY)]


UnboundedInputPolicy = Literal["context_window", "refuse"]
UNBOUNDED_INPUT_POLICIES: Final = ("context_window", "refuse")

#: Responses API fields that bring input the body does not hold (a stored response, a
#: conversation, a stored prompt template).
_STORED_INPUT: Final = ("previous_response_id", "conversation")
#: Hosted tools whose results the provider feeds back as input it bills: Responses API tool
#: types, and the prefixes of Anthropic's server tools.
_HOSTED_TOOLS: Final = frozenset(
    {
        "web_search",
        "web_search_preview",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer_use_preview",
        "mcp",
    }
)
_SERVER_TOOL_PREFIXES: Final = ("web_search_", "web_fetch_", "code_execution_")


def unbounded_input(endpoint: Endpoint, request: Mapping[str, Any]) -> str | None:
    """Why the input of ``request`` is not all in its body (None when it is): what the
    provider bills as input then is bounded only by the model's context window."""
    if endpoint == "responses":
        for name in _STORED_INPUT:
            if request.get(name) is not None:
                return f"'{name}' brings input stored at the provider"
        if isinstance(request.get("prompt"), Mapping):
            return "'prompt' names a stored prompt"
    for tool in request.get("tools") or ():
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if isinstance(kind, str) and (kind in _HOSTED_TOOLS or kind.startswith(_SERVER_TOOL_PREFIXES)):
            return f"the hosted tool {kind!r} adds its results to the input"
    if endpoint == "chat" and request.get("web_search_options") is not None:
        return "'web_search_options' adds search results to the input"
    if _mentions(request.get("messages") or request.get("input") or [], "file_id"):
        return "a file given by 'file_id' is not in the body"
    return None


def _context_bound(
    price: ModelPrice, prompt: TokenCount, why: str, policy: UnboundedInputPolicy
) -> TokenCount:
    """The prompt bound of a request whose input is not all in its body."""
    if policy == "refuse" or not price.context_window:
        where = (
            "the policy refuses such requests"
            if policy == "refuse"
            else "the catalog knows no context window"
        )
        raise EstimateError(
            f"cannot bound the input of this {price.name!r} request: {why}, and {where}; "
            "send the input in the body, or allow a bound by the model's context window"
        )
    return TokenCount(tokens=max(prompt.tokens, price.context_window), exact=False, method="context_window")


def _worst_rates(price: ModelPrice, prompt_bound: int, service_tier: object) -> Rates:
    """The highest rate of each kind among the tiers, and the long-context tiers, a prompt up to
    the bound may be billed at."""
    candidates = [
        rates
        for table in tables_for(price, service_tier)
        for rates in (table.base, *(t.rates for t in table.tiers if prompt_bound > t.above))
    ]
    if len(candidates) == 1:
        return candidates[0]
    return Rates(
        input=max(r.input_rate() for r in candidates),
        output=max(r.output_rate() for r in candidates),
        cache_read=max(r.cache_read_rate() for r in candidates),
        cache_write=max(r.cache_write_rate() for r in candidates),
        cache_write_1h=max(r.cache_write_1h_rate() for r in candidates),
        cache_write_12h=max(r.cache_write_12h_rate() for r in candidates),
        reasoning=max(r.reasoning_rate() for r in candidates),
        audio_input=max(r.audio_input_rate() for r in candidates),
        audio_output=max(r.audio_output_rate() for r in candidates),
        image_output=max(r.image_output_rate() for r in candidates),
    )


#: Providers that write to their prompt cache without being asked.
_CACHES_UNASKED: Final = frozenset({"openai", "azure"})


def _word(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _mentions(obj: Any, key: str) -> bool:
    """Whether ``key`` is a key of any mapping nested in ``obj`` (iterative: bodies can be deep)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if key in item:
                return True
            stack.extend(_nested(item.values()))
        elif isinstance(item, list | tuple):
            stack.extend(_nested(item))
    return False


#: JSON bodies are dicts, lists and scalars: exact type checks spare most ABC checks (slow).
_CONTAINERS: Final = frozenset({dict, list, tuple})
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _nested(values: Iterable[Any]) -> list[Any]:
    return [
        v
        for v in values
        if type(v) in _CONTAINERS or (type(v) not in _SCALARS and isinstance(v, Mapping | list | tuple))
    ]


def _has_audio(request: Mapping[str, Any]) -> bool:
    modalities = request.get("modalities")
    if isinstance(modalities, Iterable) and not isinstance(modalities, str) and "audio" in modalities:
        return True
    return _mentions(request.get("messages") or request.get("input") or [], "input_audio")


# -- hosted tools billed per use ------------------------------------------------------------------

#: Anthropic's server tools (``web_search_20250305``): each has its own ``max_uses``.
_ANTHROPIC_TOOL: Final = re.compile(r"^(?P<tool>web_search|web_fetch|code_execution)_\d{8}$")
#: OpenAI's hosted tools (``web_search``, ``web_search_preview_2025_03_11``...): one
#: ``max_tool_calls`` (Responses only) bounds them all together.
_OPENAI_TOOL: Final = re.compile(
    r"^(?:(?P<search>web_search(?:_preview)?(?:_\d{4}_\d{2}_\d{2})?)|file_search|code_interpreter)$"
)
#: Tools a stored prompt (Responses ``prompt``) may bring without the body naming them.
_STORED_PROMPT_TOOLS: Final = ("web_search", "file_search", "code_interpreter")
_SHARED: Final = "max_tool_calls"
_CODE_EXECUTION: Final = (
    "Anthropic bills code execution by container time, which no request field bounds and no answer reports"
)


@dataclass(frozen=True, slots=True)
class _ToolUse:
    tool: str
    #: The size the request asks for (search_context_size, memory_limit), None if it names none.
    size: str | None
    #: What bounds its uses: _SHARED, the index of its Anthropic tool (its own max_uses), or a
    #: reason nothing in the body can.
    cap: str | int
    #: Not named in the body: a stored prompt may bring it.
    stored: bool = False


@dataclass(frozen=True, slots=True)
class _ToolBound:
    parts: tuple[tuple[str, int], ...] = ()
    calls: Mapping[str, int] = field(default_factory=dict)
    #: The fees the request selected (one fee, at the size it asked), for its settlement.
    fees: Mapping[str, ToolFee] = field(default_factory=dict)
    body: Mapping[str, Any] = field(default_factory=dict)


#: Most requests: shared, so read-only.
_NO_TOOLS: Final = _ToolBound(
    calls=MappingProxyType({}), fees=MappingProxyType({}), body=MappingProxyType({})
)


class _ToolBounder:
    """The hosted tool fees a request may incur: each fee-bearing tool's allowed uses times its
    highest per-use fee (see docs/design.md, How a request is bounded)."""

    def __init__(
        self,
        endpoint: Endpoint,
        request: Mapping[str, Any],
        price: ModelPrice,
        catalog: Catalog,
        default_cap: int | None,
    ) -> None:
        self.endpoint = endpoint
        self.request = request
        self.price = price
        self.catalog = catalog
        self.default_cap = default_cap
        self.parts: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.fees: dict[str, ToolFee] = {}
        self.body: dict[str, Any] = {}

    def bound(self) -> _ToolBound:
        uses = self._uses()
        every = {tool: fee for tool, fee in self.price.tool_fees.items() if fee.per == "request"}
        if not uses and not every:
            return _ToolBound()
        # Billed once on every request (a search model's search): one use, whatever the body says.
        for tool, fee in every.items():
            self._reserve(tool, 1, fee)
            self._pin(tool, fee, [u.size for u in uses if u.tool == tool])
        shared: list[tuple[_ToolUse, ToolFee]] = []
        anthropic: dict[int, tuple[_ToolUse, ToolFee]] = {}
        once: set[str] = set()
        for use in uses:
            if use.tool in every:
                continue
            found = self._fee(use)
            if found is None:
                continue  # a stored prompt's tool with no fee known anywhere
            self._pin(use.tool, found, [u.size for u in uses if u.tool == use.tool])
            if found.highest == 0:
                continue  # free per use (Anthropic's web fetch): nothing to reserve or cap
            if found.per == "prompt":
                if use.tool not in once:
                    once.add(use.tool)
                    self._reserve(use.tool, 1, found)
            elif use.cap == _SHARED:
                shared.append((use, found))
            elif isinstance(use.cap, int):
                anthropic[use.cap] = (use, found)
            else:
                raise self._unbounded(use.tool, use.cap)
        if shared:
            # One cap for them all: every allowed call may be of the dearest tool.
            dearest, fee = max(shared, key=lambda pair: pair[1].highest)
            self._reserve(dearest.tool, self._shared_cap(dearest.tool), fee)
        for index, (use, fee) in anthropic.items():
            self._reserve(use.tool, self._own_cap(index, use.tool), fee)
        return _ToolBound(tuple(self.parts.items()), self.calls, self.fees, self.body)

    def _uses(self) -> list[_ToolUse]:
        uses: list[_ToolUse] = []
        tools = self.request.get("tools")
        for index, tool in enumerate(tools if isinstance(tools, list) else ()):
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            if not isinstance(kind, str):
                continue
            if (match := _ANTHROPIC_TOOL.match(kind)) is not None:
                name = match["tool"]
                cap: str | int = index
                if name == "code_execution":
                    cap = _CODE_EXECUTION
                uses.append(_ToolUse(name, None, cap))
            elif (match := _OPENAI_TOOL.match(kind)) is not None:
                uses.append(self._openai_use(kind, match["search"] is not None, tool))
        if self.endpoint == "chat" and isinstance(self.request.get("web_search_options"), Mapping):
            size = _word(self.request["web_search_options"].get("search_context_size"))
            why = "'web_search_options' on a model that is not a search model: nothing in the body bounds its searches"
            uses.append(_ToolUse("web_search", size, why))
        if self.endpoint == "responses" and isinstance(self.request.get("prompt"), Mapping):
            named = {u.tool for u in uses}
            uses += [_ToolUse(t, None, _SHARED, stored=True) for t in _STORED_PROMPT_TOOLS if t not in named]
        return uses

    def _openai_use(self, kind: str, search: bool, tool: Mapping[str, Any]) -> _ToolUse:
        name = "web_search" if search else kind
        size: str | None = None
        if search:
            size = _word(tool.get("search_context_size"))
        elif kind == "code_interpreter" and isinstance(tool.get("container"), Mapping):
            size = _word(tool["container"].get("memory_limit"))
        cap = (
            _SHARED
            if self.endpoint == "responses"
            else f"a {name!r} tool in a {self.endpoint} request, where no field bounds its calls"
        )
        return _ToolUse(name, size, cap)

    def _fee(self, use: _ToolUse) -> ToolFee | None:
        """The model's fee for the tool, else the highest of the provider's (never $0); None for
        a tool a stored prompt may bring that no model of the provider has a fee for."""
        fee = self.price.tool_fees.get(use.tool) or self.catalog.highest_tool_fee(
            self.price.provider, use.tool
        )
        if fee is None:
            if use.stored:
                return None
            raise EstimateError(
                f"cannot bound the tool fees of this {self.price.name!r} request: the catalog knows no "
                f"{use.tool} fee for it or any other {self.price.provider or 'unnamed-provider'} model; "
                f"add one (prices: {self.price.name}: tool_fees: {use.tool}: <USD per use>) or leave the tool out"
            )
        if not fee.knows(use.size):
            raise EstimateError(
                f"cannot bound the tool fees of this {self.price.name!r} request: the catalog prices "
                f"{use.tool} at {', '.join(fee.sizes)} only, not {use.size!r}; add that fee to the "
                "model's tool_fees, or ask for a priced size"
            )
        return fee

    def _pin(self, tool: str, fee: ToolFee, sizes: list[str | None]) -> None:
        # The settle prices a use at the size asked (the default if none): the dearest if several.
        # A tool no answer counts (code execution) is charged as reserved: once for this request.
        per = "request" if tool not in TOOL_CALL_FIELDS and fee.per == "prompt" else fee.per
        self.fees[tool] = ToolFee(fee=max(fee.at(size, tool) for size in sizes or [None]), per=per)

    def _reserve(self, tool: str, uses: int, fee: ToolFee) -> None:
        if uses:
            self.parts[tool] = self.parts.get(tool, 0) + uses * fee.highest * FEMTO_PER_NANO
            self.calls[tool] = self.calls.get(tool, 0) + uses

    def _shared_cap(self, tool: str) -> int:
        given = self.request.get(_SHARED)
        if given is not None:
            return _count(_SHARED, given)
        if self.default_cap is None:
            raise self._unbounded(tool, "the request sets no 'max_tool_calls'")
        self.body[_SHARED] = self.default_cap
        return self.default_cap

    def _own_cap(self, index: int, tool: str) -> int:
        spec = self.request["tools"][index]
        if spec.get("max_uses") is not None:
            return _count("max_uses", spec["max_uses"])
        if self.default_cap is None:
            raise self._unbounded(tool, f"its tool {spec.get('type')!r} sets no 'max_uses'")
        tools = list(self.body.get("tools") or self.request["tools"])
        tools[index] = {**spec, "max_uses": self.default_cap}
        self.body["tools"] = tools
        return self.default_cap

    def _unbounded(self, tool: str, why: str) -> EstimateError:
        fix = {
            "responses": "set 'max_tool_calls'",
            "messages": "set 'max_uses' on the tool",
        }.get(self.endpoint, "use the Responses API with 'max_tool_calls', or a search model")
        if why is _CODE_EXECUTION:
            fix = (
                f"leave the tool out, or give the model's price a {tool} fee to count per request "
                '(tool_fees: {code_execution: {fee: ..., per: prompt}}; "0" sends it unbudgeted)'
            )
        return EstimateError(
            f"cannot bound the {tool} fees of this {self.price.name!r} request: {why}, so it may "
            f"make any number of billed {tool} uses; {fix}"
        )


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise EstimateError(f"'{name}' must be a whole number from 0 to {MAX_COUNT}, got {value!r}")
    return value
