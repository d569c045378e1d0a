"""Escalation policies (`slack.escalation`): which step of an unacknowledged incident's
chain is due, from the clock alone. `flows.escalate` records it; this module is pure."""

from __future__ import annotations

from datetime import datetime

from reliability.config.models import EscalationPolicy


def due(policy: EscalationPolicy, *, since: datetime, now: datetime) -> tuple[int, int] | None:
    """The latest (round, step) due at `now` for an incident unacknowledged since `since`;
    None before the first. Rounds after the first exist only with `repeat`."""
    elapsed = (now - since).total_seconds()
    if elapsed < policy.steps[0].after:
        return None
    round_ = int(elapsed // policy.repeat) if policy.repeat else 0
    into = elapsed - round_ * (policy.repeat or 0)
    started = [i for i, step in enumerate(policy.steps) if step.after <= into]
    if not started:  # a new round whose first step is not due yet: the last one's is
        return round_ - 1, len(policy.steps) - 1
    return round_, started[-1]
