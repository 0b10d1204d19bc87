"""A request's log line -> what its span and metrics say (no OpenTelemetry import here).

The names are the GenAI semantic conventions' (``gen_ai.*``, as in
opentelemetry-semantic-conventions 0.66b2; ``gen_ai.provider.name`` replaced
``gen_ai.system``), the general ``error.type``, ``http.response.status_code``,
``user.id`` and ``enduser.id``, and spendgate's own under ``spendgate.``. The table
is in docs/telemetry.md; tests check the names against the installed package.

Amounts are doubles at this edge (OTel attributes and counters carry no Decimal): the
nearest double to the exact decimal, whose ``repr`` gives that decimal back for amounts
under one million USD. The exact amount stays in the ledger and the log line, found by
``spendgate.request.id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

AttributeValue = str | bool | int | float | Sequence[str]

# GenAI semantic conventions.
OPERATION: Final = "gen_ai.operation.name"
PROVIDER: Final = "gen_ai.provider.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
CACHE_CREATION_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
REASONING_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
TOKEN_TYPE: Final = "gen_ai.token.type"
# General conventions.
ERROR_TYPE: Final = "error.type"
HTTP_STATUS: Final = "http.response.status_code"
USER_ID: Final = "user.id"
ENDUSER_ID: Final = "enduser.id"
# spendgate's own.
REQUEST_ID: Final = "spendgate.request.id"
ENDPOINT: Final = "spendgate.endpoint"
OUTCOME: Final = "spendgate.outcome"
ACTION: Final = "spendgate.action"
REASON: Final = "spendgate.reason"
COST: Final = "spendgate.cost.usd"
RESERVED: Final = "spendgate.reserved.usd"
ESTIMATE: Final = "spendgate.estimate.usd"
BUDGET_IDS: Final = "spendgate.budget.ids"
REFUSED_BY: Final = "spendgate.budget.refused_by"
BUDGET_REMAINING: Final = "spendgate.budget.remaining.usd"
LIMIT_IDS: Final = "spendgate.limit.ids"
RETRY_AFTER: Final = "spendgate.retry_after.seconds"
KEY_ID: Final = "spendgate.key.id"
TEAM: Final = "spendgate.team"
PROJECT: Final = "spendgate.project"
TAGS: Final = "spendgate.tags"
CLAMPED_TO: Final = "spendgate.clamped_to"
WAITED: Final = "spendgate.waited.seconds"
UPSTREAM_STATUS: Final = "spendgate.upstream.status_code"

#: spendgate's endpoints -> ``gen_ai.operation.name`` (Anthropic's Messages and OpenAI's
#: Responses are chat, as in the conventions' provider pages).
OPERATIONS: Final = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
_PATHS: Final = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}
#: The catalog's provider names -> the conventions' well-known ``gen_ai.provider.name`` values
#: (others pass as they are).
PROVIDERS: Final = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "vertex_ai-language-models": "gcp.vertex_ai",
    "vertex_ai-anthropic_models": "gcp.vertex_ai",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "mistral": "mistral_ai",
    "groq": "groq",
    "perplexity": "perplexity",
    "xai": "x_ai",
    "deepseek": "deepseek",
    "watsonx": "ibm.watsonx.ai",
}
#: Outcomes that failed the request (``error.type`` is set, the span's status is ERROR).
_FAILED: Final = frozenset({"upstream_error", "not_sent", "lost", "cut"})


@dataclass(slots=True)
class RequestView:
    """One request as telemetry sees it."""

    name: str  # the span's: "{gen_ai.operation.name} {gen_ai.request.model}"
    server: bool  # a gateway request (a SERVER span), else an SDK call (CLIENT)
    seconds: float  # from its start to its end
    attributes: dict[str, AttributeValue]
    #: The metrics' attributes: low cardinality only (no ids of people or requests).
    metric_attributes: dict[str, str]
    outcome: str
    error_type: str | None
    cost_usd: float  # charged: 0 for a release or a refusal
    input_tokens: int | None  # as the provider reported them, else None
    output_tokens: int | None
    key_id: str | None = None


def describe(fields: Mapping[str, Any], *, capture_user: bool = False) -> RequestView | None:
    """The view of a finished request line (``spendgate.logs.finish_line``), or None for a
    line that is no model request (a gateway 404 for an unknown path)."""
    server = "method" in fields
    endpoint = fields.get("endpoint") or _PATHS.get(str(fields.get("path", "")))
    if endpoint is None:
        return None
    operation = OPERATIONS.get(endpoint, str(endpoint))
    model = fields.get("model")
    attributes: dict[str, AttributeValue] = {OPERATION: operation, ENDPOINT: str(endpoint)}
    metric: dict[str, str] = {OPERATION: operation}
    if isinstance(model, str):
        attributes[REQUEST_MODEL] = metric[REQUEST_MODEL] = model
    provider = fields.get("provider")
    if isinstance(provider, str) and provider:
        attributes[PROVIDER] = metric[PROVIDER] = PROVIDERS.get(provider, provider)
    if (rid := fields.get("request_id")) is not None:
        attributes[REQUEST_ID] = str(rid)
    if isinstance(cap := fields.get("max_output_tokens"), int):
        attributes[REQUEST_MAX_TOKENS] = cap

    decision, action = fields.get("decision"), fields.get("action")
    reason = fields.get("reason")
    status = fields.get("status")
    upstream = fields.get("upstream_status")
    if action == "refuse":
        outcome = str(reason)  # budget_exceeded, budget_paused, rate_limited, prompt_too_large, ...
    elif action == "release":  # nothing billed: the provider's error status, or never sent
        happened = fields.get("happened")
        refused_upstream = happened == "refused" or (isinstance(upstream, int) and upstream >= 400)
        outcome = (
            "upstream_error" if refused_upstream else "not_sent" if happened == "not_sent" else "released"
        )
    elif isinstance(decision, str):
        outcome = decision  # ok, unread, cut, closed, lost
    else:
        outcome = "error"  # the gateway answered before the guard (a bad key, an unknown model, ...)
    error_type: str | None = None
    if action == "refuse":
        error_type = outcome
    elif fields.get("error"):
        error_type = str(fields["error"])
    elif outcome == "upstream_error" and isinstance(upstream, int):
        error_type = str(upstream)
    elif outcome in _FAILED or outcome == "released":
        error_type = outcome
    elif outcome == "error" or (isinstance(status, int) and status >= 500):
        error_type = str(status) if status is not None else "error"
    attributes[OUTCOME] = metric[OUTCOME] = outcome
    if error_type is not None:
        attributes[ERROR_TYPE] = metric[ERROR_TYPE] = error_type
    if isinstance(action, str):
        attributes[ACTION] = action
    if isinstance(reason, str) and outcome != "ok":  # an ok request's reason says only that
        attributes[REASON] = reason
    if isinstance(status, int):
        attributes[HTTP_STATUS] = status
    if isinstance(upstream, int):
        attributes[UPSTREAM_STATUS] = upstream

    cost = _usd(fields.get("charged_usd"))
    if "charged_usd" in fields:
        attributes[COST] = cost
    for name, attr in (
        ("reserved_usd", RESERVED),
        ("estimate_usd", ESTIMATE),
        ("budget_remaining_usd", BUDGET_REMAINING),
    ):
        if name in fields:
            attributes[attr] = _usd(fields[name])
    budgets = [str(b) for b in fields.get("budgets") or ()]
    if budgets:
        attributes[BUDGET_IDS] = budgets
        if outcome in ("budget_exceeded", "budget_paused"):
            attributes[REFUSED_BY] = budgets[0]
    if limits := [str(b) for b in fields.get("limits") or ()]:
        attributes[LIMIT_IDS] = limits
    if isinstance(retry := fields.get("retry_after"), int | float):
        attributes[RETRY_AFTER] = float(retry)
    if isinstance(clamped := fields.get("clamped_to"), int):
        attributes[CLAMPED_TO] = clamped
    if isinstance(waited := fields.get("waited_seconds"), int | float):
        attributes[WAITED] = float(waited)

    who = fields.get("attributes") or {}
    key = fields.get("key_id") or who.get("key")
    if key:
        attributes[KEY_ID] = str(key)
    for name, attr in (("team", TEAM), ("project", PROJECT)):
        if who.get(name):
            attributes[attr] = str(who[name])
    if who.get("tags"):
        attributes[TAGS] = [str(t) for t in who["tags"]]
    if capture_user:
        if who.get("user"):
            attributes[USER_ID] = str(who["user"])
        if who.get("customer"):
            attributes[ENDUSER_ID] = str(who["customer"])

    input_tokens = output_tokens = None
    if action == "settle":  # the provider's own count; a bound charged is no token count
        tokens = fields.get("tokens") or {}
        input_tokens = int(tokens.get("input_tokens", 0))
        output_tokens = int(tokens.get("output_tokens", 0))
        attributes[INPUT_TOKENS] = input_tokens
        attributes[OUTPUT_TOKENS] = output_tokens
        if tokens.get("cache_read_tokens"):
            attributes[CACHE_READ_TOKENS] = int(tokens["cache_read_tokens"])
        writes = sum(
            int(tokens.get(name, 0))
            for name in ("cache_write_tokens", "cache_write_1h_tokens", "cache_write_12h_tokens")
        )
        if writes:
            attributes[CACHE_CREATION_TOKENS] = writes
        if tokens.get("reasoning_tokens"):
            attributes[REASONING_TOKENS] = int(tokens["reasoning_tokens"])

    millis = fields.get("latency_ms", fields.get("duration_ms", 0.0))
    return RequestView(
        name=f"{operation} {model}" if isinstance(model, str) else operation,
        server=server,
        seconds=max(0.0, float(millis) / 1000),
        attributes=attributes,
        metric_attributes=metric,
        outcome=outcome,
        error_type=error_type,
        cost_usd=cost,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        key_id=str(key) if key else None,
    )


def _usd(value: object) -> float:
    """A decimal string of USD (the log line's) as the nearest double; 0.0 for none."""
    if value is None:
        return 0.0
    return float(str(value))
