"""`dmesg`, `journalctl` and `docker` stand-ins: real output shapes and exit codes, from node
state."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reliability.testing import dmesg, docker_cli, journalctl
from reliability.testing.engine import ContainerEngine
from reliability.testing.loopback import free_port
from reliability.testing.rigstate import RigState

IMAGE = "vllm/vllm-openai:v0.6.0"
MODEL = "deepseek-ai/DeepSeek-V3"


@pytest.fixture
def rig(tmp_path: Path) -> RigState:
    state = RigState.create(tmp_path)
    state.add_node("gpu-1", address="127.0.0.1", pool="blue", gpus=2)
    return state


def docker(rig: RigState, *argv: str) -> tuple[str, str, int]:
    return docker_cli.dispatch(rig.root, "gpu-1", argv)


def test_dmesg_iso_shows_an_added_xid_in_the_nvrm_format(rig: RigState) -> None:
    at = time.time()
    text = rig.add_xid("gpu-1", 1, 79, at=at)

    out, err, code = dmesg.render(rig.read("gpu-1"), ["--time-format", "iso"])

    assert (err, code) == ("", 0)
    assert text == (
        "NVRM: Xid (PCI:0000:2a:00): 79, pid='<unknown>', name=<unknown>, "
        "GPU has fallen off the bus."
    )
    last = out.splitlines()[-1]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{6}[+-]\d\d:\d\d " + re.escape(text), last
    )
    assert last.startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(at)))


def test_dmesg_default_and_error_shapes(rig: RigState) -> None:
    rig.add_xid("gpu-1", "00000000:18:00.0", 48, pid=4242, process="python3")

    out, _, _ = dmesg.render(rig.read("gpu-1"), [])
    _, err, code = dmesg.render(rig.read("gpu-1"), ["--time-format", "bogus"])

    assert re.fullmatch(
        r"\[ *\d+\.\d{6}\] NVRM: Xid \(PCI:0000:18:00\): 48, pid=4242, name=python3, .+",
        out.splitlines()[-1],
    )
    assert (err, code) == ("dmesg: unknown time format: bogus\n", 1)


def test_pull_and_image_inspect_give_the_repo_digest(rig: RigState) -> None:
    digest = rig.publish_image(IMAGE)

    out, _, code = docker(rig, "pull", IMAGE)
    again, _, _ = docker(rig, "pull", IMAGE)
    repo_digest, _, _ = docker(
        rig, "image", "inspect", "--format", "{{index .RepoDigests 0}}", IMAGE
    )

    assert code == 0
    assert out.splitlines() == [
        "v0.6.0: Pulling from vllm/vllm-openai",
        f"Digest: {digest}",
        f"Status: Downloaded newer image for {IMAGE}",
        f"docker.io/{IMAGE}",
    ]
    assert f"Status: Image is up to date for {IMAGE}" in again
    assert repo_digest == f"vllm/vllm-openai@{digest}\n"


def test_pull_failures_match_the_daemon(rig: RigState) -> None:
    _, unknown, code = docker(rig, "pull", "vllm/vllm-openai:nope")
    rig.set_registry_reachable(False)
    _, offline, offline_code = docker(rig, "pull", IMAGE)

    assert code == 1
    assert unknown.startswith(
        "Error response from daemon: manifest for vllm/vllm-openai:nope not found"
    )
    assert offline_code == 1
    assert 'Get "https://registry-1.docker.io/v2/"' in offline


def test_run_inspect_ps_stop_rm_round_trip(rig: RigState) -> None:
    rig.publish_image(IMAGE)

    container_id, notes, code = docker(rig, "run", "-d", "--name", "vllm", IMAGE)
    running = json.loads(docker(rig, "inspect", "--format", "{{json .State}}", "vllm")[0])
    row = json.loads(
        docker(rig, "ps", "-a", "--filter", "name=^vllm$", "--format", "{{json .}}")[0]
    )
    _, busy, busy_code = docker(rig, "rm", "vllm")
    stopped = docker(rig, "stop", "vllm")
    exited = json.loads(docker(rig, "inspect", "--format", "{{json .State}}", "vllm")[0])
    removed = docker(rig, "rm", "vllm")
    _, gone, gone_code = docker(rig, "inspect", "--format", "{{json .State}}", "vllm")

    assert code == 0 and re.fullmatch(r"[0-9a-f]{64}\n", container_id)
    assert "Unable to find image" in notes
    assert list(running)[:6] == ["Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead"]
    assert (running["Status"], running["Running"], running["ExitCode"]) == ("running", True, 0)
    assert (
        row["Names"] == "vllm"
        and row["ID"] == container_id[:12]
        and row["Status"].startswith("Up ")
    )
    assert busy_code == 1 and "container is running" in busy
    assert stopped == ("vllm\n", "", 0)
    assert (exited["Status"], exited["Running"], exited["ExitCode"]) == ("exited", False, 0)
    assert removed == ("vllm\n", "", 0)
    assert (gone, gone_code) == ("Error: No such object: vllm\n", 1)


def test_run_refuses_a_taken_name_with_exit_125(rig: RigState) -> None:
    rig.load_image("gpu-1", IMAGE)
    docker(rig, "run", "-d", "--name", "vllm", IMAGE)

    _, err, code = docker(rig, "run", "-d", "--name", "vllm", IMAGE)

    assert code == 125
    assert 'Conflict. The container name "/vllm" is already in use' in err


def test_unknown_commands_and_containers(rig: RigState) -> None:
    assert docker(rig, "frobnicate")[2] == 1
    assert docker(rig, "stop", "ghost") == (
        "",
        "Error response from daemon: No such container: ghost\n",
        1,
    )


@pytest.fixture
def container_engine(rig: RigState) -> Iterator[ContainerEngine]:
    engine = ContainerEngine(rig.root)
    yield engine
    engine.close()


def test_engine_serves_a_published_port_and_records_a_crash(
    rig: RigState, container_engine: ContainerEngine
) -> None:
    port = free_port()
    rig.load_image("gpu-1", IMAGE)
    docker(
        rig, "run", "-d", "--name", "vllm", "-p", f"{port}:8000", "--label", "pool=green",
        IMAGE, "--model", MODEL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    health = httpx.get(f"{url}/health", timeout=5).json()
    server = container_engine.server("gpu-1", "vllm")
    assert server is not None
    server.set_mode("die")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5)
    deadline = time.monotonic() + 5
    while rig.container("gpu-1", "vllm")["State"]["Running"] and time.monotonic() < deadline:  # type: ignore[index]
        time.sleep(0.02)

    assert (health["pool"], health["image"]) == ("green", IMAGE)
    state = rig.container("gpu-1", "vllm")["State"]  # type: ignore[index]
    assert (state["Status"], state["ExitCode"]) == ("exited", 1)
    assert docker(rig, "start", "vllm") == ("vllm\n", "", 0)
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def test_engine_reports_a_taken_port_like_docker(
    rig: RigState, container_engine: ContainerEngine
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        rig.load_image("gpu-1", IMAGE)

        _, err, code = docker(
            rig, "run", "-d", "--name", "vllm", "-p", f"{port}:8000", IMAGE, "--model", MODEL
        )

    assert code == 125
    assert "port is already allocated" in err
    assert rig.container("gpu-1", "vllm")["State"]["Status"] == "created"  # type: ignore[index]


def test_create_keeps_the_whole_run_spec_and_inspect_shows_it_as_docker_does(
    rig: RigState, tmp_path: Path
) -> None:
    rig.load_image("gpu-1", IMAGE)
    env_file = tmp_path / "env"
    env_file.write_text("# secrets\nHF_TOKEN=hf_abc=def\n\n  OTHER=x y\n")

    created, _, code = docker(
        rig, "create", "--name", "vllm", "--gpus", "all", "--ipc", "host", "--shm-size", "16g",
        "--ulimit", "memlock=-1", "--ulimit", "stack=67108864:134217728",
        "-v", "/data/models:/models:ro", "-v", "cache:/root/.cache",
        "--env-file", str(env_file), "-e", "HF_HOME=/models", "-l", "team=inference",
        "--entrypoint", "python3", IMAGE, "-m", "vllm.entrypoints.openai.api_server",
        "--model", MODEL,
    )  # fmt: skip
    (record,) = json.loads(docker(rig, "inspect", created.strip()[:12])[0])

    assert code == 0 and record["Id"] == created.strip()
    assert record["State"]["Status"] == "created"
    assert record["Config"]["Entrypoint"] == ["python3"]
    assert record["Config"]["Cmd"] == ["-m", "vllm.entrypoints.openai.api_server", "--model", MODEL]
    assert record["Config"]["Env"] == ["HF_TOKEN=hf_abc=def", "OTHER=x y", "HF_HOME=/models"]
    assert record["Config"]["Labels"] == {"team": "inference"}
    assert record["Mounts"][0] == {
        "Type": "bind", "Source": "/data/models", "Destination": "/models", "Mode": "ro",
        "RW": False, "Propagation": "rprivate",
    }  # fmt: skip
    assert (record["Mounts"][1]["Type"], record["Mounts"][1]["Name"]) == ("volume", "cache")
    host = record["HostConfig"]
    assert host["Binds"] == ["/data/models:/models:ro", "cache:/root/.cache"]
    assert (host["IpcMode"], host["ShmSize"]) == ("host", 16 * 1024**3)
    assert host["Ulimits"] == [
        {"Name": "memlock", "Hard": -1, "Soft": -1},
        {"Name": "stack", "Hard": 134217728, "Soft": 67108864},
    ]
    assert host["DeviceRequests"][0]["Count"] == -1
    assert docker(rig, "create", "-d", IMAGE)[1:] == (
        "unknown flag: -d\nSee 'docker create --help'.\n",
        125,
    )
    _, missing, missing_code = docker(rig, "create", "--env-file", "/nonexistent/env", IMAGE)
    assert missing_code == 125 and "open /nonexistent/env: no such file or directory" in missing


def test_rename_start_stop_and_rm_take_a_name_an_id_or_its_prefix(rig: RigState) -> None:
    rig.load_image("gpu-1", IMAGE)
    full = docker(rig, "run", "-d", "--name", "vllm", IMAGE)[0].strip()
    aside = docker(rig, "inspect", "--format", "vllm-old-{{slice .Id 0 12}}", "vllm")[0].strip()

    renamed = docker(rig, "rename", "vllm", aside)
    stopped = docker(rig, "stop", full[:12])
    again = docker(rig, "rename", full, aside)
    taken = docker(rig, "run", "-d", "--name", aside, IMAGE)
    back = docker(rig, "rename", full, "vllm")
    started = docker(rig, "start", full)

    assert aside == f"vllm-old-{full[:12]}"
    assert renamed == ("", "", 0)
    assert stopped == (f"{full[:12]}\n", "", 0)
    assert again == (
        "",
        "Error response from daemon: Renaming a container with the same name as its current name\n",
        1,
    )
    assert taken[2] == 125 and f'The container name "/{aside}" is already in use' in taken[1]
    assert back == ("", "", 0) and started == (f"{full}\n", "", 0)
    record = rig.container("gpu-1", "vllm")
    assert record is not None and record["Id"] == full and record["State"]["Running"]
    # Docker 20.10 and later: `rm -f` of no such container warns and succeeds; `rm` fails.
    assert docker(rig, "rm", "-f", "ghost") == (
        "",
        "Error response from daemon: No such container: ghost\n",
        0,
    )
    assert docker(rig, "rm", "ghost")[2] == 1


def test_an_engine_started_without_its_model_exits_and_serves_only_its_model(
    rig: RigState, container_engine: ContainerEngine
) -> None:
    port = free_port()
    rig.load_image("gpu-1", IMAGE)

    bare = docker(rig, "run", "-d", "--name", "bare", "-p", f"{port}:8000", IMAGE)
    state = rig.container("gpu-1", "bare")["State"]  # type: ignore[index]
    docker(rig, "rm", "bare")
    docker(
        rig, "run", "-d", "--name", "vllm", "-p", f"{port}:8000", IMAGE,
        "--model", "org/weights", "--served-model-name", "chat",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    messages = [{"role": "user", "content": "hi"}]
    served = httpx.post(url, json={"model": "chat", "messages": messages}, timeout=5)
    other = httpx.post(url, json={"model": MODEL, "messages": messages}, timeout=5)

    assert bare[2] == 0  # docker run -d returns; the engine's parser then refuses
    assert (state["Status"], state["ExitCode"]) == ("exited", 2)
    assert served.status_code == 200 and served.json()["model"] == "chat"
    assert other.status_code == 404
    assert other.json()["error"]["message"] == f"The model `{MODEL}` does not exist."


JOURNAL = ["-k", "-o", "short-monotonic", "--no-pager", "--show-cursor"]


def test_journalctl_reads_after_its_cursor_and_a_reboot_from_the_new_boot(rig: RigState) -> None:
    out, _, code = journalctl.render(rig.read("gpu-1"), [*JOURNAL, "-n", "1"])
    *lines, cursor = out.splitlines()
    assert code == 0 and len(lines) == 1
    assert re.fullmatch(r"\[ *\d+\.\d{6}\] gpu-1 kernel: NVRM: loading NVIDIA .+", lines[0])
    assert cursor.startswith("-- cursor: s=")
    after = f"--after-cursor={cursor.removeprefix('-- cursor: ')}"

    assert journalctl.render(rig.read("gpu-1"), [*JOURNAL, after]) == ("-- No entries --\n", "", 0)
    text = rig.add_xid("gpu-1", 0, 48)
    new, _, _ = journalctl.render(rig.read("gpu-1"), [*JOURNAL, after])
    assert [line.endswith(text) for line in new.splitlines()] == [True, False]

    rig.reboot("gpu-1")
    rebooted, _, _ = journalctl.render(rig.read("gpu-1"), [*JOURNAL, after])
    assert "Linux version" in rebooted.splitlines()[0] and text not in rebooted


def test_journalctl_refuses_a_bad_cursor_and_hides_the_system_journal_when_denied(
    rig: RigState,
) -> None:
    assert journalctl.render(rig.read("gpu-1"), [*JOURNAL, "--after-cursor=nope"]) == (
        "",
        "Failed to seek to cursor: Invalid argument\n",
        1,
    )
    rig.set_kernel_log_access("gpu-1", journal=False)
    out, err, code = journalctl.render(rig.read("gpu-1"), JOURNAL)
    assert (out, code) == ("-- No entries --\n", 0)
    assert "Users in groups 'adm', 'systemd-journal' can see all messages." in err


def test_dmesg_restricted_refuses_as_util_linux_does(rig: RigState) -> None:
    rig.set_kernel_log_access("gpu-1", dmesg_restrict=True)
    assert dmesg.render(rig.read("gpu-1"), []) == (
        "",
        "dmesg: read kernel buffer failed: Operation not permitted\n",
        1,
    )
