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
then ``guard.end()`` on what the answer said, as the lifecycle's ending policy
decides (docs/design.md). Streams are read by the lifecycle's ``StreamReader``:
``message_start``'s usage (input, cache) merged with ``message_delta``'s
cumulative ``output_tokens``; a stream closed early or broken ends once, on
what it said. Any exception from the SDK is re-raised unchanged after the
reservation is ended as the exception says (refused: released; lost: charged).

Per-call attribution: ``spendgate_attributes={"team": "research"}`` on
``messages.create``/``messages.stream`` (removed before the SDK sees it), on
top of ``spendgate.attribute(...)`` blocks; ``metadata.user_id`` is the user
when no ``attribute()`` block names one. Per-call cost cap:
``spendgate_max_cost=0.10`` (USD) on the same methods, with any
``spendgate.max_cost(...)`` block around the call: the smaller applies.
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
from spendgate.integrations import common
from spendgate.integrations.common import StreamEnding
from spendgate.lifecycle import Happened, Report
from spendgate.lifecycle.reading import answer_report
from spendgate.money import Money
from spendgate.pricing.regions import where_of

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
#: Carries ``spendgate_max_cost`` the same way (a private name: never sent, never the gateway's).
_MAX_COST_HEADER: Final = "x-spendgate-call-max-cost"


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


def _with_attributes(
    kwargs: dict[str, Any], attributes: Mapping[str, Any] | None, max_cost: object = None
) -> dict[str, Any]:
    if attributes or max_cost is not None:
        headers = dict(kwargs.get("extra_headers") or {})
        if attributes:
            # Tags may come as a set or tuple; the header is parsed back by post() and never sent.
            headers[_ATTRIBUTES_HEADER] = json.dumps(dict(attributes), default=list)
        if max_cost is not None:  # checked here, so a bad value fails at the call
            headers[_MAX_COST_HEADER] = Money.parse(max_cost, what="spendgate_max_cost").decimal_str()
        kwargs["extra_headers"] = headers
    return kwargs


def _max_cost(headers: dict[str, Any]) -> Money | None:
    raw = headers.pop(_MAX_COST_HEADER, None)
    return Money.parse(raw, what="spendgate_max_cost") if isinstance(raw, str) else None


# -- ending ----------------------------------------------------------------------------------


class GuardedStream(Stream[_T]):
    """The SDK's ``Stream`` of raw events, ended once when it ends, breaks or is closed."""

    _spendgate_ending: StreamEnding | None = None

    def __stream__(self) -> Iterator[_T]:
        ending = self._spendgate_ending
        if ending is None:
            yield from super().__stream__()
        else:
            yield from common.iterate(super().__stream__(), ending)

    def close(self) -> None:
        super().close()
        if self._spendgate_ending is not None:
            self._spendgate_ending.end(Happened.CLOSED)

    def __del__(self) -> None:
        if self._spendgate_ending is not None:
            self._spendgate_ending.dropped()


class AsyncGuardedStream(AsyncStream[_T]):
    """The SDK's ``AsyncStream`` of raw events, ended once (through the ledger's async calls)."""

    _spendgate_ending: StreamEnding | None = None

    async def __stream__(self) -> AsyncIterator[_T]:
        ending = self._spendgate_ending
        events = super().__stream__()
        async for event in events if ending is None else common.aiterate(events, ending):
            yield event

    async def close(self) -> None:
        await super().close()
        if self._spendgate_ending is not None:
            await self._spendgate_ending.aend(Happened.CLOSED)

    def __del__(self) -> None:
        if self._spendgate_ending is not None:
            self._spendgate_ending.dropped()


def _outcome(guard: Guard, admission: Admission, parsed: Any) -> Report | None:
    """The report to end a whole answer on now, or None for a stream (its ending comes later)."""
    if isinstance(parsed, GuardedStream | AsyncGuardedStream):
        parsed._spendgate_ending = StreamEnding(guard, admission)
        return None
    return answer_report("messages", parsed)


def _unparsed(exc: BaseException) -> Report:
    # Answered (and billed), but unreadable: the ending policy charges the reservation.
    return Report(Happened.COMPLETE, detail=f"the response could not be parsed ({type(exc).__name__})")


# -- the clients -----------------------------------------------------------------------------


class _GuardedMessages(Messages):
    """``messages`` that takes ``spendgate_attributes=`` and ``spendgate_max_cost=``; the
    guarding itself is in ``post()``."""

    def create(
        self,
        *args: Any,
        spendgate_attributes: Mapping[str, Any] | None = None,
        spendgate_max_cost: object = None,
        **kwargs: Any,
    ) -> Any:
        return super().create(*args, **_with_attributes(kwargs, spendgate_attributes, spendgate_max_cost))

    def stream(
        self,
        *args: Any,
        spendgate_attributes: Mapping[str, Any] | None = None,
        spendgate_max_cost: object = None,
        **kwargs: Any,
    ) -> Any:
        return super().stream(*args, **_with_attributes(kwargs, spendgate_attributes, spendgate_max_cost))


