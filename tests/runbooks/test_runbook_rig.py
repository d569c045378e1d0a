"""The shipped runbooks against the rig: real sshd nodes, the docker stand-in running
inference stand-ins, and a real nginx in front. What a user of the load balancer sees.

The switch and its undo are specified for every balancer: those tests take
``rig_balancer``, once with nginx and once with HAProxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from reliability import db
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.images import service as images
from reliability.runbooks import service as runs
from reliability.runbooks.models import RunbookLock, RunStatus
from reliability.testing import docker_cli
from reliability.testing.balancer import RigBalancer
from reliability.testing.fixtures import RIG_LB_IMAGE
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.load import Load
from reliability.testing.nginx import NginxBalancer, parse_members
from reliability.testing.rigconfig import rig_config, run_runbook, shipped_runbooks
from reliability.testing.services import service_missing

GOOD_REF = "registry.rig.local/serving/vllm:good"
BAD_REF = "registry.rig.local/serving/vllm:bad"
LOAD_SECONDS_MAX = 120.0  # every client loop below ends by this, whatever happens


@pytest.fixture
def rig_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'reliability.db'}"
    db.upgrade(url)
    return url


def write_config(balancer: RigBalancer, directory: Path, **service: Any) -> Config:
    """The rig as a reliability config, with the shipped runbooks (soaks shortened); its
    database is the one the ``rig_db`` fixture migrated."""
    books = shipped_runbooks(directory, {"soak: 5m": "soak: 3s", "interval: 2s": "interval: 0.5s"})
    path = rig_config(
        balancer,
        directory,
        service={"port": 8000, **service},
        migrate=False,
        runbooks_dir=str(books),
    )
    return load_config(path)


def pool_of_answers(url: str, count: int = 12) -> set[str]:
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return {client.get(url + "v1/models").headers["x-pool"] for _ in range(count)}


@pytest.fixture
def load_through() -> Iterator[Callable[..., Load]]:
    loads: list[tuple[Load, threading.Thread]] = []

    def start(url: str, bad_image: str | None = None) -> Load:
        load = Load(url, bad_image, max_seconds=LOAD_SECONDS_MAX)
        loads.append((load, load.start()))
        return load

    yield start
    for running, thread in loads:
        running.stop.set()
        thread.join(15)


# A serving container as an operator would configure it: the model, a hub token (a
# secret, from this host's environment), the model cache, IPC and shared memory.
HF_TOKEN = "hf_rig-secret-0123456789abcdef"
SPEC = {
    "name": "vllm",
    "args": ["--model", DEFAULT_MODEL, "--max-model-len", "4096"],
    "env": {"HF_HOME": "/models", "HF_TOKEN": {"value_env": "RIG_HF_TOKEN"}},
    "volumes": ["/srv/models:/models:ro"],
    "ipc": "host",
    "shm_size": "1g",
}


def inspected(balancer: RigBalancer, node: str) -> dict[str, Any]:
    """`docker inspect vllm` on the node, over SSH."""
    out, err, code = balancer.ssh("docker inspect vllm", node=node)
    assert code == 0, err
    (record,) = json.loads(out)
    return record  # type: ignore[no-any-return]


def assert_runs_the_spec(record: dict[str, Any], image: str) -> None:
    assert record["State"]["Running"] and record["Config"]["Image"] == image
    assert record["Config"]["Cmd"] == SPEC["args"]
    assert {"HF_HOME=/models", f"HF_TOKEN={HF_TOKEN}"} <= set(record["Config"]["Env"])
    mounts = [(m["Source"], m["Destination"], m["RW"]) for m in record["Mounts"]]
    assert mounts == [("/srv/models", "/models", False)]
    assert (record["HostConfig"]["IpcMode"], record["HostConfig"]["ShmSize"]) == ("host", 2**30)


def recorded_text(url: str) -> str:
    """Everything the database holds about runbook runs, as text."""
    with db.make_engine(url).connect() as c:
        rows = c.execute(sa.text("SELECT * FROM runbook_steps")).all()
        rows += c.execute(sa.text("SELECT * FROM runbook_runs")).all()
    return json.dumps([list(map(str, r)) for r in rows])


def redeploy(balancer: RigBalancer, node: str, image: str) -> None:
    """Replace a node's serving container, as an operator's bad deploy would."""
    root = balancer.fleet.state_dir
    docker_cli.dispatch(root, node, ["rm", "-f", "vllm"])
    _, err, code = docker_cli.dispatch(
        root,
        node,
        [
            "run",
            "-d",
            "--name",
            "vllm",
            "-p",
            "8000:8000",
            "-l",
            "pool=blue",
            image,
            "--model",
            DEFAULT_MODEL,
        ],
    )
    assert code == 0, err


def container_image(balancer: RigBalancer, node: str) -> str | None:
    record = balancer.fleet.state.container(node, "vllm")
    return record["Config"]["Image"] if record else None


def test_blue_green_under_load_fails_no_request_and_cuts_no_stream(
    rig_balancer: RigBalancer, tmp_path: Path, rig_db: str, load_through: Callable[[str], Load]
) -> None:
    rig_lb = rig_balancer
    config = write_config(rig_lb, tmp_path)
    assert pool_of_answers(rig_lb.url) == {"blue"}
    load = load_through(rig_lb.url)
    time.sleep(0.5)

    result = run_runbook(config, "blue-green", service="chat", pool="green")
    time.sleep(0.5)
    load.stop.set()

    assert result.status == RunStatus.succeeded, result.reason
    assert load.served > 50
    assert load.failures == []
    assert pool_of_answers(rig_lb.url) == {"green"}
    with db.make_engine(rig_db).connect() as c:
        assert c.execute(sa.text("SELECT pool FROM service_pools")).scalar() == "green"


def test_a_step_failing_midway_leaves_the_balancer_and_containers_exactly_as_before(
    rig_balancer: RigBalancer, tmp_path: Path, rig_db: str
) -> None:
    rig_lb = rig_balancer
    fleet = rig_lb.fleet
    good = fleet.state.publish_image(GOOD_REF)
    config = write_config(rig_lb, tmp_path)
    (tmp_path / "runbooks" / "switch-then-fail.yaml").write_text(
        f"""
