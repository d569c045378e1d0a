"""The node collector: what one SSH script per node tells the dashboards.

Parsing is specified on captured output; the script itself runs under the machine's real
POSIX `sh`; the collector runs against the rig's sshd fleet where it is available.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from reliability import catalog
from reliability.collect.base import CollectError, Sample
from reliability.collect.node import (
    BadOutput,
    Container,
    NodeCollector,
    NodeSpec,
    node_script,
    parse_output,
)
from reliability.ssh import CommandResult, SshPool, SshTarget, Unreachable
from reliability.testing import firewall
from reliability.testing.fleet import Fleet
from reliability.testing.services import service_missing

M = "==reliability=="
TARGET = SshTarget(name="gpu-1", host="127.0.1.1", user="ops")
RIG_TIMEOUT = 1.5


def output(
    *, df1: str = "", docker: str = "", docker_rc: int = 0, image: str = "", end: bool = True
) -> str:
    text = f"""{M} node 1
{M} loadavg
0.52 1.25 2.00 3/456 7890
{M} cpus
16
{M} meminfo
MemTotal:       263856212 kB
MemAvailable:   201234567 kB
{M} df 0
Filesystem     1024-blocks      Used Available Capacity Mounted on
/dev/nvme0n1p2   959786032 412345678 498765432      46% /
{M} df 1
{df1}
{M} docker
{docker}
{M} docker_rc {docker_rc}
"""
    text += f"{M} image\n{image}\n" if image else ""
    return text + (f"{M} end\n" if end else "")


RUNNING = '{"Status":"running","Running":true,"Paused":false,"Pid":4242,"ExitCode":0}'
PATHS = ("/", "/var/lib/docker")


def test_reads_load_cpus_memory_disk_and_container() -> None:
    df1 = (
        "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
        "my data fs    100  40  60  40% /var/lib/docker"
    )
    reading = parse_output(output(df1=df1, docker=RUNNING), PATHS, container=True)

    assert reading.load == (0.52, 1.25, 2.0)
    assert reading.cpus == 16
    assert reading.memory_total == 263856212 * 1024
    assert reading.memory_available == 201234567 * 1024
    assert reading.paths == {
        "/": (959786032 * 1024, 498765432 * 1024),
        "/var/lib/docker": (100 * 1024, 60 * 1024),
    }
    assert reading.container == Container("running", True)


def test_missing_container_reads_as_missing_not_as_an_error() -> None:
    text = output(docker="Error: No such object: vllm", docker_rc=1)
    assert parse_output(text, PATHS, container=True).container == Container("missing", False)


def test_docker_that_cannot_answer_reads_as_unknown() -> None:
    text = output(
        docker="Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", docker_rc=1
    )
    assert parse_output(text, PATHS, container=True).container == Container("unknown", False)
    text = output(docker="", docker_rc=124)  # killed by `timeout`: dockerd hung
    assert parse_output(text, PATHS, container=True).container == Container("unknown", False)


DIGEST = "sha256:" + "d" * 64
OTHER = "sha256:" + "0" * 64
IMAGE_ID = "sha256:" + "e" * 64


@pytest.mark.parametrize(
    ("started_by", "repo_digests", "image"),
    [
        # Started by tag: the registry digest of its own repository, not another's.
        ("vllm/vllm-openai:v0.6.0", [f"mirror/vllm@{OTHER}", f"vllm/vllm-openai@{DIGEST}"],
         f"vllm/vllm-openai@{DIGEST}"),
        # Started by digest: that reference as it was given.
        (f"registry.local:5000/vllm@{DIGEST}", [f"registry.local:5000/vllm@{DIGEST}"],
         f"registry.local:5000/vllm@{DIGEST}"),
        # Built on the node, never pushed: no digest to record.
        ("vllm-dev", [], None),
    ],
    ids=["by-tag", "by-digest", "local-build"],
)  # fmt: skip
def test_the_image_a_container_runs_is_read_pinned_by_digest(
    started_by: str, repo_digests: list[str], image: str | None
) -> None:
    docker = f'{RUNNING} "{started_by}" {IMAGE_ID}'
    pool = FakePool(
        CommandResult(0, output(docker=docker, image=json.dumps(repo_digests)), "", 0.4),
        CommandResult(0, "", "", 0.02),
    )
    samples = collector(pool).collect("gpu-1")

    assert values(samples, catalog.NODE_CONTAINER_RUNNING) == {("gpu-1", "vllm", "running"): 1.0}
    expected = {} if image is None else {("gpu-1", "vllm", image): 1.0}
    assert values(samples, catalog.NODE_CONTAINER_IMAGE) == expected


def test_the_registry_digest_is_asked_for_again_only_when_the_image_changes() -> None:
    tagged = f'{RUNNING} "vllm/vllm-openai:v0.6.0" {IMAGE_ID}'
    digests = json.dumps([f"vllm/vllm-openai@{DIGEST}"])
    rtt = CommandResult(0, "", "", 0.02)
    pool = FakePool(
        CommandResult(0, output(docker=tagged, image=digests), "", 0.4),
        rtt,
        CommandResult(0, output(docker=tagged), "", 0.4),  # the script did not ask again
        rtt,
    )
    nodes = collector(pool)

    first, second = nodes.collect("gpu-1"), nodes.collect("gpu-1")

    assert f"!= {IMAGE_ID}" not in pool.commands[0] and f"!= {IMAGE_ID}" in pool.commands[2]
    expected = {("gpu-1", "vllm", f"vllm/vllm-openai@{DIGEST}"): 1.0}
    assert values(first, catalog.NODE_CONTAINER_IMAGE) == expected
    assert values(second, catalog.NODE_CONTAINER_IMAGE) == expected


def test_a_watched_path_df_cannot_read_is_left_out() -> None:
    reading = parse_output(output(docker=RUNNING), PATHS, container=True)
    assert list(reading.paths) == ["/"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Welcome to the jungle\n",
        output(docker=RUNNING, end=False),  # cut short
        output(docker=RUNNING).replace("0.52 1.25 2.00", "high"),
        output(docker=RUNNING).replace("MemAvailable", "MemFree"),
        output(docker=RUNNING).replace("16\n", "0\n", 1),
        output(docker="{not json"),
    ],
    ids=["empty", "garbage", "truncated", "loadavg", "meminfo", "cpus", "docker-json"],
)
def test_garbled_output_is_bad_output(text: str) -> None:
    with pytest.raises(BadOutput):
        parse_output(text, PATHS, container=True)


def test_script_runs_under_posix_sh_and_quotes_paths(tmp_path: Path) -> None:
    odd = tmp_path / "it's a $(dir)"
    odd.mkdir()
    script = node_script(["/", str(odd), "/does/not/exist"], "vllm", 2)
    done = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )

    reading = parse_output(done.stdout, ["/", str(odd), "/does/not/exist"], container=True)
    assert reading.cpus >= 1
    assert 0 < reading.memory_available <= reading.memory_total
    assert set(reading.paths) == {"/", str(odd)}
    size, free = reading.paths["/"]
    assert 0 <= free <= size
    assert reading.container is not None  # whatever docker says here, it parses


class FakePool:
    """Answers `run` from a list of results or errors, in order."""

    def __init__(self, *answers: CommandResult | Exception) -> None:
        self.answers = list(answers)
        self.commands: list[str] = []

    def run(self, target: SshTarget, command: str, *, timeout: float) -> CommandResult:
        self.commands.append(command)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def values(samples: Sequence[Sample], metric: catalog.Metric) -> dict[tuple[str, ...], float]:
    return {s.labels: float(s.value) for s in samples if s.metric is metric}  # type: ignore[arg-type]


def collector(pool: FakePool, container: str | None = "vllm") -> NodeCollector:
    spec = NodeSpec("gpu-1", TARGET, PATHS, container)
    return NodeCollector(pool, [spec], timeout=5.0)  # type: ignore[arg-type]


def test_collect_publishes_every_node_metric_and_the_rtt_of_a_no_op() -> None:
    pool = FakePool(
        CommandResult(0, output(docker=RUNNING), "", 0.4), CommandResult(0, "", "", 0.02)
    )
    samples = collector(pool).collect("gpu-1")

    assert pool.commands[1] == "true"
    assert values(samples, catalog.NODE_UP) == {("gpu-1",): 1.0}
    assert values(samples, catalog.NODE_SSH_RTT) == {("gpu-1",): 0.02}
    assert values(samples, catalog.NODE_LOAD)[("gpu-1", "15m")] == 2.0
    assert values(samples, catalog.NODE_CPUS) == {("gpu-1",): 16.0}
    assert values(samples, catalog.NODE_PATH_FREE) == {("gpu-1", "/"): 498765432 * 1024}
    assert values(samples, catalog.NODE_CONTAINER_RUNNING) == {("gpu-1", "vllm", "running"): 1.0}


def test_unreachable_node_is_a_collect_error_that_shows_it_down() -> None:
    pool = FakePool(Unreachable("gpu-1", "no answer"))
    with pytest.raises(CollectError) as caught:
        collector(pool).collect("gpu-1")

    assert caught.value.reason == "unreachable"
    assert values(caught.value.samples, catalog.NODE_UP) == {("gpu-1",): 0.0}


def test_garbled_output_is_bad_output_but_the_node_stays_up() -> None:
    pool = FakePool(CommandResult(127, "", "sh: 1: cat: not found", 0.1))
    with pytest.raises(CollectError) as caught:
        collector(pool).collect("gpu-1")

    assert caught.value.reason == "bad_output"
    assert "cat: not found" in str(caught.value)
    assert values(caught.value.samples, catalog.NODE_UP) == {("gpu-1",): 1.0}


def test_without_a_container_the_script_does_not_ask_docker() -> None:
    pool = FakePool(CommandResult(0, output(), "", 0.1), CommandResult(0, "", "", 0.01))
    samples = collector(pool, container=None).collect("gpu-1")

    assert "docker inspect" not in pool.commands[0]
    assert values(samples, catalog.NODE_CONTAINER_RUNNING) == {}


def test_relative_watched_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        NodeSpec("gpu-1", TARGET, ("var/lib/docker",))


# --- against the rig's fleet: real sshd, the docker stand-in, real network cuts ----------


def rig_spec(rig: Fleet, name: str, container: str | None = "vllm") -> NodeSpec:
    target = rig.ssh_target(name, connect_timeout=RIG_TIMEOUT)
    return NodeSpec(name, target, ("/", "/var/lib/docker-absent"), container)


@pytest.fixture
def ssh_pool() -> Iterator[SshPool]:
    pool = SshPool(backoff_initial=0.2, backoff_max=0.5)
    yield pool
    pool.close()


@pytest.mark.rig
def test_rig_node_reports_load_memory_disk_and_its_serving_container(
    rig: Fleet, ssh_pool: SshPool
) -> None:
    rig.run_container("gpu-1", "vllm/vllm-openai:v0.6.0")
    nodes = NodeCollector(ssh_pool, [rig_spec(rig, "gpu-1"), rig_spec(rig, "gpu-2")], RIG_TIMEOUT)

    assert nodes.targets() == ("gpu-1", "gpu-2")
    gpu1, gpu2 = nodes.collect("gpu-1"), nodes.collect("gpu-2")

    assert values(gpu1, catalog.NODE_UP) == {("gpu-1",): 1.0}
    assert 0 < values(gpu1, catalog.NODE_SSH_RTT)[("gpu-1",)] < RIG_TIMEOUT
    assert set(values(gpu1, catalog.NODE_LOAD)) == {("gpu-1", p) for p in ("1m", "5m", "15m")}
    assert values(gpu1, catalog.NODE_CPUS)[("gpu-1",)] >= 1
    memory = values(gpu1, catalog.NODE_MEMORY_AVAILABLE)[("gpu-1",)]
    assert 0 < memory <= values(gpu1, catalog.NODE_MEMORY_TOTAL)[("gpu-1",)]
    free = values(gpu1, catalog.NODE_PATH_FREE)
    assert list(free) == [("gpu-1", "/")]  # the absent path is left out, not an error
    assert 0 < free[("gpu-1", "/")] <= values(gpu1, catalog.NODE_PATH_SIZE)[("gpu-1", "/")]
    assert values(gpu1, catalog.NODE_CONTAINER_RUNNING) == {("gpu-1", "vllm", "running"): 1.0}
    assert values(gpu2, catalog.NODE_CONTAINER_RUNNING) == {("gpu-2", "vllm", "missing"): 0.0}
    digest = rig.state.publish_image("vllm/vllm-openai:v0.6.0")  # the digest it was pulled at
    running = f"vllm/vllm-openai@{digest}"
    assert values(gpu1, catalog.NODE_CONTAINER_IMAGE) == {("gpu-1", "vllm", running): 1.0}
    assert values(gpu2, catalog.NODE_CONTAINER_IMAGE) == {}


@pytest.mark.rig
def test_cut_node_shows_down_within_its_timeout_while_others_collect(
    rig: Fleet, ssh_pool: SshPool
) -> None:
    reason = firewall.available()
    if reason:
        service_missing(reason)
    nodes = NodeCollector(ssh_pool, [rig_spec(rig, "gpu-1"), rig_spec(rig, "gpu-2")], RIG_TIMEOUT)
    nodes.collect("gpu-1")  # warm: the cut hits an established connection
    rig.cut("gpu-1")

    for _ in range(2):  # two cycles: the open connection, then a fresh connect (or backoff)
        started = time.monotonic()
        with pytest.raises(CollectError) as caught:
            nodes.collect("gpu-1")
        assert time.monotonic() - started < RIG_TIMEOUT + 0.5
        assert caught.value.reason in {"timeout", "unreachable"}
        assert values(caught.value.samples, catalog.NODE_UP) == {("gpu-1",): 0.0}

        started = time.monotonic()
        assert values(nodes.collect("gpu-2"), catalog.NODE_UP) == {("gpu-2",): 1.0}
        assert time.monotonic() - started < 1.0
