"""Latency the guarded client adds over the bare openai client, against the fake upstream.

    .venv/bin/python -m bench.sdk [--requests 2000]

One fake upstream process; three clients measured in the same run and
interleaved request by request (so drift in the machine hits all alike): the
bare ``openai.OpenAI``, the same wrapped with the memory ledger, and with the
SQLite ledger. Goals: at most 150 us added at p50 with memory, 1 ms with SQLite.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

import spendgate
from spendgate.testing.process import FakeUpstream

BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Say something short."}],
    "max_tokens": 16,
}
BUDGETS: list[dict[str, Any]] = [
    {"id": "team", "selector": {"team": "*"}, "limit": "1000000"},
    {"id": "all", "limit": "1000000"},
]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="timed requests per client (after 200 warm-up)"
    )
    args = parser.parse_args()

    with FakeUpstream.start() as upstream, tempfile.TemporaryDirectory() as tmp:
        bare = openai.OpenAI(base_url=upstream.base_url, api_key="bench", max_retries=0)
        clients: dict[str, Any] = {
            "bare openai": bare,
            "wrapped, memory": spendgate.wrap(
                openai.OpenAI(base_url=upstream.base_url, api_key="bench", max_retries=0),
                budgets=BUDGETS,
                ledger="memory://",
            ),
            "wrapped, sqlite": spendgate.wrap(
                openai.OpenAI(base_url=upstream.base_url, api_key="bench", max_retries=0),
                budgets=BUDGETS,
                ledger=f"sqlite:///{Path(tmp) / 'bench.db'}",
            ),
        }
        calls: dict[str, Callable[..., object]] = {
            name: client.chat.completions.create for name, client in clients.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in calls}
        with spendgate.attribute(team="bench"):
            for i in range(200 + args.requests):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call(**BODY)
                    elapsed = time.perf_counter() - start
                    if i >= 200:
                        samples[name].append(elapsed * 1e6)

    base50 = statistics.median(samples["bare openai"])
    base99 = percentile(samples["bare openai"], 0.99)
    goals = {"wrapped, memory": 150.0, "wrapped, sqlite": 1000.0}
    print(f"{args.requests} sequential chat requests per client, interleaved; latency in microseconds")
    print(f"{'client':<18}{'p50':>9}{'p99':>9}{'added p50':>11}{'added p99':>11}{'ratio p50':>11}  goal")
    for name, values in samples.items():
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        if name == "bare openai":
            print(f"{name:<18}{p50:>9.0f}{p99:>9.0f}{'':>11}{'':>11}{'1.00':>11}")
            continue
        added50, added99 = p50 - base50, p99 - base99
        verdict = "met" if added50 <= goals[name] else "NOT met"
        print(
            f"{name:<18}{p50:>9.0f}{p99:>9.0f}{added50:>11.0f}{added99:>11.0f}{p50 / base50:>11.2f}"
            f"  <= {goals[name]:.0f} us: {verdict}"
        )


if __name__ == "__main__":
    main()
