"""Client side of the container engine protocol (what `docker` is to `dockerd`).

One JSON object per connection on ``<state>/engine.sock``, one JSON answer back. Standard
library only: the docker stand-in imports it on every call.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

SOCKET_NAME = "engine.sock"


def request(root: Path, payload: dict[str, Any], timeout_s: float = 15.0) -> dict[str, Any]:
    """Send one request; with no engine running, answer ``{"ok": True, "engine": False}``.

    No engine means a rig without serving (state-only use of the stand-ins), where a
    started container is bookkeeping and nothing listens on its port.
    """
    path = root / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return {"ok": True, "engine": False}
        sock.sendall(json.dumps(payload).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks) or b'{"ok": false, "error": "engine closed the connection"}')
