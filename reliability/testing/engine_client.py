"""Client side of the container engine protocol (what `docker` is to `dockerd`).

One JSON object per connection on ``<state>/engine.sock``, one JSON answer back. Standard
library only: the docker stand-in imports it on every call. The same one-request Unix
socket exchange (``exchange``, ``JsonSocketServer``) carries the demo's fault injection.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET_NAME = "engine.sock"


def request(root: Path, payload: dict[str, Any], timeout_s: float = 15.0) -> dict[str, Any]:
    """Send one request; with no engine running, answer ``{"ok": True, "engine": False}``.

    No engine means a rig without serving (state-only use of the stand-ins), where a
    started container is bookkeeping and nothing listens on its port.
    """
    try:
        answer = exchange(root / SOCKET_NAME, payload, timeout_s)
    except (FileNotFoundError, ConnectionRefusedError):
        return {"ok": True, "engine": False}
    return json.loads(answer or b'{"ok": false, "error": "engine closed the connection"}')


def exchange(path: Path | str, payload: dict[str, Any], timeout_s: float) -> bytes:
    """Send one JSON request on the Unix socket at `path`; the raw answer (b"" when the
    server closed without one). OSError when nothing listens there or it times out."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class JsonSocketServer:
    """Serves `exchange` on a Unix socket from a thread: `answer(request bytes)` gives the
    JSON-able reply of each connection. `close()` stops it (the socket file stays)."""

    def __init__(
        self, path: Path, answer: Callable[[bytes], dict[str, Any]], *, mode: int, name: str
    ) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(json.dumps(answer(self.rfile.read())).encode())

        self._server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self._server.daemon_threads = True
        os.chmod(path, mode)
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
