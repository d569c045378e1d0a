"""The soak: three daemons on one PostgreSQL, 20 rounds of SIGKILL and restart (the leader
every other round) while 50 endpoints go bad and good again. Every incident is paged with
exactly one Slack root, edited in order from open to resolved, and none is lost.

Kills fall while rules are pending, incidents open, clear timers run and shares move; a
round waits only for what makes the next kill mean something (the victim taken for gone by
the database, so its restart may take its id again; two members ready). It does not kill
while a notification is in flight: the outbox is at least once (notify/dispatcher.py), and
a member killed between Slack's answer and the row's commit posts that row again.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from functools import partial
from itertools import pairwise
from urllib.parse import urlsplit

import pytest

from reliability.testing.cluster import ENDPOINT_DOWN, Member, wait_for

pytestmark = pytest.mark.postgres

ROUNDS = 20
INCIDENTS = 50
IDS = ("s0", "s1", "s2")
LAG = 3  # rounds an endpoint stays bad: kills fall on its pending and open incident
DOWN_FOR = (0.2, 1.0, 0.5)  # how long after being taken for gone a victim stays dead
OPEN_WITHIN = 60.0  # a bad endpoint's incident open, through several takeovers
# Six seconds down before an incident: a healthy endpoint of a loaded test machine that
# misses two probes in a row (1.5 s timeouts) is not one.
RULE = {**ENDPOINT_DOWN, "for": "6s"}
ROOT = re.compile(r"^\[(?P<state>[A-Z ]+)\] (?P<endpoint>up-\d+): not answering")


@pytest.mark.timeout(420)
def test_kill_and_restart_for_20_rounds_while_50_incidents_open_and_resolve(cluster, slack):
    c = cluster(INCIDENTS, 0, rule=RULE)
    path = {e["name"]: urlsplit(e["url"]).path for e in c.eps}
    names = sorted(c.names, key=lambda n: int(n.removeprefix("up-")))
    cuts = [r * INCIDENTS // ROUNDS for r in range(ROUNDS + 1)]
    batches = [names[a:b] for a, b in pairwise(cuts)]
    members: dict[str, Member] = {i: c.start(i) for i in IDS}

    def live() -> list[Member]:
        return list(members.values())

    def ready(m: Member) -> bool:
        return m.get("/readyz").status_code == 200

    def opened(batch: list[str]) -> bool:
        rows = c.query(
            "SELECT labels->>'endpoint' FROM incidents WHERE labels->>'endpoint' = ANY(:names)",
            names=batch,
        )
        return {r[0] for r in rows} == set(batch)

    def settle(batch: list[str]) -> None:
        """The batch's incidents are open (none lost to a takeover); then they recover."""
        wait_for(f"incidents of {batch} open", lambda: opened(batch), OPEN_WITHIN, live())
        c.server.heal(path[n] for n in batch)

    def in_flight() -> int:
        return c.query(
            "SELECT count(*) FROM outbox WHERE status = 'pending' AND claimed_until > now()"
        )[0][0]

    def gone(member_id: str) -> bool:
        rows = c.query(
            "SELECT now() - heartbeat_at >= make_interval(secs => :lease) FROM cluster_members"
            " WHERE member_id = :id",
            lease=2.0,
            id=member_id,
        )
        return not rows or rows[0][0]

    def leader() -> str | None:
        rows = c.query("SELECT holder FROM cluster_lease WHERE expires_at > now()")
        return rows[0][0] if rows else None

    wait_for("the endpoints split", lambda: c.split(live()), 60, live())
    killed: list[tuple[str, bool]] = []
    last_killed = dict.fromkeys(IDS, -1)
    for r in range(ROUNDS):
        c.server.fail(path[n] for n in batches[r])
        if r >= LAG:
            settle(batches[r - LAG])
        wait_for("two members ready", lambda: sum(map(ready, live())) >= 2, 60, live())
        head = leader()
        if r % 2 == 0 and head in members:
            victim = head
        else:
            victim = min((i for i in IDS if i != head), key=last_killed.__getitem__)
        wait_for("no notification in flight", lambda: in_flight() == 0, 30, live())
        members[victim].kill()
        killed.append((victim, victim == head))
        last_killed[victim] = r
        wait_for(f"round {r}: {victim} taken for gone", partial(gone, victim), 30)
        time.sleep(DOWN_FOR[r % len(DOWN_FOR)])
        members[victim] = c.start(victim)
    for batch in batches[-LAG:]:
        settle(batch)

    wait_for("every incident resolved", lambda: c.open_incidents() == 0, 60, live())
    wait_for("every notification sent", lambda: c.unsent() == 0, 60, live())

    assert sum(was_leader for _, was_leader in killed) >= ROUNDS // 2
    assert {victim for victim, _ in killed} == set(IDS)
    # The database: one incident per endpoint, opened once and resolved once.
    timelines: dict[str, list[str]] = {}
    for endpoint, kind in c.query(
        "SELECT i.labels->>'endpoint', e.kind FROM incidents i"
        " JOIN incident_events e ON e.incident_id = i.id ORDER BY e.id"
    ):
        timelines.setdefault(endpoint, []).append(kind)
    assert timelines == {n: ["opened", "resolved"] for n in names}
    # Slack: exactly one root per incident, no reply, its edits in order, ending resolved.
    everything = slack.state.all_messages()
    roots = [m for m in everything if not m.is_reply]
    assert len(everything) == len(roots)
    assert Counter(ROOT.match(m.text)["endpoint"] for m in roots) == Counter(names)
    for m in roots:
        states = [ROOT.match(text)["state"] for text in (*m.history, m.text)]
        collapsed = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
        assert collapsed == ["CRITICAL", "RESOLVED CRITICAL"], (m.text, m.history)
    failed = [call for call in slack.calls() if not call.ok]
    assert failed == []
