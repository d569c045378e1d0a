"""`image-rollout` against the rig: three nodes of pool blue behind a real nginx, the docker
stand-in serving each container with an inference stand-in of its image. Every build here
answers in a set time (`slow_image`), so a pool's capacity is set by the clock, not by
this machine's load. The first node, out of the upstream, gets the new image and is loaded
alone at its share of the pool's baseline; a build that holds it rolls through the pool, a
slowed one is refused there and every node is left on the old image, serving."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from reliability import db
from reliability.capacity.models import CapacityTest, Purpose
from reliability.cli import main
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.images import service as images
from reliability.runbooks.executor import RunResult
from reliability.runbooks.models import RunbookRun, RunbookStep, RunStatus
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.nginx import NginxBalancer
from reliability.testing.rigconfig import rig_config, run_runbook, shipped_runbooks
from reliability.testing.services import service_missing

REPO_NAME = "registry.rig.local/serving/vllm"
OLD_REF = f"{REPO_NAME}:v1"
NEW_REF = f"{REPO_NAME}:v2"
ANSWER_S = 0.2  # how late every build here answers a completion
NODES = ("gpu-1", "gpu-2", "gpu-3")
ARGS = ["--model", DEFAULT_MODEL, "--max-model-len", "4096"]


@pytest.fixture
def blue_three(rig_fleet_factory: Callable[..., Any]) -> Iterator[NginxBalancer]:
    """Pool blue's three nodes on the old image, each serving, behind nginx on lb-1."""
    reason = NginxBalancer.missing_requirement()
    if reason:
        service_missing(reason)
    pools = dict.fromkeys(NODES, "blue")
    fleet = rig_fleet_factory([*pools, "lb-1"], pools=pools)
    fleet.state.slow_image(fleet.state.publish_image(OLD_REF), ANSWER_S)
    for name in NODES:
        fleet.run_container(name, OLD_REF)
    members = [f"{fleet.node(n).address}:8000" for n in NODES]
    with NginxBalancer(fleet, "lb-1", service="chat", members=members) as balancer:
        yield balancer


def write_config(balancer: NginxBalancer, directory: Path) -> tuple[Config, str]:
    # The shipped runbooks, the gate's load test shortened, and the gate at 65%: a 3 s load
    # test of a build as fast as the baseline's reads 80-112% of it on a loaded test machine,
    # a build three times slower 33-42%; the test is of the gate, not of the shipped 90%.
    edits = {"duration: 20s": "duration: 3s", "gate: {capacity: 0.9}": "gate: {capacity: 0.65}"}
    books = shipped_runbooks(directory, edits)
    service = {
        "pools": ["blue"],
        "port": 8000,
        "container": {"name": "vllm", "args": ARGS},
        # The baseline is measured on the serving pool: the rig's carries no users.
        "capacity": {"max_production_share": 1.0, "prompt_words": 8},
    }
    path = rig_config(
        balancer,
        directory,
        service=service,
        http={"listen": "127.0.0.1:9"},
        runbooks_dir=str(books),
    )
    return load_config(path), str(path)


def measure_baseline(path: str) -> None:
    args = ["capacity", "test", "chat", "--pool", "blue", "--users", "6", "--steps", "1"]
    args += ["--duration", "4s", "--spawn-rate", "50", "-c", path]
    measured = CliRunner().invoke(main, args, catch_exceptions=False)
    assert measured.exit_code == 0, measured.output


def new_build(balancer: NginxBalancer, answer_s: float) -> str:
    digest = balancer.fleet.state.publish_image(NEW_REF)
    balancer.fleet.state.slow_image(digest, answer_s)
    return f"{REPO_NAME}@{digest}"


def run_rollout(config: Config, image: str) -> RunResult:
    return run_runbook(config, "image-rollout", service="chat", pool="blue", image=image)


def containers(balancer: NginxBalancer) -> dict[str, dict[str, Any]]:
    return {n: balancer.fleet.state.container(n, "vllm") for n in NODES}


def images_answering(balancer: NginxBalancer, count: int = 9) -> set[tuple[int, str]]:
    """(status, x-image) of completions through nginx, fresh connections each."""
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=10) as c:
        answers = [c.post(balancer.url + "v1/chat/completions", json=body) for _ in range(count)]
    return {(r.status_code, r.headers.get("x-image", "")) for r in answers}


