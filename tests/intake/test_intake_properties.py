"""Whatever a client sends the webhook, the answer is 200 or a 4xx with a reason: never a
5xx or a traceback. Hypothesis builds the bodies from Alertmanager's own vocabulary (a
real webhook with parts replaced by anything JSON can hold) and from raw bytes; bounded to
run in seconds."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.testclient import TestClient

from reliability import db
from reliability.collect.snapshot import Snapshot
from reliability.intake.alertmanager import PATH, alertmanager_route
from reliability.testing.alertmanager import alert_payload, fingerprint_of, webhook_payload
from reliability.web import build_app
from reliability.writer import BatchWriter

TOKEN = "intake-property-token-0b7e"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

WORDS = [
    *("version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels"),
    *("commonLabels", "commonAnnotations", "externalURL", "alerts", "labels", "annotations"),
    *("startsAt", "endsAt", "generatorURL", "fingerprint", "alertname", "severity", "node"),
]
JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=False),
        st.sampled_from(
            ["4", "firing", "resolved", "2026-12-03T12:00:00Z", "0001-01-01T00:00:00Z"]
        ),
        st.text(max_size=30),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(WORDS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=30,
)
SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ANSWERS = {200, 400, 413, 415}


@pytest.fixture
def client(engine: sa.Engine) -> Iterator[TestClient]:
    route = alertmanager_route(
        BatchWriter(db.session_factory(engine)),
        token=SecretStr(TOKEN),
        reopen_window=timedelta(minutes=10),
    )
    with TestClient(build_app(Snapshot(), readiness=[], routes=[route])) as client:
        yield client


def _replace(document: Any, path: list[int], value: Any) -> Any:
    """`document` with the node `path` picks (indices into each container) set to `value`."""
    if not path or not isinstance(document, dict | list) or not document:
        return value
    items = list(document.items()) if isinstance(document, dict) else list(enumerate(document))
    key, child = items[path[0] % len(items)]
    replaced = _replace(child, path[1:], value)
    if isinstance(document, dict):
        return {**document, key: replaced}
    return [replaced if i == key else c for i, c in enumerate(document)]


@SETTINGS
@given(
    path=st.lists(st.integers(min_value=0, max_value=20), max_size=5),
    value=JSON,
)
def test_a_webhook_with_any_part_replaced_is_stored_or_refused(client, caplog, path, value):
    caplog.set_level(logging.WARNING, logger="reliability")
    webhook = webhook_payload([alert_payload(fingerprint_of(7)), alert_payload(fingerprint_of(9))])
    body = json.dumps(_replace(webhook, path, value)).encode()

    response = client.post(PATH, content=body, headers=HEADERS)

    assert response.status_code in ANSWERS, response.text
    assert "Traceback" not in caplog.text


@SETTINGS
@given(
    body=st.one_of(
        st.binary(max_size=300),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"]" * n),
    )
)
def test_any_body_is_stored_or_refused(client, body):
    response = client.post(PATH, content=body, headers=HEADERS)
    assert response.status_code in ANSWERS, response.text
    assert "error" in response.json() or response.status_code == 200