description: Deploy on green, switch to it, then fail.
params:
  service: {{type: service}}
targets:
  green-1: {{node: gpu-3}}
steps:
  - id: deploy
    action: deploy_image
    nodes: green-1
    args: {{service: "{{service}}", image: "registry.rig.local/serving/vllm@{good}"}}
    undo: restore
  - id: switch
    action: lb_set_pool
    args: {{service: "{{service}}", pool: green}}
    undo: restore
  - id: fail
    action: http_check
    args: {{url: "http://127.0.0.1:9/", within: 1s}}
"""
    )
    upstream_before = rig_lb.upstream_file.read_bytes()
    images_before = {n: container_image(rig_lb, n) for n in ("gpu-3", "gpu-4")}

    result = run_runbook(config, "switch-then-fail", service="chat")

    assert result.status == RunStatus.failed
    assert "step fail failed" in (result.reason or "") and "put back" in (result.reason or "")
    assert rig_lb.upstream_file.read_bytes() == upstream_before
    assert {n: container_image(rig_lb, n) for n in ("gpu-3", "gpu-4")} == images_before
    assert fleet.state.container("gpu-3", "vllm")["State"]["Running"]
    assert pool_of_answers(rig_lb.url) == {"blue"}


@pytest.fixture
def blue_four(rig_fleet_factory: Callable[..., Any]) -> Iterator[NginxBalancer]:
    """Four nodes in pool blue, each serving, behind a real nginx on lb-1."""
    reason = NginxBalancer.missing_requirement()
    if reason:
        service_missing(reason)
    pools = {f"gpu-{i}": "blue" for i in range(1, 5)}
    fleet = rig_fleet_factory([*pools, "lb-1"], pools=pools)
    for name in pools:
        fleet.run_container(name, RIG_LB_IMAGE)
    members = [f"{fleet.node(n).address}:8000" for n in pools]
    with NginxBalancer(fleet, "lb-1", service="chat", members=members) as balancer:
        yield balancer


def test_a_bad_build_is_rolled_back_node_by_node_without_failing_a_request(
    blue_four: NginxBalancer,
    tmp_path: Path,
    rig_db: str,
    load_through: Callable[..., Load],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig_lb, nodes = blue_four, [f"gpu-{i}" for i in range(1, 5)]
    fleet = rig_lb.fleet
    monkeypatch.setenv("RIG_HF_TOKEN", HF_TOKEN)
    good = f"registry.rig.local/serving/vllm@{fleet.state.publish_image(GOOD_REF)}"
    bad_digest = fleet.state.publish_image(BAD_REF)
    fleet.state.break_image(bad_digest)
    bad = f"registry.rig.local/serving/vllm@{bad_digest}"
    config = write_config(rig_lb, tmp_path, pools=["blue"], container=SPEC)
    with db.session_factory(db.make_engine(rig_db)).begin() as s:
        images.mark_good(s, service="chat", image=good, by="test", at=images_now())
    for node in nodes:
        redeploy(rig_lb, node, bad)
    load = load_through(rig_lb.url, bad_image=bad)
    deadline = time.monotonic() + 10
    while load.bad_answers == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert load.bad_answers > 0  # the bad build answers 500 through nginx

    started = time.monotonic()
    result = run_runbook(config, "image-rollback", service="chat", pool="blue")
    took = time.monotonic() - started
    load.stop.set()

    assert result.status == RunStatus.succeeded, result.reason
    for node in nodes:
        assert_runs_the_spec(inspected(rig_lb, node), good)
        names, _, _ = rig_lb.ssh("docker ps -a --format '{{.Names}}'", node=node)
        assert names == "vllm\n"  # the replaced container was removed once the run succeeded
    # Not one request failed because of the rollback; the bad build's own 500s stopped.
    assert load.failures == []
    assert load.served > 50
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(8):
        r = httpx.post(rig_lb.url + "v1/chat/completions", json=body)
        assert (r.status_code, r.headers["x-image"]) == (200, good)
    with db.session_factory(db.make_engine(rig_db))() as s:
        recorded = images.deploys(s, service="chat")
    assert sorted(d.node for d in recorded) == nodes
    assert HF_TOKEN not in recorded_text(rig_db)
    print(
        f"\nimage-rollback, {len(nodes)} nodes: bad build -> all on known-good in {took:.1f}s; "
        f"{load.served} requests through nginx, {len(load.failures)} failed, "
        f"{load.bad_answers} answered 500 by the bad build before their node was replaced"
    )


def test_a_rollback_that_fails_puts_the_containers_and_the_upstream_back(
    rig_lb: NginxBalancer, tmp_path: Path, rig_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = rig_lb.fleet
    monkeypatch.setenv("RIG_HF_TOKEN", HF_TOKEN)
    # The image marked known-good turns out broken too: gpu-1's new container fails its
    # completion, and the run undoes itself.
    broken = fleet.state.publish_image(BAD_REF)
    fleet.state.break_image(broken)
    config = write_config(rig_lb, tmp_path, container=SPEC)
    with db.session_factory(db.make_engine(rig_db)).begin() as s:
        marked = f"registry.rig.local/serving/vllm@{broken}"
        images.mark_good(s, service="chat", image=marked, by="test", at=images_now())
    before = {n: inspected(rig_lb, n) for n in ("gpu-1", "gpu-2")}
    upstream = rig_lb.upstream_file.read_bytes()

    result = run_runbook(config, "image-rollback", service="chat", pool="blue")

    assert result.status == RunStatus.failed
    assert "step redeploy failed" in (result.reason or "") and "put back" in (result.reason or "")
    after = {n: inspected(rig_lb, n) for n in ("gpu-1", "gpu-2")}
    assert after["gpu-1"]["Id"] == before["gpu-1"]["Id"] and after["gpu-1"]["State"]["Running"]
    assert after["gpu-2"]["State"]["StartedAt"] == before["gpu-2"]["State"]["StartedAt"]
    assert rig_lb.upstream_file.read_bytes() == upstream
    assert pool_of_answers(rig_lb.url) == {"blue"}


DEPLOY_TO_GPU3 = """
description: Deploy an image on gpu-3.
params:
  service: {{type: service}}
