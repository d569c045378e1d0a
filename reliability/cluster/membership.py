"""This daemon as a member: its heartbeat thread, the leader lease, its share, its fence.

Every `heartbeat` seconds, on a database connection of its own, the member renews its row
and reads the live members (cluster/service.py, all by the server's clock), then renews or
takes the leader lease. Its share is what rendezvous hashing gives it among the live
members (cluster/shards.py); listeners hear of every change (`on_rebalance`).

The fence is local and monotonic: a member is in good standing until `lease` seconds after
the start of its last successful heartbeat (the database cannot have judged it gone
before), and leads until `lease` after the start of the last renewal of the lease. Past
that (the database away, the process paused by SIGSTOP) `problem()` says why: the daemon
then sends no page, starts no runbook step, runs no leader timer, and /readyz is false.
On waking from a pause the monotonic clock has moved on, so the member acts on nothing
before a heartbeat has checked it against the database; it is no longer leader then if
another member took the lease (a new epoch).

The leader also forgets the members gone for longer than `forget_after` (their rows go;
`cluster status` lists them as gone until then), at most once a minute.

A host clock far from the database's (more than a lease) keeps the member out: its
timestamps (acknowledgement timeouts, outbox leases, incident times) would be wrong, so it
does not join (or, found off at a heartbeat, steps aside at once: listed as gone, its share
and the lease free for the others), holds no share, and `problem()` says why; it checks the
clock at every heartbeat and joins again once it agrees.

SQLite has no members: `solo` is always the leader of one, owns every share, and only
checks that the database answers, for `reliability_database_up`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability import catalog, db
from reliability.cluster import service
from reliability.cluster.service import DuplicateMember, MemberRead
from reliability.cluster.shards import owner
from reliability.collect.base import Sample

log = logging.getLogger("reliability.cluster")

Listener = Callable[[frozenset[str]], object]
FORGET_EVERY = 60.0  # seconds between the leader's sweeps of long-gone members


def default_member_id() -> str:
    """HOST-PID, cut to the 64 characters a member id may have."""
    host = socket.gethostname().split(".")[0].lower() or "daemon"
    return f"{host[:50]}-{os.getpid()}"


class Membership:
    def __init__(
        self,
        database: db.LazyEngine,
        *,
        member_id: str,
        http: str,
        heartbeat: float,
        lease: float,
        keys: Iterable[str],
        forget_after: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.member_id = member_id
        self.solo = db.normalize_url(database.url).get_backend_name() != "postgresql"
        self._database = database
        self._http = http
        self._heartbeat, self._lease = heartbeat, lease
        self._forget_after = forget_after
        self._swept_at: float | None = None  # monotonic; the leader's last sweep
        self._keys = frozenset(keys)
        self._clock, self._wall = clock, wall
        self._incarnation = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._registered = False
        self._members: tuple[MemberRead, ...] = ()
        self._owned: frozenset[str] = self._keys  # all, until the database says otherwise
        self._shared_among: tuple[str, ...] | None = None  # the members `_owned` was cut for
        self._written: frozenset[str] | None = None  # the targets the member row holds
        self._valid_until: float | None = None  # monotonic; None: never had a heartbeat
        self._leader_until: float | None = None
        self._epoch: int | None = None
        self._skew: float = 0.0
        self._db_error: str | None = None
        self._duplicate: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the daemon asks -------------------------------------------------------------
    def owns(self, key: str | None) -> bool:
        """Whether this member collects and evaluates `key` (None: what is not shared)."""
        return key is None or key in self._owned

    @property
    def owned(self) -> frozenset[str]:
        return self._owned

    @property
    def epoch(self) -> int | None:
        return self._epoch if self.is_leader() else None

    def is_leader(self) -> bool:
        if self.solo:
            return True
        until = self._leader_until
        return until is not None and self._clock() < until and self.problem() is None

    def problem(self) -> str | None:
        """Why this member must not act now (notify, run a runbook step, lead); None if
        it may."""
        if self.solo:
            return None
        if self._duplicate is not None:
            return self._duplicate
        if self._skewed():
            return (
                f"this host's clock is {self._skew:+.0f}s off the database's: fix its time "
                "sync; until then this daemon stays out of the cluster (no share, no page)"
            )
        until = self._valid_until
        if until is None:
            return f"not a cluster member yet: {self._db_error or 'no heartbeat yet'}"
        if self._clock() >= until:
            why = f"database: {self._db_error}" if self._db_error else "paused or too slow"
            return f"fenced: no heartbeat within the lease ({self._lease:g}s; {why})"
        return None

    def _skewed(self) -> bool:
        return abs(self._skew) > self._lease

    def holds_lease(self, session: Session) -> bool:
        """Checked in the caller's transaction before leader work: this member still leads
        at its epoch (the lease row then stays so until the transaction ends)."""
        if self.solo:
            return True
        epoch = self.epoch
        return epoch is not None and service.holds_lease(
            session, member_id=self.member_id, epoch=epoch
        )

    def members(self) -> tuple[MemberRead, ...]:
        return self._members

    def samples(self) -> list[Sample]:
        count = 1 if self.solo else len(self._members)
        return [
            Sample(catalog.CLUSTER_MEMBERS, (), float(count)),
            Sample(catalog.CLUSTER_LEADER, (), 1.0 if self.is_leader() else 0.0),
            Sample(catalog.DATABASE_UP, (), 0.0 if self._db_error else 1.0),
        ]

    def on_rebalance(self, listener: Listener) -> None:
        """`listener(owned)` after every change of this member's share (heartbeat thread)."""
        self._listeners.append(listener)

    # --- the heartbeat ------------------------------------------------------------------
    def register(self) -> bool:
        """Join at start; False when the database does not answer (logged; the heartbeat
        thread keeps trying). DuplicateMember when a live daemon has this id."""
        if self.solo:
            log.info("cluster: SQLite: single daemon (start several only on PostgreSQL)")
            return True
        try:
            self._register()
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            self._failed(exc)
            return False
        return True

    def _register(self) -> None:
        """Join, unless this host's clock is off the database's (then stay out, no share)."""
        with self._database.session() as session, session.begin():
            self._read_skew(session.execute(sa.select(sa.func.now())).scalar_one())
            if not self._skewed():
                service.register(
                    session,
                    member_id=self.member_id,
                    incarnation=self._incarnation,
                    host=socket.gethostname(),
                    http=self._http,
                    pid=os.getpid(),
                    lease=self._lease,
                )
        if self._skewed():
            self._stay_out()
            return
        self._registered = True
        self._written = frozenset()  # a (re)registered row holds no targets
        log.info("cluster: joined as %s", self.member_id)

    def _read_skew(self, server_now: datetime) -> None:
        was = self._skewed()
        self._skew = (self._wall() - server_now).total_seconds()
        if self._skewed() and not was:
            log.error(
                "cluster: this host's clock is %+.0fs off the database's: staying out of the "
                "cluster (no share, no page) until its time sync is fixed",
                self._skew,
            )
        elif was and not self._skewed():
            log.warning("cluster: this host's clock agrees with the database's again")

    def _stay_out(self) -> None:
        """Hold nothing and lead nothing while the clock is off (others take the share)."""
        with self._lock:
            self._epoch = self._leader_until = self._valid_until = None
        self._rebalance(())

    def step(self) -> None:
        """One heartbeat: renew the row, read the members, renew or take the lease."""
        if self.solo:
            self._ping()
            return
        started = self._clock()
        try:
            if not self._registered:
                self._register()
                if not self._registered:
                    self._db_error = None  # the database answered: the clock keeps it out
                    return
            owned = self._owned
            with self._database.session() as session, session.begin():
                beat = service.heartbeat(
                    session,
                    member_id=self.member_id,
                    incarnation=self._incarnation,
                    targets=None if owned == self._written else sorted(owned),
                    lease=self._lease,
                )
            if beat is None:
                self._registered = False
                log.warning("cluster: %s was taken for gone; joining again", self.member_id)
                self._register()
                return
            self._written = owned
            self._read_skew(beat.server_now)
            if self._skewed():
                self._step_aside()
                return
            epoch, renewed = self._lease_step(beat.members)
        except DuplicateMember as exc:
            self._duplicate = str(exc)
            log.error("cluster: %s", exc)
            return
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            self._failed(exc)
            return
        if self._db_error is not None:
            log.warning("cluster: database answers again")
        self._db_error = self._duplicate = None
        self._rebalance(beat.members)
        with self._lock:
            self._valid_until = started + self._lease
            was = self._epoch
            self._epoch = epoch
            if renewed:
                self._leader_until = started + self._lease if epoch is not None else None
        if epoch != was:
            if epoch is not None:
                log.warning("cluster: %s leads (epoch %d)", self.member_id, epoch)
            elif was is not None:
                log.warning("cluster: %s no longer leads (epoch %d ended)", self.member_id, was)

    def _step_aside(self) -> None:
        """The clock went off while a member: listed as gone at once, the lease freed."""
        with self._database.session() as session, session.begin():
            service.step_aside(
                session, member_id=self.member_id, incarnation=self._incarnation, lease=self._lease
            )
        self._registered = False
        self._stay_out()

    def _lease_step(self, members: tuple[MemberRead, ...]) -> tuple[int | None, bool]:
        """The epoch held after this beat, and whether the database said so: False while
        the lease row is busy (the epoch kept, not renewed: it runs out by itself)."""
        with self._database.session() as session, session.begin():
            try:
                epoch = service.acquire_lease(
                    session, member_id=self.member_id, epoch=self._epoch, lease=self._lease
                )
            except service.LeaseBusy:
                return self._epoch, False
            if epoch is not None and service.record_rebalance(
                session, members=[m.member_id for m in members]
            ):
                log.info("cluster: members now %s", ", ".join(m.member_id for m in members))
            if epoch is not None and self._sweep_due():
                forgotten = service.forget_gone(session, older_than=self._forget_after)
                if forgotten:
                    log.info("cluster: forgot long-gone member(s) %s", ", ".join(forgotten))
        return epoch, True

    def _sweep_due(self) -> bool:
        now = self._clock()
        if self._swept_at is not None and now - self._swept_at < min(
            FORGET_EVERY, self._forget_after
        ):
            return False
        self._swept_at = now
        return True

    def _rebalance(self, members: tuple[MemberRead, ...]) -> None:
        ids = tuple(m.member_id for m in members)
        self._members = members
        if ids == self._shared_among:
            return  # the same members, the same share: no need to hash every key again
        self._shared_among = ids
        owned = frozenset(k for k in self._keys if owner(k, ids) == self.member_id)
        if owned == self._owned:
            return
        gained, lost = len(owned - self._owned), len(self._owned - owned)
        self._owned = owned
        log.info(
            "cluster: %d member(s); %s holds %d target(s) (+%d, -%d)",
            len(ids),
            self.member_id,
            len(owned),
            gained,
            lost,
        )
        for listener in self._listeners:
            try:
                listener(owned)
            except Exception:
                log.exception("cluster: a rebalance listener failed")

    def _ping(self) -> None:
        try:
            with db.connect(self._database.get()) as connection:
                connection.execute(sa.text("SELECT 1"))
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            self._failed(exc)
            return
        self._db_error = None

    def _failed(self, exc: BaseException) -> None:
        problem = str(exc).splitlines()[0][:200]
        if self._db_error is None:
            log.warning("cluster: heartbeat failed: %s", problem)
        self._db_error = problem

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cluster", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("cluster: heartbeat failed; trying again")
            self._stop.wait(self._heartbeat)

    def stop(self) -> None:
        """Stop the heartbeat and leave: the others take this member's share at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._heartbeat + 5)
        if not self.solo and self._registered:
            try:
                with self._database.session() as session, session.begin():
                    service.leave(session, member_id=self.member_id, incarnation=self._incarnation)
            except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
                log.warning("cluster: could not leave (the lease ends by itself): %s", exc)
        self._database.dispose()
