"""``spendgate serve``: the gateway under uvicorn (httptools), with SIGHUP reload.

One process by default; ``--workers N`` hands N processes to uvicorn's supervisor
(``spendgate.gateway.workers``).

Shutdown is uvicorn's graceful one: stop accepting, let in-flight requests
finish (and settle), then the app's lifespan shutdown closes the ledger.
SIGHUP re-reads the config: on an error the old settings stay (the error,
naming the key, is logged); on success the new state is swapped in for new
requests while in-flight ones keep theirs.

Prints ``spendgate gateway ready on http://HOST:PORT`` once listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from spendgate.gateway.app import GatewayApp, GatewayState, KeyLookup, NoKeys, create_app
from spendgate.gateway.settings import GatewaySettings, Route, Upstream, exposure_problem
from spendgate.gateway.upstream_client import raise_open_file_limit

if TYPE_CHECKING:
    from spendgate.testing.process import FakeUpstream

log = logging.getLogger("spendgate.gateway")

DEMO_LEDGER = "sqlite:///spendgate-demo.db"
DEMO_LIMIT = "1.00"  # USD per day for the demo key


def _load(path: str) -> GatewaySettings:
    from spendgate.gateway.config import load_settings

    return load_settings(path)


def open_keys(settings: GatewaySettings) -> KeyLookup:
    try:
        from spendgate.ledger import open_keystore  # the ledger backend's key storage, by URL
    except ImportError:
        log.warning("spendgate.gateway.keys is not available: no virtual key will be accepted")
        return NoKeys()
    try:
        store: KeyLookup = open_keystore(settings.ledger)
    except Exception as exc:  # a ledger kind without a key store: say so, answer 401s
        log.error("cannot open the virtual key store: %s", exc)
        return NoKeys()
    return store


def _demo_settings(base: GatewaySettings | None, fake: FakeUpstream) -> GatewaySettings:
    settings = base if base is not None else GatewaySettings(ledger=DEMO_LEDGER, host="127.0.0.1")
    upstreams = {
        "demo-openai": Upstream(name="demo-openai", kind="openai", base_url=fake.base_url, api_key="demo"),
        "demo-anthropic": Upstream(
            name="demo-anthropic", kind="anthropic", base_url=fake.root_url, api_key="demo"
        ),
    }
    routes = (Route(model="claude-*", upstream="demo-anthropic"), Route(model="*", upstream="demo-openai"))
    return dataclasses.replace(settings, upstreams=upstreams, routes=routes)


def _demo_key(state: GatewayState) -> str | None:
    """A key with its own small daily budget; None when the key store cannot make one."""
    create = getattr(state.keys, "create", None)
    if not callable(create):
        return None
    from spendgate.budgets import Budget

    key, secret = create(user="demo", name="demo")
    state.ledger.put_budget(
        Budget.from_config(
            {"id": f"demo-{key.id}", "selector": {"key": key.id}, "limit": DEMO_LIMIT, "window": "day"}
        )
    )
    return str(secret)


async def _run(app: GatewayApp, host: str, port: int, reload_path: str | None, on_ready: Any) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",  # the loop is ours (serve picks it); uvicorn must not set a policy
        workers=1,
        **uvicorn_options(app.state.settings),
    )
    apply_header_timeout(config, app.state.settings)
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    reloading: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        assert reload_path is not None
        try:
            settings = await asyncio.to_thread(_load, reload_path)
            problem = exposure_problem(settings, host)
            if problem is not None:
                raise ValueError(problem)
            old = app.state
            keys = None if settings.ledger == old.settings.ledger else open_keys(settings)
            new = old.successor(settings, keys=keys)
        except Exception as exc:
            # ConfigError's message names the key path (and line); keep serving the old settings.
            log.error("reload of %s failed, keeping the old settings: %s", reload_path, exc)
            print(f"spendgate gateway reload failed: {exc}", file=sys.stderr, flush=True)
            return
        app.swap(new)
        log.warning("reloaded %s", reload_path)
        print("spendgate gateway reloaded", flush=True)

    def on_hup() -> None:
        task = loop.create_task(reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    if reload_path is not None and hasattr(signal, "SIGHUP"):
        loop.add_signal_handler(signal.SIGHUP, on_hup)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        bound = port
        for srv in server.servers:
            for sock in srv.sockets:
                bound = sock.getsockname()[1]
        on_ready(host, bound)

    announcing = loop.create_task(announce())
    try:
        await server.serve()
    finally:
        announcing.cancel()


#: What every gateway process runs with (one process, or each of --workers N).
UVICORN_OPTIONS: dict[str, Any] = {
    "http": "httptools",
    "lifespan": "on",
    "access_log": False,  # spendgate's own request line (spendgate.logs) replaces it
    "log_config": None,  # uvicorn's loggers propagate to the root handler of spendgate.logs.configure
    "proxy_headers": False,  # the client address is not used; its middleware costs every request
    "log_level": "warning",
    "timeout_graceful_shutdown": 30,
    "timeout_keep_alive": 30,
    "backlog": 2048,
}


def uvicorn_options(settings: GatewaySettings) -> dict[str, Any]:
    """UVICORN_OPTIONS with the config's ``listen:`` limits (read at start; a reload keeps them)."""
    return {
        **UVICORN_OPTIONS,
        "http": HeaderTimeoutProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
    }


