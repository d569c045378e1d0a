"""Incidents and runbooks: what is open, how fast on-call answers and fixes it, how runbook
runs end, and whether on-call hears about incidents at all (the Slack outbox).

The incident and run numbers are read from the database by the daemon (collect/records.py),
so they count what the CLI and webhooks did too.
"""

from reliability import catalog as c
from reliability.dashboards import links
from reliability.dashboards.panels import Query, new_dashboard, stat, steps, timeseries

# Anything unresolved of this severity is worth a look; a critical one is on fire.
UNRESOLVED = steps((1, "orange"))
# Quantiles over an hour of answers: fewer than that and one slow night is all they show.
WINDOW = "1h"


def quantiles(metric: c.Metric) -> list[Query]:
    bucket = f"{metric.name}_bucket"
    return [
        Query(
            f"histogram_quantile({q}, sum by (severity, le) (increase({bucket}[{WINDOW}])))",
            f"{{{{severity}}}} p{round(q * 100)}",
        )
        for q in (0.5, 0.9)
    ]


incidents = [
    stat(
        "Open incidents by severity",
        Query(
            f'sum by (severity) ({c.INCIDENTS_OPEN.name}{{status="open"}})',
            "{{severity}}",
        ),
        unit="none",
        description="Not acknowledged by anyone yet (an acknowledgement that timed out "
        "counts as open again).",
        thresholds=steps((1, "red")),
        width=12,
    ),
    stat(
        "Acknowledged, not resolved",
        Query(
            f'sum by (severity) ({c.INCIDENTS_OPEN.name}{{status="acknowledged"}})',
            "{{severity}}",
        ),
        unit="none",
        thresholds=UNRESOLVED,
        width=12,
    ),
    timeseries(
        "Unresolved incidents",
        Query(f"sum by (severity, status) ({c.INCIDENTS_OPEN.name})", "{{severity}} {{status}}"),
        unit="none",
        width=24,
    ),
    timeseries(
        f"Time to acknowledge ({WINDOW})",
        *quantiles(c.INCIDENT_TIME_TO_ACKNOWLEDGE),
        unit="s",
        description="From each page (an incident opened or reopened, or its acknowledgement "
        f"ran out) to its acknowledgement, over the acknowledgements of the last {WINDOW}.",
    ),
    timeseries(
        f"Time to resolve ({WINDOW})",
        *quantiles(c.INCIDENT_TIME_TO_RESOLVE),
        unit="s",
        description="From an incident opening (or reopening) to its resolve, over the "
        f"resolves of the last {WINDOW}.",
    ),
    timeseries(
        "Acknowledged and resolved",
        Query(
            f"sum by (severity) "
            f"(increase({c.INCIDENT_TIME_TO_ACKNOWLEDGE.name}_count[$__rate_interval]))",
            "{{severity}} acknowledged",
        ),
        Query(
            f"sum by (severity) "
            f"(increase({c.INCIDENT_TIME_TO_RESOLVE.name}_count[$__rate_interval]))",
            "{{severity}} resolved",
        ),
        unit="none",
        bars=True,
        width=24,
    ),
]

runbooks = [
    timeseries(
        "Runbook runs by outcome",
        Query(
            f"sum by (runbook, status) (increase({c.RUNBOOK_RUNS.name}[$__rate_interval]))",
            "{{runbook}} {{status}}",
        ),
        unit="none",
        description="Runs that ended: succeeded; failed or aborted, with what they changed "
        "undone; undone on request.",
        bars=True,
        width=16,
    ),
    stat(
        "Runs waiting for a human",
        Query(
            f"sum by (runbook, status) "
            f'({c.RUNBOOK_RUNS_UNFINISHED.name}{{status=~"interrupted|undo_failed"}})',
            "{{runbook}} {{status}}",
        ),
        unit="none",
        description="Interrupted runs wait for `reliability runbook resume` or `undo`; a run "
        "whose undo failed left a change behind.",
        thresholds=steps((1, "red")),
        width=8,
    ),
    timeseries(
        "Runs in progress",
        Query(
            f'sum by (runbook) ({c.RUNBOOK_RUNS_UNFINISHED.name}{{status="running"}})',
            "{{runbook}}",
        ),
        unit="none",
        width=24,
    ),
]

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
    uid=links.INCIDENTS_RUNBOOKS,
    title="Incidents and runbooks",
    description="Open incidents, time to acknowledge and resolve, runbook outcomes and the "
    "delivery of incident notifications to Slack.",
    tags=["incidents", "runbooks"],
    variables=[],
    sections=[("Incidents", incidents), ("Runbooks", runbooks), ("Slack outbox", outbox)],
)
