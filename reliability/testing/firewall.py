"""Real network cuts of simulated nodes: iptables DROP rules on their loopback address.

A dropped packet makes connections hang and time out exactly as with a pulled cable,
which a killed process (connection refused at once) cannot simulate. Every rule carries a
comment naming the fleet's address block, so rules a crashed run left behind are found
and removed by the next fleet that claims the block.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

IPTABLES_TIMEOUT_S = 15.0


class FirewallError(RuntimeError):
    """iptables is unavailable (not root, not installed) or refused a rule."""


def available() -> str | None:
    """None when cuts can work here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network cuts need root (iptables)"
    if shutil.which("iptables") is None:
        return "iptables is not installed"
    return None


def _iptables(*args: str) -> str:
    reason = available()
    if reason:
        raise FirewallError(reason)
    done = subprocess.run(
        ["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=IPTABLES_TIMEOUT_S
    )
    if done.returncode != 0:
        raise FirewallError(f"iptables {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _rule(address: str, tag: str) -> list[str]:
    return ["INPUT", "-d", address, "-m", "comment", "--comment", tag, "-j", "DROP"]


def drop(address: str, tag: str) -> None:
    """Drop every packet to ``address`` (new and established connections alike)."""
    _iptables("-I", *_rule(address, tag))


def undrop(address: str, tag: str) -> None:
    _iptables("-D", *_rule(address, tag))


def remove_tagged(tag: str) -> int:
    """Delete every INPUT rule carrying ``tag``; how many there were."""
    removed = 0
    for line in _iptables("-S", "INPUT").splitlines():
        words = shlex.split(line)
        if (
            words[:2] == ["-A", "INPUT"]
            and "--comment" in words
            and words[words.index("--comment") + 1] == tag
        ):
            _iptables("-D", *words[1:])
            removed += 1
    return removed
