"""The real Alertmanager, on loopback, routing to the intake served by uvicorn: an alert
posted to it becomes an incident, and its resolution resolves the incident.

Runs on SQLite and PostgreSQL (see tests/conftest.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from pydantic import SecretStr

from reliability import db
from reliability.collect.snapshot import Snapshot
from reliability.incidents.models import Incident, IncidentRead, IncidentStatus, Severity
from reliability.intake.alertmanager import PATH, alertmanager_route
from reliability.testing.alertmanager import Alertmanager, binary, rfc3339, serve_app
from reliability.testing.services import service_missing
from reliability.web import build_app

TOKEN = "real-alertmanager-token-8d41"
# group_wait 100ms, group_interval 1s: seconds are plenty, the bound only stops a hang.
WAIT_S = 20.0


def wait_for(engine: sa.Engine, done: Callable[[list[IncidentRead]], bool]) -> list[IncidentRead]:
    """Poll the incidents until `done` holds; fail after WAIT_S."""
    factory = db.session_factory(engine)
    deadline = time.monotonic() + WAIT_S
    while True:
        with factory() as session:
            found = [IncidentRead.model_validate(i) for i in session.scalars(sa.select(Incident))]
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_an_alert_through_the_real_alertmanager_opens_then_resolves_an_incident(
    engine: sa.Engine, tmp_path: Path
):
    executable = binary()
    if executable is None:
        service_missing("Alertmanager (Debian package prometheus-alertmanager) not installed")
        return
    route = alertmanager_route(
        db.session_factory(engine), token=SecretStr(TOKEN), reopen_window=timedelta(minutes=10)
    )
    app = build_app(Snapshot(), readiness=[], routes=[route])
    alert = {
        "labels": {"alertname": "GpuHot", "severity": "critical", "node": "gpu-3"},
        "annotations": {"summary": "GPU 2 at 91 °C", "description": "above slowdown for 5m"},
        "generatorURL": "http://prometheus.invalid/graph",
    }

    with (
        serve_app(app) as url,
        Alertmanager(tmp_path, url + PATH, token=TOKEN, executable=executable) as am,
    ):
        am.post_alerts([alert])
        found = wait_for(engine, lambda found: len(found) == 1)
        assert len(found) == 1, f"no incident after {WAIT_S}s; Alertmanager log:\n{am.log()}"
        [incident] = found
        assert incident.fingerprint.startswith("alertmanager:")
        assert (incident.title, incident.severity) == ("GpuHot: GPU 2 at 91 °C", Severity.critical)
        assert incident.labels == alert["labels"]

        ended = datetime.now(UTC) - timedelta(seconds=1)
        am.post_alerts([alert | {"endsAt": rfc3339(ended)}])
        [incident] = wait_for(engine, lambda found: found[0].status == IncidentStatus.resolved)
        assert incident.status == IncidentStatus.resolved, am.log()
        assert incident.resolved_by == "alertmanager"
