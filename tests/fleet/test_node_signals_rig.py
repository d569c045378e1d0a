"""Node-down from several signals, on the rig with the real daemon: a cut node (iptables) is
down and failed over on its own; a node whose sshd died but still serves is only
`node-ssh-unreachable`, never failed over; a node whose engine died while sshd answers
is `serving-down`, whose suggested runbook restarts the container."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from reliability import db
from reliability.cli_support import load_config
from reliability.images import service as images
from reliability.runbooks import flows
from reliability.runbooks import params as params_mod
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunStatus
from reliability.testing.daemon import DaemonProcess, Watch, node_config
from reliability.testing.fixtures import RIG_LB_IMAGE, RIG_LB_NODES
from reliability.testing.loopback import free_port
from reliability.testing.nginx import NginxBalancer
from reliability.testing.waiting import wait_for

SETTLE = 1.0  # a few SSH collections once the probe sees every node
HOLD = 6.0  # how long a fault that must not fail a node over is watched


def _mark_good(balancer: NginxBalancer, config: Path) -> None:
    good = f"vllm/vllm-openai@{balancer.fleet.state.publish_image(RIG_LB_IMAGE)}"
    url = load_config(config).database_url()
    with db.session_factory(db.make_engine(url)).begin() as s:
        images.mark_good(s, service="chat", image=good, by="test", at=datetime.now(UTC))


def _upstreams(balancer: NginxBalancer, count: int = 12) -> set[str]:
    with httpx.Client(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        responses = [c.get(balancer.url + "v1/models") for _ in range(count)]
    assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    return {r.headers["x-upstream-addr"] for r in responses}


@contextlib.contextmanager
def running_daemon(
    balancer: NginxBalancer,
    directory: Path,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    mark_good: bool = True,
) -> Iterator[tuple[DaemonProcess, Watch]]:
    """The daemon on the balancer's fleet (`overrides`: rule -> fields), once its probe sees
    every node and a few SSH collections ran; stopped at the exit, its ``output`` kept."""
    port = free_port()
    config = node_config(balancer, directory, overrides=overrides, port=port)
    if mark_good:
        _mark_good(balancer, config)
    watch = Watch(config)
    try:
        with DaemonProcess(config) as daemon:
            daemon.wait_probing(port, RIG_LB_NODES)
            time.sleep(SETTLE)
            yield daemon, watch
    finally:
        watch.close()


def test_a_cut_node_is_down_on_every_signal_and_failed_over_on_its_own(
    rig_lb: NginxBalancer, tmp_path: Path
) -> None:
    fleet = rig_lb.fleet
    try:
        with running_daemon(rig_lb, tmp_path) as (daemon, watch):
            fleet.cut("gpu-1")
            down = wait_for(
                "node-down of gpu-1",
                lambda: watch.open_incidents().get(("node-down", "gpu-1")),
                timeout=30,
            )
            run = wait_for(
                "the automatic node-failover ended",
                lambda: next((r for r in watch.runs() if r.status != RunStatus.running), None),
                timeout=120,
            )
            opened = watch.open_incidents()
    finally:
        fleet.restore("gpu-1")
    assert down.severity.value == "critical", daemon.output[-3000:]
    assert "ssh port no answer" in (down.summary or "")
    assert run.runbook == "node-failover" and run.params == {"node": "gpu-1"}
    assert run.status == RunStatus.succeeded, run.reason
    assert run.incident_id == down.id
    # Unreachable is one problem, not three.
    assert {rule for rule, node in opened if node == "gpu-1"} == {"node-down"}
    assert f"{fleet.node('spare-1').address}:8000" in _upstreams(rig_lb)


def test_sshd_killed_on_a_serving_node_warns_and_never_fails_it_over(
    rig_lb: NginxBalancer, tmp_path: Path
) -> None:
    fleet = rig_lb.fleet
    overrides = {"node-ssh-unreachable": {"for": "2s"}}
    try:
        with running_daemon(rig_lb, tmp_path, overrides=overrides) as (daemon, watch):
            fleet.kill_sshd("gpu-2")
            ssh = wait_for(
                "node-ssh-unreachable of gpu-2",
                lambda: watch.open_incidents().get(("node-ssh-unreachable", "gpu-2")),
                timeout=30,
            )
            time.sleep(HOLD)
            opened, runs = watch.open_incidents(), watch.runs()
    finally:
        fleet.start_sshd("gpu-2")
    assert ssh.severity.value == "warning", daemon.output[-3000:]
    assert ssh.title == "gpu-2: SSH unreachable, still serving"
    assert ("node-down", "gpu-2") not in opened
    assert runs == []  # no failover of a node that serves
    assert f"{fleet.node('gpu-2').address}:8000" in _upstreams(rig_lb)


def test_serving_port_down_with_sshd_up_suggests_the_container_restart_that_fixes_it(
    rig_lb: NginxBalancer, tmp_path: Path
) -> None:
    fleet = rig_lb.fleet
    overrides = {"serving-down": {"for": "2s"}}
    with running_daemon(rig_lb, tmp_path, overrides=overrides, mark_good=False) as (daemon, watch):
        engine = fleet.engine.server("gpu-2", "vllm") if fleet.engine else None
        assert engine is not None
        engine.set_mode("die")
        with contextlib.suppress(httpx.TransportError):  # it dies on its next request
            httpx.get(f"{fleet.inference_url('gpu-2')}/health", timeout=2.0)
        down = wait_for(
            "serving-down of gpu-2",
            lambda: watch.open_incidents().get(("serving-down", "gpu-2")),
            timeout=30,
        )
        time.sleep(HOLD)
        opened, runs = watch.open_incidents(), watch.runs()
    assert down.title == "gpu-2: serving port down, node up", daemon.output[-3000:]
    assert ("node-down", "gpu-2") not in opened and runs == []
    assert "Restart the container" in (down.summary or "")
    # The suggested runbook, as the incident offers it, brings the engine back.
    loaded = load_config(daemon.config)
    book = load_runbooks(loaded)["container-restart"]
    runner = flows.executor(loaded, db.make_engine(loaded.database_url()))
    try:
        result = runner.run(book, params_mod.resolve(book, {"node": "gpu-2"}, loaded), actor="t")
    finally:
        runner.close()
    assert result.status == RunStatus.succeeded, result.reason
    assert httpx.get(f"{fleet.inference_url('gpu-2')}/health", timeout=5).status_code == 200
    assert fleet.state.container("gpu-2", "vllm")["State"]["Running"]
