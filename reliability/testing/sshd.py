"""OpenSSH servers for the simulated fleet: keys, one config per process, start and stop.

One sshd process listens on up to 16 node addresses (OpenSSH's MAX_LISTEN_SOCKS), so a
50-node fleet runs 4 of them. Every session gets the stand-ins first on its PATH and the
state directory in its environment through ``SetEnv``; ``$SSH_CONNECTION`` then tells the
stand-ins which node was reached.
"""

from __future__ import annotations

import contextlib
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
MAX_LISTEN_SOCKETS = 16
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class SshdError(RuntimeError):
    """The SSH side of the rig could not be set up (login user, sshd); says why."""


def keygen(path: Path, comment: str) -> str:
    """Create an ed25519 key pair at ``path`` (and ``.pub``); return ``"type base64"``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return public_key(path)


def public_key(private_key: Path) -> str:
    """``"type base64"`` of the key pair whose private half is ``private_key``."""
    # ssh-keygen appends ".pub"; with_suffix would cut a name that holds a dot.
    return " ".join(Path(f"{private_key}.pub").read_text().split()[:2])


def ensure_user(name: str) -> None:
    """Create the login user if missing, with a password field sshd accepts (root only)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        done = subprocess.run(
            ["useradd", "-m", "-s", "/bin/sh", name], capture_output=True, text=True, timeout=30
        )
        if done.returncode not in (0, 9):  # 9: created meanwhile by a parallel run
            raise SshdError(f"useradd {name}: {done.stderr.strip()}") from None
    # sshd with UsePAM no treats a locked account ("!" in shadow) as an invalid user.
    shadow = Path("/etc/shadow").read_text().splitlines()
    if any(line.startswith(f"{name}:!") for line in shadow):
        subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True, timeout=30)


def known_hosts_line(address: str, port: int, public_key: str) -> str:
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {public_key}\n"


def _pdeathsig_prefix() -> list[str]:
    # If the test process is killed outright, its sshd processes die with it instead of
    # holding the node addresses. (setpriv sets PR_SET_PDEATHSIG, which survives exec.)
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


@dataclass
class SshdProcess:
    """One ``sshd -D`` serving ``addresses`` on ``port`` with one host key."""

    index: int
    addresses: list[str]
    port: int
    host_key: Path
    run_dir: Path
    user: str
    authorized_keys: Path
    session_env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.run_dir / f"sshd-{self.index}.conf"

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"sshd-{self.index}.log"

    def config(self) -> str:
        if len(self.addresses) > MAX_LISTEN_SOCKETS:
            raise SshdError(f"one sshd serves at most {MAX_LISTEN_SOCKETS} addresses")
        listen = "".join(f"ListenAddress {address}:{self.port}\n" for address in self.addresses)
        env = " ".join(f"{key}={value}" for key, value in self.session_env.items())
        return (
            listen
            + f"HostKey {self.host_key}\n"
            + f"PidFile {self.run_dir / f'sshd-{self.index}.pid'}\n"
            + f"AuthorizedKeysFile {self.authorized_keys}\n"
            + f"AllowUsers {self.user}\n"
            + f"SetEnv {env}\n"
            + "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            + "PubkeyAuthentication yes\n"
            + "UsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\nPrintLastLog no\n"
            # A benchmark opens dozens of connections at once; the default (10:30:100)
            # would drop some of them before authentication.
            + "MaxStartups 1024\nMaxSessions 128\nLogLevel ERROR\n"
            + "Subsystem sftp internal-sftp\n"
        )

    def start(self, *, wait_for: list[str] | None = None) -> None:
        """Start and wait until every address in ``wait_for`` (default: all) answers."""
        self.config_path.write_text(self.config())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*_pdeathsig_prefix(), SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        for address in self.addresses if wait_for is None else wait_for:
            while not self._answers(address):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.log_path.read_text()
                    raise SshdError(f"sshd for {address}:{self.port} did not start:\n{log}")
                time.sleep(0.02)

    def _answers(self, address: str) -> bool:
        try:
            with socket.create_connection((address, self.port), timeout=1.0) as sock:
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT_S)
