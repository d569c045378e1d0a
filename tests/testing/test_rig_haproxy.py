"""The rig's real HAProxy balancer, driven over SSH with the exact commands runbooks send.

The same specifications as the rig's nginx (test_rig_nginx.py), in HAProxy's terms:
master-worker mode, `haproxy -c` to validate, `kill -USR2` to the master to reload.
"""

from __future__ import annotations

import json
import pwd
import time
from pathlib import Path

import httpx
import pytest
from rig_balancer_ops import (
    balancer,
    not_members,
    pool_of_fresh_request,
    pool_switch,
    send,
    switch_ops,
    switch_over_ssh,
)

from reliability.balancers import HAProxy
from reliability.runbooks import ops
from reliability.testing.haproxy import HAProxyBalancer
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.waiting import seconds_until, wait_for

pytestmark = pytest.mark.rig

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hello"}]}


# --- specifications -------------------------------------------------------------------------


def test_requests_through_the_balancer_reach_the_blue_pool(rig_haproxy: HAProxyBalancer) -> None:
    lb = rig_haproxy
    blue = {f"{lb.fleet.node(n).address}:8000" for n in ("gpu-1", "gpu-2")}

    answers = [httpx.get(lb.url + "v1/models", timeout=5) for _ in range(6)]
    chat = httpx.post(lb.url + "v1/chat/completions", json=CHAT, timeout=5)
    health = httpx.get(lb.health_url, timeout=5)
    root = httpx.get(lb.url, timeout=5)

    assert [a.status_code for a in answers] == [200] * 6
    assert {a.headers["x-pool"] for a in answers} == {"blue"}
    assert {a.headers["x-upstream-addr"] for a in answers} == blue  # both members, in turn
    assert chat.headers["x-pool"] == "blue"
    assert chat.json()["choices"][0]["message"]["content"].startswith("Rig reply from the blue")
    assert (health.status_code, health.json()["pool"]) == (200, "blue")
    assert root.status_code == 404 and root.headers["x-upstream-addr"] in blue  # the engine
    assert lb.members() == [(address, False) for address in sorted(blue)]
    assert lb.lb_config("chat") == {
        "kind": "haproxy",
        "node": "lb-1",
        "upstream_file": str(lb.upstream_file),
        "config_file": str(lb.config_file),
        "pid_file": str(lb.pid_file),
        "url": lb.url,
        "health_url": lb.url + "health",
    }
    # The servers are named after their nodes, as a runbook's added lines are.
    membership = HAProxy(balancer(lb)).read_membership(lb.upstream_file.read_text(), "chat")
    assert [s.name for s in membership.servers] == ["gpu-1", "gpu-2"]


def test_haproxy_runs_as_the_login_user_with_everything_in_its_own_directory(
    rig_haproxy: HAProxyBalancer,
) -> None:
    lb = rig_haproxy
    assert lb.pid is not None
    owners = {Path(f"/proc/{pid}").stat().st_uid for pid in [lb.pid, *lb.worker_pids()]}
    login_uid = pwd.getpwnam(lb.fleet.user).pw_uid

    out, err, code = lb.ssh(HAProxy(balancer(lb)).validate_command())

    assert owners == {login_uid}
    assert code == 0, err
    assert "Configuration file is valid" in out + err
    # In master-worker mode the pid file holds the master's pid: what the reload signals.
    assert lb.pid_file.read_text().strip() == str(lb.pid)
    assert lb.upstream_file.parent == lb.config_file.parent == lb.pid_file.parent == lb.dir


def test_the_runbook_commands_over_ssh_move_traffic_to_green(
    rig_haproxy: HAProxyBalancer,
) -> None:
    lb = rig_haproxy
    before = lb.upstream_file.read_text()
    green = pool_switch(lb, "green")
    plan = switch_ops(lb, green)
    old_workers = set(lb.serving_worker_pids())
    master = lb.pid

    saved = switch_over_ssh(lb, green)
    switched_in = seconds_until(
        "a fresh request on green", lambda: pool_of_fresh_request(lb) == "green", 5, every=0.01
    )
    settled = lb.wait_reloaded(old_workers)
    after = [pool_of_fresh_request(lb) for _ in range(8)]

    # The commands sent are the ones a plan shows.
    assert [op.detail for op in plan if op.where != ops.LOCAL] == [
        f"cat {lb.upstream_file}",
        f"cat > {lb.upstream_file}.reliability-new && "
        f"mv -f {lb.upstream_file}.reliability-new {lb.upstream_file}",
        f"haproxy -c -f {lb.config_file} -f {lb.upstream_file}",
        f'kill -USR2 "$(cat {lb.pid_file})"',
    ]
    assert saved["saved"] == before
    assert switched_in < 2.0
    assert settled
    assert lb.pid == master  # a reload, not a restart: the master stays
    assert lb.reloads() == 1
    assert after == ["green"] * 8
    green_addresses = [f"{lb.fleet.node(n).address}:8000" for n in ("gpu-3", "gpu-4")]
    assert lb.members() == [(address, False) for address in green_addresses]
    # Only the service's server lines changed: the rest of the operator's file is as it was.
    after_text = lb.upstream_file.read_text()
    assert not_members(after_text) == not_members(before)
    assert [line for line in after_text.splitlines() if ":8000" in line] == [
        "    " + lb.balancer.server_text(s) for s in pool_switch(lb, "green").servers
    ]
    check = plan[-1].check
    assert isinstance(check, ops.HttpWait) and check.url == lb.health_url
    assert httpx.get(check.url, timeout=5).status_code == check.status


