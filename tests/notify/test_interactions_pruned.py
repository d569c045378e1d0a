"""`handled_interactions` (what makes a retried Slack delivery act once) does not grow
forever: the leader's timers forget clicks older than a day, far beyond Slack's retries, a
small batch per transaction. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from reliability import db
from reliability.cli_support import load_config
from reliability.notify import service
from reliability.notify.models import HandledInteraction


def clicked(session: Session, key: str, at: datetime) -> None:
    assert service.claim_interaction(
        session, key=key, action="acknowledge", incident_id=None, user="U0ANA", now=at
    )
    session.commit()


def kept(session: Session) -> list[str]:
    found = sorted(session.scalars(sa.select(HandledInteraction.key)))
    session.commit()
    return found


def test_old_clicks_are_deleted_oldest_first_a_batch_at_a_time(session: Session, engine):
    now = datetime.now(UTC)
    for hours in (30, 27, 25, 23):
        clicked(session, f"t{hours}", now - timedelta(hours=hours))
    cutoff = now - service.INTERACTION_RETENTION

    with engine.begin() as connection:
        assert service.prune_interactions(connection, before=cutoff, limit=2) == 2
    assert kept(session) == ["t23", "t25"]  # the two oldest went first
    with engine.begin() as connection:
        assert service.prune_interactions(connection, before=cutoff, limit=2) == 1
    assert kept(session) == ["t23"]  # within the day: a retry would still find it

    # A retried delivery of a kept click still acts once.
    assert not service.claim_interaction(
        session, key="t23", action="acknowledge", incident_id=None, user="U0ANA", now=now
    )
    session.rollback()


def test_the_leaders_timers_prune_past_a_batch_and_keep_the_day(
    session: Session, tmp_path: Path, database_url: str
):
    from reliability.daemon import _IncidentTimers, _membership

    now = datetime.now(UTC)
    old = [
        {"key": f"old-{i}", "action": "acknowledge", "incident_id": None, "user": "U0ANA",
         "at": now - timedelta(days=2, seconds=i)}
        for i in range(service.PRUNE_BATCH + 10)
    ]  # fmt: skip
    session.execute(sa.insert(HandledInteraction), old)
    session.commit()
    clicked(session, "recent", now - timedelta(minutes=5))
    path = tmp_path / "reliability.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": database_url}}))
    config = load_config(path)
    membership = _membership(config)
    membership.register()
    membership.step()  # alone on the database: the leader, who runs the timers
    try:
        _IncidentTimers(config, db.LazyEngine(database_url), None, membership)()
    finally:
        membership.stop()

    assert kept(session) == ["recent"]
