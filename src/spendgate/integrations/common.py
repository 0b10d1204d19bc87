"""What the openai and anthropic wrappers share: both SDKs are generated from one template
(the same error classes, the same ``Stream`` over httpx), so what a failure means and how a
guarded stream ends are decided here once. The decisions themselves are the lifecycle's
(``spendgate.lifecycle``); this module only reads SDK objects and runs the guard's shells.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType
from typing import Any, Final, TypeVar

from spendgate.guard import Admission, Ended, Guard
from spendgate.lifecycle import Happened, Report, Show, StreamReader
from spendgate.lifecycle.reading import answer_report, field
from spendgate.lifecycle.sse import StreamTracker

log = logging.getLogger("spendgate.integrations")

_T = TypeVar("_T")
#: Tasks that end dropped async streams: kept referenced until they finish.
_PENDING: set[asyncio.Task[Any]] = set()


#: The transport errors of a connection never made, by name: the SDKs ride on httpx or its
#: fork httpx2 (anthropic 2.x), whose classes are distinct but named alike.
_NOT_CONNECTED: Final = frozenset({"ConnectError", "ConnectTimeout"})


def _never_connected(exc: BaseException) -> bool:
    """Whether the SDK's connection error came from a connection that was never made."""
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain is short; bounded all the same
        if seen is None:
            return False
        if any(cls.__name__ in _NOT_CONNECTED for cls in type(seen).__mro__):
            return True
        # The explicit cause only: an older SDK retries inside ``except`` blocks, so the
        # implicit context may be an earlier attempt's error.
        seen = seen.__cause__
    return False


