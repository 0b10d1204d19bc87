"""Fill a SQLite ledger with a week of guarded calls, for ``spendgate report`` to show.

    .venv/bin/python examples/report_demo.py demo.db
    .venv/bin/spendgate report --ledger sqlite:///demo.db --since 2026-03-02 --until 2026-03-09 --by user

Every call goes through the real path: the official ``openai`` SDK wrapped by spendgate
(price, worst-case reservation, the call, settlement on the answer's usage) against the fake
OpenAI-compatible upstream (a real HTTP server process; ``x-fake-*`` headers say how many
tokens it reports). The ledger's clock is a manual one moved through the week, so the log
spans seven days in seconds of real time.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai

import spendgate
from spendgate.clock import ManualClock
from spendgate.guard import Guard
from spendgate.testing.process import FakeUpstream

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday
HOURS = (8, 5, 9, 7, 4, 2, 1)  # working hours per day; the weekend: batch jobs only
# (user, team, model, calls per working hour, output tokens, cached prompt tokens)
PEOPLE = [
    ("alice", "research", "gpt-4o", 3, 900, 0),
    ("bob", "research", "gpt-4o-mini", 6, 400, 0),
    ("carol", "support", "gpt-4o-mini", 4, 250, 256),
    ("dave", "support", "gpt-4o", 1, 1500, 0),
]


def main(path: str) -> None:
    clock = ManualClock(START)
    guard = Guard(f"sqlite:///{Path(path).resolve()}", budgets=[{"id": "org", "limit": "500", "window": "month"}],
                  clock=clock)  # fmt: skip
    prompt = [{"role": "user", "content": "Summarise this ticket thread in five bullet points. " * 40}]
    with FakeUpstream.start() as upstream:
        client = spendgate.wrap(openai.OpenAI(base_url=upstream.base_url, api_key="demo"), guard=guard)
        for day in range(7):
            for hour in range(HOURS[day]):
                clock.set(START + timedelta(days=day, hours=hour))
                for user, team, model, calls, output, cached in PEOPLE:
                    if day >= 5 and user != "bob":
                        continue
                    tags = ["batch"] if user == "bob" else []
                    with spendgate.attribute(user=user, team=team, tags=tags):
                        for i in range(calls):
                            client.chat.completions.create(
                                model=model,
                                messages=prompt,  # type: ignore[arg-type]
                                max_tokens=2000,
                                extra_headers={
                                    "x-fake-output-tokens": str(output + 37 * ((day + hour + i) % 5)),
                                    "x-fake-cached-tokens": str(cached),
                                },
                            )
                    clock.advance(60)
    guard.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo.db")
