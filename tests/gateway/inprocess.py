"""The real gateway app in this process: httpx's ASGI transport in front, the fake upstream's own
request logic (``FakeApp.dispatch``) behind, no sockets and no child processes.

What stays real: the config parser, the ASGI app ``spendgate serve`` runs (``create_app`` over
``GatewayState.build``), the guard, the key store and the SQLite ledger file. What is replaced: the
aiohttp upstream client, by ``InProcessUpstream`` (same interface, ``open`` -> a response with
status, headers and a body read whole or streamed), and the HTTP server, by ``httpx.ASGITransport``
(which hands the app the whole response before the client sees any of it: streaming behaviour and
signals belong to the process tests).

    async with InProcessGateway.start(tmp_path) as gw:
        r = await gw.http("alice").post("/chat/completions", json=body)
        client = gw.openai("alice")  # openai.AsyncOpenAI over the same transport
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import anthropic
import httpx
import httpx2
import openai
from multidict import CIMultiDict, CIMultiDictProxy

from spendgate.gateway.app import GatewayApp, GatewayState, create_app
from spendgate.gateway.config import parse_settings
from spendgate.gateway.keys import KeyStore, open_keystore
from spendgate.gateway.settings import Upstream, VirtualKey
from spendgate.gateway.upstream_client import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from spendgate.ledger import Ledger
from spendgate.testing.upstream import FakeApp, Plan, Request

#: The fake's root URL in configs; other upstream URLs go to the real client (``config`` uses a
#: closed port: the real client's own connection error, whatever it reports about it).
FAKE_ROOT = "http://fake-upstream.localhost"
GATEWAY = "http://gateway.localhost"
ADMIN_TOKEN = "test-admin-token-0123456789"

KeySpec = dict[str, dict[str, Any]]

#: The virtual keys of ``start``: ``off`` is disabled.
DEFAULT_KEYS: KeySpec = {
    "alice": {"user": "alice", "team": "research"},
    "mini": {"user": "bob", "models": ["gpt-4o-mini"]},
    "tiny": {"user": "tiny"},
    "off": {"user": "carol"},
}


# -- the upstream ------------------------------------------------------------------------------


class InProcessResponse(UpstreamResponse):
    """A fake ``Plan`` seen as the gateway sees an upstream response.

    Headers are the ones the fake's HTTP transport writes. The body is read whole or event by
    event; a latency directive over ``upstream.timeout`` (before the headers or between events)
    is ``UpstreamTimeoutError``, as aiohttp's ``sock_read`` timeout is; a plan cut after N content
    events ends in ``UpstreamError``, as a connection closed mid-body does. The fake bills
    (``plan.on_sent``) what was delivered, once.
    """

    __slots__ = ("_billed", "_sent", "_timeout", "plan")

    def __init__(self, plan: Plan, timeout: float) -> None:
        self.plan, self._timeout = plan, timeout
        self._sent, self._billed = 0, False

    @property
    def status_code(self) -> int:
        return self.plan.status

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        plan = self.plan
        framing = (
            ("transfer-encoding", "chunked")
            if plan.events is not None
            else ("content-length", str(len(plan.body)))
        )
        pairs = [("content-type", plan.content_type), framing, *plan.headers]
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]

    @property
    def headers(self) -> Mapping[str, str]:
        return CIMultiDictProxy(
            CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers)
        )

    async def pause(self, seconds: float) -> None:
        """The fake's latency directive. One longer than the read timeout fails at once: waiting
        the timeout out would only slow the test (the process tests use aiohttp's real timeout)."""
        if seconds > self._timeout:
            raise UpstreamTimeoutError("SocketTimeoutError")
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _bill(self, cut: bool) -> None:
        if not self._billed and self.plan.on_sent is not None:
            self._billed = True
            self.plan.on_sent(self._sent, cut)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        plan = self.plan
        if plan.events is None:
            self._bill(False)
            yield plan.body
            return
        content_events = 0
        for i, (payload, tokens) in enumerate(plan.events):
            if plan.cut_after is not None and tokens and content_events >= plan.cut_after:
                self._bill(True)
                raise UpstreamError("ClientPayloadError")
            if i:
                await self.pause(plan.chunk_delay_s)
            self._sent += tokens
            content_events += 1 if tokens else 0
            yield payload
        self._bill(False)

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        self._bill(True)  # a no-op after a complete body; else the client left mid-body


class InProcessUpstream:
    """The gateway's upstream client, answered by the fake upstream's logic in this process.

    Requests to ``FAKE_ROOT`` go to ``fake.dispatch``; any other upstream to a real
    ``UpstreamClient`` (a closed port in ``config``: the one socket use, for the real client's
    connection error).
    ``received`` lists what reached the fake (headers as the real client sends them).
    ``hold()`` makes requests wait at the upstream until ``release()``: a test can then act while
    they hold their reservations, and ``wait_for(n)`` returns once n requests have arrived.
    """

    def __init__(self, fake: FakeApp | None = None) -> None:
        self.fake = fake or FakeApp()
        self._real: UpstreamClient | None = None
        self.received: list[Request] = []
        self._open = asyncio.Event()
        self._open.set()
        self._arrived = asyncio.Condition()

    async def open(
        self, upstream: Upstream, path: str, body: bytes, forwarded: Iterable[tuple[str, str]]
    ) -> UpstreamResponse:
        url = urlsplit(UpstreamClient.url(upstream, path))
        if f"{url.scheme}://{url.netloc}" != FAKE_ROOT:
            self._real = self._real or UpstreamClient()
            return await self._real.open(upstream, path, body, forwarded)
        headers = UpstreamClient.headers(upstream, forwarded)  # the real client's, keys included
        request = Request("POST", url.path, headers, body)
        async with self._arrived:
            self.received.append(request)
            self._arrived.notify_all()
        await self._open.wait()
        response = InProcessResponse(self.fake.dispatch(request), upstream.timeout)
        await response.pause(response.plan.delay_s)
        return response

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def wait_for(self, count: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)

    def stats(self) -> dict[str, Any]:
        return self.fake.stats.to_json()

    async def aclose(self) -> None:
        self.release()
        if self._real is not None:
            await self._real.aclose()


# -- the gateway -------------------------------------------------------------------------------


def config(ledger_url: str, **extra: Any) -> dict[str, Any]:
    """``conftest.gateway_config``'s upstreams and routes, on the in-process fake."""
    from .conftest import gateway_config  # here: conftest imports this module

    return gateway_config(FAKE_ROOT, ledger_url, **extra)


class InProcessGateway:
    """One gateway app with its key store, ledger and in-process upstream, on the running loop."""

    def __init__(
        self, app: GatewayApp, upstream: InProcessUpstream, keys: dict[str, tuple[VirtualKey, str]]
    ) -> None:
        self.app = app
        self.upstream = upstream
        self.keys = keys
        self._transport = httpx.ASGITransport(app=app)
        self._clients: list[httpx.AsyncClient | httpx2.AsyncClient] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        tmp: Path,
        keys: KeySpec = DEFAULT_KEYS,
        *,
        admin_token: str | None = ADMIN_TOKEN,
        fake: FakeApp | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Self]:
        """A gateway on ``tmp/ledger.db`` with ``keys`` made (``off`` disabled) and the admin API
        on ``admin_token``; ``overrides`` replace top-level keys of ``config``."""
        settings = parse_settings(
            config(f"sqlite:///{tmp / 'ledger.db'}", **overrides),
            environ={"SPENDGATE_ADMIN_TOKEN": admin_token} if admin_token else {},
        )
        store = open_keystore(settings.ledger)
        made = {name: store.create(name=name, **spec) for name, spec in keys.items()}
        if "off" in made:
            store.disable(made["off"][0].id)
        upstream = InProcessUpstream(fake)
        app = create_app(GatewayState.build(settings, keys=store, client=upstream))
        gateway = cls(app, upstream, made)
        try:
            yield gateway
        finally:
            for client in gateway._clients:
                await client.aclose()
            await app.aclose()
            await upstream.aclose()

    @property
    def state(self) -> GatewayState:
        return self.app.state

    @property
    def ledger(self) -> Ledger:
        """The gateway's own ledger (the same object its requests reserve and settle in)."""
        return self.state.ledger

    @property
    def store(self) -> KeyStore:
        assert isinstance(self.state.keys, KeyStore)
        return self.state.keys

    def secret(self, name: str) -> str:
        return self.keys[name][1]

    def key(self, name: str) -> VirtualKey:
        return self.keys[name][0]

    def _client(self, base: str, headers: Mapping[str, str]) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=self._transport, base_url=GATEWAY + base, headers=dict(headers))
        self._clients.append(client)
        return client

    def _sdk_client(self) -> httpx2.AsyncClient:
        # The SDKs are built on httpx2, with its own (equivalent) ASGI transport.
        client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app))
        self._clients.append(client)
        return client

    def http(self, key: str | None = None, *, base: str = "/v1") -> httpx.AsyncClient:
        """A raw client on ``/v1`` (or ``base``), with the named key's secret as bearer token."""
        return self._client(base, {"authorization": f"Bearer {self.secret(key)}"} if key else {})

    def admin(self, token: str = ADMIN_TOKEN) -> httpx.AsyncClient:
        return self._client("/admin", {"authorization": f"Bearer {token}"})

    def openai(self, key: str | None = None, *, api_key: str | None = None) -> openai.AsyncOpenAI:
        """The real SDK over the ASGI transport, as the named key (or a raw ``api_key``)."""
        return openai.AsyncOpenAI(
            base_url=GATEWAY + "/v1",
            api_key=api_key or self.secret(key or "alice"),
            max_retries=0,
            http_client=self._sdk_client(),
        )

    def anthropic(self, key: str | None = None, *, api_key: str | None = None) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=GATEWAY,
            api_key=api_key or self.secret(key or "alice"),
            max_retries=0,
            http_client=self._sdk_client(),
        )
