"""Runbook files as an author writes them: the shipped ones load, and every mistake is
reported at once as FILE:LINE: field: problem."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from reliability.config import ConfigError
from reliability.runbooks.load import load_dir, load_runbooks
from reliability.runbooks.spec import ACTIONS

REPO = Path(__file__).resolve().parents[2]

SHIPPED = {
    "blue-green",
    "canary",
    "container-restart",
    "node-failover",
    "node-return",
    "image-rollback",
    "image-rollout",
    "upstream-failover",
    "upstream-switch-back",
}


def errors_of(directory: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_dir(directory)
    return info.value.lines


def test_the_shipped_runbooks_load_from_the_example_configs_runbooks_dir(example):
    books = load_runbooks(example)
    assert set(books) == SHIPPED
    assert books["node-failover"].source == REPO / "runbooks" / "node-failover.yaml"
    assert books["node-failover"].params["node"].required


def test_the_actions_are_those_of_the_engine():
    assert set(ACTIONS) == {
        "ssh",
        "http_check",
        "ready",
        "lb_set_pool",
        "drain",
        "lb_route",
        "deploy_image",
        "rolling_deploy",
        "record_deploy",
        "confirm",
        "notify",
        "node_state",
        "capacity_gate",
        "lb_weights",
        "pool_compare",
    }


HEAD = """\
description: test
params:
  node: {type: node}
targets:
  one: {node: "{node}"}
