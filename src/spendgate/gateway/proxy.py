"""One proxied model call, as a raw ASGI handler (the /v1 hot path skips the framework).

    size limit -> auth -> JSON -> route -> key allowlist -> guard.admit -> upstream -> settle

Every reservation ends exactly once, as the lifecycle's ending policy decides
(``spendgate.lifecycle.ending``; the table in docs/design.md): this module only
says what happened (not sent, refused, lost, complete, cut, closed) and hands
over what the answer said, read by ``spendgate.lifecycle.reading``. The
``finally`` blocks below end it whatever else happens (cancellation too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from spendgate import logs
from spendgate.budgets import Attributes
from spendgate.errors import (
    BudgetExceededError,
    ConfigError,
    CostCapExceededError,
    PromptTooLargeError,
    RateLimitExceededError,
    UnknownModelPriceError,
)
from spendgate.estimate import ContextLengthExceededError, Endpoint, EstimateError
from spendgate.gateway.settings import Upstream, UpstreamKind, VirtualKey
from spendgate.gateway.upstream_client import UpstreamError, UpstreamResponse, UpstreamTimeoutError
from spendgate.ledger import LedgerUnavailableError, SettleOutcome
from spendgate.lifecycle import Action, Happened, Report
from spendgate.lifecycle.reading import answer_report
from spendgate.lifecycle.sse import StreamTracker
from spendgate.logs import finish_line, held_line
from spendgate.money import Money, MoneyError
from spendgate.pricing.regions import NOWHERE, Where, where_of

if TYPE_CHECKING:
    from spendgate.gateway.app import GatewayState
    from spendgate.guard import Admission, Ended

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
#: The only client headers forwarded (docs/gateway.md): the provider options clients send.
#: Anything else stays here: credentials (``x-goog-api-key``, ``api-key``), hop-by-hop
#: headers, the client's addresses. ``x-fake-*`` are spendgate's fake upstream's directives
#: (``--demo``, tests): no provider reads them.
_FORWARD_EXACT: Final = frozenset(
    {
        b"anthropic-version",
        b"anthropic-beta",
        b"openai-beta",
        b"openai-organization",
        b"openai-project",
        b"idempotency-key",
    }
)
_FORWARD_PREFIXES: Final = (b"x-stainless-", b"x-fake-")
#: The client's cap on what this one request may cost, in USD (read here, never forwarded).
MAX_COST_HEADER: Final = "x-spendgate-max-cost"
_MAX_COST: Final = MAX_COST_HEADER.encode()
#: Where each kind of rate limit shows in OpenAI's headers (``x-ratelimit-limit-<name>``) and
#: Anthropic's (``anthropic-ratelimit-<name>-limit``); ``usd`` has neither (the body says it).
_OPENAI_LIMIT_HEADER: Final = {
    "requests": "requests",
    "concurrency": "requests",
    "input_tokens": "tokens",
    "output_tokens": "tokens",
    "tokens": "tokens",
}
_ANTHROPIC_LIMIT_HEADER: Final = {
    "requests": "requests",
    "concurrency": "requests",
    "input_tokens": "input-tokens",
    "output_tokens": "output-tokens",
    "tokens": "tokens",
}
#: The request field a prompt-size refusal names, per endpoint (OpenAI's ``param``).
_PROMPT_PARAM: Final = {"chat": "messages", "messages": "messages", "completions": "prompt"}
_ANTHROPIC_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


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
    """What the metrics and the request's log line need to know of it once it is answered."""

    __slots__ = ("answering", "error", "key", "line", "model", "status", "upstream_status")

    def __init__(self) -> None:
        self.status = 500
        self.model = "-"  # only routed names become labels: bounded cardinality
        self.key: str | None = None
        self.answering = False  # the response has started: a timeout can only end it
        #: The log line's fields (the guard adds its own); None when INFO is off: nothing to build.
        self.line: dict[str, Any] | None = None
        self.error: str | None = None  # the code of an answer the gateway gave itself
        self.upstream_status: int | None = None


