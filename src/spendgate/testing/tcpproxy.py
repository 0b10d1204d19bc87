"""A TCP forwarder a test can cut and restore: a database server going away, for real clients.

    with TcpProxy("127.0.0.1", 5432) as proxy:       # listens on 127.0.0.1:proxy.port
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
        ...
        proxy.cut()       # open connections reset, new ones reset at once: the server is gone
        proxy.stall()     # connections accepted, nothing forwarded: the server hangs
        proxy.restore()   # forwarding again

Tests of failing closed need the server to disappear under a client without stopping the
server every other test shares; from the client's side a cut is a server that stopped (its
connections reset, new ones refused), a stall one that stopped answering. Threads, not
asyncio: the clients under test may be blocking ones in the same process.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from typing import Literal

__all__ = ["TcpProxy"]

Mode = Literal["forward", "cut", "stall"]
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST: the peer sees a reset, not a clean end


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``host``:``target_port`` until told otherwise."""

    def __init__(self, host: str, target_port: int, *, max_connections: int = 512) -> None:
        self.target = (host, target_port)
        self.max_connections = max_connections
        self.mode: Mode = "forward"
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket | None]] = set()
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True)
        self._acceptor.start()

    # -- what a test does ----------------------------------------------------------------
    def cut(self) -> None:
        """Reset every open connection and every new one until ``restore``."""
        self._set("cut")

    def stall(self) -> None:
        """Accept connections and forward nothing (open ones stop too) until ``restore``."""
        self._set("stall")

    def restore(self) -> None:
        """Forward again (connections reset by a cut stay gone: clients reconnect)."""
        self._set("forward")

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._set("cut")
        self._acceptor.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the forwarding ------------------------------------------------------------------
    def _set(self, mode: Mode) -> None:
        with self._lock:
            self.mode = mode
            doomed = list(self._pairs) if mode != "forward" else []
            if mode == "cut":
                self._pairs.clear()
        if mode == "cut":
            for client, server in doomed:
                _reset(client)
                if server is not None:
                    _reset(server)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode, crowded = self.mode, len(self._pairs) >= self.max_connections
            if mode == "cut" or crowded:
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), name="tcpproxy-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server: socket.socket | None = None
        try:
            with self._lock:
                stalled = self.mode == "stall"
                self._pairs.add((client, None))
            if not stalled:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
                with self._lock:
                    self._pairs.discard((client, None))
                    self._pairs.add((client, server))
            self._pump(client, server)
        except (OSError, ValueError):  # ValueError: a cut closed the socket as select() took it
            pass
        finally:
            with self._lock:
                self._pairs.discard((client, server))
                self._pairs.discard((client, None))
            _reset(client)
            if server is not None:
                _reset(server)

    def _pump(self, client: socket.socket, server: socket.socket | None) -> None:
        """Copy both ways while forwarding; hold everything while stalled; end on a cut."""
        while not self._closed.is_set():
            mode = self.mode
            if mode == "cut":
                return
            if mode == "stall" or server is None:
                if server is None and mode == "forward":
                    return  # accepted during a stall: the client gives up and reconnects
                self._closed.wait(0.05)
                continue
            readable, _, _ = select.select([client, server], [], [], 0.05)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                # Sent even if a stall began meanwhile: dropping it would corrupt the stream.
                (server if sock is client else client).sendall(data)
