"""What the rig balancer tests (nginx and HAProxy) share: the runbook's balancer operations
sent over SSH as the executor sends them, the pool that answers through the balancer, and
the processes a balancer leaves behind."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from reliability.balancers import Edit
from reliability.config import LoadBalancerConfig, NodeConfig, ServiceConfig
from reliability.runbooks import ops
from reliability.testing.balancer import RigBalancer

# --- helpers: the runbook's operations over SSH, and the answers through the balancer ------


def balancer(lb: RigBalancer) -> LoadBalancerConfig:
    return LoadBalancerConfig(**lb.lb_config(lb.service))


def service(lb: RigBalancer) -> ServiceConfig:
    return ServiceConfig(
        name=lb.service, pools=["blue", "green"], active_pool="blue", load_balancer=balancer(lb)
    )


def pool_switch(lb: RigBalancer, pool: str) -> Edit:
    """The edit a runbook applies to switch the service to ``pool``."""
    nodes = [
        NodeConfig(name=n.name, address=n.address, pool=n.pool)
        for n in lb.fleet.nodes
        if n.pool == pool
    ]
    return ops.upstream_edit(service(lb), "switch", nodes)


def not_members(text: str) -> list[str]:
    """The lines of an upstream file that are not the service's members (at port 8000)."""
    return [line for line in text.splitlines() if ":8000" not in line]


def send(lb: RigBalancer, op: ops.Op, saved: dict[str, str]) -> tuple[str, str, int]:
    """One operation of a plan, sent as the executor sends it (an edit: done here, on what
    an earlier one saved)."""
    if op.kind == "edit":
        assert op.edit is not None and op.needs is not None and op.saves is not None
        saved[op.saves] = op.edit.apply(saved[op.needs])
        return "", "", 0
    assert (op.where, op.kind) == (lb.node, "run")
    stdin = saved[op.stdin.key or ""] if isinstance(op.stdin, ops.AtRun) else op.stdin
    out, err, code = lb.ssh(op.detail, stdin)
    if op.saves:
        saved[op.saves] = out
    return out, err, code


def switch_ops(lb: RigBalancer, edit: Edit) -> list[ops.Op]:
    return ops.lb_edit_ops(lb.node, balancer(lb), edit, saves="saved", verify=5.0)


def switch_over_ssh(lb: RigBalancer, edit: Edit) -> dict[str, str]:
    """Save, edit, write, test and reload as the runbooks do; what the run saved."""
    saved: dict[str, str] = {}
    for op in switch_ops(lb, edit):
        if op.kind == "http":
            continue
        out, err, code = send(lb, op, saved)
        assert code == 0, f"{op.detail}: {out}{err}"
    return saved


def pool_of_fresh_request(lb: RigBalancer, path: str = "v1/models") -> str:
    response = httpx.get(lb.url + path, timeout=5)
    assert response.status_code == 200, response.text
    return response.headers["x-pool"]


def processes_naming(config: Path) -> list[int]:
    """Live processes whose command line names ``config`` (what ``pgrep -f`` would find)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(config).encode() in cmdline and state != "Z":
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
