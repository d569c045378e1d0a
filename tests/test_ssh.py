"""The SSH seam against real OpenSSH servers on the rig's loopback fleet.

Every test verifies host keys strictly against the fleet's known_hosts, as production does.
Network cuts are real iptables DROP rules, so a cut node hangs like a pulled cable.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reliability.ssh import (
    AuthFailed,
    CommandResult,
    CommandTimeout,
    HostKeyRejected,
    SshError,
    SshPool,
    SshTarget,
    Unreachable,
)
from reliability.testing import firewall, sshd
from reliability.testing.fleet import Fleet
from reliability.testing.services import service_missing

pytestmark = pytest.mark.rig

CUT_TIMEOUT = 1.5
MARGIN = 0.5  # scheduling slack on a loaded 2-core machine, well under one timeout


@pytest.fixture
def pool() -> Iterator[SshPool]:
    ssh = SshPool(backoff_initial=0.2, backoff_max=0.5)
    yield ssh
    ssh.close()


@pytest.fixture
def needs_firewall() -> None:
    reason = firewall.available()
    if reason:
        service_missing(reason)


def target(fleet: Fleet, name: str, **changes: object) -> SshTarget:
    plain = fleet.ssh_target(name, connect_timeout=CUT_TIMEOUT)
    return dataclasses.replace(plain, **changes)  # type: ignore[arg-type]


def client_port(result: CommandResult) -> str:
    """The client's source port as sshd saw it: equal ports mean one TCP connection."""
    return result.stdout.split()[1]


def fingerprint(public_key_file: Path) -> str:
    """OpenSSH's own SHA256 fingerprint of a key: what an operator compares out of band."""
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(public_key_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout.split()[1]


def test_runs_a_command_and_returns_status_and_both_streams(rig: Fleet, pool: SshPool) -> None:
    result = pool.run(target(rig, "gpu-1"), "echo out; echo err >&2; exit 3", timeout=5)

    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert 0 < result.duration < 5


def test_runner_is_bound_to_its_node(rig: Fleet, pool: SshPool) -> None:
    result = pool.runner(target(rig, "gpu-2")).run("echo $SSH_CONNECTION", timeout=5)
    assert result.ok and result.stdout.split()[2] == rig.node("gpu-2").address


def test_one_connection_is_reused_across_calls_and_threads(rig: Fleet, pool: SshPool) -> None:
    gpu1 = target(rig, "gpu-1")
    results: list[CommandResult] = []

    def call() -> None:
        results.append(pool.run(gpu1, "echo $SSH_CONNECTION", timeout=10))

    call()
    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)

    assert len(results) == 7
    assert {client_port(r) for r in results} == {client_port(results[0])}