targets:
  green-1: {{node: gpu-3}}
steps:
  - id: deploy
    action: deploy_image
    nodes: green-1
    args:
      service: "{{service}}"
      image: "{image}"
      ttft: 2s
      within: 10s
    retries: 1
    backoff: 1s
    undo: restore
"""


def test_a_secret_that_cannot_be_read_stops_the_deploy_before_the_node_changes(
    rig_lb: NginxBalancer, tmp_path: Path, rig_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RIG_HF_TOKEN", raising=False)
    good = rig_lb.fleet.state.publish_image(GOOD_REF)
    config = write_config(rig_lb, tmp_path, container=SPEC)
    (tmp_path / "runbooks" / "deploy.yaml").write_text(
        DEPLOY_TO_GPU3.format(image=f"registry.rig.local/serving/vllm@{good}")
    )
    before = inspected(rig_lb, "gpu-3")

    result = run_runbook(config, "deploy", service="chat")

    assert result.status == RunStatus.failed
    assert "environment variable RIG_HF_TOKEN is not set" in (result.reason or "")
    after = inspected(rig_lb, "gpu-3")
    assert (after["Id"], after["State"]["StartedAt"]) == (
        before["Id"],
        before["State"]["StartedAt"],
    )
    with db.session_factory(db.make_engine(rig_db))() as s:
        (unit,) = runs.units(s, run_id=result.run_id)
    assert all(e["where"] == "local" for e in unit.log)  # nothing was sent to the node


def test_a_failed_deploy_is_undone_to_the_very_container_it_replaced(
    rig_lb: NginxBalancer, tmp_path: Path, rig_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = rig_lb.fleet
    monkeypatch.setenv("RIG_HF_TOKEN", HF_TOKEN)
    bad_digest = fleet.state.publish_image(BAD_REF)
    fleet.state.break_image(bad_digest)
    config = write_config(rig_lb, tmp_path, container=SPEC)
    (tmp_path / "runbooks" / "deploy-bad.yaml").write_text(
        DEPLOY_TO_GPU3.format(image=f"registry.rig.local/serving/vllm@{bad_digest}")
    )
    before = inspected(rig_lb, "gpu-3")

    result = run_runbook(config, "deploy-bad", service="chat")

    assert result.status == RunStatus.failed, result.reason
    assert "put back" in (result.reason or "")
    after = inspected(rig_lb, "gpu-3")
    assert (after["Id"], after["Image"], after["Config"]["Image"]) == (
        before["Id"],
        before["Image"],
        before["Config"]["Image"],
    )
    assert after["Name"] == "/vllm" and after["State"]["Running"]
    names, _, _ = rig_lb.ssh("docker ps -a --format '{{.Names}}'", node="gpu-3")
    assert names == "vllm\n"  # the new container is gone, nothing left aside
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(fleet.inference_url("gpu-3") + "/v1/chat/completions", json=body)
    assert answer.status_code == 200
    with db.session_factory(db.make_engine(rig_db))() as s:
        (unit,) = runs.units(s, run_id=result.run_id)
    # The retry replaced again from where the first attempt left: both reached the
    # completion check (no name conflict), and the undo found the original aside.
    assert unit.attempts == 2
    failed = [e for e in unit.log if not e["ok"]]
    assert [(e["attempt"], "completion" in e["result"]) for e in failed] == [(1, True), (2, True)]
    sent = [e["detail"] for e in unit.log if "docker create" in e["detail"]]
    assert len(sent) == 2 and "HF_HOME=/models" in sent[0]  # the spec went out...
    assert HF_TOKEN not in recorded_text(rig_db)  # ...and the secret was never recorded


def images_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def cli(config: Config, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reliability", *args, "-c", str(config.source)],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def start_blue_green(config: Config) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reliability",
            "runbook",
            "run",
            "blue-green",
            "--param",
            "service=chat",
            "--param",
            "pool=green",
            "--yes",
            "-c",
            str(config.source),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_switch(balancer: RigBalancer, before: bytes) -> None:
    deadline = time.monotonic() + 30
    while balancer.upstream_file.read_bytes() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert balancer.upstream_file.read_bytes() != before, "the switch never happened"
    time.sleep(0.5)  # into the soak


def killed_mid_run(balancer: RigBalancer, config: Config) -> None:
    before = balancer.upstream_file.read_bytes()
    run = start_blue_green(config)
    try:
        wait_for_switch(balancer, before)
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.kill()
        run.wait(10)


def test_sigterm_finishes_the_step_then_undoes_and_ends_aborted(
    rig_lb: NginxBalancer, tmp_path: Path, rig_db: str
) -> None:
    config = write_config(rig_lb, tmp_path)
    before = rig_lb.upstream_file.read_bytes()
    run = start_blue_green(config)
    try:
        wait_for_switch(rig_lb, before)
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
    finally:
        run.kill()

    assert run.returncode == 1
    assert "SIGTERM: finishing the current step, then undoing" in out
    (found,) = json.loads(cli(config, "runbook", "history", "--json").stdout)
    assert found["status"] == "aborted"
    assert "stopped during step" in found["reason"] and "put back" in found["reason"]
    assert rig_lb.upstream_file.read_bytes() == before
    assert pool_of_answers(rig_lb.url) == {"blue"}


def test_an_interrupted_run_resumes_from_the_step_it_reached(
    rig_lb: NginxBalancer, tmp_path: Path, rig_db: str
) -> None:
    config = write_config(rig_lb, tmp_path)
    killed_mid_run(rig_lb, config)
    (found,) = json.loads(cli(config, "runbook", "history", "--json").stdout)

    resumed = cli(config, "runbook", "resume", str(found["id"]), "--json")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded"
    assert pool_of_answers(rig_lb.url) == {"green"}
    status = json.loads(cli(config, "runbook", "status", str(found["id"]), "--json").stdout)
    assert [s["step"] for s in status["steps"]].count("check-new-pool") == 2  # not run again
    assert status["steps"][-1]["step"] == "note"


def test_sigkill_mid_run_then_restart_reports_interrupted_frees_the_lock_and_undo_restores(
    rig_balancer: RigBalancer, tmp_path: Path, rig_db: str
) -> None:
    rig_lb = rig_balancer
    config = write_config(rig_lb, tmp_path)
    before = rig_lb.upstream_file.read_bytes()
    killed_mid_run(rig_lb, config)

    history = cli(config, "runbook", "history", "--json")
    assert history.returncode == 0, history.stderr
    (found,) = json.loads(history.stdout)
    assert found["status"] == "interrupted"
    assert found["step"] in ("switch", "verify", "soak") and "runbook undo" in found["reason"]
    with db.make_engine(rig_db).connect() as c:
        held = sa.select(sa.func.count()).where(RunbookLock.run_id.is_not(None))
        assert c.execute(held).scalar() == 0

    undone = cli(config, "runbook", "undo", str(found["id"]), "--yes", "--json")

    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert json.loads(undone.stdout)["status"] == "undone"
    assert rig_lb.upstream_file.read_bytes() == before
    assert pool_of_answers(rig_lb.url) == {"blue"}


def test_drain_waits_for_the_streams_in_flight_on_the_node_to_finish(
    rig_lb: NginxBalancer, tmp_path: Path, rig_db: str
) -> None:
    config = write_config(rig_lb, tmp_path)
    (tmp_path / "runbooks" / "drain-one.yaml").write_text(
        """
