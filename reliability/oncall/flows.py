"""What a click on an incident's Slack message does, whichever transport brought it; and
the escalation of incidents nobody acknowledges (`escalate`, run by the daemon's timers).

    SlackActions.handle(click)   acts in one transaction and returns within Slack's 3 s;
                                 what can wait (the dispatcher's edit of the message, private
                                 answers, the runbook's modal and run) goes to a small pool

- Acknowledge and Silence (1 h, the incident's node or else endpoint): anyone in the channel.
- Resolve: users or user groups in `slack.responders`; Run <runbook>: `slack.runbook_users`.
  A refusal answers the clicker privately and is recorded on the incident's timeline.
- Run opens a modal with the plan's summary; its submission queues the run on the
  automatic runner's lane (`runbooks/flows.py`), progress in the thread as for any run.

Idempotent: each click is claimed in the transaction of its action (`handled_interactions`,
keyed by Slack's trigger id), so a delivery Slack retries acts once. The message is edited
in place by the outbox (the acknowledge/resolve event's row), as for a CLI acknowledge. The
timeline records the Slack user id; its name (`users.info`) is read once and kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from reliability.config import ConfigError, OnCallConfig, SlackConfig
from reliability.detect.render import RunbookRequest
from reliability.durations import format_duration
from reliability.incidents import flows as incident_flows
from reliability.incidents import service as incidents
from reliability.incidents import silences
from reliability.incidents.models import EventKind, IncidentEvent, IncidentRead, IncidentStatus
from reliability.maintenance import service as maintenance
from reliability.notify import blocks, outbox
from reliability.notify import service as notify_service
from reliability.notify.base import NotifyError
from reliability.notify.interactions import CONFIRM_RUN, BadInteraction, Click, run_view
from reliability.notify.slack import SlackClient
from reliability.oncall import escalation
from reliability.oncall import service as oncall_service
from reliability.runbooks import service as runs
from reliability.runbooks.errors import RunbookError
from reliability.runbooks.flows import AutoRunner

log = logging.getLogger(__name__)

SILENCE_FOR = timedelta(hours=1)
GROUP_TTL_S = 300.0
AFTER_WORKERS = 4
RUN_WHAT = "run a runbook"
RUNNERS = "slack.runbook_users"
NO_SCOPE = "This incident has no node or endpoint to silence; use `reliability incidents silence`."


class SlackActions:
    """The handlers behind the buttons. `sessions()` gives a new session; `wake` tells the
    dispatcher an outbox row is due; `runbooks` runs what a modal confirms (None: the Run
    button answers that runs are off); `now` is the clock."""

    def __init__(
        self,
        slack: SlackConfig,
        sessions: Callable[[], Session],
        client: SlackClient,
        *,
        wake: Callable[[], None] = lambda: None,
        runbooks: AutoRunner | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._slack, self._sessions, self._client = slack, sessions, client
        self._wake, self._runbooks, self._now = wake, runbooks, now
        self._names: dict[str, str] = {}
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        self._after = ThreadPoolExecutor(AFTER_WORKERS, thread_name_prefix="slack-after")

    def close(self) -> None:
        self._after.shutdown(wait=True, cancel_futures=True)

    def handle(self, click: Click) -> None:
        """Act on one click. BadInteraction for an unknown incident; everything else (a
        refusal, an incident already acknowledged) is answered to the clicker privately."""
        handler = {
            blocks.ACKNOWLEDGE: self._acknowledge,
            blocks.RESOLVE: self._resolve,
            blocks.SILENCE: self._silence,
            blocks.RUN: self._open_run,
            CONFIRM_RUN: self._run,
            blocks.APPROVE: self._decide,
            blocks.REJECT: self._decide,
        }[click.action]
        by = f"@{self.name_of(click.user, click.username)}"
        with self._sessions() as session, session.begin():
            try:
                incident = IncidentRead.model_validate(
                    incidents.get(session, incident_id=click.incident_id)
                )
            except incidents.IncidentNotFound:
                raise BadInteraction(f"no incident {click.incident_id}") from None
            if not notify_service.claim_interaction(
                session,
                key=click.key,
                action=click.action,
                incident_id=incident.id,
                user=click.user,
                now=self._now(),
            ):
                log.info("slack: %s of incident %d already handled", click.action, incident.id)
                return
            answer = handler(session, click, incident, by)
        self._wake()
        if answer:
            self._later(self._tell, click, answer)

    # -- the actions (in the click's transaction; each returns the private answer) ------------

    def _acknowledge(self, session: Session, click: Click, incident: IncidentRead, by: str) -> str:
        if incident.status != IncidentStatus.open:
            return _already(incident)
        incident_flows.acknowledge(
            session, incident_id=incident.id, by=by, data={"slack_user": click.user}
        )
        return ""

    def _resolve(self, session: Session, click: Click, incident: IncidentRead, by: str) -> str:
        if not self.allowed(click.user, self._slack.responders):
            return self._refuse(session, click, incident, by, "resolve", "slack.responders")
        if incident.status == IncidentStatus.resolved:
            return _already(incident)
        incident_flows.resolve(
            session, incident_id=incident.id, by=by, data={"slack_user": click.user}
        )
        return ""

    def _silence(self, session: Session, click: Click, incident: IncidentRead, by: str) -> str:
        scope = blocks.silence_scope(incident)
        if scope is None:
            return NO_SCOPE
        label, value = scope
        silence = silences.create(
            session,
            matchers=[silences.Matcher(label, "=", value)],
            duration=SILENCE_FOR,
            by=by,
            now=self._now(),
            comment=f"from Slack, incident #{incident.id}",
        )
        message = f"silenced {label}={value} for 1 h (silence #{silence.id})"
        incidents.record_event(
            session,
            incident=incidents.get(session, incident_id=incident.id),
            kind=EventKind.silenced,
            at=self._now(),
            actor=by,
            message=message,
            data={"slack_user": click.user, "silence_id": silence.id},
        )
        return f":mute: {message[0].upper()}{message[1:]}, until {silence.ends_at:%H:%M} UTC."

    def _open_run(self, session: Session, click: Click, incident: IncidentRead, by: str) -> str:
        if not self.allowed(click.user, self._slack.runbook_users):
            return self._refuse(
                session, click, incident, by, "run a runbook", "slack.runbook_users"
            )
        request = self._request(session, incident)
        if request is None or self._runbooks is None:
            return "This incident has no runbook that can run from Slack."
        self._later(self._show_plan, click, incident, request)
        return ""

    def _run(self, session: Session, click: Click, incident: IncidentRead, by: str) -> str:
        if not self.allowed(click.user, self._slack.runbook_users):
            return self._refuse(
                session, click, incident, by, "run a runbook", "slack.runbook_users"
            )
        request = self._request(session, incident)
        if request is None or self._runbooks is None:
            return "This incident has no runbook that can run from Slack."
        if incident.status == IncidentStatus.resolved:
            return _already(incident)
        self._later(self._runbooks.run_for, by, incident.id, request)
        return ""

    def _decide(self, session: Session, click: Click, incident: IncidentRead, by: str) -> str:
        """Approve or Reject a runbook's question; the first allowed answer decides."""
        if not self.allowed(click.user, self._slack.runbook_users):
            return self._refuse(session, click, incident, by, "approve a runbook step", RUNNERS)
        assert click.approval_id is not None
        asked = runs.get_approval(session, approval_id=click.approval_id)
        if asked is None or asked.incident_id != incident.id:
            raise BadInteraction(f"no question {click.approval_id} on incident {incident.id}")
        approved = click.action == blocks.APPROVE
        if runs.decide_approval(
            session, approval_id=asked.id, approved=approved, by=by, now=self._now()
        ):
            return ""  # the run says what it does next in the thread
        if asked.decided_by is None:
            return "Too late: nobody answered in time, so the run did not go ahead."
        verdict = "approved" if asked.approved else "rejected"
        return f"Already {verdict} by {asked.decided_by}."

    def _refuse(
        self,
        session: Session,
        click: Click,
        incident: IncidentRead,
        by: str,
        what: str,
        setting: str,
    ) -> str:
        log.warning("slack: %s (%s) may not %s (incident %d)", by, click.user, what, incident.id)
        incidents.record_event(
            session,
            incident=incidents.get(session, incident_id=incident.id),
            kind=EventKind.refused,
            at=self._now(),
            actor=by,
            message=f"may not {what} from Slack (not in {setting})",
            data={"slack_user": click.user, "action": click.action},
        )
        return f":no_entry: You may not {what} here: ask to be added to `{setting}`."

    def _request(self, session: Session, incident: IncidentRead) -> RunbookRequest | None:
        data = notify_service.opening_event_data(session, incident_id=incident.id)
        command = blocks.runbook_command(data, incident.labels)
        if command is None:
            return None
        try:
            name, params = blocks.parse_runbook_command(command)
        except ValueError:
            return None
        return RunbookRequest(name, params, auto=False)

    # -- who ----------------------------------------------------------------------------------

    def name_of(self, user: str, fallback: str) -> str:
        """The user's Slack name, asked once (`users.info`); the payload's handle meanwhile
        if Slack cannot say."""
        with self._lock:
            known = self._names.get(user)
        if known is not None:
            return known
        try:
            name = self._client.user_name(user)
        except NotifyError as exc:
            log.warning("slack: name of %s not read (%s); using %s", user, exc, fallback)
            return fallback
        with self._lock:
            self._names[user] = name
        return name

    def allowed(self, user: str, ids: Sequence[str]) -> bool:
        """Whether `user` is one of `ids` or a member of a user group among them; a group
        Slack cannot list now allows nobody (fail closed)."""
        if user in ids:
            return True
        return any(user in self._members(group) for group in ids if group.startswith("S"))

    def _members(self, group: str) -> frozenset[str]:
        with self._lock:
            cached = self._groups.get(group)
        if cached is not None and time.monotonic() - cached[0] < GROUP_TTL_S:
            return cached[1]
        try:
            members = frozenset(self._client.group_members(group))
        except NotifyError as exc:
            log.warning("slack: members of user group %s not read: %s", group, exc)
            return frozenset()
        with self._lock:
            self._groups[group] = (time.monotonic(), members)
        return members

    # -- after the answer ---------------------------------------------------------------------

    def _later(self, work: Callable[..., object], *args: object) -> None:
        def run() -> None:
            try:
                work(*args)
            except Exception:
                log.exception("slack: work after a click failed")

        self._after.submit(run)

    def _tell(self, click: Click, text: str) -> None:
        if click.channel is None:
            log.info("slack: answer to %s not sent (no channel): %s", click.user, text)
            return
        try:
            self._client.post_ephemeral(click.channel, click.user, text)
        except NotifyError as exc:
            log.warning("slack: answer to %s not sent: %s", click.user, exc)

    def _show_plan(self, click: Click, incident: IncidentRead, request: RunbookRequest) -> None:
        assert self._runbooks is not None and click.trigger_id is not None
        try:
            _, _, plan = self._runbooks.plan(request)
        except (ConfigError, RunbookError) as exc:
            self._tell(click, f"Runbook {request.name} cannot run: {exc}")
            return
        given = " ".join(f"{k}={v}" for k, v in plan.params.items())
        lines = [f"Locks: {', '.join(plan.locks) or 'none'}", "Nothing has run yet."]
        for i, step in enumerate(plan.steps, 1):
            targets = ", ".join(unit.target for unit in step.units)
            where = f" on {targets}" if targets else ""
            lines.append(f"{i}. {step.id} ({step.action}){where}")
        view = run_view(
            incident_id=incident.id,
            channel=click.channel,
            title=f"{request.name} {given}".strip(),
            lines=lines,
        )
        try:
            self._client.open_view(click.trigger_id, view)
        except NotifyError as exc:
            log.warning("slack: runbook confirmation not opened: %s", exc)


