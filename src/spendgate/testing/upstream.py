"""A fake OpenAI- and Anthropic-compatible upstream: deterministic usage, streaming, injected faults.

The server is a small HTTP/1.1 server on asyncio's Protocol API (stdlib only, keep-alive, chunked
streaming). Chosen by measurement: non-streaming chat completions, 32 keep-alive connections, 3 s runs,
an asyncio load generator on the same 2-core machine: this server 15k-21k req/s (6.7k req/s for
16-event streams), uvicorn+httptools with a bare ASGI app over the same logic ~12k req/s. It is faster
and adds no dependency.

Deterministic usage (what ``prompt_tokens_for`` and ``output_tokens_for`` compute):

- text bytes of a content value: a string's UTF-8 bytes; for a list of parts, the sum over parts of a
  string part's bytes or a dict part's ``"text"`` bytes (images and other parts count 0).
- ``chat/completions``: sum over ``messages`` of ``3 + ceil(text_bytes(content) / 4)``.
- ``messages`` (Anthropic): the same over ``messages``, plus one more message for ``system`` if set.
- ``responses``: ``instructions`` (if set) counts as one message; ``input`` as a string is one
  message, as a list each item is one message (its ``content``, else its ``text``).
- ``completions`` (``prompt``) and ``embeddings`` (``input``): a string is ``ceil(bytes / 4)`` with no
  per-message overhead, a list of strings sums that, a list of token ids counts its length, a list of
  lists sums their lengths.
- output tokens: ``min(cap, default_output_tokens)`` where cap is ``max_completion_tokens``,
  ``max_tokens`` or ``max_output_tokens`` (the first set); embeddings have none.

Directives (request headers, so the body stays a valid provider body):
``x-fake-output-tokens: N`` (overrides the cap), ``x-fake-cached-tokens: N`` (clamped to the prompt),
``x-fake-reasoning-tokens: N`` (part of the output tokens, clamped to them; not emitted as text),
``x-fake-latency-ms: N`` (before the response starts), ``x-fake-chunk-delay-ms: N`` (between stream
events), ``x-fake-error: 400|401|429|500|503`` (the provider's error shape; 429 has ``retry-after``),
``x-fake-stream-cut-after: N`` (close the connection after N content events, before any usage),
``x-fake-omit-usage: 1`` (answer, and bill, without any usage report, as some compatible servers do),
``x-fake-tool-calls: K`` (the hosted tool uses a request with hosted tools makes, default 1; see below),
``x-fake-tool-result-tokens: N`` (input tokens each hosted tool use adds to the prompt, as search
results do; default 0),
``x-fake-hold: NAME`` (the response waits, before its latency, until ``POST /_fake/release/NAME``; from
then on requests held on NAME pass at once, until ``/_fake/reset``; the HTTP server only: a test can
count how many requests reached the upstream, ``held`` in the stats, with no timing).

Hosted tools, answered as the providers do and billed per use:

- Responses with ``web_search``/``web_search_preview`` (dated too), ``file_search`` or ``code_interpreter``
  in ``tools``: ``min(K, max_tool_calls)`` output items before the message, taking the offered tools in
  turn: ``web_search_call``, ``file_search_call``, ``code_interpreter_call`` (its ``container_id``: the
  tool's ``container`` when it names one, else one new ``cntr_fake...`` per tool and request). Streamed
  with their ``response.output_item.*`` and ``response.<tool>_call.*`` events, and listed in
  ``response.completed``.
- Messages (Anthropic) with ``web_search_YYYYMMDD``/``web_fetch_YYYYMMDD`` tools: ``min(K, max_uses)`` uses
  of each, as ``server_tool_use`` and ``web_search_tool_result``/``web_fetch_tool_result`` blocks before
  the text, counted in ``usage.server_tool_use`` (``message_start`` reports 0 and the prompt before any
  tool result; ``message_delta`` the cumulative counts).
- Chat completions to a search model (``*-search-preview``, ``*-search-api``): one web search a request.

Usage conventions: OpenAI ``prompt_tokens``/``input_tokens`` include cached tokens, reported again in
``*_tokens_details.cached_tokens``; Anthropic ``input_tokens`` exclude them and
``cache_read_input_tokens`` carries them. Anthropic's ``message_start`` reports ``output_tokens: 1``
like the real API; ``message_delta`` carries the final count.

Stats (``GET /_fake/stats``, reset by ``POST /_fake/reset``): requests per path, errors per status,
``held`` (requests waiting now, per hold name),
and per model what a provider would bill: ``prompt_tokens`` (including cached), ``cached_tokens``,
``output_tokens`` (including reasoning) and ``reasoning_tokens``, and the hosted tool uses billed
``web_search_calls``, ``web_fetch_calls``, ``file_search_calls``, ``code_interpreter_sessions`` (the
distinct containers of each answer, summed over answers). A cut stream bills the whole prompt, the
reasoning tokens, the content tokens actually sent and every tool use (they run before the text).
``billed_usage`` turns a stats delta of one model into a :class:`~spendgate.usage.Usage` to price.
``GET /_fake/arrivals`` (also reset by ``/_fake/reset``): each billed answer as ``[arrived, model,
prompt_tokens, output_tokens]``, ``arrived`` the Unix time its request reached the fake, oldest first
(the last ``MAX_ARRIVALS`` only): a rate limit's own record to check spans of time against.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spendgate.usage import Usage

DEFAULT_OUTPUT_TOKENS = 16
TOKEN_TEXT = "tok "
_MAX_HEAD = 64 * 1024
_MAX_BODY = 32 * 1024 * 1024
_MAX_DIRECTIVE_TOKENS = 1_000_000  # bounds the work a directive can ask for
_MAX_EMBEDDING_DIMS = 4096
_MAX_TOOL_CALLS = 1000  # bounds the items a directive can ask for

#: OpenAI's hosted tools billed per use (the names spendgate.estimate reads).
_OPENAI_TOOL = re.compile(
    r"^(?:(?P<search>web_search(?:_preview)?(?:_\d{4}_\d{2}_\d{2})?)|file_search|code_interpreter)$"
)
#: Anthropic's server tools billed per use (``code_execution_*`` is billed by time: not answered).
_ANTHROPIC_TOOL = re.compile(r"^(?P<tool>web_search|web_fetch)_\d{8}$")
#: Search models: one web search on every request.
_SEARCH_MODEL = re.compile(r"-search-(?:preview|api)(?:-\d{4}-\d{2}-\d{2})?$")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Injected bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected). Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request (injected)."),
    503: ("server_error", None, "The engine is currently overloaded (injected)."),
}
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Injected bad request."),
    401: ("authentication_error", "invalid x-api-key"),
    429: ("rate_limit_error", "Rate limit reached (injected)."),
    500: ("api_error", "Internal server error (injected)."),
    503: ("overloaded_error", "Overloaded (injected)."),
}

MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "claude-sonnet-4-5",
    "claude-3-5-haiku-latest",
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
_POST_ENDPOINTS = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES})


# --- deterministic usage -------------------------------------------------------------------------


def _ceil4(n: int) -> int:
    return (n + 3) // 4


def _text_bytes(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part.encode())
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"].encode())
        return total
    return 0


def _message_tokens(content: Any) -> int:
    return 3 + _ceil4(_text_bytes(content))


def _prompt_list_tokens(value: Any) -> int:
    if isinstance(value, str):
        return _ceil4(len(value.encode()))
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, str):
                total += _ceil4(len(item.encode()))
            elif isinstance(item, int):
                total += 1
            elif isinstance(item, list):
                total += len(item)
        return total
    return 0


def _normalize_endpoint(endpoint: str) -> str:
    name = endpoint.strip().strip("/").replace(".", "/")
    name = name.removeprefix("v1/")
    return "/v1/" + name


def prompt_tokens_for(endpoint: str, body: Mapping[str, Any]) -> int:
    """Prompt tokens the fake bills for ``body`` at ``endpoint`` (e.g. ``"chat/completions"``).

    Cached tokens are part of this number (see the module docstring for the rules).
    """
    path = _normalize_endpoint(endpoint)
    if path in (CHAT, MESSAGES):
        messages = body.get("messages")
        total = 0
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, dict):
                    total += _message_tokens(message.get("content"))
        if path == MESSAGES and body.get("system"):
            total += _message_tokens(body.get("system"))
        return total
    if path == RESPONSES:
        total = 0
        if body.get("instructions"):
            total += _message_tokens(body.get("instructions"))
        items = body.get("input")
        if isinstance(items, str):
            total += _message_tokens(items)
        elif isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    total += _message_tokens(item.get("content", item.get("text")))
                else:
                    total += _message_tokens(item)
        return total
    if path == COMPLETIONS:
        return _prompt_list_tokens(body.get("prompt"))
    if path == EMBEDDINGS:
        return _prompt_list_tokens(body.get("input"))
    raise ValueError(f"unknown endpoint {endpoint!r}")


def output_tokens_for(
    endpoint: str, body: Mapping[str, Any], default_output_tokens: int = DEFAULT_OUTPUT_TOKENS
) -> int:
    """Output tokens the fake generates without an ``x-fake-output-tokens`` directive."""
    if _normalize_endpoint(endpoint) == EMBEDDINGS:
        return 0
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        cap = body.get(key)
        if isinstance(cap, int) and not isinstance(cap, bool):
            return max(0, min(cap, default_output_tokens))
    return default_output_tokens


# --- stats -----------------------------------------------------------------------------------------


@dataclass
class _ModelStats:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_calls: int = 0
    web_fetch_calls: int = 0
    file_search_calls: int = 0
    code_interpreter_sessions: int = 0


#: Billed answers ``/_fake/arrivals`` keeps (the newest): bounded memory on long benchmarks.
MAX_ARRIVALS = 100_000


@dataclass
class Stats:
    """Counters served by ``/_fake/stats``; mutated only on the event loop."""

    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    models: dict[str, _ModelStats] = field(default_factory=dict)
    streams_cut: int = 0
    #: ``(arrived, model, prompt_tokens, output_tokens)`` per billed answer (``/_fake/arrivals``).
    arrivals: deque[tuple[float, str, int, int]] = field(default_factory=lambda: deque(maxlen=MAX_ARRIVALS))

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "errors": dict(self.errors),
            "streams_cut": self.streams_cut,
            "models": {name: vars(m).copy() for name, m in self.models.items()},
        }

    def bill(
        self,
        model: str,
        prompt: int,
        cached: int,
        output: int,
        reasoning: int,
        tools: Mapping[str, int] | None = None,
    ) -> None:
        """One answer billed; ``tools``: hosted tool uses by stats field (``web_search_calls``...)."""
        m = self.models.get(model)
        if m is None:
            m = self.models[model] = _ModelStats()
        m.requests += 1
        m.prompt_tokens += prompt
        m.cached_tokens += cached
        m.output_tokens += output
        m.reasoning_tokens += reasoning
        for name, count in (tools or {}).items():
            setattr(m, name, getattr(m, name) + count)


def billed_usage(stats: Mapping[str, Any], model: str, before: Mapping[str, Any] | None = None) -> Usage:
    """What the fake's tally (``/_fake/stats``) says it billed ``model`` since ``before`` (another
    stats snapshot; None: since the last reset), as a Usage to price with the catalog.

    A fee counted per request or per prompt (a search model's, Gemini's) is priced once per
    answer: price the delta of one request at a time."""
    now = stats.get("models", {}).get(model, {})
    then = (before or {}).get("models", {}).get(model, {})

    def delta(name: str) -> int:
        return int(now.get(name, 0)) - int(then.get(name, 0))

    return Usage(
        input_tokens=delta("prompt_tokens"),
        cache_read_tokens=delta("cached_tokens"),
        output_tokens=delta("output_tokens"),
        reasoning_tokens=delta("reasoning_tokens"),
        web_search_calls=delta("web_search_calls"),
        web_fetch_calls=delta("web_fetch_calls"),
        file_search_calls=delta("file_search_calls"),
        code_interpreter_calls=delta("code_interpreter_sessions"),
    )


# --- responses as plans ----------------------------------------------------------------------------


@dataclass
class Plan:
    """What to send: a whole body, or a list of stream events ``(bytes, content_tokens)``.

    ``on_sent(content_tokens_sent, cut)`` records billing once the response has gone out.
    """

    status: int
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    events: list[tuple[bytes, int]] | None = None
    cut_after: int | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    on_sent: Callable[[int, bool], None] | None = None
    hold: str | None = None  # x-fake-hold: wait for /_fake/release/<hold> first


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool = True


@dataclass(frozen=True)
class Options:
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    require_key: str | None = None
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS
    chunk_tokens: int = 1


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json_plan(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Plan:
    return Plan(status=status, body=_dumps(obj), headers=headers or [])


def _openai_error(status: int, message: str, etype: str, code: str | None, param: str | None = None) -> Plan:
    return _json_plan(status, {"error": {"message": message, "type": etype, "param": param, "code": code}})


def _anthropic_error(status: int, etype: str, message: str) -> Plan:
    return _json_plan(status, {"type": "error", "error": {"type": etype, "message": message}})


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else _dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return max(0, min(value, _MAX_DIRECTIVE_TOKENS))


@dataclass
class _Gen:
    """One generation's numbers, shared by every response shape."""

    model: str
    prompt: int
    cached: int
    output: int
    reasoning: int
    chunk_tokens: int
    #: Hosted tool uses billed, by stats field (``web_search_calls``...).
    tools: dict[str, int] = field(default_factory=dict)
    #: Responses: the hosted tool calls' output items (completed), listed before the message.
    items: list[dict[str, Any]] = field(default_factory=list)
    #: Messages: the server tool uses, ``(tool, tool_use_id)`` in order.
    server: list[tuple[str, str]] = field(default_factory=list)
    #: Messages: the request offered server tools (its usage then carries ``server_tool_use``).
    server_offered: bool = False
    #: Input tokens the tool results added to the prompt (part of ``prompt``).
    tool_prompt: int = 0

    @property
    def visible(self) -> int:
        return self.output - self.reasoning

    def text(self) -> str:
        return TOKEN_TEXT * self.visible

    def chunks(self) -> list[int]:
        """Token counts of the content events: ``chunk_tokens`` each, the last one possibly fewer."""
        full, rest = divmod(self.visible, self.chunk_tokens)
        return [self.chunk_tokens] * full + ([rest] if rest else [])


