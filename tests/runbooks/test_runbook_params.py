"""`--param` values: checked against the runbook's types and the config before anything
runs, and reaching a shell only as literal arguments, proven through a real /bin/sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reliability.runbooks.load import load_dir, load_runbooks
from reliability.runbooks.params import ParamError, parse_assignments, resolve
from reliability.runbooks.plan import make_plan
from reliability.runbooks.scope import Pool
from reliability.runbooks.template import render

DIGEST = "sha256:" + "ab" * 32

TYPED = """
description: every parameter type
params:
  tag: {type: string, pattern: "[a-z][a-z0-9-]*"}
  mode: {type: choice, choices: [fast, safe], default: safe}
  size: {type: int, min: 1, max: 5, default: 2}
  node: {type: node}
  service: {type: service}
  pool: {type: pool, of: service}
  image: {type: image_digest}
steps:
  - id: hello
    action: notify
    args: {text: "{tag}"}
"""


@pytest.fixture
def typed(write_runbook):
    return load_dir(write_runbook("typed", TYPED).parent)["typed"]


def test_name_equals_value_keeps_everything_after_the_first_equals():
    assert parse_assignments(["node=gpu-1", "q=a=b", "empty="]) == {
        "node": "gpu-1",
        "q": "a=b",
        "empty": "",
    }
    with pytest.raises(ParamError) as info:
        parse_assignments(["node", "=x", "a=1", "a=2"])
    assert info.value.lines == [
        "--param 'node': write NAME=VALUE",
        "--param '=x': write NAME=VALUE",
        "--param a: given twice",
    ]


def test_good_values_become_typed_config_objects(typed, example):
    given = {"tag": "v2", "node": "gpu-2", "service": "chat", "pool": "green", "image": DIGEST}
    values = resolve(typed, given, example)
    assert values["node"] is example.node("gpu-2")
    assert values["service"] is example.services[0]
    assert values["pool"] == Pool("green")
    assert (values["mode"], values["size"], values["image"]) == ("safe", 2, DIGEST)
    ref = f"registry.example.com/vllm@{DIGEST}"
    assert resolve(typed, {**given, "image": ref, "size": "5"}, example)["size"] == 5


def test_every_bad_value_is_reported_at_once(typed, example):
    given = {
        "tag": "V2; reboot",
        "mode": "yolo",
        "size": "6",
        "node": "gpu-9",
        "service": "chat",
        "pool": "red",
        "image": "vllm:latest",
        "colour": "red",
    }
    with pytest.raises(ParamError) as info:
        resolve(typed, given, example)
    assert info.value.lines == [
        "--param colour: typed has no such parameter; it takes: tag, mode, size, node, "
        "service, pool, image",
        "--param tag: 'V2; reboot' does not match the pattern '[a-z][a-z0-9-]*'",
        "--param mode: 'yolo' is not one of fast, safe",
        "--param size: 6 is outside 1..5",
        "--param node: no node is named 'gpu-9'; known: gpu-1, gpu-2, gpu-spare, lb-1",
        "--param pool: no pool of chat is named 'red'; known: blue, green",
        "--param image: 'vllm:latest' is not an image digest; write sha256:<64 hex> or "
        "REF@sha256:…",
    ]


def test_missing_required_parameters_say_what_to_pass(typed, example):
    with pytest.raises(ParamError) as info:
        resolve(typed, {"tag": "a", "node": "gpu-1", "service": "chat", "pool": "blue"}, example)
    assert info.value.lines == ["--param image: required; pass --param image=<image_digest>"]


def test_the_shipped_runbooks_refuse_unknown_names(example):
    books = load_runbooks(example)
    with pytest.raises(ParamError, match="no service is named 'mail'"):
        resolve(books["blue-green"], {"service": "mail", "pool": "green"}, example)
    with pytest.raises(ParamError, match="no node is named '; rm -rf /'"):
        resolve(books["node-failover"], {"node": "; rm -rf /"}, example)


HOSTILE = [
    "; rm -rf /",
    "$(touch pwned)",
    "`touch pwned`",
    "a'b",
    'x" ; touch pwned; "',
    "$HOME",
    "*",
    "-n",
    "two words",
    "line\nbreak; touch pwned",
    "\\'; touch pwned #",
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_reaches_the_shell_as_one_literal_argument(
    write_runbook, example, tmp_path: Path, value: str
):
    """The plan's command, run by a real /bin/sh, prints the value byte for byte and
    creates nothing: no word splitting, globbing, expansion or command substitution."""
    path = write_runbook(
        "echo",
        """
        description: print a value
        params:
          value: {type: string, pattern: "(?s).*"}
          node: {type: node, default: gpu-1}
        targets:
          one: {node: "{node}"}
        steps:
          - id: print
            action: ssh
            nodes: one
            args:
              command: printf '[%s]\\n' {value} --flag={value} {value}{value} '{unused}' "$0"
        """,
    )
    book = load_dir(path.parent)["echo"]
    plan = make_plan(book, resolve(book, {"value": value}, example), example)
    (op,) = plan.steps[0].units[0].ops
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        ["/bin/sh", "-c", op.detail], cwd=work, capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    expected = [value, f"--flag={value}", value + value, "{unused}", "/bin/sh"]
    assert done.stdout == "".join(f"[{v}]\n" for v in expected)
    assert list(work.iterdir()) == []


def test_inside_quotes_nothing_is_ever_substituted():
    """Even a template that skipped the loader's check cannot splice a value raw."""

    def resolve_(path: tuple[str, ...]) -> str:
        return "$(reboot)"

    assert render("echo '{x}' \"{x}\" {x}", "shell", resolve_) == ("echo '{x}' \"{x}\" '$(reboot)'")
    assert (
        render("http://h/{x}?q={x}", "url", resolve_)
        == "http://h/%24%28reboot%29?q=%24%28reboot%29"
    )
