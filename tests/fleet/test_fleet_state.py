"""The fleet's live state: seeded from the config once, changed by runbooks in the run that
does it and put back by their undo; and the nodes a plan chooses from it (who serves a pool
now, the first free standby), on both database backends where a database is involved."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from reliability import db
from reliability.cli_support import load_config
from reliability.config import Config, ConfigError
from reliability.fleet import service as fleet
from reliability.runbooks import flows
from reliability.runbooks.executor import Executor, plan_live
from reliability.runbooks.load import load_dir, load_runbooks
from reliability.runbooks.models import RunStatus
from reliability.runbooks.params import resolve
from reliability.runbooks.plan import LiveNode, PlanError, first_picture, make_plan

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]
NODES = [
    {"name": "gpu-1", "address": "127.0.1.1", "pool": "blue"},
    {"name": "gpu-2", "address": "127.0.1.2", "pool": "blue"},
    {"name": "gpu-3", "address": "127.0.1.3", "pool": "green"},
    {"name": "spare-1", "address": "127.0.1.4", "role": "standby"},
    {"name": "spare-2", "address": "127.0.1.5", "role": "standby"},
    {"name": "lb-1", "address": "127.0.1.6", "role": "lb"},
]


def write_config(directory: Path, database_url: str, nodes: list[dict[str, Any]] = NODES) -> Config:
    path = directory / "reliability.yaml"
    config = {
        "database": {"url": database_url},
        "nodes": nodes,
        "services": [
            {
                "name": "chat",
                "pools": ["blue", "green"],
                "active_pool": "blue",
                "load_balancer": {
                    "kind": "nginx",
                    "node": "lb-1",
                    "upstream_file": "/etc/nginx/conf.d/chat.conf",
                    "url": "http://127.0.0.1:9/",
                },
            }
        ],
        "runbooks_dir": str(REPO / "runbooks"),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_config(path)


@pytest.fixture
def config(tmp_path: Path, database_url: str, engine: sa.Engine) -> Config:
    return write_config(tmp_path, database_url)


def states(session: Session, config: Config) -> dict[str, tuple[str, str | None]]:
    """Each node's (state, pool), read in a transaction of its own (a run writes between)."""
    session.expire_all()
    found = {r.node: (r.state.value, r.pool) for r in fleet.nodes(session, config=config)}
    session.rollback()
    return found


# --- seeding ------------------------------------------------------------------------------
def test_the_first_start_seeds_the_fleet_from_the_config(session: Session, config: Config):
    fleet.seed(session, config=config, now=T0)
    session.commit()
    assert states(session, config) == {
        "gpu-1": ("serving", "blue"),
        "gpu-2": ("serving", "blue"),
        "gpu-3": ("serving", "green"),
        "spare-1": ("standby", None),
        "spare-2": ("standby", None),
    }  # lb-1 is the balancer's node, not the fleet's
    row = fleet.get(session, node="gpu-3")
    assert (row.service, row.by, row.since) == ("chat", "config", T0)


def test_the_database_wins_over_the_config_and_new_nodes_are_seeded(
    session: Session, config: Config, tmp_path: Path, database_url: str
):
    fleet.seed(session, config=config, now=T0)
    fleet.set_state(
        session,
        node="spare-1",
        state="out",
        service=None,
        pool=None,
        reason="disk",
        by="alice",
        at=T0,
    )
    session.commit()
    grown = write_config(
        tmp_path,
        database_url,
        [*NODES, {"name": "spare-3", "address": "127.0.0.1", "role": "standby"}],
    )
    fleet.seed(session, config=grown, now=T0)
    fleet.seed(session, config=grown, now=T0)  # idempotent
    session.commit()
    seen = states(session, grown)
    assert seen["spare-1"] == ("out", None)  # not reset to the config's standby
    assert seen["spare-3"] == ("standby", None)
    assert len(seen) == 6


def test_a_change_against_a_state_someone_else_changed_is_refused_and_changes_nothing(
    session: Session, config: Config
):
    fleet.seed(session, config=config, now=T0)
    fleet.set_state(
        session,
        node="spare-1",
        state="serving",
        service="chat",
        pool="blue",
        reason="run 1",
        by="run 1",
        at=T0,
    )
    with pytest.raises(fleet.StateChanged, match=r"spare-1 was standby .* and is serving blue now"):
        fleet.set_state(
            session,
            node="spare-1",
            state="serving",
            service="chat",
            pool="green",
            reason=None,
            by="run 2",
            at=T0,
            expect=fleet.Seen("standby", None),
        )
    assert fleet.get(session, node="spare-1").pool == "blue"
    with pytest.raises(fleet.UnknownNode):
        fleet.set_state(
            session, node="gpu-9", state="out", service=None, pool=None, reason=None, by="x", at=T0
        )


