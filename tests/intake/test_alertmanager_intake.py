"""POST /api/v1/alertmanager: every Alertmanager alert becomes an incident, updated while it
repeats and resolved when it resolves; bad input is refused with a JSON error, one log line
and nothing written.

Every test with a database runs on SQLite and PostgreSQL (see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.testclient import TestClient

from reliability import db
from reliability.collect.snapshot import Snapshot
from reliability.config import Config
from reliability.incidents import service
from reliability.incidents.models import (
    Incident,
    IncidentEvent,
    IncidentRead,
    IncidentStatus,
    Severity,
)
from reliability.intake import build_routes
from reliability.intake.alertmanager import PATH, alertmanager_route
from reliability.intake.flows import incident_severity, incident_title
from reliability.intake.http import MAX_BODY_BYTES
from reliability.intake.models import AlertmanagerAlert
from reliability.testing.alertmanager import alert_payload, fingerprint_of, webhook_payload
from reliability.web import build_app
from reliability.writer import BatchWriter

TOKEN = "intake-test-token-5f0c2a9e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRONG_TOKEN = "not-the-token-31337"
FP_A, FP_B, FP_C, FP_D = (fingerprint_of(n) for n in (0xA, 0xB, 0xC, 0xD))
NOTHING = {"opened": 0, "updated": 0, "reopened": 0, "resolved": 0, "unknown_resolved": 0}


@pytest.fixture
def client(engine: sa.Engine) -> Iterator[TestClient]:
    """The daemon's app with the intake mounted on the test database."""
    route = alertmanager_route(
        BatchWriter(db.session_factory(engine)),
        token=SecretStr(TOKEN),
        reopen_window=timedelta(minutes=10),
    )
    with TestClient(build_app(Snapshot(), readiness=[], routes=[route])) as client:
        yield client


def post(client: TestClient, alerts: list[dict[str, Any]]) -> dict[str, int]:
    response = client.post(PATH, json=webhook_payload(alerts), headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def incidents(engine: sa.Engine) -> list[IncidentRead]:
    with db.session_factory(engine)() as session:
        rows = session.scalars(sa.select(Incident).order_by(Incident.id))
        return [IncidentRead.model_validate(row) for row in rows]


def rows_written(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return sum(
            connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0
            for table in (Incident.__table__, IncidentEvent.__table__)
        )


def intake_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("reliability.intake")]


# Alerts into incidents


def test_a_firing_alert_opens_an_incident_from_its_labels_and_annotations(client, engine):
    alert = alert_payload(
        FP_A,
        labels={"alertname": "GpuHot", "severity": "critical", "node": "gpu-3", "gpu": "2"},
        annotations={"summary": "GPU 2 at 91 °C", "description": "above slowdown for 5m"},
    )

    assert post(client, [alert]) == {**NOTHING, "opened": 1}

    [incident] = incidents(engine)
    assert incident.fingerprint == f"alertmanager:{FP_A}"
    assert (incident.source, incident.status) == ("alertmanager", IncidentStatus.open)
    assert incident.title == "GpuHot: GPU 2 at 91 °C"
    assert incident.severity == Severity.critical
    assert incident.labels == alert["labels"]
    assert incident.summary == "above slowdown for 5m"
    assert incident.occurrences == 1


def test_a_repeated_alert_updates_its_one_incident(client, engine):
    alert = alert_payload(FP_A)
    post(client, [alert])

    assert post(client, [alert]) == {**NOTHING, "updated": 1}

    [incident] = incidents(engine)
    assert incident.occurrences == 2
    assert incident.status == IncidentStatus.open


def test_a_resolved_alert_resolves_its_incident_when_it_arrives(client, engine):
    post(client, [alert_payload(FP_A)])
    before = datetime.now(UTC)

    counts = post(
        client, [alert_payload(FP_A, status="resolved", ends_at=before - timedelta(minutes=5))]
    )

    assert counts == {**NOTHING, "resolved": 1}
    [incident] = incidents(engine)
    assert incident.status == IncidentStatus.resolved
    assert incident.resolved_by == "alertmanager"
    # Our receipt, not the sender's endsAt: never before the incident started.
    assert before <= incident.resolved_at <= datetime.now(UTC)


def test_a_mixed_webhook_opens_updates_and_resolves_in_one_go(client, engine):
    post(client, [alert_payload(FP_A), alert_payload(FP_B)])

    counts = post(
        client,
        [
            alert_payload(FP_A, status="resolved", ends_at=datetime.now(UTC)),
            alert_payload(FP_B),
            alert_payload(FP_C),
            alert_payload(FP_D, status="resolved", ends_at=datetime.now(UTC)),
        ],
    )

    assert counts == {
        "opened": 1,
        "updated": 1,
        "reopened": 0,
        "resolved": 1,
        "unknown_resolved": 1,
    }
    status = {i.fingerprint.removeprefix("alertmanager:"): i.status for i in incidents(engine)}
    assert status == {
        FP_A: IncidentStatus.resolved,
        FP_B: IncidentStatus.open,
        FP_C: IncidentStatus.open,
    }


def test_an_alert_firing_again_soon_after_resolving_reopens_its_incident(client, engine):
    post(client, [alert_payload(FP_A)])
    post(client, [alert_payload(FP_A, status="resolved", ends_at=datetime.now(UTC))])

    assert post(client, [alert_payload(FP_A)]) == {**NOTHING, "reopened": 1}

    [incident] = incidents(engine)
    assert (incident.status, incident.reopen_count) == (IncidentStatus.open, 1)


@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("critical", Severity.critical),
        ("page", Severity.critical),
        ("Warning", Severity.warning),
        ("info", Severity.info),
        ("none", Severity.info),
        ("whatever", Severity.warning),
        (None, Severity.warning),
    ],
)
def test_severity_label_maps_to_an_incident_severity(label, severity):
    labels = {"alertname": "X"} | ({"severity": label} if label else {})
    alert = AlertmanagerAlert.model_validate(alert_payload(FP_A, labels=labels))
    assert incident_severity(alert) == severity


