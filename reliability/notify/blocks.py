"""Block Kit rendering of incidents: pure functions from incident fields to Slack content.

An incident has one root message that always shows its current state (posted on open,
replaced with ``chat.update`` on acknowledge, resolve and reopen), and a thread of replies
for everything else (refires, notes, runbook progress). An expired acknowledgement does both:
the root shows the incident open again, and a reply in the thread, also shown in the channel,
pings ``@here``, because an edit notifies nobody. Content comes only from the
incident and its events, never from configuration or the environment, so no secret can leak
into a channel; every piece of it is escaped, so a label value such as ``<!channel>`` cannot
ping anyone.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reliability.incidents.models import IncidentEventRead, IncidentRead, IncidentStatus

Block = dict[str, Any]

RUNBOOK_PREFIX = "reliability runbook run "
# The labels an on-call engineer looks for first, shown as fields in this order.
FIELD_LABELS = ("node", "gpu", "endpoint", "service", "pool")
HIDDEN_LABELS = frozenset({"runbook"})
SEVERITY_ICONS = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}
HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
CONTEXT_LIMIT = 2000
BUTTON_LIMIT = 75
# The buttons' action ids: what notify/interactions.py dispatches on.
ACTIONS_BLOCK = "incident"
ACKNOWLEDGE, RESOLVE, SILENCE, RUN = "acknowledge", "resolve", "silence", "run"
APPROVE, REJECT = "approve", "reject"
SLACK_ID = re.compile(r"[UWS][A-Z0-9]{2,}")
# What the Silence button mutes, the first label the incident has.
SILENCE_LABELS = ("node", "endpoint")


@dataclass(frozen=True)
class Rendered:
    """A Slack message: ``text`` is what notifications and screen readers show."""

    text: str
    blocks: list[Block]


def runbook_command(opening_data: dict[str, Any] | None, labels: dict[str, str]) -> str | None:
    """The suggested ``reliability runbook run ...`` command, if the incident carries one.

    The detect engine stores it under ``runbook`` in the opening event's data; an
    Alertmanager alert may carry it as a label. Anything that is not such a command is
    ignored: a channel is no place to suggest an arbitrary shell line for copy and paste.
    """
    for candidate in ((opening_data or {}).get("runbook"), labels.get("runbook")):
        if isinstance(candidate, str) and candidate.strip().startswith(RUNBOOK_PREFIX):
            return candidate.strip()
    return None


def parse_runbook_command(command: str) -> tuple[str, dict[str, str]]:
    """The runbook's name and parameters in a suggested command (`runbook_command`'s form,
    `reliability runbook run NAME --param k=v ...`); ValueError for anything else."""
    words = shlex.split(command)
    if len(words) < 4 or " ".join(words[:3]) + " " != RUNBOOK_PREFIX:
        raise ValueError(f"not a runbook command: {command!r}")
    name, rest, params = words[3], words[4:], {}
    while rest:
        if rest[0] != "--param" or len(rest) < 2 or "=" not in rest[1]:
            raise ValueError(f"not a runbook command: {command!r}")
        key, _, value = rest[1].partition("=")
        params[key] = value
        rest = rest[2:]
    return name, params


def silence_scope(incident: IncidentRead) -> tuple[str, str] | None:
    """The label and value the Silence button mutes: the incident's node, else endpoint."""
    for label in SILENCE_LABELS:
        if incident.labels.get(label):
            return label, incident.labels[label]
    return None


def root_message(
    incident: IncidentRead,
    *,
    runbook: str | None = None,
    dashboard_url: str | None = None,
    lost: str | None = None,
    buttons: bool = False,
) -> Rendered:
    """The root message for the incident's current state; `lost`: why the incident's earlier
    root message is gone (it is posted again, and says so under its header); `buttons`: an
    unresolved incident's message carries its actions (oncall/flows.py answers them)."""
    blocks: list[Block] = [_header(f"{_headline(incident)}: {incident.title}")]
    if lost:
        blocks.append(
            _context(
                f":warning: The earlier message about this incident was lost "
                f"({_escape(lost)}); it continues here."
            )
        )
    blocks.append({"type": "section", "fields": _fields(incident)})
    if incident.summary:
        blocks.append(_section(_escape(incident.summary)))
    blocks.append(_section(_status_line(incident)))
    if runbook and incident.status != IncidentStatus.resolved:
        blocks.append(_section(f"*Suggested fix*\n```{_escape(runbook)}```"))
    if dashboard_url:
        blocks.append(_section(f"<{dashboard_url}|Open the Grafana dashboard>"))
    if buttons and incident.status != IncidentStatus.resolved:
        blocks.append(_actions(incident, runbook))
    blocks.append(_context(_footer(incident)))
    text = f"[{_headline(incident)}] {incident.title}"
    if incident.summary:
        text += f": {incident.summary}"
    return Rendered(_escape(text), blocks)


