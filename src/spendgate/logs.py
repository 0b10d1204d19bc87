"""Logging: the one line per request, the JSON formatter, and the setup ``spendgate serve`` runs.

Each request has one INFO record on the ``spendgate.requests`` logger, its fields in
``record.spendgate`` (docs/sdk.md, docs/gateway.md). The guard writes it for an SDK call, when the
request ends or a budget refuses it (``request_line``). Under the gateway the guard's fields go into
the line the gateway writes once it has answered (``held_line``), so a gateway request has one line
with its HTTP status and latency as well. WARNING records on the same logger are about a request
(charged without usage, billed above its reservation), not request lines.

``configure`` (each gateway process) sends every record to stderr through a
``QueuedStreamHandler``: a record is formatted where it is logged and written by a thread, so a
slow log reader never blocks the event loop.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import IO, Any, Final

from spendgate.money import Money

REQUESTS: Final = logging.getLogger("spendgate.requests")
LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("json", "text")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: What the worker processes of ``spendgate serve --workers N`` read (the CLI reads them too).
LEVEL_ENV: Final = "SPENDGATE_LOG_LEVEL"
FORMAT_ENV: Final = "SPENDGATE_LOG_FORMAT"

#: Set by the gateway around one request: the guard adds its fields here instead of writing
#: a line of its own, and the gateway writes the one line once it has answered.
held_line: ContextVar[dict[str, Any] | None] = ContextVar("spendgate_request_line", default=None)

#: Given each request's finished line (its fields, and the gateway's request headers), once, when
#: set: ``spendgate.telemetry.enable`` sets it. Callers build a line only when ``line_wanted()``:
#: off, it costs that one check.
observer: Callable[[dict[str, Any], Sequence[tuple[bytes, bytes]] | None], None] | None = None


def line_wanted() -> bool:
    """Whether to build a request's line: someone reads it (INFO on ``spendgate.requests``, or an
    observer). The one check the request path pays when both are off."""
    return observer is not None or REQUESTS.isEnabledFor(logging.INFO)


def request_line(fields: dict[str, Any], message: str, *args: object) -> None:
    """Write a request's line (callers check ``line_wanted()`` first, so that a disabled log costs
    nothing); inside a ``held_line``, add the fields to that line."""
    held = held_line.get()
    if held is not None:
        held.update(fields)
    else:
        finish_line(fields, message, *args)


def finish_line(
    fields: dict[str, Any], message: str, *args: object, headers: Sequence[tuple[bytes, bytes]] | None = None
) -> None:
    """A request's one line, finished: written when INFO is on, and handed to the ``observer``
    (telemetry) when one is set, so both see the same fields, decided once."""
    if REQUESTS.isEnabledFor(logging.INFO):
        write_line(fields, message, *args)
    seen = observer
    if seen is not None:
        try:
            seen(fields, headers)
        except Exception:  # telemetry never fails a request
            logging.getLogger("spendgate.telemetry").exception("telemetry failed on a request line")


def write_line(fields: dict[str, Any], message: str, *args: object) -> None:
    """An INFO record on ``spendgate.requests`` with ``fields``, made directly: ``Logger.info``
    would also walk the stack for a file and line no format here shows."""
    REQUESTS.handle(
        REQUESTS.makeRecord(
            REQUESTS.name, logging.INFO, "", 0, message, args, None, extra={"spendgate": fields}
        )
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC), ``level``, ``logger``, ``message``, ``pid``, then
    the record's ``spendgate`` fields at the top level. Money is a decimal string, never a float;
    the line is ASCII (escapes for the rest), so it stays one line whatever a field holds."""

    def __init__(self) -> None:
        super().__init__()
        # One encoder for every line: json.dumps with options builds a new one per call.
        self._encode = json.JSONEncoder(default=_plain, separators=(",", ":")).encode
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "spendgate", None)
        if isinstance(fields, Mapping):
            for name, value in fields.items():
                out.setdefault(name, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return self._encode(out)

    def _utc(self, created: float) -> str:
        whole = int(created)
        if whole != self._second:  # strftime once a second, not once a line
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            self._second = whole
        return f"{self._stamp}.{int((created - whole) * 1000):03d}Z"


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: exact amounts as strings."""
    if isinstance(value, Money):
        return value.decimal_str()
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


class QueuedStreamHandler(logging.Handler):
    """Formats a record in the thread that logs it and hands the line to a writer thread.

    A full pipe or a slow disk then delays the writer, never the event loop. The queue is
    bounded: past ``capacity`` waiting lines a line is dropped and counted, and the count is
    logged with the next line that fits (a gateway neither stops serving nor grows without
    bound for its log). The writer takes every line waiting at once and writes them in writes
    of at most PIPE_BUF bytes: a busy gateway wakes it once per batch, not once per line, and
    lines of ``--workers`` processes sharing a pipe do not interleave. ``close`` writes what is
    queued first.
    """

    def __init__(self, stream: IO[str] | None = None, capacity: int = 10_000) -> None:
        super().__init__()
        self.stream = sys.stderr if stream is None else stream
        self.capacity = capacity
        self.dropped = 0
        # SimpleQueue: a put is one C call, no Condition (bounded by qsize below).
        self._lines: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
        self._fd = _fileno(self.stream)
        self._writer = threading.Thread(target=self._write, name="spendgate-log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        if self._lines.qsize() >= self.capacity:
            self.dropped += 1  # emit runs under the handler's lock: the count is not raced
            return
        if self.dropped:
            notice = logging.LogRecord(
                "spendgate.logs", logging.WARNING, __file__, 0,
                "%d log lines were dropped: the log output did not keep up", (self.dropped,), None,
            )  # fmt: skip
            line = self.format(notice) + "\n" + line
            self.dropped = 0
        self._lines.put(line)

    def _write(self) -> None:
        while True:
            batch = [self._lines.get()]
            # The lines of the next few milliseconds join this one: the writer then wakes (and
            # takes the GIL from the event loop) at most ~100 times a second, not per request.
            time.sleep(_GATHER_SECONDS)
            while len(batch) < 1024:
                try:
                    batch.append(self._lines.get_nowait())
                except queue.Empty:
                    break
            lines: list[str] = []
            for item in batch:
                if isinstance(item, str):
                    lines.append(item)
                    continue
                self._out(lines)
                lines = []
                if item is None:
                    return
                item.set()  # a flush: what came before it is written
            self._out(lines)

    def _out(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            if self._fd is None:
                self.stream.write("".join(lines))
                self.stream.flush()
                return
            chunk: list[bytes] = []
            size = 0
            for line in lines:
                data = line.encode("utf-8", "backslashreplace")
                if chunk and size + len(data) > _PIPE_BUF:
                    _write_all(self._fd, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(data)
                size += len(data)
            _write_all(self._fd, b"".join(chunk))
        except (OSError, ValueError):
            pass  # the stream is gone (closed, a broken pipe): nowhere left to say so

    def flush(self) -> None:
        """Wait (up to 5 s) until the lines queued so far are written."""
        if self._writer.is_alive():
            written = threading.Event()
            self._lines.put(written)
            written.wait(5)

    def close(self) -> None:
        if self._writer.is_alive():
            self._lines.put(None)
            self._writer.join(5)  # bounded: a stream that never drains cannot hold up the exit
        super().close()


_GATHER_SECONDS: Final = 0.01
#: What one write to a pipe may hold and stay whole among other processes' writes (POSIX: >= 512).
_PIPE_BUF: Final[int] = getattr(select, "PIPE_BUF", 512)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _fileno(stream: IO[str]) -> int | None:
    """The stream's file descriptor, after flushing what its buffer holds; None if it has none."""
    try:
        fd = stream.fileno()
        stream.flush()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd


def format_for(fmt: str | None, stream: IO[str] | None = None) -> str:
    """``fmt``, or by default ``text`` when ``stream`` (stderr) is a terminal and ``json`` when
    it is not (a file, a pipe, a log collector)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    target = sys.stderr if stream is None else stream
    try:
        tty = target.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "text" if tty else "json"


def configure(
    level: str = "info", fmt: str | None = None, stream: IO[str] | None = None
) -> Callable[[], None]:
    """Send this process's log records at ``level`` and above to ``stream`` (stderr), one line
    each, ``json`` or ``text`` (``format_for``). Returns the function that undoes it: it writes
    what is queued and restores the root logger's level.

    The handler goes on the root logger, so uvicorn's loggers reach it too when uvicorn is
    given ``log_config=None`` (the gateway's uvicorn options)."""
    name = level.lower()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    levelno = logging.getLevelNamesMapping()[name.upper()]
    handler = QueuedStreamHandler(stream)
    handler.setLevel(levelno)
    chosen = format_for(fmt, handler.stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(levelno)
    logging.captureWarnings(True)  # Python's warnings become lines in the same format

    def undo() -> None:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(before)
        handler.close()

    return undo