def test_without_a_summary_the_title_is_the_alert_name():
    alert = AlertmanagerAlert.model_validate(alert_payload(FP_A, labels={"alertname": "NodeDown"}))
    assert incident_title(alert) == "NodeDown"


# Bad input


def _valid_body(**changes: Any) -> bytes:
    payload = webhook_payload([alert_payload(FP_A)]) | changes
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _alert_without_fingerprint() -> bytes:
    alert = alert_payload(FP_A)
    del alert["fingerprint"]
    return json.dumps(webhook_payload([alert])).encode()


def _oversized() -> bytes:
    """A valid webhook that would be stored but for its size."""
    big = alert_payload(FP_A, annotations={"description": "x" * MAX_BODY_BYTES})
    return json.dumps(webhook_payload([big])).encode()


@dataclass(frozen=True)
class BadRequest:
    name: str
    status: int
    error: str
    body: bytes = field(default_factory=_valid_body)
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    content_type: str | None = "application/json"
    chunked: bool = False

    def send(self, client: TestClient):
        headers = dict(self.headers)
        if self.content_type:
            headers["Content-Type"] = self.content_type
        # An iterator is sent chunked, with no Content-Length to trust.
        content = iter([self.body[i : i + 65536] for i in range(0, len(self.body), 65536)])
        return client.post(PATH, content=content if self.chunked else self.body, headers=headers)


BAD_REQUESTS = [
    BadRequest("malformed JSON", 400, "malformed JSON", body=b'{"version": "4", "alerts": ['),
    BadRequest("body not UTF-8", 400, "malformed JSON", body=b"\xff\xfe{}"),
    BadRequest("nested 100,000 deep", 400, "malformed JSON", body=b"[" * 100_000),
    BadRequest(
        "a label nested 500 deep",
        400,
        "not an Alertmanager",
        body=_valid_body(commonLabels={"team": _nested(500)}),
    ),
    BadRequest("wrong version", 400, "not an Alertmanager", body=_valid_body(version="3")),
    BadRequest("no alerts field", 400, "not an Alertmanager", body=_valid_body(alerts=None)),
    BadRequest("alert without fingerprint", 400, "not an", body=_alert_without_fingerprint()),
    BadRequest("a JSON list", 400, "not an Alertmanager", body=b"[]"),
    BadRequest("no token", 401, "missing bearer token", headers={}),
    BadRequest(
        "token without scheme",
        401,
        "missing bearer token",
        headers={"Authorization": WRONG_TOKEN},
    ),
    BadRequest(
        "wrong bearer token",
        401,
        "wrong bearer token",
        headers={"Authorization": f"Bearer {WRONG_TOKEN}"},
    ),
    BadRequest(
        "basic auth", 401, "missing bearer token", headers={"Authorization": f"Basic {TOKEN}"}
    ),
    BadRequest(
        "form body", 415, "application/json", content_type="application/x-www-form-urlencoded"
    ),
    BadRequest("no content type", 415, "application/json", content_type=None),
    BadRequest("over 1 MB", 413, "body is over", body=_oversized()),
    BadRequest("over 1 MB, chunked", 413, "body is over", body=_oversized(), chunked=True),
]


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=lambda bad: bad.name)
def test_bad_input_is_refused_with_a_json_error_a_log_line_and_nothing_written(
    bad: BadRequest, client, engine, caplog
):
    caplog.set_level(logging.INFO, logger="reliability")

    response = bad.send(client)

    assert response.status_code == bad.status
    assert response.headers["content-type"] == "application/json"
    assert bad.error in response.json()["error"]
    assert rows_written(engine) == 0
    [record] = intake_records(caplog)
    assert record.levelno == logging.WARNING
    assert f"refused with {bad.status}" in record.getMessage()
    assert TOKEN not in caplog.text
    assert WRONG_TOKEN not in caplog.text


