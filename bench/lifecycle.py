"""The guard's own cost per request, without any network: admit, then end from a response.

    .venv/bin/python -m bench.lifecycle [--cycles 20000] [--repeats 5]

One chat request (a short prompt, max_tokens 16) admitted and settled from an
OpenAI-shaped usage dict, again and again, on the memory ledger and on a SQLite
file, through the blocking path (``admit`` + ``settle``) and the asyncio path
(``admit_async`` + ``settle_async``). The figure is the best of ``--repeats``
runs (the machine's noise only ever adds), in microseconds per cycle. It uses
only calls that every version since the group commit has, so the same file
measures a before and an after in one sitting: run it from each checkout with
``PYTHONPATH=<checkout>/src``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from spendgate import Guard
from spendgate.usage import Usage

BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "How much does this request cost?"}],
    "max_tokens": 16,
}
USAGE = {"prompt_tokens": 14, "completion_tokens": 16, "total_tokens": 30}


def _guard(ledger: str) -> Guard:
    return Guard(ledger, budgets=[{"id": "g", "limit": "1000000", "window": "day"}])


def blocking(guard: Guard, cycles: int) -> float:
    started = time.perf_counter()
    for _ in range(cycles):
        admission = guard.admit("chat", BODY)
        guard.settle(admission, Usage.from_openai(USAGE))
    return (time.perf_counter() - started) / cycles * 1e6


def asyncio_path(guard: Guard, cycles: int) -> float:
    async def run() -> float:
        started = time.perf_counter()
        for _ in range(cycles):
            admission = await guard.admit_async("chat", BODY)
            await guard.settle_async(admission, Usage.from_openai(USAGE))
        return (time.perf_counter() - started) / cycles * 1e6

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ledgers = {"memory": "memory://", "sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}"}
        print(f"us per admit+settle cycle, best of {args.repeats} runs")
        print(f"{'ledger':8} {'blocking':>10} {'asyncio':>10}")
        for name, url in ledgers.items():
            guard = _guard(url)
            cycles = args.cycles if name == "memory" else max(1, args.cycles // 4)
            best_sync = min(blocking(guard, cycles) for _ in range(args.repeats))
            best_async = min(asyncio_path(guard, cycles) for _ in range(args.repeats))
            guard.close()
            print(f"{name:8} {best_sync:10.1f} {best_async:10.1f}")


if __name__ == "__main__":
    main()
