"""The evaluator's lifecycle as on-call sees it: when an incident opens, when it closes,
how many there are, and what silences them."""

from __future__ import annotations

from reliability.detect.evaluator import fingerprint

HOT = 95.0  # above the fleet's 90°C slowdown temperature
COOL = 60.0


def kinds(transitions):
    return [(t.kind, t.rule, t.labels.get("endpoint") or t.labels.get("node")) for t in transitions]


def test_a_condition_must_hold_for_its_for_before_it_fires(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-1"].temperature["0"] = HOT
    assert clock.run(60) == []  # pending: cycles at 0..55 s
    [t] = clock.cycle()  # 60 s after it started
    assert t.kind == "firing" and t.since == clock.now - 65
    assert clock.run(300) == []  # still firing: no second message


def test_a_blip_shorter_than_for_raises_nothing_and_restarts_the_wait(fleet, clock_for):
    clock = clock_for()
    node = fleet.nodes["gpu-1"]
    node.temperature["0"] = HOT
    clock.run(50)
    node.temperature["0"] = COOL
    clock.cycle()
    node.temperature["0"] = HOT
    assert clock.run(60) == []  # the 60 s count started again at the second rise
    assert kinds(clock.cycle()) == [("firing", "gpu-temperature-slowdown", "gpu-1")]


def test_resolving_needs_resolve_after_of_clear_data_and_a_flap_does_not_reopen(fleet, clock_for):
    clock = clock_for()
    node = fleet.nodes["gpu-1"]
    node.temperature["0"] = HOT
    clock.run(65)
    node.temperature["0"] = COOL
    assert clock.run(200) == []  # clear for less than resolve_after (5m)
    node.temperature["0"] = HOT
    assert clock.cycle() == []  # back: the same incident, still firing, no new one
    node.temperature["0"] = COOL
    assert clock.run(300) == []
    [t] = clock.cycle()
    assert (t.kind, t.fingerprint) == ("resolved", 'rule:gpu-temperature-slowdown{node="gpu-1"}')
    assert t.title == "gpu-1: GPU temperature 95°C at slowdown 90°C"  # what the incident was
    assert t.value == COOL  # and where it stands now


def test_forty_hot_gpus_on_five_nodes_are_five_incidents(make_fleet, clock_for):
    fleet = make_fleet({f"gpu-{i}": 8 for i in range(1, 6)}, [])
    clock = clock_for(on=fleet)
    for node in fleet.nodes.values():
        node.temperature.update({str(g): HOT for g in range(8)})
    fired = clock.run(65)
    assert sorted(t.labels["node"] for t in fired) == [f"gpu-{i}" for i in range(1, 6)]
    assert all(t.summary.count("8 of 8 GPUs hot") == 1 for t in fired)


def test_fingerprints_are_stable_across_evaluators(fleet, clock_for):
    first, second = clock_for(), clock_for()
    fleet.nodes["gpu-2"].lost = {"1"}
    [a], [b] = first.cycle(), second.cycle()
    assert a.fingerprint == b.fingerprint == fingerprint("gpu-lost", {"node": "gpu-2"})
    assert a.fingerprint == 'rule:gpu-lost{node="gpu-2"}'


def test_a_rule_without_group_by_opens_one_incident_per_series(fleet, clock_for):
    per_gpu = {
        "name": "hot-gpu",
        "type": "threshold",
        "metric": "reliability_gpu_temperature_celsius",
        "value": 90,
        "title": "{node}/{gpu} hot",
    }
    clock = clock_for(rules={"builtin": False, "custom": [per_gpu]})
    fleet.nodes["gpu-1"].temperature.update({"0": HOT, "1": HOT})
    assert sorted(t.title for t in clock.cycle()) == ["gpu-1/0 hot", "gpu-1/1 hot"]


def test_a_down_node_suppresses_its_gpu_and_probe_incidents_but_not_other_nodes(fleet, clock_for):
    clock = clock_for()
    clock.run(30)
    # The network to gpu-1 is cut: SSH, nvidia-smi and its endpoint all fail together.
    fleet.nodes["gpu-1"].up = False
    fleet.endpoints["blue-1"] = 1.0
    fleet.endpoints["green-1"] = 0.5  # a separate problem on another node
    fired = clock.run(300)
    assert sorted(kinds(fired)) == [
        ("firing", "local-pool-errors", "green-1"),
        ("firing", "node-down", "gpu-1"),
    ]


def test_an_inhibited_incident_still_true_when_the_node_returns_fires_then(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-1"].up = False
    fleet.endpoints["blue-1"] = 1.0
    assert kinds(clock.run(300)) == [("firing", "node-down", "gpu-1")]
    fleet.nodes["gpu-1"].up = True  # SSH is back, the server on it still fails
    fired = clock.run(65)
    assert kinds(fired) == [
        ("firing", "local-pool-errors", "blue-1"),
        ("resolved", "node-down", "gpu-1"),
    ]
    assert fired[0].since == clock.now - 365  # the errors started with the cut


def test_an_inhibited_incident_already_clearing_when_the_node_returns_stays_quiet(fleet, clock_for):
    clock = clock_for()
    fleet.nodes["gpu-1"].up = False
    fleet.endpoints["blue-1"] = 1.0
    assert kinds(clock.run(300)) == [("firing", "node-down", "gpu-1")]
    fleet.nodes["gpu-1"].up = True
    fleet.endpoints["blue-1"] = 0.0  # the node came back whole: its probes succeed again
    after = clock.run(600)
    assert kinds(after) == [("resolved", "node-down", "gpu-1")]  # no late local-pool-errors


def test_missing_gpu_data_does_not_resolve_a_gpu_incident(fleet, clock_for):
    clock = clock_for()
    node = fleet.nodes["gpu-2"]
    node.temperature["4"] = HOT
    clock.run(65)
    node.gpu_source_up = False  # nvidia-smi hangs: no temperature at all
    held = clock.run(3600)
    assert kinds(held) == [("firing", "gpu-source-down", "gpu-2")]  # and no resolve
    node.gpu_source_up = True
    node.temperature["4"] = COOL
    resolved = clock.run(305)
    assert sorted(kinds(resolved)) == [
        ("resolved", "gpu-source-down", "gpu-2"),
        ("resolved", "gpu-temperature-slowdown", "gpu-2"),
    ]


def test_a_gpu_gone_from_an_answering_driver_no_longer_holds_its_temperature_incident(
    fleet, clock_for
):
    clock = clock_for()
    node = fleet.nodes["gpu-2"]
    node.temperature["7"] = HOT
    clock.run(65)
    node.missing = 1  # GPU 7 falls off the bus: the GPU-lost incident takes over
    after = clock.run(305)
    assert sorted(kinds(after)) == [
        ("firing", "gpu-lost", "gpu-2"),
        ("resolved", "gpu-temperature-slowdown", "gpu-2"),
    ]


def test_restored_incidents_do_not_fire_again_and_resolve_when_clear(fleet, clock_for):
    before = clock_for()
    fleet.nodes["gpu-1"].temperature["0"] = HOT
    fleet.nodes["gpu-2"].temperature["0"] = HOT
    open_fps = [t.fingerprint for t in before.run(65)]
    # The daemon restarts; gpu-1 has cooled meanwhile, gpu-2 is still hot.
    fleet.nodes["gpu-1"].temperature["0"] = COOL
    after = clock_for()
    after.now = before.now + 30
    after.evaluator.restore([*open_fps, "alertmanager:abc", "manual:disk"])
    transitions = after.run(600)
    assert kinds(transitions) == [("resolved", "gpu-temperature-slowdown", "gpu-1")]
    assert transitions[0].at == after.now - 600 + 300  # after 5m of clear readings


def test_a_restored_incident_waits_for_data_before_resolving(fleet, clock_for):
    clock = clock_for()
    clock.evaluator.restore(['rule:gpu-lost{node="gpu-2"}'])
    fleet.nodes["gpu-2"].gpu_source_up = False
    assert kinds(clock.run(600)) == [("firing", "gpu-source-down", "gpu-2")]
    fleet.nodes["gpu-2"].gpu_source_up = True  # the GPUs are all back after a reboot
    assert ("resolved", "gpu-lost", "gpu-2") in kinds(clock.run(125))


def test_templates_fill_labels_units_and_time_and_runbook_params_are_shell_quoted(fleet, clock_for):
    rule = {
        "name": "scratch-full",
        "type": "threshold",
        "metric": "reliability_node_path_free_bytes",
        "op": "<",
        "value": 50e9,
        "group_by": ["node", "path"],
        "severity": "critical",
        "title": "{node}: {path} has {value} left",
        "summary": "{path} on {node} below {threshold} since {since}, for {age}",
        "runbook": {"name": "clean-disk", "params": {"node": "{node}", "path": "{path}"}},
    }
    clock = clock_for(rules={"builtin": False, "custom": [rule]})
    fleet.nodes["gpu-1"].disk["/data/it's; rm -rf /"] = (10e9, 400e9)
    [t] = clock.cycle()
    assert t.title == "gpu-1: /data/it's; rm -rf / has 10.0 GB left"
    assert t.summary == (
        "/data/it's; rm -rf / on gpu-1 below 50.0 GB since 2025-06-15 15:06:40 UTC, for 0s"
    )
    assert t.runbook == (
        "reliability runbook run clean-disk --param node=gpu-1 "
        "--param 'path=/data/it'\"'\"'s; rm -rf /'"
    )


def test_no_runbook_command_when_a_parameter_has_no_value(fleet, clock_for):
    endpoints = [
        {"name": "hosted-api", "url": "https://api.example.com", "role": "hosted", "model": "m"}
    ]
    clock = clock_for(endpoints=endpoints)  # no service: nothing to fail over
    fleet.overload["hosted-api"] = 0.9
    [t] = clock.run(65)
    assert t.rule == "upstream-overloaded" and t.runbook is None


def test_old_xids_found_at_start_are_not_news_but_a_new_one_later_is(fleet, clock_for):
    fleet.nodes["gpu-1"].xids[("2", 48)] = 3  # in dmesg from before the daemon started
    clock = clock_for()
    assert clock.run(60) == []
    fleet.nodes["gpu-1"].xids[("2", 48)] = 4
    [t] = clock.cycle()
    assert t.title == "gpu-1: XID 48 on GPU 2 (Double-bit ECC error), action: reset_gpu"


def test_an_xid_incident_resolves_once_the_window_passes_without_another(fleet, clock_for):
    clock = clock_for()
    clock.cycle()
    fleet.nodes["gpu-1"].xids[("0", 79)] = 1
    assert kinds(clock.cycle()) == [("firing", "gpu-xid-critical", "gpu-1")]
    assert clock.run(1795) == []  # within the 30m window: still firing
    assert kinds(clock.run(70)) == [("resolved", "gpu-xid-critical", "gpu-1")]


def test_a_node_handed_to_another_daemon_is_neither_resolved_nor_paged_again(make_fleet, clock_for):
    fleet = make_fleet({"gpu-1": 8, "gpu-2": 8}, [])
    old, new = clock_for(on=fleet), clock_for(on=fleet)
    fleet.nodes["gpu-1"].up = False
    [fired] = old.run(65)
    assert (fired.kind, fired.rule, fired.labels["node"]) == ("firing", "node-down", "gpu-1")

    # gpu-1 moves to the other daemon of the cluster: this one forgets it and its samples
    # (its node-down group, and its GPUs' source-down one that node-down holds back).
    assert old.evaluator.release(lambda labels: labels.get("node") != "gpu-1") == 2
    old.fleet = make_fleet({"gpu-2": 8}, [])
    new.now = old.now
    new.evaluator.restore([fired.fingerprint])  # open in the database
    assert new.run(120) == []  # still down: held open, not paged again
    fleet.nodes["gpu-1"].up = True
    assert kinds(new.run(120)) == [("resolved", "node-down", "gpu-1")]  # by the owner only
    assert old.run(240) == []


def test_restoring_again_forgets_what_another_daemon_resolved_meanwhile(fleet, clock_for):
    clock = clock_for()
    clock.evaluator.restore(['rule:node-down{node="gpu-1"}'])
    clock.evaluator.restore([])  # resolved by the daemon that held gpu-1
    fleet.nodes["gpu-1"].up = False
    assert kinds(clock.run(65)) == [("firing", "node-down", "gpu-1")]  # a new page
