"""`reliability demo` as a newcomer runs it: the demo fleet comes up, `demo inject` causes a
fault, and the daemon opens the incident, pages the Slack stand-in and, where the config
allows it, runs the runbook; `clear` resolves it all; Ctrl-C leaves nothing behind.

Everything is checked from outside, as a user would: the CLI's `--json` output against the
demo's config, the Slack stand-in's log file, /proc for processes and listening ports.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from click.testing import CliRunner

from reliability import db
from reliability.cli import main
from reliability.cli_support import load_config
from reliability.config.models import HOSTED_INTERVAL
from reliability.config.rules import ErrorRatioRule
from reliability.demo.config import (
    CONTAINER,
    LB_NODE,
    NODE_POOLS,
    NODES,
    Layout,
    demo_rules,
    write_config,
    write_runbooks,
)
from reliability.demo.control import FaultError
from reliability.demo.faults import HOT_GPU, Faults, Images
from reliability.demo.run import BAD_IMAGE, GOOD_IMAGE
from reliability.detect import builtin
from reliability.detect.builtin import BUILTIN, active_rules
from reliability.runbooks.load import load_runbooks
from reliability.testing import nginx, tls
from reliability.testing.demofleet import DemoFleet
from reliability.testing.inference import DEFAULT_MODEL, InferenceSpec
from reliability.testing.inference_group import ServerGroup
from reliability.testing.loopback import LOCK_DIR, free_port
from reliability.testing.services import service_missing
from reliability.testing.slack import SlackStandIn

REPO = Path(__file__).resolve().parents[2]
UP_WITHIN = 60.0  # the issue's promise on a fresh machine; here it takes a few seconds
STOP_WITHIN = 10.0
T = TypeVar("T")


# --- the config, without running anything ---------------------------------------------------


def _layout(slack: SlackStandIn, *, nginx_runs: bool, ca: Path) -> Layout:
    nodes = [
        {"name": n, "address": f"127.0.9.{i}", "ssh": {"port": 2222}, "pool": p, "gpus": g}
        for i, (n, p, g) in enumerate(
            [
                ("gpu-1", "blue", 8),
                ("gpu-2", "blue", 8),
                ("gpu-3", "green", 8),
                ("spare-1", None, 8),
                ("lb-1", None, 0),
            ],
            start=1,
        )
    ]
    # The fleet's SSH files, beside the CA (the daemon refuses to start without them).
    keys = {"key_file": ca.parent / "client", "known_hosts": ca.parent / "known_hosts"}
    for key in keys.values():
        key.touch()
    return Layout(
        ssh={"user": "demo", **{k: str(v) for k, v in keys.items()}},
        nodes=nodes,
        hosted_url="https://localhost:3",
        hosted_key="sk-demo-test-key",
        hosted_ca=ca,
        load_balancer={
            "kind": "nginx",
            "node": "lb-1",
            "upstream_file": "/rig/nginx-lb-1/upstream-chat.conf",
            "config_file": "/rig/nginx-lb-1/nginx.conf",
            "url": "http://127.0.9.5:8080/",
            "route": {
                "file": "/rig/nginx-lb-1/chat-route.conf",
                "hosted": "/rig/nginx-lb-1/chat-route-hosted.conf",
                "local": "/rig/nginx-lb-1/chat-route-local.conf",
            },
        },
        nginx_runs=nginx_runs,
        image="registry.demo.local/serving/vllm@sha256:" + "a" * 64,
        slack_token=slack.token,
        slack_api_url=slack.api_url,
        node_urls={n: f"http://127.0.9.{i}:8000" for i, n in enumerate(["gpu-1", "gpu-2"], 1)},
    )


@pytest.mark.parametrize("nginx_runs", [True, False])
def test_the_demo_config_passes_config_check_with_its_secrets(
    tmp_path: Path, slack: SlackStandIn, nginx_runs: bool
) -> None:
    directory = tmp_path / "demo"
    directory.mkdir()
    write_runbooks(directory)
    ca = tls.make_ca(tmp_path / "tls").cert_file
    path = write_config(directory, _layout(slack, nginx_runs=nginx_runs, ca=ca), "127.0.0.1:9464")

    checked = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert checked.exit_code == 0, checked.output
    config = load_config(path)
    assert config.slack_token().get_secret_value() == slack.token
    assert config.webhook_token() is not None
    assert (directory / "slack-token").stat().st_mode & 0o077 == 0
    assert config.database_url() == f"sqlite:///{directory / 'reliability.db'}"
    (service,) = config.services
    assert service.auto_runbooks == (
        ["node-failover", "upstream-failover", "upstream-switch-back"] if nginx_runs else []
    )
    assert service.load_balancer is not None and service.load_balancer.route is not None
    assert [e.name for e in config.endpoints] == ["hosted", "gpu-1", "gpu-2"]
    assert config.endpoint_key(0) is not None
    assert config.endpoint_key(0).get_secret_value() == "sk-demo-test-key"
    assert (directory / "hosted-api-key").stat().st_mode & 0o077 == 0
    assert "sk-demo-test-key" not in path.read_text()
    # The shortened rules replace the built-ins of the same name; nothing else changes.
    active = {r.name for r in active_rules(config.rules)}
    assert active == {r.name for r in BUILTIN}
    assert {r.name for r in config.rules.custom} == {r.name for r, _ in demo_rules()}


def test_the_demo_runbooks_are_the_shipped_ones_with_short_waits(
    tmp_path: Path, slack: SlackStandIn
) -> None:
    write_runbooks(tmp_path)
    ca = tls.make_ca(tmp_path / "tls").cert_file
    layout = _layout(slack, nginx_runs=True, ca=ca)
    config = load_config(write_config(tmp_path, layout, "127.0.0.1:9464"))

    books = load_runbooks(config)

    assert set(books) == {p.stem for p in (REPO / "runbooks").glob("*.yaml")}
    head, body = (tmp_path / "runbooks" / "blue-green.yaml").read_text().split("\n", 1)
    assert "soak: 10s" in body and "soak: 5m" not in body
    assert head.startswith("# Copied by `reliability demo`") and "soak: 5m -> soak: 10s" in head


def test_inject_without_a_running_demo_says_so_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reliability",
            "demo",
            "inject",
            "node-down",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert "no demo is running" in done.stderr and "reliability demo" in done.stderr


# --- the faults, on the demo's fleet without the daemon ------------------------------------


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[Faults]:
    url = f"sqlite:///{tmp_path / 'reliability.db'}"
    db.upgrade(url)
    database = db.LazyEngine(url)
    with (
        DemoFleet(NODES, pools=NODE_POOLS, gpus={LB_NODE: 0}, base_dir=tmp_path) as fleet,
        ServerGroup() as group,
    ):
        for node in NODE_POOLS:
            fleet.run_container(node, GOOD_IMAGE, container=CONTAINER)
        images = Images(GOOD_IMAGE, GOOD_IMAGE, BAD_IMAGE)
        hosted = group.start(InferenceSpec(pool="hosted"))
        yield Faults(fleet, hosted, images, database, nginx_runs=True, config_hint="-c x.yaml")
    database.dispose()


def test_gpu_faults_change_what_nvidia_smi_and_dmesg_report_until_clear(faults: Faults) -> None:
    state = faults.fleet.state

    assert "in gpu-2's kernel log" in faults.apply("gpu-xid79", "gpu-2")
    # Without a target: the first node of the pool the service serves from.
    assert f"GPU {HOT_GPU} of gpu-1 runs at 92 C" in faults.apply("gpu-hot", None)

    assert any("Xid" in line for _, line in state.read("gpu-2")["kernel"]["lines"])
    assert state.gpu("gpu-1", HOT_GPU)["temperature.gpu"] == 92
    with pytest.raises(FaultError, match="no GPUs"):
        faults.apply("gpu-hot", "lb-1")
    with pytest.raises(FaultError, match="unknown node"):
        faults.apply("node-down", "gpu-9")
    with pytest.raises(FaultError, match="takes no target"):
        faults.apply("clear", "gpu-1")

    said = faults.apply("clear", None)

    assert "gpu-1's GPUs are back to normal" in said
    assert state.gpu("gpu-1", HOT_GPU)["temperature.gpu"] == 41
    # An XID stays in the kernel log, as on a real node until it reboots.
    assert any("Xid" in line for _, line in state.read("gpu-2")["kernel"]["lines"])
    assert faults.apply("clear", None) == "Nothing to clear: no fault is in force."


def test_bad_image_breaks_the_active_pool_behind_a_passing_health_check(faults: Faults) -> None:
    fleet = faults.fleet
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}

    said = faults.apply("bad-image", None)

    assert "Pool blue (gpu-1, gpu-2)" in said and "blue-green" in said
    for node in ("gpu-1", "gpu-2"):
        url = fleet.inference_url(node)
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 500
        assert fleet.state.container(node, CONTAINER)["Config"]["Labels"]["pool"] == "blue"
    green = fleet.inference_url("gpu-3")
    assert httpx.post(green + "/v1/chat/completions", json=body).status_code == 200

    assert "gpu-1, gpu-2 run the good image again" in faults.apply("clear", None)

    for node in ("gpu-1", "gpu-2"):
        url = fleet.inference_url(node)
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200


def test_node_down_and_upstream_busy_until_clear(faults: Faults) -> None:
    fleet, hosted = faults.fleet, faults.hosted

    assert "gpu-1" in faults.apply("node-down", None)  # a node of the active pool
    assert "gpu-2" in faults.apply("node-down", None)  # the next one still answering
    faults.apply("upstream-busy", None)

    assert fleet.is_cut("gpu-1") and fleet.is_cut("gpu-2")
    assert httpx.get(hosted.url + "/health").status_code == 503

    said = faults.apply("clear", None)

    assert "The hosted API answers again" in said and "gpu-1 answers again" in said
    assert not fleet.is_cut("gpu-1") and not fleet.is_cut("gpu-2")
    assert httpx.get(hosted.url + "/health").status_code == 200
    assert httpx.get(fleet.inference_url("gpu-1") + "/health").status_code == 200


# --- the demo, running ----------------------------------------------------------------------


@dataclass
class RunningDemo:
    """A `reliability demo` subprocess and the way to ask it things, as its user."""

    directory: Path
    listen: str
    prefix: list[str]  # how to run a command as the demo's user
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        return self.directory / "demo.out"

    def command(self, *args: str) -> list[str]:
        return [*self.prefix, "-m", "reliability", *args]

    def start(self, *options: str) -> float:
        """Start the demo; the seconds until its daemon answered /readyz."""
        began = time.monotonic()
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(
                    "demo", "--dir", str(self.directory), "--listen", self.listen, *options
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the demo exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                return httpx.get(f"http://{self.listen}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        self.wait(ready, UP_WITHIN, "the demo's daemon to answer /readyz")
        self.info = json.loads((self.directory / "demo.json").read_text())
        return time.monotonic() - began

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=60, env=self.env
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{args} exited {done.returncode}: {done.stderr}\n{self.tail()}")
        return done

    def inject(self, fault: str, *target: str) -> str:
        return self.cli("demo", "inject", fault, *target, "--dir", str(self.directory)).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json", "-c", self.info["config"]).stdout)

    def incidents(self) -> list[dict[str, Any]]:
        return self.json("incidents", "list", "--status", "all")

    def runs(self) -> list[dict[str, Any]]:
        return self.json("runbook", "history")

    def slack(self) -> list[dict[str, Any]]:
        path = self.directory / "slack.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def wait(self, probe: Callable[[], T], within: float, what: str) -> T:
        deadline = time.monotonic() + within
        while True:
            found = probe()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {within:g}s waiting for {what}\n{self.tail()}"
                )
            time.sleep(0.5)

    def tail(self) -> str:
        out = self.output.read_text(errors="replace") if self.output.exists() else ""
        log = self.directory / "daemon.log"
        logged = log.read_text(errors="replace") if log.exists() else ""
        return f"--- demo output ---\n{out[-4000:]}\n--- daemon.log ---\n{logged[-4000:]}"

    def interrupt(self) -> tuple[int, float]:
        """Ctrl-C: the exit code and the seconds it took to exit."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(STOP_WITHIN + 20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the demo did not stop after Ctrl-C\n{self.tail()}") from None
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def incident(demo: RunningDemo, rule: str, **labels: str) -> dict[str, Any] | None:
    for found in demo.incidents():
        if found["fingerprint"].startswith(f"rule:{rule}{{") and all(
            found["labels"].get(k) == v for k, v in labels.items()
        ):
            return found
    return None


