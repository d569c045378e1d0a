"""The rig's real nginx balancer, driven over SSH with the exact commands runbooks send."""

from __future__ import annotations

import json
import pwd
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

from reliability.runbooks import ops
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.nginx import NginxBalancer, parse_members
from reliability.testing.waiting import seconds_until, wait_for

pytestmark = pytest.mark.rig

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hello"}]}


# --- specifications -------------------------------------------------------------------------


def test_requests_through_the_balancer_reach_the_blue_pool(rig_lb: NginxBalancer) -> None:
    blue = {f"{rig_lb.fleet.node(n).address}:8000" for n in ("gpu-1", "gpu-2")}

    answers = [httpx.get(rig_lb.url + "v1/models", timeout=5) for _ in range(6)]
    chat = httpx.post(rig_lb.url + "v1/chat/completions", json=CHAT, timeout=5)
    health = httpx.get(rig_lb.health_url, timeout=5)
    root = httpx.get(rig_lb.url, timeout=5)

    assert [a.status_code for a in answers] == [200] * 6
    assert {a.headers["x-pool"] for a in answers} == {"blue"}
    assert {a.headers["x-upstream-addr"] for a in answers} == blue  # both members, in turn
    assert chat.headers["x-pool"] == "blue"
    assert chat.json()["choices"][0]["message"]["content"].startswith("Rig reply from the blue")
    # A runbook verifies through health_url, the members' health: 200 while one serves.
    assert (health.status_code, health.json()["pool"]) == (200, "blue")
    # `/` is the engine's `/`, a 404, as behind a real balancer: nothing maps it to health.
    assert root.status_code == 404 and root.headers["x-upstream-addr"] in blue
    assert rig_lb.members() == [(address, False) for address in sorted(blue)]
    assert rig_lb.lb_config("chat") == {
        "kind": "nginx",
        "node": "lb-1",
        "upstream_file": str(rig_lb.upstream_file),
        "config_file": str(rig_lb.config_file),
        "url": rig_lb.url,
        "health_url": rig_lb.url + "health",
    }


def test_nginx_runs_as_the_login_user_with_everything_in_its_own_directory(
    rig_lb: NginxBalancer,
) -> None:
    assert rig_lb.pid is not None
    owners = {Path(f"/proc/{pid}").stat().st_uid for pid in [rig_lb.pid, *rig_lb.worker_pids()]}
    login_uid = pwd.getpwnam(rig_lb.fleet.user).pw_uid

    _, err, code = rig_lb.ssh(f"nginx -t -c {rig_lb.config_file}")

    assert owners == {login_uid}
    assert code == 0, err
    assert "test is successful" in err
    assert "[alert]" not in err  # no default log outside its directory was needed
    assert (rig_lb.dir / "nginx.pid").read_text().strip() == str(rig_lb.pid)
    assert rig_lb.upstream_file.parent == rig_lb.config_file.parent == rig_lb.dir


def test_the_runbook_commands_over_ssh_move_traffic_to_green(rig_lb: NginxBalancer) -> None:
    before = rig_lb.upstream_file.read_text()
    green = pool_switch(rig_lb, "green")
    plan = switch_ops(rig_lb, green)
    old_workers = set(rig_lb.serving_worker_pids())

    saved = switch_over_ssh(rig_lb, green)
    switched_in = seconds_until(
        "a fresh request on green", lambda: pool_of_fresh_request(rig_lb) == "green", 5, every=0.01
    )
    # For ~100 ms after a reload nginx's old workers still accept (blue); then they stop.
    settled = rig_lb.wait_reloaded(old_workers)
    after = [pool_of_fresh_request(rig_lb) for _ in range(8)]

    # The commands sent are the ones a plan shows.
    assert [op.detail for op in plan if op.where != ops.LOCAL] == [
        f"cat {rig_lb.upstream_file}",
        f"cat > {rig_lb.upstream_file}.reliability-new && "
        f"mv -f {rig_lb.upstream_file}.reliability-new {rig_lb.upstream_file}",
        f"nginx -t -c {rig_lb.config_file}",
        f"nginx -c {rig_lb.config_file} -s reload",
    ]
    assert saved["saved"] == before
    assert switched_in < 2.0
    assert settled
    assert after == ["green"] * 8
    green_addresses = [f"{rig_lb.fleet.node(n).address}:8000" for n in ("gpu-3", "gpu-4")]
    assert rig_lb.members() == [(address, False) for address in green_addresses]
    # Only the service's server lines changed: the rest of the operator's file is as it was.
    after_text = rig_lb.upstream_file.read_text()
    assert not_members(after_text) == not_members(before)
    assert [line for line in after_text.splitlines() if ":8000" in line] == [
        "    " + rig_lb.balancer.server_text(s) for s in pool_switch(rig_lb, "green").servers
    ]
    check = plan[-1].check
    assert isinstance(check, ops.HttpWait) and check.url == rig_lb.health_url
    assert httpx.get(check.url, timeout=5).status_code == check.status


