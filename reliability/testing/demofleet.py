"""The rig's fleet with no sshd and no root: each node answered over SSH by this process.

``DemoFleet(["gpu-1", "gpu-2"], pools={...})`` is a ``Fleet`` (same nodes on their own
loopback addresses, same state, stand-ins, container engine, ``config_sections``) whose
nodes are served by ``SshServer`` (paramiko, in this process) instead of OpenSSH: an
ed25519 host key per node, written to a known_hosts file the client verifies strictly, a
generated client key, and every command run as the current user with the stand-ins first
on its PATH. Nothing needs root or a system package, and binding 127.0.0.0/8 addresses
needs no privilege on Linux.

``cut(name)`` makes the node stop answering: SSH refuses connections and drops the open
ones, and the node's containers stop listening (they still run in the node state, as on a
node whose network is gone); ``restore(name)`` brings both back. A refused connection is
not the silent drop of a firewall cut (``Fleet.cut``, root only): both end in the same
"unreachable" for the collectors and runbooks, the refusal only sooner.
"""

from __future__ import annotations

import os
import pwd
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import paramiko

from reliability.testing import loopback
from reliability.testing.engine import ContainerEngine
from reliability.testing.fleet import DEFAULT_PORT, Fleet, FleetError, RigNode
from reliability.testing.rigstate import RigState
from reliability.testing.sshserver import SshServer, generate_key
from reliability.testing.state import NODE_ENV, STATE_ENV

SESSION_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


class DemoFleet(Fleet):
    """Simulated nodes served over SSH by this process; a context manager."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        port: int = DEFAULT_PORT,
        gpus: int | Mapping[str, int] = 8,
        pools: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        per_node = dict(gpus) if isinstance(gpus, Mapping) else {}
        default = gpus if isinstance(gpus, int) else 8
        super().__init__(
            names, port=port, gpus=default, pools=pools, user=_current_user(), base_dir=base_dir
        )
        self.node_gpus = {name: per_node.get(name, default) for name in self.names}
        self.server: SshServer | None = None

    def missing_requirement(self) -> str | None:
        return None  # only Python: the SSH servers are this process's own

    def _start(self) -> None:
        self.block, self._block_fd = loopback.claim_block(len(self.names), self.port)
        self._dir = Path(tempfile.mkdtemp(prefix="relrig-", dir=self._base_dir))
        self.nodes = [
            RigNode(name, loopback.address(self.block, i), self.port, self.pools.get(name))
            for i, name in enumerate(self.names)
        ]
        self.state = RigState.create(self.state_dir)
        for node in self.nodes:
            self.state.add_node(
                node.name, address=node.address, pool=node.pool, gpus=self.node_gpus[node.name]
            )
        self._make_shims()
        host_keys = self._make_demo_keys()
        self.engine = ContainerEngine(self.state_dir)
        client = paramiko.Ed25519Key.from_private_key_file(str(self.client_key_path))
        self.server = SshServer(user=self.user, authorized=[client], cwd=self.dir)
        base_env = {
            "PATH": f"{self.bin_dir}:{SESSION_PATH}",
            STATE_ENV: str(self.state_dir),
            "USER": self.user,
            "LOGNAME": self.user,
            "HOME": str(self.dir),
            "SHELL": "/bin/sh",
            "LANG": "C.UTF-8",
        }
        for node in self.nodes:
            env = {**base_env, NODE_ENV: node.name}
            self.server.serve(node.name, node.address, node.port, host_keys[node.name], env)
        self.trust_host_keys()

    def _make_demo_keys(self) -> dict[str, paramiko.PKey]:
        """A client key pair and one host key per node; known_hosts gets the host keys."""
        keys = self.dir / "keys"
        keys.mkdir()
        generate_key(self.client_key_path, "reliability-demo-client")
        host_keys: dict[str, paramiko.PKey] = {}
        for node in self.nodes:
            key = generate_key(keys / f"host_{node.name}", f"reliability-demo-{node.name}")
            host_keys[node.name] = key
            self._host_keys[node.address] = f"{key.get_name()} {key.get_base64()}"
        return host_keys

    def stop(self) -> None:
        """Stop the SSH server, the containers and remove every file; safe to call twice."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self._cut.clear()  # nothing to restore: the server is gone
        super().stop()

    # --- nodes -----------------------------------------------------------------------------

    def cut(self, name: str) -> None:
        """The node stops answering: SSH and its containers' ports, until ``restore``."""
        if self.server is None or self.engine is None:
            raise FleetError("the fleet is not started")
        node = self.node(name)
        if name not in self._cut:
            self.server.stop_answering(node.name)
            self.engine.suspend(node.name)
            self._cut.add(name)

    def restore(self, name: str) -> None:
        if self.server is None or self.engine is None:
            raise FleetError("the fleet is not started")
        if name in self._cut:
            self.server.answer_again(name)
            errors = self.engine.resume(name)
            self._cut.discard(name)
            if errors:
                raise FleetError(f"{name}: containers did not come back: {'; '.join(errors)}")

    def is_cut(self, name: str) -> bool:
        return name in self._cut

    def rotate_host_key(self, name: str) -> None:
        raise FleetError("the demo fleet keeps its host keys (use Fleet for host-key tests)")

    def config_sections(self, *, connect_timeout: float = 1.0) -> dict[str, Any]:
        sections = super().config_sections(connect_timeout=connect_timeout)
        for node in sections["nodes"]:
            node["gpus"] = self.node_gpus[node["name"]]
        return sections


def _current_user() -> str:
    # Not getpass: $USER may name someone else after su or setpriv.
    return pwd.getpwuid(os.geteuid()).pw_name
