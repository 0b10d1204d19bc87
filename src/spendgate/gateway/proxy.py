"""One proxied model call, as a raw ASGI handler (the /v1 hot path skips the framework).

    size limit -> auth -> JSON -> route -> key allowlist -> guard.admit -> upstream -> settle

Every reservation ends exactly once: settled from the response's usage (a
stream from its final usage event, or from the text seen when it is cut or
the client leaves), released when the upstream failed without billing, and
the ``finally`` blocks below end it whatever else happens (cancellation too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from spendgate.budgets import Attributes
from spendgate.errors import BudgetExceededError, ConfigError, UnknownModelPriceError
from spendgate.estimate import Endpoint, EstimateError
from spendgate.gateway.settings import Upstream, UpstreamKind, VirtualKey
from spendgate.gateway.upstream_client import UpstreamError, UpstreamResponse, UpstreamTimeoutError
from spendgate.ledger import LedgerUnavailableError
from spendgate.money import Money
from spendgate.usage import Usage

if TYPE_CHECKING:
    from spendgate.cost import Cost
    from spendgate.gateway.app import GatewayState
    from spendgate.guard import Admission

log = logging.getLogger("spendgate.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    path: str
    endpoint: Endpoint
    kind: UpstreamKind


ENDPOINTS: Final[dict[str, EndpointSpec]] = {
    spec.path: spec
    for spec in (
        EndpointSpec("/v1/chat/completions", "chat", "openai"),
        EndpointSpec("/v1/completions", "completions", "openai"),
        EndpointSpec("/v1/embeddings", "embeddings", "openai"),
        EndpointSpec("/v1/responses", "responses", "openai"),
        EndpointSpec("/v1/messages", "messages", "anthropic"),
    )
}

_JSON: Final = (b"content-type", b"application/json")
#: Upstream response headers worth passing on (rate limits, request ids, Retry-After).
_PASS_PREFIXES: Final = ("x-ratelimit-", "anthropic-", "openai-", "retry-after")
_PASS_EXACT: Final = frozenset({"content-type", "x-request-id", "request-id"})
#: Client headers never forwarded: credentials, hop-by-hop, ours.
_DROP_X: Final = (b"x-api-key", b"x-spendgate-", b"x-forwarded-", b"x-real-ip")
_FORWARD_EXACT: Final = frozenset({b"anthropic-version", b"anthropic-beta", b"openai-beta"})
_ANTHROPIC_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}
_RESPONSE_DONE: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSE_TEXT: Final = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
    }
)
#: Stream events that can carry usage, by SSE event name or by a byte search of their data
#: (JSON escapes quotes inside strings, so generated text cannot match these).
_USAGE_OBJECT: Final = re.compile(rb'"usage"\s*:\s*\{')
_ANTHROPIC_USAGE_EVENTS: Final = frozenset({b"message_start", b"message_delta"})
_ANTHROPIC_USAGE_TYPE: Final = re.compile(rb'"type"\s*:\s*"message_(?:start|delta)"')
_RESPONSE_DONE_NAMES: Final = frozenset(kind.encode() for kind in _RESPONSE_DONE)
_RESPONSE_DONE_TYPE: Final = re.compile(rb'"type"\s*:\s*"response\.(?:completed|incomplete|failed)"')
_ANTHROPIC_USAGE: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
)


class GatewayError(Exception):
    """An answer the gateway gives itself (not the upstream's)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        etype: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        reason: str = "invalid_request",
        headers: list[tuple[bytes, bytes]] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype
        self.code = code
        self.param = param
        self.reason = reason
        self.headers = headers or []
        self.body = body

    def payload(self, anthropic: bool) -> dict[str, Any]:
        if self.body is not None:
            return {"type": "error", **self.body} if anthropic else self.body
        if anthropic:
            etype = _ANTHROPIC_TYPES.get(self.status, "api_error")
            return {"type": "error", "error": {"type": etype, "message": self.message}}
        return {
            "error": {"message": self.message, "type": self.etype, "param": self.param, "code": self.code}
        }


class _ClientGoneError(Exception):
    """The client disconnected before its request was read."""


class _Ctx:
    """What the metrics need to know of a request once it is answered."""

    __slots__ = ("answering", "key", "model", "status")

    def __init__(self) -> None:
        self.status = 500
        self.model = "-"  # only routed names become labels: bounded cardinality
        self.key: str | None = None
        self.answering = False  # the response has started: a timeout can only end it


async def handle(state: GatewayState, spec: EndpointSpec, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    anthropic = spec.kind == "anthropic"
    ctx = _Ctx()
    metrics = state.metrics

    async def answer(message: Message) -> None:
        if message["type"] == "http.response.start":
            ctx.answering = True
        await send(message)

    # The whole request, admission wait and upstream call included. On expiry the task is
    # cancelled where it waits: the ``finally`` blocks of _call and _stream end the reservation.
    deadline = asyncio.timeout(state.settings.request_timeout)
    try:
        async with deadline:
            await _handle(state, spec, scope, receive, answer, ctx)
    except GatewayError as err:
        ctx.status = err.status
        metrics.refusals.labels(err.reason).inc()
        await respond(send, err.status, _dumps(err.payload(anthropic)), [_JSON, *err.headers])
    except _ClientGoneError:
        ctx.status = 499
    except TimeoutError:
        if not deadline.expired():
            raise
        seconds = state.settings.request_timeout
        message = f"The request ran past the gateway's request timeout ({seconds:g} s)"
        if ctx.answering:  # a stream already started (and was settled on what it sent): end it
            log.warning("request timeout in a stream that had started")
            with contextlib.suppress(Exception):  # the client may be gone too
                trailer = _stream_error(anthropic, message, "request_timeout")
                await send({"type": "http.response.body", "body": trailer, "more_body": False})
        else:
            timed_out = GatewayError(
                504, message + ".", etype="server_error", code="request_timeout", reason="request_timeout"
            )
            ctx.status = timed_out.status
            metrics.refusals.labels(timed_out.reason).inc()
            await respond(send, timed_out.status, _dumps(timed_out.payload(anthropic)), [_JSON])
    finally:
        metrics.answered(spec.endpoint, ctx.model, ctx.status, time.perf_counter() - started)


async def _handle(
    state: GatewayState, spec: EndpointSpec, scope: Scope, receive: Receive, send: Send, ctx: _Ctx
) -> None:
    settings = state.settings
    secret: str | None = None
    content_length: int | None = None
    forwarded: list[tuple[str, str]] = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                secret = value[7:].strip().decode("latin-1") or None
        elif name == b"x-api-key":
            secret = secret or value.strip().decode("latin-1") or None
        elif name == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                raise GatewayError(400, "Content-Length is not a number") from None
        elif (name.startswith(b"x-") and not name.startswith(_DROP_X)) or name in _FORWARD_EXACT:
            forwarded.append((name.decode("latin-1"), value.decode("latin-1")))

    limit = settings.max_body_bytes
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    key = _authenticate(state, secret)
    ctx.key = key.id if key is not None else None
    raw = await _read_body(receive, limit)

    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "You must provide a model parameter ('model' is required).", param="model")

    routed = settings.route(model)
    if routed is None:
        raise GatewayError(
            404,
            f"The model `{model}` does not exist or is not routed by this gateway.",
            code="model_not_found",
            param="model",
            reason="model_not_found",
        )
    upstream, target = routed
    ctx.model = model
    if upstream.kind != spec.kind:
        other = "/v1/messages" if upstream.kind == "anthropic" else "/v1/chat/completions"
        raise GatewayError(
            400,
            f"The model `{model}` is served by an {upstream.kind}-kind upstream; call {other} for it.",
            param="model",
            reason="wrong_endpoint",
        )
    if key is not None and not key.allows(model):
        raise GatewayError(
            403,
            f"This API key may not use the model `{model}`.",
            etype="permission_error",
            code="model_not_allowed",
            param="model",
            reason="model_not_allowed",
        )
    if target != model:
        body["model"] = target

    attrs = key.attributes if key is not None else Attributes()
    user = body.get("user")
    if isinstance(user, str) and user and attrs.customer is None:
        # The OpenAI `user` field names the app's end user: the customer dimension.
        attrs = Attributes(
            key=attrs.key,
            user=attrs.user,
            team=attrs.team,
            project=attrs.project,
            customer=user,
            tags=attrs.tags,
        )
    admission = await _admit(state, spec.endpoint, body, attrs)
    await _call(state, spec, admission, upstream, forwarded, receive, send, ctx)


def _authenticate(state: GatewayState, secret: str | None) -> VirtualKey | None:
    required = state.settings.keys_required
    if secret is None:
        if not required:
            return None
        raise GatewayError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (or 'x-api-key').",
            code="missing_api_key",
            reason="auth",
        )
    try:
        key = state.find_key(secret)
    except Exception:
        log.exception("the key store did not answer")
        raise GatewayError(
            503, "The key store is unavailable.", etype="server_error", reason="keystore"
        ) from None
    if key is None:
        if not required:
            return None  # local demos: any key (SDKs insist on sending one) counts as none
        # Never echo the secret, not even part of it.
        raise GatewayError(401, "Incorrect API key provided.", code="invalid_api_key", reason="auth")
    if not key.usable(datetime.now(UTC)):
        why = "disabled" if key.disabled else "expired"
        raise GatewayError(401, f"This API key is {why}.", code=f"{why}_api_key", reason="auth")
    return key


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"The request body is larger than this gateway accepts ({limit} bytes).",
        code="request_too_large",
        reason="body_too_large",
    )


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                # Checked while reading too: Content-Length may be absent (chunked) or wrong.
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _admit(
    state: GatewayState, endpoint: Endpoint, body: dict[str, Any], attrs: Attributes
) -> Admission:
    try:
        return await state.guard.admit_async(endpoint, body, attributes=attrs)
    except BudgetExceededError as err:
        headers: list[tuple[bytes, bytes]] = []
        if err.retry_after is not None:
            headers.append((b"retry-after", str(max(0, math.ceil(err.retry_after))).encode()))
        raise GatewayError(
            429,
            str(err),
            reason="budget",
            headers=headers,
            body={
                "error": {
                    "type": "budget_exceeded",
                    "code": "budget_exceeded",
                    "message": str(err),
                    "budget": err.to_dict(),
                }
            },
        ) from None
    except UnknownModelPriceError as err:
        raise GatewayError(
            400, str(err), code="model_price_unknown", param="model", reason="unknown_price"
        ) from None
    except (EstimateError, ConfigError) as err:
        raise GatewayError(400, str(err), reason="invalid_request") from None
    except LedgerUnavailableError:
        log.exception("the ledger is unavailable")
        raise GatewayError(
            503, "The budget ledger is unavailable; try again later.", etype="server_error", reason="ledger"
        ) from None


