"""Many inference stand-ins in one process: uvicorn servers sharing one asyncio loop.

A benchmark needs hundreds of endpoints; one process per endpoint would cost hundreds of
interpreters. ``serve_many`` starts them all on one loop in a background thread and hands
back a ``ServerGroup`` (a context manager) whose ``handles`` control each server::

    with serve_many([InferenceSpec(pool="blue")] * 200) as group:
        urls = [h.url for h in group.handles]
        group.handles[3].set_mode("overloaded")
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import uvicorn

from reliability.testing.inference import (
    Controls,
    InferenceSpec,
    create_app,
    listen,
    uvicorn_config,
)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
EXIT_STOPPED, EXIT_DIED = 0, 1


class InferenceHandle:
    """One running stand-in: where it listens, its controls, how it ended."""

    def __init__(
        self,
        spec: InferenceSpec,
        server: uvicorn.Server,
        port: int,
        controls: Controls,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.spec = spec
        self.host = spec.host
        self.port = port
        # Over TLS the stand-in answers only to its certificate's name (tls.py issues for
        # names that resolve here, such as localhost).
        host = spec.tls.hostname if spec.tls else spec.host
        self.url = f"{spec.scheme}://{host}:{port}"
        self.controls = controls
        self.exit_code: int | None = None
        self._server = server
        self._loop = loop
        self._done: Future[int] = Future()

    @property
    def alive(self) -> bool:
        return not self._done.done()

    def set_mode(self, mode: str, **options: Any) -> None:
        """See inference.py for modes and options (path, delay_s, retry_after_s, ...)."""
        self.controls.set_mode(mode, **options)

    def stats(self) -> dict[str, Any]:
        return self.controls.stats()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Graceful stop: no new connections, streams in progress end within a second."""
        self.controls.stopping = True
        self._server.should_exit = True
        self._done.result(timeout=timeout_s)

    def kill(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Crash it now, as the ``die`` mode does: connections reset, listener closed."""
        self._loop.call_soon_threadsafe(self._die)
        self._done.result(timeout=timeout_s)

    def _die(self) -> None:
        """Reset every connection and stop listening; runs on the group's loop."""
        for connection in list(self._server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        for listener in getattr(self._server, "servers", []):
            listener.close()
        self.exit_code = EXIT_DIED
        self._server.should_exit = True
        self._server.force_exit = True


OnExit = Callable[[InferenceHandle, int], None]


class ServerGroup:
    """Runs inference stand-ins on one asyncio loop in a daemon thread; close() stops all."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rig-inference", daemon=True
        )
        self._thread.start()
        self.handles: list[InferenceHandle] = []

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, spec: InferenceSpec, *, on_exit: OnExit | None = None) -> InferenceHandle:
        """Start one stand-in and wait until it accepts; OSError if the address is taken."""
        return self.start_many([spec], on_exit=on_exit)[0]

    def start_many(
        self, specs: Iterable[InferenceSpec], *, on_exit: OnExit | None = None
    ) -> list[InferenceHandle]:
        """Start a stand-in per spec, waiting until all accept.

        OSError if an address is taken; the ones already started stay in ``handles``,
        so close() stops them.
        """
        handles = []
        for spec in specs:
            sock = listen(spec.host, spec.port)
            controls = Controls()
            server = uvicorn.Server(uvicorn_config(create_app(spec, controls), spec.tls))
            handle = InferenceHandle(spec, server, sock.getsockname()[1], controls, self._loop)
            controls.on_die = handle._die
            # Listed at once, so close() stops it even if a later spec fails to bind.
            self.handles.append(handle)
            asyncio.run_coroutine_threadsafe(self._serve(handle, server, sock, on_exit), self._loop)
            handles.append(handle)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(h._server.started for h in handles):
            if time.monotonic() > deadline or not all(h.alive for h in handles):
                raise RuntimeError("inference stand-ins did not start")
            time.sleep(0.005)
        return handles

    async def _serve(
        self, handle: InferenceHandle, server: uvicorn.Server, sock: Any, on_exit: OnExit | None
    ) -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            code = EXIT_STOPPED if handle.exit_code is None else handle.exit_code
            handle.exit_code = code
            handle._done.set_result(code)
            if on_exit is not None:
                # Off the loop: the callback may block on state-file locks.
                self._loop.run_in_executor(None, on_exit, handle, code)

    def close(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every server (gracefully, in parallel), then the loop and its thread."""
        live = [h for h in self.handles if h.alive]
        for handle in live:
            handle.controls.stopping = True
            handle._server.should_exit = True
        deadline = time.monotonic() + timeout_s
        for handle in live:
            handle._done.result(timeout=max(deadline - time.monotonic(), 0.1))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()


def serve_many(specs: Iterable[InferenceSpec]) -> ServerGroup:
    """Start stand-ins for ``specs`` on one loop; use the result as a context manager."""
    group = ServerGroup()
    try:
        group.start_many(specs)
    except BaseException:
        group.close()
        raise
    return group
