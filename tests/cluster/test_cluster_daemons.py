"""Real daemons on one PostgreSQL: they split the endpoints with no overlap and no gap; a
member killed (the leader) has its share collected again within 15 s with its open
incidents neither resolved nor paged again; a member paused past its lease steps down when
it wakes; a member cut off the database is fenced and says so; a second daemon with a live
member's id does not start."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import make_url

from reliability.cluster.shards import assign
from reliability.testing.cluster import TcpProxy, wait_for
from reliability.testing.slack import SlackStandIn

pytestmark = pytest.mark.postgres

LEASE = 2.0
TAKEOVER_WITHIN = 15.0


def test_three_daemons_split_the_endpoints_and_a_killed_leaders_share_is_taken_over_quietly(
    cluster, slack: SlackStandIn
):
    c = cluster(12, 6)
    ids = ["a", "b", "c"]
    # Each member holds a refusing endpoint, so killing any one leaves open incidents.
    assert all(
        any(k.startswith("endpoint:down-") for k in keys)
        for keys in assign([f"endpoint:{n}" for n in c.names], ids).values()
    )
    members = [c.start(i) for i in ids]
    wait_for("the endpoints split", lambda: c.split(members), 60, members)
    wait_for("a page per refusing endpoint", lambda: len(slack.messages()) == 6, 30, members)
    wait_for(
        "one leader",
        lambda: sum(m.gauge("reliability_cluster_leader") or 0 for m in members) == 1,
        10,
        members,
    )
    assert {m.gauge("reliability_cluster_members") for m in members} == {3.0}

    status = c.status()
    assert sorted(m["member_id"] for m in status["members"] if m["live"]) == ids
    (leader_id,) = [m["member_id"] for m in status["members"] if m["leader"]]
    assert sum(len(m["targets"]) for m in status["members"]) == len(c.names)

    # A second daemon with a live member's id does not start, and says why.
    twin = c.start(leader_id)
    assert twin.proc.wait(60) == 2
    assert f"member id '{leader_id}' is already live" in twin.output()

    leader = next(m for m in members if m.member_id == leader_id)
    held = leader.collected()
    assert held & c.down
    posts = len(slack.calls("chat.postMessage"))
    leader.kill()
    survivors = [m for m in members if m is not leader]
    took = wait_for(
        "the killed leader's endpoints collected again",
        lambda: c.split(survivors),
        TAKEOVER_WITHIN,
        survivors,
    )
    wait_for(
        "a new leader",
        lambda: sum(m.gauge("reliability_cluster_leader") or 0 for m in survivors) == 1,
        LEASE * 3,
        survivors,
    )
    time.sleep(LEASE * 2)  # long enough for a wrong resolve (2s) or page to show
    assert c.open_incidents() == 6, f"takeover after {took:.1f}s"
    again = [call.text for call in slack.calls("chat.postMessage")[posts:]]
    assert again == []  # no page again, no resolve note
    assert len(slack.messages()) == 6
    assert {m.gauge("reliability_cluster_members") for m in survivors} == {2.0}


def test_a_leader_paused_past_its_lease_is_replaced_and_steps_down_when_it_wakes(
    cluster, slack: SlackStandIn
):
    c = cluster(8, 2)
    members = [c.start("p0"), c.start("p1")]
    wait_for("the endpoints split", lambda: c.split(members), 60, members)
    wait_for("a page per refusing endpoint", lambda: len(slack.messages()) == 2, 30, members)
    wait_for(
        "one leader",
        lambda: sum(m.gauge("reliability_cluster_leader") or 0 for m in members) == 1,
        10,
        members,
    )
    leader = next(m for m in members if m.gauge("reliability_cluster_leader") == 1)
    other = next(m for m in members if m is not leader)

    leader.pause()
    try:
        wait_for(
            "the other takes everything", lambda: other.collected() == c.names, TAKEOVER_WITHIN
        )
        wait_for(
            "the other leads", lambda: other.gauge("reliability_cluster_leader") == 1, LEASE * 3
        )
        time.sleep(LEASE)
    finally:
        leader.resume()
    wait_for("the shares split again", lambda: c.split(members), TAKEOVER_WITHIN, members)
    assert leader.gauge("reliability_cluster_leader") == 0
    assert other.gauge("reliability_cluster_leader") == 1
    assert "no longer leads" in leader.output()
    assert leader.get("/readyz").status_code == 200
    assert len(slack.messages()) == 2 and c.open_incidents() == 2


def test_a_member_cut_off_the_database_is_fenced_says_why_and_rejoins(cluster, slack: SlackStandIn):
    c = cluster(8, 2)
    url = make_url(c.url)
    with TcpProxy(url.port or 5432) as proxy:
        relayed = url.set(port=proxy.port).render_as_string(hide_password=False)
        kept, cut = c.start("q0"), c.start("q1", database_url=relayed)
        members = [kept, cut]
        wait_for("the endpoints split", lambda: c.split(members), 60, members)
        wait_for("a page per refusing endpoint", lambda: len(slack.messages()) == 2, 30, members)

        proxy.cut()

        def fenced() -> bool:
            ready = cut.get("/readyz")
            return "fenced" in ready.json()["problems"].get("cluster", "")

        wait_for("the cut member fenced", fenced, LEASE * 4, members)
        ready = cut.get("/readyz")
        assert ready.status_code == 503
        problem = ready.json()["problems"]["cluster"]
        assert "no heartbeat within the lease (2s; database: " in problem
        assert cut.gauge("reliability_database_up") == 0
        wait_for("the other takes everything", lambda: kept.collected() == c.names, TAKEOVER_WITHIN)
        # The gauge is published every heartbeat (2 s here): it follows the takeover.
        wait_for(
            "one member counted",
            lambda: kept.gauge("reliability_cluster_members") == 1,
            LEASE * 2,
            members,
        )

        proxy.restore()
        wait_for("ready again", lambda: cut.get("/readyz").status_code == 200, 30, members)
        wait_for("the shares split again", lambda: c.split(members), TAKEOVER_WITHIN, members)
    assert len(slack.messages()) == 2 and c.open_incidents() == 2