async def _call(
    state: GatewayState,
    spec: EndpointSpec,
    admission: Admission,
    upstream: Upstream,
    forwarded: list[tuple[str, str]],
    receive: Receive,
    send: Send,
    ctx: _Ctx,
) -> None:
    billed = False  # the upstream answered 2xx: from here on, ending means charging
    try:
        payload = json.dumps(admission.request, separators=(",", ":"), ensure_ascii=False).encode()
        sent_at = time.perf_counter()
        try:
            resp = await state.client.open(upstream, spec.path, payload, forwarded)
        except UpstreamTimeoutError:
            await _release(state, admission, "upstream_timeout")
            raise GatewayError(
                504,
                f"The upstream {upstream.name!r} did not answer in time.",
                etype="server_error",
                code="upstream_timeout",
                reason="upstream_timeout",
            ) from None
        except UpstreamError as exc:
            await _release(state, admission, "upstream_unreachable")
            raise GatewayError(
                502,
                f"The upstream {upstream.name!r} could not be reached ({exc}).",
                etype="server_error",
                code="upstream_unreachable",
                reason="upstream_unreachable",
            ) from None
        state.metrics.upstream_answered(upstream.name, time.perf_counter() - sent_at)
        rid = admission.request_id.encode()
        if resp.status_code >= 400:
            # The provider refused (its 429 included): nothing billed; its answer goes back as is.
            try:
                data = await resp.aread()
            except UpstreamError:
                data = b""
            finally:
                await resp.aclose()
            await _release(state, admission, f"upstream_{resp.status_code}")
            ctx.status = resp.status_code
            await respond(send, resp.status_code, data, [*_passed(resp), (b"x-spendgate-request-id", rid)])
            return
        billed = True
        ctx.status = resp.status_code
        if admission.request.get("stream") is True and resp.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            await _stream(state, spec, admission, resp, receive, send, ctx)
            return
        try:
            data = await resp.aread()
        except UpstreamError as exc:
            await _settle_reserved(state, admission, f"the upstream body broke off ({exc})")
            status = 504 if isinstance(exc, UpstreamTimeoutError) else 502
            raise GatewayError(
                status,
                f"The upstream {upstream.name!r} broke off its response.",
                etype="server_error",
                code="upstream_broken",
                reason="upstream_broken",
            ) from None
        finally:
            await resp.aclose()
        cost = await _settle_body(state, admission, data)
        headers = [*_passed(resp), (b"x-spendgate-request-id", rid)]
        if cost is not None:
            headers.append((b"x-spendgate-cost", _usd(cost)))
        remaining = _remaining(state, admission)
        if remaining is not None:
            headers.append((b"x-spendgate-budget-remaining", _usd(remaining)))
        await respond(send, resp.status_code, data, headers)
    finally:
        if admission.ended is None:
            # Cancelled or failed in between: never leave the reservation open, never under-count.
            if billed:
                await _settle_reserved(state, admission, "the request ended before its usage was read")
            else:
                await _release(state, admission, "gateway_aborted")


