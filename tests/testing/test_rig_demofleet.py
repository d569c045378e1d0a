"""The demo fleet: nodes answered over real SSH by an in-process paramiko server, with no
sshd and no root; what the daemon's SSH seam sees of it, a node going down, and cleanup."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paramiko
import pytest

from reliability.ssh import AuthFailed, HostKeyRejected, SshPool, SshTarget, Unreachable
from reliability.testing.demofleet import DemoFleet
from reliability.testing.sshserver import SshServer, generate_key

POOLS = {"gpu-1": "blue", "gpu-2": "green"}
IMAGE = "vllm/vllm-openai:v0.6.0"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    with DemoFleet([*POOLS, "spare-1"], pools=POOLS, gpus={"spare-1": 2}, base_dir=tmp_path) as f:
        yield f


@pytest.fixture
def pool() -> Iterator[SshPool]:
    ssh = SshPool(backoff_initial=0.01, backoff_max=0.01)
    yield ssh
    ssh.close()


def listening(address: str, port: int) -> bool:
    """True if something accepts connections on address:port now."""
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


def test_commands_run_with_their_streams_exit_status_and_the_node_they_reached(
    fleet: DemoFleet, pool: SshPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_SECRET", "must-not-leak")
    target = fleet.ssh_target("gpu-2")

    result = pool.run(
        target,
        'read line; echo "got $line"; echo oops >&2; '
        'echo "$SSH_CONNECTION|$RELIABILITY_RIG_NODE|${DEMO_SECRET:-unset}"; exit 3',
        timeout=5,
        stdin="hello\n",
    )

    assert result.exit_status == 3
    out = result.stdout.splitlines()
    assert out[0] == "got hello"
    connection, node, secret = out[1].split("|")
    assert connection.split()[2:] == [fleet.node("gpu-2").address, str(fleet.port)]
    assert (node, secret) == ("gpu-2", "unset")  # nothing of this process's environment
    assert result.stderr == "oops\n"


def test_each_node_reports_its_own_state_through_the_stand_ins(
    fleet: DemoFleet, pool: SshPool
) -> None:
    fleet.state.set_gpu("gpu-1", 1, {"temperature.gpu": 93})
    query = "nvidia-smi --query-gpu=index,temperature.gpu --format=csv,noheader,nounits"

    gpu1 = pool.run(fleet.ssh_target("gpu-1"), query, timeout=5).stdout.splitlines()
    spare = pool.run(fleet.ssh_target("spare-1"), query, timeout=5).stdout.splitlines()

    assert gpu1[1] == "1, 93" and len(gpu1) == 8
    assert spare == ["0, 41", "1, 41"]


def test_host_keys_are_checked_strictly_and_only_the_demo_key_logs_in(
    fleet: DemoFleet, pool: SshPool, tmp_path: Path
) -> None:
    known = fleet.known_hosts_path.read_text().splitlines()
    assert len(known) == 3 and len({line.split()[2] for line in known}) == 3  # a key per node
    target = fleet.ssh_target("gpu-1")
    other = tmp_path / "other_known_hosts"
    other.write_text(known[1].replace(known[1].split()[0], known[0].split()[0]) + "\n")
    stranger = tmp_path / "stranger"
    generate_key(stranger, "stranger")

    with pytest.raises(HostKeyRejected, match="CHANGED"):
        pool.run(_with(target, known_hosts=other), "true", timeout=5)
    with pytest.raises(AuthFailed):
        pool.run(_with(target, key_file=stranger), "true", timeout=5)
    with pytest.raises(AuthFailed):
        pool.run(_with(target, user="somebody-else"), "true", timeout=5)
    assert pool.run(target, "true", timeout=5).ok


def _with(target: SshTarget, **changes: object) -> SshTarget:
    return dataclasses.replace(target, **changes)  # type: ignore[arg-type]


def test_a_cut_node_refuses_ssh_and_its_containers_until_restored(
    fleet: DemoFleet, pool: SshPool
) -> None:
    fleet.run_container("gpu-1", IMAGE)
    url = fleet.inference_url("gpu-1")
    assert httpx.get(url + "/health").status_code == 200
    target = fleet.ssh_target("gpu-1")
    assert pool.run(target, "true", timeout=5).ok  # an open connection, dropped by the cut

    fleet.cut("gpu-1")

    started = time.monotonic()
    with pytest.raises(Unreachable):
        pool.run(target, "true", timeout=5)
    assert time.monotonic() - started < 2.0
    assert not listening(fleet.node("gpu-1").address, fleet.port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")
    assert fleet.state.container("gpu-1", "vllm")["State"]["Running"]  # still runs there
    assert pool.run(fleet.ssh_target("gpu-2"), "true", timeout=5).ok  # the others answer

    fleet.restore("gpu-1")

    time.sleep(0.05)  # past the pool's connect backoff
    ps = pool.run(target, "docker ps --format '{{.Names}} {{.Image}}'", timeout=5)
    assert ps.stdout == f"vllm {IMAGE}\n"
    assert httpx.get(url + "/health").json()["image"] == IMAGE


def test_a_container_started_on_a_cut_node_serves_once_it_is_back(fleet: DemoFleet) -> None:
    fleet.cut("gpu-2")
    fleet.run_container("gpu-2", IMAGE)  # as if started on the node's own disk
    url = fleet.inference_url("gpu-2")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")

    fleet.restore("gpu-2")

    assert httpx.get(url + "/health").status_code == 200


def test_stop_ends_running_commands_and_frees_every_address(tmp_path: Path) -> None:
    fleet = DemoFleet(["gpu-1"], base_dir=tmp_path).start()
    fleet.run_container("gpu-1", IMAGE)
    node = fleet.node("gpu-1")
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.known_hosts_path))
    client.connect(
        node.address,
        node.port,
        username=fleet.user,
        key_filename=str(fleet.client_key_path),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
    )
    _, stdout, _ = client.exec_command("echo $$; exec sleep 60")
    pid = int(stdout.readline())

    fleet.stop()

    client.close()
    assert not _alive(pid)
    assert not listening(node.address, node.port)
    assert not listening(node.address, 8000)
    assert not any(tmp_path.iterdir())  # keys, state and shims removed


def test_a_server_serves_several_nodes_and_refuses_what_it_does_not_do(tmp_path: Path) -> None:
    client_key = generate_key(tmp_path / "client", "client")
    host_key = generate_key(tmp_path / "host", "host")
    with SshServer(user="demo", authorized=[client_key]) as server:
        server.serve("n1", "127.0.0.1", _free_port(), host_key, {"PATH": "/usr/bin:/bin"})
        with pytest.raises(Exception, match="already served"):
            server.serve("n1", "127.0.0.1", _free_port(), host_key, {})
        assert server.answering("n1")
        server.stop_answering("n1")
        assert not server.answering("n1") and server.connections("n1") == 0
        server.answer_again("n1")
        assert server.answering("n1")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")