def test_a_pool_two_services_list_is_refused_by_the_config_check(tmp_path: Path):
    path = tmp_path / "reliability.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "nodes": [{"name": "gpu-1", "address": "127.0.1.1", "pool": "blue"}],
                "services": [
                    {"name": "chat", "pools": ["blue"], "active_pool": "blue"},
                    {"name": "embed", "pools": ["blue"], "active_pool": "blue"},
                ],
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}:13: services[1].pools[0]: pool 'blue' is also a pool of service 'chat': its "
        "nodes (gpu-1) would be in two pools at once; give each service pools of its own"
    )


# --- selection: plans read the live state ---------------------------------------------------
def live(config: Config, **changed: tuple[str, str | None]) -> dict[str, LiveNode]:
    picture = first_picture(config)
    for name, (state, pool) in changed.items():
        picture[name.replace("_", "-")] = LiveNode(name.replace("_", "-"), state, pool, "chat")
    return picture


def failover_plan(config: Config, node: str, fleet_now: dict[str, LiveNode]):
    book = load_runbooks(config)["node-failover"]
    return make_plan(book, resolve(book, {"node": node}, config), config, fleet=fleet_now)


def targets(plan, step: str) -> list[str]:
    return [u.target for s in plan.steps if s.id == step for u in s.units]


def upstream_edits(plan, step: str) -> list[str]:
    """What the step's edit of the live upstream file does, as the plan shows it."""
    (found,) = [s for s in plan.steps if s.id == step]
    return [o.detail for u in found.units for o in u.ops if o.kind == "edit"]


def test_the_first_free_standby_is_taken_warm_first_then_in_config_order(config: Config):
    assert targets(failover_plan(config, "gpu-1", live(config)), "take-standby") == ["spare-1"]
    warm = live(config, spare_2=("warm-standby", None))
    assert targets(failover_plan(config, "gpu-1", warm), "take-standby") == ["spare-2"]
    # One standby serving already (it took over before), the other is free.
    taken = live(config, gpu_1=("out", "blue"), spare_1=("serving", "blue"))
    plan = failover_plan(config, "gpu-2", taken)
    assert targets(plan, "take-standby") == ["spare-2"]
    assert targets(plan, "start-standby") == ["spare-2"]  # the same node in every step


def test_a_pool_is_the_nodes_serving_it_now(config: Config):
    taken = live(config, gpu_1=("out", "blue"), spare_1=("serving", "blue"))
    plan = failover_plan(config, "gpu-2", taken)
    # Only gpu-2 goes down and spare-2 joins: the dead gpu-1 and the serving spare-1 are
    # lines of the live file no edit touches.
    assert upstream_edits(plan, "take-out") == ["mark gpu-2 (127.0.1.2:8000) down in upstream chat"]
    [added] = upstream_edits(plan, "put-in")
    assert added.startswith("add spare-2 (127.0.1.5:8000) to upstream chat")


def test_with_no_free_standby_the_plan_fails_and_says_what_to_do(config: Config):
    busy = live(
        config,
        gpu_1=("out", "blue"),
        gpu_2=("out", "blue"),
        spare_1=("serving", "blue"),
        spare_2=("serving", "blue"),
    )
    # gpu-3 of pool green fails: both standbys serve, neither is taken from pool blue.
    with pytest.raises(PlanError) as caught:
        failover_plan(config, "gpu-3", busy)
    assert str(caught.value) == (
        "step take-standby: no free standby for pool green of service chat: every standby "
        "serves or is out (spare-1 serving blue, spare-2 serving blue); put one back with "
        "`reliability nodes return NODE` or add a standby node to the config"
    )


def test_a_node_already_out_is_not_failed_over_again(config: Config):
    gone = live(config, gpu_3=("out", "green"))
    with pytest.raises(PlanError, match="step mark-out: gpu-3 is out, not serving"):
        failover_plan(config, "gpu-3", gone)


# --- transitions: a run changes the state, its undo puts it back ------------------------------
SWAP = """
description: Mark a node out and give its pool a standby; then a check that may fail.
params:
  node:
    type: node
  fail:
    type: choice
    choices: ["yes", "no"]
    default: "no"
targets:
  failed:
    node: "{node}"
  standby:
    role: standby
    limit: 1
    for_pool: "{node.pool}"
steps:
  - id: mark-out
    action: node_state
    nodes: failed
    args: {state: out, from: [serving], reason: "failed"}
    undo: restore
  - id: take-standby
    action: node_state
    nodes: standby
    args: {state: serving, pool: "{node.pool}", reason: "took over from {node}"}
    undo: restore
  - id: maybe-fail
    action: http_check
    when: {value: "{fail}", equals: "yes"}
    args: {url: "http://127.0.0.1:9/", within: 0.2s, interval: 0.1s}
"""


@pytest.fixture
def swap(tmp_path: Path):
    directory = tmp_path / "books"
    directory.mkdir()
    (directory / "swap.yaml").write_text(SWAP)
    return load_dir(directory)["swap"]


def run_swap(config: Config, engine: sa.Engine, book, **given: str):
    runner = flows.executor(config, engine)
    try:
        return runner.run(book, resolve(book, given, config), actor="test")
    finally:
        runner.close()


