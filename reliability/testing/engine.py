"""The rig's container engine: what serves a `docker run` container's port.

The docker stand-in runs as the SSH login user, in a short-lived process; the servers it
starts must outlive it and die with the fleet. So, like `docker` and `dockerd`, the CLI
asks this engine (a thread of the process that owns the fleet) over ``engine.sock`` to
start or stop the inference stand-in of a container, and the engine runs them all on one
``ServerGroup`` loop. When a stand-in dies (its ``die`` mode), the engine marks the
container exited with code 1 in the node state, as the real engine would.

``suspend(node)`` is that node's network going away: its containers stop answering (their
listeners close) while the node state still has them running; ``resume(node)`` serves them
again. A container started on a suspended node waits for the resume.
"""

from __future__ import annotations

import contextlib
import errno
import json
import threading
from pathlib import Path
from typing import Any

from reliability.testing import docker_format, state
from reliability.testing.engine_client import SOCKET_NAME, JsonSocketServer
from reliability.testing.inference import InferenceSpec
from reliability.testing.inference_group import EXIT_DIED, InferenceHandle, ServerGroup

Key = tuple[str, str]


class ContainerEngine:
    """Serves ``<root>/engine.sock``; ``close()`` stops every server it started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.group = ServerGroup()
        self._servers: dict[Key, InferenceHandle] = {}
        self._requests: dict[Key, dict[str, Any]] = {}  # how each was started, for resume
        self._suspended: set[str] = set()
        self._lock = threading.Lock()
        path = root / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # The docker stand-in connects as the SSH login user.
        self._socket_server = JsonSocketServer(path, self._answer, mode=0o666, name="rig-engine")

    def _answer(self, raw: bytes) -> dict[str, Any]:
        try:
            return self.dispatch(json.loads(raw))
        except Exception as error:  # any failure must reach the CLI as an answer
            return {"ok": False, "error": str(error)}

    def server(self, node: str, container: str) -> InferenceHandle | None:
        """The live stand-in serving ``container`` on ``node``, if any (to set its mode)."""
        with self._lock:
            handle = self._servers.get((node, container))
        return handle if handle is not None and handle.alive else None

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        key = (request["node"], request["container"])
        if request["op"] == "start":
            return self._start(key, request)
        if request["op"] == "rename":
            # A running container keeps serving under its new name (docker rename).
            with self._lock:
                for table in (self._servers, self._requests):
                    if key in table:
                        table[(key[0], request["to"])] = table.pop(key)  # type: ignore[index]
            return {"ok": True}
        if request["op"] == "stop":
            handle = self.server(*key)
            with self._lock:
                self._servers.pop(key, None)
                self._requests.pop(key, None)
            if handle is not None:
                handle.stop()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {request['op']!r}"}

    def suspend(self, node: str) -> None:
        """Stop answering for ``node``'s containers until ``resume``; they stay running."""
        with self._lock:
            self._suspended.add(node)
            handles = [h for (n, _), h in self._servers.items() if n == node]
            self._servers = {k: h for k, h in self._servers.items() if k[0] != node}
        for handle in handles:
            handle.stop()

    def resume(self, node: str) -> list[str]:
        """Serve ``node``'s containers again; the errors of those that could not start."""
        with self._lock:
            self._suspended.discard(node)
            waiting = [(k, r) for k, r in self._requests.items() if k[0] == node]
        errors = []
        for key, request in waiting:
            answer = self._start(key, request)
            if not answer["ok"]:
                errors.append(f"{key[1]}: {answer['error']}")
        return errors

    def _start(self, key: Key, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._requests[key] = request
            if key[0] in self._suspended:
                return {"ok": True}  # the node is cut off: it answers once resumed
        if self.server(*key) is not None:
            return {"ok": True}
        spec = InferenceSpec(
            pool=request["pool"],
            image=request["image"],
            model=request["model"],
            host=request["host"],
            port=int(request["port"]),
        )
        try:
            handle = self.group.start(spec, on_exit=lambda h, code: self._exited(key, h, code))
        except OSError as error:
            reason = "port is already allocated" if error.errno == errno.EADDRINUSE else str(error)
            return {"ok": False, "error": reason}
        with self._lock:
            self._servers[key] = handle
        registry = state.read_json(self.root / "registry.json")
        image = request["image"]
        digest = image.rsplit("@", 1)[1] if "@" in image else registry.get("images", {}).get(image)
        broken = registry.get("broken", {}).get(digest)
        if broken is not None:  # rigstate.break_image
            handle.set_mode("broken", path=broken)
        slow = registry.get("slow", {}).get(digest)
        if slow is not None:  # rigstate.slow_image
            handle.set_mode("slow", path=slow[0], delay_s=slow[1])
        return {"ok": True}

    def _exited(self, key: Key, handle: InferenceHandle, code: int) -> None:
        with self._lock:
            # Under the name it has now (it may have been renamed since it started).
            key = next((k for k, h in self._servers.items() if h is handle), key)
            if self._servers.get(key) is handle:
                del self._servers[key]
                if code == EXIT_DIED:
                    self._requests.pop(key, None)  # crashed: a resume must not revive it
        if code != EXIT_DIED:
            return  # a stop the CLI asked for; it records the exit itself

        def crashed(doc: dict[str, Any]) -> None:
            record = doc["docker"]["containers"].get(key[1])
            if record is not None and record["State"]["Running"]:
                docker_format.mark_exited(record, code)

        with contextlib.suppress(state.RigStateError):
            state.update_node(self.root, key[0], crashed)

    def close(self) -> None:
        self._socket_server.close()
        with contextlib.suppress(FileNotFoundError):
            (self.root / SOCKET_NAME).unlink()
        self.group.close()
