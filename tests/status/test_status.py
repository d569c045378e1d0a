"""`reliability status` as on-call reads it: what the screen and the JSON say, and the exit
status scripts act on.

Nodes and endpoints come from the daemon's real HTTP surface (`web.build_app`) serving a
snapshot that the real collectors filled: API probes of inference stand-ins, a node
collection that fails on a refused SSH port. Incidents and runs are written through their
services into the database, on both backends. The last test runs the whole daemon on the
rig and cuts a node's network.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
import yaml
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

from reliability import catalog, db, web
from reliability.cli import main
from reliability.cli_support import load_config
from reliability.collect.api import ApiProbeCollector, EndpointSpec
from reliability.collect.base import Collector, Sample
from reliability.collect.gpu_common import node_count_samples
from reliability.collect.inventory import COLLECTOR, TARGET, inventory_samples
from reliability.collect.node import NodeCollector, NodeSpec
from reliability.collect.runner import TargetRunner
from reliability.collect.snapshot import Snapshot
from reliability.exposition import Histogram
from reliability.fleet import service as fleet_service
from reliability.incidents import service as incidents
from reliability.runbooks import service as runs
from reliability.runbooks.models import RunbookRun, RunStatus
from reliability.ssh import SshPool, SshTarget
from reliability.status.scrape import LatencyWindow
from reliability.testing import firewall
from reliability.testing.fleet import Fleet
from reliability.testing.inference import DEFAULT_MODEL, InferenceSpec, listen, uvicorn_config
from reliability.testing.inference_group import InferenceHandle, ServerGroup
from reliability.testing.loopback import free_port
from reliability.testing.services import service_missing

NODES = [
    {"name": "gpu-1", "address": "10.0.0.1", "pool": "blue", "gpus": 8},
    {"name": "gpu-2", "address": "10.0.0.2", "pool": "green", "gpus": 8},
]
ENDPOINTS = ["pool-blue", "hosted"]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(directory: Path, database_url: str, listen_on: str, **sections: object) -> Path:
    path = directory / "reliability.yaml"
    config = {"database": {"url": database_url}, "http": {"listen": listen_on}, **sections}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def endpoint_sections(servers: dict[str, InferenceHandle]) -> list[dict[str, object]]:
    return [
        {
            "name": name,
            "url": handle.url,
            "role": "hosted" if name == "hosted" else "local",
            "completion_interval": 0,
        }
        for name, handle in servers.items()
    ]


def cycle(snapshot: Snapshot, collector: Collector, rounds: int = 1) -> None:
    """Collect every target `rounds` times, published as the daemon's runner does."""
    with ThreadPoolExecutor(4) as executor:
        runner = TargetRunner(collector, snapshot, executor=executor, deadline=10.0)
        for _ in range(rounds):
            runner.run_cycle()


