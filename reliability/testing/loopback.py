"""Address blocks for simulated fleets: each fleet owns one free ``127.0.B.0/24``.

Every node gets its own loopback address (the whole 127/8 is local, no namespace needed),
so a firewall rule can cut one node. Fleets of several test runs on one machine (other
checkouts, parallel sessions) must not collide: a fleet holds an flock on
``/tmp/relrig-locks/block-B.lock`` for its lifetime (released by the kernel if the
process dies) and takes a block only if all its addresses are free on the SSH port.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from pathlib import Path

from reliability.testing import firewall

LOCK_DIR = Path(tempfile.gettempdir()) / "relrig-locks"


class BlockError(RuntimeError):
    """No free address block."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the kernel's pick), for a server a test starts."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def address(block: int, index: int) -> str:
    """The address of node ``index`` (0-based) in ``block``."""
    return f"127.0.{block}.{index + 1}"


def claim_block(count: int, port: int) -> tuple[int, int]:
    """Lock a free 127.0.B.0/24 block whose first ``count`` addresses can take ``port``."""
    LOCK_DIR.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):
        LOCK_DIR.chmod(0o1777)  # shared by every user's fleets, like /tmp
    for block in range(1, 256):
        fd = os.open(LOCK_DIR / f"block-{block}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if firewall.available() is None:
            firewall.remove_tagged(rule_tag(block))  # left by a run that was killed
        if all(can_bind(address(block, i), port) for i in range(count)):
            return block, fd
        os.close(fd)
    raise BlockError(f"no free loopback block for {count} nodes on port {port}")


def can_bind(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def rule_tag(block: int) -> str:
    return f"relrig:{block}"
