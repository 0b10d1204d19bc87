"""Provider usage reports -> one normalised :class:`Usage`.

Conventions (OpenAI's, the most common): ``input_tokens`` counts every prompt
token, cache reads and cache writes included; ``output_tokens`` counts every
generated token, reasoning included. The detail fields say how many of those
are of a kind priced apart. Anthropic and Bedrock report input *excluding*
cache reads and writes; Gemini reports thoughts *beside* the candidates, and
xAI reasoning beside the completion: all are converted here, so a token is
never priced twice nor missed. Where a provider's convention is not fixed, the
report's own ``total_tokens`` says which one it used.

Two conditions that change the price ride along (Anthropic reports them):
``inference_geo`` and ``speed``; ``""`` when not reported.

Hosted tools billed per use are counted beside the tokens (``web_search_calls``...): Anthropic
reports them in ``usage.server_tool_use``; an OpenAI Responses answer lists them as output
items (:func:`tool_calls_in_output`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request, normalised (see module docstring)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    #: Writes to a 12-hour cache (OpenAI); ``cache_write_tokens`` are the default TTL's.
    cache_write_12h_tokens: int = 0
    #: Generated image tokens (part of output_tokens), priced at the image output rate.
    image_output_tokens: int = 0
    #: Where the request ran (Anthropic ``inference_geo``: "us", "global"...), "" if not said.
    inference_geo: str = ""
    #: The speed it ran at (Anthropic ``speed``: "fast", "standard"), "" if not said.
    speed: str = ""
    #: Hosted tool uses billed per use (priced at the model's ``tool_fees``): web searches,
    #: web fetches, file searches, code-interpreter containers (each a billed session),
    #: Google Maps grounding queries.
    web_search_calls: int = 0
    web_fetch_calls: int = 0
    file_search_calls: int = 0
    code_interpreter_calls: int = 0
    google_maps_calls: int = 0

    def __post_init__(self) -> None:
        # One cheap check on the hot path; the loop that names the bad field runs only on failure.
        values = (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cache_write_1h_tokens,
            self.reasoning_tokens,
            self.audio_input_tokens,
            self.audio_output_tokens,
            self.cache_write_12h_tokens,
            self.image_output_tokens,
            self.web_search_calls,
            self.web_fetch_calls,
            self.file_search_calls,
            self.code_interpreter_calls,
            self.google_maps_calls,
        )
        if not all(type(v) is int and v >= 0 for v in values):
            for name in COUNT_FIELDS:
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"Usage.{name} must be a whole number >= 0, got {value!r}")
        if type(self.inference_geo) is not str or type(self.speed) is not str:
            raise ValueError(
                f"Usage.inference_geo and .speed are names, got {self.inference_geo!r}, {self.speed!r}"
            )
        writes = self.cache_write_tokens + self.cache_write_1h_tokens + self.cache_write_12h_tokens
        if self.cache_read_tokens + writes > self.input_tokens:
            raise ValueError(
                "Usage: cache reads and writes are part of input_tokens (OpenAI's convention); "
                f"got input_tokens={self.input_tokens} with cache_read={self.cache_read_tokens}, "
                f"cache_write={self.cache_write_tokens}, cache_write_1h={self.cache_write_1h_tokens}, "
                f"cache_write_12h={self.cache_write_12h_tokens}"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(
                "Usage: reasoning tokens are part of output_tokens; "
                f"got output_tokens={self.output_tokens}, reasoning_tokens={self.reasoning_tokens}"
            )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def tool_calls(self) -> dict[str, int]:
        """Hosted tool -> uses billed per use (the non-zero ones)."""
        return {tool: count for tool, name in TOOL_CALL_FIELDS.items() if (count := getattr(self, name))}

    def with_tool_calls(self, calls: Mapping[str, int]) -> Usage:
        """This usage with these tool-use counts (tool name -> count) in place of its own."""
        if not calls:
            return self
        changes: dict[str, Any] = {TOOL_CALL_FIELDS[tool]: count for tool, count in calls.items()}
        return replace(self, **changes)

    def as_dict(self) -> dict[str, int]:
        """The non-zero token counts (the conditions are not counts: see the attributes)."""
        return {name: value for name in COUNT_FIELDS if (value := getattr(self, name))}

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        counts = {name: getattr(self, name) + getattr(other, name) for name in COUNT_FIELDS}
        # Parts of one request (stream events) report the same conditions, or one of them does.
        return Usage(
            **counts,
            inference_geo=self.inference_geo or other.inference_geo,
            speed=self.speed or other.speed,
        )

    # -- constructors from provider shapes --------------------------------
    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """Chat Completions / Completions / Embeddings ``usage`` (dict or SDK object)."""
        prompt = _int(usage, "prompt_tokens")
        completion = _int(usage, "completion_tokens")
        pdet = _get(usage, "prompt_tokens_details")
        cdet = _get(usage, "completion_tokens_details")
        reasoning = _int(cdet, "reasoning_tokens")
        output = _with_reasoning(prompt, completion, reasoning, _total(usage))
        read = min(_int(pdet, "cached_tokens"), prompt)
        write, write_12h = _openai_writes(pdet)
        return cls(
            # Writes are part of the prompt; if a report says otherwise, count them all.
            input_tokens=max(prompt, read + write + write_12h),
            output_tokens=output,
            cache_read_tokens=read,
            cache_write_tokens=write,
            cache_write_12h_tokens=write_12h,
            reasoning_tokens=min(reasoning, output),
            audio_input_tokens=_int(pdet, "audio_tokens"),
            audio_output_tokens=_int(cdet, "audio_tokens"),
            image_output_tokens=min(_int(cdet, "image_tokens"), output),
            # OpenAI-compatible servers fronting other providers report searches here (LiteLLM:
            # Anthropic's server_tool_use, Gemini's prompt_tokens_details.web_search_requests).
            web_search_calls=max(
                _int(_get(usage, "server_tool_use"), "web_search_requests"), _int(pdet, "web_search_requests")
            ),
        )

    @classmethod
    def from_openai_responses(cls, usage: Any) -> Usage:
        """Responses API ``usage``: input_tokens / output_tokens with *_details."""
        inp = _int(usage, "input_tokens")
        idet = _get(usage, "input_tokens_details")
        odet = _get(usage, "output_tokens_details")
        reasoning = _int(odet, "reasoning_tokens")
        out = _with_reasoning(inp, _int(usage, "output_tokens"), reasoning, _total(usage))
        read = min(_int(idet, "cached_tokens"), inp)
        write, write_12h = _openai_writes(idet)
        return cls(
            input_tokens=max(inp, read + write + write_12h),
            output_tokens=out,
            cache_read_tokens=read,
            cache_write_tokens=write,
            cache_write_12h_tokens=write_12h,
            reasoning_tokens=min(reasoning, out),
            image_output_tokens=min(_int(odet, "image_tokens"), out),
        )

    @classmethod
    def from_anthropic(cls, usage: Any) -> Usage:
        """Anthropic Messages ``usage``: input_tokens EXCLUDES cache reads and writes."""
        uncached = _int(usage, "input_tokens")
        read = _int(usage, "cache_read_input_tokens")
        write_total = _int(usage, "cache_creation_input_tokens")
        split = _get(usage, "cache_creation")
        write_1h = _int(split, "ephemeral_1h_input_tokens")
        write_5m = _int(split, "ephemeral_5m_input_tokens") if split is not None else write_total
        # When only the total is given, all writes are 5-minute ones (the default TTL).
        write_5m = max(write_5m, write_total - write_1h)
        return cls(
            input_tokens=uncached + read + write_5m + write_1h,
            output_tokens=_int(usage, "output_tokens"),
            cache_read_tokens=read,
            cache_write_tokens=write_5m,
            cache_write_1h_tokens=write_1h,
            inference_geo=_str(usage, "inference_geo"),
            speed=_str(usage, "speed"),
            web_search_calls=_int(_get(usage, "server_tool_use"), "web_search_requests"),
            web_fetch_calls=_int(_get(usage, "server_tool_use"), "web_fetch_requests"),
        )

    @classmethod
    def from_bedrock(cls, usage: Any) -> Usage:
        """Bedrock Converse ``usage`` (also a stream's ``metadata.usage``): camelCase counts.

        ``inputTokens`` excludes cache reads and writes (``totalTokens`` is the sum of all
        four), as Anthropic's does; a report whose total says the cache is inside the input
        (total = input + output) is read that way instead.
        """
        inp = _int(usage, "inputTokens")
        out = _int(usage, "outputTokens")
        read = _int(usage, "cacheReadInputTokens")
        write = _int(usage, "cacheWriteInputTokens")
        total = _total(usage, "totalTokens")
        inside = total is not None and total == inp + out and read + write <= inp
        return cls(
            input_tokens=inp if inside else inp + read + write,
            output_tokens=out,
            cache_read_tokens=read,
            cache_write_tokens=write,
        )

    @classmethod
    def from_gemini(cls, usage: Any) -> Usage:
        """Gemini ``usageMetadata`` (camelCase REST or snake_case SDK)."""
        prompt = _int(usage, "promptTokenCount", "prompt_token_count")
        tool_prompt = _int(usage, "toolUsePromptTokenCount", "tool_use_prompt_token_count")
        candidates = _int(usage, "candidatesTokenCount", "candidates_token_count")
        thoughts = _int(usage, "thoughtsTokenCount", "thoughts_token_count")
        cached = _int(usage, "cachedContentTokenCount", "cached_content_token_count")
        audio_in = sum(
            _int(d, "tokenCount", "token_count")
            for d in _list(usage, "promptTokensDetails", "prompt_tokens_details")
            if str(_get(d, "modality") or "").upper().endswith("AUDIO")
        )
        audio_out = _modality(usage, "AUDIO")
        image_out = _modality(usage, "IMAGE")
        inp = prompt + tool_prompt
        return cls(
            input_tokens=inp,
            output_tokens=candidates + thoughts,
            cache_read_tokens=min(cached, inp),
            reasoning_tokens=thoughts,
            audio_input_tokens=min(audio_in, inp),
            audio_output_tokens=min(audio_out, candidates),
            image_output_tokens=min(image_out, candidates),
        )

    @classmethod
    def from_response(cls, response: Any) -> Usage:
        """Any supported response (or its usage object): the shape decides the provider."""
        usage = _get(response, "usage")
        if usage is None:
            usage = _get(response, "usageMetadata", "usage_metadata")
        if usage is None:
            usage = _get(_get(response, "metadata"), "usage")  # a Bedrock stream's metadata event
        if usage is None:
            usage = response
        if _has(usage, "inputTokens", "outputTokens"):
            return cls.from_bedrock(usage)
        if _has(usage, "promptTokenCount", "prompt_token_count", "candidatesTokenCount"):
            return cls.from_gemini(usage).with_tool_calls(_gemini_searches(response))
        if _has(usage, "prompt_tokens", "completion_tokens"):
            return cls.from_openai(usage)
        if _has(usage, "cache_creation_input_tokens", "cache_read_input_tokens"):
            return cls.from_anthropic(usage)
        if _has(usage, "input_tokens_details", "output_tokens_details"):
            return cls.from_openai_responses(usage).with_tool_calls(
                tool_calls_in_output(_get(response, "output"))
            )
        if _has(usage, "input_tokens", "output_tokens"):
            # Both Anthropic and Responses use these names; the response type tells them apart.
            kind = _get(response, "type")
            if kind == "message" or str(_get(response, "id") or "").startswith("msg_"):
                return cls.from_anthropic(usage)
            return cls.from_openai_responses(usage).with_tool_calls(
                tool_calls_in_output(_get(response, "output"))
            )
        raise ValueError(f"no token usage found in {type(response).__name__}")


#: The count fields (tokens, then tool uses), in declaration order (the rest are conditions).
COUNT_FIELDS: Final = tuple(f.name for f in fields(Usage) if f.type in ("int", int))
#: Hosted tool (spendgate.pricing.schema.TOOLS) -> the Usage field that counts its billed uses.
#: Anthropic's code execution is billed by container time, which no answer reports: no count.
TOOL_CALL_FIELDS: Final = {
    "web_search": "web_search_calls",
    "web_fetch": "web_fetch_calls",
    "file_search": "file_search_calls",
    "code_interpreter": "code_interpreter_calls",
    "google_maps": "google_maps_calls",
}
#: OpenAI Responses output item type -> the tool it is a billed use of.
_OUTPUT_ITEM_TOOLS: Final = {"web_search_call": "web_search", "file_search_call": "file_search"}


def tool_calls_in_output(output: Any) -> dict[str, int]:
    """The hosted tool uses an OpenAI Responses answer's ``output`` items show (dicts or SDK
    objects): each ``web_search_call`` and ``file_search_call``, and each code-interpreter
    container (``code_interpreter_call`` items sharing a ``container_id`` ran in one session)."""
    if not isinstance(output, list | tuple):
        return {}
    counts: dict[str, int] = {}
    containers: set[str] = set()
    unnamed = 0
    for item in output:
        kind = _get(item, "type")
        tool = _OUTPUT_ITEM_TOOLS.get(kind) if isinstance(kind, str) else None
        if tool is not None:
            counts[tool] = counts.get(tool, 0) + 1
        elif kind == "code_interpreter_call":
            container = _get(item, "container_id")
            if isinstance(container, str) and container:
                containers.add(container)
            else:
                unnamed += 1  # no container named: counted as a session of its own
    if containers or unnamed:
        counts["code_interpreter"] = len(containers) + unnamed
    return counts


def _gemini_searches(response: Any) -> dict[str, int]:
    """Google Search grounding queries a Gemini answer ran (``groundingMetadata.webSearchQueries``
    of each candidate); the fee's unit decides whether each query or the prompt is billed."""
    queries = sum(
        len(
            _list(
                _get(candidate, "groundingMetadata", "grounding_metadata"),
                "webSearchQueries",
                "web_search_queries",
            )
        )
        for candidate in _list(response, "candidates")
    )
    return {"web_search": queries} if queries else {}


