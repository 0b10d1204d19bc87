"""``spendgate serve --workers N``: N gateway processes behind one listening socket.

uvicorn's supervisor runs them: each worker is a whole gateway (its own ledger
connections, key store and upstream pool, built from the config file when it
starts); they share the SQLite ledger file, so budgets hold across all of
them exactly as across separate gateways. The parent validates the config,
binds the socket, starts the workers and prints the ready line once every
worker serves.

- SIGHUP: the parent reads the config again. A bad one is refused (the error
  names the key) and the workers keep serving; a good one replaces the
  workers one at a time, each replacement serving before its predecessor
  stops, and a stopping worker finishes (and settles) its requests first.
- SIGTERM, SIGINT: every worker stops gracefully, then the parent exits 0.
- Logs: each worker logs as the parent does (level and format in the environment it
  inherits, ``spendgate.logs.configure``), one line per request on the shared stderr.
- The dashboard's sessions are signed with one random secret per run, given to every worker
  in its environment, so a session works on whichever worker answers.
- Metrics: counters and histograms go through prometheus_client's
  multiprocess files in a temporary directory, so a scrape of any worker
  counts every worker's requests.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Callable
from socket import socket
from typing import Any

from uvicorn import Config
from uvicorn.supervisors.multiprocess import Multiprocess

from spendgate import logs
from spendgate.gateway.app import GatewayApp, GatewayState, create_app
from spendgate.gateway.settings import exposure_problem
from spendgate.gateway.ui.session import SECRET_ENV as UI_SECRET_ENV

log = logging.getLogger("spendgate.gateway")

CONFIG_ENV = "SPENDGATE_WORKER_CONFIG"
WORKER_START_TIMEOUT = 60.0  # seconds for a worker to import, open the ledger and listen


def create_worker_app() -> GatewayApp:
    """The app of one worker (uvicorn calls this in the worker: ``factory=True``)."""
    path = os.environ[CONFIG_ENV]
    # A spawned process starts without the parent's logging; it lasts as long as the process
    # (logging's exit hook writes what is queued).
    logs.configure(os.environ.get(logs.LEVEL_ENV, "info"), os.environ.get(logs.FORMAT_ENV) or None)

    def build() -> GatewayState:
        from spendgate.gateway.config import load_settings
        from spendgate.gateway.server import open_keys

        settings = load_settings(path)
        return GatewayState.build(settings, keys=open_keys(settings))

    return create_app(build)  # built at lifespan startup: a bad config fails the worker's start


class _Supervisor(Multiprocess):
    def __init__(
        self, config: Config, sockets: list[socket], settings_path: str, on_ready: Callable[[], None]
    ) -> None:
        super().__init__(config, sockets)
        self.settings_path = settings_path
        self.on_ready = on_ready
        self.served = False

    def init_processes(self) -> None:
        super().init_processes()
        for process in self.processes:
            if not process.wait_until_ready(WORKER_START_TIMEOUT, self.should_exit):
                return  # it died starting: the supervisor's watch sees it and stops
        self.served = True
        self.on_ready()

    def handle_hup(self) -> None:
        from spendgate.gateway.config import load_settings

        try:
            settings = load_settings(self.settings_path)
            problem = exposure_problem(settings, self.config.host)
            if problem is not None:
                raise ValueError(problem)
        except Exception as exc:
            log.error("reload of %s failed, keeping the old workers: %s", self.settings_path, exc)
            print(f"spendgate gateway reload failed: {exc}", file=sys.stderr, flush=True)
            return
        before = [process.pid for process in self.processes]
        super().handle_hup()
        if [process.pid for process in self.processes] != before:
            print("spendgate gateway reloaded", flush=True)


def serve_workers(
    settings_path: str,
    *,
    host: str,
    port: int,
    workers: int,
    loop: str,
    on_ready: Callable[[str, int], None],
    uvicorn_options: dict[str, Any],
    header_timeout: float | None = None,
    logging_options: tuple[str, str] = ("info", "json"),
) -> None:
    """Run ``workers`` gateway processes until SIGTERM/SIGINT. Raises RuntimeError when they
    could not start (the workers' own errors are on stderr). ``logging_options``: the workers'
    log level and format."""
    with tempfile.TemporaryDirectory(prefix="spendgate-metrics-") as metrics_dir:
        # Inherited by the spawned workers, which import prometheus_client only after it is set.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        os.environ[CONFIG_ENV] = os.path.abspath(settings_path)
        os.environ[logs.LEVEL_ENV], os.environ[logs.FORMAT_ENV] = logging_options
        # One dashboard session key for all the workers of this run (docs/ui.md).
        os.environ[UI_SECRET_ENV] = secrets.token_hex(32)
        config = Config(
            "spendgate.gateway.workers:create_worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop=loop,
            **uvicorn_options,
        )
        if header_timeout is not None:
            from spendgate.gateway.server import HEADER_TIMEOUT_ATTR

            setattr(config, HEADER_TIMEOUT_ATTR, header_timeout)  # pickled along to each worker
        sock = config.bind_socket()
        bound = sock.getsockname()[1]
        supervisor = _Supervisor(config, [sock], settings_path, lambda: on_ready(host, bound))
        try:
            supervisor.run()
        finally:
            sock.close()
        if not supervisor.served:
            raise RuntimeError("the gateway's workers did not start; their errors are above")