class Attempts:
    """What the SDK's HTTP client did during one guarded call (its retries included): how many
    requests went on the wire and how many got an answer. Counted by event hooks and the
    transport's trace on the client's own httpx (or httpx2) client, so a failure is judged by
    what happened, not by its type."""

    __slots__ = ("answered", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.answered = 0


#: The guarded call in progress on this thread or task (None outside one).
_ATTEMPTS: ContextVar[Attempts | None] = ContextVar("spendgate_attempts", default=None)
_HOOKED = "_spendgate_hooked"


#: The transport's trace event of a request going on the wire (``http11.``/``http2.`` before it):
#: a connection was made and the request is being sent.
_ON_THE_WIRE: Final = "send_request_headers.started"


def _on_request(request: Any) -> None:
    attempts = _ATTEMPTS.get()
    if attempts is None:
        return
    theirs = request.extensions.get("trace")

    def trace(name: str, info: Any) -> None:
        if name.endswith(_ON_THE_WIRE):
            attempts.sent += 1
        if theirs is not None:
            theirs(name, info)

    request.extensions["trace"] = trace


async def _aon_request(request: Any) -> None:
    attempts = _ATTEMPTS.get()
    if attempts is None:
        return
    theirs = request.extensions.get("trace")

    async def trace(name: str, info: Any) -> None:
        if name.endswith(_ON_THE_WIRE):
            attempts.sent += 1
        if theirs is not None:
            await theirs(name, info)

    request.extensions["trace"] = trace


def _on_response(_response: Any) -> None:
    attempts = _ATTEMPTS.get()
    if attempts is not None:
        attempts.answered += 1


async def _aon_response(response: Any) -> None:
    _on_response(response)


def watch_attempts(client: Any) -> bool:
    """Count the requests ``client`` (an SDK client) sends inside guarded calls. Its httpx client
    may be shared with the caller's unguarded client: the hooks count nothing outside a
    guarded call. A client without the usual hooks is judged by its errors' types alone:
    returns whether its attempts are counted."""
    http: Any = getattr(client, "_client", None)
    hooks = getattr(http, "event_hooks", None)
    if getattr(http, _HOOKED, False):
        return True
    if not isinstance(hooks, Mapping):
        return False
    is_async = hasattr(http, "aclose")
    try:
        http.event_hooks = {
            "request": [*hooks.get("request", ()), _aon_request if is_async else _on_request],
            "response": [*hooks.get("response", ()), _aon_response if is_async else _on_response],
        }
        setattr(http, _HOOKED, True)
    except (AttributeError, TypeError):  # an http client of another kind: by types alone
        return False
    return True


@contextmanager
def attempts() -> Iterator[Attempts]:
    """Count the requests of the guarded call made inside this block."""
    counted = Attempts()
    token = _ATTEMPTS.set(counted)
    try:
        yield counted
    finally:
        _ATTEMPTS.reset(token)


def failure_report(
    exc: BaseException, sdk: ModuleType, endpoint: Any, counted: Attempts | None = None
) -> Report:
    """What an exception from the SDK call says happened; ``counted``: what its HTTP client did
    (None when the client could not be watched)."""
    # Some errors come after a whole, billed answer: openai's LengthFinishReasonError and
    # ContentFilterFinishReasonError carry it (``.completion``), a body that failed the
    # SDK's validation carries its usage.
    completion = getattr(exc, "completion", None)
    if field(completion, "usage") is not None:
        return answer_report(endpoint, completion)
    body = getattr(exc, "body", None)
    if isinstance(exc, sdk.APIResponseValidationError) and isinstance(body, Mapping) and body.get("usage"):
        return answer_report(endpoint, body)
    name = type(exc).__name__
    if counted is not None and counted.sent:
        if counted.answered < counted.sent:
            # An attempt (a retry's too) went out and got no answer: it may have been billed.
            return Report(Happened.LOST, detail=f"{name} after {counted.sent} attempt(s)")
        if isinstance(exc, sdk.APIStatusError):
            return Report(Happened.REFUSED, detail=name)  # every attempt was answered, refused
        return Report(Happened.LOST, detail=name)  # answered, then the SDK failed: maybe billed
    if counted is not None:
        return Report(Happened.NOT_SENT, detail=name)  # no request left the client
    # Not watched: judged by the error's type.
    if isinstance(exc, sdk.APIStatusError):
        return Report(Happened.REFUSED, detail=name)
    if isinstance(exc, sdk.APIConnectionError):  # timeouts included
        return Report(Happened.NOT_SENT if _never_connected(exc) else Happened.LOST, detail=name)
    if isinstance(exc, TypeError):
        return Report(Happened.NOT_SENT, detail=name)  # the SDK's own argument checks, before sending
    # An answer that could not be read (the SDK's own, or its structured-output parsing, which
    # fails after a billed answer), or a cancellation/interrupt while waiting: never under-count.
    return Report(Happened.LOST, detail=name)


def end_quietly(guard: Guard, admission: Admission, report: Report) -> Ended | None:
    """End the reservation; a ledger failure must not replace the caller's answer or error
    (the lease ends the reservation then)."""
    try:
        return guard.end(admission, report)
    except Exception:
        log.exception("spendgate could not end request %s", admission.request_id)
        return None


async def aend_quietly(guard: Guard, admission: Admission, report: Report) -> Ended | None:
    try:
        return await guard.aend(admission, report)
    except Exception:
        log.exception("spendgate could not end request %s", admission.request_id)
        return None


def _how(kind: type[BaseException] | None) -> Happened:
    if kind is None:
        return Happened.COMPLETE
    return Happened.CLOSED if issubclass(kind, GeneratorExit) else Happened.CUT


class StreamEnding:
    """One guarded stream: what it has said so far (the lifecycle's reader) and its one ending."""

    __slots__ = ("admission", "guard", "reader")

    def __init__(self, guard: Guard, admission: Admission) -> None:
        self.guard = guard
        self.admission = admission
        self.reader = StreamReader(admission.endpoint, admission.added_stream_usage)

    def shown(self, item: Any) -> bool:
        """Read ``item``; False when the caller must not see it (the usage chunk we asked for)."""
        show = self.reader.see(item)
        if show is Show.STRIP:
            item.usage = None  # the caller did not ask for usage
        return show is not Show.DROP

    def end(self, happened: Happened) -> None:
        if self.admission.ended is None:
            end_quietly(self.guard, self.admission, self.reader.report(happened))

    async def aend(self, happened: Happened) -> None:
        if self.admission.ended is None:
            await aend_quietly(self.guard, self.admission, self.reader.report(happened))

    # As a context manager around the iteration, the way out says how the stream ended: its end
    # (complete), GeneratorExit (closed: close(), a with block left, garbage), any other
    # exception (cut, a cancellation included).
    def __enter__(self) -> StreamEnding:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.end(_how(kind))

    async def __aenter__(self) -> StreamEnding:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        await self.aend(_how(kind))

    def dropped(self) -> None:
        """The stream was garbage-collected unended. On a thread running an event loop the
        ending is scheduled there (never a blocking ledger call on a loop); elsewhere it runs now.
        Never raises: this runs in a finalizer."""
        if self.admission.ended is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        try:
            if loop is None:
                self.end(Happened.CLOSED)
            else:
                task = loop.create_task(self.aend(Happened.CLOSED))
                _PENDING.add(task)
                task.add_done_callback(_PENDING.discard)
        except Exception:
            log.exception("spendgate could not end a dropped stream")


def iterate(items: Iterator[_T], ending: StreamEnding) -> Iterator[_T]:
    """``items`` as the caller sees them; the stream's reservation ends once, when it ends."""
    with ending:
        for item in items:
            if ending.shown(item):
                yield item


async def aiterate(items: AsyncIterator[_T], ending: StreamEnding) -> AsyncIterator[_T]:
    async with ending:
        async for item in items:
            if ending.shown(item):
                yield item


# -- raw streamed responses ------------------------------------------------------------------
# ``with_streaming_response.create(stream=True)`` hands the caller the HTTP response itself: it
# may parse() it into the SDK's stream, or read it raw (iter_lines, iter_bytes, read). Every
# way goes through the httpx response's iter_bytes / aiter_bytes, so the guard reads the SSE
# there, once, whatever the caller does: the lifecycle's tracker sees each event (and hides the
# usage chunk the guard asked for), and the stream's end, close or cut ends the reservation.


def guard_raw_stream(response: Any, ending: StreamEnding) -> None:
    """Read the SSE of ``response`` (an ``httpx.Response`` not yet read) as it is handed out."""
    tracker = StreamTracker(ending.admission.endpoint, ending.admission.added_stream_usage)
    tracker.reader = ending.reader  # one reader: what the stream said is what ends it
    inner_iter, inner_aiter = response.iter_bytes, response.aiter_bytes
    inner_close, inner_aclose = response.close, response.aclose
    # Once read, the iteration's way out ends the stream (httpx closes the response itself when
    # its bytes are exhausted, before the iteration returns); close() ends one never read.
    read = [False]

    def iter_bytes(chunk_size: int | None = None) -> Iterator[bytes]:
        read[0] = True
        with ending:  # its way out (exhausted, closed, broken) says how the stream ended
            for chunk in inner_iter(chunk_size):
                if out := tracker.feed(chunk):
                    yield out
            if rest := tracker.flush():
                yield rest

    async def aiter_bytes(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        read[0] = True
        async with ending:
            async for chunk in inner_aiter(chunk_size):
                if out := tracker.feed(chunk):
                    yield out
            if rest := tracker.flush():
                yield rest

    def close() -> None:
        try:
            inner_close()
        finally:
            if not read[0]:
                ending.end(Happened.CLOSED)  # never read: closed (a no-op once ended)

    async def aclose() -> None:
        try:
            await inner_aclose()
        finally:
            if not read[0]:
                await ending.aend(Happened.CLOSED)

    response.iter_bytes, response.aiter_bytes = iter_bytes, aiter_bytes
    response.close, response.aclose = close, aclose
    weakref.finalize(response, ending.dropped)  # dropped unread and unclosed: ended then
