"""The deployment files as an operator uses them: the docker-compose stack parses with only
the committed files plus the example env file, publishes nothing beyond loopback, and its
daemon, Prometheus and Alertmanager configs load; the systemd unit verifies.

No Docker engine is needed: `docker-compose config` only parses and interpolates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reliability.cli import main
from reliability.testing.services import service_missing

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / "env.example"
SECRETS = ("POSTGRES_PASSWORD", "SLACK_BOT_TOKEN", "GRAFANA_ADMIN_PASSWORD")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        service_missing(f"{name} (Debian package {package}) not installed")
    assert path is not None
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # The stack's secrets must come from the env file, never from the caller's environment.
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        list(map(str, args)), capture_output=True, text=True, timeout=60, check=False, env=env
    )


@pytest.fixture(scope="module")
def docker_compose() -> str:
    return _tool("docker-compose", "docker-compose")


def test_compose_file_is_valid_with_the_example_env_file(docker_compose: str):
    result = _run(docker_compose, "--env-file", ENV_EXAMPLE, "-f", COMPOSE, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_without_env_file_names_the_file_to_create(docker_compose: str):
    result = _run(docker_compose, "-f", COMPOSE, "config", "-q")
    assert result.returncode != 0
    assert "deploy/.env" in result.stderr


def test_compose_publishes_ports_on_loopback_only(docker_compose: str):
    result = _run(docker_compose, "--env-file", ENV_EXAMPLE, "-f", COMPOSE, "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {
        "daemon-1",
        "daemon-2",
        "postgres",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    published = {
        (name, port["host_ip"] if isinstance(port, dict) else port.split(":")[0])
        for name, service in services.items()
        for port in service.get("ports", [])
    }
    assert published and {ip for _, ip in published} == {"127.0.0.1"}, published
    assert "ports" not in services["postgres"]


def test_compose_daemon_config_is_valid():
    result = CliRunner().invoke(
        main, ["config", "check", "--skip-secrets", "-c", str(DEPLOY / "reliability.compose.yaml")]
    )
    assert result.exit_code == 0, result.output


def test_prometheus_config_loads_the_exported_rules(tmp_path: Path):
    promtool = _tool("promtool", "prometheus")
    shutil.copy(DEPLOY / "prometheus" / "prometheus.yml", tmp_path)
    exported = CliRunner().invoke(
        main,
        [
            "rules",
            "export",
            "-c",
            str(DEPLOY / "reliability.compose.yaml"),
            "--out",
            str(tmp_path / "rules.yml"),
        ],
    )
    assert exported.exit_code == 0, exported.output
    result = _run(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_alertmanager_config_is_valid():
    amtool = _tool("amtool", "prometheus-alertmanager")
    result = _run(amtool, "check-config", DEPLOY / "alertmanager" / "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_two_daemons_on_one_config_and_prometheus_scrapes_both(
    docker_compose: str,
):
    result = _run(docker_compose, "--env-file", ENV_EXAMPLE, "-f", COMPOSE, "config")
    services = yaml.safe_load(result.stdout)["services"]
    one, two = services["daemon-1"], services["daemon-2"]
    own = ("ports", "hostname")
    assert {k: v for k, v in one.items() if k not in own} == {
        k: v for k, v in two.items() if k not in own
    }
    # Recorded in the members table: `status` reaches each member's /metrics by it.
    assert (one["hostname"], two["hostname"]) == ("daemon-1", "daemon-2")
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "reliability"]
    assert job["static_configs"][0]["targets"] == ["daemon-1:9464", "daemon-2:9464"]
    config = yaml.safe_load((DEPLOY / "reliability.compose.yaml").read_text())
    assert config["cluster"] == {"expected_members": 2, "scrape_job": "reliability"}
    # The Slack webhook URL is a secret file, as the webhook token is; never inline.
    assert "slack_webhook_url" in services["alertmanager"]["secrets"][1].values()
    assert "hooks.slack.com" not in (DEPLOY / "alertmanager" / "alertmanager.yml").read_text()


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=ReliabilityDaemonDown", "component=reliability"], "slack-direct"),
        (["alertname=ReliabilityNoLeader", "component=reliability"], "slack-direct"),
        (["alertname=ReliabilityDatabaseDown", "component=reliability"], "slack-direct"),
        (["alertname=Watchdog", "severity=none"], "deadmansswitch"),
        (["alertname=GpuLost", "rule=gpu-lost"], "daemon-rules"),
        (["alertname=SomethingElse", "severity=critical"], "reliability"),
    ],
)
def test_alertmanager_routes_the_daemons_own_alerts_to_slack_and_the_watchdog_out(
    labels: list[str], receiver: str
):
    amtool = _tool("amtool", "prometheus-alertmanager")
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    result = _run(amtool, "config", "routes", "test", f"--config.file={config}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_systemd_unit_verifies(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (optional: CI has no systemd)")
    # verify checks that ExecStart exists: point the unit at this checkout's command.
    unit = (DEPLOY / "reliability.service").read_text()
    command = Path(sys.executable).parent / "reliability"
    local = unit.replace("/opt/reliability/.venv/bin/reliability", str(command))
    (tmp_path / "reliability.service").write_text(local)
    result = _run(analyze, "verify", tmp_path / "reliability.service")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


# --- deploy/nginx: the pattern the upstream runbooks switch ------------------------------

NGINX_DIR = DEPLOY / "nginx"


def _installed_nginx(tmp_path: Path, route: str) -> Path:
    """deploy/nginx installed as its README says, into `tmp_path` instead of
    /etc/nginx/reliability, with `route` as the route file; the main config around it."""
    installed = tmp_path / "reliability"
    installed.mkdir()
    names = {
        "chat.conf": "chat.conf",
        "chat-upstream.conf": "chat-upstream.conf",
        "chat-route-hosted.conf": "chat-route-hosted.conf",
        "chat-route-local.conf": "chat-route-local.conf",
        f"chat-route-{route}.conf": "chat-route.conf",
        "chat-hosted-auth.conf.example": "chat-hosted-auth.conf",
    }
    for source, target in names.items():
        text = (NGINX_DIR / source).read_text().replace("/etc/nginx/reliability/", f"{installed}/")
        # No DNS here: the hosted API's name in the upstream block only.
        text = text.replace("server api.example.com:443;", "server 127.0.0.1:9443;")
        text = text.replace("listen 80;", "listen 127.0.0.1:18080;")
        (installed / target).write_text(text)
    (installed / "chat-hosted-auth.conf").chmod(0o600)
    main_config = tmp_path / "nginx.conf"
    main_config.write_text(
        f"error_log {tmp_path}/error.log;\npid {tmp_path}/nginx.pid;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    include {installed}/chat.conf;\n}}\n"
    )
    return main_config


@pytest.mark.parametrize("route", ["hosted", "local"])
def test_deploy_nginx_as_installed_passes_nginx_t_with_either_route(
    tmp_path: Path, route: str
) -> None:
    nginx = _tool("nginx", "nginx")
    result = _run(nginx, "-t", "-c", _installed_nginx(tmp_path, route))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_hosted_route_verifies_the_api_by_its_name_and_sends_the_key() -> None:
    lines = (NGINX_DIR / "chat-route-hosted.conf").read_text().splitlines()
    directives = {line.split()[0]: line for line in lines if line and not line.startswith("#")}
    assert directives["proxy_ssl_verify"] == "proxy_ssl_verify on;"
    assert directives["proxy_ssl_server_name"] == "proxy_ssl_server_name on;"
    assert "proxy_ssl_trusted_certificate" in directives
    assert directives["include"].endswith("chat-hosted-auth.conf;")
    assert "Authorization" not in "\n".join(lines)  # the key lives in the 0600 include only
