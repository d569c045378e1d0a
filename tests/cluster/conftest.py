"""Real daemons on one PostgreSQL (reliability/testing/cluster.py): `cluster(up, down)`
makes a cluster of `up` answering endpoints and `down` refused ones; its members start,
are killed and restarted by the test, and are stopped at its end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from reliability import db
from reliability.testing.cluster import (
    ENDPOINT_DOWN,
    HealthyServer,
    Member,
    endpoints,
    start_member,
    write_config,
)
from reliability.testing.loopback import free_port
from reliability.testing.slack import SlackStandIn

LEASE = 2.0


class Cluster:
    def __init__(
        self,
        directory: Path,
        url: str,
        slack: SlackStandIn,
        eps: list[dict],
        server: HealthyServer,
        rule: dict,
    ) -> None:
        self.directory, self.url, self.eps, self.server = directory, url, eps, server
        self.rule = rule
        self.engine = db.make_engine(url)
        self.slack_section = {
            "token_env": "RELIABILITY_TEST_SLACK_TOKEN",
            "channel": "#alerts",
            "base_url": slack.api_url,
        }
        self.members: list[Member] = []
        self.names = {e["name"] for e in eps}
        self.down = {e["name"] for e in eps if e["name"].startswith("down-")}

    def start(
        self, member_id: str, database_url: str | None = None, *, clock_offset: float = 0.0
    ) -> Member:
        port = free_port()
        config = write_config(
            self.directory / f"{member_id}-{port}.yaml",
            database_url=database_url or self.url,
            member_id=member_id,
            port=port,
            endpoints=self.eps,
            slack=self.slack_section,
            heartbeat=LEASE / 4,
            lease=LEASE,
            rule=self.rule,
        )
        member = start_member(config, member_id, port, self.directory, clock_offset=clock_offset)
        self.members.append(member)
        return member

    def live(self) -> list[Member]:
        return [m for m in self.members if m.alive()]

    def shares(self, members: list[Member]) -> list[set[str]]:
        return [m.collected() for m in members]

    def split(self, members: list[Member]) -> bool:
        """Every endpoint collected by exactly one of `members`, each holding some."""
        shares = self.shares(members)
        return (
            all(shares)
            and set().union(*shares) == self.names
            and sum(map(len, shares)) == len(self.names)
        )

    def query(self, sql: str, **params: object) -> list[sa.Row]:
        """Rows of one read of the shared database, as a test sees it from outside."""
        with self.engine.connect() as c:
            return list(c.execute(sa.text(sql), params))

    def unsent(self) -> int:
        """Outbox rows not sent yet (a row is sent once Slack answered and it is recorded)."""
        return self.query("SELECT count(*) FROM outbox WHERE status != 'sent'")[0][0]

    def open_incidents(self) -> int:
        return self.query("SELECT count(*) FROM incidents WHERE status != 'resolved'")[0][0]

    def status(self) -> dict:
        config = self.live()[0].config
        out = subprocess.run(
            [sys.executable, "-m", "reliability", "cluster", "status", "--json", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


@pytest.fixture
def cluster(
    tmp_path: Path,
    pg_databases: Callable[[], str],
    slack: SlackStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Cluster]]:
    monkeypatch.setenv("RELIABILITY_TEST_SLACK_TOKEN", slack.token)
    url = pg_databases()
    db.upgrade(url)
    made: list[Cluster] = []
    with HealthyServer() as server:

        def make(up: int, down: int, *, rule: dict = ENDPOINT_DOWN) -> Cluster:
            eps = endpoints(server.url, up, down)
            made.append(Cluster(tmp_path, url, slack, eps, server, rule))
            return made[-1]

        yield make
        for c in made:
            for m in c.live():  # all asked at once: each takes seconds on a loaded machine
                m.resume()
                m.proc.terminate()
            for m in c.members:
                m.stop()
            c.engine.dispose()
