"""Fan one collector's targets out on a bounded pool, each under a deadline.

A cycle never waits on a slow target past its deadline: a target still running then
is published as a timeout, and is not started again until its stuck call returns, so a
hung host costs one worker, not the whole pool, and never delays the other targets.

With `owns`, a cycle collects only the targets it accepts (the member's share when several
daemons split the fleet, cluster/); a target it stopped accepting mid-collection is not
published.

Once `stop()` is called (the daemon is stopping and closes the collectors' clients), no
cycle starts and what a collection in flight raises is not logged: a clean stop writes
no traceback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from reliability.collect.base import CollectError, Collector, Sample
from reliability.collect.snapshot import Snapshot

log = logging.getLogger("reliability.collect")


@dataclass(frozen=True, slots=True)
class Outcome:
    collector: str
    target: str
    ok: bool
    duration: float
    reason: str | None = None
    error: str | None = None


class TargetRunner:
    """Runs `collector.collect(target)` for `targets` and publishes into `snapshot`."""

    def __init__(
        self,
        collector: Collector,
        snapshot: Snapshot,
        *,
        executor: ThreadPoolExecutor,
        deadline: float,
        targets: Sequence[str] | None = None,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.collector = collector
        self.owns = owns
        self.snapshot = snapshot
        self.executor = executor
        self.deadline = deadline
        self.targets = list(collector.targets() if targets is None else targets)
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[Outcome]] = {}
        self._failing: dict[str, str] = {}  # target -> reason last logged
        self._stopped = threading.Event()

    def stop(self) -> None:
        """No new cycle; collections in flight may fail quietly (their clients close).
        Taken under the lock, so no cycle is between its check and its submissions."""
        with self._lock:
            self._stopped.set()

    def _wanted(self, target: str) -> bool:
        return self.owns is None or self.owns(target)

    def _log_failure(
        self, target: str, reason: str, message: object, *, exc_info: bool = False
    ) -> None:
        """A warning when a target starts failing or fails differently; not every cycle (a
        node down for an hour would otherwise write 240 identical lines)."""
        with self._lock:
            if self._failing.get(target) == reason or self._stopped.is_set():
                return
            self._failing[target] = reason
        log.warning(
            "%s %s failed (%s): %s",
            self.collector.name,
            target,
            reason,
            message,
            exc_info=exc_info,
        )

    def _log_success(self, target: str) -> None:
        with self._lock:
            reason = self._failing.pop(target, None)
        if reason is not None:
            log.warning("%s %s answers again (after %s)", self.collector.name, target, reason)

    def _collect(self, target: str) -> Outcome:
        name = self.collector.name
        start = time.monotonic()
        try:
            samples: Sequence[Sample] = self.collector.collect(target)
        except CollectError as exc:
            duration = time.monotonic() - start
            if not self._wanted(target):
                return Outcome(name, target, False, duration, exc.reason, str(exc))
            self._log_failure(target, exc.reason, exc)
            self.snapshot.publish(
                name,
                target,
                ok=False,
                duration=duration,
                samples=exc.samples,
                error=str(exc),
                reason=exc.reason,
            )
            return Outcome(name, target, False, duration, exc.reason, str(exc))
        except Exception as exc:  # a collector bug must cost one target, not the daemon
            duration = time.monotonic() - start
            self._log_failure(target, "internal", f"collector crashed: {exc!r}", exc_info=True)
            self.snapshot.publish(
                name, target, ok=False, duration=duration, error=repr(exc), reason="internal"
            )
            return Outcome(name, target, False, duration, "internal", repr(exc))
        duration = time.monotonic() - start
        if not self._wanted(target):
            return Outcome(name, target, True, duration)
        self.snapshot.publish(name, target, ok=True, duration=duration, samples=samples)
        self._log_success(target)
        return Outcome(name, target, True, duration)

    def run_cycle(self) -> list[Outcome]:
        """Collect every target once; return when all finished or the deadline passed.

        Targets this runner started to own while the cycle ran (a rebalance: a member died)
        are collected right after it: the scheduler skips a run asked for while one runs,
        which would leave them an interval behind."""
        outcomes, covered = self._cycle(self.targets)
        gained = [t for t in self.targets if t not in covered]
        if gained:
            outcomes += self._cycle(gained)[0]
        return outcomes

    def _cycle(self, targets: Sequence[str]) -> tuple[list[Outcome], set[str]]:
        """One cycle over the wanted ones of `targets`; its outcomes and those it covered."""
        name = self.collector.name
        started = time.monotonic()
        futures: dict[str, Future[Outcome]] = {}
        stuck: list[str] = []
        with self._lock:
            if self._stopped.is_set():
                return [], set(targets)
            for target in filter(self._wanted, targets):
                previous = self._in_flight.get(target)
                if previous is not None and not previous.done():
                    stuck.append(target)
                    continue
                futures[target] = self._in_flight[target] = self.executor.submit(
                    self._collect, target
                )
        covered = {*futures, *stuck}
        if not covered:
            return [], covered
        wait(futures.values(), timeout=self.deadline)
        outcomes = []
        for target, future in futures.items():
            if future.done():
                outcomes.append(future.result())
            else:
                stuck.append(target)
        for target in filter(self._wanted, stuck):
            message = f"no answer within {self.deadline:g}s"
            self._log_failure(target, "timeout", message)
            self.snapshot.publish(
                name,
                target,
                ok=False,
                duration=time.monotonic() - started,
                error=message,
                reason="timeout",
            )
            outcomes.append(Outcome(name, target, False, self.deadline, "timeout", message))
        return outcomes, covered