class MetricsServer:
    """The daemon's HTTP surface (`/metrics` from a snapshot) on 127.0.0.1."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        sock = listen("127.0.0.1", 0)
        self.listen = f"127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn_config(web.build_app(self.snapshot, readiness=[])))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self._server.started

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    server = MetricsServer()
    yield server
    server.stop()


@pytest.fixture
def servers(inference_group: ServerGroup) -> dict[str, InferenceHandle]:
    """An in-house pool answering in ~0.3 s and a hosted API that answers "busy" (503)."""
    blue = inference_group.start(InferenceSpec())
    blue.set_mode("slow", delay_s=0.3)
    hosted = inference_group.start(InferenceSpec(pool="hosted"))
    hosted.set_mode("overloaded")
    return {"pool-blue": blue, "hosted": hosted}


@pytest.fixture
def fleet(
    tmp_path: Path,
    database_url: str,
    engine,
    metrics_server: MetricsServer,
    servers: dict[str, InferenceHandle],
) -> Path:
    """A config and the daemon's /metrics for it: gpu-1 up with 8/8 GPUs, gpu-2 answered
    two minutes ago and now refuses SSH, both endpoints probed three times."""
    config_path = write_config(
        tmp_path,
        database_url,
        metrics_server.listen,
        nodes=NODES,
        endpoints=endpoint_sections(servers),
    )
    config = load_config(config_path)
    snapshot = metrics_server.snapshot
    snapshot.publish(COLLECTOR, TARGET, ok=True, duration=0.0, samples=inventory_samples(config))
    for node, answered in (("gpu-1", time.time()), ("gpu-2", time.time() - 125)):
        up = [Sample(catalog.NODE_UP, (node,), 1.0)]
        snapshot.publish("node", node, ok=True, duration=0.01, samples=up, at=answered)
        gpus = node_count_samples(node, expected=8, visible=8, lost=0)
        snapshot.publish("gpu", node, ok=True, duration=0.01, samples=gpus, at=answered)
    # Since then gpu-2 stopped answering: its GPU collection fails with nothing to say...
    snapshot.publish("gpu", "gpu-2", ok=False, duration=1.0, error="refused", reason="unreachable")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    target = SshTarget(
        name="gpu-2",
        host="127.0.0.1",
        user="nobody",
        port=refused_port(),
        known_hosts=known_hosts,
        connect_timeout=1.0,
    )
    # ...and its node collection, run for real against a port that refuses, says node_up 0.
    pool = SshPool()
    try:
        cycle(snapshot, NodeCollector(pool, [NodeSpec("gpu-2", target)], timeout=2.0))
    finally:
        pool.close()
    specs = [
        EndpointSpec(name=name, base_url=handle.url, model=DEFAULT_MODEL, timeout=2.0)
        for name, handle in servers.items()
    ]
    api = ApiProbeCollector(specs)
    try:
        cycle(snapshot, api, rounds=3)
    finally:
        api.close()
    return config_path


def status_json(config: Path, *extra: str) -> tuple[dict, int]:
    result = run("status", "--json", "-c", str(config), *extra)
    return json.loads(result.output), result.exit_code


# --- nodes and endpoints, from the daemon's /metrics --------------------------------------


def test_a_down_node_shows_down_on_the_screen_and_the_exit_status_is_1(fleet: Path):
    result = run("status", "-c", str(fleet))
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "NEEDS ATTENTION (1)" in lines[0]
    assert lines[1].strip() == "- node gpu-2 is down"
    gpu1 = next(line for line in lines if line.startswith("gpu-1"))
    gpu2 = next(line for line in lines if line.startswith("gpu-2"))
    assert gpu1.split()[1:] == ["up", "8/8", "blue", "serving"]
    assert gpu2.split()[1:] == ["down", "2m", "-/8", "green", "serving"]
    assert max(len(line) for line in lines) <= 80


def test_nodes_show_the_fleets_live_state_not_the_configs_role(fleet: Path, engine):
    """After a failover the failed node is out and the standby serves its pool: the table
    says so, whatever the config's `role` and `pool`."""
    config = load_config(fleet)
    at = datetime.now(UTC)
    with db.session_factory(engine).begin() as s:
        fleet_service.seed(s, config=config, now=at)
        fleet_service.set_state(
            s,
            node="gpu-2",
            state="out",
            service="chat",
            pool="green",
            reason="cut",
            by="run 1",
            at=at,
        )
    document, _ = status_json(fleet)
    nodes = {n["name"]: (n["role"], n["pool"]) for n in document["nodes"]}
    assert nodes == {"gpu-1": ("serving", "blue"), "gpu-2": ("out", "green")}
    gpu2 = next(
        line
        for line in run("status", "-c", str(fleet)).output.splitlines()
        if line.startswith("gpu-2")
    )
    assert gpu2.split()[-2:] == ["green", "out"]


def test_the_json_has_each_endpoints_error_ratio_and_p95(fleet: Path):
    document, code = status_json(fleet)
    endpoints = {e["name"]: e for e in document["endpoints"]}
    assert list(endpoints) == ENDPOINTS
    hosted, blue = endpoints["hosted"], endpoints["pool-blue"]
    assert hosted["role"] == "hosted"
    assert hosted["last_probe_ok"] is False
    assert hosted["error_ratio"] == {"1m": 1.0, "5m": 1.0}
    assert hosted["overload_ratio"] == {"1m": 1.0, "5m": 1.0}
    assert blue["last_probe_ok"] is True
    assert blue["error_ratio"] == {"1m": 0.0, "5m": 0.0}
    # Three answers after 0.3 s each: all in the (0.25, 0.5] bucket.
    assert 0.25 < blue["p95_seconds"]["models"] <= 0.5
    assert blue["p95_window_seconds"] is None  # since the daemon started
    nodes = {n["name"]: n for n in document["nodes"]}
    assert nodes["gpu-2"]["state"] == "down" and nodes["gpu-2"]["up"] is False
    assert 120 <= nodes["gpu-2"]["down_for_seconds"] < 180
    assert nodes["gpu-1"] | {"down_for_seconds": None} == {
        "name": "gpu-1",
        "pool": "blue",
        "role": "serving",
        "up": True,
        "state": "up",
        "gpus_visible": 8,
        "gpus_expected": 8,
        "gpus_lost": 0,
        "gpu_collect_failed": False,
        "down_for_seconds": None,
    }
    assert document["daemon"]["up"] is True
    # A busy hosted API is not, by itself, a reason: its rule opens the incident that is.
    assert document["attention"] == ["node gpu-2 is down"]
    assert code == 1


