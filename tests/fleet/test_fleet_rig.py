"""Node failures one after another on the rig (real sshd nodes, the docker stand-in, a real
nginx in front): each failover takes a free standby from the fleet's live state, a dead node
never comes back into the upstream, and with no standby left the run does not start."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from reliability import db
from reliability.cli import main
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.fleet import service as fleet_service
from reliability.images import service as images
from reliability.runbooks import flows
from reliability.runbooks import params as params_mod
from reliability.runbooks import service as runs
from reliability.runbooks.executor import RunResult
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunStatus
from reliability.runbooks.plan import PlanError
from reliability.testing.fixtures import RIG_LB_IMAGE
from reliability.testing.fleet import Fleet, missing_requirement
from reliability.testing.nginx import NginxBalancer, parse_members
from reliability.testing.rigconfig import rig_config
from reliability.testing.services import service_missing

POOLS = {"gpu-1": "blue", "gpu-2": "blue", "gpu-3": "blue", "gpu-4": "green"}
STANDBYS = ("spare-1", "spare-2")
GOOD_REF = "registry.rig.local/serving/vllm:good"
FAILOVER_WITHIN = 30.0  # seconds from the cut to the run verified through nginx


@pytest.fixture
def rig() -> Iterator[NginxBalancer]:
    """Pool blue of three nodes, green of one, two standbys, nginx over blue on lb-1."""
    reason = missing_requirement() or NginxBalancer.missing_requirement()
    if reason:
        service_missing(reason)
    if os.geteuid() != 0:
        service_missing("the SSH fleet fixtures need root (login user, iptables)")
    with Fleet([*POOLS, *STANDBYS, "lb-1"], pools=POOLS) as fleet:
        for name in POOLS:
            fleet.run_container(name, RIG_LB_IMAGE)
        blue = [f"{fleet.node(n).address}:8000" for n, p in POOLS.items() if p == "blue"]
        with NginxBalancer(fleet, "lb-1", service="chat", members=blue) as balancer:
            yield balancer


def write_config(balancer: NginxBalancer, directory: Path) -> Config:
    roles = {**dict.fromkeys(STANDBYS, "standby"), "lb-1": "lb"}
    return load_config(rig_config(balancer, directory, roles=roles))


def fail_over(config: Config, node: str) -> RunResult:
    book = load_runbooks(config)["node-failover"]
    runner = flows.executor(config, db.make_engine(config.database_url()))
    try:
        return runner.run(book, params_mod.resolve(book, {"node": node}, config), actor="test")
    finally:
        runner.close()


def fleet_now(config: Config) -> dict[str, tuple[str, str | None]]:
    with db.session_factory(db.make_engine(config.database_url()))() as s:
        return {r.node: (r.state.value, r.pool) for r in fleet_service.nodes(s, config=config)}


def live_members(balancer: NginxBalancer) -> dict[str, bool]:
    """Upstream address -> serving (not marked down)."""
    return {a: not down for a, down in parse_members(balancer.upstream_file.read_text())}


def answering(balancer: NginxBalancer, count: int = 12) -> set[str]:
    """The upstream addresses that answered `count` requests through nginx."""
    with httpx.Client(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        responses = [c.get(balancer.url + "v1/models") for _ in range(count)]
    assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    return {r.headers["x-upstream-addr"] for r in responses}


def test_three_failures_in_a_row_on_one_pool_with_two_standbys(
    rig: NginxBalancer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = rig.fleet
    config = write_config(rig, tmp_path)
    good = f"registry.rig.local/serving/vllm@{fleet.state.publish_image(GOOD_REF)}"
    with db.session_factory(db.make_engine(config.database_url())).begin() as s:
        images.mark_good(s, service="chat", image=good, by="test", at=datetime.now(UTC))

    def at(name: str) -> str:
        return f"{fleet.node(name).address}:8000"

    timings: dict[str, float] = {}
    dead: list[str] = []
    for failed, standby in (("gpu-1", "spare-1"), ("gpu-2", "spare-2")):
        fleet.cut(failed)
        dead.append(failed)
        cut_at = time.monotonic()
        result = fail_over(config, failed)
        timings[f"cold {failed} -> {standby}"] = time.monotonic() - cut_at
        assert result.status == RunStatus.succeeded, result.reason
        members = live_members(rig)
        assert members[at(standby)] is True
        assert not any(members.get(at(d)) for d in dead)  # a dead node never serves again
        assert at(standby) in answering(rig)
        assert fleet_now(config)[failed] == ("out", "blue")
        assert fleet_now(config)[standby] == ("serving", "blue")
    # Each failover changed only its own lines: gpu-1 stays down, spare-1 stays in.
    assert live_members(rig) == {
        at("gpu-1"): False,
        at("gpu-2"): False,
        at("gpu-3"): True,
        at("spare-1"): True,
        at("spare-2"): True,
    }

    # The third failure of pool blue: both standbys serve; the run does not start.
    fleet.cut("gpu-3")
    upstream, states = rig.upstream_file.read_bytes(), fleet_now(config)
    spare_2_image = fleet.state.container("spare-2", "vllm")["Config"]["Image"]
    with pytest.raises(PlanError) as refused:
        fail_over(config, "gpu-3")
    assert str(refused.value) == (
        "step take-standby: no free standby for pool blue of service chat: every standby "
        "serves or is out (spare-1 serving blue, spare-2 serving blue); put one back with "
        "`reliability nodes return NODE` or add a standby node to the config"
    )
    assert rig.upstream_file.read_bytes() == upstream
    assert fleet_now(config) == states
    assert fleet.state.container("spare-2", "vllm")["Config"]["Image"] == spare_2_image
    with db.session_factory(db.make_engine(config.database_url()))() as s:
        assert len(runs.history(s, limit=10)) == 2  # no run was even recorded

    # gpu-1 is repaired and comes back warm: the known-good image runs on it, checked.
    fleet.restore("gpu-1")
    returned = CliRunner().invoke(
        main, ["nodes", "return", "gpu-1", "--warm", "-c", str(config.source)]
    )
    assert returned.exit_code == 0, returned.output
    assert fleet_now(config)["gpu-1"] == ("warm-standby", None)
    # gpu-3 fails over onto it with no deploy: drain and add only.
    cut_at = time.monotonic()
    result = fail_over(config, "gpu-3")
    timings["warm gpu-3 -> gpu-1"] = time.monotonic() - cut_at
    assert result.status == RunStatus.succeeded, result.reason
    with db.session_factory(db.make_engine(config.database_url()))() as s:
        steps = {u.step: u.status.value for u in runs.units(s, run_id=result.run_id)}
    assert steps["start-standby"] == "skipped"
    assert live_members(rig)[at("gpu-1")] is True
    assert at("gpu-1") in answering(rig)

    assert all(seconds < FAILOVER_WITHIN for seconds in timings.values()), timings
    with capsys.disabled():
        print(
            "\ncut -> standby serving (run verified through nginx):",
            json.dumps({k: round(v, 2) for k, v in timings.items()}),
        )
