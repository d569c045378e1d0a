"""`reliability demo`: a small GPU fleet on loopback, and the daemon watching it.

No GPU, no root, no Slack workspace, no system package: every node is an SSH server of this
process (paramiko) on its own loopback address, with simulated GPUs (nvidia-smi and dmesg
stand-ins) and a serving container started through the docker stand-in. A hosted-API
stand-in, served over TLS by a CA of the demo's own and strict about its name and key, can
turn busy; a Slack stand-in shows what on-call would read. Where nginx is installed it
fronts the service on a node of its own as deploy/nginx/ ships it (the hosted API or the
pool, by a route file) and the runbooks switch it for real; where it is not, the demo says
so and the switch runbooks are only planned.
Then the daemon runs in the foreground, on SQLite, with a generated config, until Ctrl-C,
which stops everything the demo started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from reliability import db
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.demo import control
from reliability.demo.config import (
    AUTO_RUNBOOKS,
    CHANNEL,
    CONTAINER,
    LB_NODE,
    NODE_POOLS,
    NODES,
    SERVICE,
    STANDBY,
    Layout,
    write_config,
    write_runbooks,
)
from reliability.demo.faults import Faults, Images
from reliability.demo.slack_echo import SlackEcho
from reliability.testing import nginx, tls
from reliability.testing.demofleet import DemoFleet
from reliability.testing.fleet import FleetError
from reliability.testing.inference import InferenceSpec
from reliability.testing.inference_group import InferenceHandle, ServerGroup
from reliability.testing.loopback import BlockError
from reliability.testing.slack import SlackStandIn

DEFAULT_DIR = Path("var/demo")
DEFAULT_LISTEN = "127.0.0.1:9464"
GOOD_IMAGE = "registry.demo.local/serving/vllm:v0.6.3"
BAD_IMAGE = "registry.demo.local/serving/vllm:v0.6.4-rc1"
HOSTED_IMAGE = "api.hosted.example/deepseek-v3"
HOSTED_NAME = "localhost"  # the hosted stand-in's certificate name: one that resolves here
LB_PORT = 8080
MAX_RIG_BASE = 60
SERVING_PORT = 8000
# What an earlier demo left in its folder, removed before a new one starts.
STALE = ("reliability.db", "reliability.db-wal", "reliability.db-shm", "slack.log", "daemon.log")
# The daemon's log lines the terminal shows (the rest, e.g. each failed SSH connect to a
# node that is down, goes to daemon.log only, beside the config).
SHOWN_LOGGERS = ("reliability.daemon", "reliability.detect", "reliability.runbooks")
CHATTY_LOGGERS = ("httpx", "apscheduler", "alembic", "paramiko")
# paramiko's transport thread logs a traceback at ERROR for every connection a node resets
# (a node cut, the fleet stopping under a Ctrl-C); the daemon reports the failed collection
# itself, so those go to daemon.log only.
QUIET_ON_TERMINAL = ("paramiko",)


class DemoError(RuntimeError):
    """The demo cannot start here (another one runs, the port is taken); says what to do."""


def shown(path: Path) -> str:
    """`path` as the user should type it: as they gave the demo's folder (relative to where
    they ran it, or absolute)."""
    return str(path)


def _check_free(directory: Path, listen: str) -> None:
    with contextlib.suppress(control.NotRunning):
        info = control.read_state(directory)
        raise DemoError(
            f"a demo already runs in {shown(directory)} (pid {info['pid']}); stop it with "
            "Ctrl-C, or start another with --dir and --listen"
        )
    host, _, port = listen.rpartition(":")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), int(port)))
        except (OSError, ValueError) as exc:
            raise DemoError(
                f"cannot listen on {listen} ({exc}): another demo or daemon? "
                "Pass --listen 127.0.0.1:PORT"
            ) from None


def _clean(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in (*STALE, control.STATE_FILE, control.SOCKET_FILE):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    shutil.rmtree(directory / "runbooks", ignore_errors=True)
    for stale in directory.glob("relrig-*"):  # a fleet of a demo that was killed
        shutil.rmtree(stale, ignore_errors=True)


def _log_to(directory: Path) -> None:
    """Everything at INFO to daemon.log; to the terminal only detection, runbooks, the
    daemon's start and stop, and errors, so that the Slack messages stand out."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(fmt)
    terminal.addFilter(
        lambda r: (
            r.name.startswith(SHOWN_LOGGERS)
            or (r.levelno >= logging.ERROR and not r.name.startswith(QUIET_ON_TERMINAL))
        )
    )
    file = logging.FileHandler(directory / "daemon.log", encoding="utf-8")
    file.setFormatter(fmt)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(terminal)
    root.addHandler(file)
    root.setLevel(logging.INFO)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM while starting up unwinds like Ctrl-C (the daemon handles both later)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _mark_good(config: Config, image: str) -> None:
    from reliability.images import service as images

    engine = db.make_engine(config.database_url())
    try:
        with db.session_factory(engine)() as s, s.begin():
            images.mark_good(
                s,
                service=SERVICE,
                image=image,
                by="reliability demo",
                at=datetime.now(UTC),
                reason="the image every node of the demo starts with",
            )
    finally:
        engine.dispose()


