"""How long each dashboard page takes to load in a real browser, on a ledger of 100,000 logged
requests, against the same pages on an empty ledger measured in the same run (the baseline).

    .venv/bin/python -m bench.ui                  # 100,000 requests, 5 loads per page
    .venv/bin/python -m bench.ui --requests 20000 --loads 3

A real gateway process (`python -m spendgate.gateway.server`) on a SQLite file filled through
`RequestArchive.archive` (bench/timeseries.py's rows: 30 days up to now, 50 users, 5 teams,
4 models), with five budgets (a global one, two teams', a per-user wildcard, a soft one), so the
overview reads their forecasts. Debian's Chromium, driven by Playwright, logs in and then opens
each page with a full navigation: a load is from navigation start until the page says it has
its data (`#main[data-ready=<page>]`, set once every API call of the page answered and it
rendered). Goal: every page under 300 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import timeseries  # the same 100,000 rows as bench/timeseries.py
from spendgate.clock import ManualClock
from spendgate.ledger import open_ledger

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
TOKEN = "bench-ui-admin-token-0123456789abcdef"
PAGES = ("overview", "budgets", "usage", "keys", "requests", "alerts")
GOAL_MS = 300.0
READY = "spendgate gateway ready on "
BUDGETS = [
    {"id": "global", "limit": "5000", "window": "month"},
    {"id": "team-0", "selector": {"team": "team-0"}, "limit": "800", "window": "month"},
    {"id": "team-1", "selector": {"team": "team-1"}, "limit": "800", "window": "month"},
    {"id": "per-user", "selector": {"user": "*"}, "limit": "50", "window": "month"},
    {
        "id": "watch",
        "selector": {"project": "project-0"},
        "limit": "300",
        "window": "month",
        "on_exceed": "alert",
    },
]


def start_gateway(db: Path, folder: Path) -> tuple[subprocess.Popen[str], str]:
    config = {
        "ledger": f"sqlite:///{db}",
        "upstreams": {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "routes": [{"model": "gpt-*", "upstream": "fake"}],
        "budgets": BUDGETS,
        "alerts": {"enabled": False},
    }
    path = folder / "gateway.yaml"
    path.write_text(json.dumps(config))
    env = {**os.environ, "SPENDGATE_ADMIN_TOKEN": TOKEN}
    argv = [sys.executable, "-m", "spendgate.gateway.server", "--config", str(path), "--port", "0",
            "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None

    def drain() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line.startswith(READY):
            return proc, line[len(READY) :].strip()
    proc.kill()
    raise RuntimeError("the gateway did not start within 60 s")


def measure(url: str, loads: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{url}/ui/login")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#main[data-ready]", timeout=60_000)
        for name in PAGES:
            samples: list[float] = []
            for _ in range(loads + 1):  # the first: cold (no kept forecasts, no browser cache)
                page.goto("about:blank")
                start = time.perf_counter()
                page.goto(f"{url}/ui/#/{name}")
                page.wait_for_selector(f"#main[data-ready='{name}']", timeout=60_000)
                samples.append((time.perf_counter() - start) * 1000)
            out[name] = samples  # [0]: cold (the server's caches empty), then warm loads
        browser.close()
    return out


def run(requests: int, loads: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = folder / "ledger.db"
        timeseries.END = datetime.now(UTC)  # the rows end now: today's and this month's pages have them
        ledger = open_ledger(f"sqlite:///{db}", clock=ManualClock(timeseries.END))
        began = time.perf_counter()
        if requests:
            timeseries.fill(ledger, requests)
        ledger.close()
        if requests:
            print(f"filled {requests:,} logged requests in {time.perf_counter() - began:.1f} s")
        proc, url = start_gateway(db, folder)
        try:
            return measure(url, loads)
        finally:
            proc.terminate()
            proc.wait(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"no browser at {CHROMIUM}: run scripts/setup.sh (apt-get install chromium)")
        return 2
    empty = run(0, args.loads)
    full = run(args.requests, args.loads)
    print(f"page load, {args.loads} loads each (ms), goal < {GOAL_MS:.0f} ms")
    print(f"{'page':<10} {'empty: median':>14} {f'{args.requests:,}: median':>16} {'max':>8}  ratio  cold")
    worst = 0.0
    for name in PAGES:
        warm = full[name][1:]
        base, got = statistics.median(empty[name][1:]), statistics.median(warm)
        worst = max(worst, *warm)
        print(
            f"{name:<10} {base:>14.0f} {got:>16.0f} {max(warm):>8.0f}  {got / base:4.1f}x {full[name][0]:5.0f}"
        )
    verdict = "meets" if worst < GOAL_MS else "MISSES"
    print(f"slowest warm load: {worst:.0f} ms ({verdict} the goal); cold: each page's first load")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