description: Take gpu-1 out of the upstream once its requests are done.
params:
  service: {type: service}
targets:
  one: {node: gpu-1}
steps:
  - id: out
    action: drain
    nodes: one
    args: {service: "{service}", wait: 20s}
    undo: restore
"""
    )
    node = rig_lb.fleet.inference_url("gpu-1")
    httpx.post(node + "/_rig/mode", json={"mode": "slow", "delay_s": 3, "path": "/v1/*"})
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    finished: list[str] = []

    def stream() -> None:
        with httpx.stream("POST", node + "/v1/chat/completions", json=body, timeout=30) as r:
            finished.extend(line for line in r.iter_lines() if line)

    client = threading.Thread(target=stream)
    client.start()
    time.sleep(0.5)  # the request is in flight on gpu-1
    started = time.monotonic()

    result = run_runbook(config, "drain-one", service="chat")
    took = time.monotonic() - started
    client.join(30)

    assert result.status == RunStatus.succeeded, result.reason
    assert finished[-1:] == ["data: [DONE]"]  # the stream was not cut
    assert took >= 2.0  # the drain waited for it (3 s from its start)
    members = dict(parse_members(rig_lb.upstream_file.read_text()))
    assert members[f"{rig_lb.fleet.node('gpu-1').address}:8000"] is True
    with db.session_factory(db.make_engine(rig_db))() as s:
        (unit,) = runs.units(s, run_id=result.run_id)
    assert "no request running or waiting" in unit.log[-1]["result"]


# --- the operator's upstream file: edited, never rewritten -----------------------------------

DRAIN_AND_ADD = """
description: Take gpu-1 out of the upstream, add gpu-3 beside what serves, keep a copy of
  the file, then fail (the run undoes itself).
