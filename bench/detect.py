"""Benchmark node-down detection: network cuts against sshd kills, with the real daemon.

    .venv/bin/python bench/detect.py [--cuts 20] [--kills 10] [--seconds 900]

The rig of the failover tests (real sshd on loopback addresses, inference stand-ins in
the docker stand-in, real nginx over pool blue of service chat; `spare-1` a warm standby
already running the known-good image) and `python -m reliability daemon` in its own
process with the built-in rules (only node-down's `resolve_after` shortened to 1s, so a
round can follow the last one), `node-failover` automatic.

- Cuts: at a random phase of the probe's second, one serving node of pool blue (gpu-1
  and gpu-2 in turn) is cut with iptables (every packet to its address dropped, as the
  tests do). Measured from the moment before the rule goes in: when the node-down
  incident is in the database (polled every 20 ms) and when nginx first answers from
  the standby (a request every 50 ms). Then the node comes back, the upstream file and
  the fleet table are put back as they were, and node-down resolves before the next.
- sshd kills: sshd of gpu-1 (which keeps serving) is killed with SIGKILL and watched for
  `--hold` seconds; every runbook run and node-down incident then is counted: a
  failover of a node that serves is the failure this bench exists to catch.

Targets: node-down incident p95 <= 2.5 s after a cut; 0 failovers on sshd kills. Needs
root (iptables, the login user); all traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from reliability import db
from reliability.cli_support import load_config
from reliability.fleet import service as fleet_service
from reliability.images import service as images
from reliability.runbooks.models import RunStatus
from reliability.testing.daemon import DaemonProcess, Watch, node_config
from reliability.testing.fixtures import RIG_LB_IMAGE, RIG_LB_NODES, RIG_LB_POOLS
from reliability.testing.fleet import Fleet, missing_requirement
from reliability.testing.loopback import free_port
from reliability.testing.nginx import NginxBalancer
from reliability.testing.waiting import wait_for

TARGET_P95_S = 2.5
CUT_NODES = ("gpu-1", "gpu-2")
KILL_NODE = "gpu-1"
STANDBY = "spare-1"
INCIDENT_POLL_S = 0.02
SERVING_POLL_S = 0.05
ROUND_TIMEOUT_S = 90.0
RESOLVE_AFTER = "1s"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def serving_from(balancer: NginxBalancer, address: str, client: httpx.Client) -> bool:
    try:
        r = client.get(balancer.url + "v1/models", timeout=1.0)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.headers.get("x-upstream-addr", "").startswith(address)


def put_back(balancer: NginxBalancer, config: Path, node: str, upstream: bytes) -> None:
    """The fleet as before the round's failover: the node serving blue and in the
    upstream, the standby warm and out of it."""
    balancer.upstream_file.write_bytes(upstream)
    balancer.reload()
    url = load_config(config).database_url()
    now = datetime.now(UTC)
    with db.session_factory(db.make_engine(url)).begin() as s:
        fleet_service.set_state(
            s, node=node, state="serving", service="chat", pool="blue", reason="bench",
            by="bench", at=now,
        )  # fmt: skip
        fleet_service.set_state(
            s, node=STANDBY, state="warm-standby", service="chat", pool=None,
            reason="bench: warm again", by="bench", at=now,
        )  # fmt: skip


def prepare(balancer: NginxBalancer, config: Path) -> None:
    """The known-good image, running on the standby too, which the fleet calls warm."""
    fleet = balancer.fleet
    good = f"vllm/vllm-openai@{fleet.state.publish_image(RIG_LB_IMAGE)}"
    fleet.run_container(STANDBY, good, pool="blue")
    loaded = load_config(config)
    now = datetime.now(UTC)
    with db.session_factory(db.make_engine(loaded.database_url())).begin() as s:
        images.mark_good(s, service="chat", image=good, by="bench", at=now)
        fleet_service.seed(s, config=loaded, now=now)
        fleet_service.set_state(
            s, node=STANDBY, state="warm-standby", service="chat", pool=None,
            reason="bench: warm", by="bench", at=now,
        )  # fmt: skip


def cut_round(
    balancer: NginxBalancer, config: Path, watch: Watch, node: str, client: httpx.Client
) -> tuple[float, float, str]:
    fleet = balancer.fleet
    upstream = balancer.upstream_file.read_bytes()
    runs_before = len(watch.runs())
    time.sleep(random.random())  # a random phase of the probe's second
    cut_at = time.monotonic()
    fleet.cut(node)
    try:
        wait_for(
            f"node-down of {node}",
            lambda: ("node-down", node) in watch.open_incidents(),
            ROUND_TIMEOUT_S,
            INCIDENT_POLL_S,
        )
        incident_s = time.monotonic() - cut_at
        spare = fleet.node(STANDBY).address
        wait_for(
            f"{STANDBY} serving", lambda: serving_from(balancer, spare, client), ROUND_TIMEOUT_S,
            SERVING_POLL_S,
        )  # fmt: skip
        serving_s = time.monotonic() - cut_at
        run = wait_for(
            "the failover run ended",
            lambda: next(
                (r for r in watch.runs()[runs_before:] if r.status != RunStatus.running), None
            ),
            ROUND_TIMEOUT_S,
        )
    finally:
        fleet.restore(node)
    put_back(balancer, config, node, upstream)
    wait_for(
        f"node-down of {node} resolved",
        lambda: ("node-down", node) not in watch.open_incidents(),
        ROUND_TIMEOUT_S,
    )
    return incident_s, serving_s, run.status.value


def kill_round(balancer: NginxBalancer, watch: Watch, hold: float) -> tuple[int, int]:
    """(runbook runs, node-down incidents) while sshd of the node is dead."""
    runs_before = len(watch.runs())
    balancer.fleet.kill_sshd(KILL_NODE)
    node_down = 0
    try:
        end = time.monotonic() + hold
        while time.monotonic() < end:
            node_down = max(node_down, int(("node-down", KILL_NODE) in watch.open_incidents()))
            time.sleep(0.1)
    finally:
        balancer.fleet.start_sshd(KILL_NODE)
    time.sleep(1.0)  # one probe round and collection with sshd back
    return len(watch.runs()) - runs_before, node_down


@dataclass
class Results:
    incident: list[float] = field(default_factory=list)
    serving: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    kills: int = 0
    failovers: int = 0
    node_downs: int = 0


def run_rounds(balancer: NginxBalancer, directory: Path, args: argparse.Namespace) -> Results:
    deadline = time.monotonic() + args.seconds
    out = Results()
    port = free_port()
    overrides = {"node-down": {"resolve_after": RESOLVE_AFTER}}
    config = node_config(balancer, directory, overrides=overrides, port=port)
    prepare(balancer, config)
    watch = Watch(config)
    daemon = DaemonProcess(config)
    limits = httpx.Limits(max_keepalive_connections=0)
    try:
        with daemon, httpx.Client(limits=limits) as client:
            daemon.wait_probing(port, list(RIG_LB_POOLS))
            for i in range(args.cuts):
                if time.monotonic() > deadline:
                    break
                node = CUT_NODES[i % len(CUT_NODES)]
                incident, serving, status = cut_round(balancer, config, watch, node, client)
                out.incident.append(incident)
                out.serving.append(serving)
                out.statuses.append(status)
                print(
                    f"cut {i + 1} {node}: incident {incident:.2f}s, standby {serving:.2f}s",
                    flush=True,
                )
            for _ in range(args.kills):
                if time.monotonic() > deadline:
                    break
                runs, down = kill_round(balancer, watch, args.hold)
                out.kills += 1
                out.failovers += runs
                out.node_downs += down
    except Exception:
        print(daemon.stop()[-4000:], file=sys.stderr)
        raise
    finally:
        watch.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cuts", type=int, default=20, help="network cuts (default 20)")
    parser.add_argument("--kills", type=int, default=10, help="sshd kills (default 10)")
    parser.add_argument("--hold", type=float, default=4.0, help="seconds each kill lasts")
    parser.add_argument("--seconds", type=float, default=900.0, help="stop starting rounds")
    args = parser.parse_args()
    reason = missing_requirement() or NginxBalancer.missing_requirement()
    if reason or os.geteuid() != 0:
        print(f"bench/detect.py needs root, sshd and nginx: {reason or 'not root'}")
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp,
        Fleet(RIG_LB_NODES, pools=RIG_LB_POOLS) as fleet,
    ):
        for name in RIG_LB_POOLS:
            fleet.run_container(name, RIG_LB_IMAGE)
        blue = [f"{fleet.node(n).address}:8000" for n, p in RIG_LB_POOLS.items() if p == "blue"]
        with NginxBalancer(fleet, "lb-1", service="chat", members=blue) as balancer:
            results = run_rounds(balancer, Path(tmp), args)
    report(args, results)
    met = results.incident and percentile(results.incident, 0.95) <= TARGET_P95_S
    return 0 if met and results.failovers == 0 else 1


def report(args: argparse.Namespace, r: Results) -> None:
    print(f"\nbench/detect.py on {platform.node()} ({os.cpu_count()} CPUs), {time.ctime()}")
    print(f"{len(r.incident)} of {args.cuts} cuts, {r.kills} of {args.kills} sshd kills\n")
    print(f"{'measure':<44}{'p50':>8}{'p95':>8}{'max':>8}  target")
    for name, values, target in (
        ("cut -> node-down incident (s)", r.incident, f"p95 <= {TARGET_P95_S:g} s"),
        ("cut -> warm standby serving via nginx (s)", r.serving, ""),
    ):
        if values:
            p50, p95 = statistics.median(values), percentile(values, 0.95)
            print(f"{name:<44}{p50:>8.2f}{p95:>8.2f}{max(values):>8.2f}  {target}")
    ok = r.statuses.count("succeeded")
    print(f"{'failover runs succeeded':<44}{ok:>8} of {len(r.statuses)}")
    print(f"{'sshd kills -> failovers':<44}{r.failovers:>8}{'':>16}  0")
    print(f"{'sshd kills -> node-down incidents':<44}{r.node_downs:>8}{'':>16}  0")


if __name__ == "__main__":
    sys.exit(main())
