"""The SSH fleet: real sshd per loopback address, stand-ins on the PATH, real network cuts."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import paramiko
import pytest

from reliability.testing import firewall
from reliability.testing.fleet import Fleet
from reliability.testing.services import service_missing

pytestmark = pytest.mark.rig

QUERY = "index,uuid,pci.bus_id,temperature.gpu,utilization.gpu,power.draw,memory.used"


def run(fleet: Fleet, node: str, command: str) -> tuple[str, str, int]:
    client = fleet.ssh_client(node)
    try:
        _, stdout, stderr = client.exec_command(command, timeout=10)
        out, err = stdout.read().decode(), stderr.read().decode()
        return out, err, stdout.channel.recv_exit_status()
    finally:
        client.close()


def query(fleet: Fleet, node: str) -> tuple[list[list[str]], int]:
    out, _, code = run(fleet, node, f"nvidia-smi --query-gpu={QUERY} --format=csv,noheader,nounits")
    return [row for row in csv.reader(io.StringIO(out), skipinitialspace=True)], code


def test_nodes_have_their_own_loopback_address_and_strict_host_keys(rig: Fleet) -> None:
    addresses = [node.address for node in rig.nodes]

    assert len(set(addresses)) == 3
    assert all(address.startswith("127.0.") for address in addresses)
    known = rig.known_hosts_path.read_text().splitlines()
    assert [line.split()[0] for line in known] == [f"[{a}]:{rig.port}" for a in addresses]
    assert {line.split()[1] for line in known} == {"ssh-ed25519"}


def test_nvidia_smi_over_ssh_reports_the_node_state(rig: Fleet) -> None:
    rig.state.set_gpu(
        "gpu-2",
        5,
        {"temperature.gpu": 88, "utilization.gpu": 96, "power.draw": 655.25, "memory.used": 71234},
    )

    table, code = query(rig, "gpu-2")

    assert code == 0
    assert len(table) == 8
    for slot, row in enumerate(table):
        stored = rig.state.gpu("gpu-2", slot)
        assert row == [
            str(slot),
            stored["uuid"],
            stored["pci.bus_id"],
            str(stored["temperature.gpu"]),
            str(stored["utilization.gpu"]),
            f"{stored['power.draw']:.2f}",
            str(stored["memory.used"]),
        ]
    assert table[5][3:] == ["88", "96", "655.25", "71234"]
    # The same stand-in on another node reads that node's own state.
    assert query(rig, "gpu-1")[0][5][3] == "41"


def test_missing_and_lost_gpus_change_the_output_as_on_real_hardware(rig: Fleet) -> None:
    rig.state.set_gpu_status("gpu-1", 7, "missing")
    rig.state.set_gpu_status("gpu-1", 3, "lost")

    out, _, code = run(
        rig, "gpu-1", "nvidia-smi --query-gpu=index,pci.bus_id --format=csv,noheader"
    )

    lines = out.splitlines()
    assert code == 15
    assert len(lines) == 7
    assert lines[3] == (
        "Unable to determine the device handle for GPU3: 0000:5D:00.0: "
        "GPU is lost.  Reboot the system to recover this GPU"
    )


def test_dmesg_over_ssh_shows_an_added_xid(rig: Fleet) -> None:
    line = rig.state.add_xid("gpu-3", 0, 79)

    out, _, code = run(rig, "gpu-3", "dmesg --time-format iso")

    assert code == 0
    assert out.splitlines()[-1].endswith(" " + line)
    assert "Xid" not in run(rig, "gpu-1", "dmesg --time-format iso")[0]


def test_docker_round_trip_over_ssh_serves_inference_on_the_node_address(rig: Fleet) -> None:
    image = "vllm/vllm-openai:v0.6.0"
    digest = rig.state.publish_image(image)

    created, notes, code = run(
        rig, "gpu-1", f"docker run -d --name vllm -p 8000:8000 {image} --model org/model"
    )
    state = json.loads(run(rig, "gpu-1", "docker inspect --format '{{json .State}}' vllm")[0])
    health = httpx.get(f"{rig.inference_url('gpu-1')}/health", timeout=5).json()
    pinned = run(
        rig, "gpu-1", f"docker image inspect --format '{{{{index .RepoDigests 0}}}}' {image}"
    )[0]
    stopped = run(rig, "gpu-1", "docker stop vllm && docker rm vllm")
    listed = run(rig, "gpu-1", "docker ps -a --filter name=^vllm$ --format '{{json .}}'")

    assert code == 0 and len(created.strip()) == 64 and "Pulling from vllm/vllm-openai" in notes
    assert (state["Status"], state["Running"]) == ("running", True)
    assert (health["pool"], health["image"], health["model"]) == ("blue", image, "org/model")
    assert pinned.strip() == f"vllm/vllm-openai@{digest}"
    assert stopped == ("vllm\nvllm\n", "", 0)
    assert listed == ("", "", 0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{rig.inference_url('gpu-1')}/health", timeout=5)


def test_cut_node_times_out_while_others_answer_and_restore_brings_it_back(rig: Fleet) -> None:
    rig.run_container("gpu-2", "vllm/vllm-openai:v0.6.0")
    rig.cut("gpu-2")

    started = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout, paramiko.SSHException)):
        rig.ssh_client("gpu-2", timeout_s=1.0)
    assert time.monotonic() - started >= 0.9  # a hang, not a refusal
    with pytest.raises(httpx.ConnectTimeout):
        httpx.get(f"{rig.inference_url('gpu-2')}/health", timeout=1.0)
    assert run(rig, "gpu-1", "echo up") == ("up\n", "", 0)

    rig.restore("gpu-2")

    assert run(rig, "gpu-2", "echo back") == ("back\n", "", 0)
    assert httpx.get(f"{rig.inference_url('gpu-2')}/health", timeout=5).status_code == 200


def test_rotated_host_key_is_refused_by_strict_clients(
    rig_fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = rig_fleet_factory(["key-1", "key-2"], gpus=1)
    assert run(fleet, "key-1", "echo ok")[0] == "ok\n"

    fleet.rotate_host_key("key-1")

    with pytest.raises(paramiko.BadHostKeyException):
        fleet.ssh_client("key-1")
    assert run(fleet, "key-2", "echo still")[0] == "still\n"  # its sshd neighbour is back
    fleet.trust_host_keys()
    assert run(fleet, "key-1", "echo trusted")[0] == "trusted\n"


def test_a_killed_sshd_refuses_new_logins_on_its_node_only_and_comes_back(
    rig_fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = rig_fleet_factory(["sshd-1", "sshd-2"], gpus=1)
    session = fleet.ssh_client("sshd-1")  # opened before sshd dies
    try:
        fleet.kill_sshd("sshd-1")

        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((fleet.node("sshd-1").address, fleet.port), timeout=2)
        _, out, _ = session.exec_command("echo alive")
        assert out.read() == b"alive\n"  # like a real sshd: open sessions live on
        assert run(fleet, "sshd-2", "echo still")[0] == "still\n"

        fleet.start_sshd("sshd-1")
        assert run(fleet, "sshd-1", "echo back")[0] == "back\n"
    finally:
        session.close()


def test_more_nodes_than_one_sshd_can_serve(rig_fleet_factory: Callable[..., Fleet]) -> None:
    fleet = rig_fleet_factory([f"n{i:02d}" for i in range(20)], gpus=1)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(
            pool.map(lambda node: run(fleet, node.name, "nvidia-smi -L")[0], fleet.nodes)
        )

    assert len(fleet.sshd_pids()) == 2
    assert all(answer.startswith("GPU 0: NVIDIA H100 80GB HBM3") for answer in answers)


def test_stand_ins_also_run_locally_as_a_named_node(rig: Fleet) -> None:
    rig.state.set_gpu_status("gpu-3", 0, "lost")

    done = subprocess.run(
        [rig.bin_dir / "nvidia-smi", "-L"],
        env=rig.env_for("gpu-3"),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 15
    assert done.stdout.startswith("Unable to determine the device handle for GPU0: ")


def test_rules_a_killed_run_left_behind_are_found_by_their_tag() -> None:
    if reason := firewall.available():
        service_missing(reason)
    tag = "relrig:test-leftover"
    try:
        firewall.drop("127.0.254.253", tag)
        firewall.drop("127.0.254.254", tag)
        assert firewall.remove_tagged(tag) == 2
    finally:
        firewall.remove_tagged(tag)
    assert (
        tag
        not in subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True).stdout
    )
