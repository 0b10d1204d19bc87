"""The gateway as a real process in front of the fake upstream process (``up``, tests/conftest.py),
the in-process gateway fixture ``gw`` (``inprocess.py``), and helpers to check both."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from spendgate.cost import cost_of
from spendgate.gateway.keys import open_keystore
from spendgate.gateway.settings import VirtualKey
from spendgate.ledger import Ledger, open_ledger
from spendgate.money import Money
from spendgate.pricing.catalog import Catalog
from spendgate.testing import FakeUpstream, prompt_tokens_for
from spendgate.usage import Usage

from .inprocess import InProcessGateway

READY = "spendgate gateway ready on "
SRC = str(Path(__file__).resolve().parents[2] / "src")


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Gateway:
    """A running ``python -m spendgate.gateway.server`` process."""

    def __init__(self, proc: subprocess.Popen[str], url: str, ledger_url: str) -> None:
        self.proc = proc
        self.url = url
        self.base_url = url + "/v1"
        self.ledger_url = ledger_url

    @classmethod
    def start(
        cls, config: dict[str, Any], path: Path, env: dict[str, str] | None = None, args: Sequence[str] = ()
    ) -> Gateway:
        path.write_text(json.dumps(config))  # JSON is YAML
        argv = [sys.executable, "-m", "spendgate.gateway.server", "--config", str(path), "--port", "0", *args]
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, child_env.get("PYTHONPATH", "")) if p)
        child_env.update(env or {})
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=child_env)
        try:
            url = _wait_ready(proc, 20.0)
        except BaseException:
            _stop(proc)
            raise
        return cls(proc, url, config["ledger"])

    def ledger(self) -> Ledger:
        return open_ledger(self.ledger_url)

    def stop(self) -> int:
        return _stop(self.proc)


def _wait_ready(proc: subprocess.Popen[str], timeout: float) -> str:
    """The URL of the ready line. A thread reads the output (and keeps draining it): select()
    on the pipe misses lines already read into the text buffer along with an earlier one."""
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def drain(stream: Any) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed by _stop once the process ended
            for line in stream:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, args=(proc.stdout,), daemon=True).start()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"gateway exited early ({proc.wait(5)}): {seen}")
        seen.append(line)
        if line.startswith(READY):
            return line[len(READY) :].strip()
    raise RuntimeError(f"gateway not ready within {timeout} s: {seen}")


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def base_config(up: FakeUpstream, ledger_url: str, **extra: Any) -> dict[str, Any]:
    """The test gateways' config: every upstream and route, on the fake upstream process."""
    return gateway_config(up.root_url, ledger_url, **extra)


def gateway_config(root_url: str, ledger_url: str, **extra: Any) -> dict[str, Any]:
    """Upstreams and routes on a fake at ``root_url`` (a process, or the in-process one)."""
    config: dict[str, Any] = {
        "ledger": ledger_url,
        "upstreams": {
            "fake": {"kind": "openai", "base_url": root_url + "/v1"},
            "fake-anthropic": {"kind": "anthropic", "base_url": root_url},
            "down": {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{closed_port()}/v1",
                "connect_timeout": 2,
            },
            "slow": {"kind": "openai", "base_url": root_url + "/v1", "timeout": 0.5},
        },
        "routes": [
            {"model": "claude-*", "upstream": "fake-anthropic"},
            {"model": "down-gpt", "upstream": "down", "upstream_model": "gpt-4o"},
            {"model": "slow-gpt", "upstream": "slow", "upstream_model": "gpt-4o"},
            {"model": "mystery-*", "upstream": "fake"},
            {"model": "gpt-*", "upstream": "fake"},
            {"model": "text-embedding-3-small", "upstream": "fake"},
        ],
        "budgets": [{"id": "global", "limit": "100", "window": "day"}],
        "defaults": {"max_body_bytes": 65536},
    }
    config.update(extra)
    return config


@pytest.fixture
def anyio_backend() -> str:
    """The in-process tests (``pytest.mark.anyio``) run on asyncio, as the gateway does here."""
    return "asyncio"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    """A fresh in-process gateway (``inprocess.py``) on its own SQLite ledger file."""
    async with InProcessGateway.start(tmp_path) as gateway:
        yield gateway


class Env:
    """One gateway with its ledger and key store, shared by a test module."""

    def __init__(self, gateway: Gateway, keys: dict[str, tuple[VirtualKey, str]]) -> None:
        self.gateway = gateway
        self.keys = keys

    def secret(self, name: str) -> str:
        return self.keys[name][1]

    def key(self, name: str) -> VirtualKey:
        return self.keys[name][0]


KeySpec = dict[str, dict[str, Any]]

DEFAULT_KEYS: KeySpec = {
    "alice": {"user": "alice", "team": "research"},
    "mini": {"user": "bob", "models": ["gpt-4o-mini"]},
    "tiny": {"user": "tiny"},
    "off": {"user": "carol"},
}


def start_env(
    tmp: Path, up: FakeUpstream, keys: KeySpec = DEFAULT_KEYS, args: Sequence[str] = (), **config: Any
) -> tuple[Gateway, dict[str, tuple[VirtualKey, str]]]:
    ledger_url = f"sqlite:///{tmp / 'ledger.db'}"
    store = open_keystore(ledger_url)
    made = {name: store.create(name=name, **spec) for name, spec in keys.items()}
    if "off" in made:
        store.disable(made["off"][0].id)
    close = getattr(store, "close", None)
    if callable(close):
        close()
    return Gateway.start(base_config(up, ledger_url, **config), tmp / "gateway.yaml", args=args), made


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, up: FakeUpstream) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("gateway")
    budgets = [
        {"id": "global", "limit": "100", "window": "day"},
        {"id": "research", "selector": {"team": "research"}, "limit": "5", "window": "month"},
        {"id": "tiny", "selector": {"user": "tiny"}, "limit": "0.001", "window": "day"},
    ]
    gateway, keys = start_env(tmp, up, budgets=budgets)
    try:
        yield Env(gateway, keys)
    finally:
        gateway.stop()


def billed(path: str, body: dict[str, Any], output: int, model: str | None = None) -> Money:
    """What the fake bills for ``body``, priced apart from the gateway."""
    price = Catalog.default().price(model or body["model"])
    usage = Usage(input_tokens=prompt_tokens_for(path, body), output_tokens=output)
    return cost_of(usage, price).total


def served(client: openai.OpenAI, model: str) -> bool:
    """Whether the gateway routes ``model`` now (a 404 says it does not)."""
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=3
        )
    except openai.NotFoundError:
        return False
    return True


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def usd(amount: Money) -> str:
    return amount.decimal_str()
