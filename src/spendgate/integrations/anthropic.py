"""The ``anthropic`` SDK, guarded: every Messages call is reserved before it is sent and settled after.

``wrap_anthropic(client, guard)`` returns ``client.copy()`` (same settings, same
HTTP pool; the caller's client is untouched) turned into a subclass of the
client's class whose ``post()`` guards ``POST /v1/messages``. That one method
is where every Messages call meets the wire, so ``messages.create`` (plain and
``stream=True``), ``messages.stream()``, ``messages.parse()``,
``with_raw_response``, ``with_streaming_response``, ``beta.messages`` and
``with_options()`` copies are all guarded, and nothing else is touched.

Each call: the body is prepared as the SDK sends it (``extra_body`` merged in,
since it is sent; ``extra_headers``/``timeout``/``extra_query`` never part of
it), ``guard.admit("messages", body)``, the SDK call with the admitted body,
then ``guard.settle()`` from ``Usage.from_anthropic(message.usage)``. Streams
settle from ``message_start``'s usage (input, cache) merged with
``message_delta``'s cumulative ``output_tokens``; a stream closed early or
broken settles ``guard.settle_partial()`` with the text seen, exactly once.
Any exception from the SDK is re-raised unchanged after ``guard.release()``.

Per-call attribution: ``spendgate_attributes={"team": "research"}`` on
``messages.create``/``messages.stream`` (removed before the SDK sees it), on
top of ``spendgate.attribute(...)`` blocks; ``metadata.user_id`` is the user
when no ``attribute()`` block names one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import cached_property
from typing import Any, Final, TypeVar, cast, get_args, get_origin

import anthropic
from anthropic import AsyncStream, Stream
from anthropic.resources.messages import AsyncMessages, Messages

from spendgate import attribution
from spendgate.guard import Admission, Guard
from spendgate.usage import Usage

try:  # the SDK's own body preparation: the estimate sees exactly the data that is sent
    from anthropic._utils import _prepare as _sdk_prepare
except ImportError:  # pragma: no cover - older SDKs prepare the body before post()
    _sdk_prepare = None  # type: ignore[assignment]

__all__ = ["guard_of", "wrap_anthropic", "wrap_async_anthropic"]

log = logging.getLogger("spendgate.integrations.anthropic")

_T = TypeVar("_T")

_PATH: Final = "/v1/messages"
#: Carries ``spendgate_attributes`` from ``create()``/``stream()`` to ``post()``, which removes it:
#: ``stream()`` sends its request later, in ``__enter__``, so a context variable would miss it.
_ATTRIBUTES_HEADER: Final = "x-spendgate-attributes"
_USAGE_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
)


# -- the request body ----------------------------------------------------------------------


def _merged_body(body: Mapping[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``extra_body`` merged in as the SDK does (top level, later wins); pops it."""
    extra = options.get("extra_json")
    if not isinstance(extra, Mapping):
        return dict(body)
    del options["extra_json"]  # merged here, so a clamped max_tokens is not overridden later
    return {**body, **extra}


