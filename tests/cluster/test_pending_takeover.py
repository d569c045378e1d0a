"""A rule pending its `for` when its member dies is resumed by the member that takes the
target over: it fires `for` after the condition started, not `for` after the takeover; a
pending entry whose target recovered meanwhile is dropped, with no incident."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from reliability.cluster.shards import assign
from reliability.testing.cluster import ENDPOINT_DOWN, wait_for

pytestmark = pytest.mark.postgres

FOR = 10.0
KILL_AT = 6.0  # seconds into the pending when its member is killed
RULE = {**ENDPOINT_DOWN, "for": f"{FOR:g}s"}


def test_a_pending_for_timer_survives_its_members_death(cluster, slack):
    c = cluster(6, 0, rule=RULE)
    ids = ["t0", "t1"]
    held = assign([f"endpoint:{n}" for n in sorted(c.names)], ids)["t0"]
    assert len(held) >= 2, held
    stays, recovers = (k.removeprefix("endpoint:") for k in held[:2])
    path = {e["name"]: urlsplit(e["url"]).path for e in c.eps}
    doomed, heir = c.start("t0"), c.start("t1")
    wait_for("the endpoints split", lambda: c.split([doomed, heir]), 60, [doomed, heir])

    def pending() -> dict[str, float]:
        """Endpoint -> seconds pending, by the database's clock."""
        rows = c.query(
            "SELECT labels->>'endpoint', extract(epoch FROM now() - since) FROM pending_alerts"
        )
        return {endpoint: float(age) for endpoint, age in rows}

    c.server.fail([path[stays], path[recovers]])
    wait_for(
        "both pending for a while",
        lambda: min(pending().get(n, -1.0) for n in (stays, recovers)) >= KILL_AT,
        30,
        [doomed, heir],
    )
    (since,) = c.query("SELECT since FROM pending_alerts WHERE labels->>'endpoint' = :n", n=stays)[
        0
    ]
    doomed.kill()
    c.server.heal([path[recovers]])

    def opened() -> list:
        return c.query("SELECT labels->>'endpoint', started_at FROM incidents ORDER BY id")

    wait_for("the resumed rule fires", lambda: opened(), FOR * 2, [heir])
    ((endpoint, started_at),) = opened()
    assert endpoint == stays
    took = (started_at - since).total_seconds()
    # From zero it would fire no sooner than KILL_AT + the lease + FOR after it started.
    assert FOR - 1 <= took < KILL_AT + FOR, took
    wait_for("the recovered entry dropped, the fired one too", lambda: pending() == {}, 10, [heir])
    wait_for("its page", lambda: len(slack.messages()) == 1, 30, [heir])
    assert stays in slack.messages()[0].text
    assert len(opened()) == 1