def posted(demo: RunningDemo, text: str, kind: str = "post") -> dict[str, Any] | None:
    return next((m for m in demo.slack() if m["kind"] == kind and text in m["text"]), None)


def run_of(demo: RunningDemo, runbook: str, **params: str) -> dict[str, Any] | None:
    return next((r for r in demo.runs() if r["runbook"] == runbook and r["params"] == params), None)


def left_behind(demo: RunningDemo) -> tuple[list[str], list[str]]:
    """(processes, listening sockets) the stopped demo left: processes whose command line
    or working folder is in the demo's folder, and sockets listening on its addresses."""
    directory = str(demo.directory.resolve())
    processes = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if directory in cmdline or cwd.startswith(directory):
            processes.append(f"{pid}: {cmdline}")
    wanted = set(demo.info["ports"])
    sockets = [s for s in _listening() if s in wanted and not _reclaimed(s)]
    return processes, sockets


def _reclaimed(address: str) -> bool:
    """Whether another fleet (a parallel test) holds the loopback block of `address` now:
    it could claim the block only once the demo's sockets there were gone, so what listens
    there is that fleet's."""
    octets = address.split(":")[0].split(".")
    if octets[:2] != ["127", "0"] or octets[2] == "0":
        return False
    fd = os.open(LOCK_DIR / f"block-{octets[2]}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing it lets a lock taken here go
    return False


def _listening() -> list[str]:
    """host:port of every IPv4 TCP socket in LISTEN state (any network namespace we see)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":
            address, port = local.split(":")
            octets = [str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)]
            out.append(f"{'.'.join(octets)}:{int(port, 16)}")
    return out


def served_by(demo: RunningDemo) -> str | None:
    """Who answers a completion through the demo's nginx (its x-pool header)."""
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(demo.info["lb_url"] + "v1/chat/completions", json=body, timeout=10)
    return answer.headers.get("x-pool") if answer.status_code == 200 else None


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    # Not tmp_path: a demo run as another user must reach it.
    directory = Path(tempfile.mkdtemp(prefix="reliability-demo-test-"))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.timeout(300)
def test_the_demo_pages_and_fails_over_on_its_own_and_clear_resolves_it_all(
    demo_dir: Path,
) -> None:
    reason = nginx.missing_requirement()
    if reason:
        service_missing(reason)
    demo = RunningDemo(demo_dir, f"127.0.0.1:{free_port()}", [sys.executable], dict(os.environ))
    try:
        took = demo.start()
        assert took < UP_WITHIN
        assert demo.info["nginx"] is True
        assert "reliability demo inject node-down" in demo.output.read_text()

        # gpu-3 (pool green, not serving) goes down and the hosted API turns busy together.
        assert "gpu-3" in demo.inject("node-down", "gpu-3")
        assert "503" in demo.inject("upstream-busy")

        down = demo.wait(lambda: incident(demo, "node-down", node="gpu-3"), 60, "node-down")
        busy = demo.wait(
            lambda: incident(demo, "upstream-overloaded", endpoint="hosted"), 60, "busy"
        )
        assert demo.wait(lambda: posted(demo, "gpu-3: node down"), 30, "node-down in Slack")
        assert demo.wait(lambda: posted(demo, "hosted API overloaded"), 30, "busy in Slack")
        failover = demo.wait(
            lambda: (
                (r := run_of(demo, "node-failover", node="gpu-3"))
                and r["status"] != "running"
                and r
            ),
            90,
            "node-failover to end",
        )
        assert failover["status"] == "succeeded", failover
        assert failover["started_by"] == "daemon" and failover["incident_id"] == down["id"]
        assert demo.wait(
            lambda: posted(demo, f"Runbook run {failover['id']} succeeded", "reply"),
            30,
            "the run's end in the incident's Slack thread",
        )
        shifted = demo.wait(
            lambda: (
                (r := run_of(demo, "upstream-failover", service="chat"))
                and r["status"] != "running"
                and r
            ),
            60,
            "upstream-failover to end",
        )
        assert shifted["status"] == "succeeded", shifted  # it waits for nothing
        assert shifted["started_by"] == "daemon" and shifted["incident_id"] == busy["id"]
        assert demo.wait(
            lambda: posted(demo, f"Runbook run {shifted['id']} succeeded", "reply"),
            30,
            "upstream-failover's end in Slack",
        )
        assert served_by(demo) == "blue"  # /v1/ through nginx now reaches the pool

        cleared = demo.inject("clear")
        assert "gpu-3 answers again" in cleared and "hosted API answers again" in cleared

        recovered = demo.wait(
            lambda: incident(demo, "upstream-recovered", service="chat"), 90, "recovered"
        )
        back = demo.wait(
            lambda: (
                (r := run_of(demo, "upstream-switch-back", service="chat"))
                and r["status"] != "running"
                and r
            ),
            60,
            "upstream-switch-back to end",
        )
        assert back["status"] == "succeeded", back
        assert back["started_by"] == "daemon" and back["incident_id"] == recovered["id"]
        assert served_by(demo) == "hosted"  # through nginx, TLS, its name and key
        # The hosted API's busy probes leave the rule's 1-minute window before it resolves.
        for fault in (down, busy, recovered):
            resolved = demo.wait(
                lambda f=fault: next(
                    (
                        i
                        for i in demo.incidents()
                        if i["id"] == f["id"] and i["status"] == "resolved"
                    ),
                    None,
                ),
                90,
                f"incident {fault['id']} ({fault['title']}) to resolve",
            )
            assert resolved["resolved_by"]
        assert demo.wait(lambda: posted(demo, "[RESOLVED CRITICAL] hosted", "edit"), 30, "edit")

        code, stopping = demo.interrupt()
        assert code == 0, demo.tail()
        assert stopping < STOP_WITHIN
        assert left_behind(demo) == ([], [])
        assert not (demo_dir / "demo.json").exists()
    finally:
        demo.kill()


BUSY_TO_FAILOVER = 20.0  # the issue's promise: a busy hosted API is failed over this soon
MIN_PROBE_GAP = 2.0  # a provider sees at most one probe per 2 s from us


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@pytest.mark.timeout(240)
def test_a_busy_hosted_api_is_failed_over_within_20s_by_the_default_rule_and_probes(
    demo_dir: Path,
) -> None:
    """The demo probes the hosted API at its default interval and keeps the built-in rule's
    window, threshold and `for`: its 503s open the incident and start upstream-failover on
    the daemon's own within 20 s, while the API sees under one probe per 2 s."""
    reason = nginx.missing_requirement()
    if reason:
        service_missing(reason)
    demo = RunningDemo(demo_dir, f"127.0.0.1:{free_port()}", [sys.executable], dict(os.environ))
    try:
        demo.start()
        config = load_config(demo.info["config"])
        (hosted,) = [e for e in config.endpoints if e.role == "hosted"]
        written = yaml.safe_load(Path(demo.info["config"]).read_text())["endpoints"][0]
        assert written["role"] == "hosted" and "interval" not in written  # the default
        assert hosted.interval == HOSTED_INTERVAL >= MIN_PROBE_GAP
        (rule,) = [r for r in active_rules(config.rules) if r.name == "upstream-overloaded"]
        assert isinstance(rule, ErrorRatioRule)
        default = builtin.UPSTREAM_OVERLOADED
        assert (rule.window, rule.above, rule.for_) == (default.window, default.above, default.for_)
        stats, mode = (f"{hosted.url}".rstrip("/") + path for path in ("/_rig/stats", "/_rig/mode"))
        # The stand-in serves TLS with the demo's own CA, which the config trusts.
        trusted = ssl.create_default_context(cafile=str(config.path(hosted.ca_file)))

        def probes() -> int:
            """The daemon's probes the stand-in answered (the runbook's checks ask `/`)."""
            by_path = httpx.get(stats, verify=trusted).json()["by_path"]
            return by_path.get("/v1/models", 0) + by_path.get("/v1/chat/completions", 0)

        # A daemon that has been up a while: the rule's window is full of good probes.
        time.sleep(rule.window)
        before = probes()
        # The moment the stand-in turns busy, seen from outside: the `demo inject` command
        # itself can take seconds to start on a loaded machine.
        inject = subprocess.Popen(
            demo.command("demo", "inject", "upstream-busy", "--dir", str(demo.directory)),
            stdout=subprocess.PIPE,
            text=True,
            env=demo.env,
        )
        deadline = time.monotonic() + 60
        while not httpx.get(mode, verify=trusted).json()["rules"]:  # within ~0.05 s
            assert time.monotonic() < deadline, "the hosted API did not turn busy"
            time.sleep(0.05)
        began = time.time()
        assert "503" in inject.communicate(timeout=60)[0]

        run = demo.wait(
            lambda: run_of(demo, "upstream-failover", service="chat"), 60, "upstream-failover"
        )
        busy = incident(demo, "upstream-overloaded", endpoint="hosted")
        assert busy is not None and run["started_by"] == "daemon"
        assert run["incident_id"] == busy["id"]
        shown = demo.json("incidents", "show", str(busy["id"]))
        opened = next(e for e in shown["events"] if e["kind"] == "opened")
        fired, started = _at(opened["at"]) - began, _at(run["started_at"]) - began
        sent, elapsed = probes() - before, time.time() - began
        print(
            f"hosted API busy -> incident opened {fired:.1f}s, upstream-failover started "
            f"{started:.1f}s; {sent} probes to it in {elapsed:.1f}s"
        )
        assert fired <= BUSY_TO_FAILOVER and started <= BUSY_TO_FAILOVER
        assert sent <= elapsed / MIN_PROBE_GAP + 1
    finally:
        demo.kill()


def _unprivileged() -> tuple[list[str], dict[str, str]] | None:
    """How to run this checkout's CLI as `nobody` (root only), or None when that user
    cannot reach this Python or checkout (e.g. a virtualenv under /root)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    site = next(p for p in sys.path if p.endswith("site-packages"))
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    prefix = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
        python,
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
        "PYTHONPATH": f"{REPO}:{site}",
    }
    probe = subprocess.run(
        [*prefix, "-c", "import reliability.cli, paramiko"],
        capture_output=True,
        env=env,
        timeout=60,
        cwd="/",
    )
    return (prefix, env) if probe.returncode == 0 else None


@pytest.mark.timeout(300)
def test_without_root_or_nginx_the_demo_pages_and_only_plans_the_switch(demo_dir: Path) -> None:
    """As `nobody` where this machine lets it run this checkout (as root), else as the
    current user; with --no-nginx, as on a machine without nginx."""
    as_nobody = _unprivileged()
    prefix, env = as_nobody or ([sys.executable], dict(os.environ))
    if as_nobody:
        shutil.chown(demo_dir, pwd.getpwnam("nobody").pw_uid)
    demo = RunningDemo(demo_dir, f"127.0.0.1:{free_port()}", prefix, env)
    try:
        demo.start("--no-nginx")
        assert demo.info["nginx"] is False
        out = demo.output.read_text()
        assert "no load balancer runs (--no-nginx given)" in out
        assert "reliability runbook plan node-failover" in out
        if as_nobody:
            assert (demo_dir / "reliability.db").stat().st_uid == pwd.getpwnam("nobody").pw_uid

        said = demo.inject("node-down")
        assert "gpu-1" in said and "runbook plan node-failover" in said
        bad = demo.cli("demo", "inject", "gpu-hot", "lb-1", "--dir", str(demo_dir), check=False)
        assert bad.returncode == 2 and "no GPUs" in bad.stderr

        down = demo.wait(lambda: incident(demo, "node-down", node="gpu-1"), 60, "node-down")
        message = demo.wait(lambda: posted(demo, "gpu-1: node down"), 30, "Slack message")
        assert (
            message["suggested_fix"] == "reliability runbook run node-failover --param node=gpu-1"
        )
        plan = demo.json("runbook", "plan", "node-failover", "--param", "node=gpu-1")
        assert plan  # what a run would do, command by command
        time.sleep(2)  # an automatic run would have started by now
        assert demo.runs() == []

        demo.inject("clear")
        demo.wait(
            lambda: next(
                (
                    i
                    for i in demo.incidents()
                    if i["id"] == down["id"] and i["status"] == "resolved"
                ),
                None,
            ),
            60,
            "node-down to resolve",
        )
        code, stopping = demo.interrupt()
        assert code == 0, demo.tail()
        assert stopping < STOP_WITHIN
        assert left_behind(demo) == ([], [])
    finally:
        demo.kill()


@pytest.mark.parametrize("after", [0.2, 1.0, 2.5])
def test_ctrl_c_while_the_demo_starts_stops_it_quietly(demo_dir: Path, after: float) -> None:
    """Wherever start-up is (loading modules, starting the fleet, starting the daemon),
    one Ctrl-C stops it: no traceback, nothing left for a second Ctrl-C."""
    demo = RunningDemo(demo_dir, f"127.0.0.1:{free_port()}", [sys.executable], dict(os.environ))
    with demo.output.open("wb") as out:
        demo.proc = subprocess.Popen(
            demo.command("demo", "--dir", str(demo_dir), "--listen", demo.listen, "--no-nginx"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=demo.env,
        )
    try:
        time.sleep(after)
        code, _ = demo.interrupt()
    finally:
        demo.kill()
    # 130, or ended by the SIGINT itself (what a shell also shows as 130).
    assert code in (0, 130, -signal.SIGINT), demo.tail()
    assert "Traceback" not in demo.output.read_text(), demo.tail()
