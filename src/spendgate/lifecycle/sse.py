"""SSE bytes as they pass, framed into events for the lifecycle's ``StreamReader``.

Sans-IO: the gateway feeds it what the upstream sends before forwarding it, and the SDK
wrappers feed it what a raw response (``with_streaming_response``, read with ``iter_lines``
or ``iter_bytes``) hands its caller. Either way the reader sees every event that can carry
usage, and the usage chunk the guard asked for is hidden from a caller that did not.
"""

from __future__ import annotations

import json
from typing import Any

from spendgate.estimate import Endpoint
from spendgate.lifecycle.reading import Show, StreamReader, may_carry_usage

__all__ = ["StreamTracker"]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class StreamTracker:
    """Frames SSE bytes into events as they pass and hands the ones that can carry usage to the
    lifecycle's ``StreamReader`` (which also says which usage chunk to hide). Events are
    forwarded whole, as soon as each one is complete; only the events that can carry usage
    (told apart by their SSE event name or a cheap byte search) are parsed at all."""

    __slots__ = ("buffer", "endpoint", "reader")

    def __init__(self, endpoint: Endpoint, hide_usage: bool) -> None:
        self.endpoint = endpoint
        self.reader = StreamReader(endpoint, hide_usage)
        self.buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events in ``buffer + chunk`` to forward now; keeps the incomplete rest."""
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        data = self.buffer + chunk if self.buffer else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self.buffer = data
            return b""
        self.buffer = data[end + 2 :]
        complete = data[: end + 2]
        out: list[bytes] = []
        changed = False
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            kept = self._event(event)
            if kept is not event:
                changed = True
            if kept:
                out.append(kept)
        if not changed:
            return complete
        return b"".join(e + b"\n\n" for e in out)

    def flush(self) -> bytes:
        rest, self.buffer = self.buffer, b""
        if rest.strip():
            kept = self._event(rest.rstrip(b"\n"))
            return kept + b"\n\n" if kept else b""
        return rest

    def _event(self, event: bytes) -> bytes:
        """The event to forward (``event`` itself if unchanged; b"" to drop it)."""
        name: bytes | None = None
        data_lines: list[bytes] = []
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if not data_lines:
            return event
        data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
        if data == b"[DONE]" or not may_carry_usage(self.endpoint, name, data):
            self.reader.events += 1
            return event
        try:
            obj = json.loads(data)
        except ValueError:
            return event
        if not isinstance(obj, dict):
            return event
        if name is not None and "type" not in obj and self.endpoint == "responses":
            obj["type"] = name.decode("latin-1")  # the SSE event name is the event's type
        show = self.reader.see(obj)
        if show is Show.KEEP:
            return event
        if show is Show.DROP:
            return b""  # exactly the event the guard added
        obj["usage"] = None  # the caller did not ask for usage
        return b"data: " + _dumps(obj)
