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
    assert set(services) == {"daemon", "postgres", "prometheus", "alertmanager", "grafana"}
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