async def handle(state: GatewayState, spec: EndpointSpec, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    anthropic = spec.kind == "anthropic"
    ctx = _Ctx()
    metrics = state.metrics
    held = None
    if logs.line_wanted():
        ctx.line = {}
        held = held_line.set(ctx.line)  # the guard's fields go into this request's one line

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
        ctx.error = err.code or err.reason
        metrics.refused(err.reason)
        await respond(send, err.status, _dumps(err.payload(anthropic)), [_JSON, *err.headers])
    except _ClientGoneError:
        ctx.status = 499
        ctx.error = "client_gone"
    except TimeoutError:
        if not deadline.expired():
            raise
        ctx.error = "request_timeout"
        seconds = state.settings.request_timeout
        message = f"The request ran past the gateway's request timeout ({seconds:g} s)"
        if ctx.answering:  # a stream already started (and its reservation was ended): close it
            log.warning("request timeout in a stream that had started")
            with contextlib.suppress(Exception):  # the client may be gone too
                trailer = _stream_error(anthropic, message, "request_timeout")
                await send({"type": "http.response.body", "body": trailer, "more_body": False})
        else:
            timed_out = GatewayError(
                504, message + ".", etype="server_error", code="request_timeout", reason="request_timeout"
            )
            ctx.status = timed_out.status
            metrics.refused(timed_out.reason)
            await respond(send, timed_out.status, _dumps(timed_out.payload(anthropic)), [_JSON])
    except Exception:
        # A bug, not the client's input: logged, and answered in the provider's shape if the
        # answer has not started (the ``finally`` blocks of _call and _stream ended the request).
        log.exception("request failed")
        ctx.error = "error"
        if ctx.answering:
            raise
        ctx.status = 500
        failed = GatewayError(
            500, "The gateway failed on this request.", etype="server_error", reason="error"
        )
        metrics.refused(failed.reason)
        await respond(send, failed.status, _dumps(failed.payload(anthropic)), [_JSON])
    finally:
        elapsed = time.perf_counter() - started
        metrics.answered(spec.endpoint, ctx.model, ctx.status, elapsed)
        if ctx.line is not None and held is not None:
            held_line.reset(held)
            _log_request(scope, ctx.status, elapsed, ctx.line, ctx)


async def unmatched(scope: Scope, receive: Receive, send: Send, allowed: str | None = None) -> None:
    """404 for a path no route serves, or 405 (``allowed``: the methods that path takes), in the
    shape its clients read: Anthropic's under /v1/messages, else OpenAI's."""
    started = time.perf_counter()
    method, path = scope["method"], scope["path"]
    if allowed is None:
        err = GatewayError(404, f"Unknown request URL: {method} {path}.", code="not_found")
    else:
        err = GatewayError(
            405,
            f"The method {method} is not allowed for {path}; use {allowed}.",
            code="method_not_allowed",
            headers=[(b"allow", allowed.encode())],
        )
    anthropic = path == "/v1/messages" or path.startswith("/v1/messages/")
    body = b"" if method == "HEAD" else _dumps(err.payload(anthropic))
    await respond(send, err.status, body, [_JSON, *err.headers])
    # A client with a wrong base URL shows up here.
    if logs.line_wanted():
        _log_request(scope, err.status, time.perf_counter() - started, {"error": err.code})


def _log_request(
    scope: Scope, status: int, seconds: float, line: dict[str, Any], ctx: _Ctx | None = None
) -> None:
    """The request's one line (docs/gateway.md, Logging): what the gateway saw, then the guard's
    fields when the request reached it. Never a header, a secret or the body."""
    fields: dict[str, Any] = {
        "request_id": line.get("request_id") or f"sg-{uuid.uuid4().hex}",
        "method": scope["method"],
        "path": _clip(scope["path"]),
        "status": status,
        "latency_ms": round(seconds * 1000, 3),
    }
    if ctx is not None:
        fields["key_id"] = ctx.key
        if ctx.upstream_status is not None:
            fields["upstream_status"] = ctx.upstream_status
        if ctx.error is not None:
            fields["error"] = ctx.error
    fields.update(line)
    charged = fields.get("charged_usd")
    finish_line(
        fields,
        "%s %s %s %s %s%s in %.1f ms (%s)",
        fields["method"],
        fields["path"],
        status,
        fields.get("model", "-"),
        fields.get("decision") or fields.get("error") or "-",
        f" charged {charged} USD" if charged is not None else "",
        fields["latency_ms"],
        fields["request_id"],
        headers=scope["headers"],  # an observer (telemetry) may continue the client's trace
    )


def _clip(text: str, limit: int = 200) -> str:
    """Client-chosen text (a path, a model name) bounded in the log."""
    return text if len(text) <= limit else text[:limit] + "..."


async def _handle(
    state: GatewayState, spec: EndpointSpec, scope: Scope, receive: Receive, send: Send, ctx: _Ctx
) -> None:
    settings = state.settings
    secret: str | None = None
    content_length: int | None = None
    max_cost_raw: bytes | None = None
    forwarded: list[tuple[str, str]] = []
    hop: set[str] = set()  # names `Connection:` lists are for this hop only (RFC 9110 7.6.1)
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
        elif name == b"connection":
            hop.update(t.strip().lower() for t in value.decode("latin-1").split(","))
        elif name == _MAX_COST:  # spendgate's own: never forwarded (not in the allowlist)
            if max_cost_raw is not None and value.strip() != max_cost_raw.strip():
                raise GatewayError(
                    400,
                    f"Send {MAX_COST_HEADER} once (it came twice, with different values).",
                    code="invalid_max_cost",
                    param=MAX_COST_HEADER,
                )
            max_cost_raw = value
        elif name in _FORWARD_EXACT or name.startswith(_FORWARD_PREFIXES):
            forwarded.append((name.decode("latin-1"), value.decode("latin-1")))
    if hop and forwarded:
        forwarded = [(n, v) for n, v in forwarded if n not in hop]

    limit = settings.max_body_bytes
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    key = await _authenticate(state, secret)
    ctx.key = key.id if key is not None else None
    max_cost = _max_cost(max_cost_raw) if max_cost_raw is not None else None
    raw = await _read_body(receive, limit)

    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"We could not parse the JSON body of your request: {exc}") from None
    except RecursionError:
        # json.loads gives up past Python's recursion limit; the estimate refuses less deep ones.
        raise GatewayError(400, "The JSON body of your request is nested too deeply.") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "You must provide a model parameter ('model' is required).", param="model")
    if not model.isascii() and not _is_text(model):
        # Checked before the name reaches routing and metrics labels (the estimate checks the rest).
        raise GatewayError(
            400, "The model name holds a lone UTF-16 surrogate, which is not text.", param="model"
        )
    if ctx.line is not None:
        ctx.line["model"] = _clip(model)  # the guard's priced name replaces it if it is reached

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
    if ctx.line is not None:
        ctx.line["upstream"] = upstream.name
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
    admission = await _admit(state, spec.endpoint, body, attrs, max_cost, where_of(upstream.base_url))
    await _call(state, spec, admission, upstream, forwarded, receive, send, ctx)


