"""A child process for the alert cluster test (importable under 'spawn'): it spends from the
shared ledger as an SDK user's process would, and runs an alert dispatcher of its own."""

from __future__ import annotations

import os
from typing import Any

from spendgate.alerts import AlertDispatcher, RetryPolicy, WebhookDestination
from spendgate.budgets import Attributes
from spendgate.ledger import Reservation, open_ledger
from spendgate.money import Money


def sender(url: str, hook: str, name: str, commands: Any, out: Any) -> None:
    ledger = open_ledger(url, busy_timeout=30)
    dispatcher = AlertDispatcher(
        ledger,
        [WebhookDestination("ops", hook, timeout=1.0)],
        retry=RetryPolicy(max_attempts=100, backoff=0.3, max_backoff=1.0),
        poll_interval=0.2,
        lease=3.0,
    )
    dispatcher.start()
    dispatcher.registered.wait(30)
    out.put(("ready", name, os.getpid()))
    count = 0
    while True:
        command = commands.get(timeout=120)
        if command[0] == "stop":
            dispatcher.stop()
            ledger.close()
            out.put(("stopped", name, None))
            return
        _, usd = command
        count += 1
        request_id = f"{name}-{count}"
        held = ledger.reserve(request_id, Attributes(team="research", user=name), Money.parse(usd), 600)
        if isinstance(held, Reservation):
            ledger.settle(request_id, Money.parse(usd))
        out.put(("spent", name, isinstance(held, Reservation)))