def _plain(value: Any) -> Any:
    """Fallback preparation: drop omitted values, lists for tuples (older SDKs pass plain data)."""
    if isinstance(value, Mapping):
        return {
            k: _plain(v) for k, v in value.items() if not isinstance(v, anthropic.NotGiven | anthropic.Omit)
        }
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _attributes(headers: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = headers.pop(_ATTRIBUTES_HEADER, None)
    explicit: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else {}
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    if isinstance(user, str) and user and "user" not in explicit and attribution.current().user is None:
        explicit["user"] = user
    return explicit or None


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(body to estimate, request options without the spendgate header and extra_body)."""
    options = dict(kwargs.get("options") or {})
    headers = dict(options.get("headers") or {})
    options["headers"] = headers
    return _merged_body(kwargs["body"], options), options


def _guarded_stream_cls(stream_cls: Any, guarded: type[Any]) -> Any:
    """``GuardedStream[Event]`` for the SDK's ``Stream[Event]``: same events, settled at the end."""
    if get_origin(stream_cls) in (Stream, AsyncStream) and (args := get_args(stream_cls)):
        return guarded[args[0]]
    return stream_cls


def _with_attributes(kwargs: dict[str, Any], attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    if attributes:
        headers = dict(kwargs.get("extra_headers") or {})
        # Tags may come as a set or tuple; the header is parsed back by post() and never sent.
        headers[_ATTRIBUTES_HEADER] = json.dumps(dict(attributes), default=list)
        kwargs["extra_headers"] = headers
    return kwargs


# -- settling --------------------------------------------------------------------------------


def _release_quietly(guard: Guard, admission: Admission, error: BaseException) -> None:
    """Release after a failed call; a ledger failure here must not replace the provider's error."""
    try:
        guard.release(admission, type(error).__name__)
    except Exception:
        log.exception("spendgate: could not release %s (it expires with its lease)", admission.request_id)


class _Tracker:
    """What a stream has shown so far, and the one settlement it ends with."""

    __slots__ = ("admission", "done", "final", "guard", "texts", "usage")

    def __init__(self, guard: Guard, admission: Admission) -> None:
        self.guard = guard
        self.admission = admission
        self.usage: dict[str, Any] = {}
        self.texts: list[str] = []
        self.final = False  # message_delta seen: the usage is the billed one
        self.done = False

    def observe(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "content_block_delta":
            delta = event.delta
            # text, thinking and tool input are all generated (and billed) output
            for name in ("text", "thinking", "partial_json"):
                text = getattr(delta, name, None)
                if isinstance(text, str):
                    self.texts.append(text)
                    break
        elif kind == "message_start":
            self._merge(getattr(event.message, "usage", None))
        elif kind == "message_delta":
            # Cumulative counts: they replace message_start's (its output_tokens is a placeholder).
            self._merge(getattr(event, "usage", None))
            self.final = True

    def _merge(self, usage: Any) -> None:
        for name in _USAGE_FIELDS:
            value = getattr(usage, name, None)
            if value is not None:
                self.usage[name] = value

    def end(self, status: str, *, quiet: bool) -> None:
        """Settle once: the billed usage when known, else the prompt bound plus the text seen."""
        if self.done:
            return
        self.done = True
        try:
            if self.final:
                self.guard.settle(self.admission, Usage.from_anthropic(self.usage))
            else:
                # message_start already told the real input and cache tokens: use them.
                known = Usage.from_anthropic(self.usage) if self.usage else None
                self.guard.settle_partial(self.admission, "".join(self.texts), status=status, known=known)
        except Exception:
            if not quiet:
                raise
            # Inside the stream's own error or close: the caller sees that, not a ledger error.
            log.exception("spendgate: could not settle stream %s", self.admission.request_id)


class GuardedStream(Stream[_T]):
    """The SDK's ``Stream`` of raw events, settled once when it ends, breaks or is closed."""

    _spendgate_tracker: _Tracker | None = None

    def __stream__(self) -> Iterator[_T]:
        tracker = self._spendgate_tracker
        if tracker is None:
            yield from super().__stream__()
            return
        try:
            for event in super().__stream__():
                tracker.observe(event)
                yield event
        except GeneratorExit:  # the caller stopped reading
            tracker.end("closed", quiet=True)
            raise
        except BaseException:
            tracker.end("cut", quiet=True)
            raise
        tracker.end("cut", quiet=False)  # a stream that ends without message_delta was cut short

    def close(self) -> None:
        super().close()
        if self._spendgate_tracker is not None:
            self._spendgate_tracker.end("closed", quiet=True)


class AsyncGuardedStream(AsyncStream[_T]):
    """The SDK's ``AsyncStream`` of raw events, settled once when it ends, breaks or is closed."""

    _spendgate_tracker: _Tracker | None = None

    async def __stream__(self) -> AsyncIterator[_T]:
        tracker = self._spendgate_tracker
        if tracker is None:
            async for event in super().__stream__():
                yield event
            return
        try:
            async for event in super().__stream__():
                tracker.observe(event)
                yield event
        except GeneratorExit:
            tracker.end("closed", quiet=True)
            raise
        except BaseException:
            tracker.end("cut", quiet=True)
            raise
        tracker.end("cut", quiet=False)

    async def close(self) -> None:
        await super().close()
        if self._spendgate_tracker is not None:
            self._spendgate_tracker.end("closed", quiet=True)


def _finish(guard: Guard, admission: Admission, result: Any, parsed: Any) -> None:
    """Settle a non-stream result, or hand a stream its tracker (``parsed`` is the raw response's body)."""
    if isinstance(parsed, GuardedStream | AsyncGuardedStream):
        parsed._spendgate_tracker = _Tracker(guard, admission)
        return
    usage = getattr(parsed, "usage", None)
    if usage is None:
        guard.settle_reserved(admission, f"no usage in a {type(result).__name__}")
        return
    guard.settle(admission, Usage.from_anthropic(usage))


# -- the clients -----------------------------------------------------------------------------


class _GuardedMessages(Messages):
    """``messages`` that takes ``spendgate_attributes=``; the guarding itself is in ``post()``."""

    def create(self, *args: Any, spendgate_attributes: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        return super().create(*args, **_with_attributes(kwargs, spendgate_attributes))

    def stream(self, *args: Any, spendgate_attributes: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        return super().stream(*args, **_with_attributes(kwargs, spendgate_attributes))


class _GuardedAsyncMessages(AsyncMessages):
    async def create(
        self, *args: Any, spendgate_attributes: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        return await super().create(*args, **_with_attributes(kwargs, spendgate_attributes))

    def stream(self, *args: Any, spendgate_attributes: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        return super().stream(*args, **_with_attributes(kwargs, spendgate_attributes))


class _GuardedAnthropic(anthropic.Anthropic):
    _spendgate_guard: Guard

    def post(self, path: str, **kwargs: Any) -> Any:
        if path != _PATH or not isinstance(kwargs.get("body"), Mapping):
            return super().post(path, **kwargs)
        guard = self._spendgate_guard
        body, options = _split(kwargs)
        attrs = _attributes(options["headers"], body)
        if _sdk_prepare is not None:  # one-shot iterators are read once, here; the SDK gets lists
            body = _sdk_prepare.prepare_request_data(body, location="body")
        else:
            body = _plain(body)
        admission = guard.admit("messages", body, attributes=attrs)
        kwargs.update(body=admission.request, options=options)
        if kwargs.get("stream"):
            kwargs["stream_cls"] = _guarded_stream_cls(kwargs.get("stream_cls"), GuardedStream)
        try:
            result = super().post(path, **kwargs)
        except BaseException as exc:
            _release_quietly(guard, admission, exc)
            raise
        try:
            # with_raw_response / with_streaming_response: the parsed body is cached, the caller gets it too
            parsed = result.parse() if isinstance(result, anthropic.APIResponse) else result
        except BaseException as exc:
            # Answered (and billed), but unreadable: keep the reservation as the charge.
            guard.settle_reserved(admission, f"the response could not be parsed ({type(exc).__name__})")
            raise
        _finish(guard, admission, result, parsed)
        return result

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        client = super().copy(*args, **kwargs)
        client._spendgate_guard = self._spendgate_guard
        return client

    with_options = copy

    @cached_property
    def messages(self) -> Messages:
        return _GuardedMessages(self)


class _GuardedAsyncAnthropic(anthropic.AsyncAnthropic):
    _spendgate_guard: Guard

    async def post(self, path: str, **kwargs: Any) -> Any:
        if path != _PATH or not isinstance(kwargs.get("body"), Mapping):
            return await super().post(path, **kwargs)
        guard = self._spendgate_guard
        body, options = _split(kwargs)
        attrs = _attributes(options["headers"], body)
        if _sdk_prepare is not None:
            body = await _sdk_prepare.async_prepare_request_data(body, location="body")
        else:
            body = _plain(body)
        admission = await guard.admit_async("messages", body, attributes=attrs)
        kwargs.update(body=admission.request, options=options)
        if kwargs.get("stream"):
            kwargs["stream_cls"] = _guarded_stream_cls(kwargs.get("stream_cls"), AsyncGuardedStream)
        try:
            result = await super().post(path, **kwargs)
        except BaseException as exc:
            _release_quietly(guard, admission, exc)
            raise
        try:
            parsed = await result.parse() if isinstance(result, anthropic.AsyncAPIResponse) else result
        except BaseException as exc:
            guard.settle_reserved(admission, f"the response could not be parsed ({type(exc).__name__})")
            raise
        _finish(guard, admission, result, parsed)
        return result

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        client = super().copy(*args, **kwargs)
        client._spendgate_guard = self._spendgate_guard
        return client

    with_options = copy

    @cached_property
    def messages(self) -> AsyncMessages:
        return _GuardedAsyncMessages(self)


_SUBCLASSES: dict[type[Any], type[Any]] = {}


def _guarded_class(base: type[Any], root: type[Any]) -> type[Any]:
    """``root`` for the SDK's own class; for a subclass of it, one that keeps the subclass's methods."""
    if issubclass(base, root):
        return base
    if base is root.__mro__[1]:
        return root
    cls = _SUBCLASSES.get(base)
    if cls is None:
        cls = _SUBCLASSES[base] = type(f"Guarded{base.__name__}", (root, base), {"__module__": __name__})
    return cls


def _guarded_copy(client: Any, guard: Guard, root: type[Any]) -> Any:
    current = getattr(client, "_spendgate_guard", None)
    if current is not None and current is not guard:
        # Replacing it would silently drop the first guard's budgets.
        raise ValueError("this client is already guarded by another Guard; wrap the original client")
    guarded = client.copy()
    # A fresh copy, of a subclass with no new fields: only its methods change.
    guarded.__class__ = _guarded_class(type(client), root)
    guarded._spendgate_guard = guard
    return guarded


def wrap_anthropic(client: anthropic.Anthropic, guard: Guard) -> anthropic.Anthropic:
    """A copy of ``client`` whose Messages calls are reserved, then settled, by ``guard``."""
    if not isinstance(client, anthropic.Anthropic):
        raise TypeError(f"wrap_anthropic() takes an anthropic.Anthropic, got {type(client).__qualname__}")
    return cast(anthropic.Anthropic, _guarded_copy(client, guard, _GuardedAnthropic))


def wrap_async_anthropic(client: anthropic.AsyncAnthropic, guard: Guard) -> anthropic.AsyncAnthropic:
    """A copy of ``client`` whose Messages calls are reserved, then settled, by ``guard``."""
    if not isinstance(client, anthropic.AsyncAnthropic):
        raise TypeError(
            f"wrap_async_anthropic() takes an anthropic.AsyncAnthropic, got {type(client).__qualname__}"
        )
    return cast(anthropic.AsyncAnthropic, _guarded_copy(client, guard, _GuardedAsyncAnthropic))


def guard_of(client: anthropic.Anthropic | anthropic.AsyncAnthropic) -> Guard | None:
    """The Guard of a wrapped client, or None."""
    guard = getattr(client, "_spendgate_guard", None)
    return guard if isinstance(guard, Guard) else None