def test_haproxy_c_over_ssh_rejects_a_broken_backend_and_the_old_file_goes_back(
    rig_haproxy: HAProxyBalancer,
) -> None:
    lb = rig_haproxy
    broken = "backend chat\n    server gpu-1 127.0.0.1:8000 chek\n"  # a misspelt keyword
    cat, edit, write, test, _, _ = switch_ops(lb, pool_switch(lb, "green"))
    saved: dict[str, str] = {}
    send(lb, cat, saved)
    assert edit.saves is not None
    saved[edit.saves] = broken  # as if the edit had made it
    send(lb, write, saved)
    master, workers = lb.pid, set(lb.serving_worker_pids())

    out, err, test_code = send(lb, test, saved)
    restore = ops.lb_restore_ops(lb.node, balancer(lb), ops.AtRun("saved", "saved"))
    codes = [send(lb, op, saved)[2] for op in restore]

    assert test_code != 0
    assert f"[{lb.upstream_file}:2]" in out + err
    assert "unknown keyword 'chek'" in out + err
    assert codes == [0, 0, 0]
    assert lb.upstream_file.read_text() == saved["saved"]
    assert lb.pid == master
    assert lb.wait_reloaded(workers)
    assert [pool_of_fresh_request(lb) for _ in range(4)] == ["blue"] * 4


def test_a_reload_of_a_file_haproxy_refuses_keeps_the_old_worker_serving(
    rig_haproxy: HAProxyBalancer,
) -> None:
    # Why the runbooks validate first: the master reports nothing to the signaller.
    lb = rig_haproxy
    cat, edit, write, _, reload, _ = switch_ops(lb, pool_switch(lb, "green"))
    saved: dict[str, str] = {}
    send(lb, cat, saved)
    assert edit.saves is not None
    saved[edit.saves] = "backend chat\n    server gpu-1 nowhere:x\n"
    send(lb, write, saved)
    workers = set(lb.serving_worker_pids())

    _, _, code = send(lb, reload, saved)
    time.sleep(0.5)

    assert code == 0
    assert "Loading failure!" in lb.log()
    assert "[failed: 1]" in lb.master_cli("show proc")
    assert set(lb.serving_worker_pids()) == workers
    assert [pool_of_fresh_request(lb) for _ in range(4)] == ["blue"] * 4


def test_a_dead_member_is_skipped(rig_haproxy: HAProxyBalancer) -> None:
    lb = rig_haproxy
    gone = f"{lb.fleet.node('gpu-1').address}:8000"
    other = f"{lb.fleet.node('gpu-2').address}:8000"
    _, err, code = lb.ssh("docker rm -f vllm", node="gpu-1")
    assert code == 0, err

    answers = [httpx.get(lb.url + "v1/models", timeout=5) for _ in range(6)]

    assert [(a.status_code, a.headers["x-pool"]) for a in answers] == [(200, "blue")] * 6
    assert {a.headers["x-upstream-addr"] for a in answers} == {other}
    assert gone not in {a.headers["x-upstream-addr"] for a in answers}


def test_a_stream_started_before_a_reload_completes_intact(rig_haproxy: HAProxyBalancer) -> None:
    lb = rig_haproxy
    assert lb.fleet.engine is not None
    blue = [lb.fleet.engine.server(n, "vllm") for n in ("gpu-1", "gpu-2")]
    for server in blue:
        assert server is not None
        server.set_mode("ok", path="/v1/chat/completions", interval_s=0.4)  # 16 tokens: 6.4 s
    body = CHAT | {"stream": True}

    with httpx.stream("POST", lb.url + "v1/chat/completions", json=body, timeout=10) as r:
        lines = r.iter_lines()
        first = next(lines)
        old_workers = set(lb.serving_worker_pids())
        switch_over_ssh(lb, pool_switch(lb, "green"))
        assert lb.wait_reloaded(old_workers)
        new_pool = pool_of_fresh_request(lb)
        in_flight = sum(s.stats()["in_flight"] for s in blue if s is not None)
        retiring = set(lb.worker_pids()) - set(lb.serving_worker_pids())
        rest = list(lines)
        pool = r.headers["x-pool"]

    events = [line.removeprefix("data: ") for line in [first, *rest] if line]
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert in_flight == 1  # the switch landed while the stream was running
    assert new_pool == "green"
    assert retiring == old_workers  # the old worker finishes it
    assert pool == "blue"
    assert events[-1] == "[DONE]"
    assert len(text.split()) == 16 and text.startswith("Rig reply from the blue pool")
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    wait_for("the old workers gone", lambda: not retiring & set(lb.worker_pids()), 5, every=0.01)