def run(directory: Path, listen: str, *, use_nginx: bool = True, console: Console) -> int:
    """Start everything, run the daemon until Ctrl-C, stop everything; the exit code."""
    from reliability import daemon

    began = time.monotonic()
    _check_free(directory, listen)
    _clean(directory)
    _log_to(directory)
    with contextlib.ExitStack() as stack, _stop_on_sigterm():
        slack = stack.enter_context(SlackStandIn())
        stack.enter_context(SlackEcho(slack, directory / "slack.log", console, CHANNEL))
        # The container engine's Unix socket lives in the fleet's folder (108 bytes at most).
        rig_base = directory.resolve() if len(str(directory.resolve())) <= MAX_RIG_BASE else None
        fleet = DemoFleet(NODES, pools=NODE_POOLS, gpus={LB_NODE: 0}, base_dir=rig_base)
        try:
            stack.enter_context(fleet)
        except (BlockError, FleetError, OSError) as exc:
            raise DemoError(f"the demo fleet cannot start here: {exc}") from None
        ca = tls.make_ca(directory / "tls", name="reliability demo CA")
        identity = tls.issue(ca, HOSTED_NAME)
        hosted_key = "sk-demo-" + secrets.token_urlsafe(24)
        hosted = stack.enter_context(ServerGroup()).start(
            InferenceSpec(pool="hosted", image=HOSTED_IMAGE, tls=identity, api_key=hosted_key)
        )
        digest = fleet.state.publish_image(GOOD_IMAGE)
        images = Images(GOOD_IMAGE, f"{GOOD_IMAGE.rsplit(':', 1)[0]}@{digest}", BAD_IMAGE)
        for node in NODE_POOLS:
            fleet.run_container(node, GOOD_IMAGE, container=CONTAINER)
        blue = [
            f"{fleet.node(n).address}:{SERVING_PORT}" for n, p in NODE_POOLS.items() if p == "blue"
        ]
        without = "--no-nginx given" if not use_nginx else nginx.missing_requirement()
        route_to = nginx.HostedApi(
            f"{hosted.host}:{hosted.port}", HOSTED_NAME, hosted_key, ca.cert_file
        )
        balancer = nginx.NginxBalancer(
            fleet, LB_NODE, service=SERVICE, members=blue, port=LB_PORT, hosted=route_to
        )
        if without is None:
            try:
                stack.enter_context(balancer)
            except nginx.NginxError as exc:
                without = f"nginx did not start: {str(exc).splitlines()[0]}"
        layout = Layout(
            ssh=fleet.config_sections()["ssh"],
            nodes=fleet.config_sections()["nodes"],
            hosted_url=hosted.url,
            hosted_key=hosted_key,
            hosted_ca=ca.cert_file.resolve(),
            load_balancer=balancer.lb_config(),
            nginx_runs=without is None,
            image=images.good_pinned,
            slack_token=slack.token,
            slack_api_url=slack.api_url,
            node_urls={n: fleet.inference_url(n) for n in NODE_POOLS},
        )
        write_runbooks(directory)
        path = write_config(directory, layout, listen)
        config = load_config(path)
        db.upgrade(config.database_url())
        _mark_good(config, images.good_pinned)
        database = db.LazyEngine(config.database_url())
        stack.callback(database.dispose)
        faults = Faults(
            fleet,
            hosted,
            images,
            database,
            nginx_runs=without is None,
            config_hint=f"-c {shown(path)}",
        )

        def apply(fault: str, target: str | None) -> str:
            message = faults.apply(fault, target)
            what = f"{fault} {target}" if target else fault
            console.print(f"[bold yellow]inject {what}:[/] {escape(message)}")
            return message

        server = stack.enter_context(control.ControlServer(directory, apply))
        info = _state(directory, path, fleet, hosted, slack.url, listen, server.path, without)
        control.write_state(directory, info)
        stack.callback(_remove, directory / control.STATE_FILE)
        built = daemon.build(config)
        _banner(console, directory, path, fleet, info, without, time.monotonic() - began)
        code = daemon.serve(built)
        # A second Ctrl-C while the demo tears down would leave half of it running.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        console.print("[bold]reliability demo[/]: stopping the fleet, nginx and the stand-ins")
    console.print("[bold]reliability demo[/]: stopped; nothing left running")
    return code


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _state(
    directory: Path,
    config: Path,
    fleet: DemoFleet,
    hosted: InferenceHandle,
    slack_url: str,
    listen: str,
    socket_path: Path,
    without_nginx: str | None,
) -> dict[str, Any]:
    """What `inject` and tests read in demo.json."""
    nodes = {
        n.name: {
            "address": n.address,
            "ssh_port": n.port,
            "pool": n.pool,
            "role": "standby" if n.name == STANDBY else "lb" if n.name == LB_NODE else "serving",
        }
        for n in fleet.nodes
    }
    lb = fleet.node(LB_NODE).address
    ports = [f"{n.address}:{n.port}" for n in fleet.nodes]
    ports += [f"{fleet.node(n).address}:{SERVING_PORT}" for n in (*NODE_POOLS, STANDBY)]
    ports += [
        f"{lb}:{LB_PORT}",
        f"{hosted.host}:{hosted.port}",
        slack_url.split("//")[1].rstrip("/"),
    ]
    ports.append(listen)
    return {
        "pid": os.getpid(),
        "config": str(config.resolve()),
        "dir": str(directory.resolve()),
        "state_dir": str(fleet.state_dir),
        "control": str(socket_path),
        "nodes": nodes,
        "hosted_url": hosted.url,
        "lb_url": None if without_nginx else f"http://{lb}:{LB_PORT}/",
        "nginx": without_nginx is None,
        "without_nginx": without_nginx,
        "metrics_url": f"http://{listen}/metrics",
        "slack_log": str((directory / "slack.log").resolve()),
        "ports": ports,
    }