def test_a_run_changes_the_state_and_records_by_which_run(
    session: Session, config: Config, engine: sa.Engine, swap
):
    result = run_swap(config, engine, swap, node="gpu-1")
    assert result.status == RunStatus.succeeded, result.reason
    assert states(session, config) == {
        "gpu-1": ("out", "blue"),
        "gpu-2": ("serving", "blue"),
        "gpu-3": ("serving", "green"),
        "spare-1": ("serving", "blue"),
        "spare-2": ("standby", None),
    }
    spare = fleet.get(session, node="spare-1")
    assert (spare.by, spare.run_id, spare.reason) == (
        f"run {result.run_id}",
        result.run_id,
        "took over from gpu-1",
    )
    session.rollback()
    # The next failure of the pool takes the other standby.
    again = run_swap(config, engine, swap, node="gpu-2")
    assert again.status == RunStatus.succeeded, again.reason
    assert states(session, config)["spare-2"] == ("serving", "blue")


def test_a_failed_run_puts_every_state_back(
    session: Session, config: Config, engine: sa.Engine, swap
):
    with db.session_factory(engine).begin() as s:
        fleet.seed(s, config=config, now=T0)
    before = states(session, config)
    result = run_swap(config, engine, swap, node="gpu-1", fail="yes")
    assert result.status == RunStatus.failed
    assert "everything it changed was put back" in (result.reason or "")
    assert states(session, config) == before
    assert fleet.get(session, node="spare-1").reason is None


def test_a_standby_taken_by_another_run_since_the_plan_fails_the_run_and_is_undone(
    session: Session, config: Config, engine: sa.Engine, swap
):
    runner = flows.executor(config, engine)
    try:
        planned = runner.plan(swap, resolve(swap, {"node": "gpu-1"}, config))
        with db.session_factory(engine).begin() as s:  # another run takes spare-1 meanwhile
            fleet.seed(s, config=config, now=T0)
            fleet.set_state(
                s,
                node="spare-1",
                state="serving",
                service="chat",
                pool="green",
                reason="other",
                by="run 99",
                at=T0,
            )
        result = runner.run(swap, resolve(swap, {"node": "gpu-1"}, config), actor="t", plan=planned)
    finally:
        runner.close()
    assert result.status == RunStatus.failed
    assert "spare-1 was standby when the run was planned and is serving green now" in (
        result.reason or ""
    )
    seen = states(session, config)
    assert seen["gpu-1"] == ("serving", "blue")  # its mark-out was undone
    assert seen["spare-1"] == ("serving", "green")  # the other run's claim stands


def test_without_a_fleet_the_node_state_step_fails_and_nothing_changes(
    config: Config, engine: sa.Engine, swap
):
    runner = Executor(config, engine)  # no domain hooks: the config's picture, no fleet table
    try:
        result = runner.run(swap, resolve(swap, {"node": "gpu-1"}, config), actor="t")
    finally:
        runner.close()
    assert result.status == RunStatus.failed
    assert "no fleet to change the state of a node in" in (result.reason or "")


def test_a_failover_onto_a_warm_standby_skips_the_deploy(config: Config):
    warm = failover_plan(config, "gpu-1", live(config, spare_2=("warm-standby", None)))
    (start,) = [s for s in warm.steps if s.id == "start-standby"]
    assert start.skipped == (
        "spare-2: a warm standby, the known-good image already runs there, checked"
    )
    assert targets(warm, "put-in") == ["lb-1"]  # it is only drained into the upstream
    cold = failover_plan(config, "gpu-1", live(config))
    assert targets(cold, "start-standby") == ["spare-1"]


def test_a_resumed_run_plans_with_the_fleet_as_it_found_it(
    session: Session, config: Config, engine: sa.Engine, swap
):
    result = run_swap(config, engine, swap, node="gpu-1")
    assert result.status == RunStatus.succeeded, result.reason
    values = resolve(swap, {"node": "gpu-1"}, config)
    with db.session_factory(engine).begin() as s:
        with pytest.raises(PlanError, match="step mark-out: gpu-1 is out"):
            plan_live(s, config, swap, values, flows.HOOKS)
        # Resuming it: its own changes rewound, its steps plan as they did the first time.
        again = plan_live(s, config, swap, values, flows.HOOKS, resumed=result.run_id)
    assert targets(again, "mark-out") == ["gpu-1"]
    assert targets(again, "take-standby") == ["spare-1"]


def test_a_plan_writes_nothing_to_the_fleet(session: Session, config: Config, engine, swap):
    with db.session_factory(engine).begin() as s:
        plan_live(s, config, swap, resolve(swap, {"node": "gpu-1"}, config), flows.HOOKS)
    assert states(session, config) == {}


def test_the_daemons_timer_seeds_the_fleet_on_its_first_tick(
    session: Session, config: Config, database_url: str
):
    from reliability.daemon import _IncidentTimers, _membership

    assert states(session, config) == {}
    membership = _membership(config)
    membership.register()
    membership.step()  # alone on the database: the leader, who runs the timers
    try:
        _IncidentTimers(config, db.LazyEngine(database_url), None, membership)()
    finally:
        membership.stop()
    assert states(session, config)["spare-2"] == ("standby", None)
