"""The Notifier seam: what the outbox dispatcher needs from Slack, or from any other channel.

A notifier is a plain object with a `name` (the `outbox.notifier` value of its rows), a pace
(`max_per_second` per destination), `destination()` (where a new incident goes: routing) and
one method that does the work, `notify()`. The dispatcher owns everything else: claiming rows,
per-incident order, pacing, backoff, silences, old news, and remembering the root message
that `notify()` returns so that later notifications of the incident edit it or reply under it.

`notify()` raises one of four errors, which say whether retrying can help:

* ``RateLimited(retry_after)``: the service asked to slow down; retry after that long;
* ``Transient(reason)``: unreachable or failing on its side; retry with backoff;
* ``Blocked(reason, destination)``: the notifier's credentials (``destination`` None) or one
  destination refuse everything until someone fixes them (a revoked token, an archived
  channel): a critical condition; the rows wait and go out once it clears;
* ``Permanent(reason)``: this row is refused for a reason a retry will not change (its
  content); the row is failed.

A notifier whose incident root message is gone posts a fresh root (saying so) and carries on
under it; an error raised after that post carries the new root (``NotifyError.root``) so
that the dispatcher remembers it and a retry does not post a third.

``delivered()`` is asked only for a row claimed again after an earlier claim ran out with
nothing recorded (its dispatcher was killed mid-send): it looks for what that claim may have
posted (each message carries its outbox row), so the row is recorded instead of posted
twice. When it cannot look (an error, a missing scope), it raises, and the row is sent again:
at least once beats never.

``check()`` verifies the credentials (Slack's ``auth.test``) at start and every few minutes;
``destinations()`` and ``send_test()`` serve ``reliability notify test``.

Adding a notifier (say, Microsoft Teams): write ``notify/teams.py`` with a class that has
these members and maps its client's failures onto these errors, and add one entry to
``NOTIFIERS`` in ``notify/registry.py`` (when is it configured, how is it built). Its rows,
its roots (`notification_roots`) and its pacing are then kept apart from Slack's by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

from reliability.incidents.models import IncidentEventRead, IncidentRead

# Events that change what the root message says; the rest are replies to it.
ROOT_KINDS = frozenset({"opened", "acknowledged", "resolved", "reopened", "ack_expired"})
# Root-changing events that also need someone to act now: besides the edit, a reply that pings.
PAGING_KINDS = frozenset({"ack_expired"})


def updates_root(kind: str) -> bool:
    """Whether an event of this kind edits the root message (else it is a reply)."""
    return kind in ROOT_KINDS


def pages(kind: str) -> bool:
    """Whether an event of this kind, besides editing the root, pings in a reply."""
    return kind in PAGING_KINDS


class NotifyError(Exception):
    """A failed notification; ``retryable`` says whether trying again can help, ``reason``
    why (an error code or a network error's text, never a secret)."""

    retryable: ClassVar[bool] = False
    # A root message posted before the failure (a lost root's replacement): remember it.
    root: Root | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Permanent(NotifyError):
    """Refused for a reason a retry will not change (credentials, destination, content)."""


class Blocked(Permanent):
    """Everything to `destination` (None: everything this notifier sends) is refused until
    someone acts: a bad or revoked token, an archived channel, a bot not in its channel.
    Retrying alone will not help, but the rows are kept and go out once it clears."""

    def __init__(self, reason: str, *, destination: str | None = None) -> None:
        super().__init__(reason)
        self.destination = destination


class Transient(NotifyError):
    """Could not be reached, or failed on its side; retry with backoff."""

    retryable = True


class RateLimited(NotifyError):
    """Asked to slow down; retry after ``retry_after`` seconds, not sooner."""

    retryable = True

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after:g}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Root:
    """Where a notifier posted an incident's root message: the `destination` it answered
    (e.g. a Slack channel ID) and the message's `ref` (e.g. Slack's ts)."""

    destination: str
    ref: str


@dataclass(frozen=True)
class Notification:
    """One outbox row, ready to send.

    `incident` is the incident as it is now and `event` the timeline entry the row is for;
    `root` is where this notifier posted the incident before (None: nothing yet, so post a
    fresh root showing the incident as it is now, whatever the event); `destination` is where
    to send (the root's, else the routed one). `quiet`: a silence or a maintenance window
    covers the incident, so edit the root but send nothing that pings.
    """

    incident: IncidentRead
    event: IncidentEventRead
    opening_data: dict[str, Any] | None
    root: Root | None
    destination: str
    dashboard_url: str | None = None
    quiet: bool = False
    # The outbox row sent (None for what no row stands for), marked on what is posted so a
    # later claim of the row can find it (`Notifier.delivered`).
    outbox_row: int | None = None


@dataclass(frozen=True)
class Delivered:
    """What an earlier claim of a row posted before it could record it: `root`, when that was
    the incident's root message (the dispatcher remembers it), else None (a reply)."""

    root: Root | None


class Notifier(Protocol):
    """One channel of notification (Slack first); see the module docstring."""

    @property
    def name(self) -> str:
        """The `outbox.notifier` value of this notifier's rows, e.g. ``"slack"``."""
        ...

    @property
    def max_per_second(self) -> float:
        """Calls per second per destination the dispatcher allows itself."""
        ...

    def destination(self, *, severity: str, labels: Mapping[str, str]) -> str:
        """Where a new incident with this severity and these labels goes."""
        ...

    def notify(self, notification: Notification) -> Root | None:
        """Send it; the root message when one was posted (the dispatcher remembers it), else
        None. Raises RateLimited, Transient, Blocked or Permanent."""
        ...

    def delivered(self, notification: Notification, *, since: datetime) -> Delivered | None:
        """What `notify(notification)` already posted, looking no further back than `since`
        (when the row was written); None when nothing (or only a harmless edit) was. Raises a
        NotifyError when it cannot tell."""
        ...

    def check(self) -> str:
        """Verify the credentials; who they speak as. Raises Blocked when they are refused,
        Transient or RateLimited when the answer says nothing about them."""
        ...

    def destinations(self) -> list[str]:
        """Every destination the config names (the default first), each once."""
        ...

    def send_test(self, destination: str) -> Root:
        """Send one test message to `destination`; where it landed. Raises as notify()."""
        ...
