"""The batch writer: what arrives together is committed together, each item all or nothing,
nothing accepted is lost when it closes, and a full queue or a dead database says so."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability import db
from reliability.incidents import flows
from reliability.incidents.models import Incident, IncidentEvent
from reliability.notify.models import OutboxRow
from reliability.writer import BatchWriter, WriterBusy, WriterClosed


def opens(fingerprint: str, title: str = "GPU 0 on node1 fell off the bus") -> Callable[..., Any]:
    def work(session: Session) -> str:
        return flows.open_or_update(
            session, fingerprint=fingerprint, title=title, severity="critical", source="test"
        ).action

    return work


def count(engine: sa.Engine, model: type) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(model)) or 0


@pytest.fixture
def commits(engine: sa.Engine) -> Iterator[list[int]]:
    seen: list[int] = []

    def committed(_connection: Any) -> None:
        seen.append(1)

    sa.event.listen(engine, "commit", committed)
    yield seen
    sa.event.remove(engine, "commit", committed)


def held(writer: BatchWriter, gate: threading.Event) -> None:
    """Keep the writer busy until `gate` is set; return once it is."""
    started = threading.Event()

    def work(_session: Session) -> None:
        started.set()
        assert gate.wait(10)

    writer.submit(work)
    assert started.wait(10)


def test_items_that_arrive_together_share_one_commit_and_each_gets_its_result(engine, commits):
    writer = BatchWriter(db.session_factory(engine))
    gate = threading.Event()
    held(writer, gate)
    futures = [writer.submit(opens(f"fp-{i}")) for i in range(50)]
    gate.set()

    assert [f.result(10) for f in futures] == ["opened"] * 50
    assert writer.close()
    # The held item's transaction, then one for the 50 that queued behind it.
    assert len(commits) <= 2
    assert count(engine, Incident) == 50
    assert count(engine, IncidentEvent) == 50
    assert count(engine, OutboxRow) >= 50


def test_a_bad_item_fails_alone_and_the_others_of_its_batch_are_written(engine):
    writer = BatchWriter(db.session_factory(engine))
    gate = threading.Event()
    held(writer, gate)
    good = [writer.submit(opens(f"fp-{i}")) for i in range(5)]
    bad = writer.submit(opens("fp-bad", title="  "))
    gate.set()

    assert [f.result(10) for f in good] == ["opened"] * 5
    with pytest.raises(ValueError, match="title"):
        bad.result(10)
    writer.close()
    assert count(engine, Incident) == 5


def test_closing_writes_everything_accepted_and_refuses_what_comes_after(engine):
    writer = BatchWriter(db.session_factory(engine))
    futures = [writer.submit(opens(f"fp-{i}")) for i in range(100)]

    assert writer.close()
    assert all(f.done() and f.result() == "opened" for f in futures)
    assert count(engine, Incident) == 100
    with pytest.raises(WriterClosed):
        writer.submit(opens("fp-late"))


def test_a_full_queue_refuses_at_once_instead_of_blocking(engine):
    writer = BatchWriter(db.session_factory(engine), max_queue=3)
    gate = threading.Event()
    held(writer, gate)
    queued: list[Future[Any]] = []
    try:
        with pytest.raises(WriterBusy, match="3 items already wait"):
            for i in range(10):
                queued.append(writer.submit(opens(f"fp-{i}")))
    finally:
        gate.set()
    assert len(queued) == 3
    assert writer.close()
    assert count(engine, Incident) == len(queued)


def test_an_unreachable_database_fails_every_waiting_item_with_its_reason(caplog):
    # Port 1 on loopback: connection refused at once.
    database = db.LazyEngine("postgresql+psycopg://postgres@127.0.0.1:1/reliability")
    writer = BatchWriter(database.session, name="intake writer")
    futures = [writer.submit(opens(f"fp-{i}")) for i in range(5)]

    for future in futures:
        with pytest.raises(sa.exc.OperationalError):
            future.result(30)
    assert writer.close()
    failures = [r for r in caplog.records if r.name == "reliability.writer"]
    assert failures and "intake writer: a transaction of" in failures[0].getMessage()
