"""An SSH server inside this process (paramiko), for a fleet that needs no sshd and no root.

``SshServer(user=..., authorized=[client_key])`` accepts public-key logins of ``user`` only
and runs every exec request as ``/bin/sh -c COMMAND`` (a subprocess of this process, as the
current user), its stdin, stdout and stderr streamed over the channel and its exit status
sent back, the way sshd does. ``serve(name, address, port, host_key, env)`` listens for one
simulated node on its own address with its own host key; each session gets ``env`` (and
``$SSH_CONNECTION`` naming the server address) and nothing of this process's environment.

``stop_answering(name)`` is the node's network going away: its listener closes (new
connections are refused) and its open connections drop; ``answer_again(name)`` listens
again. ``close()`` ends every listener, connection and command still running.

What a client sees is the SSH protocol itself: key exchange, host-key verification against
its known_hosts, public-key authentication, channels; only shells, PTYs, port forwarding and
subsystems are refused, as no collector or runbook uses them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import paramiko

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
HANDSHAKE_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_CHUNK = 32768


class SshServerError(RuntimeError):
    """A node cannot be served (unknown name, address taken)."""


def generate_key(path: Path, comment: str) -> paramiko.Ed25519Key:
    """A new ed25519 key pair, as ``ssh-keygen -t ed25519`` writes it: ``path`` (OpenSSH
    private key, mode 600) and ``path.pub``. No ssh-keygen needed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    Path(f"{path}.pub").write_text(f"{public.decode()} {comment}\n")
    return paramiko.Ed25519Key.from_private_key_file(str(path))


@dataclass(eq=False)
class _Listener:
    """One simulated node: where it listens, its key, its sessions' environment."""

    name: str
    address: str
    port: int
    host_key: paramiko.PKey
    env: dict[str, str]
    sock: socket.socket | None = None
    transports: set[paramiko.Transport] = field(default_factory=set)


