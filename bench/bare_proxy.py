"""The thinnest Python forwarder built from the gateway's own parts: a reference for bench.gateway.

    .venv/bin/python -m bench.bare_proxy --upstream http://127.0.0.1:PORT/v1 --port 0 [--loop auto]

uvicorn (one worker, ``http="httptools"``) serving a raw ASGI callable; one
shared ``aiohttp.ClientSession`` (``TCPConnector(limit=0)``) opened and closed
by the lifespan. Every POST's body is posted as is to the upstream's
``/chat/completions`` (``--upstream`` is its OpenAI base URL, ending in /v1);
the answer's status, body and content-type go back. No auth, no JSON parsing,
no ledger: what any Python proxy made of these parts reaches on this machine.

``--loop auto`` (the default) picks uvloop when it is importable, else asyncio,
the gateway's rule. Prints ``bare proxy ready on http://127.0.0.1:PORT (loop
NAME)`` once listening, NAME being the loop actually running; exits with
status 0 on SIGTERM or SIGINT, after uvicorn's graceful shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

READY_PREFIX = "bare proxy ready on "
LOOPS = ("auto", "asyncio", "uvloop")
MAX_BODY = 16 * 1024 * 1024  # bytes of a request body
MAX_BODY_MESSAGES = 100_000  # http.request messages of one request body
UPSTREAM_TIMEOUT_S = 60.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BareProxy:
    """A raw ASGI callable: lifespan opens and closes the session, http forwards the body."""

    def __init__(self, upstream_url: str) -> None:
        self.url = upstream_url.rstrip("/") + "/chat/completions"
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] == "lifespan.startup":
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
            )
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        if message["type"] == "lifespan.shutdown":
            if self.session is not None:
                await self.session.close()
                self.session = None
            await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _answer(send, 405, b"POST only\n", b"text/plain")
            return
        body = await _read_body(receive)
        if body is None:
            await _answer(send, 413, b"request body too large or cut short\n", b"text/plain")
            return
        content_type = b"application/json"
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
                break
        assert self.session is not None, "lifespan startup did not run"
        try:
            async with self.session.post(
                self.url, data=body, headers={"Content-Type": content_type.decode("latin-1")}
            ) as resp:
                answer = await resp.read()
                status = resp.status
                answer_type = resp.headers.get("Content-Type", "application/octet-stream")
        except (aiohttp.ClientError, TimeoutError) as exc:
            await _answer(send, 502, f"upstream: {type(exc).__name__}\n".encode(), b"text/plain")
            return
        await _answer(send, status, answer, answer_type.encode("latin-1"))


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None past MAX_BODY or when the client went away."""
    chunks: list[bytes] = []
    size = 0
    for _ in range(MAX_BODY_MESSAGES):
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk: bytes = message.get("body", b"")
        if not chunks and not message.get("more_body", False):
            return chunk if len(chunk) <= MAX_BODY else None
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
    return None


async def _answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """(name, factory) for ``--loop``: auto is uvloop when importable, else asyncio."""
    if choice in {"auto", "uvloop"}:
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def running_loop_name() -> str:
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.split(".")[0] == "uvloop" else "asyncio"


async def _serve(app: BareProxy, host: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",  # the loop is already running: ours, chosen by --loop
        http="httptools",
        interface="asgi3",
        lifespan="on",
        access_log=False,
        log_level="warning",
        workers=1,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=30,
        backlog=2048,
    )
    server = uvicorn.Server(config)

    async def announce() -> None:
        # Bounded: uvicorn starts within seconds or gives up (should_exit).
        for _ in range(60_000):
            if server.started or server.should_exit:
                break
            await asyncio.sleep(0.01)
        if not server.started:
            return
        bound = port
        for srv in server.servers:
            for sock in srv.sockets:
                bound = sock.getsockname()[1]
        print(f"{READY_PREFIX}http://{host}:{bound} (loop {running_loop_name()})", flush=True)

    announcing = asyncio.get_running_loop().create_task(announce())
    try:
        await server.serve()
    finally:
        announcing.cancel()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bare_proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--upstream", required=True, help="the upstream's OpenAI base URL, e.g. .../v1")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--loop", choices=LOOPS, default="auto", help="event loop (auto: uvloop if any)")
    args = parser.parse_args(argv)
    parts = urlsplit(args.upstream)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        parser.error("--upstream must be an http:// URL on this machine (127.0.0.1)")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    try:
        _, factory = loop_factory(args.loop)
    except ImportError:
        parser.error("--loop uvloop: uvloop is not installed")

    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler in place
    # before it: make that a normal exit (status 0) instead of death by signal.
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(BareProxy(args.upstream), "127.0.0.1", args.port))
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
