"""Incidents and runbooks: does on-call hear about incidents (the Slack outbox)."""

from reliability import catalog as c
from reliability.dashboards.panels import Query, new_dashboard, stat, timeseries

outbox = [
    stat(
        "Notifications waiting",
        Query(c.OUTBOX_PENDING.name, "waiting"),
        unit="none",
        width=12,
    ),
    stat(
        "Oldest waiting notification",
        Query(c.OUTBOX_OLDEST_PENDING_AGE.name, "age"),
        unit="s",
        description="0 when nothing waits; growing means on-call is not being told.",
        width=12,
    ),
    timeseries(
        "Outbox backlog",
        Query(c.OUTBOX_PENDING.name, "waiting"),
        unit="none",
    ),
    timeseries(
        "Outbox rows finished by status",
        Query(
            f"sum by (status) (increase({c.OUTBOX_ROWS.name}[$__rate_interval]))",
            "{{status}}",
        ),
        unit="none",
        bars=True,
    ),
    timeseries(
        "Slack call failures by reason",
        Query(
            f"sum by (reason) (increase({c.SLACK_CALL_FAILURES.name}[$__rate_interval]))",
            "{{reason}}",
        ),
        unit="none",
        description="rate_limited and transient failures are retried; permanent ones are not.",
        bars=True,
        width=24,
    ),
]

dashboard = new_dashboard(
    uid="reliability-incidents-runbooks",
    title="Incidents and runbooks",
    description="Delivery of incident notifications to Slack.",
    tags=["incidents"],
    variables=[],
    sections=[("Slack outbox", outbox)],
)