def test_a_wrong_payload_names_every_bad_field(client):
    payload = webhook_payload([alert_payload(FP_A, status="burning")]) | {"version": "3"}
    del payload["alerts"][0]["labels"]
    response = client.post(PATH, json=payload, headers=AUTH)

    assert response.status_code == 400
    details = response.json()["details"]
    assert any(d.startswith("version:") for d in details)
    assert any(d.startswith("alerts.0.status:") for d in details)
    assert any(d.startswith("alerts.0.labels:") for d in details)


def test_a_webhook_failing_part_way_writes_nothing_and_asks_for_a_retry(
    client, engine, monkeypatch, caplog
):
    def locked(*_args: Any, **_kwargs: Any) -> None:
        raise OperationalError("UPDATE incidents ...", {}, Exception("database is locked"))

    monkeypatch.setattr(service, "resolve_fingerprint", locked)
    alerts = [
        alert_payload(FP_A),
        alert_payload(FP_B, status="resolved", ends_at=datetime.now(UTC)),
    ]

    response = client.post(PATH, json=webhook_payload(alerts), headers=AUTH)

    # 5xx: Alertmanager retries it; the first alert's incident was rolled back with the rest.
    assert response.status_code == 503
    assert response.json()["details"] == ["database is locked"]
    assert rows_written(engine) == 0
    assert "refused with 503" in intake_records(caplog)[0].getMessage()


# No token, no database, an endless body: what the daemon does in a bad situation


def test_without_a_configured_token_the_intake_refuses_everyone(caplog):
    route = alertmanager_route(
        BatchWriter(_no_database), token=None, reopen_window=timedelta(minutes=10)
    )
    with TestClient(Starlette(routes=[route])) as client:
        response = client.post(PATH, json=webhook_payload([alert_payload(FP_A)]), headers=AUTH)

    assert response.status_code == 503
    assert "no token configured" in response.json()["error"]
    assert "webhook_token_env" in intake_records(caplog)[0].getMessage()


def test_an_unreachable_database_answers_503_so_alertmanager_retries(caplog):
    # Port 1 on loopback: connection refused at once. The engine is made on first use, so
    # building the route does not need the database.
    sessions = db.LazyEngine("postgresql+psycopg://postgres@127.0.0.1:1/reliability").session
    route = alertmanager_route(
        BatchWriter(sessions), token=SecretStr(TOKEN), reopen_window=timedelta(0)
    )
    with TestClient(Starlette(routes=[route])) as client:
        response = client.post(PATH, json=webhook_payload([alert_payload(FP_A)]), headers=AUTH)

    assert response.status_code == 503
    assert response.json()["error"] == "database unavailable, retry later"
    assert "refused with 503" in intake_records(caplog)[0].getMessage()


def test_an_endless_body_is_cut_off_at_the_limit_not_read_to_its_end():
    chunk = b" " * 65536
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        if pulled > 1000:  # 65 MB: the test failed; stop rather than hang
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    route = alertmanager_route(
        BatchWriter(_no_database), token=SecretStr(TOKEN), reopen_window=timedelta(0)
    )
    asyncio.run(Starlette(routes=[route])(_scope(), receive, send))

    assert sent[0]["status"] == 413
    assert pulled <= MAX_BODY_BYTES // len(chunk) + 1


def _scope() -> dict[str, Any]:
    headers = [
        (b"authorization", f"Bearer {TOKEN}".encode()),
        (b"content-type", b"application/json"),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 9464),
    }


def _no_database():
    raise AssertionError("a refused request must not open a session")


# Wiring from the config, as the daemon does it


def test_the_daemon_routes_use_the_configured_database_and_token(database_url, engine, monkeypatch):
    monkeypatch.setenv("RELIABILITY_WEBHOOK_TOKEN", TOKEN)
    config = Config(
        database={"url": database_url}, http={"webhook_token_env": "RELIABILITY_WEBHOOK_TOKEN"}
    )

    with TestClient(Starlette(routes=build_routes(config))) as client:
        assert post(client, [alert_payload(FP_A)]) == {**NOTHING, "opened": 1}

    assert [i.fingerprint for i in incidents(engine)] == [f"alertmanager:{FP_A}"]


def test_the_daemon_warns_at_start_when_no_token_is_configured(caplog):
    build_routes(Config(database={"url": "sqlite:///:memory:"}))

    assert "answers 503 to everyone" in intake_records(caplog)[0].getMessage()
