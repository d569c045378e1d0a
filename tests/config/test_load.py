"""The config file: what a user who writes one sees when it is right and when it is wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from reliability.cli_support import load_config
from reliability.config import ConfigError
from reliability.durations import format_duration, parse_duration

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "reliability.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.lines


def test_the_annotated_example_loads(monkeypatch):
    cfg = load_config(REPO / "reliability.example.yaml")
    assert [n.name for n in cfg.nodes] == ["gpu-1", "gpu-2", "gpu-spare", "lb-1"]
    assert cfg.services[0].load_balancer.kind == "nginx"
    assert (cfg.endpoints[0].interval, cfg.endpoints[0].timeout) == (3.0, 2.4)  # hosted
    assert (cfg.endpoints[1].interval, cfg.endpoints[1].timeout) == (15.0, 10.0)  # local
    assert cfg.rules.custom[0].for_ == 600.0
    assert cfg.http.host == "127.0.0.1"


def test_no_file_means_the_embedded_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELIABILITY_CONFIG", raising=False)
    cfg = load_config()
    assert cfg.source is None
    assert cfg.database_url() == f"sqlite:///{tmp_path}/var/reliability.db"
    assert cfg.http.listen == "127.0.0.1:9464"


def test_an_explicit_file_that_is_missing_is_an_error(tmp_path):
    assert errors_of(tmp_path / "nope.yaml") == [
        f"{tmp_path}/nope.yaml: no such config file; pass -c FILE or create it"
    ]


def test_every_error_is_reported_at_once_with_file_line_and_field(tmp_path):
    path = write(
        tmp_path,
        """\
        http:
          listen: 0.0.0.0
        nodes:
          - name: gpu-1
            address: 10.0.0.1
            gpus: -1
            colour: red
        endpoints:
          - name: hosted
            url: ftp://x
            interval: soon
        """,
    )
    lines = errors_of(path)
    assert len(lines) == 5
    assert f"{path}:2: http.listen: '0.0.0.0': write HOST:PORT, e.g. 127.0.0.1:9464" in lines
    assert f"{path}:6: nodes[0].gpus: Input should be greater than or equal to 0" in lines
    assert any(line.startswith(f"{path}:7: nodes[0].colour: unknown key") for line in lines)
    assert (
        f"{path}:10: endpoints[0].url: 'ftp://x': write a URL starting with http:// or https://"
        in lines
    )
    assert any(
        line.startswith(f"{path}:11: endpoints[0].interval: 'soon' is not a duration")
        for line in lines
    )


def test_a_missing_field_names_the_field_to_add(tmp_path):
    path = write(tmp_path, "nodes:\n  - name: gpu-1\n")
    assert errors_of(path) == [f"{path}:2: nodes[0].address: required field is missing"]


def test_malformed_yaml_points_at_the_line(tmp_path):
    path = write(tmp_path, "nodes:\n  - name: a\n   address: b\n")
    [line] = errors_of(path)
    assert line.startswith(f"{path}:3: not valid YAML")


def test_a_password_in_the_database_url_is_refused_and_not_echoed(tmp_path):
    path = write(tmp_path, "database:\n  url: postgresql://app:hunter2@db/rel\n")
    [line] = errors_of(path)
    assert line.startswith(f"{path}:2: database.url: the URL holds a password")
    assert "hunter2" not in line


def test_names_that_refer_to_nothing_are_errors(tmp_path):
    path = write(
        tmp_path,
        """\
        nodes:
          - {name: gpu-1, address: 127.0.1.1, pool: blue}
        services:
          - name: chat
            pools: [blue, green]
            active_pool: blue
            load_balancer: {kind: nginx, node: lb-9, upstream_file: /etc/u.conf, url: "http://x/"}
        endpoints:
          - {name: e, url: "http://127.0.0.1:1", service: nope, completion_interval: 0}
        rules:
          custom:
            - {name: r, type: threshold, metric: gpu_temp, value: 1}
            - {name: s, type: threshold, metric: reliability_gpu_temperature_celsius,
               value: 85, match: {colour: red}, group_by: [node]}
        """,
    )
    lines = errors_of(path)
    assert f"{path}:5: services[0].pools[1]: no node is in pool 'green'" in lines
    assert f"{path}:7: services[0].load_balancer.node: no node is named 'lb-9'" in lines
    assert f"{path}:9: endpoints[0].service: no service is named 'nope'" in lines
    assert any(
        line.startswith(f"{path}:12: rules.custom[0].metric: 'gpu_temp' is not a metric")
        for line in lines
    )
    assert any(
        line.startswith(
            f"{path}:14: rules.custom[1].match: reliability_gpu_temperature_celsius "
            "has no label 'colour'"
        )
        for line in lines
    )


def test_duplicate_node_names_are_an_error(tmp_path):
    path = write(
        tmp_path,
        "nodes:\n  - {name: a, address: 127.0.1.1}\n  - {name: a, address: 127.0.1.2}\n",
    )
    assert errors_of(path) == [f"{path}:3: nodes[1].name: name 'a' is used twice"]


def test_secrets_come_from_the_environment_or_a_file(tmp_path, monkeypatch):
    (tmp_path / "slack.token").write_text("xoxb-from-file\n")
    path = write(
        tmp_path,
        """\
        slack: {token_file: slack.token, channel: "#oncall"}
        endpoints:
          - {name: hosted, url: "https://api.example.com", api_key_env: HOSTED_KEY,
             completion_interval: 0}
        """,
    )
    cfg = load_config(path)
    monkeypatch.delenv("HOSTED_KEY", raising=False)
    assert cfg.slack_token().get_secret_value() == "xoxb-from-file"
    assert cfg.secret_issues() == [
        f"{path}:3: endpoints[0].api_key_env: environment variable HOSTED_KEY is not set; "
        "export it before starting"
    ]
    monkeypatch.setenv("HOSTED_KEY", "sk-123")
    assert cfg.endpoint_key(0).get_secret_value() == "sk-123"
    assert "sk-123" not in repr(cfg.endpoint_key(0))
    assert cfg.secret_issues() == []


def test_node_ssh_settings_inherit_the_defaults(tmp_path):
    path = write(
        tmp_path,
        """\
        ssh: {user: ops, key_file: keys/id, known_hosts: known_hosts}
        nodes:
          - {name: a, address: 127.0.1.1, ssh: {port: 2222}}
        """,
    )
    cfg = load_config(path)
    ssh = cfg.node_ssh(cfg.nodes[0])
    assert (ssh.user, ssh.port, ssh.connect_timeout) == ("ops", 2222, 5.0)
    assert ssh.key_file == tmp_path / "keys/id"
    assert ssh.known_hosts == tmp_path / "known_hosts"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("15s", 15.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 minutes", "-3", "1x", ""])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_round_trips():
    assert format_duration(5400) == "1h30m"
    assert parse_duration(format_duration(3723)) == 3723


def test_watched_paths_must_be_absolute(tmp_path):
    path = write(
        tmp_path,
        "nodes:\n  - name: a\n    address: 127.0.1.1\n    watch_paths: [/, var/lib/docker]\n",
    )
    (line,) = errors_of(path)
    assert line.startswith(f"{path}:4: nodes[0].watch_paths[1]: ")
    assert "absolute path" in line
