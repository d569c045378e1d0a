"""The built-in rules: each failure of CONTEXT.md, as the fleet shows it, becomes the one
incident an on-call engineer expects, with the command that fixes it."""

from __future__ import annotations

from reliability.config.rules import Rules
from reliability.detect.builtin import BUILTIN, active_rules
from reliability.detect.rules import check_rule


def only(transitions, kind="firing"):
    [t] = [t for t in transitions if t.kind == kind]
    return t


def test_gpu_utilisation_above_85_percent_for_5_minutes_is_one_incident_per_node(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-1"].utilization.update({str(g): 0.97 for g in range(8)})
    assert clock.run(295) == []
    t = only(clock.run(10))
    assert t.title == "gpu-1: GPU utilisation 97% above 85% on 8 of 8 GPUs"
    assert t.severity == "warning"
    assert t.labels == {"node": "gpu-1"}
    assert "busier than 85% for over 5m" in t.summary
    assert t.runbook is None


def test_temperature_at_the_slowdown_threshold(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-2"].temperature["3"] = 91.0
    t = only(clock.run(65))
    assert t.title == "gpu-2: GPU temperature 91°C at slowdown 90°C"
    assert t.severity == "warning"
    assert (t.value, t.threshold, t.value_text, t.threshold_text) == (91.0, 90.0, "91°C", "90°C")
    assert t.summary.startswith("GPU 3 on gpu-2 is at 91°C, at or above its slowdown")
    assert "since 2025-06-15 15:06:40 UTC (1 of 8 GPUs hot)" in t.summary


def test_a_critical_xid_names_its_action_and_suggests_failing_the_node_over(fleet, clock_for):
    clock = clock_for()
    clock.run(30)
    fleet.nodes["gpu-1"].xids[("3", 79)] = 1
    t = only(clock.cycle())
    assert t.title == "gpu-1: XID 79 on GPU 3 (GPU has fallen off the bus), action: reboot_node"
    assert t.severity == "critical"
    assert t.runbook == "reliability runbook run node-failover --param node=gpu-1"
    assert t.labels["action"] == "reboot_node"


def test_an_xid_the_application_recovers_from_raises_nothing(fleet, clock_for):
    clock = clock_for()
    clock.run(30)
    fleet.nodes["gpu-1"].xids[("3", 13)] = 4  # graphics engine exception: restart the app
    assert clock.run(60) == []


def test_a_gpu_lost(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-2"].lost = {"5"}
    t = only(clock.cycle())
    assert t.title == "gpu-2: 1 of 8 GPUs lost"
    assert t.severity == "critical"
    assert "gpu-2 has 7 of 8 GPUs working" in t.summary and "lost: 5." in t.summary
    assert t.runbook == "reliability runbook run node-failover --param node=gpu-2"


def test_fewer_gpus_visible_than_expected_is_a_gpu_lost(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-2"].missing = 2  # the driver no longer lists them at all
    t = only(clock.cycle())
    assert t.title == "gpu-2: 2 of 8 GPUs lost"
    assert "lost: not enumerated by the driver" in t.summary


def test_node_down_after_two_failed_collections_where_no_port_is_probed(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-3"].up = False
    assert clock.cycle() == []
    t = only(clock.run(10))
    assert t.title == "gpu-3: node down, unreachable"
    assert "SSH collection fails" in t.summary
    assert t.severity == "critical"
    assert t.runbook == "reliability runbook run node-failover --param node=gpu-3"
    assert t.since == clock.now - 15  # the first failed collection


def test_gpu_metrics_unavailable_while_the_node_answers(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-2"].gpu_source_up = False  # "NVIDIA-SMI has failed"
    t = only(clock.run(65))
    assert t.title == "gpu-2: GPU metrics unavailable"
    assert t.severity == "warning"


def test_disk_almost_full(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-1"].disk["/var/lib/docker"] = (20e9, 400e9)
    t = only(clock.run(125))
    assert t.title == "gpu-1: disk /var/lib/docker 5% free"
    assert "has 20.0 GB free of 400.0 GB (5%, below 10%)" in t.summary
    assert t.severity == "warning"


def test_hosted_api_busy_for_3s_suggests_the_upstream_failover(fleet, clock_for):
    clock = clock_for()
    fleet.overload["hosted-api"] = 0.6
    assert clock.cycle() == []  # pending: 3 of the last 5 probes busy, not yet for 3s
    t = only(clock.cycle())
    assert t.title == "hosted-api: hosted API overloaded, 60% of probes busy (503/529/429)"
    assert "over the last 15s were answered busy" in t.summary
    assert t.severity == "critical"
    assert t.runbook == "reliability runbook run upstream-failover --param service=chat"
    assert "pool" not in t.labels


def test_a_busy_share_of_half_is_not_an_overload(fleet, clock_for):
    clock = clock_for()
    fleet.overload["hosted-api"] = 0.5
    assert clock.run(300) == []


def test_local_pool_errors_suggest_switching_to_the_other_pool(fleet, clock_for):
    clock = clock_for()
    fleet.endpoints["blue-1"] = 0.4
    t = only(clock.run(65))
    assert t.title == "blue-1: 40% of probes failing"
    assert t.runbook == "reliability runbook run blue-green --param service=chat --param pool=green"
    assert t.labels["node"] == "gpu-1" and t.labels["pool"] == "blue"


def test_every_builtin_passes_the_checks_a_custom_rule_gets():
    names = {r.name for r in BUILTIN}
    for rule in BUILTIN:
        assert list(check_rule(rule, rule_names=names, endpoints=())) == [], rule.name


def test_a_disabled_builtin_stays_silent(fleet, clock_for):
    clock = clock_for(rules={"disabled": ["gpu-temperature-slowdown"]})
    fleet.nodes["gpu-2"].temperature["3"] = 95.0
    assert clock.run(600) == []


def test_a_custom_rule_with_a_builtins_name_replaces_it(fleet, clock_for):
    tuned = {
        "name": "gpu-utilization-high",
        "type": "threshold",
        "metric": "reliability_gpu_utilization_ratio",
        "value": 0.95,
        "for": "1m",
        "group_by": ["node"],
        "title": "{node}: busy at {value}",
    }
    clock = clock_for(rules={"custom": [tuned]})
    fleet.nodes["gpu-1"].utilization["0"] = 0.90
    fleet.nodes["gpu-2"].utilization["0"] = 0.97
    [t] = clock.run(65)
    assert t.title == "gpu-2: busy at 97%"
    assert [r.name for r in active_rules(Rules(custom=[tuned]))].count(tuned["name"]) == 1


def test_builtin_false_keeps_only_the_custom_rules(fleet, clock_for):
    custom = {
        "name": "hot",
        "type": "threshold",
        "metric": "reliability_gpu_temperature_celsius",
        "value": 80,
        "group_by": ["node"],
    }
    clock = clock_for(rules={"builtin": False, "custom": [custom]})
    fleet.nodes["gpu-1"].temperature["0"] = 95.0
    fleet.nodes["gpu-3"].up = False
    [t] = clock.run(120)
    assert (t.rule, t.title) == ("hot", "gpu-1: hot")
