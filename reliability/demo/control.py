"""How `reliability demo inject` finds and talks to the running demo.

The demo writes `demo.json` in its folder (its pid, config, addresses and ports, the
control socket) and removes it when it stops. `inject` reads it, checks the process is
alive, and sends one JSON request over the control socket (a Unix socket, so only users
who can reach the folder can inject); the demo applies the fault with the objects it runs
(the SSH server, the container engine, the hosted stand-in) and answers with what to
expect next.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The faults `reliability demo inject` knows, and those that take a node as target.
FAULTS = ("upstream-busy", "node-down", "gpu-xid79", "gpu-hot", "bad-image", "clear")
NODE_FAULTS = ("node-down", "gpu-xid79", "gpu-hot")
STATE_FILE = "demo.json"
SOCKET_FILE = "control.sock"
REQUEST_TIMEOUT_S = 60.0  # a redeploy through the docker stand-in is the slowest fault
# AF_UNIX paths are limited to 108 bytes; past this a short temporary folder holds it.
MAX_SOCKET_PATH = 100


class NotRunning(RuntimeError):
    """No demo runs in that folder (no state file, a dead pid, no answer)."""


class FaultError(ValueError):
    """The fault or its target is wrong (unknown node, a node without GPUs)."""


Apply = Callable[[str, "str | None"], str]


def write_state(directory: Path, info: dict[str, Any]) -> Path:
    path = directory / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_state(directory: Path) -> dict[str, Any]:
    """The running demo's state file; NotRunning when there is none or its process is gone."""
    path = directory / STATE_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotRunning(f"no demo is running in {directory} (no {path.name})") from None
    except (OSError, ValueError) as exc:
        raise NotRunning(f"cannot read {path}: {exc}") from None
    if not _alive(int(info.get("pid", 0))):
        raise NotRunning(f"no demo is running in {directory} (pid {info.get('pid')} is gone)")
    return info


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def send(directory: Path, fault: str, target: str | None) -> dict[str, Any]:
    """Ask the running demo to apply `fault`; its answer (`ok`, `message` or `error`)."""
    # The rig's socket exchange, imported here: every CLI call loads demo/cli.py, and only
    # `demo inject` needs it.
    from reliability.testing.engine_client import exchange

    info = read_state(directory)
    request = {"fault": fault, "target": target}
    try:
        answer = exchange(info["control"], request, REQUEST_TIMEOUT_S)
    except OSError as exc:
        raise NotRunning(f"the demo in {directory} does not answer ({exc})") from None
    try:
        return dict(json.loads(answer))
    except ValueError:
        raise NotRunning(f"the demo in {directory} closed the connection") from None


class ControlServer:
    """Serves the control socket on a thread; ``close()`` removes it."""

    def __init__(self, directory: Path, apply: Apply) -> None:
        from reliability.testing.engine_client import JsonSocketServer

        path = directory / SOCKET_FILE
        self._tmp: Path | None = None
        if len(str(path)) > MAX_SOCKET_PATH:
            self._tmp = Path(tempfile.mkdtemp(prefix="reliability-demo-"))
            path = self._tmp / SOCKET_FILE
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.path = path

        def answer(raw: bytes) -> dict[str, Any]:
            try:
                request = json.loads(raw)
                return {"ok": True, "message": apply(request["fault"], request["target"])}
            except FaultError as exc:
                return {"ok": False, "usage": True, "error": str(exc)}
            except Exception as exc:  # any failure must reach `inject` as an answer
                return {"ok": False, "usage": False, "error": f"{type(exc).__name__}: {exc}"}

        self._server = JsonSocketServer(path, answer, mode=0o600, name="demo-control")

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
