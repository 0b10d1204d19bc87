"""What rate limits cost on the request path: the same request with two budgets, then with two
budgets and three limits, in one run.

    .venv/bin/python -m bench.limits [--cycles 5000] [--repeats 5]

One chat request admitted and settled from an OpenAI-shaped usage, again and again, through
the guard (blocking ``admit`` + ``settle``, and asyncio ``admit_async`` + ``settle_async``) on
the memory ledger and on a SQLite file. The baseline matches two budgets (a per-key daily one
and a global monthly one); the limited case adds three limits the request also matches:
requests per minute per key, tokens per minute per key, and concurrency per key. Limits are
set far above the load, so every request is admitted: the figure is the bookkeeping, not
refusals. The two cases alternate within each repeat and the best of ``--repeats`` is kept
(noise only ever adds); the ratio is limited / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from spendgate import Guard
from spendgate.budgets import Attributes
from spendgate.usage import Usage

BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "How much does this request cost?"}],
    "max_tokens": 16,
}
USAGE = Usage.from_openai({"prompt_tokens": 14, "completion_tokens": 16, "total_tokens": 30})
ATTRS = Attributes(key="k1", model="gpt-4o")
BUDGETS: list[dict[str, Any]] = [
    {"id": "per-key", "selector": {"key": "*"}, "limit": "1000000", "window": "day"},
    {"id": "global", "limit": "1000000000", "window": "month"},
]
LIMITS: list[dict[str, Any]] = [
    {"id": "rpm", "selector": {"key": "*"}, "requests": 10**9, "per": "1m"},
    {"id": "tpm", "selector": {"key": "*"}, "tokens": 10**12, "per": "1m"},
    {"id": "inflight", "selector": {"key": "*"}, "concurrency": 1000},
]


def _guard(ledger: str, limited: bool) -> Guard:
    return Guard(ledger, budgets=BUDGETS, limits=LIMITS if limited else ())


def blocking(guard: Guard, cycles: int) -> float:
    started = time.perf_counter()
    for _ in range(cycles):
        guard.settle(guard.admit("chat", BODY, attributes=ATTRS), USAGE)
    return (time.perf_counter() - started) / cycles * 1e6


def asyncio_path(guard: Guard, cycles: int) -> float:
    async def run() -> float:
        started = time.perf_counter()
        for _ in range(cycles):
            admission = await guard.admit_async("chat", BODY, attributes=ATTRS)
            await guard.settle_async(admission, USAGE)
        return (time.perf_counter() - started) / cycles * 1e6

    return asyncio.run(run())


def measure(backend: str, path: str, cycles: int, repeats: int, tmp: Path) -> tuple[float, float]:
    best = {False: float("inf"), True: float("inf")}
    run = blocking if path == "blocking" else asyncio_path
    for repeat in range(repeats):
        for limited in (False, True):
            url = "memory://" if backend == "memory" else f"sqlite:///{tmp / f'{path}-{limited}-{repeat}.db'}"
            guard = _guard(url, limited)
            try:
                run(guard, min(200, cycles))  # warm: encodings, prices, statements
                best[limited] = min(best[limited], run(guard, cycles))
            finally:
                guard.close()
    return best[False], best[True]


def main() -> None:
    logging.getLogger("spendgate.ledger").setLevel(logging.ERROR)  # "created a new ledger": expected
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'backend':<8} {'path':<9} {'2 budgets us':>13} {'+3 limits us':>13} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("memory", "sqlite"):
            for path in ("blocking", "asyncio"):
                base, limited = measure(backend, path, args.cycles, args.repeats, Path(tmp))
                print(f"{backend:<8} {path:<9} {base:>13.1f} {limited:>13.1f} {limited / base:>6.2f}")


if __name__ == "__main__":
    main()
