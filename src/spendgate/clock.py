"""Time, injected: the ledger asks a clock, so tests advance time instead of sleeping.

Every clock returns aware UTC datetimes. ``SystemClock`` is the real one;
``ManualClock`` is moved by hand (thread-safe). Multi-process tests run their
children on the system clock and let the parent, which performs the check
(lease expiry, window rollover), use a ``ManualClock`` set ahead of it: the
ledger stores absolute instants, so the two agree on what "expired" means.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock", "as_utc", "parse_instant"]


@runtime_checkable
class Clock(Protocol):
    """Anything with ``now()`` returning an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The machine's clock, in UTC."""

    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that only moves when told to: ``advance(seconds)`` or ``set(dt)``."""

    __slots__ = ("_lock", "_now")

    def __init__(self, start: datetime | str | None = None) -> None:
        self._lock = threading.Lock()
        self._now = as_utc(parse_instant(start) if isinstance(start, str) else start or datetime.now(UTC))

    def now(self) -> datetime:
        # A datetime read is atomic in CPython; the lock orders it against advance().
        with self._lock:
            return self._now

    def advance(self, by: float | timedelta) -> datetime:
        """Move forward (or back, with a negative amount) and return the new time."""
        if isinstance(by, bool):
            raise TypeError("advance() takes seconds or a timedelta, not a boolean")
        step = by if isinstance(by, timedelta) else timedelta(seconds=by)
        with self._lock:
            self._now = self._now + step
            return self._now

    def set(self, when: datetime | str) -> None:
        with self._lock:
            self._now = as_utc(parse_instant(when) if isinstance(when, str) else when)

    def __repr__(self) -> str:
        return f"ManualClock({self.now().isoformat()!r})"


def as_utc(when: datetime) -> datetime:
    """The same instant in UTC; a naive datetime is refused (its instant is unknowable)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{when.isoformat()} has no time zone; give an aware datetime (e.g. ...+00:00)")
    return when.astimezone(UTC)


def parse_instant(text: str) -> datetime:
    """ISO 8601 with an offset or ``Z``: ``2026-01-01T00:00:00Z``."""
    value = datetime.fromisoformat(text.strip())
    return as_utc(value)