def _banner(
    console: Console,
    directory: Path,
    config: Path,
    fleet: DemoFleet,
    info: dict[str, Any],
    without_nginx: str | None,
    took: float,
) -> None:
    c = f"-c {shown(config)}"
    d = "" if directory.resolve() == DEFAULT_DIR.resolve() else f" --dir {shown(directory)}"
    nodes = "  ".join(
        f"{n.name} {n.address} ({n.pool or ('standby' if n.name == STANDBY else 'nginx')})"
        for n in fleet.nodes
    )
    if without_nginx is None:
        lb = (
            f"nginx on {LB_NODE} at {info['lb_url']}: /v1/ of service {SERVICE} goes to the "
            "hosted API until upstream-failover swaps its route file to pool blue"
        )
        runbooks = f"{' and '.join(AUTO_RUNBOOKS)} run on their own when their incident opens"
    else:
        lb = f"no load balancer runs ({escape(without_nginx)})"
        runbooks = (
            "switch runbooks are planned, not run: incidents show the command; try "
            f"`reliability runbook plan node-failover --param node=gpu-1 {c}`"
        )
    lines = [
        f"[bold]reliability demo[/] is up ({took:.1f}s): {len(fleet.nodes)} nodes on loopback, "
        "each an SSH server of this process (paramiko, strict host keys; no sshd, no root)",
        f"  nodes     {nodes}",
        "  GPUs      8 simulated H100s per GPU node; containers through the docker stand-in",
        f"  balancer  {lb}",
        f"  hosted    OpenAI-compatible hosted API stand-in at {info['hosted_url']} (TLS by "
        f"the demo's CA {shown(directory / 'tls' / 'ca.pem')}; name and API key checked)",
        f"  metrics   {info['metrics_url']}",
        f"  slack     messages print here and go to {shown(directory / 'slack.log')}",
        f"  log       {shown(directory / 'daemon.log')} (here: detection, runbooks, errors)",
        f"  config    {shown(config)}: rules shortened to seconds (see its comments)",
        f"  runbooks  {shown(directory / 'runbooks')} (soaks shortened to seconds); {runbooks}",
        "[bold]Try[/], in another terminal:",
        f"  reliability demo inject node-down{d}       # a blue node stops answering",
        f"  reliability demo inject upstream-busy{d}   # the hosted API answers 503",
        f"  reliability demo inject gpu-xid79 gpu-2{d} # XID 79 in a node's kernel log",
        f"  reliability demo inject gpu-hot gpu-3{d}   # a GPU at 92 C",
        f"  reliability demo inject bad-image{d}       # the active pool gets a broken build",
        f"  reliability demo inject clear{d}           # every fault undone",
    ]
    lines += [
        f"  reliability status --watch {c}",
        f"  reliability incidents list {c}",
        f"  reliability runbook history {c}",
        f"  reliability dashboards build {c} --out {shown(directory / 'dashboards')}",
        "Ctrl-C stops everything.",
    ]
    for line in lines:
        console.print(line)
    sys.stdout.flush()
