"""`reliability status` with two real daemons on one PostgreSQL: each collects its share of
the nodes and endpoints, and the status shows the whole fleet, merged from every live
member's /metrics (through the daemon's read API and read directly alike); a member that
does not answer is named, and only its share is unknown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from reliability import db
from reliability.cluster.shards import assign
from reliability.testing.cluster import (
    HealthyServer,
    Member,
    endpoints,
    start_member,
    wait_for,
    write_config,
)
from reliability.testing.loopback import free_port

pytestmark = pytest.mark.postgres

NODES = [f"gpu-{i}" for i in range(1, 7)]
# Long enough that a killed member is still listed live when the status reads it.
LEASE, HEARTBEAT = 30.0, 1.0


def status(member: Member, *extra: str) -> tuple[dict, int]:
    done = subprocess.run(
        [sys.executable, "-m", "reliability", "status", "--json", "-c", str(member.config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout, done.stderr
    return json.loads(done.stdout), done.returncode


def test_status_shows_every_members_share_and_names_a_member_that_does_not_answer(
    tmp_path: Path, pg_databases: Callable[[], str]
):
    url = pg_databases()
    db.upgrade(url)
    # Nodes on loopback addresses of their own whose SSH refuses: each is read as down by
    # whichever member holds it, and as unknown by nobody.
    ssh = free_port("127.0.213.1")
    nodes = [
        {"name": n, "address": f"127.0.213.{i}", "ssh": {"port": ssh}, "pool": "blue"}
        for i, n in enumerate(NODES, start=1)
    ]
    shares = assign([f"node:{n}" for n in NODES], ["a", "b"])
    assert all(shares.values()), shares  # each member holds some nodes
    members: list[Member] = []
    with HealthyServer() as server:
        eps = endpoints(server.url, 4, 0)
        try:
            for member_id in ("a", "b"):
                port = free_port()
                config = write_config(
                    tmp_path / f"{member_id}.yaml",
                    database_url=url,
                    member_id=member_id,
                    port=port,
                    endpoints=eps,
                    heartbeat=HEARTBEAT,
                    lease=LEASE,
                    nodes=nodes,
                )
                members.append(start_member(config, member_id, port, tmp_path))
            a, b = members

            def split() -> bool:
                held = [m.collected("node") for m in members]
                probed = [m.collected("api") for m in members]
                return (
                    all(held)
                    and sorted(held[0] | held[1]) == sorted(NODES)
                    and not held[0] & held[1]
                    and set().union(*probed) == {e["name"] for e in eps}
                )

            wait_for("the nodes and endpoints split between a and b", split, 60, members)

            def whole(document: dict) -> bool:
                return [d["up"] for d in document["daemons"]] == [True, True] and all(
                    n["state"] == "down" for n in document["nodes"]
                )

            wait_for("a status read with both members", lambda: whole(status(a)[0]), 30, members)
            for document, _ in (status(a), status(b), status(a, "--direct")):
                assert [(d["member"], d["up"]) for d in document["daemons"]] == [
                    ("a", True),
                    ("b", True),
                ]
                assert {n["name"]: n["state"] for n in document["nodes"]} == {
                    n: "down" for n in NODES
                }
                assert all(e["last_probe_ok"] is True for e in document["endpoints"])
                assert document["cluster"]["members"] == 2

            held_by_b = b.collected("node")
            b.kill()  # no clean leave: its row stays live until the lease runs out
            document, code = status(a)
            screen = subprocess.run(
                [sys.executable, "-m", "reliability", "status", "-c", str(a.config)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={**os.environ, "COLUMNS": "200"},
            ).stdout
        finally:
            for m in members:
                m.stop()
    assert code == 1
    [gone] = [d for d in document["daemons"] if not d["up"]]
    assert (gone["member"], gone["error"]) == ("b", "connection refused")
    assert f"daemon b not answering at {b.url}/metrics: connection refused" in document["attention"]
    said = f"daemon b: not answering at {b.url}/metrics: connection refused (its share of nodes"
    assert said in screen
    states = {n["name"]: n["state"] for n in document["nodes"]}
    assert {n for n, s in states.items() if s == "unknown"} == held_by_b
    assert {n for n, s in states.items() if s == "down"} == set(NODES) - held_by_b