class _GuardedAsyncMessages(AsyncMessages):
    async def create(
        self,
        *args: Any,
        spendgate_attributes: Mapping[str, Any] | None = None,
        spendgate_max_cost: object = None,
        **kwargs: Any,
    ) -> Any:
        return await super().create(
            *args, **_with_attributes(kwargs, spendgate_attributes, spendgate_max_cost)
        )

    def stream(
        self,
        *args: Any,
        spendgate_attributes: Mapping[str, Any] | None = None,
        spendgate_max_cost: object = None,
        **kwargs: Any,
    ) -> Any:
        return super().stream(*args, **_with_attributes(kwargs, spendgate_attributes, spendgate_max_cost))


def _copy_keeping_guard(cls: type[Any]) -> Any:
    """``cls.copy()``/``with_options()`` whose copies stay guarded by the same Guard (the next
    class's ``copy`` in the MRO does the copying: a user's subclass keeps its own)."""

    def guarded_copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = super(cls, self).copy(*args, **kwargs)
        client._spendgate_guard = self._spendgate_guard
        client._spendgate_watched = common.watch_attempts(client)
        return client

    return guarded_copy


class _GuardedAnthropic(anthropic.Anthropic):
    _spendgate_guard: Guard
    _spendgate_watched = False  # whether its HTTP client's attempts are counted

    def post(self, path: str, **kwargs: Any) -> Any:
        if path != _PATH or not isinstance(kwargs.get("body"), Mapping):
            return super().post(path, **kwargs)
        guard = self._spendgate_guard
        body, options = _split(kwargs)
        attrs = _attributes(options["headers"], body)
        cap = _max_cost(options["headers"])
        if _sdk_prepare is not None:  # one-shot iterators are read once, here; the SDK gets lists
            body = _sdk_prepare.prepare_request_data(body, location="body")
        else:
            body = _plain(body)
        admission = guard.admit(
            "messages", body, attributes=attrs, max_cost=cap, where=where_of(self.base_url)
        )
        kwargs.update(body=admission.request, options=options)
        if kwargs.get("stream"):
            kwargs["stream_cls"] = _guarded_stream_cls(kwargs.get("stream_cls"), GuardedStream)
        with common.attempts() as counted:
            try:
                result = super().post(path, **kwargs)
            except BaseException as exc:
                watched = counted if self._spendgate_watched else None
                common.end_quietly(
                    guard, admission, common.failure_report(exc, anthropic, "messages", watched)
                )
                raise
        if kwargs.get("stream") and isinstance(result, anthropic.APIResponse):
            # with_streaming_response: parsed or read raw (iter_lines), the SSE is read as its
            # bytes are handed out (common.guard_raw_stream; the parsed stream is left plain).
            common.guard_raw_stream(result.http_response, StreamEnding(guard, admission))
            return result
        try:
            # with_raw_response / with_streaming_response: the parsed body is cached, the caller gets it too
            parsed = result.parse() if isinstance(result, anthropic.APIResponse) else result
        except BaseException as exc:
            common.end_quietly(guard, admission, _unparsed(exc))
            raise
        report = _outcome(guard, admission, parsed)
        if report is not None:
            common.end_quietly(guard, admission, report)
        return result

    @cached_property
    def messages(self) -> Messages:
        return _GuardedMessages(self)


class _GuardedAsyncAnthropic(anthropic.AsyncAnthropic):
    _spendgate_guard: Guard
    _spendgate_watched = False

    async def post(self, path: str, **kwargs: Any) -> Any:
        if path != _PATH or not isinstance(kwargs.get("body"), Mapping):
            return await super().post(path, **kwargs)
        guard = self._spendgate_guard
        body, options = _split(kwargs)
        attrs = _attributes(options["headers"], body)
        cap = _max_cost(options["headers"])
        if _sdk_prepare is not None:
            body = await _sdk_prepare.async_prepare_request_data(body, location="body")
        else:
            body = _plain(body)
        admission = await guard.admit_async(
            "messages", body, attributes=attrs, max_cost=cap, where=where_of(self.base_url)
        )
        kwargs.update(body=admission.request, options=options)
        if kwargs.get("stream"):
            kwargs["stream_cls"] = _guarded_stream_cls(kwargs.get("stream_cls"), AsyncGuardedStream)
        with common.attempts() as counted:
            try:
                result = await super().post(path, **kwargs)
            except BaseException as exc:
                watched = counted if self._spendgate_watched else None
                await common.aend_quietly(
                    guard, admission, common.failure_report(exc, anthropic, "messages", watched)
                )
                raise
        if kwargs.get("stream") and isinstance(result, anthropic.AsyncAPIResponse):
            common.guard_raw_stream(result.http_response, StreamEnding(guard, admission))
            return result
        try:
            parsed = await result.parse() if isinstance(result, anthropic.AsyncAPIResponse) else result
        except BaseException as exc:
            await common.aend_quietly(guard, admission, _unparsed(exc))
            raise
        report = _outcome(guard, admission, parsed)
        if report is not None:
            await common.aend_quietly(guard, admission, report)
        return result

    @cached_property
    def messages(self) -> AsyncMessages:
        return _GuardedAsyncMessages(self)


for _cls in (_GuardedAnthropic, _GuardedAsyncAnthropic):
    setattr(_cls, "copy", _copy_keeping_guard(_cls))  # noqa: B010 - replaces a method mypy guards
    setattr(_cls, "with_options", _cls.copy)  # noqa: B010

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
    guarded._spendgate_watched = common.watch_attempts(guarded)
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