class FakeApp:
    """Request logic, independent of the HTTP transport."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self.stats = Stats()
        self._ids = itertools.count(1)
        self._gates: dict[str, asyncio.Event] = {}  # x-fake-hold names; set once released
        self.held: dict[str, int] = {}  # requests waiting at each gate now

    async def hold(self, name: str) -> None:
        """Wait until ``name`` is released (``POST /_fake/release/<name>``)."""
        gate = self._gates.get(name)
        if gate is None:
            gate = self._gates[name] = asyncio.Event()
        if gate.is_set():
            return
        self.held[name] = self.held.get(name, 0) + 1
        try:
            await gate.wait()
        finally:
            self.held[name] -= 1
            if not self.held[name]:
                del self.held[name]

    def release(self, name: str) -> None:
        gate = self._gates.get(name)
        if gate is None:
            gate = self._gates[name] = asyncio.Event()
        gate.set()

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def dispatch(self, req: Request) -> Plan:
        path = req.path
        if path.startswith("/_fake/"):
            return self._control(req)
        self.stats.requests[path] = self.stats.requests.get(path, 0) + 1
        plan = self._route(req)
        if plan.status >= 400:
            key = str(plan.status)
            self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
        latency = _int_header(req.headers, "x-fake-latency-ms")
        plan.delay_s = (self.options.latency_ms if latency is None else latency) / 1000
        plan.hold = req.headers.get("x-fake-hold", "").strip() or None
        return plan

    def _control(self, req: Request) -> Plan:
        if req.path == "/_fake/stats" and req.method == "GET":
            return _json_plan(200, {**self.stats.to_json(), "held": dict(self.held)})
        if req.path == "/_fake/arrivals" and req.method == "GET":
            return _json_plan(200, {"arrivals": list(self.stats.arrivals)})
        if req.path == "/_fake/reset" and req.method == "POST":
            self.stats = Stats()
            # Released gates close again; unreleased ones keep their waiting requests.
            self._gates = {name: gate for name, gate in self._gates.items() if not gate.is_set()}
            return _json_plan(200, {"ok": True})
        if req.path.startswith("/_fake/release/") and req.method == "POST":
            name = req.path.removeprefix("/_fake/release/")
            held = self.held.get(name, 0)
            self.release(name)
            return _json_plan(200, {"released": name, "held": held})
        if req.path == "/_fake/health":
            return _json_plan(200, {"ok": True})
        return _openai_error(404, f"Unknown fake control path {req.path}", "invalid_request_error", None)

    def _route(self, req: Request) -> Plan:
        anthropic = req.path == MESSAGES
        if req.path == "/v1/models" and req.method == "GET":
            return _json_plan(
                200,
                {
                    "object": "list",
                    "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS],
                },
            )
        if req.path not in _POST_ENDPOINTS:
            if anthropic:
                return _anthropic_error(404, "not_found_error", f"Unknown path {req.path}")
            return _openai_error(404, f"Unknown path {req.path}", "invalid_request_error", "unknown_url")
        if req.method != "POST":
            return _openai_error(405, f"Use POST for {req.path}", "invalid_request_error", None)

        if not self._authorized(req.headers, anthropic):
            return self._error(401, anthropic)
        try:
            body = json.loads(req.body)
        except (ValueError, UnicodeDecodeError) as exc:
            if anthropic:
                return _anthropic_error(400, "invalid_request_error", f"Invalid JSON body: {exc}")
            return _openai_error(
                400, f"We could not parse the JSON body of your request: {exc}", "invalid_request_error", None
            )
        if not isinstance(body, dict):
            if anthropic:
                return _anthropic_error(400, "invalid_request_error", "The body must be a JSON object.")
            return _openai_error(400, "The body must be a JSON object.", "invalid_request_error", None)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            if anthropic:
                return _anthropic_error(400, "invalid_request_error", "model: Field required")
            return _openai_error(
                400, "you must provide a model parameter", "invalid_request_error", None, param="model"
            )

        injected = _int_header(req.headers, "x-fake-error")
        if injected is not None and injected >= 400:
            return self._error(injected, anthropic)

        gen = self._generation(req, body, model)
        stream = body.get("stream") is True
        chunk_delay = _int_header(req.headers, "x-fake-chunk-delay-ms")
        cut = _int_header(req.headers, "x-fake-stream-cut-after")
        if req.path == EMBEDDINGS:
            plan = self._embeddings(body, gen)
        elif req.path == CHAT:
            plan = self._chat_stream(body, gen) if stream else self._chat(gen)
        elif req.path == COMPLETIONS:
            plan = self._completion_stream(body, gen) if stream else self._completion(gen)
        elif req.path == RESPONSES:
            plan = (
                self._responses_stream(gen) if stream else self._json_with_bill(self._response_obj(gen), gen)
            )
        else:
            plan = self._messages_stream(gen) if stream else self._json_with_bill(self._message_obj(gen), gen)
        if req.headers.get("x-fake-omit-usage"):
            _omit_usage(plan)
        if plan.events is not None:
            plan.cut_after = cut
            plan.chunk_delay_s = (self.options.chunk_delay_ms if chunk_delay is None else chunk_delay) / 1000
        plan.headers.append(("x-request-id", self._id("req_")))
        return plan

    def _authorized(self, headers: Mapping[str, str], anthropic: bool) -> bool:
        key = self.options.require_key
        if key is None:
            return True
        bearer = headers.get("authorization", "")
        given = bearer[7:] if bearer.lower().startswith("bearer ") else None
        return key in (given, headers.get("x-api-key"))

    def _error(self, status: int, anthropic: bool) -> Plan:
        headers = [("retry-after", "1")] if status == 429 else []
        if anthropic:
            etype, message = _ANTHROPIC_ERRORS.get(status, ("api_error", f"Injected error {status}."))
            plan = _anthropic_error(status, etype, message)
        else:
            otype, code, msg = _OPENAI_ERRORS.get(status, ("server_error", None, f"Injected error {status}."))
            plan = _openai_error(status, msg, otype, code)
        plan.headers.extend(headers)
        return plan

    def _generation(self, req: Request, body: Mapping[str, Any], model: str) -> _Gen:
        prompt = prompt_tokens_for(req.path, body)
        forced = _int_header(req.headers, "x-fake-output-tokens")
        if req.path == EMBEDDINGS:
            output = 0
        elif forced is not None:
            output = forced
        else:
            output = output_tokens_for(req.path, body, self.options.default_output_tokens)
        cached = min(_int_header(req.headers, "x-fake-cached-tokens") or 0, prompt)
        reasoning = min(_int_header(req.headers, "x-fake-reasoning-tokens") or 0, output)
        gen = _Gen(model, prompt, cached, output, reasoning, max(1, self.options.chunk_tokens))
        self._hosted_tools(req, body, gen)
        return gen

    def _hosted_tools(self, req: Request, body: Mapping[str, Any], gen: _Gen) -> None:
        """The hosted tool uses the request makes (module docstring), into ``gen``."""
        wanted = _int_header(req.headers, "x-fake-tool-calls")
        k = min(1 if wanted is None else wanted, _MAX_TOOL_CALLS)
        tools = body.get("tools")
        specs = [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
        uses = 0
        if req.path == RESPONSES:
            offered = [t for t in specs if isinstance(t.get("type"), str) and _OPENAI_TOOL.match(t["type"])]
            cap = body.get("max_tool_calls")
            if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0:
                k = min(k, cap)
            if offered:
                uses = k
                gen.items = self._responses_tool_items(offered, k)
                counts = {"web_search_call": 0, "file_search_call": 0}
                for item in gen.items:
                    if item["type"] in counts:
                        counts[item["type"]] += 1
                containers = {i["container_id"] for i in gen.items if i["type"] == "code_interpreter_call"}
                gen.tools = {
                    "web_search_calls": counts["web_search_call"],
                    "file_search_calls": counts["file_search_call"],
                    "code_interpreter_sessions": len(containers),
                }
        elif req.path == MESSAGES:
            for spec in specs:
                match = _ANTHROPIC_TOOL.match(spec["type"]) if isinstance(spec.get("type"), str) else None
                if match is None:
                    continue
                gen.server_offered = True
                n = k
                max_uses = spec.get("max_uses")
                if isinstance(max_uses, int) and not isinstance(max_uses, bool) and max_uses >= 0:
                    n = min(n, max_uses)
                gen.server += [(match["tool"], self._id("srvtoolu_fake")) for _ in range(n)]
            uses = len(gen.server)
            if gen.server_offered:
                names = [tool for tool, _ in gen.server]
                gen.tools = {
                    "web_search_calls": names.count("web_search"),
                    "web_fetch_calls": names.count("web_fetch"),
                }
        elif req.path == CHAT and _SEARCH_MODEL.search(gen.model):
            uses = 1  # a search model searches on every request
            gen.tools = {"web_search_calls": 1}
        per_use = _int_header(req.headers, "x-fake-tool-result-tokens") or 0
        gen.tool_prompt = min(uses * per_use, _MAX_DIRECTIVE_TOKENS)
        gen.prompt += gen.tool_prompt

    def _responses_tool_items(self, offered: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
        """``k`` completed output items, one per call, taking the offered tools in turn."""
        items: list[dict[str, Any]] = []
        containers: dict[int, str] = {}  # one container per code_interpreter tool and request
        for i in range(k):
            index = i % len(offered)
            tool = offered[index]
            kind = tool["type"]
            if kind == "file_search":
                items.append(
                    {
                        "type": "file_search_call",
                        "id": self._id("fs_fake"),
                        "status": "completed",
                        "queries": ["fake query"],
                        "results": None,
                    }
                )
            elif kind == "code_interpreter":
                container = containers.get(index)
                if container is None:
                    named = tool.get("container")
                    container = named if isinstance(named, str) and named else self._id("cntr_fake")
                    containers[index] = container
                items.append(
                    {
                        "type": "code_interpreter_call",
                        "id": self._id("ci_fake"),
                        "status": "completed",
                        "code": "print(1 + 1)",
                        "container_id": container,
                        "outputs": [{"type": "logs", "logs": "2\n"}],
                    }
                )
            else:
                items.append(
                    {
                        "type": "web_search_call",
                        "id": self._id("ws_fake"),
                        "status": "completed",
                        "action": {"type": "search", "query": "fake query"},
                    }
                )
        return items

    def _biller(self, gen: _Gen) -> Callable[[int, bool], None]:
        arrived = time.time()  # made when the request is dispatched: as it reaches the fake

        def on_sent(content_tokens: int, cut: bool) -> None:
            if cut:
                self.stats.streams_cut += 1
                output = gen.reasoning + content_tokens
            else:
                output = gen.output
            # Hosted tools run before the text: a cut stream has used them all.
            self.stats.bill(gen.model, gen.prompt, gen.cached, output, gen.reasoning, gen.tools)
            self.stats.arrivals.append((arrived, gen.model, gen.prompt, output))

        return on_sent

    def _json_with_bill(self, obj: Any, gen: _Gen) -> Plan:
        plan = _json_plan(200, obj)
        plan.on_sent = self._biller(gen)
        return plan

    def _stream_plan(self, events: list[tuple[bytes, int]], gen: _Gen) -> Plan:
        return Plan(
            status=200,
            content_type="text/event-stream; charset=utf-8",
            headers=[("cache-control", "no-cache")],
            events=events,
            on_sent=self._biller(gen),
        )

    # OpenAI shapes

    @staticmethod
    def _openai_usage(gen: _Gen) -> dict[str, Any]:
        return {
            "prompt_tokens": gen.prompt,
            "completion_tokens": gen.output,
            "total_tokens": gen.prompt + gen.output,
            "prompt_tokens_details": {"cached_tokens": gen.cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": gen.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _chat(self, gen: _Gen) -> Plan:
        obj = {
            "id": self._id("chatcmpl-fake"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": gen.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text(), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length" if gen.output else "stop",
                }
            ],
            "usage": self._openai_usage(gen),
            "system_fingerprint": "fp_fake",
        }
        return self._json_with_bill(obj, gen)

    def _chat_stream(self, body: Mapping[str, Any], gen: _Gen) -> Plan:
        include_usage = _include_usage(body)
        base = {
            "id": self._id("chatcmpl-fake"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": gen.model,
            "system_fingerprint": "fp_fake",
        }

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj: dict[str, Any] = {
                **base,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        events = [(chunk({"role": "assistant", "content": "", "refusal": None}, None), 0)]
        events += [(chunk({"content": TOKEN_TEXT * n}, None), n) for n in gen.chunks()]
        events.append((chunk({}, "length" if gen.output else "stop"), 0))
        if include_usage:
            events.append((_sse({**base, "choices": [], "usage": self._openai_usage(gen)}), 0))
        events.append((b"data: [DONE]\n\n", 0))
        return self._stream_plan(events, gen)

    def _completion(self, gen: _Gen) -> Plan:
        obj = {
            "id": self._id("cmpl-fake"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": gen.model,
            "choices": [
                {
                    "text": gen.text(),
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": "length" if gen.output else "stop",
                }
            ],
            "usage": self._openai_usage(gen),
        }
        return self._json_with_bill(obj, gen)

    def _completion_stream(self, body: Mapping[str, Any], gen: _Gen) -> Plan:
        include_usage = _include_usage(body)
        base = {
            "id": self._id("cmpl-fake"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": gen.model,
        }

        def chunk(text: str, finish: str | None) -> bytes:
            obj: dict[str, Any] = {
                **base,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        events = [(chunk(TOKEN_TEXT * n, None), n) for n in gen.chunks()]
        events.append((chunk("", "length" if gen.output else "stop"), 0))
        if include_usage:
            events.append((_sse({**base, "choices": [], "usage": self._openai_usage(gen)}), 0))
        events.append((b"data: [DONE]\n\n", 0))
        return self._stream_plan(events, gen)

    def _embeddings(self, body: Mapping[str, Any], gen: _Gen) -> Plan:
        raw = body.get("input")
        n_inputs = len(raw) if isinstance(raw, list) and raw and not isinstance(raw[0], int) else 1
        dims = body.get("dimensions")
        n_dims = dims if isinstance(dims, int) and 0 < dims <= _MAX_EMBEDDING_DIMS else 8
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i in range(n_inputs):
            vector = [((i + 1) * (j + 1) % 7) / 7 for j in range(n_dims)]
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{n_dims}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        obj = {
            "object": "list",
            "data": data,
            "model": gen.model,
            "usage": {"prompt_tokens": gen.prompt, "total_tokens": gen.prompt},
        }
        return self._json_with_bill(obj, gen)

    # Responses API

    @staticmethod
    def _responses_usage(gen: _Gen) -> dict[str, Any]:
        return {
            "input_tokens": gen.prompt,
            "input_tokens_details": {"cached_tokens": gen.cached},
            "output_tokens": gen.output,
            "output_tokens_details": {"reasoning_tokens": gen.reasoning},
            "total_tokens": gen.prompt + gen.output,
        }

    def _response_obj(self, gen: _Gen, resp_id: str | None = None, done: bool = True) -> dict[str, Any]:
        item = {
            "type": "message",
            "id": "msg_fake",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": gen.text(), "annotations": []}],
        }
        return {
            "id": resp_id or self._id("resp_fake"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed" if done else "in_progress",
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "model": gen.model,
            "output": [*gen.items, item] if done else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "temperature": 1.0,
            "top_p": 1.0,
            "usage": self._responses_usage(gen) if done else None,
        }

    def _responses_stream(self, gen: _Gen) -> Plan:
        resp_id = self._id("resp_fake")
        seq = itertools.count()

        def ev(kind: str, **fields: Any) -> bytes:
            return _sse({"type": kind, "sequence_number": next(seq), **fields}, event=kind)

        started = self._response_obj(gen, resp_id, done=False)
        item = {
            "type": "message",
            "id": "msg_fake",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": []}
        at = len(gen.items)  # the message comes after the hosted tool calls
        loc = {"item_id": "msg_fake", "output_index": at, "content_index": 0}
        events = [
            (ev("response.created", response=started), 0),
            (ev("response.in_progress", response=started), 0),
        ]
        for index, tool_item in enumerate(gen.items):
            kind, tool_loc = tool_item["type"], {"item_id": tool_item["id"], "output_index": index}
            working = "interpreting" if kind == "code_interpreter_call" else "searching"
            events += [
                (
                    ev(
                        "response.output_item.added",
                        output_index=index,
                        item={**tool_item, "status": "in_progress"},
                    ),
                    0,
                ),
                (ev(f"response.{kind}.in_progress", **tool_loc), 0),
                (ev(f"response.{kind}.{working}", **tool_loc), 0),
                (ev(f"response.{kind}.completed", **tool_loc), 0),
                (ev("response.output_item.done", output_index=index, item=tool_item), 0),
            ]
        events += [
            (ev("response.output_item.added", output_index=at, item=item), 0),
            (ev("response.content_part.added", part=part, **loc), 0),
        ]
        events += [
            (ev("response.output_text.delta", delta=TOKEN_TEXT * n, logprobs=[], **loc), n)
            for n in gen.chunks()
        ]
        final = self._response_obj(gen, resp_id, done=True)
        done_part = final["output"][at]["content"][0]
        events += [
            (ev("response.output_text.done", text=gen.text(), logprobs=[], **loc), 0),
            (ev("response.content_part.done", part=done_part, **loc), 0),
            (ev("response.output_item.done", output_index=at, item=final["output"][at]), 0),
            (ev("response.completed", response=final), 0),
        ]
        return self._stream_plan(events, gen)

    # Anthropic shapes

    @staticmethod
    def _anthropic_usage(gen: _Gen, output: int, done: bool = True) -> dict[str, Any]:
        """The usage at the end (``done``), or as ``message_start`` tells it: the prompt before
        any tool result, no server tool use yet."""
        usage: dict[str, Any] = {
            "input_tokens": gen.prompt - gen.cached - (0 if done else gen.tool_prompt),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": gen.cached,
            "output_tokens": output,
        }
        if gen.server_offered:
            usage["server_tool_use"] = {
                "web_search_requests": gen.tools.get("web_search_calls", 0) if done else 0,
                "web_fetch_requests": gen.tools.get("web_fetch_calls", 0) if done else 0,
            }
        return usage

    @staticmethod
    def _server_blocks(gen: _Gen) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Each server tool use as its ``server_tool_use`` block and its result block."""
        url = "https://example.com/fake"
        blocks = []
        for tool, use_id in gen.server:
            if tool == "web_fetch":
                use = {"type": "server_tool_use", "id": use_id, "name": tool, "input": {"url": url}}
                page = {"type": "text", "media_type": "text/plain", "data": "A fake page."}
                result: dict[str, Any] = {
                    "type": "web_fetch_tool_result",
                    "tool_use_id": use_id,
                    "content": {
                        "type": "web_fetch_result",
                        "url": url,
                        "content": {"type": "document", "source": page, "title": "Fake page"},
                        "retrieved_at": None,
                    },
                }
            else:
                use = {
                    "type": "server_tool_use",
                    "id": use_id,
                    "name": tool,
                    "input": {"query": "fake query"},
                }
                found = {
                    "type": "web_search_result",
                    "url": url,
                    "title": "Fake result",
                    "encrypted_content": "ZmFrZQ==",
                    "page_age": None,
                }
                result = {"type": "web_search_tool_result", "tool_use_id": use_id, "content": [found]}
            blocks.append((use, result))
        return blocks

    def _message_obj(self, gen: _Gen, msg_id: str | None = None, done: bool = True) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if done:
            for use, result in self._server_blocks(gen):
                content += [use, result]
            content.append({"type": "text", "text": gen.text()})
        return {
            "id": msg_id or self._id("msg_fake"),
            "type": "message",
            "role": "assistant",
            "model": gen.model,
            "content": content,
            "stop_reason": ("max_tokens" if gen.output else "end_turn") if done else None,
            "stop_sequence": None,
            "usage": self._anthropic_usage(gen, gen.output if done else 1, done),
        }

    def _messages_stream(self, gen: _Gen) -> Plan:
        def ev(kind: str, **fields: Any) -> bytes:
            return _sse({"type": kind, **fields}, event=kind)

        events = [(ev("message_start", message=self._message_obj(gen, self._id("msg_fake"), done=False)), 0)]
        index = 0
        for use, result in self._server_blocks(gen):
            delta = {"type": "input_json_delta", "partial_json": json.dumps(use["input"])}
            events += [
                (ev("content_block_start", index=index, content_block={**use, "input": {}}), 0),
                (ev("content_block_delta", index=index, delta=delta), 0),
                (ev("content_block_stop", index=index), 0),
                (ev("content_block_start", index=index + 1, content_block=result), 0),
                (ev("content_block_stop", index=index + 1), 0),
            ]
            index += 2
        events.append((ev("content_block_start", index=index, content_block={"type": "text", "text": ""}), 0))
        events.insert(2, (ev("ping"), 0))  # after the first block's start, as the API sends it
        events += [
            (ev("content_block_delta", index=index, delta={"type": "text_delta", "text": TOKEN_TEXT * n}), n)
            for n in gen.chunks()
        ]
        events += [
            (ev("content_block_stop", index=index), 0),
            (
                ev(
                    "message_delta",
                    delta={"stop_reason": "max_tokens" if gen.output else "end_turn", "stop_sequence": None},
                    usage=self._anthropic_usage(gen, gen.output),
                ),
                0,
            ),
            (ev("message_stop"), 0),
        ]
        return self._stream_plan(events, gen)


