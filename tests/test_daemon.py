"""The daemon as a service manager runs it: a real process, real sshd nodes, real HTTP.

`reliability daemon --once` prints every target; `reliability daemon` serves metrics that
`promtool` accepts, notices a cut network within two intervals while other nodes keep
their schedule, reports readiness honestly and stops within 5 s of SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from reliability.testing import firewall
from reliability.testing.fleet import Fleet
from reliability.testing.inference_group import InferenceHandle
from reliability.testing.loopback import free_port
from reliability.testing.services import service_missing
from reliability.testing.waiting import seconds_until

NODE_INTERVAL = 2.0
STOP_WITHIN = 5.0


def write_config(directory: Path, **sections: object) -> Path:
    path = directory / "reliability.yaml"
    config = {"database": {"url": f"sqlite:///{directory / 'reliability.db'}"}, **sections}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fleet_sections(rig: Fleet, endpoint: InferenceHandle) -> dict[str, object]:
    return {
        **rig.config_sections(),
        "endpoints": [
            {
                "name": "pool-blue",
                "url": endpoint.url,
                "model": endpoint.spec.model,
                "interval": "2s",
                "timeout": "1s",
                "completion_interval": "4s",
            }
        ],
        "collect": {"node_interval": NODE_INTERVAL, "gpu_interval": NODE_INTERVAL, "timeout": 1},
    }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reliability", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Running:
    """A `reliability daemon` process and its HTTP address."""

    def __init__(self, config: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reliability", "daemon", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=2.0)

    def wait_until(self, what: str, ok: Callable[[], bool], timeout: float = 30.0) -> float:
        """Seconds until ``ok()``, asked while the daemon may not listen yet; fails at once
        with its output if it exits."""

        def answered() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}): {self.proc.stdout.read()}")
            try:
                return ok()
            except httpx.TransportError:
                return False

        return seconds_until(what, answered, timeout, every=0.1)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(self.get("/metrics").text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def start_daemon() -> Iterator[Callable[[Path, int], Running]]:
    running: list[Running] = []

    def start(config: Path, port: int) -> Running:
        daemon = Running(config, port)
        running.append(daemon)
        daemon.wait_until("/healthz", lambda: daemon.get("/healthz").status_code == 200)
        return daemon

    yield start
    for daemon in running:
        daemon.stop()


def node_up(metrics: dict, node: str) -> float | None:
    return metrics.get(("reliability_node_up", (("node", node),)))


def last_success(metrics: dict, collector: str, target: str) -> float | None:
    labels = (("collector", collector), ("target", target))
    return metrics.get(("reliability_target_last_success_timestamp_seconds", labels))


@pytest.mark.rig
def test_once_prints_every_target_and_fails_when_one_is_down(
    rig: Fleet, inference_server: InferenceHandle, tmp_path: Path
):
    config = write_config(tmp_path, **fleet_sections(rig, inference_server))
    ok = cli("daemon", "--once", "--json", "-c", str(config))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = {(r["collector"], r["target"]): r for r in json.loads(ok.stdout)}
    names = [n.name for n in rig.nodes]
    expected = {("node", n) for n in names} | {("gpu", n) for n in names} | {("api", "pool-blue")}
    assert set(rows) == expected
    assert all(r["ok"] for r in rows.values())

    table = cli("daemon", "--once", "-c", str(config))
    for name in names:
        assert name in table.stdout
    assert "pool-blue" in table.stdout
    assert f"{len(expected)}/{len(expected)} targets answered" in table.stdout

    inference_server.set_mode("overloaded")
    rig.state.set_gpu_status("gpu-2", 3, "lost")
    failed = cli("daemon", "--once", "--json", "-c", str(config))
    assert failed.returncode == 1
    rows = {(r["collector"], r["target"]): r for r in json.loads(failed.stdout)}
    assert rows[("api", "pool-blue")]["reason"] == "overloaded"
    lost = [
        s for s in rows[("gpu", "gpu-2")]["samples"] if s["metric"] == "reliability_node_gpus_lost"
    ]
    assert lost and lost[0]["value"] == 1.0


@pytest.mark.rig
def test_served_metrics_pass_promtool_and_readyz_is_true(
    rig: Fleet, inference_server: InferenceHandle, tmp_path: Path, start_daemon
):
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool (Debian package prometheus) not installed")
    port = free_port()
    config = write_config(
        tmp_path, http={"listen": f"127.0.0.1:{port}"}, **fleet_sections(rig, inference_server)
    )
    subprocess.run(
        [sys.executable, "-m", "reliability", "db", "upgrade", "-c", str(config)],
        check=True,
        capture_output=True,
    )
    daemon = start_daemon(config, port)
    daemon.wait_until(
        "every node up", lambda: all(node_up(daemon.metrics(), n.name) == 1 for n in rig.nodes)
    )
    daemon.wait_until(
        "GPU metrics",
        lambda: (
            ("reliability_gpu_temperature_celsius", (("gpu", "0"), ("node", "gpu-1")))
            in daemon.metrics()
        ),
    )
    body = daemon.get("/metrics").text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True
    )
    assert checked.returncode == 0 and not checked.stdout.strip() + checked.stderr.strip(), (
        checked.stdout + checked.stderr
    )
    ready = daemon.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"ready": True, "problems": {}, "critical": {}}


@pytest.mark.rig
def test_a_cut_node_is_down_within_two_intervals_while_others_keep_their_schedule(
    rig: Fleet, inference_server: InferenceHandle, tmp_path: Path, start_daemon
):
    reason = firewall.available()
    if reason:
        service_missing(reason)
    port = free_port()
    config = write_config(
        tmp_path, http={"listen": f"127.0.0.1:{port}"}, **fleet_sections(rig, inference_server)
    )
    daemon = start_daemon(config, port)
    daemon.wait_until(
        "every node up", lambda: all(node_up(daemon.metrics(), n.name) == 1 for n in rig.nodes)
    )
    before = last_success(daemon.metrics(), "node", "gpu-1")

    rig.cut("gpu-2")
    took = daemon.wait_until(
        "gpu-2 down", lambda: node_up(daemon.metrics(), "gpu-2") == 0, timeout=4 * NODE_INTERVAL
    )
    assert took <= 2 * NODE_INTERVAL + 0.5, f"gpu-2 shown down after {took:.1f}s"

    # gpu-1 kept being collected on its schedule while gpu-2 hung.
    daemon.wait_until(
        "gpu-1 collected again",
        lambda: (last_success(daemon.metrics(), "node", "gpu-1") or 0) > before + NODE_INTERVAL,
        timeout=3 * NODE_INTERVAL,
    )
    assert node_up(daemon.metrics(), "gpu-1") == 1

    rig.restore("gpu-2")
    daemon.wait_until(
        "gpu-2 back", lambda: node_up(daemon.metrics(), "gpu-2") == 1, timeout=6 * NODE_INTERVAL
    )


def test_readyz_is_false_while_the_database_is_unreachable(tmp_path: Path, start_daemon):
    port = free_port()
    config = tmp_path / "reliability.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'data' / 'r.db'}"},
                "http": {"listen": f"127.0.0.1:{port}"},
            }
        )
    )
    (tmp_path / "data").write_text("a file where the database directory should be")
    daemon = start_daemon(config, port)
    ready = daemon.get("/readyz")
    assert ready.status_code == 503
    assert "database" in ready.json()["problems"]

    (tmp_path / "data").unlink()
    assert cli("db", "upgrade", "-c", str(config)).returncode == 0
    daemon.wait_until("ready once migrated", lambda: daemon.get("/readyz").status_code == 200)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_daemon_within_5s_and_cleanly(
    sig: signal.Signals, tmp_path: Path, start_daemon, inference_server: InferenceHandle
):
    port = free_port()
    inference_server.set_mode("stall")  # a probe is in flight when the signal comes
    config = write_config(
        tmp_path,
        http={"listen": f"127.0.0.1:{port}"},
        endpoints=[
            {
                "name": "stuck",
                "url": inference_server.url,
                "model": inference_server.spec.model,
                "interval": "10s",
                "timeout": "8s",
            }
        ],
    )
    daemon = start_daemon(config, port)
    time.sleep(0.5)
    started = time.monotonic()
    os.kill(daemon.proc.pid, sig)
    code = daemon.proc.wait(STOP_WITHIN + 5)
    took = time.monotonic() - started
    assert took < STOP_WITHIN, f"stopped after {took:.1f}s"
    assert code == 0, daemon.proc.stdout.read()
    assert "stopping" in daemon.proc.stdout.read()


def test_a_refused_slack_token_is_found_at_start_shown_and_cleared_by_a_restart(
    tmp_path: Path, start_daemon, monkeypatch: pytest.MonkeyPatch
):
    from reliability.testing.slack import SlackStandIn

    port = free_port()
    with SlackStandIn() as slack:
        monkeypatch.setenv("RELIABILITY_TEST_SLACK_TOKEN", slack.token)
        section = {
            "token_env": "RELIABILITY_TEST_SLACK_TOKEN",
            "channel": "#alerts",
            "base_url": slack.api_url,
        }
        config = write_config(tmp_path, http={"listen": f"127.0.0.1:{port}"}, slack=section)
        assert cli("db", "upgrade", "-c", str(config)).returncode == 0
        healthy = ("reliability_notifier_healthy", (("notifier", "slack"),))
        slack.deactivate()  # the bot's account was switched off

        daemon = start_daemon(config, port)
        daemon.wait_until(
            "the refusal in /readyz", lambda: daemon.get("/readyz").json()["critical"]
        )
        ready = daemon.get("/readyz")
        assert ready.status_code == 200  # it still records incidents and takes webhooks
        assert "account_inactive" in ready.json()["critical"]["notify"]
        daemon.wait_until("the metric at 0", lambda: daemon.metrics().get(healthy) == 0)
        daemon.stop()
        log = daemon.proc.stdout.read()
        assert log.count("cannot deliver pages") == 1, log

        slack.deactivate(False)  # fixed, and the daemon restarted
        again = start_daemon(config, port)
        again.wait_until("the metric back at 1", lambda: again.metrics().get(healthy) == 1)
        assert again.get("/readyz").json()["critical"] == {}
        assert [c.ok for c in slack.calls("auth.test")] == [False, True]  # once per start
