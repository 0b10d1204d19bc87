"""The ``openai`` SDK, guarded: every model call is reserved before it is sent and settled after.

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
admitted body, then ``guard.settle()`` from the response's ``usage``. Any
exception from the SDK is re-raised unchanged after ``guard.release()``.
Streams come back as :class:`GuardedStream`/:class:`AsyncGuardedStream`,
subclasses of the SDK's ``Stream``/``AsyncStream``.

Per-call attribution: ``spendgate_attributes={"team": "research"}`` (removed
before the SDK sees the call), on top of ``spendgate.attribute(...)`` blocks
and the request's ``user``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from typing import Any, Final, TypeVar

import openai
from openai import AsyncStream, Stream
from openai._legacy_response import LegacyAPIResponse
from openai._response import APIResponse, AsyncAPIResponse

from spendgate.estimate import Endpoint
from spendgate.guard import Admission, Guard
from spendgate.usage import Usage

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
#: Responses API stream events that carry the final response (and its usage).
_RESPONSE_DONE: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
#: Responses API stream events whose ``delta`` is generated text.
_RESPONSE_TEXT: Final = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
    }
)


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
    for path, endpoint in _GUARDED:
        resource: Any = client
        for name in path:
            resource = getattr(resource, name)
        for method in _METHODS:
            original = getattr(resource, method, None)
            if original is None:
                continue
            if is_async:
                guarded = _async_guarded(original, endpoint, guard, default_model)
            else:
                guarded = _sync_guarded(original, endpoint, guard, default_model)
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

    __slots__ = ("attributes", "body", "extra_keys", "options", "params")

    def __init__(
        self, kwargs: dict[str, Any], original: Callable[..., Any], default_model: str | None
    ) -> None:
        self.attributes = kwargs.pop("spendgate_attributes", None)
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


def _is_lazy_iterable(value: object) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, list | str | bytes | Mapping)


def _sync_guarded(
    original: Callable[..., Any], endpoint: Endpoint, guard: Guard, default_model: str | None
) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError(f"{getattr(original, '__name__', 'create')}() takes keyword arguments only")
        call = _Call(kwargs, original, default_model)
        admission = guard.admit(endpoint, call.body, attributes=call.attributes)
        try:
            result = original(**call.kwargs_for(admission.request))
        except BaseException as exc:
            _end_failed(guard, admission, exc)
            raise
        return _finish(guard, admission, result)

    return guarded


def _async_guarded(
    original: Callable[..., Any], endpoint: Endpoint, guard: Guard, default_model: str | None
) -> Callable[..., Any]:
    @functools.wraps(original)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError(f"{getattr(original, '__name__', 'create')}() takes keyword arguments only")
        call = _Call(kwargs, original, default_model)
        admission = await guard.admit_async(endpoint, call.body, attributes=call.attributes)
        try:
            result = await original(**call.kwargs_for(admission.request))
        except BaseException as exc:  # cancellation too: a cancelled call holds nothing
            _end_failed(guard, admission, exc)
            raise
        return await _finish_async(guard, admission, result)

    return guarded


def _end_failed(guard: Guard, admission: Admission, exc: BaseException) -> None:
    """Release the reservation of a call that raised, unless the provider answered (and billed)."""
    # Some SDK errors come after a whole, billed response: the helpers' LengthFinishReasonError
    # and ContentFilterFinishReasonError (``.completion``), or a body that failed validation.
    completion = getattr(exc, "completion", None)
    if getattr(completion, "usage", None) is not None:
        _settle_response(guard, admission, completion)
        return
    body = getattr(exc, "body", None)
    if (
        isinstance(exc, openai.APIResponseValidationError)
        and isinstance(body, Mapping)
        and body.get("usage") is not None
    ):
        _settle_usage(guard, admission, body["usage"], _tier_of(body.get("service_tier")), str)
        return
    try:
        guard.release(admission, reason=type(exc).__name__)
    except Exception:
        # The provider's error is what the caller must see; the lease ends the reservation.
        log.exception("spendgate could not release request %s", admission.request_id)


def _finish(guard: Guard, admission: Admission, result: Any) -> Any:
    if isinstance(result, Stream):
        return GuardedStream(result, _StreamState(guard, admission))
    if isinstance(result, LegacyAPIResponse | APIResponse):
        # with_raw_response / with_streaming_response: settle from the parsed body, which
        # the response caches, so the caller's own .parse() returns the same object.
        try:
            parsed = result.parse()
        except Exception:
            log.warning("spendgate could not parse the response of %s", admission.request_id, exc_info=True)
            guard.settle_reserved(admission, "the response could not be parsed")
            return result
        if isinstance(parsed, Stream):
            result._parsed_by_type[result._cast_to] = GuardedStream(parsed, _StreamState(guard, admission))
        else:
            _settle_response(guard, admission, parsed)
        return result
    _settle_response(guard, admission, result)
    return result


async def _finish_async(guard: Guard, admission: Admission, result: Any) -> Any:
    if isinstance(result, AsyncStream):
        return AsyncGuardedStream(result, _StreamState(guard, admission))
    if isinstance(result, LegacyAPIResponse | AsyncAPIResponse):
        try:
            parsed = await result.parse() if isinstance(result, AsyncAPIResponse) else result.parse()
        except Exception:
            log.warning("spendgate could not parse the response of %s", admission.request_id, exc_info=True)
            guard.settle_reserved(admission, "the response could not be parsed")
            return result
        if isinstance(parsed, AsyncStream):
            result._parsed_by_type[result._cast_to] = AsyncGuardedStream(
                parsed, _StreamState(guard, admission)
            )
        else:
            _settle_response(guard, admission, parsed)
        return result
    _settle_response(guard, admission, result)
    return result


# -- settling ----------------------------------------------------------------------


def _usage(endpoint: Endpoint, usage: Any) -> Usage:
    if endpoint == "responses":
        return Usage.from_openai_responses(usage)
    return Usage.from_openai(usage)


def _tier(obj: Any) -> str | None:
    return _tier_of(getattr(obj, "service_tier", None))


def _tier_of(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _settle_response(guard: Guard, admission: Admission, response: Any) -> None:
    raw_usage = getattr(response, "usage", None)
    if raw_usage is None:
        log.warning(
            "%s response for %s carries no usage; spendgate charges the prompt bound "
            "and the output it can see (request %s)",
            admission.endpoint,
            admission.model,
            admission.request_id,
        )
        _settle_partial(guard, admission, _visible_text(admission.endpoint, response), "no_usage")
        return
    _settle_usage(
        guard, admission, raw_usage, _tier(response), lambda: _visible_text(admission.endpoint, response)
    )


def _settle_usage(
    guard: Guard, admission: Admission, raw_usage: Any, tier: str | None, text: Callable[[], str]
) -> None:
    try:
        usage = _usage(admission.endpoint, raw_usage)
    except ValueError:
        log.warning("unreadable usage in request %s", admission.request_id, exc_info=True)
        _settle_partial(guard, admission, text(), "bad_usage")
        return
    try:
        guard.settle(admission, usage, service_tier=tier)
    except Exception:
        # The call succeeded and was billed: hand the response over; the lease charges the reservation.
        log.exception("spendgate could not settle request %s", admission.request_id)


def _settle_partial(guard: Guard, admission: Admission, text: str, status: str) -> None:
    try:
        guard.settle_partial(admission, text, status=status)
    except Exception:
        log.exception("spendgate could not settle request %s", admission.request_id)


def _visible_text(endpoint: Endpoint, response: Any) -> str:
    if endpoint == "responses":
        try:
            return str(getattr(response, "output_text", "") or "")
        except Exception:  # a property over output items of unknown shapes
            return ""
    parts: list[str] = []
    for choice in getattr(response, "choices", None) or ():
        if endpoint == "completions":
            parts.append(getattr(choice, "text", None) or "")
            continue
        message = getattr(choice, "message", None)
        _message_text(message, parts)
    return "".join(parts)


def _message_text(message: Any, parts: list[str]) -> None:
    """Generated text of a chat message or delta: content, refusal, tool call names and arguments."""
    if message is None:
        return
    for name in ("content", "refusal"):
        value = getattr(message, name, None)
        if isinstance(value, str):
            parts.append(value)
    for call in getattr(message, "tool_calls", None) or ():
        function = getattr(call, "function", None)
        for name in ("name", "arguments"):
            value = getattr(function, name, None)
            if isinstance(value, str):
                parts.append(value)


# -- streams -----------------------------------------------------------------------


class _StreamState:
    """What a stream has shown so far, and its single settlement."""

    __slots__ = ("admission", "guard", "hide_usage", "parts", "tier", "usage")

    def __init__(self, guard: Guard, admission: Admission) -> None:
        self.guard = guard
        self.admission = admission
        self.hide_usage = admission.added_stream_usage
        self.parts: list[str] = []
        self.usage: Any = None
        self.tier: str | None = None

    def see(self, item: Any) -> bool:
        """Record ``item``; False when the caller must not see it (the usage chunk we asked for)."""
        if self.admission.endpoint == "responses":
            kind = getattr(item, "type", None)
            if kind in _RESPONSE_TEXT:
                delta = getattr(item, "delta", None)
                if isinstance(delta, str):
                    self.parts.append(delta)
            elif kind in _RESPONSE_DONE:
                response = getattr(item, "response", None)
                usage = getattr(response, "usage", None)
                if usage is not None:
                    self.usage, self.tier = usage, _tier(response)
            return True
        choices = getattr(item, "choices", None) or ()
        for choice in choices:
            if self.admission.endpoint == "completions":
                text = getattr(choice, "text", None)
                if isinstance(text, str):
                    self.parts.append(text)
            else:
                _message_text(getattr(choice, "delta", None), self.parts)
        usage = getattr(item, "usage", None)
        if usage is None:
            return True
        # The last report wins: some compatible servers send a running total in every chunk.
        self.usage, self.tier = usage, _tier(item) or self.tier
        if self.hide_usage:
            if not choices:
                return False
            item.usage = None  # the caller did not ask for usage
        return True

    def finish(self, status: str) -> None:
        """Settle once: from the usage reported, else from the text seen so far."""
        if self.admission.ended is not None:
            return
        if self.usage is not None:
            try:
                usage = _usage(self.admission.endpoint, self.usage)
            except ValueError:
                log.warning("unreadable usage in request %s", self.admission.request_id, exc_info=True)
            else:
                try:
                    self.guard.settle(self.admission, usage, service_tier=self.tier)
                except Exception:
                    log.exception("spendgate could not settle request %s", self.admission.request_id)
                return
        if status == "complete":
            log.warning(
                "stream for %s ended without usage; spendgate charges the prompt bound and the "
                "output it saw (request %s)",
                self.admission.model,
                self.admission.request_id,
            )
        _settle_partial(self.guard, self.admission, "".join(self.parts), status)


def _iterate(inner: Stream[_T], state: _StreamState) -> Generator[_T, None, None]:
    # Holds the state, not the GuardedStream, so dropping the stream frees it at once.
    status = "closed"  # a GeneratorExit (close, break out of a with block, garbage)
    try:
        for item in inner:
            if state.see(item):
                yield item
        status = "complete"
    except GeneratorExit:
        raise
    except BaseException:
        status = "cut"
        raise
    finally:
        try:
            if status != "complete":
                inner.close()
        finally:
            state.finish(status)


async def _aiterate(inner: AsyncStream[_T], state: _StreamState) -> AsyncGenerator[_T, None]:
    status = "closed"
    try:
        async for item in inner:
            if state.see(item):
                yield item
        status = "complete"
    except GeneratorExit:
        raise
    except BaseException:
        status = "cut"
        raise
    finally:
        try:
            if status != "complete":
                await inner.close()
        finally:
            state.finish(status)


def _adopt(stream: Stream[Any] | AsyncStream[Any], inner: Stream[Any] | AsyncStream[Any]) -> None:
    """Take over ``inner``'s fields. No super().__init__(): it would start a second reader on
    the same HTTP response."""
    stream.response = inner.response
    stream._cast_to = inner._cast_to
    stream._client = inner._client
    stream._options = inner._options
    stream._decoder = inner._decoder


def _finish_dropped(stream: object) -> None:
    """A stream garbage-collected unsettled: settle it from what was seen (synchronously: the
    ledger calls are; the response is closed by its own finalizer). Never raise from a finalizer."""
    state: _StreamState | None = getattr(stream, "_state", None)
    if state is not None and state.admission.ended is None:
        try:
            state.finish("closed")
        except Exception:
            log.exception("spendgate could not settle a dropped stream")


class GuardedStream(Stream[_T]):
    """The SDK's ``Stream``, settled once: on the final usage, or from what was seen when the
    caller stops early (``close()``, leaving a ``with`` block, dropping it) or the stream breaks.
    The usage chunk the guard asked for is not shown to a caller who did not ask for it."""

    def __init__(self, inner: Stream[_T], state: _StreamState) -> None:
        _adopt(self, inner)
        self._inner = inner
        self._state = state
        self._guarded = _iterate(inner, state)
        self._iterator = self._guarded

    @property
    def admission(self) -> Admission:
        return self._state.admission

    def close(self) -> None:
        try:
            self._guarded.close()  # runs the generator's finally if it started
        finally:
            self._inner.close()
            self._state.finish("closed")  # a generator never started has no finally to run

    def __del__(self) -> None:
        _finish_dropped(self)


class AsyncGuardedStream(AsyncStream[_T]):
    """``GuardedStream`` for ``AsyncStream``."""

    def __init__(self, inner: AsyncStream[_T], state: _StreamState) -> None:
        _adopt(self, inner)
        self._inner = inner
        self._state = state
        self._guarded = _aiterate(inner, state)
        self._iterator = self._guarded

    @property
    def admission(self) -> Admission:
        return self._state.admission

    async def close(self) -> None:
        try:
            await self._guarded.aclose()
        finally:
            await self._inner.close()
            self._state.finish("closed")

    def __del__(self) -> None:
        _finish_dropped(self)
