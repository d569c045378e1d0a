"""A simulated GPU fleet reachable over real SSH, each node on its own loopback address.

``Fleet(["gpu-1", "gpu-2"])`` gives every node an address in a free ``127.0.B.0/24`` block
(``127.0.1.1``, ``127.0.1.2``, ... when nothing else runs), a fixed port (2222), per-fleet
host keys, a client key pair, a ``known_hosts`` file for strict verification, and the
stand-ins (``nvidia-smi``, ``dmesg``, ``journalctl``, ``docker``) first on the PATH of SSH
sessions. Tests
steer what the nodes report through ``fleet.state`` (a RigState), cut a node's network for
real (``cut``/``restore``, iptables), change its host key (``rotate_host_key``) and run
inference containers on it (``run_container``). ``stop()`` (or leaving the ``with`` block)
removes every process, rule and file it made.

As root the login user is ``relrig`` (created if missing, shell ``/bin/sh`` so a session
costs no rc files); otherwise it is the current user and network cuts are unavailable.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from reliability.ssh import SshTarget
from reliability.testing import docker_cli, firewall, loopback, sshd
from reliability.testing.engine import ContainerEngine
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.rigstate import RigState
from reliability.testing.state import NODE_ENV, STATE_ENV

DEFAULT_PORT = 2222
DEFAULT_USER = "relrig"
MAX_NODES = 254
# Stand-ins the shims run (standard library only), copied so the login user need not
# read the checkout.
STANDIN_MODULES = (
    "state",
    "gpu_fields",
    "nvidia_smi",
    "dmesg",
    "journalctl",
    "docker_images",
    "docker_format",
    "docker_cli",
    "engine_client",
)
SHIMS = {
    "nvidia-smi": "nvidia_smi",
    "dmesg": "dmesg",
    "journalctl": "journalctl",
    "docker": "docker_cli",
}


class FleetError(RuntimeError):
    """The fleet cannot be built or asked to do this here."""


@dataclass(frozen=True)
class RigNode:
    name: str
    address: str
    port: int
    pool: str | None = None


def missing_requirement() -> str | None:
    """None when a fleet can start on this machine, else what is missing."""
    if not os.access(sshd.SSHD, os.X_OK):
        return f"OpenSSH server not installed ({sshd.SSHD})"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not installed"
    return None


class Fleet:
    """Simulated nodes behind real sshd processes; a context manager."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        port: int = DEFAULT_PORT,
        gpus: int = 8,
        pools: Mapping[str, str] | None = None,
        user: str | None = None,
        base_dir: Path | None = None,
    ) -> None:
        if not names or len(set(names)) != len(names) or len(names) > MAX_NODES:
            raise FleetError(f"need 1..{MAX_NODES} distinct node names")
        self.names = list(names)
        self.port = port
        self.gpus = gpus
        self.pools = dict(pools or {})
        self.is_root = os.geteuid() == 0
        current = pwd.getpwuid(os.geteuid()).pw_name
        self.user = user or (DEFAULT_USER if self.is_root else current)
        if not self.is_root and self.user != current:
            raise FleetError(f"without root, sshd can only log in the current user ({current})")
        self._base_dir = base_dir
        self._dir: Path | None = None
        self.block = 0
        self.nodes: list[RigNode] = []
        self._sshd: list[sshd.SshdProcess] = []
        self._host_keys: dict[str, str] = {}
        self._cut: set[str] = set()
        self._block_fd: int | None = None
        self.engine: ContainerEngine | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def missing_requirement(self) -> str | None:
        """What this machine lacks for this kind of fleet (sshd here), or None."""
        return missing_requirement()

    def start(self) -> Fleet:
        """Build everything; on failure undo it and raise FleetError, SshdError or BlockError."""
        reason = self.missing_requirement()
        if reason:
            raise FleetError(reason)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.block, self._block_fd = loopback.claim_block(len(self.names), self.port)
        self._dir = Path(tempfile.mkdtemp(prefix="relrig-", dir=self._base_dir))
        self._dir.chmod(0o755)  # the login user must reach keys, shims and state
        self.nodes = [
            RigNode(name, loopback.address(self.block, i), self.port, self.pools.get(name))
            for i, name in enumerate(self.names)
        ]
        if self.is_root and self.user != "root":
            sshd.ensure_user(self.user)
        self._make_state()
        self._make_shims()
        self._make_keys()
        self.engine = ContainerEngine(self.state_dir)
        path = f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        env = {"PATH": path, STATE_ENV: str(self.state_dir)}
        for index, start in enumerate(range(0, len(self.nodes), sshd.MAX_LISTEN_SOCKETS)):
            group = [node.address for node in self.nodes[start : start + sshd.MAX_LISTEN_SOCKETS]]
            self._launch(index, group, self.dir / "keys" / "host_ed25519", env)
        self.trust_host_keys()

    def _launch(
        self, index: int, addresses: list[str], host_key: Path, env: dict[str, str]
    ) -> None:
        process = sshd.SshdProcess(
            index=index,
            addresses=addresses,
            port=self.port,
            host_key=host_key,
            run_dir=self.dir / "sshd",
            user=self.user,
            authorized_keys=self.dir / "keys" / "authorized_keys",
            session_env=env,
        )
        self._sshd.append(process)
        process.start(wait_for=[a for a in addresses if self._node_at(a).name not in self._cut])
        self._host_keys.update(dict.fromkeys(addresses, sshd.public_key(host_key)))

    def stop(self) -> None:
        """Remove every rule, server, sshd and file of this fleet; safe to call twice.

        Every step runs even if an earlier one failed; FleetError then lists what failed.
        """
        steps = [lambda name=name: self.restore(name) for name in sorted(self._cut)]
        if self.engine is not None:
            steps.append(self.engine.close)
        steps += [process.stop for process in self._sshd]
        errors: list[Exception] = []
        for step in steps:
            try:
                step()
            except Exception as error:  # keep tearing down; report at the end
                errors.append(error)
        self.engine = None
        self._sshd = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._block_fd is not None:
            os.close(self._block_fd)  # releases the address block
            self._block_fd = None
        if errors:
            raise FleetError(f"fleet teardown left problems: {errors}")

    # --- files -----------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        """The fleet's private directory (keys, shims, sshd configs, state)."""
        if self._dir is None:
            raise FleetError("the fleet is not started")
        return self._dir

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def bin_dir(self) -> Path:
        return self.dir / "bin"

    @property
    def client_key_path(self) -> Path:
        return self.dir / "keys" / "client_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.dir / "known_hosts"

    def _chown(self, path: Path) -> None:
        if self.is_root and self.user != "root":
            shutil.chown(path, self.user)

    def _make_state(self) -> None:
        self.state = RigState.create(self.state_dir)
        for node in self.nodes:
            self.state.add_node(node.name, address=node.address, pool=node.pool, gpus=self.gpus)
        # Stand-ins running as the login user replace files by rename: they need the dirs.
        self._chown(self.state_dir)
        self._chown(self.state_dir / "nodes")

    def _make_shims(self) -> None:
        lib = self.dir / "lib"
        package = lib / "reliability" / "testing"
        package.mkdir(parents=True)
        (lib / "reliability" / "__init__.py").write_text('"""Rig stand-ins (copy)."""\n')
        (package / "__init__.py").write_text('"""Rig stand-ins (copy)."""\n')
        for module in STANDIN_MODULES:
            shutil.copy(Path(__file__).with_name(f"{module}.py"), package / f"{module}.py")
        python = self._login_python(lib)
        self.bin_dir.mkdir()
        for command, module in SHIMS.items():
            shim = self.bin_dir / command
            shim.write_text(
                f"#!/bin/sh\n# rig stand-in for `{command}`: reliability/testing/{module}.py\n"
                f"PYTHONPATH='{lib}' PYTHONDONTWRITEBYTECODE=1 "
                f"exec '{python}' -S -s -m reliability.testing.{module} \"$@\"\n"
            )
            shim.chmod(0o755)

    def _login_python(self, lib: Path) -> str:
        """An interpreter the login user can run (root's pyenv often is not readable)."""
        if not self.is_root or self.user == "root":
            return sys.executable
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
            done = subprocess.run(
                [
                    runuser,
                    "-u",
                    self.user,
                    "--",
                    python,
                    "-S",
                    "-s",
                    "-c",
                    "import reliability.testing.state",
                ],
                env={"PYTHONPATH": str(lib), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                timeout=30,
            )
            if done.returncode == 0:
                return python
        raise FleetError(
            f"no Python 3 that user {self.user} can run (tried {sys.executable}, /usr/bin/python3)"
        )

    def _make_keys(self) -> None:
        keys = self.dir / "keys"
        keys.mkdir()
        (self.dir / "sshd").mkdir()
        if self.is_root:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        sshd.keygen(keys / "host_ed25519", "relrig-host")
        client = sshd.keygen(self.client_key_path, "relrig-client")
        authorized = keys / "authorized_keys"
        authorized.write_text(client + "\n")
        authorized.chmod(0o644)

    def trust_host_keys(self) -> None:
        """Write known_hosts with every node's current host key."""
        lines = [
            sshd.known_hosts_line(n.address, n.port, self._host_keys[n.address]) for n in self.nodes
        ]
        self.known_hosts_path.write_text("".join(lines))
        self.known_hosts_path.chmod(0o644)

    # --- nodes -----------------------------------------------------------------------------

    def node(self, name: str) -> RigNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def sshd_pids(self) -> list[int]:
        """Process ids of the fleet's sshd servers (one per 16 addresses, plus rotated nodes)."""
        return [p.proc.pid for p in self._sshd if p.proc is not None and p.proc.poll() is None]

    def _node_at(self, address: str) -> RigNode:
        return next(node for node in self.nodes if node.address == address)

    def env_for(self, name: str) -> dict[str, str]:
        """Environment that runs the stand-ins as ``name`` locally, without SSH."""
        return {STATE_ENV: str(self.state_dir), NODE_ENV: name}

    def ssh_client(self, name: str, *, timeout_s: float = 5.0) -> paramiko.SSHClient:
        """A paramiko client logged in to ``name``, verifying its host key strictly."""
        node = self.node(name)
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts_path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            node.address,
            node.port,
            username=self.user,
            key_filename=str(self.client_key_path),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout_s,
            banner_timeout=timeout_s,
            auth_timeout=timeout_s,
        )
        return client

    def cut(self, name: str) -> None:
        """Drop all traffic to the node's address (SSH and its containers) until restore."""
        if name not in self._cut:
            firewall.drop(self.node(name).address, loopback.rule_tag(self.block))
            self._cut.add(name)

    def restore(self, name: str) -> None:
        if name in self._cut:
            firewall.undrop(self.node(name).address, loopback.rule_tag(self.block))
            self._cut.discard(name)

    def rotate_host_key(self, name: str) -> None:
        """Serve ``name`` with a fresh host key; known_hosts keeps the old one.

        The node moves to an sshd of its own (one sshd has one host key); the others
        that shared its sshd are back before this returns.
        """
        keys = self.dir / "keys"
        key = keys / f"host_{name}_{len(list(keys.glob(f'host_{name}_*.pub')))}"
        sshd.keygen(key, f"relrig-host-{name}")
        self._own_sshd(name, key)

    def kill_sshd(self, name: str) -> None:
        """sshd of ``name`` dies (SIGKILL): new connections to its port are refused, the
        sessions already open live on (their own sshd processes), the node's containers
        keep serving. The other nodes keep theirs. ``start_sshd`` brings it back."""
        process = self._own_sshd(name)
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(sshd.STOP_TIMEOUT_S)

    def start_sshd(self, name: str) -> None:
        """Start the sshd of ``name`` again after ``kill_sshd``."""
        process = self._own_sshd(name)
        if process.proc is None or process.proc.poll() is not None:
            process.start()

    def _own_sshd(self, name: str, host_key: Path | None = None) -> sshd.SshdProcess:
        """The sshd serving ``name`` alone (with ``host_key``: a new one), moved there from
        the one it shared; the others that shared it are back before this returns."""
        address = self.node(name).address
        old = next(p for p in self._sshd if address in p.addresses)
        if old.addresses == [address] and host_key is None:
            return old
        old.stop()
        self._sshd.remove(old)
        rest = [a for a in old.addresses if a != address]
        index = max((p.index for p in self._sshd), default=old.index) + 1
        if rest:
            self._launch(index, rest, old.host_key, old.session_env)
        self._launch(index + 1, [address], host_key or old.host_key, old.session_env)
        return self._sshd[-1]

    # --- containers ------------------------------------------------------------------------

    def run_container(
        self,
        name: str,
        image: str,
        *,
        container: str = "vllm",
        port: int = 8000,
        pool: str | None = None,
        model: str = DEFAULT_MODEL,
    ) -> str:
        """``docker run -d`` an inference stand-in on ``name`` serving ``model`` (image
        pulled if needed); its id."""
        args = ["run", "-d", "--name", container, "-p", f"{port}:8000"]
        if pool or self.node(name).pool:
            args += ["--label", f"pool={pool or self.node(name).pool}"]
        args += [image, "--model", model]
        self.state.load_image(name, image)
        out, err, code = docker_cli.dispatch(self.state_dir, name, args)
        if code != 0:
            raise FleetError(f"docker run on {name} failed: {err.strip()}")
        return out.strip()

    def inference_url(self, name: str, port: int = 8000) -> str:
        return f"http://{self.node(name).address}:{port}"

    def reset(self) -> None:
        """Restore cut nodes, stop containers and put every node back to its defaults."""
        for name in sorted(self._cut):
            self.restore(name)
        for node in self.nodes:
            for container in list(self.state.read(node.name)["docker"]["containers"]):
                docker_cli.dispatch(self.state_dir, node.name, ["rm", "-f", container])
            self.state.reset_node(node.name)
        self.state.set_registry_reachable(True)

    def ssh_target(self, name: str, *, connect_timeout: float = 5.0) -> SshTarget:
        """How the collectors reach ``name``: strict host keys, the fleet's client key."""
        node = self.node(name)
        return SshTarget(
            name=name,
            host=node.address,
            port=node.port,
            user=self.user,
            key_file=self.client_key_path,
            known_hosts=self.known_hosts_path,
            connect_timeout=connect_timeout,
        )

    def config_sections(self, *, connect_timeout: float = 1.0) -> dict[str, Any]:
        """The ``ssh`` and ``nodes`` sections of a reliability config for this fleet."""
        return {
            "ssh": {
                "user": self.user,
                "key_file": str(self.client_key_path),
                "known_hosts": str(self.known_hosts_path),
                "connect_timeout": connect_timeout,
            },
            "nodes": [
                {
                    "name": n.name,
                    "address": n.address,
                    "ssh": {"port": n.port},
                    "pool": n.pool,
                    "gpus": self.gpus,
                }
                for n in self.nodes
            ],
        }

    def describe(self) -> dict[str, Any]:
        """Where everything is, for logs and for wiring a config under test."""
        return {
            "user": self.user,
            "client_key": str(self.client_key_path),
            "known_hosts": str(self.known_hosts_path),
            "state_dir": str(self.state_dir),
            "nodes": [vars(node) for node in self.nodes],
        }
