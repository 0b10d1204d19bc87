"""Group commit on the event loop: the writes of one loop iteration share one transaction.

A SQLite write is a lock, a few statements and a commit. Made one by one on
the event loop, every request pays the lock and the commit, and a wait for
another process's lock blocks the loop, so every request of the process
stalls. Here an asyncio caller queues its write and awaits it; once per loop
iteration, everything queued runs in one transaction (each write in its own
savepoint where it may have to undo itself), commits once, and each caller
gets its own result. When another process holds the write lock, the loop does
not sleep: the batch is tried again a little later (doubling, up to 1 ms)
and other requests run meanwhile, up to ``busy_timeout``.

Measured against a writer thread (the other way to keep the loop free):
sqlite3 hands the GIL back and forth on every statement, and the thread's
Python work competes with the loop's, so the thread was no faster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("spendgate.ledger")

#: (True, value) for a write that ran (committed, or rolled back by its own choice), (False, exc).
Outcome = tuple[bool, Any]
Body = Callable[[Any], Any]
#: Runs bodies in one transaction; None when the write lock is held elsewhere (nothing ran).
RunBatch = Callable[[Sequence[Body]], "list[Outcome] | None"]

_FIRST_RETRY: Final = 50e-6
_LAST_RETRY: Final = 1e-3


@dataclass(slots=True)
class Job:
    """One write: ``body(conn)`` inside the batch's transaction, then ``deliver(ok, value)``."""

    body: Body
    deliver: Callable[[bool, Any], None]


class GroupCommit:
    """The batches of one event loop (make one per loop; use it only from that loop)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        run_batch: RunBatch,
        *,
        busy_timeout: float,
        unavailable: Callable[[], BaseException],
        after_batch: Callable[[], None] | None = None,
        max_batch: int = 256,
    ) -> None:
        self._loop = loop
        self._run_batch = run_batch
        self._busy_timeout = busy_timeout
        self._unavailable = unavailable
        self._after_batch = after_batch
        self._max_batch = max_batch
        self._queue: list[Job] = []
        self._scheduled = False
        self._closed = False
        self._busy_since: float | None = None
        self._retry = _FIRST_RETRY
        self.batches = 0  # counters for tests and benchmarks
        self.jobs = 0

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` (kept together and in order) for this iteration's batch."""
        self._queue.extend(jobs)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """The ledger closed: what is still queued fails (on the loop, at its next flush)."""
        self._closed = True

    def _flush(self) -> None:
        if self._closed:
            batch, self._queue = self._queue, []
            self._scheduled = False
            _deliver_all([(job, (False, self._unavailable())) for job in batch])
            return
        batch = self._queue[: self._max_batch]
        try:
            outcomes = self._run_batch([job.body for job in batch])
        except Exception as exc:  # run_batch maps its own errors; this is a last resort
            log.exception("spendgate: a ledger write batch failed")
            outcomes = [(False, exc)] * len(batch)
        except BaseException:
            # KeyboardInterrupt, SystemExit: nobody may wait for this batch for ever, and later
            # writes must still be flushed (shutdown settles requests in flight).
            del self._queue[: len(batch)]
            self._scheduled = bool(self._queue)
            if self._queue:
                self._loop.call_soon(self._flush)
            interrupted = RuntimeError("the ledger write was interrupted")
            _deliver_all([(job, (False, interrupted)) for job in batch])
            raise
        if outcomes is None:  # another process holds the write lock: try again soon
            now = time.monotonic()
            if self._busy_since is None:
                self._busy_since = now
            elif now - self._busy_since >= self._busy_timeout:
                outcomes = [(False, self._unavailable())] * len(batch)
            if outcomes is None:
                self._loop.call_later(self._retry, self._flush)
                self._retry = min(self._retry * 2, _LAST_RETRY)
                return
        self._busy_since = None
        self._retry = _FIRST_RETRY
        del self._queue[: len(batch)]
        self.batches += 1
        self.jobs += len(batch)
        if self._queue:
            self._loop.call_soon(self._flush)
        else:
            self._scheduled = False
        _deliver_all(list(zip(batch, outcomes, strict=True)))
        if self._after_batch is not None:
            try:
                self._after_batch()
            except Exception:
                log.exception("spendgate: ledger housekeeping failed")


def _deliver_all(done: list[tuple[Job, Outcome]]) -> None:
    for job, (ok, value) in done:
        try:
            job.deliver(ok, value)
        except Exception:
            log.exception("spendgate: delivering a ledger result failed")


def future_job(
    body: Body,
    finish: Callable[[bool, Any], Any],
    orphan: Callable[[Any], None] | None = None,
) -> tuple[Job, asyncio.Future[Any]]:
    """A job whose result reaches an asyncio future through ``finish(ok, value)``.

    ``finish`` returns the caller's result or raises. If the caller stopped
    waiting (cancelled), ``orphan(result)`` gets what it would have returned:
    a reservation nobody will use must be released, not left to its lease.
    """
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def deliver(ok: bool, value: Any) -> None:
        try:
            result = finish(ok, value)
        except BaseException as exc:
            if not future.cancelled():
                future.set_exception(exc)
            return
        if future.cancelled():
            if orphan is not None:
                orphan(result)
            return
        future.set_result(result)

    return Job(body, deliver), future