async def _authenticate(state: GatewayState, secret: str | None) -> VirtualKey | None:
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
        key = await state.find_key(secret)
    except Exception as exc:
        # One line: in an outage every request that misses the key cache says this.
        log.warning("the key store did not answer, answering 503: %s", exc)
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


def _max_cost(raw: bytes) -> Money:
    """The ``x-spendgate-max-cost`` header: a USD amount like ``0.25`` (0 or more)."""
    text = raw.decode("latin-1").strip()
    problem = None
    if not text:
        problem = "it is empty"
    elif len(text) > 64:
        problem = "it is too long"
    else:
        try:
            cap = Money.parse(text, what=MAX_COST_HEADER)
        except MoneyError as exc:
            problem = str(exc).removeprefix(f"{MAX_COST_HEADER}: ")
        else:
            return cap
    raise GatewayError(
        400,
        f"{MAX_COST_HEADER} is the most this request may cost, in USD (e.g. 0.25); {problem}.",
        code="invalid_max_cost",
        param=MAX_COST_HEADER,
        reason="invalid_request",
    )


def _is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode (JSON escapes can produce lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    state: GatewayState,
    endpoint: Endpoint,
    body: dict[str, Any],
    attrs: Attributes,
    max_cost: Money | None = None,
    where: Where = NOWHERE,
) -> Admission:
    try:
        return await state.guard.admit_async(endpoint, body, attributes=attrs, max_cost=max_cost, where=where)
    except PromptTooLargeError as err:  # before RateLimitExceededError: a subclass of it
        state.metrics.limit_refused(err.limit_id, err.kind)
        param = _PROMPT_PARAM.get(endpoint, "input")
        raise GatewayError(
            400,
            str(err),
            reason="prompt_too_large",
            body={
                "error": {
                    "type": "invalid_request_error",
                    "code": "prompt_too_large",
                    "param": param,
                    "message": str(err),
                    "prompt_tokens": err.requested,
                    "limit": err.to_dict(),
                }
            },
        ) from None
    except RateLimitExceededError as err:
        state.metrics.limit_refused(err.limit_id, err.kind)
        raise GatewayError(
            429,
            str(err),
            reason="rate_limit",
            headers=rate_limit_headers(err, anthropic=endpoint == "messages"),
            body={
                "error": {
                    "type": "rate_limit_exceeded",
                    "code": "rate_limit_exceeded",
                    "message": str(err),
                    "limit": err.to_dict(),
                }
            },
        ) from None
    except CostCapExceededError as err:
        err.named(MAX_COST_HEADER)
        raise GatewayError(
            400,
            str(err),
            reason="cost_cap",
            body={
                "error": {
                    "type": "invalid_request_error",
                    "code": "cost_cap_exceeded",
                    "param": MAX_COST_HEADER,
                    "message": str(err),
                    "cost_cap": err.to_dict(),
                }
            },
        ) from None
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
    except ContextLengthExceededError as err:
        # OpenAI's own code for it, so clients that handle the provider's answer handle this one.
        param = {"chat": "messages", "messages": "messages", "completions": "prompt"}.get(endpoint, "input")
        raise GatewayError(
            400, str(err), code="context_length_exceeded", param=param, reason="invalid_request"
        ) from None
    except (EstimateError, ConfigError) as err:
        raise GatewayError(400, str(err), reason="invalid_request") from None
    except LedgerUnavailableError as exc:
        # One line, no traceback: during an outage every request says this, and the cause is
        # in the message (the ledger names what it could not reach).
        log.warning("the ledger is unavailable, answering 503: %s", exc)
        raise GatewayError(
            503, "The budget ledger is unavailable; try again later.", etype="server_error", reason="ledger"
        ) from None


