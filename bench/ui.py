"""How long each dashboard page takes to load in a real browser, on a ledger of 100,000 logged
requests, against the same pages on an empty ledger measured in the same run (the baseline).

    .venv/bin/python -m bench.ui                  # 100,000 requests, 5 loads per page
    .venv/bin/python -m bench.ui --requests 20000 --loads 3

A real gateway process (`python -m spendgate.gateway.server`) on a SQLite file filled through
`RequestArchive.archive` (bench/timeseries.py's rows: 30 days up to now, 50 users, 5 teams,
4 models), with five budgets (a global one, two teams', a per-user wildcard, a soft one) and
more without wildcards up to ``--budgets`` (100: one per user, key, team, project, model, ...),
so the overview reads 10 forecasts and the budgets page one per row. Debian's Chromium, driven
by Playwright, logs in (the form's POST, no page shown: the first overview is the gateway's
first) and then opens each page with a full navigation: a load is from navigation start until
the page says it has its data (`#main[data-ready=<page>]`, set once every API call of the page
answered and it rendered); ``budgets+fc`` is the budgets page until every row shows its forecast
(``GET budgets?forecasts=100&max_age=60``, one request for every row). The first load of each page is "cold". Goal:
every page under 300 ms.

    .venv/bin/python -m bench.ui --server         # no browser: the forecasts' server side

``--server`` times, in this process on the same ledger, what the overview and the budgets page
cost the server: the overview's read with no forecast kept, with and without the hourly history
warmed (``spendgate.forecasting.HourlyHistory``), the warm-up itself, and every budget row's
forecast (``forecast_budget``) without and with the history.
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
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench import timeseries  # the same 100,000 rows as bench/timeseries.py
from spendgate.clock import ManualClock
from spendgate.ledger import open_ledger

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
TOKEN = "bench-ui-admin-token-0123456789abcdef"
PAGES = ("overview", "budgets", "usage", "keys", "requests", "alerts")
GOAL_MS = 300.0
#: The budgets page until every row's forecast (one ``GET budgets?forecasts=...`` for all rows) is shown.
BUDGET_FORECASTS = "budgets+fc"
FORECASTS_FILLED = (
    "() => { const cells = [...document.querySelectorAll('#main tr[data-budget] td.wrap')];"
    " return cells.length > 0 && cells.every((td) => td.textContent !== '\u2026'); }"
)
READY = "spendgate gateway ready on "
BUDGETS: list[dict[str, Any]] = [
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


def more_budgets(count: int) -> list[dict[str, Any]]:
    """``count`` budgets without wildcards over the rows' users, keys, teams, projects, models
    and team x model pairs: the budgets page asks a forecast for each (up to 100 rows)."""
    selectors: list[dict[str, str]] = [{"user": f"user-{i:02d}"} for i in range(50)]
    selectors += [{"key": f"vk-{i}"} for i in range(20)]
    selectors += [{"team": f"team-{i}"} for i in range(2, 5)]
    selectors += [{"project": f"project-{i}"} for i in range(1, 3)]
    selectors += [{"model": model} for model in timeseries.MODELS]
    selectors += [{"team": f"team-{t}", "model": m} for t in range(5) for m in timeseries.MODELS]
    return [
        {"id": "b-" + "-".join(sel.values()), "selector": sel, "limit": "100", "window": "month"}
        for sel in selectors[:count]
    ]


def start_gateway(db: Path, folder: Path, budgets: int) -> tuple[subprocess.Popen[str], str]:
    config = {
        "ledger": f"sqlite:///{db}",
        "upstreams": {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "routes": [{"model": "gpt-*", "upstream": "fake"}],
        "budgets": BUDGETS + more_budgets(budgets - len(BUDGETS)),
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
        # The login form's POST without rendering a page (the context keeps the cookie): the
        # first overview below is the first the gateway computes (its forecasts not kept).
        answer = page.request.post(f"{url}/ui/login", form={"token": TOKEN}, headers={"Origin": url})
        if not answer.ok or answer.url.endswith("/ui/login") or "error=" in answer.url:
            raise RuntimeError(f"login failed: {answer.status} {answer.url}")
        for name in PAGES:
            samples: list[float] = []
            filled: list[float] = []
            for _ in range(loads + 1):  # the first: cold (no kept forecasts, no browser cache)
                page.goto("about:blank")
                start = time.perf_counter()
                page.goto(f"{url}/ui/#/{name}")
                page.wait_for_selector(f"#main[data-ready='{name}']", timeout=60_000)
                samples.append((time.perf_counter() - start) * 1000)
                if name == "budgets":  # ready comes before the rows' forecasts: wait for them too
                    page.wait_for_function(FORECASTS_FILLED, timeout=60_000)
                    filled.append((time.perf_counter() - start) * 1000)
                    out["rows"] = [float(page.locator("#main tr[data-budget]").count())]
            out[name] = samples  # [0]: cold (the server's caches empty), then warm loads
            if filled:
                out[BUDGET_FORECASTS] = filled
        browser.close()
    return out


def run(requests: int, loads: int, budgets: int) -> dict[str, list[float]]:
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
        proc, url = start_gateway(db, folder, budgets)
        try:
            return measure(url, loads)
        finally:
            proc.terminate()
            proc.wait(15)


def server_side(requests: int, budgets: int, repeat: int) -> None:
    from spendgate.budgets import Budget
    from spendgate.forecasting import ForecastCache, HourlyHistory, forecast_budget, warm_history
    from spendgate.gateway.admin.context import AdminContext
    from spendgate.gateway.admin.handlers.overview import read_overview
    from spendgate.gateway.keys import open_keystore

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'ledger.db'}"
        timeseries.END = datetime.now(UTC)
        ledger = open_ledger(url, clock=ManualClock(timeseries.END))
        timeseries.fill(ledger, requests)
        for raw in BUDGETS + more_budgets(budgets - len(BUDGETS)):
            ledger.put_budget(Budget.from_config(raw))
        keys = open_keystore(url)

        def ms(call: Callable[[], object]) -> float:
            began = time.perf_counter()
            call()
            return (time.perf_counter() - began) * 1000

        def overview(history: HourlyHistory) -> float:
            ctx = AdminContext(keys, ledger, lambda: TOKEN, forecasts=ForecastCache(history=history))
            return ms(lambda: read_overview(ctx))

        rows = [(u.budget_id, u.instance_key) for u in ledger.list_budgets()]

        def forecasts(history: HourlyHistory | None) -> float:
            return ms(lambda: [forecast_budget(ledger, b, i or None, history=history) for b, i in rows])

        results: dict[str, list[float]] = {}
        for _ in range(repeat):
            history = HourlyHistory()
            took = {
                "overview, cold, no history (as before)": overview(HourlyHistory()),
                f"warm-up: {budgets} rows' history": ms(partial(warm_history, history, ledger)),
                "overview, cold, history warmed": overview(history),
                f"{len(rows)} row forecasts, no history": forecasts(None),
                f"{len(rows)} row forecasts, history": forecasts(history),
            }
            for label, value in took.items():
                results.setdefault(label, []).append(value)
        keys.close()
        ledger.close()
    print(f"server side, {requests:,} logged requests, {budgets} budgets, median of {repeat} (ms)")
    for label, values in results.items():
        print(f"  {label:<42} {statistics.median(values):8.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument(
        "--budgets", type=int, default=100, help="budgets in the config (5 to 104; the budgets page's rows)"
    )
    parser.add_argument("--server", action="store_true", help="no browser: the forecasts' server-side cost")
    args = parser.parse_args()
    if args.server:
        server_side(args.requests, args.budgets, args.loads)
        return 0
    if not Path(CHROMIUM).exists():
        print(f"no browser at {CHROMIUM}: run scripts/setup.sh (apt-get install chromium)")
        return 2
    empty = run(0, args.loads, args.budgets)
    full = run(args.requests, args.loads, args.budgets)
    print(f"page load, {args.loads} loads each (ms), goal < {GOAL_MS:.0f} ms")
    print(
        f"{'page':<10} {'empty: median':>14} {f'{args.requests:,}: median':>16} {'max':>8}  ratio  cold"
        "  (empty)"
    )
    worst = 0.0
    for name in (*PAGES, BUDGET_FORECASTS):
        warm = full[name][1:]
        base, got = statistics.median(empty[name][1:]), statistics.median(warm)
        worst = max(worst, *warm)
        print(
            f"{name:<10} {base:>14.0f} {got:>16.0f} {max(warm):>8.0f}  {got / base:4.1f}x {full[name][0]:5.0f}"
            f"  ({empty[name][0]:.0f})"
        )
    verdict = "meets" if worst < GOAL_MS else "MISSES"
    coldest = max(full[name][0] for name in (*PAGES, BUDGET_FORECASTS))
    print(
        f"slowest warm load: {worst:.0f} ms ({verdict} the goal); slowest cold: {coldest:.0f} ms "
        f"({'meets' if coldest < GOAL_MS else 'MISSES'}); cold: each page's first load "
        f"(the overview first after the gateway started); {BUDGET_FORECASTS}: the budgets page "
        f"until each of its {full.get('rows', [0])[0]:.0f} rows shows its forecast"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
