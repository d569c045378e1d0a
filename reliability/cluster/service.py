"""Membership and the leader lease, in the database only (PostgreSQL; SQLite is one daemon).

Every time here is the server's `now()`, and every comparison is made by the server: a
member is live while `now() - heartbeat_at < lease`, the lease is held until `expires_at`.
Functions take the caller's session and keyword-only arguments; each call is meant to be
its own short transaction (the heartbeat's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from reliability.cluster.models import LEADER, Lease, Member


class DuplicateMember(Exception):
    """Another live daemon registered with this member id."""

    def __init__(self, member_id: str, host: str, pid: int, age: float) -> None:
        super().__init__(
            f"member id {member_id!r} is already live: pid {pid} on {host} (heartbeat "
            f"{age:.1f}s ago). Give each daemon its own `cluster.member_id`, or stop the other."
        )


@dataclass(frozen=True, slots=True)
class MemberRead:
    member_id: str
    host: str
    http: str
    pid: int
    started_at: datetime
    age: float  # seconds since its last heartbeat, by the database's clock
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Beat:
    """What one heartbeat learned: the live members, and the server's time (the member
    compares it with its own clock to find a host clock far off)."""

    members: tuple[MemberRead, ...]
    server_now: datetime


@dataclass(frozen=True, slots=True)
class LeaseRead:
    holder: str | None
    epoch: int
    expires_in: float | None  # seconds, by the database's clock; <= 0: expired
    members: tuple[str, ...]
    rebalanced_at: datetime | None
    rebalanced_ago: float | None


def _span(seconds: float) -> sa.ColumnElement[timedelta]:
    return sa.literal(timedelta(seconds=seconds), sa.Interval())


def _age(column: sa.ColumnElement[datetime]) -> sa.ColumnElement[float]:
    return sa.extract("epoch", sa.func.now() - column)


def register(
    session: Session,
    *,
    member_id: str,
    incarnation: str,
    host: str,
    http: str,
    pid: int,
    lease: float,
) -> None:
    """Join (or join again, after a pause that outlived the lease): take the row of
    `member_id` unless another live incarnation holds it (DuplicateMember)."""
    table = Member.__table__
    values = {
        "member_id": member_id,
        "incarnation": incarnation,
        "host": host,
        "http": http,
        "pid": pid,
        "started_at": sa.func.now(),
        "heartbeat_at": sa.func.now(),
        "targets": [],
    }
    stmt = insert(table).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.member_id],
        set_={k: stmt.excluded[k] for k in values if k != "member_id"},
        where=sa.or_(
            table.c.incarnation == incarnation,
            table.c.heartbeat_at < sa.func.now() - _span(lease),
        ),
    ).returning(table.c.member_id)
    if session.execute(stmt).first() is not None:
        return
    host_, pid_, age = session.execute(
        sa.select(Member.host, Member.pid, _age(Member.heartbeat_at)).where(
            Member.member_id == member_id
        )
    ).one()
    raise DuplicateMember(member_id, host_, pid_, float(age))


def heartbeat(
    session: Session,
    *,
    member_id: str,
    incarnation: str,
    targets: Sequence[str] | None,
    lease: float,
) -> Beat | None:
    """Renew this member's heartbeat (and its `targets`, unless None: as last written);
    the live members (without their targets) and the server's time. None when the row is
    no longer this incarnation's (another daemon took the id while this one was silent
    longer than the lease): it must register again."""
    values: dict[str, object] = {"heartbeat_at": sa.func.now()}
    if targets is not None:
        values["targets"] = list(targets)
    done = session.execute(
        sa.update(Member)
        .where(Member.member_id == member_id, Member.incarnation == incarnation)
        .values(values)
        .returning(sa.func.now())
    ).first()
    if done is None:
        return None
    return Beat(tuple(live_members(session, lease=lease, targets=False)), done[0])


def live_members(session: Session, *, lease: float, targets: bool = True) -> list[MemberRead]:
    """Members whose heartbeat is younger than `lease`, by id."""
    return [m for m in members(session, targets=targets) if m.age < lease]


def members(session: Session, *, targets: bool = True) -> list[MemberRead]:
    """Every member row, live or not, by id; `targets` False leaves each member's targets
    empty (thousands of keys that a heartbeat has no use for)."""
    listed = Member.targets if targets else sa.literal(None)
    rows = session.execute(
        sa.select(
            Member.member_id,
            Member.host,
            Member.http,
            Member.pid,
            Member.started_at,
            _age(Member.heartbeat_at),
            listed,
        ).order_by(Member.member_id)
    ).all()
    return [
        MemberRead(member_id, host, http, pid, started_at, float(age), tuple(keys or ()))
        for member_id, host, http, pid, started_at, age, keys in rows
    ]


def forget_gone(session: Session, *, older_than: float) -> list[str]:
    """Delete the members silent for more than `older_than` seconds (gone long ago: killed,
    or restarted with another id), so the table does not grow with every restart. Their ids."""
    return list(
        session.scalars(
            sa.delete(Member)
            .where(Member.heartbeat_at < sa.func.now() - _span(older_than))
            .returning(Member.member_id)
        )
    )


def leave(session: Session, *, member_id: str, incarnation: str) -> None:
    """A clean stop: the row goes, and the lease (if this member held it) is free now."""
    session.execute(
        sa.delete(Member).where(Member.member_id == member_id, Member.incarnation == incarnation)
    )
    _free_lease(session, member_id=member_id)


def step_aside(session: Session, *, member_id: str, incarnation: str, lease: float) -> None:
    """This member stops at once but stays listed (as gone, holding nothing): its share goes
    to the others at their next heartbeat, and the lease (if it held it) is free now."""
    session.execute(
        sa.update(Member)
        .where(Member.member_id == member_id, Member.incarnation == incarnation)
        .values(heartbeat_at=sa.func.now() - _span(lease), targets=[])
    )
    _free_lease(session, member_id=member_id)


def _free_lease(session: Session, *, member_id: str) -> None:
    session.execute(
        sa.update(Lease)
        .where(Lease.name == LEADER, Lease.holder == member_id)
        .values(expires_at=sa.func.now())
    )


class LeaseBusy(Exception):
    """Another transaction holds the lease row (a member paused inside one): try again at
    the next heartbeat rather than wait for it."""


def acquire_lease(
    session: Session, *, member_id: str, epoch: int | None, lease: float
) -> int | None:
    """Renew the lease this member holds at `epoch`, else take it if it is free or expired
    (at the next epoch). The epoch held afterwards, or None while another member holds it.

    Never waits on the row: a member paused (SIGSTOP) inside a transaction that holds it
    would hold every other heartbeat until the server ends that session. LeaseBusy then;
    a member that does not hold the lease locks the row only when the lease is free."""
    session.execute(
        insert(Lease.__table__)
        .values(name=LEADER, epoch=0)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    if epoch is None:
        free = session.execute(
            sa.select(Lease.name).where(
                Lease.name == LEADER,
                sa.or_(Lease.expires_at.is_(None), Lease.expires_at <= sa.func.now()),
            )
        ).first()
        if free is None:
            return None
    locked = session.execute(
        sa.select(Lease.name).where(Lease.name == LEADER).with_for_update(skip_locked=True)
    ).first()
    if locked is None:
        raise LeaseBusy
    until = sa.func.now() + _span(lease)
    if epoch is not None:
        renewed = session.execute(
            sa.update(Lease)
            .where(
                Lease.name == LEADER,
                Lease.holder == member_id,
                Lease.epoch == epoch,
                Lease.expires_at > sa.func.now(),
            )
            .values(expires_at=until)
            .returning(Lease.epoch)
        ).scalar()
        if renewed is not None:
            return renewed
    return session.execute(
        sa.update(Lease)
        .where(
            Lease.name == LEADER,
            sa.or_(Lease.expires_at.is_(None), Lease.expires_at <= sa.func.now()),
        )
        .values(holder=member_id, epoch=Lease.epoch + 1, expires_at=until)
        .returning(Lease.epoch)
    ).scalar()


def holds_lease(session: Session, *, member_id: str, epoch: int) -> bool:
    """Whether `member_id` still leads at `epoch`; the row is then held (FOR SHARE) until
    the caller's transaction ends, so no other member takes the lease in between."""
    return (
        session.execute(
            sa.select(Lease.epoch)
            .where(
                Lease.name == LEADER,
                Lease.holder == member_id,
                Lease.epoch == epoch,
                Lease.expires_at > sa.func.now(),
            )
            .with_for_update(read=True)
        ).first()
        is not None
    )


def record_rebalance(session: Session, *, members: Sequence[str]) -> bool:
    """The leader notes the live members when they changed (and when); True if they did."""
    wanted = sorted(members)
    row = session.get(Lease, LEADER, with_for_update=True)
    if row is None or sorted(row.members or ()) == wanted:
        return False
    row.members = wanted
    row.rebalanced_at = session.execute(sa.select(sa.func.now())).scalar_one()
    return True


def lease(session: Session) -> LeaseRead | None:
    """The lease as the database has it now; None before any daemon ran."""
    row = session.execute(
        sa.select(
            Lease,
            sa.extract("epoch", Lease.expires_at - sa.func.now()),
            _age(Lease.rebalanced_at),
        ).where(Lease.name == LEADER)
    ).first()
    if row is None:
        return None
    found, expires_in, ago = row
    return LeaseRead(
        found.holder,
        found.epoch,
        None if expires_in is None else float(expires_in),
        tuple(found.members or ()),
        found.rebalanced_at,
        None if ago is None else float(ago),
    )