def _actions(incident: IncidentRead, runbook: str | None) -> Block:
    """The incident's buttons; each carries the incident's id, the handler the rest."""
    value = str(incident.id)
    shown: list[tuple[str, str, str | None]] = []
    if incident.status == IncidentStatus.open:
        shown.append((ACKNOWLEDGE, "Acknowledge", "primary"))
    shown.append((RESOLVE, "Resolve", None))
    scope = silence_scope(incident)
    if scope is not None:
        shown.append((SILENCE, f"Silence {scope[1]} 1 h", None))
    if runbook:
        shown.append((RUN, f"Run {parse_runbook_command(runbook)[0]}", None))
    elements = []
    for action_id, label, style in shown:
        button = _button(action_id, label, value)
        elements.append(button | ({"style": style} if style else {}))
    return {"type": "actions", "block_id": ACTIONS_BLOCK, "elements": elements}


def code_block(text: str) -> str:
    """Preformatted mrkdwn for a section, escaped and clipped to fit one."""
    return "```" + _clip(_escape(text), SECTION_LIMIT - 6) + "```"


def _button(action_id: str, label: str, value: str) -> Block:
    text = {"type": "plain_text", "text": _clip(label, BUTTON_LIMIT)}
    return {"type": "button", "action_id": action_id, "text": text, "value": value}


def thread_reply(incident: IncidentRead, event: IncidentEventRead) -> Rendered:
    """A reply in the incident's thread for an event that does not change the root (or, for
    a paging event, that needs more than the root's edit)."""
    # These lines say what their event's message says for the CLI's timeline.
    if event.kind == "ack_expired":
        line = _ack_expired_line(event)
    elif event.kind == "silence_ended":
        silence = (event.data or {}).get("silence_id", "?")
        line = (
            f":bell: Silence #{silence} ended {_date(event.at)}; "
            f"this incident is still {incident.status.value}"
        )
    elif event.kind == "maintenance_ended":
        window = (event.data or {}).get("maintenance_id", "?")
        line = (
            f":bell: Maintenance window #{window} ended {_date(event.at)}; "
            f"this incident is still {incident.status.value}"
        )
    elif event.kind == "escalated":
        line = _escalation_line(event)
    elif event.kind == "approval_asked":
        return _approval_question(incident, event)
    else:
        line = _event_line(incident, event)
    return Rendered(_clip(line, SECTION_LIMIT), [_section(line)])


def _escalation_line(event: IncidentEventRead) -> str:
    """Who an escalation step calls: the only mentions besides `ack_expired`'s, built from
    ids the config or `oncall override` validated (and checked again here)."""
    data = event.data or {}
    mention = data.get("mention")
    line = f":rotating_light: {_escape((event.message or 'not acknowledged').capitalize())}"
    if isinstance(mention, str) and SLACK_ID.fullmatch(mention):
        tag = f"<!subteam^{mention}>" if mention.startswith("S") else f"<@{mention}>"
        line += f": {tag}" + (" (on call)" if data.get("oncall") else "")
    elif data.get("oncall"):
        line += ": nobody is on call (no oncall.rotations)"
    return line


def _approval_question(incident: IncidentRead, event: IncidentEventRead) -> Rendered:
    """A runbook's confirm step asking in the thread, with Approve / Reject (their value:
    the incident and the question)."""
    line = (
        f":raising_hand: {_escape(event.actor or 'A runbook')} asks: {_escape(event.message or '')}"
    )
    value = f"{incident.id}:{(event.data or {}).get('approval_id', '')}"
    elements = [
        _button(APPROVE, "Approve", value) | {"style": "primary"},
        _button(REJECT, "Reject", value) | {"style": "danger"},
    ]
    question = [_section(line), {"type": "actions", "block_id": "approval", "elements": elements}]
    return Rendered(_clip(line, SECTION_LIMIT), question)