def _without_usage(obj: Any) -> Any:
    """``obj`` with every usage report taken out (top level, in a response or a message)."""
    if isinstance(obj, dict):
        obj.pop("usage", None)
        for inner in ("response", "message"):
            if isinstance(obj.get(inner), dict):
                obj[inner].pop("usage", None)
    return obj


def _omit_usage(plan: Plan) -> None:
    """The answer as a server that reports no usage sends it (``x-fake-omit-usage``): billed
    all the same. A chat chunk that carried only usage is left out."""
    if plan.events is None:
        plan.body = _dumps(_without_usage(json.loads(plan.body)))
        return
    kept: list[tuple[bytes, int]] = []
    for event, tokens in plan.events:
        head, sep, data = event.rstrip(b"\n").rpartition(b"data: ")
        if not sep or data == b"[DONE]":
            kept.append((event, tokens))
            continue
        obj = json.loads(data)
        if isinstance(obj, dict) and obj.get("choices") == [] and "usage" in obj:
            continue
        kept.append((head + b"data: " + _dumps(_without_usage(obj)) + b"\n\n", tokens))
    plan.events = kept


def _include_usage(body: Mapping[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


# --- HTTP/1.1 transport ----------------------------------------------------------------------------


def _head(
    status: int, content_type: str, headers: list[tuple[str, str]], length: int | None, keep_alive: bool
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"content-type: {content_type}"]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    if not keep_alive:
        lines.append("connection: close")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


class _MalformedError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Connection(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order, one at a time."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._serve_buffered()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _parse(self) -> Request | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD:
                raise _MalformedError(413)
            return None
        try:
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _MalformedError(400) from None
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _MalformedError(501)  # the SDKs send content-length; chunked uploads are not needed
        if length < 0 or length > _MAX_BODY:
            raise _MalformedError(413)
        if len(self.buf) < end + 4 + length:
            return None
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        conn = headers.get("connection", "").lower()
        keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        return Request(method, target.split("?", 1)[0], headers, body, keep_alive)

    def _serve_buffered(self) -> None:
        # Bounded: each pass consumes one complete request from the buffer, or stops.
        while not self.closed and self.transport is not None:
            try:
                req = self._parse()
            except _MalformedError as bad:
                plan = _openai_error(bad.status, "Malformed HTTP request.", "invalid_request_error", None)
                self.transport.write(
                    _head(plan.status, plan.content_type, [], len(plan.body), False) + plan.body
                )
                self.close()
                return
            if req is None:
                return
            plan = self.server.app.dispatch(req)
            if plan.hold is None and plan.delay_s <= 0 and (plan.events is None or plan.chunk_delay_s <= 0):
                self._send_now(plan, req.keep_alive)  # fast path: no task, one write
                if not req.keep_alive:
                    self.close()
                    return
                continue
            self.busy = True
            self.server.spawn(self._send_later(plan, req.keep_alive))
            return

    def _send_now(self, plan: Plan, keep_alive: bool) -> None:
        assert self.transport is not None
        if plan.events is None:
            self.transport.write(
                _head(plan.status, plan.content_type, plan.headers, len(plan.body), keep_alive) + plan.body
            )
            if plan.on_sent is not None:
                plan.on_sent(0, False)
            return
        out = [_head(plan.status, plan.content_type, plan.headers, None, keep_alive)]
        sent, content_events, cut = 0, 0, False
        for payload, tokens in plan.events:
            if plan.cut_after is not None and tokens and content_events >= plan.cut_after:
                cut = True
                break
            out.append(_frame(payload))
            sent += tokens
            content_events += 1 if tokens else 0
        if not cut:
            out.append(b"0\r\n\r\n")
        self.transport.write(b"".join(out))
        if plan.on_sent is not None:
            plan.on_sent(sent, cut)
        if cut:
            self.close()

    async def _send_later(self, plan: Plan, keep_alive: bool) -> None:
        try:
            if plan.hold is not None:
                await self.server.app.hold(plan.hold)
            if plan.delay_s > 0:
                await asyncio.sleep(plan.delay_s)
            if self.closed or self.transport is None:
                return
            if plan.events is None or plan.chunk_delay_s <= 0:
                self._send_now(plan, keep_alive)
            else:
                await self._send_paced(plan, keep_alive)
            if not keep_alive:
                self.close()
        finally:
            self.busy = False
        if not self.closed:
            self._serve_buffered()

    async def _send_paced(self, plan: Plan, keep_alive: bool) -> None:
        assert self.transport is not None and plan.events is not None
        self.transport.write(_head(plan.status, plan.content_type, plan.headers, None, keep_alive))
        sent, content_events, cut = 0, 0, False
        for i, (payload, tokens) in enumerate(plan.events):
            if plan.cut_after is not None and tokens and content_events >= plan.cut_after:
                cut = True
                break
            if i:
                await asyncio.sleep(plan.chunk_delay_s)
            if self.closed:
                cut = True  # the client went away: bill what it received
                break
            self.transport.write(_frame(payload))
            sent += tokens
            content_events += 1 if tokens else 0
        if not cut:
            self.transport.write(b"0\r\n\r\n")
        if plan.on_sent is not None:
            plan.on_sent(sent, cut)
        if cut:
            self.close()


class FakeServer:
    """The fake upstream bound to a socket on the running event loop."""

    def __init__(self, options: Options | None = None) -> None:
        self.app = FakeApp(options)
        self.connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.host = ""
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        loop = asyncio.get_running_loop()
        # Thousands of connections may open at once (bench/hold.py); the kernel caps the
        # backlog at net.core.somaxconn.
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=8192)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        return self.url

    async def stop(self, timeout: float = 5.0) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout)
        self._server = None


async def serve(
    host: str, port: int, options: Options, stop: asyncio.Event, on_ready: Callable[[str], None]
) -> None:
    """Serve until ``stop`` is set; ``on_ready`` receives the root URL once bound."""
    _raise_open_files()
    server = FakeServer(options)
    on_ready(await server.start(host, port))
    await stop.wait()
    await server.stop()


def _raise_open_files() -> None:
    """The soft open-file limit up to the hard one: each held request is a descriptor here."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
