"""The outbox dispatcher: sends pending outbox rows through their notifiers (Slack first), in
order, at each notifier's pace. It speaks only the `Notifier` protocol (notify/base.py) and
claims only the rows of the notifiers it was given.

Each step claims one due row (the oldest pending row of its incident, for its notifier) with
a lease, sends it with no database transaction open, then records the outcome. The
guarantees:

* **Per-incident order.** An incident's next row is not due until the one before it is
  sent, failed or skipped; two dispatchers never hold rows of one incident at once.
* **Exactly once where the notifier can look.** A row is marked sent right after the
  notifier accepts it. A dispatcher killed between those two moments leaves its row
  claimed; when the lease (`lease_s`) runs out the next claim first asks the notifier
  whether the row was delivered (`Notifier.delivered`) and, if so, records that instead of
  sending it again. Only when the notifier cannot tell (for Slack: no history scope, a
  channel known by name only) is the row sent again, logged once per notifier and reason:
  at least once, never lost. If the database goes away in that
  window, the dispatcher keeps the outcome and records it first when the database answers
  again (trying every `poll_interval_s`), before it claims anything else.
* **Pacing.** At most `max_per_second` calls per destination. A RateLimited error pauses
  that destination for its `retry_after`; a Transient one pauses it with capped exponential
  backoff and jitter; either way the row stays pending, and an outage is logged once when
  it starts and once when it ends (notify/health.py). A Permanent failure marks the row
  failed, logged with the notifier's reason (never a secret), and the incident's next row
  goes ahead.
* **Pages are never dropped for a broken token or channel.** A Blocked error (a refused
  token, an archived channel) raises a critical condition (`health`: metrics, `/readyz`,
  `reliability status`) and keeps the row pending; the notifier (or that destination) is
  tried again every `blocked_retry_s`, at once when its credentials check passes again, and
  its rows go out when a call succeeds. The credentials are checked (`Notifier.check()`) when
  the loop starts and every `check_interval_s`.
* **No paging for old news.** An incident never posted by the notifier and resolved more
  than `max_age_s` ago gets its rows skipped. A posted incident is always brought up to
  date, so a resolve is never skipped.
* **Silences mute, they do not hide.** A row of an incident an active silence covers is
  skipped, with the silence's id, when it would post (a new root, a thread reply); an edit
  of a root posted before the silence is still made, since an edit pings nobody, but its
  paging reply is not. See `incidents/silences.py` for what happens when the silence ends.
  A maintenance window in force over the incident (maintenance/) holds it the same way,
  with the window's id.

`run_once()` is one pass, for tests; `start()`/`stop()` run passes on a thread, polling every
`poll_interval_s`, or sooner after `wake()`. With `link_for`, each root message links to
what shows its incident (the daemon passes the Grafana dashboard's link). While `gate`
names a problem (a cluster member fenced: its lease ran out, cluster/), nothing is claimed
or sent; the rows wait for a member in good standing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from reliability import catalog
from reliability.collect.base import Sample
from reliability.incidents import silences
from reliability.incidents.models import IncidentRead
from reliability.incidents.silences import ActiveSilence
from reliability.maintenance import service as maintenance
from reliability.maintenance.service import ActiveWindow
from reliability.notify import service as outbox_service
from reliability.notify.base import (
    Blocked,
    Notification,
    Notifier,
    NotifyError,
    Permanent,
    RateLimited,
    Root,
    updates_root,
)
from reliability.notify.health import Health
from reliability.notify.service import Candidate, Claimed

log = logging.getLogger("reliability.notify")

# How long the loop waits after a failed pass (database down, a bug) before the next one.
RETRY_S = 2.0


@dataclass(frozen=True)
class DispatchSettings:
    """Timing of the dispatcher. `lease_s` must exceed the notifiers' call timeout, or a
    slow call's row could be claimed and sent again by another dispatcher."""

    poll_interval_s: float = 0.1
    lease_s: float = 30.0
    max_age_s: float = 3600.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    batch: int = 1000
    stats_interval_s: float = 5.0
    stop_timeout_s: float = 1.0
    # A notifier or destination refusing everything is tried again this often (its rows wait).
    blocked_retry_s: float = 300.0
    # The credentials are checked when the loop starts and this often after.
    check_interval_s: float = 300.0


@dataclass
class _Channel:
    """Pacing of one destination of one notifier, in monotonic seconds."""

    ready_at: float = 0.0
    failures: int = 0
    rate_limited: bool = False