def _event_line(incident: IncidentRead, event: IncidentEventRead) -> str:
    when = _date(event.at)
    if event.kind == "refired":
        severity = str((event.data or {}).get("severity", incident.severity.value))
        line = f":repeat: Fired again {when} (severity {_escape(severity)})"
    elif event.kind == "note":
        line = f":memo: Note by {_escape(event.actor or 'someone')} {when}"
    else:
        line = f"*{_escape(event.kind.replace('_', ' ').capitalize())}* {when}"
        if event.actor:
            line += f" by {_escape(event.actor)}"
    if event.message:
        line += f"\n{_escape(event.message)}"
    return line


def _ack_expired_line(event: IncidentEventRead) -> str:
    """``@here``, who acknowledged and how long ago: the owner may have been pulled away, so
    the whole channel is asked to pick it up. The only mention this module writes itself."""
    data = event.data or {}
    by = _escape(str(data.get("acknowledged_by") or "someone"))
    line = f"<!here> :alarm_clock: Acknowledged by {by}"
    acknowledged_at = data.get("acknowledged_at")
    if isinstance(acknowledged_at, str):
        since = datetime.fromisoformat(acknowledged_at)
        line += f" {_duration(event.at - since)} ago ({_date(since)})"
    return line + " and still not resolved: open again, needs an owner"


def _headline(incident: IncidentRead) -> str:
    severity = incident.severity.value.upper()
    if incident.status == IncidentStatus.resolved:
        return f"RESOLVED {severity}"
    if incident.status == IncidentStatus.acknowledged:
        return f"ACKNOWLEDGED {severity}"
    return severity


def _icon(incident: IncidentRead) -> str:
    if incident.status == IncidentStatus.resolved:
        return ":white_check_mark:"
    if incident.status == IncidentStatus.acknowledged:
        return ":eyes:"
    return SEVERITY_ICONS.get(incident.severity.value, ":grey_question:")


def _header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": _clip(text, HEADER_LIMIT)}}


def _section(mrkdwn: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(mrkdwn, SECTION_LIMIT)}}


def _context(mrkdwn: str) -> Block:
    element = {"type": "mrkdwn", "text": _clip(mrkdwn, CONTEXT_LIMIT)}
    return {"type": "context", "elements": [element]}


def _fields(incident: IncidentRead) -> list[Block]:
    pairs = [
        ("Severity", f"{_icon(incident)} {incident.severity.value}"),
        ("Status", incident.status.value),
        ("Since", _date(incident.started_at)),
    ]
    pairs += [
        (name.capitalize(), _escape(incident.labels[name]))
        for name in FIELD_LABELS
        if incident.labels.get(name)
    ]
    # Slack allows ten fields in a section; the labels come first in FIELD_LABELS order.
    return [
        {"type": "mrkdwn", "text": _clip(f"*{name}*\n{value}", FIELD_LIMIT)}
        for name, value in pairs[:10]
    ]


def _status_line(incident: IncidentRead) -> str:
    if incident.status == IncidentStatus.resolved and incident.resolved_at is not None:
        lasted = _duration(incident.resolved_at - incident.started_at)
        by = _escape(incident.resolved_by or "unknown")
        return f":white_check_mark: Resolved by {by} after {lasted} ({_date(incident.resolved_at)})"
    if incident.status == IncidentStatus.acknowledged and incident.acknowledged_at is not None:
        by = _escape(incident.acknowledged_by or "unknown")
        return f":eyes: Acknowledged by {by} {_date(incident.acknowledged_at)}"
    line = f"{_icon(incident)} Open since {_date(incident.started_at)}"
    if incident.reopen_count:
        line += f", reopened {_times(incident.reopen_count)}"
    return line


def _footer(incident: IncidentRead) -> str:
    others = sorted(
        (name, value)
        for name, value in incident.labels.items()
        if name not in FIELD_LABELS and name not in HIDDEN_LABELS
    )
    parts = [f"Incident #{incident.id}", f"source {incident.source}"]
    parts.append(f"fired {_times(incident.occurrences)}")
    parts += [f"{name}={value}" for name, value in others]
    return _escape(" · ".join(parts))


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _date(at: datetime) -> str:
    """A time every reader sees in their own zone; the fallback is UTC."""
    fallback = at.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _escape(text: str) -> str:
    # Slack's three control characters: unescaped, `<!channel>` in a label would ping everyone.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