#: The attribute of uvicorn's Config that HeaderTimeoutProtocol reads.
HEADER_TIMEOUT_ATTR = "spendgate_header_timeout"


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request headers do not arrive
    within ``header_timeout`` (slowloris): uvicorn times out idle keep-alive connections only,
    never one that has not sent a whole request head yet.

    The timer runs from the connection's opening and from each later request's first byte to
    the end of its headers; the timeout is the Config's ``HEADER_TIMEOUT_ATTR`` (set by
    ``apply_header_timeout``; the Config is pickled along to --workers processes).
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout: float = getattr(config, HEADER_TIMEOUT_ATTR, 30.0)
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def apply_header_timeout(config: Any, settings: GatewaySettings) -> None:
    setattr(config, HEADER_TIMEOUT_ATTR, settings.header_timeout)


def loop_factory(loop: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: uvloop when asked or, for ``auto``, when installed.

    uvloop carried a bare uvicorn+aiohttp forwarder from 5.9k to 8.6k req/s on
    the 2-core development machine (bench/bare_proxy.py); None means asyncio's.
    """
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise click.UsageError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(
    settings_path: str | None,
    *,
    demo: bool = False,
    host: str | None = None,
    port: int | None = None,
    loop: str = "auto",
    workers: int | None = None,
    log_level: str = "info",
    log_format: str | None = None,
) -> None:
    """Run the gateway until SIGINT/SIGTERM (``workers`` > 1: that many processes; None: the
    config's ``listen.workers``). Logs go to stderr at ``log_level``, one ``json`` or ``text``
    line each (None: text on a terminal, else JSON), one per request at ``info``; the logging
    set up here is undone on return, what is queued written first."""
    from spendgate import logs

    log_format = logs.format_for(log_format)
    undo = logs.configure(log_level, log_format)
    try:
        _serve(settings_path, demo, host, port, loop, workers, (log_level, log_format))
    finally:
        undo()


def _serve(
    settings_path: str | None,
    demo: bool,
    host: str | None,
    port: int | None,
    loop: str,
    workers: int | None,
    logging_options: tuple[str, str],
) -> None:
    base = _load(settings_path) if settings_path else None
    if base is not None:
        problem = exposure_problem(base, host or base.host)
        if problem is not None:
            raise click.ClickException(f"refusing to start: {problem}")
    raise_open_file_limit(base)  # a held request takes two descriptors; --workers inherit it
    new_loop = loop_factory(loop)
    if workers is None:
        workers = base.workers if base is not None and not demo else 1
    if workers > 1:
        if demo or base is None or settings_path is None:
            raise click.UsageError("--workers needs --config FILE (the demo runs one process)")
        from spendgate.gateway.workers import serve_workers

        def announce(h: str, p: int) -> None:
            print(f"spendgate gateway: {workers} worker processes", flush=True)
            print(f"spendgate gateway ready on http://{h}:{p}", flush=True)

        try:
            serve_workers(
                settings_path,
                host=host or base.host,
                port=base.port if port is None else port,
                workers=workers,
                loop=loop,
                on_ready=announce,
                uvicorn_options=uvicorn_options(base),
                header_timeout=base.header_timeout,
                logging_options=logging_options,
            )
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
        return
    fake: FakeUpstream | None = None
    try:
        if demo:
            from spendgate.testing.process import FakeUpstream

            fake = FakeUpstream.start()
            settings = _demo_settings(base, fake)
        elif base is None:
            raise click.UsageError("give --config FILE (or --demo)")
        else:
            settings = base
        keys = open_keys(settings)
        if demo and isinstance(keys, NoKeys):
            settings = dataclasses.replace(settings, keys_required=False)
        state = GatewayState.build(settings, keys=keys)
        secret = _demo_key(state) if demo else None
        app = create_app(state)
        bind_host = host or settings.host
        bind_port = settings.port if port is None else port

        def ready(h: str, p: int) -> None:
            if demo:
                print(f"demo upstream: {fake.root_url if fake else '?'}", flush=True)
                print(f"OPENAI_BASE_URL=http://{h}:{p}/v1", flush=True)
                if secret is not None:
                    print(f"demo key (shown once, budget {DEMO_LIMIT} USD/day): {secret}", flush=True)
                else:
                    print("no key store: requests need no key in this demo", flush=True)
            print(f"spendgate gateway ready on http://{h}:{p}", flush=True)

        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
        # handler in place before it: make that a normal exit, so the demo upstream is stopped
        # below and the exit status says the stop was clean.
        previous = signal.signal(signal.SIGTERM, _exit_cleanly)
        try:
            with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=new_loop) as runner:
                runner.run(_run(app, bind_host, bind_port, settings_path, ready))
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        if fake is not None:
            fake.stop()


if __name__ == "__main__":
    from spendgate.cli import serve_cmd

    serve_cmd()
