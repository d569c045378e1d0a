"""The issue's faults not covered beside (test_cluster_daemons.py: two members with one id,
a member paused past its lease, one member cut off the database): a member whose clock is
an hour off, and the database gone for 60 s for every member. No double page, no lost
incident."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy.engine import make_url

from reliability.testing.cluster import TcpProxy, wait_for

pytestmark = pytest.mark.postgres

LEASE = 2.0
DATABASE_GONE = 60.0


def test_a_member_whose_clock_is_an_hour_off_stays_out_and_nothing_is_lost_or_paged_twice(
    cluster, slack
):
    c = cluster(8, 2)
    right = [c.start("k0"), c.start("k1")]
    wrong = c.start("k2", clock_offset=3600)
    everyone = [*right, wrong]

    def says_why() -> bool:
        problem = wrong.get("/readyz").json()["problems"].get("cluster", "")
        return re.search(r"clock is \+36\d\ds off the database's", problem) is not None

    wait_for("the member with the wrong clock says why it stays out", says_why, 60, everyone)
    wait_for("the others split the endpoints", lambda: c.split(right), 60, everyone)
    wait_for("a page per refusing endpoint", lambda: len(slack.messages()) == 2, 30, everyone)
    assert wrong.get("/readyz").status_code == 503
    assert wrong.collected() == set()
    assert wrong.gauge("reliability_cluster_leader") == 0
    status = c.status()
    assert sorted(m["member_id"] for m in status["members"] if m["live"]) == ["k0", "k1"]
    assert status["leader"] in ("k0", "k1")

    time.sleep(LEASE * 2)  # long enough for a page twice, or a wrong resolve, to show
    assert len(slack.calls("chat.postMessage")) == 2
    assert c.open_incidents() == 2
    assert "staying out of the cluster" in wrong.output()


@pytest.mark.timeout(300)
def test_the_database_gone_for_60s_loses_no_incident_and_pages_nothing_twice(cluster, slack):
    c = cluster(8, 2)
    url = make_url(c.url)
    with TcpProxy(url.port or 5432) as proxy:
        relayed = url.set(port=proxy.port).render_as_string(hide_password=False)
        members = [c.start("g0", database_url=relayed), c.start("g1", database_url=relayed)]
        wait_for("the endpoints split", lambda: c.split(members), 60, members)
        wait_for("a page per refusing endpoint", lambda: len(slack.messages()) == 2, 30, members)
        # A page in flight when the database goes (posted, not yet recorded as sent) is sent
        # again after it is back: the outbox is at least once (notify/dispatcher.py).
        wait_for("the pages recorded as sent", lambda: c.unsent() == 0, 30, members)

        proxy.cut()
        cut_at = time.monotonic()
        for m in members:
            wait_for(
                f"{m.member_id} fenced",
                lambda m=m: "fenced" in m.get("/readyz").json()["problems"].get("cluster", ""),
                LEASE * 4,
                members,
            )
        # Meanwhile an endpoint goes bad, and stays bad until the database is back.
        c.server.fail(["/e0"])
        time.sleep(max(0.0, DATABASE_GONE - (time.monotonic() - cut_at)))
        assert all(m.get("/readyz").status_code == 503 for m in members)
        assert len(slack.messages()) == 2  # fenced members page nothing
        proxy.restore()

        wait_for(
            "both ready again",
            lambda: all(m.get("/readyz").status_code == 200 for m in members),
            60,
            members,
        )
        wait_for("the incident of the outage paged", lambda: len(slack.messages()) == 3, 60)
        wait_for("the shares split again", lambda: c.split(members), 30, members)
        time.sleep(LEASE * 2)
    roots = [m.text for m in slack.messages()]
    assert sorted(re.match(r"\[CRITICAL\] (\S+):", t)[1] for t in roots) == [
        "down-0",
        "down-1",
        "up-0",
    ]
    assert len(slack.calls("chat.postMessage")) == 3
    assert c.open_incidents() == 3