def rate_limit_headers(err: RateLimitExceededError, *, anthropic: bool = False) -> list[tuple[bytes, bytes]]:
    """A 429's headers: ``Retry-After`` (whole seconds, rounded up, at least 1) and
    ``retry-after-ms`` (the SDKs' precise wait) when waiting can help, else the SDKs'
    ``x-should-retry: false``; OpenAI's ``x-ratelimit-*`` for the limit's kind (``reset`` as
    OpenAI writes durations: ``250ms``, ``1s``, ``6m0s``); on /v1/messages Anthropic's
    ``anthropic-ratelimit-*`` too (``reset``: an RFC 3339 instant)."""
    headers: list[tuple[bytes, bytes]] = []
    wait = err.retry_after
    if wait is not None:
        wait = max(wait, 0.0)
        # At least 1 s: a concurrency limit frees when a request in flight ends (wait 0), and
        # a 429 that says "retry now" invites a busy loop.
        headers.append((b"retry-after", str(max(math.ceil(wait), 1)).encode()))
        if wait > 0:
            headers.append((b"retry-after-ms", str(math.ceil(wait * 1000)).encode()))
    else:
        headers.append((b"x-should-retry", b"false"))  # the SDKs' own: retrying cannot help
    name = _OPENAI_LIMIT_HEADER.get(err.kind)
    if name is not None:
        headers.append((f"x-ratelimit-limit-{name}".encode(), str(err.amount).encode()))
        headers.append((f"x-ratelimit-remaining-{name}".encode(), str(err.remaining).encode()))
        if wait is not None:
            headers.append((f"x-ratelimit-reset-{name}".encode(), go_duration(wait).encode()))
    if anthropic and err.kind in _ANTHROPIC_LIMIT_HEADER:
        name = _ANTHROPIC_LIMIT_HEADER[err.kind]
        headers.append((f"anthropic-ratelimit-{name}-limit".encode(), str(err.amount).encode()))
        headers.append((f"anthropic-ratelimit-{name}-remaining".encode(), str(err.remaining).encode()))
        if wait is not None:
            at = datetime.now(UTC) + timedelta(seconds=math.ceil(wait))
            stamp = at.replace(microsecond=0).isoformat().replace("+00:00", "Z")
            headers.append((f"anthropic-ratelimit-{name}-reset".encode(), stamp.encode()))
    return headers


