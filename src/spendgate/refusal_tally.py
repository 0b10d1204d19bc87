"""This process's refusals, added up in memory and written to the ledger in batches.

The dashboard's overview counts the requests that budgets and rate limits refused in the last
hour across every process sharing a ledger (``RefusalCounts``). Writing each refusal would put a
ledger write on every 429 of a client that keeps retrying; instead a process adds its refusals
up per minute and writes them at most every ``interval`` seconds, so a flood of refusals costs
one small write per interval. The first refusal after a quiet interval is written at once.

Who writes: the guard's admission shells, after a refusal, when a write is due (``due``); the
gateway every ``interval`` (what a quiet process still holds); the guard's ``close``; the
overview, before it reads (this process's own count is never late). A write that fails keeps
its counts for the next one. Nothing here reads the ledger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final

from spendgate.clock import Clock
from spendgate.ledger.base import refusal_minute
from spendgate.ledger.protocols import RefusalCounts

__all__ = ["DEFAULT_INTERVAL", "MAX_KEYS", "RefusalTally"]

log = logging.getLogger("spendgate.ledger")

#: Seconds between two writes of one process's counts.
DEFAULT_INTERVAL: Final = 5.0
#: The most (minute, kind, subject) counts kept while the ledger cannot be written: the oldest
#: minutes are dropped beyond it (and the drop logged), so an outage cannot grow memory.
MAX_KEYS: Final = 10_000

Key = tuple[datetime, str, str]


class RefusalTally:
    """Refusals per (minute, kind, subject) not yet in the ledger. Thread-safe.

    ``clock`` stamps each refusal's minute (the ledger's clock, so the minutes line up with the
    ledger's "now"); ``monotonic`` paces the writes (tests pass a manual one).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        interval: float = DEFAULT_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
            raise ValueError(f"interval must be a number of seconds >= 0, got {interval!r}")
        self.clock = clock
        self.interval = float(interval)
        self._monotonic = monotonic
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._counts: dict[Key, int] = {}
        self._next_write = float("-inf")  # the first refusal is written at once
        self._dropped = 0

    def add(self, kind: str, subject: str) -> None:
        """One request refused by ``kind`` (``budget``, ``rate_limit``, ``cost_cap``) ``subject``."""
        key = (refusal_minute(self.clock.now()), kind, subject)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            if len(self._counts) > self._max_keys:
                self._drop_oldest()

    def pending(self) -> int:
        """How many refusals are not yet written."""
        with self._lock:
            return sum(self._counts.values())

    def due(self) -> bool:
        """Whether there is something to write and the interval since the last write is over."""
        return bool(self._counts) and self._monotonic() >= self._next_write

    def claim(self) -> bool:
        """``due()``, for one caller: the next is due an interval later. The guard's shells ask
        this after a refusal, so a hundred requests refused at once make one write, not a
        hundred threads racing to find it done."""
        with self._lock:
            now = self._monotonic()
            if not self._counts or now < self._next_write:
                return False
            self._next_write = now + self.interval
            return True

    def flush(self, ledger: RefusalCounts) -> int:
        """Write what is held (blocking: an asyncio caller runs it on a thread). How many
        refusals were written; 0 when there was nothing, or the write failed (they are kept)."""
        with self._lock:
            taken, self._counts = self._counts, {}
            if taken:  # an empty flush (the overview's, say) does not delay the next refusal's
                self._next_write = self._monotonic() + self.interval
        if not taken:
            return 0
        try:
            ledger.add_refusals(taken)
        except Exception:
            # The counts are the overview's, never a request's: a failed write keeps them for
            # the next one and is logged, once an interval at most (the next try is that late).
            log.warning("spendgate: %d refusal counts not written yet", sum(taken.values()), exc_info=True)
            with self._lock:
                for key, count in taken.items():
                    self._counts[key] = self._counts.get(key, 0) + count
                if len(self._counts) > self._max_keys:
                    self._drop_oldest()
            return 0
        return sum(taken.values())

    def _drop_oldest(self) -> None:
        """Under the lock: keep the newest ``max_keys`` counts."""
        keys = sorted(self._counts)
        gone = keys[: len(keys) - self._max_keys]
        for key in gone:
            self._dropped += self._counts.pop(key)
        log.warning("spendgate: %d refusal counts dropped (the ledger took none for too long)", self._dropped)