class SshServer:
    """Serves simulated nodes over SSH from this process; ``close()`` leaves nothing behind."""

    def __init__(
        self,
        *,
        user: str,
        authorized: Sequence[paramiko.PKey],
        cwd: Path | None = None,
        shell: str = SHELL,
    ) -> None:
        if not authorized:
            raise SshServerError("at least one authorized client key is needed")
        self.user = user
        self.cwd = cwd
        self.shell = shell
        self._authorized = {(k.get_name(), k.get_base64()) for k in authorized}
        self._lock = threading.Lock()
        self._listeners: dict[str, _Listener] = {}
        self._commands: set[subprocess.Popen[bytes]] = set()
        self._closed = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._accept_loop, name="ssh-accept", daemon=True)
        self._thread.start()

    def __enter__(self) -> SshServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- nodes -------------------------------------------------------------------------

    def serve(
        self,
        name: str,
        address: str,
        port: int,
        host_key: paramiko.PKey,
        env: Mapping[str, str],
    ) -> None:
        """Listen for node ``name`` on ``address:port``; OSError if the address is taken."""
        with self._lock:
            if self._closed:
                raise SshServerError("the SSH server is closed")
            if name in self._listeners:
                raise SshServerError(f"node {name} is already served")
            listener = _Listener(name, address, port, host_key, dict(env))
            self._listen(listener)
            self._listeners[name] = listener

    def stop_answering(self, name: str) -> None:
        """The node's network is gone: new connections are refused, open ones dropped."""
        with self._lock:
            listener = self._listener(name)
            self._unlisten(listener)
            transports, listener.transports = list(listener.transports), set()
        for transport in transports:
            transport.close()

    def answer_again(self, name: str) -> None:
        """Listen again for a node that stopped answering (no-op if it answers)."""
        with self._lock:
            listener = self._listener(name)
            if listener.sock is None and not self._closed:
                self._listen(listener)

    def answering(self, name: str) -> bool:
        with self._lock:
            return self._listener(name).sock is not None

    def connections(self, name: str) -> int:
        """Open SSH connections to the node (for tests)."""
        with self._lock:
            listener = self._listener(name)
            listener.transports = {t for t in listener.transports if t.is_active()}
            return len(listener.transports)

    def close(self) -> None:
        """Stop listening, drop every connection, kill every command still running."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listeners = list(self._listeners.values())
            for listener in listeners:
                self._unlisten(listener)
            commands = list(self._commands)
        for listener in listeners:
            for transport in list(listener.transports):
                transport.close()
            listener.transports.clear()
        for proc in commands:
            _kill_group(proc)
        self._wake_w.send(b"x")
        self._thread.join(STOP_TIMEOUT_S)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _listener(self, name: str) -> _Listener:
        try:
            return self._listeners[name]
        except KeyError:
            raise SshServerError(f"no node {name!r} is served") from None

    def _listen(self, listener: _Listener) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((listener.address, listener.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        listener.sock = sock
        self._selector.register(sock, selectors.EVENT_READ, listener)
        self._wake_w.send(b"x")  # select() again, with the new socket

    def _unlisten(self, listener: _Listener) -> None:
        if listener.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(listener.sock)
            listener.sock.close()
            listener.sock = None

    # --- connections ---------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                events = self._selector.select()
            except (OSError, ValueError):  # closed under us
                return
            for key, _ in events:
                if key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                listener: _Listener = key.data
                try:
                    conn, peer = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:  # closed by stop_answering, or the client went away
                    continue
                threading.Thread(
                    target=self._handshake,
                    args=(listener, conn, peer),
                    name=f"ssh-{listener.name}",
                    daemon=True,
                ).start()
            with self._lock:
                if self._closed:
                    return

    def _handshake(self, listener: _Listener, conn: socket.socket, peer: tuple[str, int]) -> None:
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(conn)
        transport.add_server_key(listener.host_key)
        transport.handshake_timeout = HANDSHAKE_TIMEOUT_S
        with self._lock:
            if self._closed or listener.sock is None:
                transport.close()
                conn.close()
                return
            # Forget the connections that ended (the set would grow with every login).
            listener.transports = {t for t in listener.transports if t.is_active()}
            listener.transports.add(transport)
        try:
            transport.start_server(server=_Interface(self, listener, peer))
        except (paramiko.SSHException, EOFError, OSError) as error:
            log.debug("ssh %s: handshake with %s failed: %s", listener.name, peer, error)
            transport.close()
            with self._lock:
                listener.transports.discard(transport)

    # --- commands ------------------------------------------------------------------------

    def _run(
        self, listener: _Listener, channel: paramiko.Channel, command: str, peer: tuple[str, int]
    ) -> None:
        """One exec request: the command's streams over the channel, then its exit status."""
        env = dict(listener.env)
        env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {listener.address} {listener.port}"
        try:
            proc = subprocess.Popen(
                [self.shell, "-c", command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self.cwd,
                start_new_session=True,  # its own group: close() ends whatever it started
            )
        except OSError as error:
            with contextlib.suppress(OSError, EOFError):
                channel.sendall_stderr(f"{self.shell}: {error}\n".encode())
                channel.send_exit_status(127)
            channel.close()
            return
        with self._lock:
            closing = self._closed
            if not closing:
                self._commands.add(proc)
        if closing:  # close() ran meanwhile: it could not see this command
            _kill_group(proc)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        pumps = [
            threading.Thread(target=_pump_out, args=(proc.stdout, channel.sendall), daemon=True),
            threading.Thread(
                target=_pump_out, args=(proc.stderr, channel.sendall_stderr), daemon=True
            ),
        ]
        feeder = threading.Thread(target=_pump_in, args=(channel, proc.stdin), daemon=True)
        for thread in [*pumps, feeder]:
            thread.start()
        code = proc.wait()
        for thread in pumps:
            thread.join()
        with self._lock:
            self._commands.discard(proc)
        # A command killed by a signal: report it as a shell does (128 + signal).
        with contextlib.suppress(OSError, EOFError):
            channel.send_exit_status(code if code >= 0 else 128 - code)
            channel.shutdown_write()
        channel.close()


class _Interface(paramiko.ServerInterface):
    """What one connection may do: log in ``user`` by key, open sessions, exec commands."""

    def __init__(self, server: SshServer, listener: _Listener, peer: tuple[str, int]) -> None:
        self.server, self.listener, self.peer = server, listener, peer

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        allowed = (key.get_name(), key.get_base64()) in self.server._authorized
        if username == self.server.user and allowed:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode("utf-8", "replace")
        threading.Thread(
            target=self.server._run,
            args=(self.listener, channel, text, self.peer),
            name=f"ssh-exec-{self.listener.name}",
            daemon=True,
        ).start()
        return True


def _pump_out(stream: IO[bytes], send: Callable[[bytes], object]) -> None:
    """Copy a command's output to the channel until it ends; a closed channel stops it."""
    try:
        while chunk := os.read(stream.fileno(), _CHUNK):
            send(chunk)
    except (OSError, EOFError):
        pass  # the client went away; the command gets SIGPIPE or finishes on its own
    finally:
        stream.close()


def _pump_in(channel: paramiko.Channel, stdin: IO[bytes]) -> None:
    """Copy what the client sends to the command's stdin; its EOF closes stdin."""
    try:
        while data := channel.recv(_CHUNK):
            stdin.write(data)
            stdin.flush()
    except (OSError, EOFError):
        pass  # the command stopped reading (broken pipe) or the channel closed
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT_S)