def step_logs(config: Config, run_id: int) -> dict[str, str]:
    with db.session_factory(db.make_engine(config.database_url()))() as s:
        rows = s.scalars(sa.select(RunbookStep).where(RunbookStep.run_id == run_id))
        return {row.step: json.dumps(row.log) for row in rows}


def gate_tests(config: Config) -> list[CapacityTest]:
    with db.session_factory(db.make_engine(config.database_url()))() as s:
        query = sa.select(CapacityTest).order_by(CapacityTest.id)
        return [t for t in s.scalars(query) if t.purpose == Purpose.gate]


def test_a_build_that_holds_the_baseline_rolls_through_the_pool(
    blue_three: NginxBalancer, tmp_path: Path
) -> None:
    config, path = write_config(blue_three, tmp_path)
    measure_baseline(path)
    image = new_build(blue_three, ANSWER_S)
    upstream = blue_three.upstream_file.read_bytes()

    result = run_rollout(config, image)

    assert result.status == RunStatus.succeeded, result.reason
    for node, record in containers(blue_three).items():
        assert record["State"]["Running"], node
        assert (record["Config"]["Image"], record["Config"]["Cmd"]) == (image, ARGS)
    assert blue_three.upstream_file.read_bytes() == upstream  # every node back in
    assert images_answering(blue_three) == {(200, image)}
    gate = step_logs(config, result.run_id)["capacity-gate"]
    assert "gate passed by" in gate and "gpu-1 of pool blue held" in gate
    assert "their share (1 of 3 nodes" in gate
    print(f"\nimage-rollout, holding build: {json.loads(gate)[-1]['result']}")
    (test,) = gate_tests(config)
    assert (test.nodes, test.users) == (1, 2)  # the baseline's 6 users over 3 nodes
    with db.session_factory(db.make_engine(config.database_url()))() as s:
        recorded = images.deploys(s, service="chat")
    assert sorted((d.node, d.image) for d in recorded) == [(n, image) for n in NODES]


def test_a_slowed_build_is_refused_by_the_gate_and_every_node_stays_on_the_old_image(
    blue_three: NginxBalancer, tmp_path: Path
) -> None:
    config, path = write_config(blue_three, tmp_path)
    measure_baseline(path)
    image = new_build(blue_three, 3 * ANSWER_S)  # a third of the requests/s per seat
    before = containers(blue_three)
    upstream = blue_three.upstream_file.read_bytes()

    result = run_rollout(config, image)

    assert result.status == RunStatus.failed
    assert "gate failed by" in (result.reason or "")
    assert "of their share (1 of 3 nodes" in (result.reason or "")
    print(f"\nimage-rollout, slowed build: {result.reason}")
    after = containers(blue_three)
    for node in NODES:  # the very containers they ran, running the old image
        assert after[node]["Id"] == before[node]["Id"], node
        assert after[node]["State"]["Running"] and after[node]["Config"]["Image"] == OLD_REF
    assert blue_three.upstream_file.read_bytes() == upstream
    assert images_answering(blue_three) == {(200, OLD_REF)}
    assert "roll" not in step_logs(config, result.run_id)
    (test,) = gate_tests(config)
    assert test.nodes == 1 and test.qps > 0


def test_the_plan_shows_the_gate_then_the_roll_and_changes_nothing(
    blue_three: NginxBalancer, tmp_path: Path
) -> None:
    config, path = write_config(blue_three, tmp_path)
    image = new_build(blue_three, ANSWER_S)
    before = containers(blue_three)
    upstream = blue_three.upstream_file.read_bytes()

    args = ["runbook", "plan", "image-rollout", "-p", "service=chat", "-p", "pool=blue"]
    shown = CliRunner().invoke(main, [*args, "-p", f"image={image}", "-c", path])

    assert shown.exit_code == 0, shown.output
    text = shown.output
    gpu1 = blue_three.fleet.node("gpu-1").address
    order = [
        f"mark gpu-1 ({gpu1}:8000) down in upstream chat",
        f"gpu-1 $ docker pull {image}",
        "load gpu-1 of pool blue alone for 3s at their share of pool blue's capacity baseline",
        f"add gpu-1 ({gpu1}:8000) to upstream chat",
        "batches: [gpu-2] then [gpu-3]",
    ]
    assert all(line in text for line in order), text
    assert [text.index(line) for line in order] == sorted(text.index(line) for line in order)
    assert containers(blue_three) == before
    assert blue_three.upstream_file.read_bytes() == upstream
    with db.session_factory(db.make_engine(config.database_url()))() as s:
        assert s.scalars(sa.select(RunbookRun)).first() is None
