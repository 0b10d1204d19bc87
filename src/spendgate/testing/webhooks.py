"""A real local webhook receiver for alert tests: an HTTP server on 127.0.0.1 in a thread.

It keeps every POST it was sent (``posts``) and the ones it accepted (``accepted``: answered
2xx), deduplicating on ``webhook-id`` the way a receiver should (``accepted_ids``). ``mode``
says how it answers: ``ok`` (204), ``fail`` (503), ``hold`` (reads the request and answers
nothing until ``release()``, then drops the connection: a sender that died meanwhile never
learns the outcome, and the receiver does not count it as accepted).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from spendgate.alerts.destinations import sign

__all__ = ["Post", "WebhookReceiver"]

Mode = Literal["ok", "fail", "hold"]


@dataclass(frozen=True, slots=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None  # the status sent; None: held and dropped

    def json(self) -> Any:
        return json.loads(self.body)

    def signature_ok(self, secret: str) -> bool:
        given = self.headers.get("webhook-signature", "")
        expected = sign(secret, self.headers["webhook-id"], int(self.headers["webhook-timestamp"]), self.body)
        return given == expected


class WebhookReceiver:
    def __init__(self, mode: Mode = "ok") -> None:
        self.mode: Mode = mode
        self.posts: list[Post] = []
        self.accepted_ids: dict[str, int] = {}  # webhook-id -> times accepted
        self.arrived = threading.Condition()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                mode = receiver.mode
                status: int | None
                if mode == "hold":
                    with receiver.arrived:
                        receiver.posts.append(Post(self.path, headers, body, None))
                        receiver.arrived.notify_all()
                    receiver._release.wait(60)
                    self.close_connection = True
                    return  # no answer: the sender cannot know whether it arrived
                status = 204 if mode == "ok" else 503
                with receiver.arrived:  # kept before answering: the sender may look right after
                    receiver.posts.append(Post(self.path, headers, body, status))
                    if status == 204:
                        key = headers.get("webhook-id", f"#{len(receiver.posts)}")
                        receiver.accepted_ids[key] = receiver.accepted_ids.get(key, 0) + 1
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> list[Post]:
        with self.arrived:
            return [p for p in self.posts if p.answered is not None and 200 <= p.answered < 300]

    def wait_for(self, count: int, timeout: float = 10.0, *, accepted: bool = True) -> list[Post]:
        """Wait (bounded) until ``count`` posts (accepted ones by default) arrived."""

        def enough() -> bool:
            return len(self.accepted if accepted else self.posts) >= count

        with self.arrived:
            self.arrived.wait_for(enough, timeout)
        return self.accepted if accepted else list(self.posts)

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
