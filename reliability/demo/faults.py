"""The faults `reliability demo inject` can cause, applied inside the running demo.

Each fault changes what the demo's stand-ins answer, never the daemon: the daemon finds
out the way it would in production (SSH refused, nvidia-smi and dmesg output, probe
answers), opens the incident, pages the Slack stand-in and, where the config allows it,
runs the runbook on its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from reliability import db
from reliability.demo.config import (
    ACTIVE_POOL,
    CONTAINER,
    LB_NODE,
    NODE_POOLS,
    POOLS,
    RECOVERY_SOAK,
    SERVICE,
    STANDBY,
)
from reliability.demo.control import FAULTS, NODE_FAULTS, FaultError
from reliability.runbooks import service as runs
from reliability.testing import docker_cli
from reliability.testing.demofleet import DemoFleet
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.inference_group import InferenceHandle

XID_GPU = 3  # the GPU slot the XID names
HOT_GPU = 5
HOT_CELSIUS = 92


@dataclass(frozen=True)
class Images:
    """The good build every node starts with, and the broken one `bad-image` deploys."""

    good: str  # a tag
    good_pinned: str  # the same build by digest: the service's known-good image
    bad: str


class Faults:
    """Applies one fault at a time to the demo's fleet and hosted API; `apply` says what
    was done and what to watch for."""

    def __init__(
        self,
        fleet: DemoFleet,
        hosted: InferenceHandle,
        images: Images,
        database: db.LazyEngine,
        *,
        nginx_runs: bool,
        config_hint: str,
    ) -> None:
        self.fleet, self.hosted, self.images = fleet, hosted, images
        self.database = database
        self.nginx_runs = nginx_runs
        self.config_hint = config_hint  # "-c PATH" as the user should type it
        self._lock = threading.Lock()

    def apply(self, fault: str, target: str | None) -> str:
        if fault not in FAULTS:
            raise FaultError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if target is not None and fault not in NODE_FAULTS:
            raise FaultError(f"{fault} takes no target")
        with self._lock:
            if fault == "upstream-busy":
                return self._upstream_busy()
            if fault == "bad-image":
                return self._bad_image()
            if fault == "clear":
                return self._clear()
            node = self._node(fault, target)
            if fault == "node-down":
                return self._node_down(node)
            if fault == "gpu-xid79":
                return self._xid(node)
            return self._hot(node)

    # --- targets ---------------------------------------------------------------------------

    def _node(self, fault: str, target: str | None) -> str:
        allowed = [*NODE_POOLS, STANDBY]
        if target is None:
            pool = self.active_pool()
            live = [n for n, p in NODE_POOLS.items() if p == pool and not self.fleet.is_cut(n)]
            return (live or [n for n, p in NODE_POOLS.items() if p == pool])[0]
        if target not in allowed:
            why = "the load balancer's node has no GPUs" if target == LB_NODE else "unknown node"
            raise FaultError(f"{fault} {target}: {why}; choose one of {', '.join(allowed)}")
        return target

    def active_pool(self) -> str:
        """The pool the service serves from now (a blue-green run may have switched it)."""
        try:
            with self.database.session() as s:
                return runs.active_pools(s).get(SERVICE, ACTIVE_POOL)
        except db.DatabaseError:
            return ACTIVE_POOL

    def _auto(self, runbook: str, command: str) -> str:
        if self.nginx_runs:
            return f"then the daemon runs {runbook} on its own (its notes go to the Slack thread)"
        return (
            f"the incident suggests `{command}`; nginx is not installed here, so nothing runs "
            f"on its own: see `{command.replace(' run ', ' plan ', 1)} {self.config_hint}`"
        )

    # --- faults ----------------------------------------------------------------------------

    def _upstream_busy(self) -> str:
        self.hosted.set_mode("overloaded")
        command = f"reliability runbook run upstream-failover --param service={SERVICE}"
        auto = self._auto("upstream-failover", command)
        return (
            f'The hosted API ({self.hosted.url}) answers 503 "server busy" to everything. Within '
            f"20s: incident upstream-overloaded and its Slack message; {auto}, moving "
            f"/v1/ traffic through nginx to pool {ACTIVE_POOL}. After `reliability demo "
            f"inject clear`, once the hosted API's completions stay good for "
            f"{RECOVERY_SOAK}: incident upstream-recovered, and upstream-switch-back moves "
            "the traffic back."
        )

    def _node_down(self, node: str) -> str:
        if self.fleet.is_cut(node):
            return f"{node} is already down; `reliability demo inject clear` brings it back."
        self.fleet.cut(node)
        address = self.fleet.node(node).address
        auto = self._auto(
            "node-failover", f"reliability runbook run node-failover --param node={node}"
        )
        return (
            f"{node} ({address}) stops answering: SSH refused, its containers' ports closed. "
            f"In about 2s: incident node-down and its Slack message; {auto}, moving its work "
            f"to {STANDBY}."
        )

    def _xid(self, node: str) -> str:
        self.fleet.state.add_xid(node, XID_GPU, 79, pid=4242, process="python3")
        auto = self._auto(
            "node-failover", f"reliability runbook run node-failover --param node={node}"
        )
        return (
            f"XID 79 (GPU has fallen off the bus) logged for GPU {XID_GPU} in {node}'s kernel "
            f"log. In about 5s: incident gpu-xid-critical and its Slack message; {auto}. "
            "The XID counts for a minute, then the incident resolves."
        )

    def _hot(self, node: str) -> str:
        self.fleet.state.set_gpu(
            node,
            HOT_GPU,
            {
                "temperature.gpu": HOT_CELSIUS,
                "temperature.memory": HOT_CELSIUS + 4,
                "clocks_event_reasons.hw_thermal_slowdown": True,
                "clocks_event_reasons.sw_thermal_slowdown": True,
                "clocks_event_reasons.gpu_idle": False,
                "clocks.current.sm": 1110,
                "clocks.current.graphics": 1110,
                "utilization.gpu": 97,
                "power.draw": 655.5,
            },
        )
        return (
            f"GPU {HOT_GPU} of {node} runs at {HOT_CELSIUS} C with thermal slowdown. In about "
            "10s: incident gpu-temperature-slowdown and its Slack message (no runbook: a "
            "person checks the cooling). `reliability demo inject clear` cools it."
        )

    def _bad_image(self) -> str:
        pool = self.active_pool()
        fleet = self.fleet
        fleet.state.publish_image(self.images.bad)
        digest = fleet.state.load_image(next(iter(NODE_POOLS)), self.images.bad)
        fleet.state.break_image(digest)
        nodes = self._serving(pool)
        if not nodes:
            raise FaultError(f"no node serves pool {pool} now")
        for node in nodes:
            self._redeploy(node, self.images.bad, pool)
        other = next(p for p in POOLS if p != pool)
        command = (
            f"reliability runbook run blue-green --param service={SERVICE} --param pool={other}"
        )
        if self.nginx_runs:
            then = f"nothing runs on its own: switch with `{command} {self.config_hint} --yes`"
        else:
            plan = command.replace(" run ", " plan ", 1)
            then = f"nginx is not installed here: see `{plan} {self.config_hint}`"
        return (
            f"Pool {pool} ({', '.join(nodes)}) now runs {self.images.bad}, a build whose "
            "completions fail with HTTP 500 while /health passes. In about 25s: incident "
            f"local-pool-errors and its Slack message, suggesting blue-green to pool {other}; "
            f"{then}."
        )

    def _clear(self) -> str:
        done = []
        if self.hosted.controls.rules():
            self.hosted.set_mode("ok")
            done.append("The hosted API answers again")
        for node in [n for n in self.fleet.names if self.fleet.is_cut(n)]:
            self.fleet.restore(node)
            done.append(f"{node} answers again (SSH and its containers)")
        for node in self.fleet.names:
            if self.fleet.node_gpus[node] and self.fleet.state.reset_gpus(node):
                done.append(f"{node}'s GPUs are back to normal")
        bad = [n for n in self.fleet.names if self._image(n) == self.images.bad]
        for node in bad:
            self._redeploy(node, self.images.good, self._pool_label(node) or ACTIVE_POOL)
        if bad:
            done.append(f"{', '.join(bad)} run the good image again")
        if not done:
            return "Nothing to clear: no fault is in force."
        return (
            "; ".join(done)
            + ". Open incidents resolve within about a minute. What runbooks changed stays "
            "(a standby keeps serving, a failed node stays out of the upstream)."
        )

    # --- containers ------------------------------------------------------------------------

    def _container(self, node: str) -> dict[str, Any] | None:
        return self.fleet.state.container(node, CONTAINER)

    def _image(self, node: str) -> str | None:
        record = self._container(node)
        return record["Config"]["Image"] if record else None

    def _pool_label(self, node: str) -> str | None:
        record = self._container(node)
        return (record["Config"]["Labels"] or {}).get("pool") if record else None

    def _serving(self, pool: str) -> list[str]:
        """Nodes whose running container serves `pool` (a standby may, after a failover)."""
        out = []
        for node in self.fleet.names:
            record = self._container(node)
            if record and record["State"]["Running"] and self._pool_label(node) == pool:
                out.append(node)
        return out

    def _redeploy(self, node: str, image: str, pool: str) -> None:
        """Replace the node's serving container, as a deploy by hand would."""
        root = self.fleet.state_dir
        docker_cli.dispatch(root, node, ["rm", "-f", CONTAINER])
        argv = ["run", "-d", "--name", CONTAINER, "--restart", "unless-stopped", "-p", "8000:8000"]
        argv += ["-l", f"reliability.service={SERVICE}", "-l", f"pool={pool}", image]
        argv += ["--model", DEFAULT_MODEL]
        _, err, code = docker_cli.dispatch(root, node, argv)
        if code != 0:
            raise RuntimeError(f"docker run on {node} failed: {err.strip()}")
