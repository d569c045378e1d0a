"""Node failover with nobody at the keyboard: the daemon sees a node's network cut, opens
the incident, runs node-failover on its own, and the service answers from the standby."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from reliability.testing.fixtures import RIG_LB_IMAGE
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.nginx import NginxBalancer, parse_members
from reliability.testing.slack import SlackStandIn

FAILOVER_WITHIN = 30.0  # seconds from the cut to the service answering from the standby
HF_TOKEN = "hf_failover-secret-0123456789"
CONTAINER = {
    "name": "vllm",
    "args": ["--model", DEFAULT_MODEL, "--max-model-len", "4096"],
    "env": {"HF_HOME": "/models", "HF_TOKEN": {"value_env": "RIG_HF_TOKEN"}},
    "volumes": ["/srv/models:/models:ro"],
    "ipc": "host",
}


def _config(balancer: NginxBalancer, directory: Path, slack: SlackStandIn) -> Path:
    sections = balancer.fleet.config_sections(connect_timeout=1.0)
    for node in sections["nodes"]:
        node["role"] = {"spare-1": "standby", "lb-1": "lb"}.get(node["name"], "serving")
        node["gpus"] = 0  # this test is about reachability; no GPU rules
    config = {
        "database": {"url": f"sqlite:///{directory / 'reliability.db'}"},
        "http": {"listen": "127.0.0.1:0"},
        "slack": {"token_env": "SLACK_BOT_TOKEN", "channel": "#alerts", "base_url": slack.api_url},
        **sections,
        "services": [
            {
                "name": "chat",
                "pools": ["blue", "green"],
                "active_pool": "blue",
                "container": CONTAINER,
                "load_balancer": balancer.lb_config("chat"),
                "auto_runbooks": ["node-failover"],
            }
        ],
        "collect": {"node_interval": 1, "gpu_interval": 1, "timeout": 0.9},
        "runbooks_dir": str(Path(__file__).resolve().parents[2] / "runbooks"),
    }
    path = directory / "reliability.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reliability", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_daemon_fails_a_cut_node_over_to_the_standby_on_its_own(
    rig_lb: NginxBalancer, tmp_path: Path, slack: SlackStandIn
) -> None:
    fleet = rig_lb.fleet
    config = _config(rig_lb, tmp_path, slack)
    assert cli(config, "db", "upgrade").returncode == 0
    good = f"vllm/vllm-openai@{fleet.state.publish_image(RIG_LB_IMAGE)}"
    marked = cli(config, "images", "mark-good", "chat", good)
    assert marked.returncode == 0, marked.stderr
    env = os.environ | {"SLACK_BOT_TOKEN": slack.token, "RIG_HF_TOKEN": HF_TOKEN}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reliability", "daemon", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        time.sleep(3)  # a few healthy collections first
        fleet.cut("gpu-1")
        cut_at, cut_wall = time.monotonic(), datetime.now(UTC)
        run = None
        while time.monotonic() - cut_at < FAILOVER_WITHIN + 30 and run is None:
            history = json.loads(cli(config, "runbook", "history", "--json").stdout or "[]")
            run = next((r for r in history if r["status"] not in ("running",)), None)
            time.sleep(0.5)
        if run is None:
            daemon.terminate()
            out, _ = daemon.communicate(timeout=30)
            history = cli(config, "runbook", "history", "--json").stdout
            listed = cli(config, "incidents", "list", "--json").stdout
            raise AssertionError(f"no runbook run finished: {history}\n{listed}\n{out[-4000:]}")
        answered = []
        with httpx.Client(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            for _ in range(20):
                r = c.get(rig_lb.url + "v1/models")
                answered.append((r.status_code, r.headers.get("x-upstream-addr", "")))
        thread = ""
        for _ in range(50):  # the Slack dispatcher posts the notes a moment later
            roots = slack.messages("#alerts")
            thread = " ".join(r.text for m in roots for r in slack.replies(m.ts))
            if run is None or f"run {run['id']} succeeded" in thread:
                break
            time.sleep(0.2)
    finally:
        fleet.restore("gpu-1")
        daemon.terminate()
        out, _ = daemon.communicate(timeout=30)

    assert run is not None, f"no runbook run finished; daemon said:\n{out[-3000:]}"
    assert run["runbook"] == "node-failover" and run["started_by"] == "daemon"
    assert run["status"] == "succeeded", run["reason"]
    assert run["params"] == {"node": "gpu-1"} and run["incident_id"] is not None
    # Serving from the standby within the target: the run ended (verified through nginx).
    ended = datetime.fromisoformat(run["ended_at"])
    assert (ended - cut_wall).total_seconds() < FAILOVER_WITHIN, (ended, cut_wall)
    members = dict(parse_members(rig_lb.upstream_file.read_text()))
    spare = f"{fleet.node('spare-1').address}:8000"
    assert members[f"{fleet.node('gpu-1').address}:8000"] is True
    assert members[spare] is False
    assert all(status == 200 for status, _ in answered)
    assert any(spare in upstream for _, upstream in answered)
    # On-call heard it in the incident's thread: the start and the end of the run.
    assert "node-failover" in thread and f"run {run['id']} succeeded" in thread
    assert slack.token not in out
    # The standby runs the service's whole container spec, as `docker inspect` on it says;
    # its secret reached the container and nothing else.
    inspect, err, code = rig_lb.ssh("docker inspect vllm", node="spare-1")
    assert code == 0, err
    (standby,) = json.loads(inspect)
    assert standby["State"]["Running"] and standby["Config"]["Image"] == good
    assert standby["Config"]["Cmd"] == CONTAINER["args"]
    assert {"HF_HOME=/models", f"HF_TOKEN={HF_TOKEN}"} <= set(standby["Config"]["Env"])
    assert [(m["Source"], m["Destination"]) for m in standby["Mounts"]] == [
        ("/srv/models", "/models")
    ]
    assert standby["HostConfig"]["IpcMode"] == "host"
    status = cli(config, "runbook", "status", str(run["id"]), "--json").stdout
    assert "docker create" in status and "HF_HOME=/models" in status
    assert HF_TOKEN not in out + thread + status
