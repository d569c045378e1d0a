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
    assert (
        "     local edit: mark gpu-1 (10.20.0.11:8000) down in upstream chat    # on the file as "
        "read; only these server lines change\n"
    ) in out
    assert (
        "   on gpu-spare:\n     local check: the secrets HF_TOKEN can be read here\n"
        "     gpu-spare $ docker pull <known-good image of chat"
    ) in out
    assert (
        "   undo on gpu-spare:\n     gpu-spare $ docker rm -f <id of the new vllm container>\n"
    ) in out
    assert (
        "   once the run succeeded on gpu-spare:\n"
        "     gpu-spare $ docker rm <id of the vllm container replaced>"
    ) in out
    assert "8. note (notify)" in out
    assert "gpu-spare: standby -> serving blue in the fleet (took over from gpu-1)" in out


def test_the_plan_shows_the_whole_container_spec_and_masks_its_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_plan-must-not-show-this")
    args = ["runbook", "plan", "node-failover", "--param", "node=gpu-1", "-c", EXAMPLE]

    text = run(*args).output
    as_json = run(*args, "--json").output

    (create,) = [line for line in text.splitlines() if "docker create" in line]
    assert (
        "--ipc host --shm-size 16g --ulimit memlock=-1 --ulimit stack=67108864 -p 8000:8000 "
        "-v /data/models:/models -e HF_HOME=/models -l team=inference"
    ) in create
    assert (
        create.split(" # ")[0]
        .rstrip()
        .endswith(
            "<known-good image of chat, from the images registry> --model deepseek-ai/DeepSeek-V3 "
            "--served-model-name deepseek-chat --port 8000 --tensor-parallel-size 8"
        )
    )
    assert "    | HF_TOKEN=<secret from $HF_TOKEN>\n" in text
    assert "hf_plan-must-not-show-this" not in text + as_json
    assert "HF_TOKEN=<secret from $HF_TOKEN>" in as_json


def test_plan_json_is_the_same_plan_for_scripts():
    result = run(
        "runbook", "plan", "blue-green", "-p", "service=chat", "-p", "pool=green", "--json",
        "-c", EXAMPLE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["params"] == {"service": "chat", "pool": "green", "gate": "off"}
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


def test_an_unknown_runbook_is_bad_usage_exit_2_and_names_the_known_ones():
    result = run("runbook", "plan", "reboot-everything", "-c", EXAMPLE)
    assert result.exit_code == 2
    assert "no runbook is named 'reboot-everything'" in result.output
    assert (
        "known: blue-green, canary, container-restart, image-rollback, image-rollout, "
        "node-failover, node-return, upstream-failover, upstream-switch-back"
    ) in result.output
    assert run("runbook", "show", "nope", "-c", EXAMPLE).exit_code == 2


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
    assert set(books) == {
        "blue-green",
        "canary",
        "container-restart",
        "image-rollback",
        "image-rollout",
        "node-failover",
        "node-return",
        "upstream-failover",
        "upstream-switch-back",
    }
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


def test_container_restart_plan_drains_restarts_checks_and_puts_the_node_back():
    """serving-down's suggestion: what `runbook run container-restart` would send."""
    planned = run("runbook", "plan", "container-restart", "--param", "node=gpu-1", "-c", EXAMPLE)
    assert planned.exit_code == 0, planned.output
    out = planned.output
    steps = ["take-out (drain)", "restart (ssh)", "check (ready)", "put-back (lb_set_pool)"]
    assert [out.index(s) for s in steps] == sorted(out.index(s) for s in steps)
    assert "mark gpu-1 (10.20.0.11:8000) down in upstream chat" in out
    assert "gpu-1 $ docker restart vllm\n   undo on gpu-1:\n     gpu-1 $ docker start vllm" in out
    assert "GET http://10.20.0.11:8000/health until 200, within 5m" in out
    assert "Locks: service chat" in out
