"""The ``openai`` SDK, guarded: every model call is reserved before it is sent and ended after.

``wrap_openai(client, guard)`` returns ``client.copy()`` (same class, same HTTP
pool, same settings; the caller's client is untouched) whose
``chat.completions``, ``completions``, ``embeddings`` and ``responses``
resources have ``create`` (and ``parse`` where it exists) replaced by a guarded
version. Everything the SDK builds on top of those methods goes through the
guard too: ``with_raw_response``, ``with_streaming_response``,
``chat.completions.stream()``, ``responses.stream()``, and ``with_options()``
copies.

Each call: ``guard.admit()`` on the request body (``extra_body`` included,
``extra_headers``/``extra_query``/``timeout`` left out), the SDK call with the
admitted body, then ``guard.end()`` on what the answer said, as the ending
policy decides (docs/design.md, the ending table). Any exception from the SDK
is re-raised unchanged after the reservation is ended as the call's attempts
say (counted by hooks on the SDK's HTTP client: none sent, released; every
one refused, released; one unanswered or an answer the SDK then failed on,
charged).
Streams come back as :class:`GuardedStream`/:class:`AsyncGuardedStream`,
subclasses of the SDK's ``Stream``/``AsyncStream``.

Per-call attribution: ``spendgate_attributes={"team": "research"}`` (removed
before the SDK sees the call), on top of ``spendgate.attribute(...)`` blocks
and the request's ``user``. Per-call cost cap: ``spendgate_max_cost=0.10`` (USD,
removed too), with any ``spendgate.max_cost(...)`` block: the smaller applies.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import openai
from openai import AsyncStream, Stream
from openai._legacy_response import LegacyAPIResponse
from openai._response import APIResponse, AsyncAPIResponse

from spendgate.estimate import Endpoint
from spendgate.guard import Admission, Guard
from spendgate.integrations import common
from spendgate.integrations.common import StreamEnding
from spendgate.lifecycle import Happened, Report
from spendgate.lifecycle.reading import answer_report
from spendgate.money import Money
from spendgate.pricing.regions import Where, where_of

__all__ = [
    "AsyncGuardedStream",
    "GuardedStream",
    "guard_in_place",
    "guard_of",
    "wrap_async_openai",
    "wrap_openai",
]

log = logging.getLogger("spendgate.integrations.openai")

_T = TypeVar("_T")
_S = TypeVar("_S", bound=openai.OpenAI)
_A = TypeVar("_A", bound=openai.AsyncOpenAI)

#: Keyword arguments of every SDK method that are not part of the request body.
_OPTIONS: Final = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
#: Body fields the SDK accepts as any iterable; the estimate needs them as lists.
_LISTS: Final = frozenset({"messages", "input", "tools", "prompt", "functions"})
#: (resource path on the client, endpoint) of every guarded resource.
_GUARDED: Final[tuple[tuple[tuple[str, ...], Endpoint], ...]] = (
    (("chat", "completions"), "chat"),
    (("completions",), "completions"),
    (("embeddings",), "embeddings"),
    (("responses",), "responses"),
)
_METHODS: Final = ("create", "parse")
_GUARD_ATTR: Final = "_spendgate_guard"
# -- wrapping ----------------------------------------------------------------------


def wrap_openai(client: _S, guard: Guard, *, default_model: str | None = None) -> _S:
    """A guarded copy of ``client`` (``openai.OpenAI`` or ``AzureOpenAI``)."""
    # The class's copy, not the instance's: re-wrapping a wrapped client must not stack guards.
    new = type(client).copy(client)
    _install(new, guard, default_model, is_async=False)
    return new


def wrap_async_openai(client: _A, guard: Guard, *, default_model: str | None = None) -> _A:
    """A guarded copy of ``client`` (``openai.AsyncOpenAI`` or ``AsyncAzureOpenAI``)."""
    new = type(client).copy(client)
    _install(new, guard, default_model, is_async=True)
    return new


def guard_in_place(
    client: openai.OpenAI | openai.AsyncOpenAI, guard: Guard, *, default_model: str | None = None
) -> None:
    """Guard ``client`` itself (for clients spendgate made; ``wrap_*`` copy the caller's).

    Call it before the client is used: a ``with_raw_response`` built earlier keeps the unguarded method.
    """
    _install(client, guard, default_model, is_async=isinstance(client, openai.AsyncOpenAI))


def guard_of(client: openai.OpenAI | openai.AsyncOpenAI) -> Guard:
    """The Guard of a client returned by ``wrap``; TypeError if the client is not guarded."""
    guard = vars(client).get(_GUARD_ATTR)
    if not isinstance(guard, Guard):
        raise TypeError("this client is not guarded by spendgate (use spendgate.wrap)")
    return guard


def _install(
    client: openai.OpenAI | openai.AsyncOpenAI, guard: Guard, default_model: str | None, *, is_async: bool
) -> None:
    # Instance attributes shadow the class's methods on this copy only. The SDK's raw and
    # streaming-response wrappers and its stream helpers look ``create`` up on the resource
    # when they are first built, so they pick up the guarded one.
    object.__setattr__(client, _GUARD_ATTR, guard)
    watched = common.watch_attempts(client)
    where = where_of(client.base_url)  # a regional host's uplift: reserved and charged
    for path, endpoint in _GUARDED:
        resource: Any = client
        for name in path:
            resource = getattr(resource, name)
        for method in _METHODS:
            original = getattr(resource, method, None)
            if original is None:
                continue
            if is_async:
                guarded = _async_guarded(original, endpoint, guard, default_model, watched, where)
            else:
                guarded = _sync_guarded(original, endpoint, guard, default_model, watched, where)
            object.__setattr__(resource, method, guarded)

    class_copy: Callable[..., Any] = type(client).copy

    def copy(**options: Any) -> Any:
        # ``with_options(timeout=...)`` makes a fresh client: it must stay guarded.
        new = class_copy(client, **options)
        _install(new, guard, default_model, is_async=is_async)
        return new

    functools.update_wrapper(copy, class_copy)
    object.__setattr__(client, "copy", copy)
    object.__setattr__(client, "with_options", copy)


# -- one call ----------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _params_of(func: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword parameters of an SDK method, or None if it takes ``**kwargs``."""
    params = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


class _Call:
    """A call's keyword arguments split into the body to estimate and the SDK options."""

    __slots__ = ("attributes", "body", "extra_keys", "max_cost", "options", "params")

    def __init__(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        original: Callable[..., Any],
        default_model: str | None,
    ) -> None:
        if args:
            raise TypeError(f"{getattr(original, '__name__', 'create')}() takes keyword arguments only")
        self.attributes = kwargs.pop("spendgate_attributes", None)
        self.max_cost = _money_or_none(kwargs.pop("spendgate_max_cost", None))
        func = getattr(original, "__func__", original)
        self.params = _params_of(func)
        body: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for key, value in kwargs.items():
            if isinstance(value, openai.Omit | openai.NotGiven):
                continue  # "not set": the SDK sends nothing for it either
            if key in _OPTIONS:
                options[key] = value
            elif key in _LISTS and _is_lazy_iterable(value):
                body[key] = list(value)  # a generator would be consumed by the estimate
            else:
                body[key] = value
        if default_model is not None and body.get("model") is None:
            body["model"] = default_model
        extra = options.get("extra_body")
        self.extra_keys: frozenset[str] = frozenset()
        if isinstance(extra, Mapping) and extra:
            # The SDK merges extra_body over the body: the provider sees (and bills) the merge.
            body.update(extra)
            self.extra_keys = frozenset(extra)
        self.body = body
        self.options = options

    def kwargs_for(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The SDK call's keyword arguments for the admitted body ``request``."""
        call = dict(self.options)
        extra: dict[str, Any] = {}
        for key, value in request.items():
            if key in self.extra_keys or (self.params is not None and key not in self.params):
                extra[key] = value
            else:
                call[key] = value
        if extra:
            original = self.options.get("extra_body")
            call["extra_body"] = {**original, **extra} if isinstance(original, Mapping) else extra
        return call


def _money_or_none(value: object) -> Money | None:
    return None if value is None else Money.parse(value, what="spendgate_max_cost")


def _is_lazy_iterable(value: object) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, list | str | bytes | Mapping)


def _sync_guarded(
    original: Callable[..., Any],
    endpoint: Endpoint,
    guard: Guard,
    default_model: str | None,
    watched: bool,
    where: Where,
) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        call = _Call(args, kwargs, original, default_model)
        admission = guard.admit(
            endpoint, call.body, attributes=call.attributes, max_cost=call.max_cost, where=where
        )
        with common.attempts() as counted:
            try:
                result = original(**call.kwargs_for(admission.request))
            except BaseException as exc:
                report = common.failure_report(exc, openai, endpoint, counted if watched else None)
                common.end_quietly(guard, admission, report)
                raise
        try:
            return _finish(guard, admission, result)
        except BaseException:  # an interrupt while reading the answer: it was answered
            common.end_quietly(guard, admission, Report(Happened.LOST, detail="interrupted while read"))
            raise

    return guarded


def _async_guarded(
    original: Callable[..., Any],
    endpoint: Endpoint,
    guard: Guard,
    default_model: str | None,
    watched: bool,
    where: Where,
) -> Callable[..., Any]:
    @functools.wraps(original)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        call = _Call(args, kwargs, original, default_model)
        admission = await guard.admit_async(
            endpoint, call.body, attributes=call.attributes, max_cost=call.max_cost, where=where
        )
        with common.attempts() as counted:
            try:
                result = await original(**call.kwargs_for(admission.request))
            except BaseException as exc:  # cancellation too: the provider may have billed
                report = common.failure_report(exc, openai, endpoint, counted if watched else None)
                await common.aend_quietly(guard, admission, report)
                raise
        try:
            if isinstance(result, AsyncAPIResponse) and not _streamed(admission):
                # Its parse() reads the body: awaited here, cached by the response for _outcome.
                with contextlib.suppress(Exception):  # _outcome finds nothing cached: unreadable
                    await result.parse()
            return await _afinish(guard, admission, result)
        except BaseException:  # cancelled while reading the answer: it was answered
            await common.aend_quietly(guard, admission, Report(Happened.LOST, detail="cancelled while read"))
            raise

    return guarded


# -- ending ------------------------------------------------------------------------
# One classification of what came back, for both shells: a stream to guard (its reservation
# ends when it does), or the facts of a whole answer to end the reservation on now.


def _outcome(guard: Guard, admission: Admission, result: Any) -> tuple[Any, Report | None]:
    """(what to hand the caller, the report to end on now, or None when a stream ends it later)."""
    if isinstance(result, Stream | AsyncStream):
        return _guarded_stream(result, StreamEnding(guard, admission)), None
    if isinstance(result, LegacyAPIResponse | APIResponse | AsyncAPIResponse):
        if _streamed(admission):
            # The caller may parse() it or read it raw (iter_lines): the SSE is read as its bytes
            # are handed out, either way (common.guard_raw_stream).
            common.guard_raw_stream(result.http_response, StreamEnding(guard, admission))
            return result, None
        # with_raw_response / with_streaming_response: the parsed body is cached by the response,
        # so the caller's own .parse() returns the same (guarded) object.
        try:
            if isinstance(result, AsyncAPIResponse):
                parsed = result._parsed_by_type[result._cast_to]
            else:
                parsed = result.parse()
        except Exception as exc:
            log.warning("spendgate could not parse the response of %s", admission.request_id, exc_info=True)
            why = f"the response could not be parsed ({type(exc).__name__})"
            return result, Report(Happened.COMPLETE, detail=why)  # answered, unreadable
        if isinstance(parsed, Stream | AsyncStream):
            result._parsed_by_type[result._cast_to] = _guarded_stream(parsed, StreamEnding(guard, admission))
            return result, None
        return result, answer_report(admission.endpoint, parsed)
    return result, answer_report(admission.endpoint, result)


def _streamed(admission: Admission) -> bool:
    """Whether the request asked for a stream (its response is SSE)."""
    return admission.request.get("stream") is True


def _finish(guard: Guard, admission: Admission, result: Any) -> Any:
    given, report = _outcome(guard, admission, result)
    if report is not None:
        common.end_quietly(guard, admission, report)
    return given


async def _afinish(guard: Guard, admission: Admission, result: Any) -> Any:
    given, report = _outcome(guard, admission, result)
    if report is not None:
        await common.aend_quietly(guard, admission, report)
    return given


# -- streams -----------------------------------------------------------------------


def _guarded_stream(inner: Stream[Any] | AsyncStream[Any], ending: StreamEnding) -> Any:
    if isinstance(inner, AsyncStream):
        return AsyncGuardedStream(inner, ending)
    return GuardedStream(inner, ending)


def _adopt(stream: Stream[Any] | AsyncStream[Any], inner: Stream[Any] | AsyncStream[Any]) -> None:
    """Take over ``inner``'s fields. No super().__init__(): it would start a second reader on
    the same HTTP response."""
    stream.response = inner.response
    stream._cast_to = inner._cast_to
    stream._client = inner._client
    stream._options = inner._options
    stream._decoder = inner._decoder


class GuardedStream(Stream[_T]):
    """The SDK's ``Stream``, ended once: on the final usage, or as the ending policy says when
    the caller stops early (``close()``, leaving a ``with`` block, dropping it) or the stream
    breaks. The usage chunk the guard asked for is not shown to a caller who did not ask for it."""

    def __init__(self, inner: Stream[_T], ending: StreamEnding) -> None:
        _adopt(self, inner)
        self._inner = inner
        self._ending = ending
        # Holds the ending, not this stream, so dropping the stream frees it at once.
        self._guarded = common.iterate(iter(inner), ending)
        self._iterator = self._guarded

    @property
    def admission(self) -> Admission:
        return self._ending.admission

    def close(self) -> None:
        try:
            self._guarded.close()  # type: ignore[attr-defined]  # runs the generator's finally if it started
        finally:
            self._inner.close()
            self._ending.end(Happened.CLOSED)  # a generator never started has no finally to run

    def __del__(self) -> None:
        self._ending.dropped()


class AsyncGuardedStream(AsyncStream[_T]):
    """``GuardedStream`` for ``AsyncStream``: its ending goes through the ledger's async calls."""

    def __init__(self, inner: AsyncStream[_T], ending: StreamEnding) -> None:
        _adopt(self, inner)
        self._inner = inner
        self._ending = ending
        self._guarded = common.aiterate(inner.__aiter__(), ending)
        self._iterator = self._guarded

    @property
    def admission(self) -> Admission:
        return self._ending.admission

    async def close(self) -> None:
        try:
            await self._guarded.aclose()  # type: ignore[attr-defined]
        finally:
            await self._inner.close()
            await self._ending.aend(Happened.CLOSED)

    def __del__(self) -> None:
        self._ending.dropped()