params:
  service: {type: service}
targets:
  one: {node: gpu-1}
  three: {node: gpu-3}
  lb: {node: lb-1}
steps:
  - id: out
    action: drain
    nodes: one
    args: {service: "{service}", wait: 1s}
    undo: restore
  - id: in
    action: lb_set_pool
    args: {service: "{service}", add: three}
    undo: restore
  - id: copy
    action: ssh
    nodes: lb
    args: {command: "cp UPSTREAM UPSTREAM.copy"}
  - id: fail
    action: http_check
    args: {url: "http://127.0.0.1:9/", within: 1s}
"""


def drain_and_add(balancer: RigBalancer, directory: Path) -> None:
    text = DRAIN_AND_ADD.replace("UPSTREAM", str(balancer.upstream_file))
    (directory / "runbooks" / "drain-and-add.yaml").write_text(text)


def server_line(balancer: RigBalancer, node: str) -> str:
    """The node's server line as the rig's operator file holds it."""
    address = f"{balancer.fleet.node(node).address}:8000"
    (line,) = [
        line + "\n"
        for line in balancer.upstream_file.read_text().splitlines()
        if f" {address}" in line
    ]
    return line


def test_an_operators_upstream_file_keeps_every_directive_through_drain_add_switch_and_undo(
    rig_balancer: RigBalancer, tmp_path: Path, rig_db: str
) -> None:
    lb = rig_balancer
    config = write_config(lb, tmp_path)
    drain_and_add(lb, tmp_path)
    before = lb.upstream_file.read_text()
    gpu1, gpu2 = server_line(lb, "gpu-1"), server_line(lb, "gpu-2")
    down = {"nginx": " down;", "haproxy": " disabled"}[lb.kind]
    gpu3 = f"{lb.fleet.node('gpu-3').address}:8000"
    added = {"nginx": f"    server {gpu3};\n", "haproxy": f"    server gpu-3 {gpu3} check\n"}

    failed = run_runbook(config, "drain-and-add", service="chat")
    edited = Path(f"{lb.upstream_file}.copy").read_text()
    after_undo = lb.upstream_file.read_text()
    switched = run_runbook(config, "blue-green", service="chat", pool="green")
    after_switch = lb.upstream_file.read_text()

    assert failed.status == RunStatus.failed and "step fail failed" in (failed.reason or "")
    # gpu-1's line gained the kind's `down` (weight, failure limits, comment kept); gpu-3's
    # line came after the last server line; every other byte (comments, zone and keepalive
    # or balance and http-reuse, the unrelated block, blank lines) is the operator's.
    marked = gpu1.rstrip("\n").removesuffix(";") + down + "\n"
    assert edited == before.replace(gpu1, marked).replace(gpu2, gpu2 + added[lb.kind])
    assert after_undo == before  # the undo: byte for byte
    assert switched.status == RunStatus.succeeded, switched.reason
    # Only the service's server lines (port 8000) changed in the switch.
    assert [line for line in after_switch.splitlines() if ":8000" not in line] == [
        line for line in before.splitlines() if ":8000" not in line
    ]
    assert lb.members() == [(f"{lb.fleet.node(n).address}:8000", False) for n in ("gpu-3", "gpu-4")]
    assert pool_of_answers(lb.url) == {"green"}


def test_a_refused_edit_fails_the_step_with_its_reason_and_changes_nothing(
    rig_balancer: RigBalancer, tmp_path: Path, rig_db: str
) -> None:
    lb = rig_balancer
    config = write_config(lb, tmp_path)
    # gpu-3 is green: the live upstream does not list it, so it cannot be marked down.
    (tmp_path / "runbooks" / "drain-three.yaml").write_text(
        DRAIN_AND_ADD.replace("{node: gpu-1}", "{node: gpu-3}").replace("UPSTREAM", "/nonexistent")
    )
    before = lb.upstream_file.read_bytes()
    workers = set(lb.serving_worker_pids())

    result = run_runbook(config, "drain-three", service="chat")

    assert result.status == RunStatus.failed
    gpu3 = f"{lb.fleet.node('gpu-3').address}:8000"
    block = {"nginx": "upstream", "haproxy": "backend"}[lb.kind]
    assert f"refused: line 2: {gpu3} is not in {block} chat (it lists " in (result.reason or "")
    assert lb.upstream_file.read_bytes() == before
    assert set(lb.serving_worker_pids()) == workers  # not even a reload
    with db.session_factory(db.make_engine(rig_db))() as s:
        (unit,) = runs.units(s, run_id=result.run_id)
    assert [entry["kind"] for entry in unit.log] == ["run", "edit"]  # the cat, the refusal
    assert unit.undo is None


def test_an_upstream_file_the_parser_cannot_read_is_refused_by_the_cli_with_exit_1(
    rig_lb: NginxBalancer, tmp_path: Path, rig_db: str
) -> None:
    config = write_config(rig_lb, tmp_path)
    drain_and_add(rig_lb, tmp_path)
    unreadable = rig_lb.upstream_file.read_text().replace("keepalive 16;\n}", "keepalive 16;\n")
    rig_lb.upstream_file.write_text(unreadable)  # nginx serves on from the file it loaded

    done = cli(config, "runbook", "run", "drain-and-add", "-p", "service=chat", "--yes")

    assert done.returncode == 1
    assert "refused: unexpected end of file (a `;` or `}` is missing)" in done.stdout + done.stderr
    assert rig_lb.upstream_file.read_text() == unreadable
    assert pool_of_answers(rig_lb.url) == {"blue"}
