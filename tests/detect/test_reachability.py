"""Node-down from several signals: a node is failed over only when nothing of it answers;
sshd alone down is `node-ssh-unreachable`, the serving port alone `serving-down`."""

from __future__ import annotations

import pytest

from reliability import catalog
from reliability.collect.base import Sample
from reliability.collect.liveness import PortState
from reliability.detect.reachability import NodeSignals, judge, node_signals

START = 1_750_000_000.0  # the fleet's clock starts here (conftest.py)


UP, DOWN = PortState(True, START - 60), PortState(False, START)
BEFORE, AFTER = START - 5, START + 2  # an SSH collection before / after the ports went silent


@pytest.mark.parametrize(
    ("ports", "collected_up", "collected_at", "problems"),
    [
        # Every probed port silent, no SSH collection since: unreachable.
        ({"ssh": DOWN, "serving": DOWN}, True, BEFORE, {"node"}),
        ({"ssh": DOWN, "serving": DOWN}, False, BEFORE, {"node"}),
        ({"ssh": DOWN}, True, BEFORE, {"node"}),  # a standby: sshd is all it has
        # sshd dead (or the collection failing) on a node that serves: never node-down.
        ({"ssh": DOWN, "serving": UP}, True, BEFORE, {"ssh"}),
        ({"ssh": DOWN, "serving": UP}, False, BEFORE, {"ssh"}),
        ({"ssh": UP, "serving": UP}, False, BEFORE, {"ssh"}),  # sshd hung, logins fail
        # The engine down on a live node.
        ({"ssh": UP, "serving": DOWN}, True, AFTER, {"serving"}),
        # Both ports silent, but a collection answered since (on a session opened before
        # sshd died): the node lives, sshd and the engine are down.
        ({"ssh": DOWN, "serving": DOWN}, True, AFTER, {"ssh", "serving"}),
        ({"ssh": DOWN, "serving": UP}, True, AFTER, {"ssh"}),
        ({"ssh": UP, "serving": UP}, True, AFTER, set()),
        # No probe data: the SSH collector alone decides, as before.
        ({}, False, BEFORE, {"node"}),
        ({}, True, BEFORE, set()),
        ({}, None, None, set()),
    ],
)
def test_signals_combine_into_the_node_problems(ports, collected_up, collected_at, problems):
    assert judge(NodeSignals(ports, collected_up, collected_at)) == problems


def _probed(fleet, node: str, ssh: bool, serving: bool, since: float) -> None:
    fleet.nodes[node].ports = {"ssh": (ssh, since), "serving": (serving, since)}


def test_a_cut_node_is_down_after_three_failed_rounds_and_fails_over(fleet, clock_for):
    clock = clock_for()
    clock.step = 0.4  # the probe's pace on a failing node
    for name in fleet.nodes:
        _probed(fleet, name, True, True, START - 60)
    assert clock.cycle() == []
    _probed(fleet, "gpu-1", False, False, clock.now)
    assert clock.cycle() == []  # pending: the first failed round
    assert clock.cycle() == []  # the second
    t = next(t for t in clock.cycle() if t.rule == "node-down")  # the third: 800ms held
    assert t.title == "gpu-1: node down, unreachable"
    assert t.severity == "critical"
    assert "ssh port no answer since" in t.summary and "serving port no answer" in t.summary
    assert t.runbook == "reliability runbook run node-failover --param node=gpu-1"


def test_sshd_down_on_a_serving_node_warns_and_never_fails_over(fleet, clock_for):
    clock = clock_for()
    clock.step = 1.0
    _probed(fleet, "gpu-1", False, True, START)
    fleet.nodes["gpu-1"].up = False  # the SSH collector fails too
    fleet.nodes["gpu-1"].gpu_source_up = False
    seen = clock.run(120)
    assert [(t.kind, t.rule) for t in seen] == [("firing", "node-ssh-unreachable")]
    assert seen[0].severity == "warning" and seen[0].runbook is None
    assert seen[0].title == "gpu-1: SSH unreachable, still serving"


def test_serving_port_down_with_sshd_up_suggests_restarting_the_container(fleet, clock_for):
    clock = clock_for()
    clock.step = 1.0
    _probed(fleet, "gpu-2", True, False, START)
    assert clock.run(59) == []
    (t,) = clock.run(2)
    assert t.rule == "serving-down" and t.title == "gpu-2: serving port down, node up"
    assert t.runbook == "reliability runbook run container-restart --param node=gpu-2"


def test_a_node_back_before_800ms_raises_nothing(fleet, clock_for):
    clock = clock_for()
    clock.step = 0.4
    _probed(fleet, "gpu-1", False, False, START)
    assert clock.cycle() == [] and clock.cycle() == []  # two failed rounds: 400ms held
    _probed(fleet, "gpu-1", True, True, clock.now)
    assert clock.run(120) == []


def test_the_loop_is_told_when_a_pending_node_down_runs_out(fleet, clock_for):
    """The detection loop evaluates then, not at its next tick (detect/loop.py)."""
    clock = clock_for()
    assert clock.evaluator.next_due() is None
    _probed(fleet, "gpu-1", False, False, START)
    clock.step = 0.1
    first = clock.now
    clock.cycle()
    assert clock.evaluator.next_due() == pytest.approx(first + 0.8)


@pytest.mark.parametrize(
    ("ended", "took", "problems"), [(0.3, 0.5, {"node"}), (0.3, 0.1, {"ssh", "serving"})]
)
def test_only_an_ssh_collection_started_after_the_ports_went_silent_counts_against_down(
    ended, took, problems
):
    """A collection whose answer came before the cut may be published after the first
    failed connect (a busy daemon): its end is later, its start is not."""
    samples = [
        Sample(catalog.NODE_LIVENESS_UP, ("gpu-1", "ssh"), 0.0),
        Sample(catalog.NODE_LIVENESS_SINCE, ("gpu-1", "ssh"), START),
        Sample(catalog.NODE_LIVENESS_UP, ("gpu-1", "serving"), 0.0),
        Sample(catalog.NODE_LIVENESS_SINCE, ("gpu-1", "serving"), START),
        Sample(catalog.NODE_UP, ("gpu-1",), 1.0),
        Sample(catalog.TARGET_UP, ("node", "gpu-1"), 1.0),
        Sample(catalog.TARGET_LAST_SUCCESS, ("node", "gpu-1"), START + ended),
        Sample(catalog.TARGET_DURATION, ("node", "gpu-1"), took),
    ]
    by_metric: dict[str, list[Sample]] = {}
    for s in samples:
        by_metric.setdefault(s.metric.name, []).append(s)
    assert judge(node_signals(by_metric)["gpu-1"]) == problems
