"""`reliability nodes ...` as an operator uses it: the live fleet, a node taken out by hand,
a node put back only once it answers health and a real completion (an inference stand-in
on 127.0.0.1 plays the node's engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result

from reliability.cli import main
from reliability.testing.inference_group import InferenceHandle

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def config(
    tmp_path: Path, database_url: str, engine: sa.Engine, inference_server: InferenceHandle
) -> str:
    """gpu-1 serving pool blue, spare-1 and spare-2 standbys, all answered by one stand-in."""
    path = tmp_path / "reliability.yaml"
    node = {"address": "127.0.0.1"}
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": database_url},
                "nodes": [
                    {"name": "gpu-1", **node, "pool": "blue"},
                    {"name": "spare-1", **node, "role": "standby"},
                    {"name": "spare-2", **node, "role": "standby"},
                    {"name": "lb-1", **node, "role": "lb"},
                ],
                "services": [
                    {
                        "name": "chat",
                        "pools": ["blue"],
                        "active_pool": "blue",
                        "port": inference_server.port,
                    }
                ],
                "runbooks_dir": str(REPO / "runbooks"),
            }
        )
    )
    return str(path)


def listed(config: str) -> dict[str, dict[str, object]]:
    result = run("nodes", "list", "--json", "-c", config)
    assert result.exit_code == 0, result.output
    return {n["node"]: n for n in json.loads(result.output)}


def test_list_shows_the_fleet_as_the_config_seeds_it(config: str):
    result = run("nodes", "list", "-c", config)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NODE", "STATE", "SERVICE", "POOL", "SINCE", "BY", "REASON"]
    assert lines[1].split()[:4] == ["gpu-1", "serving", "chat", "blue"]
    assert lines[2].split()[:2] == ["spare-1", "standby"]
    assert len(lines) == 4  # lb-1 is not a fleet node
    assert {n: (v["state"], v["by"]) for n, v in listed(config).items()} == {
        "gpu-1": ("serving", "config"),
        "spare-1": ("standby", "config"),
        "spare-2": ("standby", "config"),
    }


def test_out_takes_a_standby_out_with_its_reason(config: str):
    result = run("nodes", "out", "spare-1", "--reason", "ECC errors", "--yes", "-c", config)
    assert result.exit_code == 0, result.output
    assert result.output == "spare-1 is out: ECC errors\n"
    spare = listed(config)["spare-1"]
    assert (spare["state"], spare["reason"]) == ("out", "ECC errors")


def test_out_refuses_without_yes_an_unknown_node_and_a_serving_one_and_changes_nothing(
    config: str,
):
    before = listed(config)
    unasked = run("nodes", "out", "spare-1", "--reason", "x", "-c", config)
    assert unasked.exit_code == 1
    assert "not changed: answer yes at a terminal, or pass --yes" in unasked.output
    unknown = run("nodes", "out", "gpu-9", "--reason", "x", "--yes", "-c", config)
    assert unknown.exit_code == 2
    assert "no node is named 'gpu-9' in the config; fleet nodes: gpu-1, spare-1, spare-2" in (
        unknown.output
    )
    balancer = run("nodes", "out", "lb-1", "--reason", "x", "--yes", "-c", config)
    assert balancer.exit_code == 2
    assert "lb-1 is not a fleet node (role lb)" in balancer.output
    serving = run("nodes", "out", "gpu-1", "--reason", "x", "--yes", "-c", config)
    assert serving.exit_code == 1
    assert (
        "gpu-1 serves pool blue of chat: fail it over, which marks it out: "
        "`reliability runbook run node-failover --param node=gpu-1`"
    ) in serving.output
    assert listed(config) == before


def test_return_checks_the_node_then_makes_it_a_standby_again(config: str):
    assert (
        run("nodes", "out", "spare-1", "--reason", "repaired PSU", "--yes", "-c", config).exit_code
        == 0
    )
    result = run("nodes", "return", "spare-1", "-c", config)
    assert result.exit_code == 0, result.output
    assert "2. check (ready)" in result.output
    assert "first token from" in result.output
    assert "spare-1: out -> standby in the fleet" in result.output
    spare = listed(config)["spare-1"]
    assert spare["state"] == "standby"
    assert spare["reason"] == "returned: health and a one-token completion passed"


def test_return_of_a_node_failing_its_completion_is_refused_and_it_stays_out(
    config: str, inference_server: InferenceHandle
):
    assert (
        run("nodes", "out", "spare-1", "--reason", "GPU lost", "--yes", "-c", config).exit_code == 0
    )
    before = listed(config)
    inference_server.set_mode("broken", path="/v1/chat/completions")
    result = run("nodes", "return", "spare-1", "-c", config)
    assert result.exit_code == 1
    assert "step check failed: spare-1:" in result.output
    assert "completion answered HTTP 500" in result.output
    assert listed(config) == before


def test_return_of_a_node_that_is_not_out_is_refused(config: str):
    result = run("nodes", "return", "gpu-1", "-c", config)
    assert result.exit_code == 1
    assert "gpu-1 is serving blue; only a node that is out or in repair returns" in result.output