def test_unknown_host_key_is_rejected_with_the_fix(
    rig: Fleet, pool: SshPool, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    gpu1 = target(rig, "gpu-1", known_hosts=known_hosts)
    others = [x for x in rig.known_hosts_path.read_text().splitlines() if f"[{gpu1.host}]" not in x]
    known_hosts.write_text("\n".join(others) + "\n")

    with pytest.raises(HostKeyRejected) as caught:
        pool.run(gpu1, "true", timeout=5)

    error = caught.value
    assert (error.reason, error.retryable) == ("host_key", False)
    assert f"[{gpu1.host}]:{gpu1.port}" in str(error)
    assert fingerprint(rig.dir / "keys" / "host_ed25519.pub") in str(error)
    assert f"ssh-keyscan -p {gpu1.port} {gpu1.host} >> {known_hosts}" in str(error)
    # Trust is never added on the fly; the next call refuses at once, without a new handshake.
    assert f"[{gpu1.host}]" not in known_hosts.read_text()
    with pytest.raises(HostKeyRejected, match="not retried"):
        pool.run(gpu1, "true", timeout=5)


def test_changed_host_key_is_rejected(
    rig_fleet_factory: Callable[..., Fleet], pool: SshPool
) -> None:
    fleet = rig_fleet_factory(["gpu-1", "gpu-2"], gpus=1)  # of its own: rotation is not reset
    gpu1 = target(fleet, "gpu-1")
    old = fingerprint(fleet.dir / "keys" / "host_ed25519.pub")
    fleet.rotate_host_key("gpu-1")

    with pytest.raises(HostKeyRejected) as caught:
        pool.run(gpu1, "true", timeout=5)

    assert "CHANGED" in str(caught.value)
    assert old in str(caught.value)
    assert str(fleet.known_hosts_path) in str(caught.value)
    assert not caught.value.retryable
    # The other node, on the same known_hosts, is unaffected.
    assert pool.run(target(fleet, "gpu-2"), "true", timeout=5).ok


def test_wrong_client_key_is_auth_failed(rig: Fleet, pool: SshPool, tmp_path: Path) -> None:
    sshd.keygen(tmp_path / "stranger", "not-authorized")
    with pytest.raises(AuthFailed) as caught:
        pool.run(target(rig, "gpu-1", key_file=tmp_path / "stranger"), "true", timeout=5)
    assert (caught.value.reason, caught.value.retryable) == ("auth", False)

    with pytest.raises(AuthFailed, match="cannot read key file"):
        pool.run(target(rig, "gpu-2", key_file=tmp_path / "absent"), "true", timeout=5)


def test_slow_command_times_out_and_the_connection_stays_usable(rig: Fleet, pool: SshPool) -> None:
    gpu1 = target(rig, "gpu-1")
    before = pool.run(gpu1, "echo $SSH_CONNECTION", timeout=5)
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        pool.run(gpu1, "sleep 10", timeout=1.0)

    assert time.monotonic() - started < 1.0 + MARGIN
    assert caught.value.retryable
    assert client_port(pool.run(gpu1, "echo $SSH_CONNECTION", timeout=5)) == client_port(before)


def live_processes(pool: SshPool, node: SshTarget, args: str) -> list[str]:
    """The processes on `node` (not zombies: dead, awaiting their parent) whose command
    line is exactly `args`, as `ps` on the node lists them."""
    listed = pool.run(node, "ps -e -o stat= -o args=", timeout=5).stdout.splitlines()
    return [line for line in listed if line.split(None, 1)[1:] == [args] and line[0] != "Z"]


def test_a_command_past_its_deadline_is_ended_on_the_node_with_what_it_started(
    rig: Fleet, pool: SshPool
) -> None:
    gpu1 = target(rig, "gpu-1")
    with pytest.raises(CommandTimeout, match=r"process group \d+ was ended on the node"):
        pool.run(gpu1, "sleep 6011 & sleep 6012; echo never", timeout=1.0)

    assert live_processes(pool, gpu1, "sleep 6011") == []
    assert live_processes(pool, gpu1, "sleep 6012") == []
    # What a command writes to stderr is its own: the group's name is taken off.
    assert pool.run(gpu1, "echo out; echo err >&2", timeout=5).stderr == "err\n"


def test_output_is_capped(rig: Fleet) -> None:
    pool = SshPool(max_output_bytes=1000)
    try:
        result = pool.run(target(rig, "gpu-1"), "head -c 300000 /dev/zero", timeout=10)
    finally:
        pool.close()
    assert result.ok and len(result.stdout) == 1000


def test_connection_dropped_by_the_server_is_replaced(rig: Fleet, pool: SshPool) -> None:
    gpu1 = target(rig, "gpu-1")
    first = pool.run(gpu1, "echo $SSH_CONNECTION", timeout=5)
    # The shell runs under its process group's leader, under setsid, whose parent is sshd's
    # process for this connection: killing that ends the connection, and a command cut off
    # with its connection has no result, only an error.
    sshd = "$(ps -o ppid= -p $(ps -o ppid= -p $PPID))"
    with pytest.raises(Unreachable, match="lost while the command ran"):
        pool.run(gpu1, f"kill {sshd}; sleep 5", timeout=5)

    again = pool.run(gpu1, "echo $SSH_CONNECTION", timeout=5)
    assert again.ok and client_port(again) != client_port(first)


def test_cut_node_fails_within_the_timeout_while_another_answers(
    rig: Fleet, pool: SshPool, needs_firewall: None
) -> None:
    gpu1, gpu2 = target(rig, "gpu-1"), target(rig, "gpu-2")
    pool.run(gpu1, "true", timeout=5)  # an established connection: the cut hits it mid-life
    rig.cut("gpu-1")
    other: list[float] = []

    def ask_gpu2() -> None:
        t0 = time.monotonic()
        pool.run(gpu2, "true", timeout=5)
        other.append(time.monotonic() - t0)

    helper = threading.Thread(target=ask_gpu2)
    started = time.monotonic()
    helper.start()
    with pytest.raises((CommandTimeout, Unreachable)) as caught:
        pool.run(gpu1, "true", timeout=CUT_TIMEOUT)
    elapsed = time.monotonic() - started
    helper.join(timeout=10)

    assert elapsed < CUT_TIMEOUT + MARGIN
    assert caught.value.retryable
    assert other and other[0] < 1.0  # gpu-2 never waited on gpu-1

    # A fresh connection to the cut node hangs on TCP connect: also bounded, Unreachable.
    started = time.monotonic()
    with pytest.raises(Unreachable):
        pool.run(gpu1, "true", timeout=CUT_TIMEOUT)
    assert time.monotonic() - started < CUT_TIMEOUT + MARGIN


def test_failed_node_backs_off_then_reconnects_after_restore(
    rig: Fleet, pool: SshPool, needs_firewall: None
) -> None:
    gpu1 = target(rig, "gpu-1")
    rig.cut("gpu-1")
    with pytest.raises(Unreachable):
        pool.run(gpu1, "true", timeout=CUT_TIMEOUT)

    # Within its backoff the node fails at once instead of eating another timeout.
    started = time.monotonic()
    with pytest.raises(Unreachable, match="not retried"):
        pool.run(gpu1, "true", timeout=CUT_TIMEOUT)
    assert time.monotonic() - started < 0.1

    rig.restore("gpu-1")
    result = None
    deadline = time.monotonic() + 5  # backoff_max is 0.5 s
    while result is None and time.monotonic() < deadline:
        try:
            result = pool.run(gpu1, "true", timeout=CUT_TIMEOUT)
        except Unreachable:
            time.sleep(0.1)
    assert result is not None and result.ok


def test_closed_pool_refuses_work(rig: Fleet) -> None:
    pool = SshPool()
    gpu1 = target(rig, "gpu-1")
    assert pool.run(gpu1, "true", timeout=5).ok
    pool.close()
    with pytest.raises(SshError, match="closed"):
        pool.run(gpu1, "true", timeout=5)
