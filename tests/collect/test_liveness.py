"""The liveness probe against real sockets on loopback: a listening port is up, a closed
one is down (refused) and probed again at once until it answers, and each change is
published and reported."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from reliability import catalog
from reliability.collect.liveness import LivenessProbe, LivenessSpec
from reliability.collect.snapshot import Snapshot

WAIT = 5.0


def _listener(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


@pytest.fixture
def ports() -> Iterator[tuple[socket.socket, int]]:
    """A listening socket (sshd) and a port nothing listens on (the engine, dead)."""
    up = _listener()
    closed = _listener()
    dead = closed.getsockname()[1]
    closed.close()
    yield up, dead
    up.close()


def test_open_port_is_up_closed_port_down_until_it_listens(ports) -> None:
    up, dead = ports
    snapshot = Snapshot()
    spec = LivenessSpec("gpu-1", "127.0.0.1", {"ssh": up.getsockname()[1], "serving": dead})
    probe = LivenessProbe([spec], snapshot, interval=1.0, timeout=0.3)
    changes = threading.Event()
    probe.start(on_change=changes.set)
    try:
        # The change is reported after the round's states are recorded and published.
        assert changes.wait(WAIT), "the first round reported no change"
        assert len(probe.states) == 2
        assert probe.states[("gpu-1", "ssh")].up
        serving = probe.states[("gpu-1", "serving")]
        assert not serving.up and serving.reason == "refused"
        values = {s.labels: s.value for s in snapshot.samples(catalog.NODE_LIVENESS_UP)}
        assert values == {("gpu-1", "ssh"): 1.0, ("gpu-1", "serving"): 0.0}
        (since,) = [
            s.value
            for s in snapshot.samples(catalog.NODE_LIVENESS_SINCE)
            if s.labels == ("gpu-1", "serving")
        ]
        assert since == serving.since

        changes.clear()
        engine = _listener(dead)  # the engine is back: seen within a retry, not an interval
        try:
            assert changes.wait(WAIT), "the engine coming back reported no change"
            assert probe.states[("gpu-1", "serving")].up
            assert probe.states[("gpu-1", "serving")].since > since
        finally:
            engine.close()
    finally:
        probe.stop()


def test_timeout_must_be_below_the_interval() -> None:
    with pytest.raises(ValueError, match="below the interval"):
        LivenessProbe([], Snapshot(), interval=0.5, timeout=0.5)
