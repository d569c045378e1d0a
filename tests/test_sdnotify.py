"""systemd's notify protocol as systemd sees it: the test binds the AF_UNIX datagram
socket systemd would (`$NOTIFY_SOCKET`) and reads what a real daemon process sends.

READY=1 comes once /readyz answers 200 (not while the database is missing: the start
timeout is extended instead, with the reason in STATUS=), WATCHDOG=1 every half
`$WATCHDOG_USEC` from the scheduler (stuck workers stop it), STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from apscheduler.schedulers.background import BackgroundScheduler

from reliability.sdnotify import Heartbeat, SystemdNotify
from reliability.testing.loopback import free_port

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s


class NotifySocket:
    """What systemd listens on: every datagram received, with its arrival time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, list[str]]] = []

    def fields(self) -> list[str]:
        return [f for _, fields in self.received for f in fields]

    def wait_for(self, field: str, timeout: float = 20.0) -> float:
        """Read datagrams until one holds `field`; the time it arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.received.append((now, data.decode().split("\n")))
            if field in self.received[-1][1]:
                return now
        pytest.fail(f"{field} not received within {timeout}s; got {self.fields()}")

    def drain(self) -> list[str]:
        """The fields of the datagrams waiting now."""
        self.sock.setblocking(False)
        got = []
        try:
            while True:
                data = self.sock.recv(4096)
                self.received.append((time.monotonic(), data.decode().split("\n")))
                got += self.received[-1][1]
        except BlockingIOError:
            return got
        finally:
            self.sock.settimeout(0.2)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A path short enough for sun_path (108 bytes), as systemd's /run/systemd/notify is.
    directory = tempfile.mkdtemp(prefix="sdnotify-")
    listener = NotifySocket(f"{directory}/notify")
    yield listener
    listener.close()
    os.unlink(listener.address)
    os.rmdir(directory)


def _daemon(tmp_path: Path, notify: NotifySocket, port: int) -> subprocess.Popen[str]:
    config = tmp_path / "reliability.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'reliability.db'}"},
                "http": {"listen": f"127.0.0.1:{port}"},
            }
        )
    )
    env = os.environ | {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    return subprocess.Popen(
        [sys.executable, "-m", "reliability", "daemon", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _migrate(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reliability", "db", "upgrade", "-c", str(tmp_path / "r.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _write_migration_config(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        yaml.safe_dump({"database": {"url": f"sqlite:///{tmp_path / 'reliability.db'}"}})
    )


@pytest.mark.timeout(90)
def test_ready_after_readyz_watchdog_pings_and_stopping_on_sigterm(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    _write_migration_config(tmp_path)
    _migrate(tmp_path)
    port = free_port()
    daemon = _daemon(tmp_path, notify_socket, port)
    try:
        notify_socket.wait_for("READY=1", timeout=60)  # a loaded host starts slowly
        # systemd now starts the units that wait for this one: they find it ready.
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        assert ready.status_code == 200, ready.text
        status = [f for f in notify_socket.fields() if f.startswith("STATUS=")]
        assert status[-1].startswith("STATUS=ready: "), status

        notify_socket.drain()
        time.sleep(3)
        # Every half WATCHDOG_USEC (0.5 s): 6 in 3 s, with room for a loaded machine.
        assert 3 <= notify_socket.drain().count("WATCHDOG=1") <= 8

        daemon.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1", timeout=10)
        assert daemon.wait(15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        out = daemon.communicate(timeout=10)[0]
    assert "cannot notify systemd" not in out


@pytest.mark.timeout(90)
def test_a_daemon_waiting_for_its_database_extends_the_start_and_says_why(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    port = free_port()
    daemon = _daemon(tmp_path, notify_socket, port)  # no schema yet: not ready
    try:
        notify_socket.wait_for("WATCHDOG=1")
        waiting = notify_socket.wait_for("EXTEND_TIMEOUT_USEC=1000000")
        status = [f for f in notify_socket.fields() if f.startswith("STATUS=")]
        assert any("not ready: database:" in s and "db upgrade" in s for s in status), status
        assert "READY=1" not in notify_socket.fields()

        _write_migration_config(tmp_path)
        _migrate(tmp_path)
        ready = notify_socket.wait_for("READY=1", timeout=60)
        assert ready > waiting
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        # Ready: the pings no longer extend the start (one in flight may still).
        notify_socket.wait_for("WATCHDOG=1")
        notify_socket.wait_for("WATCHDOG=1")
        count = len(notify_socket.fields())
        notify_socket.wait_for("WATCHDOG=1")
        notify_socket.wait_for("WATCHDOG=1")
        assert not any(f.startswith("EXTEND") for f in notify_socket.fields()[count:])
    finally:
        daemon.terminate()
        daemon.communicate(timeout=15)


# --- the protocol and the scheduler, in process ------------------------------------------------


def test_an_abstract_socket_is_reached_and_the_watchdog_period_is_half_the_timeout() -> None:
    listener = NotifySocket(f"@reliability-test-{secrets.token_hex(4)}")
    try:
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "30000000"}
        systemd = SystemdNotify.from_environ(env)
        assert systemd is not None and systemd.watchdog_interval == 15.0
        assert systemd.send("READY=1", "STATUS=ready")
        listener.wait_for("READY=1", timeout=2)
        assert listener.fields() == ["READY=1", "STATUS=ready"]
    finally:
        listener.close()


def test_no_socket_no_notifier_and_a_watchdog_for_another_pid_is_not_ours() -> None:
    assert SystemdNotify.from_environ({}) is None
    assert SystemdNotify.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    other = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    assert SystemdNotify.from_environ(other) == SystemdNotify("/run/x", None)
    mine = other | {"WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotify.from_environ(mine) == SystemdNotify("/run/x", 1.0)


def test_a_socket_gone_is_logged_once_and_never_raises(tmp_path: Path, caplog) -> None:
    systemd = SystemdNotify(str(tmp_path / "gone"))
    assert not systemd.send("WATCHDOG=1")
    assert not systemd.send("WATCHDOG=1")
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1


@pytest.mark.timeout(30)
def test_a_scheduler_whose_workers_are_stuck_stops_the_pings(
    notify_socket: NotifySocket,
) -> None:
    """The pings are a job like the collectors': when every worker hangs, none is sent,
    and systemd's watchdog restarts the daemon."""
    systemd = SystemdNotify(notify_socket.address, 0.2)
    heartbeat = Heartbeat(systemd, dict, interval=0.2, ready_status="ready")
    scheduler = BackgroundScheduler(
        executors={"default": {"type": "threadpool", "max_workers": 2}},
        job_defaults={"max_instances": 1, "coalesce": True},
    )
    scheduler.add_job(heartbeat.ping, "interval", seconds=0.2, misfire_grace_time=None)
    release = threading.Event()
    scheduler.start()
    try:
        notify_socket.wait_for("WATCHDOG=1", timeout=5)
        notify_socket.wait_for("WATCHDOG=1", timeout=5)
        for _ in range(2):  # every worker taken by a job that never returns
            scheduler.add_job(release.wait)
        time.sleep(0.5)
        count = len(notify_socket.fields())
        with pytest.raises(pytest.fail.Exception):
            notify_socket.wait_for("WATCHDOG=1", timeout=2)
        assert len(notify_socket.fields()) == count
        release.set()
        notify_socket.wait_for("WATCHDOG=1", timeout=5)  # workers back: pings again
    finally:
        release.set()
        scheduler.shutdown(wait=False)
