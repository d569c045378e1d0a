"""Whether each notifier can deliver, as the dispatcher learns it: the permanent failures
holding its pages back (a critical condition), and whether it can be reached at all.

Each change is logged once, when it starts and when it ends, never once per call or per
check: a Slack outage of a hundred failed calls is two lines. The same state is the
`reliability_notifier_*` metrics, `/readyz`'s `critical` detail and `reliability status`.

A problem is scoped to the notifier's credentials (`destination` None: nothing goes out) or
to one destination (an archived channel: only what goes there waits). A delivery lifts the
problems it proves wrong; a passing credentials check lifts a problem a failing check saw
too (a missing scope passes `auth.test`, so only a delivery lifts that).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from reliability import catalog
from reliability.collect.base import Sample

log = logging.getLogger("reliability.notify")


@dataclass(frozen=True)
class Problem:
    """A permanent failure that holds pages back until someone fixes it."""

    notifier: str
    destination: str | None  # None: the credentials; nothing of the notifier goes out
    reason: str
    since: datetime
    by_check: bool = False  # a check() failed with it too: a passing one lifts it

    def describe(self) -> str:
        where = f"to {self.destination}" if self.destination else "anywhere"
        return (
            f"{self.notifier} cannot deliver pages {where}: {self.reason} since "
            f"{self.since:%Y-%m-%d %H:%M:%SZ}; they are kept and go out once it is fixed"
        )


class Health:
    """The problems and outages of the dispatcher's notifiers; safe from any thread."""

    def __init__(self, notifiers: Iterable[str]) -> None:
        self._notifiers = list(notifiers)
        self._lock = threading.Lock()
        self._problems: dict[tuple[str, str | None], Problem] = {}
        self._down_since: dict[str, float] = {}
        self._failed_calls: dict[str, int] = {}

    # -- permanent failures ---------------------------------------------------------------

    def block(
        self, notifier: str, destination: str | None, reason: str, *, by_check: bool = False
    ) -> None:
        """Record a permanent failure; logged when it is new or its reason changed."""
        key = (notifier, destination)
        with self._lock:
            known = self._problems.get(key)
            if known is not None and known.reason == reason:
                # The same, seen again: a check that fails with it too may lift it later.
                if by_check and not known.by_check:
                    self._problems[key] = replace(known, by_check=True)
                return
            problem = Problem(notifier, destination, reason, datetime.now(UTC), by_check)
            self._problems[key] = problem
        log.error("%s", problem.describe())

    def delivered(self, notifier: str, destination: str) -> bool:
        """A call to `destination` succeeded: lift what it proves wrong (the credentials'
        problem and the destination's); True if any was lifted. Ends an outage too."""
        lifted = self._lift(
            [(notifier, None), (notifier, destination)], why=f"delivered to {destination}"
        )
        with self._lock:
            since = self._down_since.pop(notifier, None)
            failed = self._failed_calls.pop(notifier, 0)
        if since is not None:
            log.info(
                "%s: reachable again after %.0fs (%d call(s) failed meanwhile)",
                notifier,
                time.monotonic() - since,
                failed,
            )
        return lifted

    def checked(self, notifier: str) -> bool:
        """The credentials check passed: lift the credentials' problem if a failing check saw
        it; True if one was lifted."""
        with self._lock:
            problem = self._problems.get((notifier, None))
        if problem is None or not problem.by_check:
            return False
        return self._lift([(notifier, None)], why="its credentials check passes")

    def _lift(self, keys: list[tuple[str, str | None]], *, why: str) -> bool:
        with self._lock:
            lifted = [p for key in keys if (p := self._problems.pop(key, None)) is not None]
        for problem in lifted:
            where = f" to {problem.destination}" if problem.destination else ""
            log.info(
                "%s delivers%s again (%s): the %s condition cleared",
                problem.notifier,
                where,
                why,
                problem.reason,
            )
        return bool(lifted)

    def problems(self) -> list[Problem]:
        with self._lock:
            return sorted(self._problems.values(), key=lambda p: (p.notifier, p.destination or ""))

    def blocked(self, notifier: str) -> Problem | None:
        """The credentials' problem of `notifier`, if one holds."""
        with self._lock:
            return self._problems.get((notifier, None))

    # -- outages --------------------------------------------------------------------------

    def unreachable(self, notifier: str, reason: str, retry_in_s: float) -> None:
        """A call failed for a reason a retry can fix; logged once per outage."""
        with self._lock:
            self._failed_calls[notifier] = self._failed_calls.get(notifier, 0) + 1
            if notifier in self._down_since:
                return
            self._down_since[notifier] = time.monotonic()
        log.warning(
            "%s: unreachable (%s); notifications wait in the outbox, retrying in %.1fs and "
            "with backoff after that",
            notifier,
            reason,
            retry_in_s,
        )

    # -- what the daemon shows ------------------------------------------------------------

    def condition(self) -> str | None:
        """The critical condition for `/readyz`: every problem, or None."""
        problems = self.problems()
        return "; ".join(p.describe() for p in problems) if problems else None

    def samples(self) -> list[Sample]:
        problems = self.problems()
        unhealthy = {p.notifier for p in problems}
        out = [
            Sample(catalog.NOTIFIER_HEALTHY, (name,), 0.0 if name in unhealthy else 1.0)
            for name in self._notifiers
        ]
        out += [
            Sample(
                catalog.NOTIFIER_PERMANENT_FAILURE,
                (p.notifier, p.destination or "", p.reason),
                p.since.timestamp(),
            )
            for p in problems
        ]
        return out