steps:
"""


def with_steps(steps: str) -> str:
    """A runbook with one parameter and one target group; its steps start at line 7."""
    return HEAD + textwrap.dedent(steps).lstrip("\n")


def test_every_mistake_in_every_file_at_once_with_file_line_and_field(write_runbook):
    a = write_runbook(
        "a",
        with_steps(
            """
          - id: restart
            action: ssh
            nodes: one
            colour: red
            args: {command: "systemctl restart vllm", changes: true}
        """
        ),
    )
    b = write_runbook(
        "b",
        """
        description: test
        params:
          count: {type: number}
        steps:
          - id: x
            action: reboot
            args: {}
        """,
    )
    lines = errors_of(a.parent)
    assert lines == [
        f"{a}:10: steps[0].colour: unknown key; remove it or check its spelling "
        "against reliability.example.yaml",
        f"{b}:3: params.count: Input tag 'number' found using 'type' does not match any of "
        "the expected tags: 'string', 'choice', 'int', 'node', 'pool', 'service', 'image_digest'",
        f"{b}:5: steps[0]: Input tag 'reboot' found using 'action' does not match any of the "
        "expected tags: 'ssh', 'http_check', 'ready', 'lb_set_pool', 'drain', 'lb_route', "
        "'deploy_image', 'rolling_deploy', 'record_deploy', 'confirm', 'notify', 'node_state', "
        "'capacity_gate', 'lb_weights', 'pool_compare'",
    ]


def test_a_step_that_changes_state_without_undo_is_refused(write_runbook):
    path = write_runbook(
        "switch",
        """
        description: test
        params:
          service: {type: service}
          pool: {type: pool, of: service}
        steps:
          - id: switch
            action: lb_set_pool
            args: {service: "{service}", pool: "{pool}"}
        """,
    )
    (line,) = errors_of(path.parent)
    assert line.startswith(f"{path}:6: steps[0].undo: lb_set_pool changes state, so the step")
    assert "`undo: restore` (puts the previous upstream file back byte for byte)" in line


def test_only_a_step_that_changes_nothing_may_let_go_of_the_locks(write_runbook):
    path = write_runbook(
        "switch",
        """
        description: test
        params:
          service: {type: service}
          pool: {type: pool, of: service}
        steps:
          - id: switch
            action: lb_set_pool
            args: {service: "{service}", pool: "{pool}"}
            undo: restore
            release_locks: true
          - id: wait
            action: http_check
            args: {url: "{service.lb_url}", within: 1h}
            release_locks: true
        """,
    )
    (line,) = errors_of(path.parent)
    assert line == (
        f"{path}:10: steps[0].release_locks: this lb_set_pool step changes state, so it keeps "
        "the run's locks; `release_locks` is for steps that only wait or observe"
    )


def test_ssh_that_changes_state_needs_an_undo_command_not_restore(write_runbook):
    path = write_runbook(
        "restart",
        with_steps(
            """
          - id: restart
            action: ssh
            nodes: one
            args: {command: "systemctl restart vllm", changes: true}
          - id: restart-again
            action: ssh
            nodes: one
            args: {command: "systemctl restart vllm", changes: true}
            undo: restore
          - id: look
            action: ssh
            nodes: one
            args: {command: "systemctl status vllm"}
            undo: {command: "true"}
        """
        ),
    )
    assert errors_of(path.parent) == [
        f"{path}:7: steps[0].undo: ssh changes state, so the step needs `undo`: write "
        "`undo: {command: ...}`, the command that reverses it",
        f"{path}:15: steps[1].undo: ssh cannot restore on its own; write the command that "
        "reverses it: `undo: {command: ...}`",
        f"{path}:20: steps[2].undo: this ssh step changes nothing, so it has no undo; if the "
        "command changes state, add `changes: true`",
    ]


def test_bad_parameter_definitions(write_runbook):
    path = write_runbook(
        "params",
        """
        description: test
        params:
          tag: {type: string, pattern: "[a-z"}
          size: {type: int, min: 1, max: 5, default: 9}
          mode: {type: choice, choices: [fast, safe], default: slow}
          image: {type: image_digest, default: "vllm:latest"}
          pool: {type: pool, of: tag}
        steps:
          - id: hello
            action: notify
            args: {text: hi}
        """,
    )
    assert errors_of(path.parent) == [
        f"{path}:3: params.tag.pattern: not a regular expression: unterminated character set "
        "at position 0",
        f"{path}:4: params.size: 9 is outside 1..5",
        f"{path}:5: params.mode: 'slow' is not one of fast, safe",
        f"{path}:6: params.image: 'vllm:latest' is not an image digest; write sha256:<64 hex> "
        "or REF@sha256:…",
    ]


def test_names_that_refer_to_nothing(write_runbook):
    path = write_runbook(
        "refs",
        with_steps(
            """
          - id: a
            action: ssh
            nodes: two
            args: {command: "echo {nod} {node.colour}"}
          - id: a
            action: lb_set_pool
            args: {service: "{node.service}", add: three}
            undo: restore
          - id: c
            action: notify
            args: {text: "{target} done"}
        """
        ),
    )
    assert errors_of(path.parent) == [
        f"{path}:9: steps[0].nodes: no target group is named 'two'; define it under `targets` "
        "(one)",
        f"{path}:10: steps[0].args.command: unknown placeholder {{nod}}; use a parameter "
        "(node, target)",
        f"{path}:10: steps[0].args.command: {{node.colour}}: a node has no 'colour' "
        "(attributes: address, container, pool, role, service)",
        f"{path}:11: steps[1].id: step id 'a' is used twice",
        f"{path}:13: steps[1].args.add: no target group is named 'three'; define it under "
        "`targets` (one)",
        f"{path}:17: steps[2].args.text: unknown placeholder {{target}}; use a parameter (node)",
    ]


def test_a_group_may_leave_out_another_that_leaves_out_none(write_runbook):
    path = write_runbook(
        "exclude",
        """
        description: Groups that leave out others.
        params:
          service: {type: service}
        targets:
          first: {role: serving, limit: 1}
          rest: {role: serving, exclude: first}
          loop: {role: serving, exclude: rest}
          lost: {role: serving, exclude: nowhere}
        steps:
          - id: gate
            action: capacity_gate
            nodes: elsewhere
            args: {service: "{service}", pool: blue, gate: {capacity: 0.9}}
        """,
    )
    assert errors_of(path.parent) == [
        f"{path}:7: targets.loop.exclude: group 'rest' excludes a group itself; exclude one "
        "that does not",
        f"{path}:8: targets.lost.exclude: no target group is named 'nowhere'; define it under "
        "`targets` (first, rest, loop, lost)",
        f"{path}:12: steps[0].nodes: no target group is named 'elsewhere'; define it under "
        "`targets` (first, rest, loop, lost)",
    ]


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("echo '{node}'", "{node} is single-quoted; write it outside quotes"),
        ('echo "at {node}"', "{node} is double-quoted; write it outside quotes"),
        ("cat <<EOF\n{node}\nEOF", "{node} is in a here-document"),
        ("eval echo {node}", "a placeholder reaches a program that runs its argument as shell"),
        ("sh -c {node}", "a placeholder reaches a program that runs its argument as shell"),
        ("ssh {node} uptime", "a placeholder reaches a program that runs its argument as shell"),
    ],
)
def test_a_command_where_quoting_could_not_protect_a_value_is_refused(
    write_runbook, command: str, problem: str
):
    path = write_runbook(
        "unsafe",
        with_steps(
            f"""
          - id: a
            action: ssh
            nodes: one
            args:
              command: {json.dumps(command)}
        """
        ),
    )
    (line,) = errors_of(path.parent)
    assert line.startswith(f"{path}:11: steps[0].args.command: {problem}")


def test_shell_text_that_is_not_a_placeholder_stays_as_written(write_runbook):
    path = write_runbook(
        "awk",
        with_steps(
            """
          - id: a
            action: ssh
            nodes: one
            args:
              command: "df -P / | awk '{print $5}' && echo ${HOME} \\\\{node} {node}"
        """
        ),
    )
    assert "awk" in load_dir(path.parent)


def test_a_name_key_is_refused_because_the_file_names_the_runbook(write_runbook):
    path = write_runbook("named", "name: other\ndescription: x\nsteps: []\n")
    assert errors_of(path.parent) == [f"{path}:1: name: remove it; a runbook is named by its file"]


def test_a_missing_runbooks_dir_is_an_error(tmp_path):
    assert errors_of(tmp_path / "nope") == [
        f"{tmp_path}/nope: runbooks_dir is not a directory; create it or fix `runbooks_dir`"
    ]
