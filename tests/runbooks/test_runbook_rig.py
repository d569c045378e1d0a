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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from reliability import db
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.images import service as images
from reliability.runbooks import flows
from reliability.runbooks import params as params_mod
from reliability.runbooks import service as runs
from reliability.runbooks.executor import RunResult
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunbookLock, RunStatus
from reliability.testing import docker_cli
from reliability.testing.balancer import RigBalancer
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.nginx import NginxBalancer, parse_members

REPO = Path(__file__).resolve().parents[2]
GOOD_REF = "registry.rig.local/serving/vllm:good"
BAD_REF = "registry.rig.local/serving/vllm:bad"
LOAD_SECONDS_MAX = 120.0  # every client loop below ends by this, whatever happens


@pytest.fixture
def rig_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'reliability.db'}"
    db.upgrade(url)
    return url


def write_config(balancer: RigBalancer, directory: Path, url: str, **service: Any) -> Config:
    """The rig as a reliability config, with the shipped runbooks (soaks shortened)."""
    books = directory / "runbooks"
    books.mkdir(exist_ok=True)
    for source in (REPO / "runbooks").glob("*.yaml"):
        text = (
            source.read_text()
            .replace("soak: 5m", "soak: 3s")
            .replace("interval: 2s", "interval: 0.5s")
        )
        (books / source.name).write_text(text)
    sections = balancer.fleet.config_sections()
    for node in sections["nodes"]:
        node["role"] = {"spare-1": "standby", "lb-1": "lb"}.get(node["name"], "serving")
        if node["role"] == "lb":
            node["gpus"] = 0
    config = {
        "database": {"url": url},
        **sections,
        "services": [
            {
                "name": "chat",
                "pools": ["blue", "green"],
                "active_pool": "blue",
                "port": 8000,
                "container": "vllm",
                "load_balancer": balancer.lb_config("chat"),
                **service,
            }
        ],
        "runbooks_dir": str(books),
    }
    path = directory / "reliability.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_config(path)


def run_book(config: Config, name: str, **given: str) -> RunResult:
    book = load_runbooks(config)[name]
    values = params_mod.resolve(book, given, config)
    engine = flows.executor(
        config, db.make_engine(config.database_url()), confirm=lambda prompt: True
    )
    try:
        return engine.run(book, values, actor="test")
    finally:
        engine.close()


def pool_of_answers(url: str, count: int = 12) -> set[str]:
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return {client.get(url + "v1/models").headers["x-pool"] for _ in range(count)}


@dataclass
class Load:
    """A bounded client load through the balancer: plain and streamed completions."""

    url: str
    served: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        body = {
            "model": DEFAULT_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
        }
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        with httpx.Client(timeout=10.0) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                stream = self.served % 2 == 1
                try:
                    if stream:
                        with client.stream(
                            "POST", self.url + "v1/chat/completions", json={**body, "stream": True}
                        ) as r:
                            lines = [line for line in r.iter_lines() if line]
                        if r.status_code != 200 or lines[-1:] != ["data: [DONE]"]:
                            self.failures.append(f"stream {r.status_code} cut: {lines[-1:]}")
                    else:
                        r = client.post(self.url + "v1/chat/completions", json=body)
                        if r.status_code != 200:
                            self.failures.append(f"plain {r.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{'stream' if stream else 'plain'}: {exc!r}")
                self.served += 1
                time.sleep(0.01)


@pytest.fixture
def load_through() -> Iterator[Callable[[str], Load]]:
    loads: list[tuple[Load, threading.Thread]] = []

    def start(url: str) -> Load:
        load = Load(url)
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        loads.append((load, thread))
        return load

    yield start
    for running, thread in loads:
        running.stop.set()
        thread.join(15)


def redeploy(balancer: RigBalancer, node: str, image: str) -> None:
    """Replace a node's serving container, as an operator's bad deploy would."""
    root = balancer.fleet.state_dir
    docker_cli.dispatch(root, node, ["rm", "-f", "vllm"])
    _, err, code = docker_cli.dispatch(
        root, node, ["run", "-d", "--name", "vllm", "-p", "8000:8000", "-l", "pool=blue", image]
    )
    assert code == 0, err


def container_image(balancer: RigBalancer, node: str) -> str | None:
    record = balancer.fleet.state.container(node, "vllm")
    return record["Config"]["Image"] if record else None


def test_blue_green_under_load_fails_no_request_and_cuts_no_stream(
    rig_balancer: RigBalancer, tmp_path: Path, rig_db: str, load_through: Callable[[str], Load]
) -> None:
    rig_lb = rig_balancer
    config = write_config(rig_lb, tmp_path, rig_db)
    assert pool_of_answers(rig_lb.url) == {"blue"}
    load = load_through(rig_lb.url)
    time.sleep(0.5)

    result = run_book(config, "blue-green", service="chat", pool="green")
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
    config = write_config(rig_lb, tmp_path, rig_db)
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

    result = run_book(config, "switch-then-fail", service="chat")

    assert result.status == RunStatus.failed
    assert "step fail failed" in (result.reason or "") and "put back" in (result.reason or "")
    assert rig_lb.upstream_file.read_bytes() == upstream_before
    assert {n: container_image(rig_lb, n) for n in ("gpu-3", "gpu-4")} == images_before
    assert fleet.state.container("gpu-3", "vllm")["State"]["Running"]
    assert pool_of_answers(rig_lb.url) == {"blue"}


def test_a_bad_image_is_rolled_back_to_the_known_good_digest_on_every_node(
    rig_lb: NginxBalancer, tmp_path: Path, rig_db: str
) -> None:
    fleet = rig_lb.fleet
    good = f"registry.rig.local/serving/vllm@{fleet.state.publish_image(GOOD_REF)}"
    bad_digest = fleet.state.publish_image(BAD_REF)
    fleet.state.break_image(bad_digest)
    bad = f"registry.rig.local/serving/vllm@{bad_digest}"
    config = write_config(rig_lb, tmp_path, rig_db)
    with db.session_factory(db.make_engine(rig_db)).begin() as s:
        images.mark_good(s, service="chat", image=good, by="test", at=images_now())
    for node in ("gpu-1", "gpu-2"):
        redeploy(rig_lb, node, bad)
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
    }
    assert httpx.post(rig_lb.url + "v1/chat/completions", json=body).status_code == 500

    result = run_book(config, "image-rollback", service="chat", pool="blue")

    assert result.status == RunStatus.succeeded, result.reason
    assert {container_image(rig_lb, n) for n in ("gpu-1", "gpu-2")} == {good}
    for _ in range(6):
        assert httpx.post(rig_lb.url + "v1/chat/completions", json=body).status_code == 200
    with db.session_factory(db.make_engine(rig_db))() as s:
        recorded = images.deploys(s, service="chat")
    assert sorted(d.node for d in recorded) == ["gpu-1", "gpu-2"]
    assert {d.image for d in recorded} == {good}


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
    config = write_config(rig_lb, tmp_path, rig_db)
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
    config = write_config(rig_lb, tmp_path, rig_db)
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
    config = write_config(rig_lb, tmp_path, rig_db)
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
    config = write_config(rig_lb, tmp_path, rig_db)
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

    result = run_book(config, "drain-one", service="chat")
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
