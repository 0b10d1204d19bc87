"""The worst case a request can cost: what the ledger reserves before the call.

    prompt upper bound x worst prompt rate  +  n x max output x worst output rate

The prompt rate is the input rate, or the cache-write rate where the request
asks for caching (Anthropic ``cache_control``), or the audio rate where it
carries audio; the output rate is the highest of output, reasoning and audio
output. A long-context tier whose threshold the prompt bound passes is
included. The prompt is billed once whatever ``n`` is, as providers bill it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from spendgate.cost import Cost
from spendgate.errors import SpendgateError
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.pricing.schema import ModelPrice, Rates
from spendgate.tokens import TokenCount, TokenCounter, default_counter
from spendgate.usage import Usage

Endpoint = Literal["chat", "completions", "embeddings", "responses", "messages"]
ENDPOINTS: tuple[Endpoint, ...] = ("chat", "completions", "embeddings", "responses", "messages")


class EstimateError(SpendgateError, ValueError):
    """The request cannot be bounded (for example no max output is known)."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """The worst-case cost of one request, and how it was reached."""

    model: str
    price: ModelPrice
    prompt: TokenCount
    max_output_tokens: int
    #: "request" (the caller set it), "model" (the model's max output), "context"
    #: (what the context window leaves) or "none" (embeddings).
    output_source: str
    n: int
    prompt_rate: int
    output_rate: int

    @property
    def amount(self) -> Money:
        femto = self.prompt.tokens * self.prompt_rate + self.n * self.max_output_tokens * self.output_rate
        return Money.from_femto_ceil(femto)

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
        return Cost(
            model=self.model,
            usage=Usage(input_tokens=prompt, output_tokens=output),
            input_femto=prompt * self.prompt_rate,
            cache_read_femto=0,
            cache_write_femto=0,
            output_femto=output * self.output_rate,
            reasoning_femto=0,
        )

    def max_output_affordable(self, budget: Money) -> int:
        """The largest output cap whose worst case fits in ``budget`` (0 if none)."""
        left = budget.nanos * 10**6 - self.prompt.tokens * self.prompt_rate
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
) -> Estimate:
    """Bound the cost of ``request`` (the body sent to ``endpoint``)."""
    if endpoint not in ENDPOINTS:
        raise EstimateError(f"unknown endpoint {endpoint!r}; known: {', '.join(ENDPOINTS)}")
    counter = counter or default_counter()
    model = model or request.get("model")
    if not isinstance(model, str) or not model:
        raise EstimateError("the request names no model ('model' is required)")
    price = catalog.price(model)

    prompt = _count_prompt(endpoint, request, model, counter)
    n = _choices(endpoint, request)
    if endpoint == "embeddings":
        max_out, source = 0, "none"
    else:
        max_out, source = _max_output(endpoint, request, price, prompt.tokens)

    rates = _worst_rates(price, prompt.tokens, request.get("service_tier"))
    prompt_rate = rates.input_rate()
    if _mentions(request, "cache_control"):
        prompt_rate = max(prompt_rate, rates.cache_write_rate(), rates.cache_write_1h_rate())
    if _has_audio(request):
        prompt_rate = max(prompt_rate, rates.audio_input_rate())
    output_rate = max(rates.output_rate(), rates.reasoning_rate(), rates.audio_output_rate())
    return Estimate(
        model=model,
        price=price,
        prompt=prompt,
        max_output_tokens=max_out,
        output_source=source,
        n=n,
        prompt_rate=prompt_rate,
        output_rate=output_rate,
    )


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
    for name in names:
        value = request.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise EstimateError(f"'{name}' must be a whole number >= 0, got {value!r}")
            return value, "request"
    if price.max_output_tokens:
        return price.max_output_tokens, "model"
    if price.context_window and price.context_window > prompt_tokens:
        return price.context_window - prompt_tokens, "context"
    raise EstimateError(
        f"cannot bound the output of {price.name!r}: the request sets no {names[-1]} and the "
        "catalog knows no max output or context window for the model; set "
        f"{names[0]} in the request or max_output_tokens in the model's price"
    )


def _worst_rates(price: ModelPrice, prompt_bound: int, service_tier: object) -> Rates:
    """The highest rate of each kind among the tiers a prompt up to the bound may hit."""
    table = price.service_tiers.get(str(service_tier), price.standard) if service_tier else price.standard
    candidates = [table.base] + [t.rates for t in table.tiers if prompt_bound > t.above]
    if len(candidates) == 1:
        return candidates[0]
    return Rates(
        input=max(r.input_rate() for r in candidates),
        output=max(r.output_rate() for r in candidates),
        cache_read=max(r.cache_read_rate() for r in candidates),
        cache_write=max(r.cache_write_rate() for r in candidates),
        cache_write_1h=max(r.cache_write_1h_rate() for r in candidates),
        reasoning=max(r.reasoning_rate() for r in candidates),
        audio_input=max(r.audio_input_rate() for r in candidates),
        audio_output=max(r.audio_output_rate() for r in candidates),
    )


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