def go_duration(seconds: float) -> str:
    """A wait as OpenAI's rate-limit headers write it (Go's duration format, to the
    millisecond, rounded up): ``250ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h0m0s``."""
    ms = math.ceil(max(seconds, 0.0) * 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


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
    sent = False  # from the first byte sent on, ending early means the provider may have billed
    state_report: Report | None = None  # the last ending tried, to try again if the ledger failed
    try:
        payload = json.dumps(admission.request, separators=(",", ":"), ensure_ascii=False).encode()
        sent_at = time.perf_counter()
        try:
            sent = True
            resp = await state.client.open(upstream, spec.path, payload, forwarded)
        except UpstreamError as exc:
            timed_out = isinstance(exc, UpstreamTimeoutError)
            state_report = Report(Happened.LOST if exc.sent else Happened.NOT_SENT, detail=repr(exc))
            await _end(state, admission, state_report)
            what = "did not answer in time" if timed_out else f"could not be reached ({exc})"
            raise GatewayError(
                504 if timed_out else 502,
                f"The upstream {upstream.name!r} {what}.",
                etype="server_error",
                code="upstream_timeout" if timed_out else "upstream_unreachable",
                reason="upstream_timeout" if timed_out else "upstream_unreachable",
            ) from None
        state.metrics.upstream_answered(upstream.name, time.perf_counter() - sent_at)
        ctx.upstream_status = resp.status_code
        rid = admission.request_id.encode()
        if resp.status_code >= 400:
            # The provider refused (its 429 included): nothing billed; its answer goes back as is.
            try:
                data = await resp.aread()
            except UpstreamError:
                data = b""
            finally:
                await resp.aclose()
            state_report = Report(Happened.REFUSED, detail=f"upstream_{resp.status_code}")
            await _end(state, admission, state_report)
            ctx.status = resp.status_code
            await respond(send, resp.status_code, data, [*_passed(resp), (b"x-spendgate-request-id", rid)])
            return
        ctx.status = resp.status_code
        if admission.request.get("stream") is True and resp.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            await _stream(state, spec, admission, resp, receive, send, ctx)
            return
        try:
            data = await resp.aread()
        except UpstreamError as exc:
            await _end(
                state, admission, Report(Happened.CUT, detail=f"the upstream body broke off ({exc!r})")
            )
            raise GatewayError(
                504 if isinstance(exc, UpstreamTimeoutError) else 502,
                f"The upstream {upstream.name!r} broke off its response.",
                etype="server_error",
                code="upstream_broken",
                reason="upstream_broken",
            ) from None
        finally:
            await resp.aclose()
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        state_report = answer_report(spec.endpoint, doc if isinstance(doc, dict) else None)
        ended = await _end(state, admission, state_report)
        headers = [*_passed(resp), (b"x-spendgate-request-id", rid)]
        if ended is not None:
            headers.append((b"x-spendgate-cost", _usd(ended.charged)))
            outcome = ended.outcome
            if isinstance(outcome, SettleOutcome) and outcome.remaining is not None:
                # Read by the settle's own transaction: no second ledger read.
                headers.append((b"x-spendgate-budget-remaining", _usd(outcome.remaining)))
        await respond(send, resp.status_code, data, headers)
    finally:
        if admission.ended is None:
            # Cancelled or failed in between: never leave the reservation open, never under-count.
            # A report whose ending failed (the ledger) is tried again as it was; else the
            # request ended in between (cancelled, failed): lost once sent.
            happened = Happened.LOST if sent else Happened.NOT_SENT
            await _end(state, admission, state_report or Report(happened, detail="gateway_aborted"))


def _usd(amount: Money) -> bytes:
    return amount.decimal_str().encode()


def _passed(resp: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in resp.raw_headers:
        lname = name.lower().decode("latin-1")
        if lname in _PASS_EXACT or lname.startswith(_PASS_PREFIXES):
            out.append((name.lower(), value))
    return out


async def _end(state: GatewayState, admission: Admission, report: Report) -> Ended | None:
    """End the reservation as the ending policy decides; None if the ledger failed (the lease
    ends it then: the client sees the upstream's answer, not the ledger's problem)."""
    try:
        ended = await state.guard.aend(admission, report)
    except Exception:
        log.exception("could not end request %s", admission.request_id)
        return None
    if ended.cost is not None and ended.outcome is not None:
        # Tokens only from the provider's usage: a bound charged is money, not tokens seen.
        usage = ended.cost.usage if ended.ending.action is Action.SETTLE else None
        state.metrics.settled(
            admission.model, admission.attributes.key, usage, float(ended.charged.to_decimal())
        )
    return ended


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
    message += "; the request was charged its reported usage, or without it an upper bound of its cost."
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
    outcome = Happened.CUT

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
        outcome = Happened.COMPLETE

    pumping = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((pumping, watching), return_when=asyncio.FIRST_COMPLETED)
        if watching.done():
            outcome = Happened.CLOSED  # the client left: stop the upstream call and end it
            ctx.status = 499
    finally:
        for task in (pumping, watching):
            task.cancel()
        try:
            # Settle before any other await: the write is queued before settle's first
            # suspension, so even a second cancellation cannot skip it.
            ended = await _end(state, admission, tracker.reader.report(outcome))
        finally:
            await asyncio.gather(pumping, watching, return_exceptions=True)
            await resp.aclose()
    if outcome is Happened.CLOSED:
        return
    if outcome is Happened.COMPLETE:
        # An SSE comment: every SSE client ignores it, a curious one can read the cost.
        trailer = b": x-spendgate-cost " + _usd(ended.charged) + b"\n\n" if ended is not None else b""
    else:
        exc = pumping.exception() if pumping.done() and not pumping.cancelled() else None
        log.warning("upstream stream broke off for %s: %r", admission.request_id, exc)
        trailer = _stream_error(spec.kind == "anthropic")
    await send({"type": "http.response.body", "body": trailer, "more_body": False})
