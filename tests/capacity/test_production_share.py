"""`reliability capacity test` asks the service's real balancer (nginx, HAProxy) which share
of production traffic the pool gets before loading it: the live upstream or backend read
over SSH on the balancer's node, its servers mapped to the pool's nodes by the fleet. A
pool the balancer sends nothing to (weight 0, marked down, a backup) is tested; one at 50%
with 10% allowed is refused, naming the share and the config field; a file that cannot be
read refuses too, unless the operator says the share does not matter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from reliability import balancers
from reliability.balancers import Edit, Server
from reliability.cli import main
from reliability.testing.balancer import RigBalancer
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.rigconfig import rig_config

GREEN = ("gpu-3", "gpu-4")  # the rig's pool green: running, not in the upstream at first
BLUE = ("gpu-1", "gpu-2")


def write_config(balancer: RigBalancer, directory: Path, **lb: Any) -> str:
    service = {
        "port": 8000,
        "model": DEFAULT_MODEL,
        "load_balancer": {**balancer.lb_config("chat"), **lb},
        "capacity": {"max_production_share": 0.1, "prompt_words": 8},
    }
    # No daemon: the GPU power is not measured.
    return str(rig_config(balancer, directory, service=service, http={"listen": "127.0.0.1:9"}))


def server(balancer: RigBalancer, node: str, weight: int | None = None) -> Server:
    return Server(f"{balancer.fleet.node(node).address}:8000", name=node, weight=weight)


def edit_live_file(balancer: RigBalancer, *edits: Edit, backup: str | None = None) -> None:
    """Change the live file as an operator would (every other byte kept), then reload."""
    kind = balancers.for_config(balancer.balancer.lb)
    text = balancer.upstream_file.read_text()
    for edit in edits:
        text = kind.apply(text, edit)
    if backup is not None:  # `backup` after the server's address and parameters
        address = server(balancer, backup).address
        lines = [
            line.replace(";", " backup;") if address in line and kind.kind == "nginx" else line
            for line in text.splitlines(keepends=True)
        ]
        if kind.kind == "haproxy":
            lines = [
                line.rstrip("\n") + " backup\n" if f" {address} " in line else line
                for line in lines
            ]
        text = "".join(lines)
    balancer.upstream_file.write_text(text)  # in place: the login user still owns it
    balancer.reload()


def capacity_test(config: str, *extra: str) -> Result:
    args = ["capacity", "test", "chat", "--pool", "green", "--users", "2", "--steps", "1"]
    args += ["--duration", "3s", "--spawn-rate", "50", *extra, "-c", config]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_a_pool_the_balancer_sends_nothing_to_is_tested(
    rig_balancer: RigBalancer, tmp_path: Path
) -> None:
    config = write_config(rig_balancer, tmp_path)
    gpu3, gpu4 = (server(rig_balancer, n) for n in GREEN)
    if rig_balancer.kind == "haproxy":  # weight 0: listed, up, and sent nothing
        weights = Edit("chat", "weight", (server(rig_balancer, "gpu-3", 0),))
        edit_live_file(rig_balancer, weights, Edit("chat", "add", (gpu4,)), backup="gpu-4")
    else:  # nginx has no weight 0: one marked down, one a backup
        edit_live_file(
            rig_balancer,
            Edit("chat", "add", (gpu3, gpu4)),
            Edit("chat", "down", (gpu3,)),
            backup="gpu-4",
        )

    result = capacity_test(config)

    assert result.exit_code == 0, result.output
    assert "green" in result.output and "held the objectives" in result.output


def test_a_pool_at_half_the_traffic_is_refused_naming_the_share_and_the_field(
    rig_balancer: RigBalancer, tmp_path: Path
) -> None:
    config = write_config(rig_balancer, tmp_path)
    canary = tuple(server(rig_balancer, n, weight=2) for n in (*BLUE, *GREEN))
    edit_live_file(rig_balancer, Edit("chat", "weight", canary))  # as a canary's 50% step
    before = rig_balancer.upstream_file.read_bytes()

    result = capacity_test(config)

    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "pool green gets 50% of chat's production traffic" in output
    assert "allowed: 10%, services.chat.capacity.max_production_share" in output
    assert f"{rig_balancer.balancer.block_kind} chat in {rig_balancer.upstream_file}" in output
    assert rig_balancer.upstream_file.read_bytes() == before  # read, never written
    listed = CliRunner().invoke(main, ["capacity", "list", "--json", "-c", config])
    assert listed.output.strip() == "[]"  # nothing was loaded or recorded


def test_a_balancer_file_that_cannot_be_read_refuses_unless_allowed(
    rig_lb: RigBalancer, tmp_path: Path
) -> None:
    missing = str(rig_lb.upstream_file.with_name("no-such-upstream.conf"))
    config = write_config(rig_lb, tmp_path, upstream_file=missing)

    refused = capacity_test(config)

    assert refused.exit_code == 2, refused.output
    output = " ".join(refused.output.split())
    assert "pool green's share of chat's production traffic is unknown" in output
    assert f"{missing} on lb-1 could not be read" in output and "No such file" in output
    assert "--allow-unknown-share" in output

    allowed = capacity_test(config, "--allow-unknown-share")
    assert allowed.exit_code == 0, allowed.output
    assert "production share unknown" in allowed.output  # said on stderr, mixed in here


def test_a_server_taking_requests_that_is_no_known_node_makes_the_share_unknown(
    rig_lb: RigBalancer, tmp_path: Path
) -> None:
    config = write_config(rig_lb, tmp_path)
    edit_live_file(rig_lb, Edit("chat", "add", (Server("127.0.0.1:9999"),)))

    refused = capacity_test(config)

    assert refused.exit_code == 2, refused.output
    output = " ".join(refused.output.split())
    assert "share of chat's production traffic is unknown" in output
    assert "127.0.0.1:9999 in upstream chat" in output and "no node of the config" in output
