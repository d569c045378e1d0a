"""`plan` for each shipped runbook on the example fleet: per target, step by step, every
command as it would be sent and each step's undo; and it touches nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from reliability.balancers import Edit, Server
from reliability.config import Config, NodeConfig
from reliability.runbooks.load import load_dir, load_runbooks
from reliability.runbooks.ops import LOCAL
from reliability.runbooks.params import resolve
from reliability.runbooks.plan import Plan, PlanError, make_plan

UPSTREAM = "/etc/nginx/conf.d/chat-upstream.conf"
WRITE = f"cat > {UPSTREAM}.reliability-new && mv -f {UPSTREAM}.reliability-new {UPSTREAM}"


def plan_of(config: Config, name: str, **given: str) -> Plan:
    book = load_runbooks(config)[name]
    return make_plan(book, resolve(book, given, config), config)


def commands(plan: Plan, step_id: str, *, undo: bool = False) -> dict[str, list[str]]:
    """Per target of the step: `where $ command` (or `where kind: detail`) of each op."""
    (step,) = [s for s in plan.steps if s.id == step_id]
    return {
        u.target: [
            f"{o.where} $ {o.detail}" if o.kind == "run" else f"{o.where} {o.kind}: {o.detail}"
            for o in (u.undo if undo else u.ops)
        ]
        for u in step.units
    }


def upstream_edit(plan: Plan, step_id: str) -> Edit:
    (step,) = [s for s in plan.steps if s.id == step_id]
    edits = [o.edit.edit for u in step.units for o in u.ops if o.edit is not None]
    assert len(edits) == 1
    return edits[0]


def test_node_failover_takes_the_node_out_and_puts_a_standby_in(example):
    plan = plan_of(example, "node-failover", node="gpu-1")
    assert plan.locks == ["chat"]
    assert [s.id for s in plan.steps] == [
        "take-out",
        "mark-out",
        "take-standby",
        "start-standby",
        "record",
        "put-in",
        "verify",
        "note",
    ]
    assert commands(plan, "take-out") == {
        "gpu-1": [
            f"lb-1 $ cat {UPSTREAM}",
            "local edit: mark gpu-1 (10.20.0.11:8000) down in upstream chat",
            f"lb-1 $ {WRITE}",
            "lb-1 $ nginx -t",
            "lb-1 $ nginx -s reload",
            "local wait: until gpu-1 has no in-flight or streaming request, at most 15s",
        ]
    }
    # The run edits the file it reads; the plan carries the edit, not a file.
    assert upstream_edit(plan, "take-out") == Edit(
        "chat", "down", (Server("10.20.0.11:8000", name="gpu-1"),)
    )
    assert commands(plan, "take-out", undo=True)["gpu-1"][:1] == [f"lb-1 $ {WRITE}"]

    image = "<known-good image of chat, from the images registry>"
    deploy = commands(plan, "start-standby")["gpu-spare"]
    old, aside, new = (
        "<id of the vllm container replaced>",
        "<vllm-replaced-SHORT_ID, its name aside>",
        "<id of the new vllm container>",
    )
    wrapper = (
        'sh -c \'f=$(mktemp) || exit 125; cat > "$f" && docker create --env-file "$f" '
        '"$@"; s=$?; rm -f -- "$f"; exit $s\' sh'
    )
    assert deploy[:8] == [
        "local check: the secrets HF_TOKEN can be read here",
        f"gpu-spare $ docker pull {image}",
        "gpu-spare $ docker inspect --type container --format '{{.Id}}' vllm",
        "gpu-spare $ docker inspect --type container --format "
        "'vllm-replaced-{{slice .Id 0 12}}' vllm",
        'gpu-spare $ sh -c \'if [ "$(docker inspect --type container --format "{{.Id}}" '
        '"$1" 2>/dev/null)" = "$2" ]; then docker rename "$1" "$3" || exit; fi; '
        f'docker stop "$2"\' sh vllm {old} {aside}',
        "gpu-spare $ docker rm -f vllm",
        f"gpu-spare $ {wrapper} --name vllm --restart unless-stopped --gpus all --ipc host "
        "--shm-size 16g --ulimit memlock=-1 --ulimit stack=67108864 -p 8000:8000 "
        "-v /data/models:/models -e HF_HOME=/models -l team=inference "
        f"-l reliability.service=chat -l pool=blue {image} --model deepseek-ai/DeepSeek-V3 "
        "--served-model-name deepseek-chat --port 8000 --tensor-parallel-size 8",
        f"gpu-spare $ docker start {new}",
    ]
    assert deploy[8].startswith("local http: GET http://10.20.0.19:8000/health until 200")
    assert commands(plan, "start-standby", undo=True)["gpu-spare"][:2] == [
        f"gpu-spare $ docker rm -f {new}",
        'gpu-spare $ sh -c \'if [ "$(docker inspect --type container --format "{{.Name}}" '
        '"$1")" != "/$2" ]; then docker rename "$1" "$2" || exit; fi; '
        f'docker start "$1"\' sh {old} vllm',
    ]
    # The standby joins the upstream beside what is there (the drained node stays down).
    assert commands(plan, "put-in")["lb-1"][1] == (
        "local edit: add gpu-spare (10.20.0.19:8000) to upstream chat, after its last server line"
    )
    assert upstream_edit(plan, "put-in") == Edit(
        "chat", "add", (Server("10.20.0.19:8000", name="gpu-spare"),)
    )
    # Verifies ask the balancer's health_url: the engine's `/` is a 404.
    assert commands(plan, "verify") == {
        LOCAL: ["local http: GET http://10.20.0.2/health until 200, within 30s"]
    }


def test_a_failed_node_of_the_idle_pool_is_replaced_without_touching_the_balancer(example):
    plan = plan_of(example, "node-failover", node="gpu-2")
    skipped = {s.id: s.skipped for s in plan.steps if s.skipped}
    assert skipped == {
        "take-out": "`when` is false: 'green' == 'blue'",
        "put-in": "`when` is false: 'green' == 'blue'",
    }
    assert "-l pool=green" in commands(plan, "start-standby")["gpu-spare"][6]


def test_blue_green_checks_the_new_pool_then_switches_and_soaks(example):
    plan = plan_of(example, "blue-green", service="chat", pool="green")
    ready = commands(plan, "check-new-pool")
    assert list(ready) == ["gpu-2"]
    assert ready["gpu-2"][1].startswith(
        "local http: POST http://10.20.0.12:8000/v1/chat/completions (model deepseek-chat, "
        "max_tokens 1, streamed): first token within 10s"
    )
    assert commands(plan, "switch")["lb-1"][1] == (
        "local edit: switch upstream chat to gpu-2 (10.20.0.12:8000); other server lines removed"
    )
    assert upstream_edit(plan, "switch").servers == (Server("10.20.0.12:8000", name="gpu-2"),)
    assert commands(plan, "soak")[LOCAL][1] == (
        "local http: GET http://10.20.0.2/health every 2s for 5m; fails above 5% errors"
    )


def test_blue_green_to_the_pool_already_serving_skips_the_switch(example):
    plan = plan_of(example, "blue-green", service="chat", pool="blue")
    (switch,) = [s for s in plan.steps if s.id == "switch"]
    assert switch.skipped == "`when` is false: 'blue' != 'blue'"
    assert switch.units == []


def test_image_rollback_drains_replaces_and_puts_back_one_node_at_a_time(example):
    extra = NodeConfig(name="gpu-3", address="10.20.0.13", pool="blue", gpus=8)
    bigger = example.model_copy(update={"nodes": [*example.nodes, extra]})
    plan = plan_of(bigger, "image-rollback", service="chat", pool="blue")
    (redeploy,) = [s for s in plan.steps if s.id == "redeploy"]
    assert redeploy.batches == [["gpu-1"], ["gpu-3"]]
    assert redeploy.max_fail_percent == 0
    ops = commands(plan, "redeploy")["gpu-3"]
    out = ops.index("local wait: until gpu-3 has no in-flight or streaming request, at most 1m")
    created = next(i for i, op in enumerate(ops) if "docker create" in op)
    first_token = next(i for i, op in enumerate(ops) if "/v1/chat/completions" in op)
    reload_back = len(ops) - 1 - ops[::-1].index("lb-1 $ nginx -s reload")
    assert out < created < first_token < reload_back
    assert ops[-1] == "local http: GET http://10.20.0.2/health until 200"
    # gpu-3 names no container: the service's; gpu-1 is back in when gpu-3 goes out.
    assert "gpu-3 $ docker rm -f vllm" in ops
    edits = [o.detail for u in redeploy.units for o in u.ops if o.kind == "edit"]
    assert edits == [
        "mark gpu-1 (10.20.0.11:8000) down in upstream chat",
        "mark gpu-1 (10.20.0.11:8000) up in upstream chat",
        "mark gpu-3 (10.20.0.13:8000) down in upstream chat",
        "mark gpu-3 (10.20.0.13:8000) up in upstream chat",
    ]
    undo = commands(plan, "redeploy", undo=True)["gpu-3"]
    back = next(i for i, op in enumerate(undo) if "<id of the vllm container replaced> vllm" in op)
    assert back < undo.index(f"lb-1 $ {WRITE}", 2)
    assert commands(plan, "approve")[LOCAL] == [
        "local confirm: Redeploy the known-good image of chat on every node of pool blue, "
        "one at a time?"
    ]


NEW_IMAGE = "registry.example/serving/vllm@sha256:" + "b" * 64


def test_image_rollout_gates_one_node_out_of_rotation_before_rolling_the_rest(example):
    extra = NodeConfig(name="gpu-3", address="10.20.0.13", pool="blue", gpus=8)
    bigger = example.model_copy(update={"nodes": [*example.nodes, extra]})
    plan = plan_of(bigger, "image-rollout", service="chat", pool="blue", image=NEW_IMAGE)
    steps = {s.id: s for s in plan.steps}
    assert list(steps) == [
        "take-out", "deploy-first", "capacity-gate", "put-back", "roll", "record", "verify",
        "note",
    ]  # fmt: skip
    assert str(upstream_edit(plan, "take-out").shown("upstream")) == (
        "mark gpu-1 (10.20.0.11:8000) down in upstream chat"
    )
    created = next(op for op in commands(plan, "deploy-first")["gpu-1"] if "docker create" in op)
    # The service's whole container spec, its model arguments after the new image.
    assert f"{NEW_IMAGE} --model deepseek-ai/DeepSeek-V3 --served-model-name" in created
    (gate,) = commands(plan, "capacity-gate")[LOCAL]
    assert gate.startswith("local check: load gpu-1 of pool blue alone for 20s at their share")
    assert "hold 90% of that share's requests/s" in gate
    assert upstream_edit(plan, "put-back").servers == (Server("10.20.0.11:8000", name="gpu-1"),)
    assert steps["roll"].batches == [["gpu-3"]]  # the first node is not replaced twice
    assert [u.target for u in steps["record"].units] == ["gpu-1", "gpu-3"]
    # Undone newest first: the roll, the first node back in the state it was taken out in,
    # then its previous container, then the upstream file as it was.
    assert all(u.undo for s in ("take-out", "deploy-first", "put-back", "roll")
               for u in steps[s].units)  # fmt: skip


def test_image_rollout_of_a_one_node_pool_is_a_plan_error(example):
    with pytest.raises(PlanError, match="target group 'rest' selects no node"):
        plan_of(example, "image-rollout", service="chat", pool="blue", image=NEW_IMAGE)


def test_rolling_deploy_takes_at_most_max_unavailable_nodes_of_each_pool_at_once(
    example, write_runbook
):
    extra = [
        NodeConfig(name=f"gpu-{i}", address=f"10.20.0.{20 + i}", pool=pool, gpus=8)
        for i, pool in ((3, "blue"), (4, "blue"), (5, "green"))
    ]
    fleet = example.model_copy(update={"nodes": [*example.nodes, *extra]})
    path = write_runbook(
        "roll",
        """
        description: Roll every serving node.
        targets:
          serving: {role: serving}
        steps:
          - id: roll
            action: rolling_deploy
            nodes: serving
            args: {service: chat, image: known-good, max_unavailable: 2}
            undo: restore
        """,
    )
    book = load_dir(path.parent)["roll"]

    plan = make_plan(book, resolve(book, {}, fleet), fleet)

    (roll,) = plan.steps
    # Blue's gpu-1, gpu-3, gpu-4 and green's gpu-2, gpu-5, two of a pool at a time.
    assert roll.batches == [["gpu-1+gpu-3"], ["gpu-4"], ["gpu-2+gpu-5"]]
    outs = [
        o.detail for u in roll.units for o in u.ops if o.kind == "edit" and " down " in o.detail
    ]
    # Only the active pool (blue) is in the upstream: green is replaced without a drain.
    assert len(outs) == 2
    assert "gpu-1 (10.20.0.11:8000)" in outs[0] and "gpu-3 (10.20.0.23:8000)" in outs[0]
    assert "gpu-4" not in outs[0]
    assert "gpu-4 (10.20.0.24:8000)" in outs[1] and "gpu-1" not in outs[1]


def test_upstream_failover_swaps_the_route_file_to_local_and_waits_for_nothing(example):
    plan = plan_of(example, "upstream-failover", service="chat")
    route = "/etc/nginx/reliability/chat-route.conf"
    assert [s.id for s in plan.steps] == ["check-local", "to-local", "note"]
    assert list(commands(plan, "check-local")) == ["gpu-1"]
    assert commands(plan, "to-local")["lb-1"] == [
        f"lb-1 $ cat {route}",
        "lb-1 $ cat /etc/nginx/reliability/chat-route-local.conf",
        f"lb-1 $ cat > {route}.reliability-new && mv -f {route}.reliability-new {route}",
        "lb-1 $ nginx -t",
        "lb-1 $ nginx -s reload",
        "local http: POST http://10.20.0.2/v1/chat/completions (model deepseek-chat, "
        "max_tokens 1, streamed): first token within 5s, retried for 5s",
    ]
    (to_local,) = next(s for s in plan.steps if s.id == "to-local").units
    assert str(to_local.ops[2].stdin) == (
        "<the contents of /etc/nginx/reliability/chat-route-local.conf>"
    )
    assert commands(plan, "to-local", undo=True)["lb-1"] == [
        f"lb-1 $ cat > {route}.reliability-new && mv -f {route}.reliability-new {route}",
        "lb-1 $ nginx -t",
        "lb-1 $ nginx -s reload",
    ]
    assert str(to_local.undo[0].stdin) == "<route file saved before step to-local>"
    # The upstream file is not the route: the failover never rewrites it.
    assert not any("chat-upstream.conf" in line for line in commands(plan, "to-local")["lb-1"])


def test_switch_back_is_its_own_runbook_swapping_the_hosted_variant_back(example):
    plan = plan_of(example, "upstream-switch-back", service="chat")
    assert [s.id for s in plan.steps] == ["to-hosted", "note"]
    assert commands(plan, "to-hosted")["lb-1"][1] == (
        "lb-1 $ cat /etc/nginx/reliability/chat-route-hosted.conf"
    )


def test_a_route_swap_on_a_service_without_a_route_is_a_plan_error(example):
    services = [
        s.model_copy(update={"load_balancer": s.load_balancer.model_copy(update={"route": None})})
        for s in example.services
    ]
    unrouted = example.model_copy(update={"services": services})
    with pytest.raises(PlanError, match=r"service chat has no load_balancer\.route to swap"):
        plan_of(unrouted, "upstream-failover", service="chat")


def test_a_target_group_that_selects_nothing_is_a_plan_error(example):
    no_standby = example.model_copy(
        update={"nodes": [n for n in example.nodes if n.role != "standby"]}
    )
    with pytest.raises(PlanError, match="step take-standby: no free standby for pool blue of "):
        plan_of(no_standby, "node-failover", node="gpu-1")
    with pytest.raises(PlanError, match="step take-out: node lb-1 is in no pool"):
        plan_of(example, "node-failover", node="lb-1")


def test_planning_touches_nothing(example, monkeypatch, tmp_path: Path):
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("plan opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    for name, given in [
        ("node-failover", {"node": "gpu-2"}),
        ("blue-green", {"service": "chat", "pool": "green"}),
        ("image-rollback", {"service": "chat", "pool": "green"}),
        ("upstream-failover", {"service": "chat"}),
        ("upstream-switch-back", {"service": "chat"}),
    ]:
        assert plan_of(example, name, **given).steps
    assert list(tmp_path.iterdir()) == []


def test_restoring_after_a_skipped_rewrite_is_skipped_too(write_runbook, example):
    path = write_runbook(
        "there-and-back",
        """
        description: switch, then switch back
        params:
          service: {type: service}
          pool: {type: pool, of: service}
        steps:
          - id: there
            action: lb_set_pool
            when: {value: "{pool}", not_equals: "{service.active_pool}"}
            args: {service: "{service}", pool: "{pool}"}
            undo: restore
          - id: back
            action: lb_set_pool
            args: {service: "{service}", restore_from: there}
            undo: restore
        """,
    )
    book = load_dir(path.parent)["there-and-back"]
    plan = make_plan(book, resolve(book, {"service": "chat", "pool": "blue"}, example), example)
    assert [s.skipped for s in plan.steps] == [
        "`when` is false: 'blue' != 'blue'",
        "step there did not rewrite the upstream",
    ]
