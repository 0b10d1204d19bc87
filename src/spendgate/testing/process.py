"""Run the fake upstream as a subprocess: ``with FakeUpstream.start() as up: ... up.base_url``."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from spendgate.testing.upstream import billed_usage
from spendgate.usage import Usage

_PREFIX = "listening "


class FakeUpstreamError(RuntimeError):
    """The fake upstream process did not start or did not answer."""


class FakeUpstream:
    """A running ``python -m spendgate.testing`` process bound to 127.0.0.1."""

    def __init__(self, proc: subprocess.Popen[str], root_url: str) -> None:
        self.proc = proc
        self.root_url = root_url  # what Anthropic clients take as base_url

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ``http://127.0.0.1:PORT/v1``."""
        return self.root_url + "/v1"

    @property
    def port(self) -> int:
        return int(self.root_url.rsplit(":", 1)[1])

    @classmethod
    def start(
        cls,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        chunk_delay_ms: float = 0.0,
        require_key: str | None = None,
        default_output_tokens: int | None = None,
        chunk_tokens: int | None = None,
        startup_timeout: float = 15.0,
    ) -> FakeUpstream:
        argv = [
            sys.executable,
            "-m",
            "spendgate.testing",
            "--host",
            host,
            "--port",
            str(port),
            "--exit-with-parent",
        ]
        argv += ["--latency-ms", str(latency_ms), "--chunk-delay-ms", str(chunk_delay_ms)]
        if require_key is not None:
            argv += ["--require-key", require_key]
        if default_output_tokens is not None:
            argv += ["--default-output-tokens", str(default_output_tokens)]
        if chunk_tokens is not None:
            argv += ["--chunk-tokens", str(chunk_tokens)]
        env = dict(os.environ)
        # The child must import this same spendgate, installed or not.
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        try:
            line = _read_line(proc, startup_timeout)
        except BaseException:
            _terminate(proc, 5.0)
            raise
        if not line.startswith(_PREFIX):
            _terminate(proc, 5.0)
            raise FakeUpstreamError(f"unexpected first line from the fake upstream: {line!r}")
        return cls(proc, line[len(_PREFIX) :].strip())

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(
            self.root_url + path, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        """``/_fake/stats``: requests per path, errors per status, billed tokens and hosted tool
        uses per model."""
        result: dict[str, Any] = self._call("GET", "/_fake/stats")
        return result

    def billed(self, model: str, since: dict[str, Any] | None = None) -> Usage:
        """What the fake's own tally says it billed ``model`` since the stats snapshot ``since``
        (None: since the last reset): tokens and hosted tool uses, to price with the catalog
        (``billed_usage``)."""
        return billed_usage(self.stats(), model, since)

    def reset(self) -> None:
        self._call("POST", "/_fake/reset")

    def held(self, name: str) -> int:
        """How many requests wait now on ``x-fake-hold: name``."""
        return int(self.stats()["held"].get(name, 0))

    def release(self, name: str) -> None:
        """Let every request held on ``name`` go, now and until ``reset``."""
        self._call("POST", "/_fake/release/" + name)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait (SIGKILL past ``timeout``); returns the exit code."""
        return _terminate(self.proc, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        # Bounded by the deadline; the child prints the whole line at once, with a flush.
        while (remaining := deadline - time.monotonic()) > 0:
            if sel.select(min(remaining, 0.5)):
                line = proc.stdout.readline()
                if line:
                    return line
                raise FakeUpstreamError(f"fake upstream exited early with code {proc.wait(5)}")
            if proc.poll() is not None:
                raise FakeUpstreamError(f"fake upstream exited early with code {proc.returncode}")
    raise FakeUpstreamError(f"fake upstream did not report its URL within {timeout} s")


def _terminate(proc: subprocess.Popen[str], timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode
