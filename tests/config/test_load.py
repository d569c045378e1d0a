"""The config file: what a user who writes one sees when it is right and when it is wrong."""

from __future__ import annotations

import json
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


def test_the_kernel_log_command_is_the_nodes_else_the_fleets(tmp_path):
    path = write(
        tmp_path,
        """\
        collect: {kernel_log_command: sudo -n journalctl}
        nodes:
          - {name: a, address: 127.0.1.1, gpus: 8, kernel_log_command: sudo -n /usr/bin/dmesg}
          - {name: b, address: 127.0.1.2, gpus: 8}
        """,
    )
    cfg = load_config(path)
    assert [cfg.kernel_log_command(n) for n in cfg.nodes] == [
        "sudo -n /usr/bin/dmesg",
        "sudo -n journalctl",
    ]
    assert (
        load_config(write(tmp_path, "nodes: []\n", "empty.yaml")).collect.kernel_log_command is None
    )


@pytest.mark.parametrize(
    ("command", "fix"),
    [
        ("dmesg --time-format iso", "end the command with dmesg or journalctl"),
        ("cat /var/log/kern.log", "end the command with dmesg or journalctl"),
        ("sudo dmesg; rm -rf /", "no shell syntax"),
        ("dmesg | tail", "no shell syntax"),
        ("'sudo dmesg", "No closing quotation"),
        ("  ", "leave the field out"),
    ],
)
def test_a_kernel_log_command_that_is_not_one_plain_reader_is_refused(tmp_path, command, fix):
    node = {"name": "a", "address": "127.0.1.1", "kernel_log_command": command}
    path = write(tmp_path, f"nodes: [{json.dumps(node)}]\n")
    (line,) = errors_of(path)
    assert line.startswith(f"{path}:1: nodes[0].kernel_log_command: ")
    assert fix in line


def test_a_file_that_is_not_utf8_names_its_line_not_a_traceback(tmp_path):
    path = tmp_path / "reliability.yaml"
    path.write_bytes(b"nodes:\n  - name: gpu-\xff1\n    address: 127.0.1.1\n")
    assert errors_of(path) == [f"{path}:2: not UTF-8 text (byte 21); save the file as UTF-8"]


def test_a_key_given_twice_is_refused_where_yaml_would_keep_the_last(tmp_path):
    path = write(
        tmp_path,
        """\
        collect:
          gpu_interval: 15s
        collect:
          node_interval: 30s
        """,
    )
    assert errors_of(path) == [f"{path}:3: collect: given twice (first at line 1); keep one"]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e400"])
def test_a_duration_that_is_not_a_finite_number_is_refused(tmp_path, value):
    path = write(tmp_path, f"incidents:\n  ack_timeout: {value}\n")
    [line] = errors_of(path)
    assert line.startswith(f"{path}:2: incidents.ack_timeout: ")
    assert "duration" in line


def test_an_interval_of_zero_is_refused_and_so_is_an_absurd_gpu_count(tmp_path):
    path = write(
        tmp_path,
        """\
        collect:
          gpu_interval: 0
        nodes:
          - {name: gpu-1, address: 127.0.1.1, gpus: 99999999999999999999999}
        """,
    )
    lines = errors_of(path)
    assert (
        f"{path}:2: collect.gpu_interval: an interval must be above zero; write e.g. 15s" in lines
    )
    assert f"{path}:4: nodes[0].gpus: Input should be less than or equal to 64" in lines


@pytest.mark.parametrize(
    "section",
    [
        "endpoints:\n  - {name: hosted, url: 'https://bob:hunter2@api.example/v1', kind: http}\n",
        "slack:\n  channel: '#oncall'\n  token_env: T\n  base_url: 'http://bob:hunter2@127.0.0.1:9/api/'\n",
        "dashboards:\n  grafana_url: 'http://admin:hunter2@127.0.0.1:3000'\n",
    ],
)
def test_credentials_in_any_url_are_refused_and_not_echoed(tmp_path, section):
    path = write(tmp_path, section)
    lines = errors_of(path)
    assert any("the URL holds credentials" in line for line in lines)
    assert all("hunter2" not in line for line in lines)


def test_durations_longer_than_a_year_are_refused():
    with pytest.raises(ValueError, match="over a year"):
        parse_duration("400d")


def test_files_the_daemon_reads_must_be_there_before_it_starts(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    path = write(
        tmp_path,
        f"""\
        ssh:
          key_file: {key}
          known_hosts: known_hosts
        nodes:
          - name: gpu-1
            address: 127.0.1.1
            ssh: {{key_file: /nonexistent/key}}
        runbooks_dir: books
        """,
    )
    issues = load_config(path).secret_issues()
    assert issues == [
        f"{path}:3: ssh.known_hosts: {tmp_path}/known_hosts does not exist; "
        "create it or fix the path",
        f"{path}:7: nodes[0].ssh.key_file: /nonexistent/key does not exist; "
        "create it or fix the path",
        f"{path}:8: runbooks_dir: {tmp_path}/books is not a folder; create it or fix the path",
    ]
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "books").mkdir()
    assert len(load_config(path).secret_issues()) == 1


def test_a_hosted_endpoint_must_name_the_service_it_fails_over(tmp_path):
    path = write(
        tmp_path,
        """\
        nodes:
          - {name: gpu-1, address: 127.0.1.1, pool: blue}
        services:
          - {name: chat, pools: [blue], active_pool: blue}
        endpoints:
          - {name: hosted, url: 'https://api.example', role: hosted, kind: http}
        """,
    )
    assert errors_of(path) == [
        f"{path}:6: endpoints[0].service: a hosted endpoint names the service whose traffic "
        "moves to the local pool when it is busy; add `service:` (chat)"
    ]


def test_a_balancer_health_url_the_engine_does_not_answer_is_refused_with_the_fix(tmp_path):
    path = write(
        tmp_path,
        """\
        nodes:
          - {name: gpu-1, address: 10.0.0.1, pool: blue}
          - {name: lb-1, address: 10.0.0.2, gpus: 0}
        services:
          - name: chat
            pools: [blue]
            active_pool: blue
            load_balancer:
              kind: nginx
              node: lb-1
              upstream_file: /etc/nginx/conf.d/chat.conf
              url: http://10.0.0.2/
              health_url: http://10.0.0.2/
        """,
    )
    [line] = errors_of(path)
    assert line.startswith(f"{path}:5: services[0]: load_balancer.health_url 'http://10.0.0.2/'")
    assert line.endswith(
        "write http://10.0.0.2/health (the container's health_path) or "
        "http://10.0.0.2/v1/models, or leave it out for the first"
    )


def test_the_cluster_lease_spans_heartbeats_and_a_member_is_forgotten_only_once_gone(tmp_path):
    path = write(tmp_path, "cluster: {heartbeat: 2s, lease: 4s}\n", "short.yaml")
    assert "lease (4s) must be at least 3 heartbeats (6s)" in "\n".join(errors_of(path))
    path = write(tmp_path, "cluster: {lease: 6s, forget_after: 3s}\n", "soon.yaml")
    assert "forget_after (3s) must be at least the lease (6s)" in "\n".join(errors_of(path))
    path = write(tmp_path, "cluster: {forget_after: 1d}\n", "day.yaml")
    assert load_config(path).cluster.forget_after == 86400.0
