"""Several `reliability daemon` processes on one PostgreSQL database, for the cluster's
tests and `bench/cluster.py`: HTTP endpoints that answer (or, on a port nobody listens
on, refuse), a TCP relay that cuts one daemon off the database, a config per daemon, the
daemons as real processes that can be killed, paused and resumed, and what each one
collects read back from its `/metrics`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from reliability.testing.loopback import free_port

TARGET_UP = "reliability_target_up"


class _Healthy(BaseHTTPRequestHandler):
    server: _Quiet

    def do_GET(self) -> None:
        failing = any(self.path.startswith(f"{p}/") for p in self.server.failing)
        self.send_response(503 if failing else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"no" if failing else b"ok")

    def log_message(self, *_: Any) -> None:
        pass


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True
    failing: frozenset[str] = frozenset()  # paths under these answer 503

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a probe that gave up (its deadline passed) closed its end: not news


class HealthyServer:
    """One HTTP server answering 200 on every path (many endpoints, one per path prefix),
    but 503 under the prefixes `fail` names until `heal` takes them back."""

    def __init__(self) -> None:
        self._server = _Quiet(("127.0.0.1", 0), _Healthy)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HealthyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, paths: Iterable[str]) -> None:
        self._server.failing = self._server.failing | set(paths)

    def heal(self, paths: Iterable[str]) -> None:
        self._server.failing = self._server.failing - set(paths)


def endpoints(up_url: str, up: int, down: int, *, interval: str = "2s") -> list[dict[str, Any]]:
    """`up` endpoints served by `up_url`, then `down` refused ones (`down-N`)."""
    out = [
        {
            "name": f"up-{i}",
            "url": f"{up_url}/e{i}",
            "kind": "http",
            "interval": interval,
            "timeout": "1500ms",  # a loaded test machine is not an incident
        }
        for i in range(up)
    ]
    out += [
        {
            "name": f"down-{i}",
            "url": f"http://127.0.0.1:{free_port()}",
            "kind": "http",
            "interval": interval,
            "timeout": "500ms",
        }
        for i in range(down)
    ]
    return out


# An endpoint that refuses for 4s is an incident; resolved 2s after it answers again.
ENDPOINT_DOWN = {
    "type": "target_down",
    "name": "endpoint-down",
    "collector": "api",
    "severity": "critical",
    "for": "4s",
    "resolve_after": "2s",
    "group_by": ["endpoint"],
    "title": "{endpoint}: not answering",
}


def write_config(
    path: Path,
    *,
    database_url: str,
    member_id: str,
    port: int,
    endpoints: list[dict[str, Any]],
    slack: dict[str, Any] | None = None,
    heartbeat: float = 0.5,
    lease: float = 2.0,
    nodes: list[dict[str, Any]] | None = None,
    rule: dict[str, Any] = ENDPOINT_DOWN,
) -> Path:
    config: dict[str, Any] = {
        "database": {"url": database_url},
        "http": {"listen": f"127.0.0.1:{port}"},
        "cluster": {"member_id": member_id, "heartbeat": heartbeat, "lease": lease},
        "endpoints": endpoints,
        "rules": {"builtin": False, "custom": [rule]},
        "incidents": {"reopen_window": "10m"},
    }
    if nodes:
        config["nodes"] = nodes
        config["collect"] = {"node_interval": "1s"}
    if slack is not None:
        config["slack"] = slack
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Member:
    """One daemon process; its output goes to `log` (a pipe would fill and block it)."""

    member_id: str
    config: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    # One client per member: a test polls often, and a new client per call costs a TLS
    # context (tens of milliseconds of CPU) even for plain HTTP.
    http: httpx.Client = field(default_factory=httpx.Client, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 2.0) -> httpx.Response:
        return self.http.get(self.url + path, timeout=timeout)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def collected(self, collector: str = "api") -> set[str]:
        """The targets of `collector` this daemon reports now."""
        return {
            dict(labels)["target"]
            for (name, labels), _ in self.metrics().items()
            if name == TARGET_UP and dict(labels).get("collector") == collector
        }

    def gauge(self, name: str) -> float | None:
        return self.metrics().get((name, ()))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.http.close()
        return self.proc.returncode


def start_member(
    config: Path, member_id: str, port: int, directory: Path, *, clock_offset: float = 0.0
) -> Member:
    """The daemon of `config`; `clock_offset`: on a wall clock that many seconds off
    (reliability/testing/skewed.py)."""
    log = directory / f"{member_id}.log"
    command = ["-m", "reliability"]
    if clock_offset:
        command = ["-m", "reliability.testing.skewed", f"{clock_offset:g}"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *command, "daemon", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return Member(member_id, config, port, log, proc)


def wait_for(what: str, ok: Callable[[], bool], timeout: float, members: Iterable[Member] = ()):
    """Seconds until `ok()`; TimeoutError naming `what` (and a dead member's output)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for m in members:
            if m.proc.poll() is not None:
                raise RuntimeError(f"{m.member_id} exited ({m.proc.returncode}):\n{m.output()}")
        try:
            if ok():
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    tails = "".join(
        f"\n--- {m.member_id}:\n" + "\n".join(m.output().splitlines()[-15:]) for m in members
    )
    raise TimeoutError(f"{what}: not within {timeout:g}s{tails}")


class TcpProxy:
    """A TCP relay on 127.0.0.1 to `port`, for cutting one daemon off its database:
    `cut()` closes every relayed connection and refuses new ones, `restore()` listens
    again on the same port."""

    def __init__(self, port: int) -> None:
        self._target = port
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def __enter__(self) -> TcpProxy:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def restore(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for s in [listener, *sockets]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
