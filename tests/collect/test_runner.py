"""The runner between the scheduler and a collector: what on-call reads in the log when a
target fails for a while, and that one hung target does not hold up the others."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from reliability import catalog
from reliability.collect.base import CollectError, Sample
from reliability.collect.runner import TargetRunner
from reliability.collect.snapshot import Snapshot


class Scripted:
    """A collector whose targets answer, fail or hang as the test says."""

    name = "node"

    def __init__(self) -> None:
        self.failing: dict[str, str] = {}
        self.hang = threading.Event()
        self.hanging: set[str] = set()

    def targets(self) -> Sequence[str]:
        return ("gpu-1", "gpu-2")

    def collect(self, target: str) -> Sequence[Sample]:
        if target in self.hanging:
            self.hang.wait(5)
        if target in self.failing:
            raise CollectError(self.failing[target], f"{target}: no route to host")
        return [Sample(catalog.NODE_UP, (target,), 1.0)]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=4)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def test_a_failing_target_is_logged_when_it_starts_changes_and_recovers(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
):
    collector = Scripted()
    runner = TargetRunner(collector, Snapshot(), executor=executor, deadline=2.0)
    caplog.set_level(logging.INFO, logger="reliability.collect")

    collector.failing["gpu-2"] = "unreachable"
    for _ in range(5):
        runner.run_cycle()
    collector.failing["gpu-2"] = "timeout"
    runner.run_cycle()
    del collector.failing["gpu-2"]
    runner.run_cycle()
    runner.run_cycle()

    assert [r.getMessage() for r in caplog.records] == [
        "node gpu-2 failed (unreachable): gpu-2: no route to host",
        "node gpu-2 failed (timeout): gpu-2: no route to host",
        "node gpu-2 answers again (after timeout)",
    ]


def test_a_hung_target_times_out_while_the_other_is_published(executor: ThreadPoolExecutor):
    collector, snapshot = Scripted(), Snapshot()
    collector.hanging.add("gpu-1")
    runner = TargetRunner(collector, snapshot, executor=executor, deadline=0.3)
    try:
        outcomes = {o.target: o for o in runner.run_cycle()}
        assert outcomes["gpu-2"].ok
        assert (outcomes["gpu-1"].ok, outcomes["gpu-1"].reason) == (False, "timeout")
        # Still hung at the next cycle: not collected twice at once, reported again.
        again = {o.target: o for o in runner.run_cycle()}
        assert again["gpu-1"].reason == "timeout" and again["gpu-2"].ok
        states = {s.target: s.ok for s in snapshot.states()}
        assert states == {"gpu-1": False, "gpu-2": True}
    finally:
        collector.hang.set()


def test_after_stop_no_cycle_starts_and_a_collection_in_flight_fails_quietly(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
):
    class ClosedUnderIt(Scripted):
        name = "closing"  # apart from the runners other tests may leave running

        def collect(self, target: str) -> Sequence[Sample]:
            self.hang.wait(5)  # the daemon stops meanwhile and closes the client
            raise RuntimeError("Cannot send a request, as the client has been closed.")

    collector = ClosedUnderIt()
    runner = TargetRunner(collector, Snapshot(), executor=executor, deadline=5.0)
    caplog.set_level(logging.INFO, logger="reliability")
    cycle = threading.Thread(target=runner.run_cycle)
    cycle.start()

    runner.stop()
    collector.hang.set()
    cycle.join(5)

    assert runner.run_cycle() == []
    assert [r for r in caplog.records if "closing" in r.getMessage()] == []


def test_a_target_gained_while_a_cycle_runs_is_collected_by_that_cycle(
    executor: ThreadPoolExecutor,
):
    """A member died mid-cycle and its node is ours now: collected at the end of the
    running cycle, not an interval later (the scheduler skips a run asked for meanwhile)."""
    owned = {"gpu-1"}
    asked = threading.Event()  # the cycle has passed gpu-2 over: not ours when it started

    def owns(target: str) -> bool:
        if target == "gpu-2":
            asked.set()
        return target in owned

    class TakingOver(Scripted):
        def collect(self, target: str) -> Sequence[Sample]:
            if target == "gpu-1":
                asked.wait(5)
                owned.add("gpu-2")  # the rebalance lands while gpu-1 is being collected
            return super().collect(target)

    snapshot = Snapshot()
    runner = TargetRunner(TakingOver(), snapshot, executor=executor, deadline=2.0, owns=owns)

    outcomes = runner.run_cycle()

    assert sorted((o.target, o.ok) for o in outcomes) == [("gpu-1", True), ("gpu-2", True)]
    assert {s.target for s in snapshot.states()} == {"gpu-1", "gpu-2"}
