"""`reliability runbook list | show | plan` as an operator uses them: output and exit codes
(0 ok, 2 a bad runbook file or parameter, 1 a runbook that does not exist)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from reliability.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[2] / "reliability.example.yaml")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def config_with_runbooks(tmp_path: Path, directory: Path) -> str:
    text = Path(EXAMPLE).read_text().replace("runbooks_dir: runbooks", f"runbooks_dir: {directory}")
    path = tmp_path / "reliability.yaml"
    path.write_text(text)
    return str(path)


def test_plan_prints_every_command_per_target():
    result = run("runbook", "plan", "node-failover", "--param", "node=gpu-1", "-c", EXAMPLE)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("Plan of runbook node-failover with node=gpu-1\n")
    assert "Locks: service chat" in out
    assert "1. take-out (drain): timeout 30s\n" in out
    assert "   on gpu-1:\n     lb-1 $ cat /etc/nginx/conf.d/chat-upstream.conf" in out
    assert "         |     server 10.20.0.11:8000 down;\n" in out
    assert "   on gpu-spare:\n     gpu-spare $ docker pull <known-good image of chat" in out
    assert "   undo on gpu-spare:\n     gpu-spare $ docker rm -f vllm\n" in out
    assert "6. note (notify)" in out


def test_plan_json_is_the_same_plan_for_scripts():
    result = run(
        "runbook", "plan", "blue-green", "-p", "service=chat", "-p", "pool=green", "--json",
        "-c", EXAMPLE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["params"] == {"service": "chat", "pool": "green"}
    switch = next(s for s in plan["steps"] if s["id"] == "switch")
    assert switch["units"][0]["target"] == "lb-1"
    assert switch["units"][0]["undo"][0]["stdin"] == "<upstream file saved before step switch>"


def test_bad_parameters_exit_2_with_every_problem():
    result = run(
        "runbook", "plan", "blue-green", "-p", "service=chat", "-p", "pool=$(reboot)",
        "-p", "colour=red", "-c", EXAMPLE,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--param colour: blue-green has no such parameter" in result.output
    assert "--param pool: no pool of chat is named '$(reboot)'; known: blue, green" in (
        result.output
    )
    missing = run("runbook", "plan", "node-failover", "-c", EXAMPLE)
    assert missing.exit_code == 2
    assert "--param node: required; pass --param node=<node>" in missing.output
    malformed = run("runbook", "plan", "node-failover", "-p", "gpu-1", "-c", EXAMPLE)
    assert malformed.exit_code == 2
    assert "--param 'gpu-1': write NAME=VALUE" in malformed.output


def test_an_unknown_runbook_exits_1_and_names_the_known_ones():
    result = run("runbook", "plan", "reboot-everything", "-c", EXAMPLE)
    assert result.exit_code == 1
    assert "no runbook is named 'reboot-everything'" in result.output
    assert "known: blue-green, image-rollback, node-failover, upstream-failover" in result.output
    assert run("runbook", "show", "nope", "-c", EXAMPLE).exit_code == 1


def test_a_broken_runbook_file_exits_2_with_its_line_and_leaves_the_others_usable(
    tmp_path: Path,
):
    directory = tmp_path / "runbooks"
    directory.mkdir()
    (directory / "bad.yaml").write_text("description: x\nsteps:\n  - id: a\n    action: nap\n")
    good = Path(EXAMPLE).parent / "runbooks" / "node-failover.yaml"
    (directory / "node-failover.yaml").write_text(good.read_text())
    config = config_with_runbooks(tmp_path, directory)
    where = f"{directory}/bad.yaml:3: steps[0]: Input tag 'nap'"
    for args in (
        ("runbook", "plan", "bad", "-c", config),
        ("runbook", "show", "bad", "-c", config),
        ("config", "check", "--skip-secrets", "-c", config),
    ):
        result = run(*args)
        assert result.exit_code == 2, args
        assert where in result.output

    listed = CliRunner().invoke(main, ["runbook", "list", "--json", "-c", config])
    assert listed.exit_code == 0
    assert [b["name"] for b in json.loads(listed.stdout)] == ["node-failover"]
    assert "runbook bad is left out, its file has problems" in listed.stderr
    planned = run("runbook", "plan", "node-failover", "--param", "node=gpu-1", "-c", config)
    assert planned.exit_code == 0, planned.output


def test_list_and_show():
    listed = run("runbook", "list", "-c", EXAMPLE, "--json")
    assert listed.exit_code == 0
    books = {b["name"]: b for b in json.loads(listed.output)}
    assert set(books) == {"blue-green", "image-rollback", "node-failover", "upstream-failover"}
    assert books["blue-green"]["params"]["pool"] == {
        "type": "pool",
        "of": "service",
        "description": "the pool to switch to (the one not serving now)",
        "required": True,
    }
    table = run("runbook", "list", "-c", EXAMPLE)
    assert table.exit_code == 0 and "node: node" in table.output
    shown = run("runbook", "show", "node-failover", "-c", EXAMPLE)
    assert shown.exit_code == 0
    assert "  1. take-out: drain on failed, undo: restore" in shown.output
    assert "  standby: role=standby, limit=1" in shown.output


def test_plan_without_a_database_makes_none(tmp_path: Path):
    config = config_with_runbooks(tmp_path, Path(EXAMPLE).parent / "runbooks")

    result = run(
        "runbook", "plan", "blue-green", "-p", "service=chat", "-p", "pool=green", "-c", config
    )

    assert result.exit_code == 0, result.output
    assert not (tmp_path / "var").exists()  # the example's SQLite file was not created
