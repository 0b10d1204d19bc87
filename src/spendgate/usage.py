"""Provider usage reports -> one normalised :class:`Usage`.

Conventions (OpenAI's, the most common): ``input_tokens`` counts every prompt
token, cache reads and cache writes included; ``output_tokens`` counts every
generated token, reasoning included. The detail fields say how many of those
are of a kind priced apart. Anthropic reports input *excluding* cache reads
and writes; Gemini reports thoughts *beside* the candidates: both are
converted here, so a token is never priced twice nor missed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


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
        )
        if not all(type(v) is int and v >= 0 for v in values):
            for f in fields(self):
                value = getattr(self, f.name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"Usage.{f.name} must be a whole number >= 0, got {value!r}")
        if self.cache_read_tokens + self.cache_write_tokens + self.cache_write_1h_tokens > self.input_tokens:
            raise ValueError(
                "Usage: cache reads and writes are part of input_tokens (OpenAI's convention); "
                f"got input_tokens={self.input_tokens} with cache_read={self.cache_read_tokens}, "
                f"cache_write={self.cache_write_tokens}, cache_write_1h={self.cache_write_1h_tokens}"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(
                "Usage: reasoning tokens are part of output_tokens; "
                f"got output_tokens={self.output_tokens}, reasoning_tokens={self.reasoning_tokens}"
            )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    # -- constructors from provider shapes --------------------------------
    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """Chat Completions / Completions / Embeddings ``usage`` (dict or SDK object)."""
        prompt = _int(usage, "prompt_tokens")
        completion = _int(usage, "completion_tokens")
        pdet = _get(usage, "prompt_tokens_details")
        cdet = _get(usage, "completion_tokens_details")
        return cls(
            input_tokens=prompt,
            output_tokens=completion,
            cache_read_tokens=min(_int(pdet, "cached_tokens"), prompt),
            reasoning_tokens=min(_int(cdet, "reasoning_tokens"), completion),
            audio_input_tokens=_int(pdet, "audio_tokens"),
            audio_output_tokens=_int(cdet, "audio_tokens"),
        )

    @classmethod
    def from_openai_responses(cls, usage: Any) -> Usage:
        """Responses API ``usage``: input_tokens / output_tokens with *_details."""
        inp = _int(usage, "input_tokens")
        out = _int(usage, "output_tokens")
        return cls(
            input_tokens=inp,
            output_tokens=out,
            cache_read_tokens=min(_int(_get(usage, "input_tokens_details"), "cached_tokens"), inp),
            reasoning_tokens=min(_int(_get(usage, "output_tokens_details"), "reasoning_tokens"), out),
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
        audio_out = sum(
            _int(d, "tokenCount", "token_count")
            for d in _list(usage, "candidatesTokensDetails", "candidates_tokens_details")
            if str(_get(d, "modality") or "").upper().endswith("AUDIO")
        )
        inp = prompt + tool_prompt
        return cls(
            input_tokens=inp,
            output_tokens=candidates + thoughts,
            cache_read_tokens=min(cached, inp),
            reasoning_tokens=thoughts,
            audio_input_tokens=min(audio_in, inp),
            audio_output_tokens=min(audio_out, candidates),
        )

    @classmethod
    def from_response(cls, response: Any) -> Usage:
        """Any supported response (or its usage object): the shape decides the provider."""
        usage = _get(response, "usage")
        if usage is None:
            usage = _get(response, "usageMetadata", "usage_metadata")
        if usage is None:
            usage = response
        if _has(usage, "promptTokenCount", "prompt_token_count", "candidatesTokenCount"):
            return cls.from_gemini(usage)
        if _has(usage, "prompt_tokens", "completion_tokens"):
            return cls.from_openai(usage)
        if _has(usage, "cache_creation_input_tokens", "cache_read_input_tokens"):
            return cls.from_anthropic(usage)
        if _has(usage, "input_tokens_details", "output_tokens_details"):
            return cls.from_openai_responses(usage)
        if _has(usage, "input_tokens", "output_tokens"):
            # Both Anthropic and Responses use these names; the response type tells them apart.
            kind = _get(response, "type")
            if kind == "message" or str(_get(response, "id") or "").startswith("msg_"):
                return cls.from_anthropic(usage)
            return cls.from_openai_responses(usage)
        raise ValueError(f"no token usage found in {type(response).__name__}")


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