def _with_reasoning(prompt: int, output: int, reasoning: int, total: int | None) -> int:
    """The output including reasoning, whichever convention the report used.

    OpenAI counts reasoning inside the completion (total = prompt + completion); xAI
    beside it (total = prompt + completion + reasoning). The total decides; without one,
    more reasoning than completion can only be beside it. Never clamped away.
    """
    if not reasoning:
        return output
    if total is not None and total == prompt + output + reasoning and total != prompt + output:
        return output + reasoning
    if reasoning > output and (total is None or total != prompt + output):
        return output + reasoning
    return output


def _openai_writes(details: Any) -> tuple[int, int]:
    """(default-TTL writes, 12-hour writes) from OpenAI's ``*_tokens_details``."""
    written = _int(details, "cache_write_tokens")
    split = _get(details, "cache_write_tokens_details")
    write_12h = _int(split, "ttl_12h_tokens")
    write_30m = _int(split, "ttl_30m_tokens")
    # Writes the split does not place are default-TTL (30-minute) ones.
    return max(write_30m, written - write_12h), write_12h


def _total(obj: Any, name: str = "total_tokens") -> int | None:
    return _int(obj, name) if _get(obj, name) is not None else None


def _modality(usage: Any, kind: str) -> int:
    """Gemini output tokens of one modality (``candidatesTokensDetails``)."""
    return sum(
        _int(d, "tokenCount", "token_count")
        for d in _list(usage, "candidatesTokensDetails", "candidates_tokens_details")
        if str(_get(d, "modality") or "").upper().endswith(kind)
    )


def _str(obj: Any, name: str) -> str:
    value = _get(obj, name)
    return value.lower() if isinstance(value, str) else ""


def _get(obj: Any, *names: str) -> Any:
    if obj is None:
        return None
    for name in names:
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _has(obj: Any, *names: str) -> bool:
    return any(_get(obj, name) is not None for name in names)


def _int(obj: Any, *names: str) -> int:
    value = _get(obj, *names)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # some proxies send JSON numbers like 12.0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"usage field {names[0]!r} is not a token count: {value!r}")
    if value < 0:
        raise ValueError(f"usage field {names[0]!r} is negative: {value}")
    return value


def _list(obj: Any, *names: str) -> list[Any]:
    value = _get(obj, *names)
    return list(value) if isinstance(value, list | tuple) else []