def _already(incident: IncidentRead) -> str:
    if incident.status == IncidentStatus.resolved:
        return f"Incident #{incident.id} is already resolved by {incident.resolved_by}."
    return f"Incident #{incident.id} is already acknowledged by {incident.acknowledged_by}."


# Events after which an incident is open and unacknowledged anew: its chain starts over. The
# end of a maintenance window that held its pages is one: nobody was called for it yet.
CHAIN_STARTS = frozenset(
    {EventKind.opened, EventKind.reopened, EventKind.ack_expired, EventKind.maintenance_ended}
)


def escalate(
    session: Session, *, slack: SlackConfig, oncall: OnCallConfig | None, now: datetime
) -> list[IncidentEvent]:
    """Record, notified, the escalation step now due for each open (unacknowledged)
    incident whose severity has a policy: at most one per incident and call, the latest
    due (a silence held the others back; they are not posted late). Acknowledging stops
    the chain, resolving ends it, a silence or a maintenance window covering the incident
    holds it (the window's end starts it over); the
    `oncall` mention is whoever `oncall.service.on_call` names at `now` in the step's
    rotation (default: the first of `oncall.rotations`)."""
    if not slack.escalation:
        return []
    in_force = silences.active(session, now=now)
    windows = maintenance.active(session, now=now)
    recorded = []
    for incident in incidents.list_incidents(session, status=IncidentStatus.open, limit=1000):
        policy = slack.escalation.get(incident.severity.value)
        if (
            policy is None
            or silences.covering(in_force, incident.labels) is not None
            or maintenance.covering(windows, incident.labels) is not None
        ):
            continue
        timeline = incidents.events(session, incident_id=incident.id)
        since = max(e.at for e in timeline if e.kind in CHAIN_STARTS)
        step_due = escalation.due(policy, since=since, now=now)
        done = [
            (e.data["round"], e.data["step"])
            for e in timeline
            if e.kind == EventKind.escalated and e.at >= since and e.data
        ]
        if step_due is None or (done and max(done) >= step_due):
            continue
        round_, index = step_due
        step = policy.steps[index]
        mention, user = step.mention, None
        if mention == "oncall" and oncall is not None:
            rotation = oncall.rotation(step.rotation) if step.rotation else oncall.rotations[0]
            user = oncall_service.on_call(session, rotation=rotation, at=now).user_id
        elif mention is not None:
            user = mention
        after = round_ * (policy.repeat or 0) + step.after
        recorded.append(
            incidents.record_event(
                session,
                incident=incident,
                kind=EventKind.escalated,
                at=now,
                actor="escalation",
                message=f"not acknowledged after {format_duration(after)}",
                data={
                    "round": round_,
                    "step": index,
                    "mention": user,
                    "oncall": mention == "oncall",
                },
            )
        )
    outbox.enqueue(session, events=recorded)
    return recorded
