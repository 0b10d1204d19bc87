"""What a provider's answer says: usage, the tier it was served at, and which stream events count.

One set of readers for every endpoint (chat, completions, responses, embeddings,
messages), over parsed JSON (the gateway) and SDK objects (the wrappers) alike:
``field`` reads a name from either. Pure: no I/O; the gateway frames SSE bytes
and the wrappers iterate SDK streams, and both hand each event to one
``StreamReader``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from spendgate.estimate import Endpoint
from spendgate.lifecycle.ending import Happened, Report
from spendgate.usage import Usage, tool_calls_in_output

__all__ = [
    "Answer",
    "Show",
    "StreamReader",
    "answer_report",
    "field",
    "may_carry_usage",
    "read_response",
    "usage_of",
]

#: Responses API stream events that carry the final response (and its usage).
RESPONSE_DONE: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
_ANTHROPIC_USAGE: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
    "server_tool_use",  # cumulative server tool uses (web searches, fetches)
)
#: Stream events that can carry usage, by SSE event name or by a byte search of their data
#: (JSON escapes quotes inside strings, so generated text cannot match these).
_USAGE_OBJECT: Final = re.compile(rb'"usage"\s*:\s*\{')
_ANTHROPIC_USAGE_EVENTS: Final = frozenset({b"message_start", b"message_delta"})
_ANTHROPIC_USAGE_TYPE: Final = re.compile(rb'"type"\s*:\s*"message_(?:start|delta)"')
#: A server tool use starting (Anthropic): from then on message_start's prompt is not the bill's,
#: which adds the tool's results to the input.
_SERVER_TOOL_BLOCK: Final = re.compile(rb'"type"\s*:\s*"server_tool_use"')
_RESPONSE_DONE_NAMES: Final = frozenset(kind.encode() for kind in RESPONSE_DONE)
_RESPONSE_DONE_TYPE: Final = re.compile(rb'"type"\s*:\s*"response\.(?:completed|incomplete|failed)"')


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` for an SDK object; None when absent."""
    if obj is None:
        return None
    if type(obj) is dict or isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _tier(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


#: The fields one of which a usage object of each kind must carry to be read at all: an empty
#: or foreign object is unreadable, never a silent $0.
_USAGE_KEYS: Final = {
    "messages": ("input_tokens", "output_tokens"),
    "responses": ("input_tokens", "output_tokens"),
}
_OPENAI_USAGE_KEYS: Final = ("prompt_tokens", "completion_tokens")


def usage_of(endpoint: Endpoint, raw: Any) -> Usage:
    """The provider's usage object for ``endpoint``, normalised; ValueError if unreadable."""
    if raw is None or isinstance(raw, str | bytes | int | float | list | tuple):
        raise ValueError(f"no usage object: {raw!r:.80}")
    if all(field(raw, name) is None for name in _USAGE_KEYS.get(endpoint, _OPENAI_USAGE_KEYS)):
        raise ValueError("the usage object carries no token counts")
    if endpoint == "messages":
        return Usage.from_anthropic(raw)
    if endpoint == "responses":
        return Usage.from_openai_responses(raw)
    return Usage.from_openai(raw)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a whole (non-stream) answer said."""

    usage: Usage | None
    tier: str | None
    #: Why ``usage`` is None ("no usage", or what made it unreadable); None when read.
    problem: str | None = None


def answer_report(endpoint: Endpoint, response: Any) -> Report:
    """The facts of a whole 2xx answer (a dict or an SDK object), to end its reservation on."""
    answer = read_response(endpoint, response)
    return Report(Happened.COMPLETE, usage=answer.usage, tier=answer.tier, detail=answer.problem)


def read_response(endpoint: Endpoint, response: Any) -> Answer:
    """The usage and tier of a whole response body (a dict or an SDK object)."""
    raw = field(response, "usage")
    # Anthropic says the tier inside usage; OpenAI beside it.
    tier = _tier(field(raw, "service_tier") if endpoint == "messages" else field(response, "service_tier"))
    if raw is None:
        return Answer(None, tier, "the answer carries no usage")
    try:
        usage = usage_of(endpoint, raw)
    except ValueError as exc:
        return Answer(None, tier, f"unreadable usage: {exc}")
    if endpoint == "responses":
        # The Responses API bills hosted tool calls it lists as output items, not in usage.
        usage = usage.with_tool_calls(tool_calls_in_output(field(response, "output")))
    return Answer(usage, tier)


def may_carry_usage(endpoint: Endpoint, name: bytes | None, data: bytes) -> bool:
    """False only for SSE events that certainly carry no usage, nor the start of an Anthropic
    server tool use (a false True costs a parse): the gateway parses only these as a stream
    passes."""
    if endpoint == "messages":
        if name is not None and name != b"content_block_start":
            return name in _ANTHROPIC_USAGE_EVENTS
        if name is None and _ANTHROPIC_USAGE_TYPE.search(data) is not None:
            return True
        return _SERVER_TOOL_BLOCK.search(data) is not None
    if endpoint == "responses":
        if name is not None:
            return name in _RESPONSE_DONE_NAMES
        return _RESPONSE_DONE_TYPE.search(data) is not None
    return _USAGE_OBJECT.search(data) is not None


class Show(Enum):
    """What the caller of a stream gets of one event."""

    KEEP = "keep"
    #: Exactly the usage event the guard asked for: the caller did not, so it never sees it.
    DROP = "drop"
    #: An event with text and usage both: the caller gets it with ``usage`` set to None.
    STRIP = "strip"


class StreamReader:
    """What a stream has said so far: the provider's usage (final, or known in part) and tier.

    ``hide_usage``: the guard asked for the usage chunk (``stream_options.include_usage``)
    and the caller did not, so ``see`` says to drop or strip it."""

    __slots__ = (
        "_final",
        "_known",
        "_running",
        "_server_tool",
        "_tools",
        "endpoint",
        "events",
        "hide_usage",
        "tier",
    )

    def __init__(self, endpoint: Endpoint, hide_usage: bool = False) -> None:
        self.endpoint = endpoint
        self.hide_usage = hide_usage
        self.tier: str | None = None
        self.events = 0
        self._final: Any = None  # the provider's final usage object
        self._running: Any = None  # a running total sent with text: the bill only at the end
        self._known: dict[str, Any] | None = None  # Anthropic's, merged over its events
        self._tools: dict[str, int] = {}  # hosted tool calls the final Responses output lists
        self._server_tool = False  # an Anthropic server tool ran: its results add to the prompt

    def see(self, event: Any) -> Show:
        """Read one parsed event (a dict or an SDK object)."""
        self.events += 1
        if self.endpoint == "messages":
            self._anthropic(event)
            return Show.KEEP
        if self.endpoint == "responses":
            if field(event, "type") in RESPONSE_DONE:
                response = field(event, "response")
                usage = field(response, "usage")
                if usage is not None:
                    self._final = usage
                    self.tier = _tier(field(response, "service_tier")) or self.tier
                    self._tools = tool_calls_in_output(field(response, "output"))
            return Show.KEEP
        usage = field(event, "usage")
        if usage is None:
            return Show.KEEP
        self.tier = _tier(field(event, "service_tier")) or self.tier
        choices = field(event, "choices")
        if choices:
            # Some compatible servers send a running total with every chunk: only the last
            # one, at the stream's end, is what was billed.
            self._running = usage
        else:
            self._final = usage  # OpenAI's usage chunk: the last one, with no choices
        if not self.hide_usage:
            return Show.KEEP
        return Show.STRIP if choices else Show.DROP

    def _anthropic(self, event: Any) -> None:
        kind = field(event, "type")
        if kind == "content_block_start":
            if field(field(event, "content_block"), "type") == "server_tool_use":
                self._server_tool = True
        elif kind == "message_start":
            self._merge(field(field(event, "message"), "usage"))
        elif kind == "message_delta":
            # Cumulative counts: they replace message_start's (its output_tokens is a placeholder).
            # One without usage leaves the bill unknown, never message_start's placeholder.
            usage = field(event, "usage")
            if usage is not None:
                self._merge(usage)
                self._final = self._known

    def _merge(self, usage: Any) -> None:
        if usage is None:
            return
        merged = self._known if self._known is not None else {}
        for name in _ANTHROPIC_USAGE:
            value = field(usage, name)
            if value is not None:
                merged[name] = value
        self.tier = _tier(field(usage, "service_tier")) or self.tier
        self._known = merged

    def usage(self, happened: Happened) -> Usage | None:
        """The billed usage, if the stream reported it (a running total counts only at the end)."""
        raw = self._final
        if raw is None and happened is Happened.COMPLETE:
            raw = self._running
        usage = self._read(raw)
        return usage.with_tool_calls(self._tools) if usage is not None else None

    def known(self) -> Usage | None:
        """The usage reported before the end (the exact prompt, at least), if any. None once an
        Anthropic server tool ran: its results are input that message_start did not count."""
        if self._server_tool and self._final is None:
            return None
        return self._read(self._known if self._known is not None else self._running)

    def _read(self, raw: Any) -> Usage | None:
        if raw is None:
            return None
        try:
            return usage_of(self.endpoint, raw)
        except ValueError:  # unreadable: as if none came (the ending policy bounds it)
            return None

    def report(self, happened: Happened) -> Report:
        """The facts to end the stream's reservation on, once it ended as ``happened``."""
        return Report(
            happened,
            usage=self.usage(happened),
            known=self.known(),
            tier=self.tier,
            detail=f"stream {happened.value} after {self.events} events",
        )
