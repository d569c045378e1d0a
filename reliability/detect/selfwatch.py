"""The alerts that watch the daemons themselves, for Prometheus to evaluate: when every
daemon is dead, or the database is, no rule of theirs can fire, so these must page
through Alertmanager alone (its own `slack_configs`, not the daemon's webhook).

- `ReliabilityDaemonDown`: a daemon Prometheus scrapes (`cluster.scrape_job`) stopped
  answering (one alert per `instance`), or fewer daemons are up than
  `cluster.expected_members`, as Prometheus scrapes them or as the best-informed daemon
  counts live members in the database (one alert without `instance`; it also fires
  when Prometheus scrapes no daemon at all).
- `ReliabilityNoLeader`: daemons answer, but none holds the leader lease.
- `ReliabilityDatabaseDown`: a daemon's database heartbeat fails.
- `Watchdog`: always firing, for a dead man's switch outside: when it stops arriving,
  Prometheus or Alertmanager is down and nothing can page.

The first three carry `component: reliability` (routed to Slack directly); none carries
`rule`, the label of the exported detection rules whose incidents the daemon opens itself.
"""

from __future__ import annotations

import json

from reliability import catalog
from reliability.config import Config

GROUP_NAME = "reliability-daemons"
COMPONENT = {"component": "reliability"}
DOWN_FOR = "1m"


def _string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a PromQL string literal


def rules(config: Config) -> list[dict[str, object]]:
    """The group's alerting rules, in the rules file's key order."""
    job, expected = config.cluster.scrape_job, config.cluster.expected_members
    up = f"up{{job={_string(job)}}}"
    members = catalog.CLUSTER_MEMBERS.name
    check = (
        "On that host: `systemctl status reliability` or `docker compose ps`, and its log "
        "(`journalctl -u reliability`); `reliability cluster status` lists the members."
    )
    return [
        {
            "alert": "ReliabilityDaemonDown",
            "expr": (
                f"{up} == 0"
                f" or (count({up} == 1) or vector(0)) < {expected}"
                f" or max({members}) < {expected}"
            ),
            "for": DOWN_FOR,
            "labels": {"severity": "critical", **COMPONENT},
            "annotations": {
                "summary": (
                    "{{ if $labels.instance }}reliability daemon {{ $labels.instance }} is down"
                    f"{{{{ else }}}}{{{{ $value }}}} of {expected} reliability daemons running"
                    "{{ end }}"
                ),
                "description": (
                    "{{ if $labels.instance }}Prometheus has not scraped the daemon at "
                    f"{{{{ $labels.instance }}}} (job {job}) for {DOWN_FOR}."
                    f"{{{{ else }}}}Fewer daemons than cluster.expected_members ({expected}) "
                    f"are up, as Prometheus scrapes job {job} or as they count each other "
                    "in the database.{{ end }} The others take its nodes and endpoints; "
                    "with none left nothing watches the fleet and no incident is paged. "
                    f"{check} Start it again, or lower cluster.expected_members if it was "
                    "retired."
                ),
            },
        },
        {
            "alert": "ReliabilityNoLeader",
            "expr": f"sum({catalog.CLUSTER_LEADER.name}) < 1",
            "for": DOWN_FOR,
            "labels": {"severity": "critical", **COMPONENT},
            "annotations": {
                "summary": "no reliability daemon holds the leader lease",
                "description": (
                    f"Daemons answer, but none has been leader for {DOWN_FOR}: the "
                    "database-read metrics, acknowledgement timeouts, silences' ends and "
                    "soak promotions are not running. `reliability cluster status` shows "
                    "the members and their heartbeats; look for lease errors in their logs "
                    "and at the database (ReliabilityDatabaseDown)."
                ),
            },
        },
        {
            "alert": "ReliabilityDatabaseDown",
            "expr": f"{catalog.DATABASE_UP.name} == 0",
            "for": DOWN_FOR,
            "labels": {"severity": "critical", **COMPONENT},
            "annotations": {
                "summary": "reliability daemon {{ $labels.instance }} cannot reach its database",
                "description": (
                    "The database heartbeat of the daemon at {{ $labels.instance }} has "
                    f"failed for {DOWN_FOR}: it cannot record incidents, send pages or run "
                    "runbooks, and its /readyz says why. Check PostgreSQL (`pg_isready`, its "
                    "log, its disk) and the network from that host."
                ),
            },
        },
        {
            "alert": "Watchdog",
            "expr": "vector(1)",
            "labels": {"severity": "none"},
            "annotations": {
                "summary": "the alerting pipeline is working (always firing)",
                "description": (
                    "Always firing, so that a dead man's switch outside (a heartbeat check "
                    "of your paging service) hears from Alertmanager at every "
                    "repeat_interval. When the switch stops hearing it, Prometheus, "
                    "Alertmanager or the network between them is down and nothing else "
                    "can page: restore them first."
                ),
            },
        },
    ]