@dataclass
class _Counters:
    rows: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    oldest_age_s: float = 0.0


@dataclass(frozen=True)
class _Holds:
    """What holds pages back this pass: the silences and maintenance windows in force."""

    silences: list[ActiveSilence]
    windows: list[ActiveWindow]


def backoff_s(failures: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2^(n-1)), so
    dispatchers that failed together do not retry together."""
    ceiling = min(cap_s, base_s * 2 ** min(failures - 1, 32))
    return ceiling * rng.uniform(0.5, 1.0)


class Dispatcher:
    """Sends the outbox rows of `notifiers` (one, or several) in the database behind
    `engine`; rows of other notifiers are left to the dispatchers that have them. With
    `link_for`, each root message links to what it returns for the incident."""

    def __init__(
        self,
        engine: Engine,
        notifiers: Notifier | Sequence[Notifier],
        *,
        link_for: Callable[[IncidentRead], str | None] | None = None,
        settings: DispatchSettings | None = None,
        rng: random.Random | None = None,
        gate: Callable[[], str | None] | None = None,
    ) -> None:
        self._gate = gate
        self._gated: str | None = None  # the gate's problem, logged once
        listed = [notifiers] if not isinstance(notifiers, Sequence) else list(notifiers)
        self._notifiers = {notifier.name: notifier for notifier in listed}
        if not self._notifiers or len(self._notifiers) != len(listed):
            raise ValueError("a dispatcher needs notifiers, each with a name of its own")
        self._engine = engine
        self._link_for = link_for
        self._settings = settings or DispatchSettings()
        self._rng = rng or random.Random()
        self._channels: dict[tuple[str, str], _Channel] = {}
        # Destinations named one way and answered another (a Slack channel's name and its
        # ID), per notifier: both name one pacing state.
        self._ids: dict[tuple[str, str], str] = {}
        # Per notifier: not before this (monotonic) while its credentials are refused.
        self._held_until: dict[str, float] = {}
        self._checked: set[str] = set()  # notifiers whose credentials passed a check
        self._health = Health(self._notifiers)
        self._deferred_until: float | None = None
        # A row the notifier accepted whose outcome the database has not taken yet.
        self._unrecorded: Callable[[], None] | None = None
        # (notifier, reason) pairs already logged for a re-claimed row it could not look for.
        self._unverifiable: set[tuple[str, str]] = set()
        self._counters = _Counters()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        """Run passes on a background thread until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("the dispatcher is already running")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        """Stop the loop; True if it ended within `stop_timeout_s`.

        A notifier call in flight is not interrupted: if it outlasts the wait, the thread ends
        when it returns, and a claim it could not record expires with its lease.
        """
        self._stopping.set()
        self._wakeup.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(self._settings.stop_timeout_s)
        return not thread.is_alive()

    def wake(self) -> None:
        """Look for due rows now instead of at the next poll (call after committing rows)."""
        self._wakeup.set()

    @property
    def health(self) -> Health:
        """What the notifiers' problems and outages are (metrics, `/readyz`, status)."""
        return self._health

    def _loop(self) -> None:
        next_stats = next_check = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self._settings.check_interval_s
                self.check_notifiers()
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self._settings.stats_interval_s
                self._refresh_backlog()
            try:
                handled = self.run_once()
            except SQLAlchemyError as exc:
                if self._unrecorded is not None:
                    # Soon, before the row's claim runs out and another dispatcher sends it.
                    self._stopping.wait(self._settings.poll_interval_s)
                    continue
                log.warning("outbox: database error, retrying in %gs: %s", RETRY_S, exc)
                self._stopping.wait(RETRY_S)
                continue
            except Exception:
                # A bug must not end notifications for good; its row's lease expires.
                log.exception("outbox: unexpected error, retrying in %gs", RETRY_S)
                self._stopping.wait(RETRY_S)
                continue
            if not handled:
                self._wakeup.wait(self._idle_wait_s())
                self._wakeup.clear()

    def _idle_wait_s(self) -> float:
        poll = self._settings.poll_interval_s
        if self._deferred_until is None:
            return poll
        return min(poll, max(0.001, self._deferred_until - time.monotonic()))

    def check_notifiers(self) -> None:
        """Check each notifier's credentials: a refusal raises the critical condition before
        any page is tried; a pass lifts it and lets held rows go now (as does the first pass
        of this dispatcher: a restart after the token was fixed). An unreachable notifier
        says nothing about its credentials, so that changes nothing."""
        for notifier in self._notifiers.values():
            try:
                notifier.check()
            except Blocked as exc:
                self._health.block(notifier.name, None, exc.reason, by_check=True)
                self._held_until[notifier.name] = time.monotonic() + self._settings.blocked_retry_s
                continue
            except NotifyError:
                continue
            lifted = self._health.checked(notifier.name)
            first = notifier.name not in self._checked
            self._checked.add(notifier.name)
            if lifted or first or self._health.blocked(notifier.name) is not None:
                # Lifted, raised by a failed delivery, or a restart (the token fixed): the
                # held rows go now instead of at their next retry.
                self._release(notifier.name)

    def _release(self, notifier: str) -> None:
        self._held_until.pop(notifier, None)
        try:
            with self._engine.begin() as connection:
                outbox_service.release(connection, notifier=notifier, now=datetime.now(UTC))
        except SQLAlchemyError as exc:
            log.warning("outbox: cannot release the held rows of %s: %s", notifier, exc)
        self._wakeup.set()

    # -- one pass -------------------------------------------------------------------------

    def run_once(self) -> int:
        """Send (or fail, or skip) every row that is due and whose channel is ready; return
        how many rows were handled. Rows of a paced or paused channel wait for a later pass."""
        self._deferred_until = None
        if self._unrecorded is not None:  # recording is not sending: no gate
            self._unrecorded()
            self._unrecorded = None
            log.warning("outbox: database back: the row sent while it was away is recorded")
        if self._closed_gate():
            return 0
        now = datetime.now(UTC)
        with self._engine.begin() as connection:
            candidates = outbox_service.due(
                connection, notifiers=list(self._notifiers), now=now, limit=self._settings.batch
            )
            # Read only when there is work: an idle poll stays one query.
            holds = _Holds(
                silences.active(connection, now=now) if candidates else [],
                maintenance.active(connection, now=now) if candidates else [],
            )
        handled = 0
        for candidate in candidates:
            if self._stopping.is_set():
                break
            handled += self._handle(candidate, holds)
        return handled

    def _closed_gate(self) -> bool:
        problem = self._gate() if self._gate is not None else None
        if problem != self._gated:
            if problem:
                log.warning("outbox: not sending: %s", problem)
            else:
                log.warning("outbox: sending again")
            self._gated = problem
        return problem is not None

    def _handle(self, candidate: Candidate, holds: _Holds) -> int:
        now = datetime.now(UTC)
        if self._is_old_news(candidate, now):
            reason = (
                f"old news: resolved before anyone was told, over {self._settings.max_age_s:g}s ago"
            )
            return self._skip(candidate, now, reason)
        silence = silences.covering(holds.silences, candidate.labels)
        window = maintenance.covering(holds.windows, candidate.labels)
        muted_by = silence.id if silence is not None else None
        window_id = window.id if window is not None else None
        edits_root = candidate.root_destination is not None and updates_root(candidate.kind)
        if (silence or window) and not edits_root:
            reasons = []
            if silence is not None:
                reasons.append(
                    f"silenced by silence {silence.id} until {silence.ends_at:%Y-%m-%d %H:%M:%SZ}"
                )
            if window is not None:
                reasons.append(f"in {window.describe()}")
            reason = "; ".join(reasons)
            return self._skip(candidate, now, reason, silence_id=muted_by, maintenance_id=window_id)
        notifier = self._notifiers[candidate.notifier]
        destination = candidate.root_destination or notifier.destination(
            severity=candidate.severity, labels=candidate.labels
        )
        pacing = self._pacing(notifier.name, destination)
        ready_at = max(pacing.ready_at, self._held_until.get(notifier.name, 0.0))
        if ready_at > time.monotonic():
            self._defer(ready_at)
            return 0
        lease_end = now + timedelta(seconds=self._settings.lease_s)
        with self._engine.begin() as connection:
            claimed = outbox_service.claim(
                connection,
                row_id=candidate.id,
                now=now,
                until=lease_end,
                expired=candidate.claim_expired,
            )
        if claimed is None:
            return 0  # another dispatcher holds it, or finished it since we looked
        pacing.ready_at = time.monotonic() + 1.0 / notifier.max_per_second
        notification = Notification(
            incident=claimed.incident,
            event=claimed.event,
            opening_data=claimed.opening_data,
            root=claimed.root,
            destination=destination,
            dashboard_url=self._link_for(claimed.incident) if self._link_for else None,
            quiet=muted_by is not None or window_id is not None,
            outbox_row=claimed.id,
        )
        try:
            root = self._send(notifier, notification, claimed)
        except NotifyError as exc:
            if exc.root is not None:
                self._new_root(claimed, notifier.name, exc.root)
            self._record_failure(claimed, notifier.name, destination, exc)
            return 1
        sent_at = datetime.now(UTC)
        if root is not None:
            if claimed.root is None:  # posted where it was routed, by name or ID
                self._learn(notifier.name, destination, root.destination)
            self._log_repost(claimed, notifier.name, root)

        def record() -> None:
            with self._engine.begin() as connection:
                if root is not None:
                    outbox_service.save_root(
                        connection,
                        incident_id=claimed.incident.id,
                        notifier=notifier.name,
                        root=root,
                        now=sent_at,
                    )
                outbox_service.mark_sent(
                    connection,
                    row_id=claimed.id,
                    now=sent_at,
                    silence_id=muted_by,
                    maintenance_id=window_id,
                )

        try:
            record()
        except SQLAlchemyError as exc:
            log.warning(
                "outbox: row %d sent, but the database went away before it was recorded; "
                "recording it as soon as the database answers: %s",
                claimed.id,
                exc,
            )
            self._unrecorded = record
            raise
        pacing.failures, pacing.rate_limited = 0, False
        reached = root.destination if root is not None else self._known(notifier.name, destination)
        if self._health.delivered(notifier.name, reached):
            self._release(notifier.name)
        self._count("rows", "sent")
        return 1

    def _send(
        self, notifier: Notifier, notification: Notification, claimed: Claimed
    ) -> Root | None:
        """Send the row, unless an earlier claim that ran out unrecorded already did; the
        root message posted (or found), as `Notifier.notify` returns it."""
        if claimed.reclaimed:
            try:
                found = notifier.delivered(notification, since=claimed.created_at)
            except NotifyError as exc:
                if (notifier.name, exc.reason) not in self._unverifiable:
                    self._unverifiable.add((notifier.name, exc.reason))
                    log.warning(
                        "outbox: %s cannot tell whether a row it was sending when its "
                        "dispatcher stopped went out, so sends it again (at least once, not "
                        "exactly once): %s",
                        notifier.name,
                        exc.reason,
                    )
            else:
                if found is not None:
                    log.info(
                        "outbox: row %d was delivered by a dispatcher that stopped before "
                        "recording it; recorded, not sent again",
                        claimed.id,
                    )
                    return found.root
        return notifier.notify(notification)

    def _new_root(self, claimed: Claimed, notifier: str, root: Root) -> None:
        """Remember a root posted before the row failed, so that its retry goes under it."""
        self._log_repost(claimed, notifier, root)
        with self._engine.begin() as connection:
            outbox_service.save_root(
                connection,
                incident_id=claimed.incident.id,
                notifier=notifier,
                root=root,
                now=datetime.now(UTC),
            )

    def _log_repost(self, claimed: Claimed, notifier: str, root: Root) -> None:
        if claimed.root is not None and claimed.root != root:
            log.warning(
                "outbox: incident %s's message in %s %s was gone; posted it again in %s",
                claimed.incident.id,
                notifier,
                claimed.root.destination,
                root.destination,
            )

    def _record_failure(
        self, claimed: Claimed, notifier: str, destination: str, exc: NotifyError
    ) -> None:
        pacing = self._pacing(notifier, destination)
        now = datetime.now(UTC)
        if isinstance(exc, Blocked):
            self._hold(claimed, notifier, destination, exc)
            return
        if isinstance(exc, Permanent):
            log.error(
                "outbox: row %s (incident %s, %s) failed for good in %s %s: %s",
                claimed.id,
                claimed.incident.id,
                claimed.event.kind,
                notifier,
                destination,
                exc.reason,
            )
            with self._engine.begin() as connection:
                outbox_service.mark_failed(connection, row_id=claimed.id, reason=exc.reason)
            self._count("errors", "permanent")
            self._count("rows", "failed")
            return
        if isinstance(exc, RateLimited):
            delay = exc.retry_after
            self._count("errors", "rate_limited")
            if not pacing.rate_limited:  # once until a call there goes through
                pacing.rate_limited = True
                log.warning(
                    "outbox: %s asks to slow down calls to %s: waiting %.1fs as told",
                    notifier,
                    destination,
                    delay,
                )
        else:
            pacing.failures += 1
            delay = backoff_s(
                pacing.failures,
                base_s=self._settings.backoff_base_s,
                cap_s=self._settings.backoff_cap_s,
                rng=self._rng,
            )
            self._count("errors", "transient")
            self._health.unreachable(notifier, exc.reason, delay)
        # The whole destination waits, not just this row: we were asked (or failed) for all.
        pacing.ready_at = max(pacing.ready_at, time.monotonic() + delay)
        with self._engine.begin() as connection:
            outbox_service.retry_later(
                connection,
                row_id=claimed.id,
                not_before=now + timedelta(seconds=delay),
                reason=exc.reason,
            )

    def _hold(self, claimed: Claimed, notifier: str, destination: str, exc: Blocked) -> None:
        """Keep the row; raise the condition; try that notifier or destination later."""
        until = time.monotonic() + self._settings.blocked_retry_s
        if exc.destination is None:
            self._held_until[notifier] = until
            self._health.block(notifier, None, exc.reason)
        else:
            where = self._known(notifier, exc.destination)
            self._pacing(notifier, where).ready_at = until
            self._health.block(notifier, where, exc.reason)
        self._count("errors", "permanent")
        with self._engine.begin() as connection:
            outbox_service.retry_later(
                connection,
                row_id=claimed.id,
                not_before=datetime.now(UTC) + timedelta(seconds=self._settings.blocked_retry_s),
                reason=exc.reason,
            )

    def _is_old_news(self, candidate: Candidate, now: datetime) -> bool:
        if candidate.root_destination is not None or candidate.resolved_at is None:
            return False
        return candidate.resolved_at < now - timedelta(seconds=self._settings.max_age_s)

    def _skip(
        self,
        candidate: Candidate,
        now: datetime,
        reason: str,
        *,
        silence_id: int | None = None,
        maintenance_id: int | None = None,
    ) -> int:
        with self._engine.begin() as connection:
            skipped = outbox_service.mark_skipped(
                connection,
                row_id=candidate.id,
                reason=reason,
                now=now,
                silence_id=silence_id,
                maintenance_id=maintenance_id,
            )
        if not skipped:
            return 0
        self._count("rows", "skipped")
        return 1

    # -- destinations ---------------------------------------------------------------------

    def _known(self, notifier: str, destination: str) -> str:
        """The destination as the notifier answered it (a channel's ID for its name)."""
        return self._ids.get((notifier, destination), destination)

    def _pacing(self, notifier: str, destination: str) -> _Channel:
        known = self._known(notifier, destination)
        return self._channels.setdefault((notifier, known), _Channel())

    def _learn(self, notifier: str, name: str, answered: str) -> None:
        """Remember that the notifier's destination `name` is `answered` (a channel's name
        and its ID), so both share one pacing state."""
        if name != answered and (notifier, name) not in self._ids:
            self._ids[(notifier, name)] = answered
            self._channels[(notifier, answered)] = self._channels.pop((notifier, name), _Channel())

    def _defer(self, ready_at: float) -> None:
        if self._deferred_until is None or ready_at < self._deferred_until:
            self._deferred_until = ready_at

    # -- metrics --------------------------------------------------------------------------

    def _count(self, family: str, key: str) -> None:
        with self._lock:
            counts = getattr(self._counters, family)
            counts[key] = counts.get(key, 0) + 1

    def _refresh_backlog(self) -> None:
        try:
            with self._engine.begin() as connection:
                backlog = outbox_service.backlog(connection, notifiers=list(self._notifiers))
        except SQLAlchemyError as exc:
            log.warning("outbox: cannot read the backlog: %s", exc)
            return
        age = 0.0
        if backlog.oldest is not None:
            age = max(0.0, (datetime.now(UTC) - backlog.oldest).total_seconds())
        with self._lock:
            self._counters.pending, self._counters.oldest_age_s = backlog.pending, age

    def samples(self) -> list[Sample]:
        """The dispatcher's metrics as of its last pass; reads no database."""
        with self._lock:
            counters = self._counters
            out = [
                Sample(catalog.OUTBOX_PENDING, (), float(counters.pending)),
                Sample(catalog.OUTBOX_OLDEST_PENDING_AGE, (), counters.oldest_age_s),
            ]
            out += [
                Sample(catalog.OUTBOX_ROWS, (status,), float(counters.rows.get(status, 0)))
                for status in ("sent", "failed", "skipped")
            ]
            out += [
                Sample(catalog.SLACK_CALL_FAILURES, (reason,), float(n))
                for reason, n in sorted(counters.errors.items())
            ]
        return out + self._health.samples()
