"""Rate limits kept in process memory: the memory ledger's counters for ``spendgate.limits``.

Not locked here: every call is made under the memory ledger's lock, inside the same step as
its budget lines, so a request takes every matching budget and limit or none of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from spendgate.budgets import Attributes
from spendgate.limits import (
    Demand,
    Limit,
    LimitEnding,
    LimitRefusal,
    LimitUsage,
    SlidingWindow,
    bucket_of,
    takes_of,
    window_change,
)

__all__ = ["MemoryLimits", "Take"]


class _Line:
    """One limit instance: its window's buckets, or its count in flight."""

    __slots__ = ("in_flight", "window")

    def __init__(self, limit: Limit) -> None:
        self.window = SlidingWindow(limit.width_us) if limit.windowed else None
        self.in_flight = 0


class Take(NamedTuple):
    """What one reservation took from one limit instance (to give back at its ending)."""

    line: _Line
    kind: str
    bucket: int
    amount: int


def _limit_of(state: _State) -> Limit:
    return state.limit


class _State:
    __slots__ = ("limit", "lines")

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.lines: dict[str, _Line] = {}


class MemoryLimits:
    """The limits of one memory ledger and their counters."""

    __slots__ = ("_order", "_states")

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}
        self._order: tuple[_State, ...] = ()

    def __bool__(self) -> bool:
        return bool(self._order)

    # -- administration ----------------------------------------------------------------
    def put(self, limit: Limit) -> None:
        """Add a limit or replace the one with its id; counts so far are kept when it still
        counts the same thing over the same window."""
        old = self._states.get(limit.id)
        state = _State(limit)
        if old is not None and old.limit.kind == limit.kind and old.limit.per == limit.per:
            state.lines = old.lines
        self._states[limit.id] = state
        self._order = tuple(self._states.values())

    def remove(self, limit_id: str) -> bool:
        removed = self._states.pop(limit_id, None) is not None
        self._order = tuple(self._states.values())
        return removed

    def get(self, limit_id: str) -> Limit:
        return self._states[limit_id].limit

    def all(self) -> list[Limit]:
        return [state.limit for state in self._order]

    def usage(self, limit_id: str, instance: str, now: datetime) -> LimitUsage:
        state = self._states[limit_id]
        return LimitUsage(state.limit, instance, self._used(state.lines.get(instance), now))

    def usages(self, now: datetime) -> list[LimitUsage]:
        """Every limit without wildcards, and every wildcard instance seen."""
        out: list[LimitUsage] = []
        for state in self._order:
            if not state.limit.wildcards and "" not in state.lines:
                out.append(LimitUsage(state.limit, "", 0))
            for instance, line in sorted(state.lines.items()):
                out.append(LimitUsage(state.limit, instance, self._used(line, now)))
        return out

    @staticmethod
    def _used(line: _Line | None, now: datetime) -> int:
        if line is None:
            return 0
        return line.window.used(now) if line.window is not None else line.in_flight

    # -- the request path ----------------------------------------------------------------
    def check(
        self, request_id: str, attributes: Attributes, demand: Demand, now: datetime
    ) -> list[Take] | LimitRefusal:
        """What the request would take from each matching limit, or the first that refuses.
        Changes no count (``take`` does, once every budget and limit has admitted)."""
        takes: list[Take] = []
        for item in takes_of(self._order, _limit_of, request_id, attributes, demand):
            if isinstance(item, LimitRefusal):
                return item
            state, key, need = item
            limit = state.limit
            line = state.lines.get(key)
            if line is None:
                line = state.lines[key] = _Line(limit)
            window = line.window
            if window is None:  # concurrency
                if line.in_flight + need > limit.amount:
                    retry = None if need > limit.amount else 0.0  # frees when one ends
                    return LimitRefusal(request_id, limit, key, line.in_flight, need, retry)
                takes.append(Take(line, limit.kind, 0, need))
                continue
            used = window.used(now)
            if used + need > limit.amount:
                retry = window.seconds_until_fits(now, limit.amount, need)
                return LimitRefusal(request_id, limit, key, used, need, retry)
            takes.append(Take(line, limit.kind, bucket_of(now, limit.width_us), need))
        return takes

    @staticmethod
    def take(takes: Iterable[Take]) -> None:
        for line, _, bucket, amount in takes:
            if line.window is None:
                line.in_flight += amount
            else:
                line.window.add(bucket, amount)

    @staticmethod
    def end(takes: Iterable[Take], how: LimitEnding, used: Demand | None = None, cost: int = 0) -> None:
        """Give back at a request's ending: concurrency always; of a window, as
        ``limits.window_change`` says."""
        for line, kind, bucket, amount in takes:
            window = line.window
            if window is None:
                line.in_flight -= amount
                continue
            change = window_change(kind, amount, how, used, cost)
            if change < 0:
                window.give_back(bucket, -change)
            elif change > 0:
                window.add(bucket, change)  # the provider billed past the bound: count it
