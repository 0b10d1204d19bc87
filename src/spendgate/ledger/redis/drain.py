"""The drainer: ended requests go from the Redis stream into the durable request log.

Settle, release and expiry scripts append each ended request to ``{prefix}:1:ended``. A
daemon thread per ledger copies them in batches with the durable store's ``archive`` (one
transaction, idempotent by request id) and only then deletes them from the stream, so a
copy that fails (the durable store down, a crash between the two steps) is retried and
writes nothing twice. Processes take turns through a short Redis lock (a dead holder's
expires); a query drains first without it, since archiving twice is harmless. A failing
durable store never fails a request: the drainer backs off (up to 30 s) and logs, and the
requests wait in Redis. The same thread runs the durable log's retention purge now and then.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

if TYPE_CHECKING:
    from spendgate.ledger.redis.ledger import RedisLedger

__all__ = ["Drainer"]

log = logging.getLogger("spendgate.ledger")

_LOCK_MS: Final = 30_000
_MAX_BACKOFF: Final = 30.0
_MAX_BATCHES: Final = 1000  # per drain: bounded, the next round takes the rest


class Drainer:
    def __init__(self, ledger: RedisLedger) -> None:
        self.ledger = ledger
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one drain at a time in this process
        self._start_lock = threading.Lock()
        self.failures = 0
        self._next_purge = time.monotonic() + ledger.purge_interval

    def start(self) -> None:
        with self._start_lock:
            if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._run, name="spendgate-redis-drainer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        delay = self.ledger.drain_interval
        while not self._stop.wait(delay):
            try:
                self.drain(force=False)
                self._maybe_purge()
            except Exception as exc:
                self.failures += 1
                delay = min(self.ledger.drain_interval * 2**self.failures, _MAX_BACKOFF)
                level = logging.WARNING if self.failures < 5 else logging.ERROR
                log.log(
                    level,
                    "spendgate: copying ended requests from %s to the durable log failed (%s); "
                    "retrying in %.1f s (nothing is lost: they wait in Redis)",
                    self.ledger._where(),
                    exc,
                    delay,
                )
                continue
            if self.failures:
                log.warning("spendgate: ended requests reach the durable log again (after %d failures)",
                            self.failures)  # fmt: skip
                self.failures = 0
            delay = self.ledger.drain_interval

    def _maybe_purge(self) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + self.ledger.purge_interval
        durable = self.ledger._durable
        if durable is not None:
            durable.purge()

    def drain(self, *, force: bool) -> int:
        """Copy what the stream holds; how many requests were new to the durable log.
        ``force``: without the cross-process lock (a query that must see the latest)."""
        ledger = self.ledger
        archive = ledger._archive
        if archive is None:
            return 0
        with self._lock:
            token = ""
            if not force:
                token = secrets.token_hex(8)
                got = ledger._redis(lambda c: c.set(ledger.k_drain, token, nx=True, px=_LOCK_MS))
                if not got:
                    return 0  # another process is draining
            try:
                return self._batches(archive)
            finally:
                if token:
                    ledger._eval(ledger._s.cas, [ledger.k_drain], [token, ""])

    def _batches(self, archive: Any) -> int:
        from spendgate.ledger.redis.ledger import archived_fields

        ledger = self.ledger
        batch = ledger.drain_batch
        total = 0
        for _ in range(_MAX_BATCHES):
            entries: list[tuple[str, dict[str, str]]] = ledger._redis(
                lambda c: cast(Any, c.xrange(ledger.k_stream, "-", "+", count=batch))
            )
            if not entries:
                break
            good = []
            for entry_id, fields in entries:
                try:
                    good.append(archived_fields(fields))
                except (KeyError, ValueError, TypeError) as exc:
                    # Kept aside, not dropped: one unreadable entry must not stop the others.
                    log.error("spendgate: ended request %s in %s is unreadable (%s); moved to %s",
                              entry_id, ledger.k_stream, exc, ledger.k_bad)  # fmt: skip
                    ledger._redis(partial(_xadd, stream=ledger.k_bad, fields=fields))
            if good:
                total += archive.archive(good)
            ids = [entry_id for entry_id, _ in entries]
            ledger._redis(partial(_xdel, stream=ledger.k_stream, ids=ids))
            if len(entries) < batch:
                break
        return total


def _xdel(client: Any, *, stream: str, ids: list[str]) -> None:
    client.xdel(stream, *ids)


def _xadd(client: Any, *, stream: str, fields: dict[str, str]) -> None:
    client.xadd(stream, fields)