def _usd(amount: Money) -> bytes:
    return amount.decimal_str().encode()


def _passed(resp: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in resp.raw_headers:
        lname = name.lower().decode("latin-1")
        if lname in _PASS_EXACT or lname.startswith(_PASS_PREFIXES):
            out.append((name.lower(), value))
    return out


def _remaining(state: GatewayState, admission: Admission) -> Money | None:
    """The tightest matched budget's remaining amount, after settlement."""
    outcome = admission.outcome
    if outcome is not None and outcome.status == "settled":
        return outcome.remaining  # read by the settle's own transaction
    tightest: Money | None = None
    ledger = state.guard.ledger
    for line in admission.reservation.lines:
        try:
            available = ledger.usage(line.budget_id, line.instance or None).available
        except Exception:  # a budget removed meanwhile; the header is advisory
            continue
        if tightest is None or available < tightest:
            tightest = available
    return tightest


async def _release(state: GatewayState, admission: Admission, reason: str) -> None:
    try:
        await state.guard.release_async(admission, reason)
    except Exception:
        # The lease ends it; the client sees the upstream's problem, not the ledger's.
        log.exception("could not release request %s", admission.request_id)


async def _settle_reserved(state: GatewayState, admission: Admission, why: str) -> None:
    try:
        await state.guard.settle_reserved_async(admission, why)
    except Exception:
        log.exception("could not settle request %s", admission.request_id)


def _record(state: GatewayState, admission: Admission, cost: Cost) -> None:
    state.metrics.settled(
        admission.model, admission.attributes.key, cost.usage, float(cost.total.to_decimal())
    )


def _usage_of(endpoint: Endpoint, raw: Any) -> Usage:
    if endpoint == "messages":
        return Usage.from_anthropic(raw)
    if endpoint == "responses":
        return Usage.from_openai_responses(raw)
    return Usage.from_openai(raw)


async def _settle_body(state: GatewayState, admission: Admission, data: bytes) -> Money | None:
    """Settle a whole response; returns the amount charged (None if the ledger failed)."""
    try:
        doc = json.loads(data)
        raw_usage = doc.get("usage") if isinstance(doc, dict) else None
        usage = _usage_of(admission.endpoint, raw_usage) if isinstance(raw_usage, dict) else None
    except ValueError:
        usage = None
        doc = None
    try:
        if usage is None:
            # Billed, but no usage to read: charge the worst case reserved (never under-count).
            return await state.guard.settle_reserved_async(
                admission, "the upstream response carries no readable usage"
            )
        tier = doc.get("service_tier") if isinstance(doc, dict) else None
        cost = await state.guard.settle_async(
            admission, usage, service_tier=tier if isinstance(tier, str) else None
        )
    except Exception:
        log.exception("could not settle request %s", admission.request_id)
        return None
    _record(state, admission, cost)
    return cost.total


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# -- streams ---------------------------------------------------------------------------------


class StreamTracker:
    """Reads SSE events as they pass: collects the usage, hides the usage chunk the guard asked
    for, and keeps the other events' data to count the text from if the stream ends without
    usage. Events are forwarded whole, as soon as each one is complete.

    Only the events that can carry usage are parsed as they pass (told apart by their SSE
    event name or a cheap byte search); the text events are parsed only when a stream is cut,
    which is what made a stream cost about twice a plain call to the gateway."""

    __slots__ = ("anthropic_final", "buffer", "endpoint", "hide_usage", "raw", "tier", "usage")

    def __init__(self, endpoint: Endpoint, hide_usage: bool) -> None:
        self.endpoint = endpoint
        self.hide_usage = hide_usage
        self.buffer = b""
        self.raw: list[bytes] = []  # data of the events not parsed yet (text deltas, mostly)
        self.usage: Any = None  # the provider's usage object (dict)
        self.tier: str | None = None
        self.anthropic_final = False

    def feed(self, chunk: bytes) -> bytes:
        """The complete events in ``buffer + chunk`` to forward now; keeps the incomplete rest."""
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        data = self.buffer + chunk if self.buffer else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self.buffer = data
            return b""
        self.buffer = data[end + 2 :]
        complete = data[: end + 2]
        out: list[bytes] = []
        changed = False
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            kept = self._event(event)
            if kept is not event:
                changed = True
            if kept:
                out.append(kept)
        if not changed:
            return complete
        return b"".join(e + b"\n\n" for e in out)

    def flush(self) -> bytes:
        rest, self.buffer = self.buffer, b""
        if rest.strip():
            kept = self._event(rest.rstrip(b"\n"))
            return kept + b"\n\n" if kept else b""
        return rest

    def text(self) -> str:
        """The text the stream carried so far (parsed now, from the events kept)."""
        parts: list[str] = []
        for data in self.raw:
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            if isinstance(obj, dict):
                _event_text(self.endpoint, obj, parts)
        return "".join(parts)

    def _event(self, event: bytes) -> bytes:
        """The event to forward (``event`` itself if unchanged; b"" to drop it)."""
        name: bytes | None = None
        data_lines: list[bytes] = []
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if not data_lines:
            return event
        data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
        if data == b"[DONE]":
            return event
        if not self._may_carry_usage(name, data):
            self.raw.append(data)
            return event
        try:
            obj = json.loads(data)
        except ValueError:
            return event
        if not isinstance(obj, dict):
            return event
        if self.endpoint == "messages":
            self._anthropic(obj)
            return event
        if self.endpoint == "responses":
            kind = obj.get("type") or (name.decode() if name else None)
            if kind in _RESPONSE_DONE:
                response = obj.get("response")
                if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                    self.usage = response["usage"]
                    tier = response.get("service_tier")
                    self.tier = tier if isinstance(tier, str) else None
            else:
                self.raw.append(data)
            return event
        choices = obj.get("choices") or ()
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            self.raw.append(data)
            return event
        if choices:
            self.raw.append(data)  # text in the same chunk as the usage (some servers)
        # The last report wins: some compatible servers send a running total in every chunk.
        self.usage = usage
        tier = obj.get("service_tier")
        if isinstance(tier, str):
            self.tier = tier
        if not self.hide_usage:
            return event
        if not choices:
            return b""  # exactly the event the guard added
        obj["usage"] = None  # the caller did not ask for usage
        return b"data: " + _dumps(obj)

    def _may_carry_usage(self, name: bytes | None, data: bytes) -> bool:
        """False only for events that certainly carry no usage (a false True costs a parse)."""
        if self.endpoint == "messages":
            if name is not None:
                return name in _ANTHROPIC_USAGE_EVENTS
            return _ANTHROPIC_USAGE_TYPE.search(data) is not None
        if self.endpoint == "responses":
            if name is not None:
                return name in _RESPONSE_DONE_NAMES
            return _RESPONSE_DONE_TYPE.search(data) is not None
        return _USAGE_OBJECT.search(data) is not None

    def _anthropic(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "message_start":
            message = obj.get("message")
            self._merge(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "message_delta":
            # Cumulative counts: they replace message_start's (its output_tokens is a placeholder).
            self._merge(obj.get("usage"))
            self.anthropic_final = True

    def _merge(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if self.usage is None:
            self.usage = {}
        for name in _ANTHROPIC_USAGE:
            value = usage.get(name)
            if value is not None:
                self.usage[name] = value

    async def settle(self, state: GatewayState, admission: Admission, status: str) -> Cost | None:
        """End the reservation once: from the final usage, else from the text seen."""
        if admission.ended is not None:
            return None
        guard = state.guard
        try:
            final = self.anthropic_final if self.endpoint == "messages" else self.usage is not None
            usage: Usage | None = None
            if final:
                try:
                    usage = _usage_of(self.endpoint, self.usage)
                except ValueError:
                    log.warning("unreadable usage in request %s", admission.request_id, exc_info=True)
            if usage is not None:
                cost = await guard.settle_async(admission, usage, service_tier=self.tier)
            else:
                known = None
                if self.endpoint == "messages" and self.usage:
                    try:  # message_start told the real prompt and cache tokens
                        known = Usage.from_anthropic(self.usage)
                    except ValueError:
                        known = None
                cost = await guard.settle_partial_async(admission, self.text(), status=status, known=known)
        except Exception:
            log.exception("could not settle stream %s", admission.request_id)
            return None
        _record(state, admission, cost)
        return cost


def _event_text(endpoint: Endpoint, obj: dict[str, Any], parts: list[str]) -> None:
    """The generated text one stream event carries."""
    if endpoint == "messages":
        if obj.get("type") == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                for field in ("text", "thinking", "partial_json"):
                    text = delta.get(field)
                    if isinstance(text, str):
                        parts.append(text)
                        break
        return
    if endpoint == "responses":
        if obj.get("type") in _RESPONSE_TEXT:
            delta = obj.get("delta")
            if isinstance(delta, str):
                parts.append(delta)
        return
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if endpoint == "completions":
            text = choice.get("text")
            if isinstance(text, str):
                parts.append(text)
        else:
            _delta_text(choice.get("delta"), parts)


def _delta_text(delta: Any, parts: list[str]) -> None:
    if not isinstance(delta, dict):
        return
    for name in ("content", "refusal"):
        value = delta.get(name)
        if isinstance(value, str):
            parts.append(value)
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for name in ("name", "arguments"):
                value = function.get(name)
                if isinstance(value, str):
                    parts.append(value)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _stream_error(
    anthropic: bool,
    message: str = "The upstream stream broke off",
    code: str = "upstream_stream_cut",
) -> bytes:
    message += "; the request was charged for what was generated."
    if anthropic:
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + _dumps(body) + b"\n\n"
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + _dumps(body) + b"\n\n"


async def _stream(
    state: GatewayState,
    spec: EndpointSpec,
    admission: Admission,
    resp: UpstreamResponse,
    receive: Receive,
    send: Send,
    ctx: _Ctx,
) -> None:
    tracker = StreamTracker(spec.endpoint, admission.added_stream_usage)
    headers = [
        (b"content-type", resp.headers.get("content-type", "text/event-stream").encode("latin-1")),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),  # a reverse proxy in front must not buffer either
        (b"x-spendgate-request-id", admission.request_id.encode()),
        *(h for h in _passed(resp) if h[0] != b"content-type"),
    ]
    outcome = "cut"

    async def pump() -> None:
        nonlocal outcome
        await send({"type": "http.response.start", "status": resp.status_code, "headers": headers})
        async for chunk in resp.aiter_raw():
            out = tracker.feed(chunk)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
        tail = tracker.flush()
        if tail:
            await send({"type": "http.response.body", "body": tail, "more_body": True})
        outcome = "complete"

    pumping = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((pumping, watching), return_when=asyncio.FIRST_COMPLETED)
        if watching.done():
            outcome = "closed"  # the client left: stop the upstream call, charge what was generated
            ctx.status = 499
    finally:
        for task in (pumping, watching):
            task.cancel()
        try:
            # Settle before any other await: the write is queued before settle's first
            # suspension, so even a second cancellation cannot skip it.
            cost = await tracker.settle(state, admission, "complete" if outcome == "complete" else outcome)
        finally:
            await asyncio.gather(pumping, watching, return_exceptions=True)
            await resp.aclose()
    if outcome == "closed":
        return
    if outcome == "complete":
        # An SSE comment: every SSE client ignores it, a curious one can read the cost.
        trailer = b": x-spendgate-cost " + _usd(cost.total) + b"\n\n" if cost is not None else b""
    else:
        exc = pumping.exception() if pumping.done() and not pumping.cancelled() else None
        log.warning("upstream stream broke off for %s: %r", admission.request_id, exc)
        trailer = _stream_error(spec.kind == "anthropic")
    await send({"type": "http.response.body", "body": trailer, "more_body": False})