def test_the_screen_shows_error_ratios_and_p95_since_the_daemon_started(fleet: Path):
    output = run("status", "-c", str(fleet)).output
    assert "Endpoints (p95 since the daemon started)" in output
    hosted = next(line for line in output.splitlines() if line.startswith("hosted"))
    assert hosted.split()[:6] == ["hosted", "hosted", "fail", "100%", "100%", "100%"]
    blue = next(line for line in output.splitlines() if line.startswith("pool-blue"))
    assert blue.split()[:6] == ["pool-blue", "local", "ok", "0%", "0%", "0%"]
    assert "models " in blue and "ms" in blue


def test_lost_gpus_on_an_up_node_need_attention(fleet: Path, metrics_server: MetricsServer):
    lost = node_count_samples("gpu-1", expected=8, visible=7, lost=1)
    metrics_server.snapshot.publish("gpu", "gpu-1", ok=True, duration=0.01, samples=lost)
    document, code = status_json(fleet)
    assert "node gpu-1: 1 of 8 GPUs lost" in document["attention"]
    assert code == 1
    screen = run("status", "-c", str(fleet)).output.splitlines()
    assert "7/8 (1 lost)" in next(line for line in screen if line.startswith("gpu-1"))


def test_all_fine_is_exit_0(
    tmp_path: Path, database_url: str, engine, metrics_server: MetricsServer
):
    config = write_config(tmp_path, database_url, metrics_server.listen, nodes=NODES[:1])
    samples = [Sample(catalog.NODE_UP, ("gpu-1",), 1.0)]
    metrics_server.snapshot.publish("node", "gpu-1", ok=True, duration=0.01, samples=samples)
    result = run("status", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert "all fine" in result.output.splitlines()[0]
    assert "Incidents: none open" in result.output
    document, code = status_json(config)
    assert (document["ok"], document["attention"], code) == (True, [], 0)


# --- the daemon or the database away ------------------------------------------------------


def test_an_unreachable_daemon_is_one_line_and_the_database_parts_still_show(
    tmp_path: Path, database_url: str, session: Session
):
    port = refused_port()
    config = write_config(tmp_path, database_url, f"127.0.0.1:{port}", nodes=NODES)
    incidents.open_or_update(
        session, fingerprint="a", title="gpu-2 fell off the bus", severity="warning", source="t"
    )
    session.commit()
    result = run("status", "-c", str(config))
    assert result.exit_code == 1
    url = f"http://127.0.0.1:{port}/metrics"
    said = [line for line in result.output.splitlines() if url in line]
    assert said == [
        f"daemon: not answering at {url}: connection refused (nodes and endpoints unknown)"
    ]
    assert "gpu-2 fell off the bus" in result.output
    assert "gpu-1" not in result.output  # no node table to guess at

    document, code = status_json(config)
    assert code == 1
    assert document["daemon"] == {"url": url, "up": False, "error": "connection refused"}
    assert [i["title"] for i in document["incidents"]] == ["gpu-2 fell off the bus"]
    assert [n["state"] for n in document["nodes"]] == ["unknown", "unknown"]


def test_a_missing_sqlite_database_is_reported_and_not_created(
    tmp_path: Path, metrics_server: MetricsServer
):
    path = tmp_path / "var" / "reliability.db"
    config = write_config(tmp_path, f"sqlite:///{path}", metrics_server.listen)
    document, code = status_json(config)
    assert code == 1
    assert document["database"]["up"] is False
    assert "run `reliability db upgrade`" in document["database"]["error"]
    assert not path.exists() and not path.parent.exists()


def test_json_with_watch_is_refused(tmp_path: Path, metrics_server: MetricsServer):
    config = write_config(tmp_path, "sqlite:///x.db", metrics_server.listen)
    result = CliRunner().invoke(main, ["status", "--json", "--watch", "-c", str(config)])
    assert result.exit_code == 2
    assert "--watch" in result.output
    too_fast = CliRunner().invoke(main, ["status", "--watch", "0.1", "-c", str(config)])
    assert too_fast.exit_code == 2


# --- incidents and runbook runs, from the database ----------------------------------------


def test_open_incidents_show_severity_age_and_who_acknowledged(
    tmp_path: Path, database_url: str, session: Session, metrics_server: MetricsServer
):
    config = write_config(tmp_path, database_url, metrics_server.listen)
    now = datetime.now(UTC)
    hot = incidents.open_or_update(
        session,
        fingerprint="hot",
        title="gpu-1 GPU 3 at 91°C",
        severity="warning",
        source="rule",
        at=now - timedelta(minutes=7),
    )
    incidents.acknowledge(session, incident_id=hot.incident.id, by="alice")
    incidents.open_or_update(
        session,
        fingerprint="xid",
        title="gpu-2 GPU 0 fell off the bus (XID 79)",
        severity="critical",
        source="rule",
        at=now - timedelta(minutes=3),
    )
    done = incidents.open_or_update(
        session, fingerprint="old", title="resolved long ago", severity="critical", source="t"
    )
    incidents.resolve(session, incident_id=done.incident.id, by="bob")
    session.commit()

    result = run("status", "-c", str(config))
    assert result.exit_code == 1
    rows = [" ".join(line.split()) for line in result.output.splitlines() if line[:1].isdigit()]
    assert rows == [
        "2 critical open 3m gpu-2 GPU 0 fell off the bus (XID 79)",
        "1 warning acked by alice 7m gpu-1 GPU 3 at 91°C",
    ]
    assert "resolved long ago" not in result.output

    document, _ = status_json(config)
    assert document["attention"] == [
        "critical incident #2 open: gpu-2 GPU 0 fell off the bus (XID 79)"
    ]
    first = document["incidents"][0]
    assert (first["severity"], first["status"], first["acknowledged_by"]) == (
        "critical",
        "open",
        None,
    )
    assert 180 <= first["age_seconds"] < 240
    assert document["incidents"][1]["acknowledged_by"] == "alice"


def add_run(
    session: Session,
    runbook: str,
    status: RunStatus,
    *,
    started: timedelta,
    heartbeat: timedelta | None = None,
    reason: str | None = None,
) -> RunbookRun:
    now = datetime.now(UTC)
    run_ = runs.create_run(
        session,
        runbook=runbook,
        params={},
        services=["chat"],
        started_by="alice",
        incident_id=None,
        now=now - started,
    )
    if status is not RunStatus.running:
        runs.finish_run(
            session,
            run_id=run_.id,
            status=status,
            reason=reason,
            now=now - started + timedelta(seconds=30),
        )
    elif heartbeat is not None:
        runs.heartbeat(session, run_id=run_.id, now=now - heartbeat, step="drain")
    session.commit()
    return run_


def test_runs_show_running_recent_and_stale_and_which_need_attention(
    tmp_path: Path, database_url: str, session: Session, metrics_server: MetricsServer
):
    config = write_config(tmp_path, database_url, metrics_server.listen)
    add_run(session, "image-rollback", RunStatus.interrupted, started=timedelta(days=2))
    add_run(session, "blue-green", RunStatus.failed, started=timedelta(hours=3), reason="old")
    for _ in range(5):
        add_run(session, "blue-green", RunStatus.succeeded, started=timedelta(hours=2))
    add_run(
        session,
        "upstream-failover",
        RunStatus.failed,
        started=timedelta(minutes=10),
        reason="step verify: pool-green answered 503",
    )
    add_run(
        session,
        "node-failover",
        RunStatus.running,
        started=timedelta(minutes=5),
        heartbeat=timedelta(seconds=2),
    )
    stale = add_run(
        session,
        "blue-green",
        RunStatus.running,
        started=timedelta(minutes=4),
        heartbeat=timedelta(seconds=125),
    )

    result = run("status", "-c", str(config))
    assert result.exit_code == 1
    assert "running? (no heartbeat for 12" in result.output

    document, code = status_json(config)
    assert code == 1
    shown = [(r["id"], r["runbook"], r["status"]) for r in document["runs"]]
    # Every unended run, however old, and the five newest.
    assert shown == [
        (10, "blue-green", "running"),
        (9, "node-failover", "running"),
        (8, "upstream-failover", "failed"),
        (7, "blue-green", "succeeded"),
        (6, "blue-green", "succeeded"),
        (1, "image-rollback", "interrupted"),
    ]
    assert document["runs"][0]["no_heartbeat_seconds"] >= 125
    assert document["runs"][1]["no_heartbeat_seconds"] is None
    assert document["runs"][1]["step"] == "drain"
    # The age is read when the command runs, a second or two after the test set it.
    stale_line = document["attention"][0]
    assert re.fullmatch(r"run #10 blue-green: no heartbeat for 1(2[5-9]|3\d)s", stale_line)
    assert document["attention"][1:] == [
        "run #8 upstream-failover failed: step verify: pool-green answered 503",
        "run #1 image-rollback interrupted: `reliability runbook resume 1` ends it",
    ]
    # Status only reads: the stale run is still `running` for `runbook` commands to judge.
    session.expire_all()
    assert session.get(RunbookRun, stale.id).status == RunStatus.running


# --- --watch ------------------------------------------------------------------------------


def test_watch_redraws_in_place_until_ctrl_c_and_exits_0(
    tmp_path: Path, database_url: str, engine, metrics_server: MetricsServer
):
    config = write_config(tmp_path, database_url, metrics_server.listen, nodes=NODES[:1])
    samples = [Sample(catalog.NODE_UP, ("gpu-1",), 0.0)]  # down: 1 without --watch
    metrics_server.snapshot.publish("node", "gpu-1", ok=False, duration=1.0, samples=samples)
    # rich draws a Live display only on a terminal; TTY_COMPATIBLE says stdout is one.
    env = os.environ | {"TTY_COMPATIBLE": "1", "COLUMNS": "80", "LINES": "24"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "reliability", "status", "--watch", "1", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert watch.stdout is not None
    drawn = b""
    deadline = time.monotonic() + 20
    # Ctrl-C once it has drawn twice (a fixed sleep would race a slow start).
    while drawn.count(b"reliability status") < 2 and time.monotonic() < deadline:
        chunk = os.read(watch.stdout.fileno(), 65536)
        assert chunk, f"status ended early: {watch.wait(5)}"
        drawn += chunk
    out = drawn.decode(errors="replace")
    watch.send_signal(signal.SIGINT)
    rest, err = watch.communicate(timeout=15)
    out += rest
    assert watch.returncode == 0, err
    assert not err
    assert out.count("reliability status") >= 2  # redrawn...
    assert "\x1b[1A\x1b[2K" in out  # ...in place: cursor up, erase line
    assert "every 1s, Ctrl-C stops" in out
    assert "gpu-1" in out and "down" in out


def test_p95_is_histogram_quantile_as_prometheus_computes_it():
    inf = float("inf")
    h = Histogram(((0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (inf, 100.0)))
    assert h.quantile(0.95) == pytest.approx(0.75)  # rank 95: half-way through (0.5, 1]
    assert h.quantile(0.5) == pytest.approx(0.1)
    slow = Histogram(((0.1, 1.0), (60.0, 2.0), (inf, 40.0)))
    assert slow.quantile(0.95) == 60.0  # in +Inf: the largest finite bound
    assert Histogram(((0.1, 0.0), (inf, 0.0))).quantile(0.95) is None


def test_watch_p95_covers_the_last_minutes_once_it_has_watched_one():
    now = [0.0]
    window = LatencyWindow(span=300.0, min_span=60.0, clock=lambda: now[0])
    key = ("hosted", "models")

    def scrape(fast: float, slow: float) -> dict[tuple[str, ...], Histogram]:
        total = fast + slow
        return {key: Histogram(((0.1, fast), (10.0, total), (float("inf"), total)))}

    picked, covers = window.observe(scrape(1000, 0))
    assert covers is None and picked[key].quantile(0.95) < 0.1  # since the daemon started
    now[0] = 120.0
    picked, covers = window.observe(scrape(1010, 20))  # the last 2 minutes: mostly slow
    assert covers == 120.0
    assert picked[key].count == 30
    assert picked[key].quantile(0.95) > 5.0
    now[0] = 500.0  # the first scrape has left the window; the second is its start
    picked, covers = window.observe(scrape(1020, 20))
    assert covers == 380.0 and picked[key].count == 10
    now[0] = 560.0  # the daemon restarted: its counts start again from zero
    picked, _ = window.observe(scrape(3, 0))
    assert picked[key].count == 3


# --- the whole daemon, on the rig ---------------------------------------------------------


@pytest.mark.rig
def test_a_real_daemon_shows_a_cut_node_down(
    rig: Fleet, inference_server: InferenceHandle, tmp_path: Path
):
    reason = firewall.available()
    if reason:
        service_missing(reason)
    port = free_port()
    config = write_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'reliability.db'}",
        f"127.0.0.1:{port}",
        **rig.config_sections(),
        endpoints=[
            {
                "name": "pool-blue",
                "url": inference_server.url,
                "model": inference_server.spec.model,
                "interval": "1s",
                "timeout": "0.5s",
                "completion_interval": "2s",
            }
        ],
        collect={"node_interval": 1, "gpu_interval": 1, "timeout": 0.9},
    )
    run("db", "upgrade", "-c", str(config))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reliability", "daemon", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    names = [n.name for n in rig.nodes]

    def wait_for(what: str, ok: Callable[[dict, int], bool], timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert daemon.poll() is None, "the daemon exited"
            document, code = status_json(config)
            if ok(document, code):
                return document
            time.sleep(0.3)
        pytest.fail(f"{what}: not within {timeout}s; last: {document}")

    try:
        # A probe that timed out while a busy machine started everything leaves the 1m
        # window for up to a minute: wait for it to be clean, not for its first reading.
        fine = wait_for(
            "every node up, every GPU seen, the endpoint probed without an error",
            lambda d, code: (
                code == 0
                and [n["state"] for n in d["nodes"]] == ["up"] * len(names)
                and all(n["gpus_visible"] == rig.gpus for n in d["nodes"])
                and d["endpoints"][0]["p95_seconds"].get("completion") is not None
                and d["endpoints"][0]["error_ratio"]["1m"] == 0.0
            ),
            timeout=80.0,
        )
        blue = fine["endpoints"][0]
        assert blue["last_probe_ok"] is True
        assert 0 < blue["p95_seconds"]["models"] < 0.5

        rig.cut("gpu-2")
        down = wait_for(
            "gpu-2 down", lambda d, code: code == 1 and "node gpu-2 is down" in d["attention"]
        )
        assert {n["name"]: n["state"] for n in down["nodes"]}["gpu-2"] == "down"
        screen = run("status", "-c", str(config))
        assert screen.exit_code == 1
        gpu2 = next(line for line in screen.output.splitlines() if line.startswith("gpu-2"))
        assert "down" in gpu2
    finally:
        rig.restore("gpu-2")
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)


def test_a_notifier_whose_token_is_refused_needs_attention(
    tmp_path: Path, database_url: str, engine, metrics_server: MetricsServer, session: Session
):
    from reliability.config import SlackConfig
    from reliability.incidents import flows
    from reliability.notify.dispatcher import Dispatcher
    from reliability.notify.slack import SlackClient, SlackNotifier
    from reliability.testing.slack import SlackStandIn

    config = write_config(tmp_path, database_url, metrics_server.listen)
    with SlackStandIn() as slack:
        client = SlackClient("xoxb-0-0-revokedrevoked", base_url=slack.api_url, timeout_s=2)
        notifier = SlackNotifier(client, SlackConfig(token_env="UNUSED", channel="#alerts"))
        dispatcher = Dispatcher(engine, notifier)
        flows.open_or_update(
            session, fingerprint="hot", title="gpu-1 hot", severity="warning", source="rule"
        )
        session.commit()
        dispatcher.run_once()  # the page meets the refusal and is held
    # What the daemon publishes for its dispatcher every few seconds.
    metrics_server.snapshot.publish(
        "notify", "slack", ok=True, duration=0.0, samples=dispatcher.samples()
    )

    document, code = status_json(config)

    assert code == 1
    [line] = [a for a in document["attention"] if a.startswith("slack")]
    assert line.startswith("slack cannot deliver pages anywhere: invalid_auth since ")
    [row] = document["notifiers"]
    assert (row["name"], row["healthy"], row["failures"][0]["reason"]) == (
        "slack",
        False,
        "invalid_auth",
    )
    screen = run("status", "-c", str(config)).output
    assert "slack cannot deliver pages anywhere: invalid_auth" in screen
