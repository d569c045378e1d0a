"""Node failover with nobody at the keyboard: the daemon sees a node's network cut, opens
the incident, runs node-failover on its own, and the service answers from the standby,
in the usual time even while an upstream failover waits hours for the hosted API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from reliability.detect import builtin
from reliability.testing.fixtures import RIG_LB_IMAGE
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.inference_group import InferenceHandle
from reliability.testing.nginx import NginxBalancer, parse_members
from reliability.testing.rigconfig import rig_config
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


def _config(
    balancer: NginxBalancer,
    directory: Path,
    slack: SlackStandIn,
    *,
    auto: tuple[str, ...] = ("node-failover",),
    **extra: object,
) -> Path:
    """This test is about reachability: no GPU rules. The test migrates the database."""
    return rig_config(
        balancer,
        directory,
        service={"container": CONTAINER, "auto_runbooks": list(auto)},
        gpus=False,
        migrate=False,
        http={"listen": "127.0.0.1:0"},
        slack={"token_env": "SLACK_BOT_TOKEN", "channel": "#alerts", "base_url": slack.api_url},
        collect={"node_interval": 1, "gpu_interval": 1, "timeout": 0.9},
        **extra,
    )


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


# A run that holds the service for hours: it checks the pool, then waits for the hosted
# API without the service's lock (`release_locks`), as an operator's own runbook may.
HOLD = """\
description: Watch the busy hosted API until it recovers.
params:
  service: {type: service}
targets:
  local-pool: {pool: "{service.active_pool}"}
steps:
  - id: check-local
    action: ready
    nodes: local-pool
    args: {service: "{service}", ttft: 5s, within: 30s}
    timeout: 40s
  - id: wait-recovery
    action: http_check
    release_locks: true
    args: {url: "{service.hosted_url}", within: 6h, soak: 10m, interval: 1s, max_error_ratio: 0}
    timeout: 7h
"""


def history(config: Path) -> list[dict]:
    return json.loads(cli(config, "runbook", "history", "--json").stdout or "[]")


@pytest.mark.timeout(240)  # its loops end by then, so a failure reads as one, not a timeout
def test_a_node_cut_while_a_run_waits_for_the_hosted_api_is_failed_over_in_time(
    rig_lb: NginxBalancer, tmp_path: Path, slack: SlackStandIn, inference_server: InferenceHandle
) -> None:
    fleet = rig_lb.fleet
    inference_server.set_mode("overloaded")  # the hosted API is busy, and stays so
    books = tmp_path / "runbooks"
    shutil.copytree(Path(__file__).resolve().parents[2] / "runbooks", books)
    (books / "hold-for-hosted.yaml").write_text(HOLD)
    suggestion = builtin.UPSTREAM_OVERLOADED.runbook.model_copy(update={"name": "hold-for-hosted"})
    busy = builtin.UPSTREAM_OVERLOADED.model_copy(update={"for_": 2.0, "runbook": suggestion})
    hosted = {
        "name": "hosted",
        "url": inference_server.url,
        "role": "hosted",
        "service": "chat",
        "interval": "1s",
        "timeout": "500ms",
        "completion_interval": 0,
    }
    config = _config(
        rig_lb,
        tmp_path,
        slack,
        auto=("node-failover", "hold-for-hosted"),
        endpoints=[hosted],
        runbooks_dir=str(books),
        rules={"custom": [busy.model_dump(mode="json", by_alias=True, exclude_defaults=True)]},
    )
    assert cli(config, "db", "upgrade").returncode == 0
    good = f"vllm/vllm-openai@{fleet.state.publish_image(RIG_LB_IMAGE)}"
    assert cli(config, "images", "mark-good", "chat", good).returncode == 0
    env = os.environ | {"SLACK_BOT_TOKEN": slack.token, "RIG_HF_TOKEN": HF_TOKEN}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reliability", "daemon", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    waiting, failover, upstream_then = None, None, None
    try:
        started = time.monotonic()
        while waiting is None and time.monotonic() - started < 60:
            waiting = next(
                (r for r in history(config) if r["runbook"] == "hold-for-hosted"
                 and r["status"] == "running" and r["step"] == "wait-recovery"),
                None,
            )  # fmt: skip
            time.sleep(0.5)
        assert waiting is not None, f"no run waits for the hosted API: {history(config)}"
        fleet.cut("gpu-1")
        cut_at, cut_wall = time.monotonic(), datetime.now(UTC)
        while failover is None and time.monotonic() - cut_at < FAILOVER_WITHIN + 30:
            runs = history(config)
            failover = next(
                (r for r in runs if r["runbook"] == "node-failover" and r["status"] != "running"),
                None,
            )
            upstream_then = next(r for r in runs if r["id"] == waiting["id"])
            time.sleep(0.5)
        thread = ""
        for _ in range(50):  # the Slack dispatcher posts the notes a moment later
            roots = slack.messages("#alerts")
            thread = " ".join(r.text for m in roots for r in slack.replies(m.ts))
            if "lets go of the lock" in thread:
                break
            time.sleep(0.2)
    finally:
        fleet.restore("gpu-1")
        daemon.terminate()
        out, _ = daemon.communicate(timeout=60)

    assert failover is not None, f"no node failover ended: {history(config)}\n{out[-3000:]}"
    assert failover["status"] == "succeeded", failover["reason"]
    assert failover["params"] == {"node": "gpu-1"} and failover["started_by"] == "daemon"
    ended = datetime.fromisoformat(failover["ended_at"])
    assert (ended - cut_wall).total_seconds() < FAILOVER_WITHIN, (ended, cut_wall)
    # ... while the upstream failover was still waiting for the hosted API.
    assert upstream_then is not None
    assert (upstream_then["status"], upstream_then["step"]) == ("running", "wait-recovery")
    assert (
        f"Run {waiting['id']} lets go of the lock of chat while step wait-recovery waits" in thread
    )