def test_nginx_t_over_ssh_rejects_a_broken_upstream_and_the_old_file_goes_back(
    rig_lb: NginxBalancer,
) -> None:
    broken = "upstream chat {\n    server 127.0.0.1:8000 down\n}\n"  # no semicolon
    cat, edit, write, test, reload, _ = switch_ops(rig_lb, pool_switch(rig_lb, "green"))
    saved: dict[str, str] = {}
    send(rig_lb, cat, saved)
    assert edit.saves is not None
    saved[edit.saves] = broken  # as if the edit had made it
    send(rig_lb, write, saved)

    _, tested, test_code = send(rig_lb, test, saved)
    _, reloaded, reload_code = send(rig_lb, reload, saved)
    still = [pool_of_fresh_request(rig_lb) for _ in range(4)]
    restore = ops.lb_restore_ops(rig_lb.node, balancer(rig_lb), ops.AtRun("saved", "saved"))
    codes = [send(rig_lb, op, saved)[2] for op in restore]

    assert test_code != 0
    assert f"in {rig_lb.upstream_file}:3" in tested
    assert "test failed" in tested
    # nginx parses the config before it signals: a reload of a broken file changes nothing.
    assert reload_code != 0 and f"in {rig_lb.upstream_file}:3" in reloaded
    assert still == ["blue"] * 4
    assert codes == [0, 0, 0]
    assert rig_lb.upstream_file.read_text() == saved["saved"]
    assert pool_of_fresh_request(rig_lb) == "blue"


def test_a_dead_member_is_skipped(rig_lb: NginxBalancer) -> None:
    gone = f"{rig_lb.fleet.node('gpu-1').address}:8000"
    _, err, code = rig_lb.ssh("docker rm -f vllm", node="gpu-1")
    assert code == 0, err

    answers = [httpx.get(rig_lb.url + "v1/models", timeout=5) for _ in range(6)]

    assert [(a.status_code, a.headers["x-pool"]) for a in answers] == [(200, "blue")] * 6
    tried = [a.headers["x-upstream-addr"] for a in answers]
    assert any(t.startswith(f"{gone}, ") for t in tried)  # refused, then the next member
    assert not any(t == gone for t in tried)


def test_a_stream_started_before_a_reload_completes_intact(rig_lb: NginxBalancer) -> None:
    assert rig_lb.fleet.engine is not None
    blue = [rig_lb.fleet.engine.server(n, "vllm") for n in ("gpu-1", "gpu-2")]
    for server in blue:
        assert server is not None
        server.set_mode("ok", path="/v1/chat/completions", interval_s=0.4)  # 16 tokens: 6.4 s
    body = CHAT | {"stream": True}

    with httpx.stream("POST", rig_lb.url + "v1/chat/completions", json=body, timeout=10) as r:
        lines = r.iter_lines()
        first = next(lines)
        old_workers = set(rig_lb.serving_worker_pids())
        switch_over_ssh(rig_lb, pool_switch(rig_lb, "green"))
        assert rig_lb.wait_reloaded(old_workers)
        new_pool = pool_of_fresh_request(rig_lb)
        in_flight = sum(s.stats()["in_flight"] for s in blue if s is not None)
        retiring = set(rig_lb.worker_pids()) - set(rig_lb.serving_worker_pids())
        rest = list(lines)
        pool = r.headers["x-pool"]

    events = [line.removeprefix("data: ") for line in [first, *rest] if line]
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert in_flight == 1  # the switch landed while the stream was running
    assert new_pool == "green"
    assert len(retiring) == 1  # the old worker finishes it
    assert pool == "blue"
    assert events[-1] == "[DONE]"
    assert len(text.split()) == 16 and text.startswith("Rig reply from the blue pool")
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    wait_for(
        "the old workers gone", lambda: not retiring & set(rig_lb.worker_pids()), 5, every=0.01
    )


def test_members_parse_the_upstream_file_as_runbooks_write_it() -> None:
    text = (
        "# Written by reliability's runbooks; edit the runbook, not this file.\n"
        "upstream chat {\n"
        "    server 127.0.1.1:8000;\n"
        "    server 127.0.1.2:8000 down;  # taken out\n"
        "    server [::1]:8000 max_fails=3 down;\n"
        "}\n"
    )

    assert parse_members(text) == [
        ("127.0.1.1:8000", False),
        ("127.0.1.2:8000", True),
        ("[::1]:8000", True),
    ]
