"""Fair waiting for budgets and rate limits (``on_exceed: wait``): first come, first served.

One line per budget instance and per rate-limit instance. Only the head of a
line tries to reserve, so a later request never overtakes an earlier one, and a
newcomer whose budget or limit has a line joins its back instead of trying
first. Heads are woken when a limit changes or a budget is reset (ledger
events), when a request of the same guard ends (a concurrency slot may be
free), by ``poke()`` (tests, with a manual clock), and by a periodic tick that
notices what other processes did and windows that rolled over. Deadlines are
read from the guard's clock, so tests move time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque


class SyncWaiter:
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Whether it was woken (False: the timeout passed)."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken


class AsyncWaiter:
    __slots__ = ("_event", "_loop")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def wake(self) -> None:
        # Ledger events arrive on whatever thread caused them.
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Whether it was woken (False: the timeout passed)."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for returns the result when the event
        # is set as the task is cancelled, swallowing the cancellation (the waiter then sat
        # out a whole poll interval in a line it should have left).
        woken = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
                woken = True
        self._event.clear()
        return woken


Waiter = SyncWaiter | AsyncWaiter


class WaitLines:
    """The lines, by budget instance key. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[str, deque[Waiter]] = {}

    def __bool__(self) -> bool:
        return bool(self._lines)

    def waiting(self, key: str | None = None) -> int:
        with self._lock:
            if key is not None:
                return len(self._lines.get(key, ()))
            return sum(len(line) for line in self._lines.values())

    def busy(self, keys: list[str]) -> str | None:
        """The first of ``keys`` that has a line, if any."""
        with self._lock:
            return next((k for k in keys if self._lines.get(k)), None)

    def join(self, key: str, waiter: Waiter) -> None:
        with self._lock:
            line = self._lines.setdefault(key, deque())
            line.append(waiter)
            if len(line) == 1:
                waiter.wake()

    def is_head(self, key: str, waiter: Waiter) -> bool:
        with self._lock:
            line = self._lines.get(key)
            return line is not None and bool(line) and line[0] is waiter

    def leave(self, key: str, waiter: Waiter) -> None:
        """Leave the line (admitted, gave up, or cancelled) and wake the next in it."""
        with self._lock:
            line = self._lines.get(key)
            if not line:
                return
            was_head = line[0] is waiter
            try:
                line.remove(waiter)
            except ValueError:
                return
            if not line:
                del self._lines[key]
            elif was_head:
                line[0].wake()

    def wake_heads(self) -> None:
        with self._lock:
            heads = [line[0] for line in self._lines.values() if line]
        for head in heads:
            head.wake()

    def wake_all(self) -> None:
        """Every waiter re-checks its deadline (and heads retry): after a clock moved."""
        with self._lock:
            everyone = [w for line in self._lines.values() for w in line]
        for waiter in everyone:
            waiter.wake()
