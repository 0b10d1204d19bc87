"""Small helpers shared by the benchmark scripts: timing loops and side venvs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import venv
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENVS = ROOT / ".bench-venv"


def rate(
    func: Callable[[], object], *, seconds: float = 1.0, batch: int = 1000, max_batches: int = 100_000
) -> float:
    """Calls per second of ``func``, best of three timed runs of about ``seconds`` each."""
    best = 0.0
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds
        for _ in range(max_batches):
            for _ in range(batch):
                func()
            calls += batch
            if time.perf_counter() >= deadline:
                break
        best = max(best, calls / (time.perf_counter() - start))
    return best


def side_venv(name: str, packages: list[str]) -> Path:
    """A virtual environment of its own for a competitor, so it never becomes our dependency."""
    path = BENCH_VENVS / name
    python = path / "bin" / "python"
    stamp = path / ".installed"
    if not stamp.exists() or stamp.read_text() != " ".join(packages):
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
            check=True,
            timeout=900,
        )
        stamp.write_text(" ".join(packages))
    return python


def run_json(python: Path, code: str, timeout: float = 600) -> dict[str, Any]:
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=timeout, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def python_version() -> str:
    return sys.version.split()[0]


def rss_kb(pid: int) -> int | None:
    """VmRSS of one process in kB (Linux /proc); None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def open_fds(pid: int) -> int | None:
    """How many descriptors ``pid`` has open (Linux /proc); None when it cannot be read."""
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None


def raise_open_files() -> tuple[int, int]:
    """This process's soft open-file limit up to its hard one; returns (soft, hard) after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft not in (hard, resource.RLIM_INFINITY):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time ``pid`` has used so far (Linux /proc); None once it is gone."""
    import os

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
