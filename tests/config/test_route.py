"""The route of a service (deploy/nginx/): what `config check` refuses before any runbook
would swap it, each with its line and what to write instead."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from reliability.cli_support import load_config
from reliability.config import ConfigError

BASE = """\
nodes:
  - {name: gpu-1, address: 10.0.0.1, pool: blue}
  - {name: lb-1, address: 10.0.0.9, role: lb}
services:
  - name: chat
    pools: [blue]
    active_pool: blue
    load_balancer:
      kind: KIND
      node: lb-1
      upstream_file: /etc/nginx/reliability/chat-upstream.conf
      url: http://10.0.0.9/
      route:
        file: /etc/nginx/reliability/chat-route.conf
        hosted: HOSTED
        local: /etc/nginx/reliability/chat-route-local.conf
endpoints:
ENDPOINTS
"""
HOSTED = "  - {name: api, url: 'https://api.example.com', role: hosted, service: chat, model: m}"


def errors_of(tmp_path: Path, **parts: str) -> list[str]:
    text = BASE
    defaults = {
        "KIND": "nginx",
        "HOSTED": "/etc/nginx/reliability/chat-route-hosted.conf",
        "ENDPOINTS": HOSTED,
    }
    for key, value in {**defaults, **parts}.items():
        text = text.replace(key, value)
    path = tmp_path / "reliability.yaml"
    path.write_text(textwrap.dedent(text))
    try:
        load_config(path)
    except ConfigError as exc:
        return [line.removeprefix(f"{path}:") for line in exc.lines]
    return []


def test_a_route_with_one_hosted_endpoint_probing_completions_loads(tmp_path: Path) -> None:
    assert errors_of(tmp_path) == []


def test_a_route_is_for_nginx(tmp_path: Path) -> None:
    (line,) = errors_of(tmp_path, KIND="haproxy")
    assert line.startswith("8: services[0].load_balancer: ")
    assert "route is for nginx (an include file per location); see deploy/nginx/" in line


def test_the_route_and_its_variants_are_three_files(tmp_path: Path) -> None:
    (line,) = errors_of(tmp_path, HOSTED="/etc/nginx/reliability/chat-route.conf")
    assert line.startswith("13: services[0].load_balancer.route: ")
    assert "file, hosted and local must be three different files" in line


def test_a_route_cannot_be_the_upstream_file(tmp_path: Path) -> None:
    (line,) = errors_of(tmp_path, HOSTED="/etc/nginx/reliability/chat-upstream.conf")
    assert "route uses /etc/nginx/reliability/chat-upstream.conf, already the upstream" in line


@pytest.mark.parametrize(
    ("endpoints", "problem"),
    [
        ("  []", "0 hosted endpoints could be the one chat falls back from; give exactly one"),
        (
            f"{HOSTED}\n  - {{name: api2, url: 'https://b.example.com', role: hosted, "
            "service: chat, model: m}",
            "2 hosted endpoints could be the one chat falls back from",
        ),
        (
            "  - {name: api, url: 'https://a.example.com', role: hosted, service: chat, "
            "completion_interval: 0}",
            "hosted endpoint 'api' sends no completion probe; the switch back needs one",
        ),
    ],
)
def test_the_switch_back_needs_one_hosted_api_with_a_completion_probe(
    tmp_path: Path, endpoints: str, problem: str
) -> None:
    (line,) = errors_of(tmp_path, ENDPOINTS=endpoints)
    assert line.startswith("13: services[0].load_balancer.route: ")
    assert problem in line


def test_a_ca_file_must_exist_and_is_for_https(tmp_path: Path) -> None:
    missing = f"{HOSTED[:-1]}, ca_file: private-ca.pem}}"
    (line,) = errors_of(tmp_path, ENDPOINTS=missing)
    assert line == f"18: endpoints[0].ca_file: no such file: {tmp_path}/private-ca.pem"
    (tmp_path / "private-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert errors_of(tmp_path, ENDPOINTS=missing) == []
    plain = (
        "  - {name: api, url: 'http://api.example.com', role: hosted, service: chat, model: m, "
        "ca_file: x}"
    )
    (line,) = errors_of(tmp_path, ENDPOINTS=plain)
    assert "ca_file is for an https:// url; remove it or use https" in line
