"""The README's main job: `spendgate serve --demo` on SQLite, and the demo traffic that ends in a 429."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spendgate.demo import run_gateway_demo


def test_demo_gateway_enforces_the_demo_keys_budget(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendgate.cli", "serve", "--demo", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.startswith("spendgate gateway ready"):
                break
        url = next(line.split("=", 1)[1] for line in lines if line.startswith("OPENAI_BASE_URL="))
        key = next(line.rsplit(": ", 1)[1] for line in lines if line.startswith("demo key"))
        out: list[str] = []
        admitted = run_gateway_demo(url, key, echo=out.append)
        # each request costs $0.03002 (12 prompt tokens at $2.50/1M + 3000 output at $10/1M); the
        # 33rd would need up to $0.040075 with $0.96064 spent of $1
        assert admitted == 32
        assert "HTTP 429" in out[-2]
        assert '"code": "budget_exceeded"' in out[-1]
        assert (tmp_path / "spendgate-demo.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
