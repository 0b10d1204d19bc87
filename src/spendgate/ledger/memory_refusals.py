"""The refusal counts in memory (``RefusalCounts``): one process, for tests and the SDK."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime, timedelta

from spendgate.clock import Clock
from spendgate.ledger.base import RefusalCount, check_refusal_counts

__all__ = ["MemoryRefusals"]


class MemoryRefusals:
    """(minute, kind, subject) -> count; minutes older than the retention leave at each add."""

    clock: Clock
    retention: timedelta

    def _refusals_init(self) -> None:
        self._rf_lock = threading.Lock()
        self._rf_counts: dict[tuple[datetime, str, str], int] = {}

    def add_refusals(self, counts: Mapping[tuple[datetime, str, str], int]) -> None:
        checked = check_refusal_counts(counts)
        cutoff = self.clock.now() - self.retention
        with self._rf_lock:
            kept = self._rf_counts
            for key, count in checked.items():
                kept[key] = kept.get(key, 0) + count
            for key in [k for k in kept if k[0] < cutoff]:
                del kept[key]

    def refusal_counts(self, start: datetime, end: datetime) -> list[RefusalCount]:
        with self._rf_lock:
            rows = [(k, n) for k, n in self._rf_counts.items() if start <= k[0] < end]
        rows.sort(key=lambda row: row[0])
        return [RefusalCount(minute, kind, subject, n) for (minute, kind, subject), n in rows]
