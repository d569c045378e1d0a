"""systemd's notify protocol (`Type=notify`), written out: a datagram of `KEY=VALUE` lines
to the AF_UNIX socket in `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).

`SystemdNotify.from_environ()` is None when no service manager listens (a terminal, the
tests, docker). The daemon sends `READY=1` once `/readyz` would answer 200, `WATCHDOG=1`
from an APScheduler job every half `$WATCHDOG_USEC` (so a scheduler that stops running
its jobs stops the pings, and systemd restarts the daemon), `STATUS=` lines that
`systemctl status` shows, `EXTEND_TIMEOUT_USEC=` while it waits to be ready (a database
down at boot does not fail the start while the daemon is alive), and `STOPPING=1` when
it stops. A failed send is logged once and never stops the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("reliability.sdnotify")


@dataclass
class SystemdNotify:
    """The service manager's socket, and the watchdog period it asked for (None: none)."""

    address: str
    watchdog_interval: float | None = None
    _failing: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> SystemdNotify | None:
        address = environ.get("NOTIFY_SOCKET", "")
        if not address.startswith(("/", "@")):
            return None  # unset, or a transport other than AF_UNIX (vsock: VMs)
        interval = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is for; set for another, it is not ours.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = int(usec) / 2e6  # half the timeout, as sd_watchdog_enabled(3) advises
        return cls(address, interval)

    def send(self, *fields: str) -> bool:
        """One datagram of `fields` (`READY=1`, `STATUS=...`); False if it was not sent."""
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            if not self._failing:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd at %s again", self.address)
        self._failing = False
        return True


class Heartbeat:
    """What the daemon's scheduler runs every `interval` seconds: `WATCHDOG=1`, and until
    `problems()` (the `/readyz` checks) finds none, `EXTEND_TIMEOUT_USEC` and a `STATUS=`
    saying what it waits for; then `READY=1`. After that a change of readiness is a new
    `STATUS=` line. `problems` may block (it asks the database): the daemon runs it as a
    job of its own (`check`), apart from the pings (`ping`)."""

    def __init__(
        self,
        systemd: SystemdNotify,
        problems: Callable[[], Mapping[str, str]],
        *,
        interval: float,
        ready_status: str,
    ) -> None:
        self.systemd = systemd
        self.problems = problems
        self.interval = interval
        self.ready_status = ready_status
        self.ready = False
        self._status: str | None = None

    def ping(self) -> None:
        fields = ["WATCHDOG=1"]
        if not self.ready:
            # Two periods: a missed ping is not yet a failed start, two are.
            fields.append(f"EXTEND_TIMEOUT_USEC={round(self.interval * 2e6)}")
        self.systemd.send(*fields)

    def check(self) -> None:
        problems = self.problems()
        status = (
            "not ready: " + "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
            if problems
            else self.ready_status
        )
        fields = [f"STATUS={status}"] if status != self._status else []
        if not problems and not self.ready:
            fields.insert(0, "READY=1")
        if fields and self.systemd.send(*fields):
            self._status = status
            self.ready = self.ready or not problems

    def stopping(self) -> None:
        self.systemd.send("STOPPING=1", "STATUS=stopping")
