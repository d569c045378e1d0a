"""The shipped canary runbook against the rig: real sshd nodes, inference stand-ins in the
docker stand-in's containers, and a real nginx or HAProxy whose upstream weights move the
traffic of clients sending completions all along. Each step compares the pools on what the
engines' /metrics say they served. A new pool whose errors or latency rise at 25% sends
everything back to the old pool, the balancer's file byte for byte as it was; one that
compares well takes all of it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from reliability.cli_support import load_config
from reliability.config import Config
from reliability.runbooks.actions.lb_weights import weights
from reliability.runbooks.executor import Progress, RunResult
from reliability.runbooks.models import RunStatus
from reliability.runbooks.ops import Op
from reliability.runbooks.plan import PlannedStep
from reliability.testing.balancer import RigBalancer
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.load import Load
from reliability.testing.rigconfig import rig_config, run_runbook, shipped_runbooks

GREEN = ("gpu-3", "gpu-4")


def write_config(balancer: RigBalancer, directory: Path) -> Config:
    # The shipped canary with each comparison shortened from a minute to 2 seconds, read
    # twice a second, on the 10 completions a pool serves of the rig's clients in that time.
    # A p95 of 10 completions is their slowest but one: 500 ms of slack keeps a loaded test
    # machine's stall from failing a healthy pool, far below the slow build's 800 ms.
    edit = {"for: 1m": "for: 2s, interval: 0.5s, min_requests: 10, latency_slack: 500ms"}
    books = shipped_runbooks(directory, edit, "canary.yaml")
    service = {"port": 8000, "model": DEFAULT_MODEL}
    return load_config(rig_config(balancer, directory, service=service, runbooks_dir=str(books)))


class Comparisons(Progress):
    """Keeps what each pool comparison found."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def op(self, target: str, op: Op, outcome) -> None:
        if op.check is not None and type(op.check).__name__ == "PoolCompare":
            self.found.append(outcome.text)


class BreakGreenAt(Comparisons):
    """Puts the green pool's engines in `mode` (every completion fails, by default) when
    step `at` starts, and keeps the balancer's file as it was then."""

    def __init__(self, balancer: RigBalancer, at: str, **mode: object) -> None:
        super().__init__()
        self.balancer, self.at = balancer, at
        self.mode = mode or {"mode": "broken"}
        self.file_then: str | None = None

    def step(self, index: int, step: PlannedStep) -> None:
        if step.id != self.at:
            return
        self.file_then = self.balancer.upstream_file.read_text()
        for node in GREEN:
            httpx.post(
                f"{self.balancer.fleet.inference_url(node)}/_rig/mode",
                json={**self.mode, "path": "/v1/chat/completions"},
            ).raise_for_status()


@contextmanager
def clients(balancer: RigBalancer, count: int = 4) -> Iterator[list[Load]]:
    """`count` clients sending completions through the balancer one after another (bounded
    to 2 minutes each), as users would; stopped on the way out."""
    loads = [Load(balancer.url, max_seconds=120.0) for _ in range(count)]
    threads = [load.start() for load in loads]
    try:
        yield loads
    finally:
        for load in loads:
            load.stop.set()
        for thread in threads:
            thread.join(15)


def run_canary(config: Config, progress: Progress | None = None) -> RunResult:
    return run_runbook(config, "canary", progress, service="chat", pool="green")


def pools_answering(url: str, count: int = 12) -> set[str]:
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return {client.get(url + "v1/models").headers["x-pool"] for _ in range(count)}


def test_a_canary_whose_new_pool_fails_at_25_percent_rolls_back_on_its_own(
    rig_balancer: RigBalancer, tmp_path: Path
) -> None:
    config = write_config(rig_balancer, tmp_path)
    before = rig_balancer.upstream_file.read_text()
    progress = BreakGreenAt(rig_balancer, "compare-25")

    with clients(rig_balancer):
        result = run_canary(config, progress)

    assert result.status == RunStatus.failed
    assert "compare-25" in (result.reason or "")
    assert "pool green does worse (errors: 100.0% of its completions 5xx" in (result.reason or "")
    assert "blue's 0.0%" in (result.reason or "")
    assert progress.found[0].startswith("pool green compares well")  # at 5%, still healthy
    # At 25% both pools were members, green weighed 1 against blue's 3.
    kind_weight = "weight=" if rig_balancer.kind == "nginx" else "weight "
    assert progress.file_then is not None
    assert progress.file_then.count(f"{kind_weight}1") == 2
    assert progress.file_then.count(f"{kind_weight}3") == 2
    assert rig_balancer.upstream_file.read_text() == before
    assert pools_answering(rig_balancer.url) == {"blue"}


def test_a_canary_whose_new_pool_turns_slow_at_25_percent_rolls_back_on_its_own(
    rig_lb: RigBalancer, tmp_path: Path
) -> None:
    config = write_config(rig_lb, tmp_path)
    before = rig_lb.upstream_file.read_text()

    progress = BreakGreenAt(rig_lb, "compare-25", mode="slow", delay_s=0.8)

    with clients(rig_lb):
        result = run_canary(config, progress)

    assert result.status == RunStatus.failed
    reason = result.reason or ""
    assert "compare-25" in reason
    assert "pool green does worse (TTFT p95 latency above 1.5x pool blue's)" in reason
    assert " 0 5xx (0.0%)" in reason.split("; ")[0]  # slower, not failing
    assert rig_lb.upstream_file.read_text() == before
    assert pools_answering(rig_lb.url) == {"blue"}


def test_a_canary_whose_pools_compare_well_moves_all_the_traffic(
    rig_lb: RigBalancer, tmp_path: Path
) -> None:
    config = write_config(rig_lb, tmp_path)
    progress = Comparisons()

    with clients(rig_lb):
        result = run_canary(config, progress)

    assert result.status == RunStatus.succeeded, result.reason
    assert pools_answering(rig_lb.url) == {"green"}
    assert len(progress.found) == 3  # at 5%, 25% and 50%
    assert all(text.startswith("pool green compares well") for text in progress.found)
    assert all(" 0 5xx (0.0%)" in text for text in progress.found), progress.found


@pytest.mark.parametrize(
    ("share", "new", "old", "expected"), [(5, 2, 2, (1, 19)), (25, 1, 3, (1, 1))]
)
def test_weights_give_the_new_pool_its_share(
    share: int, new: int, old: int, expected: tuple[int, int]
):
    w_new, w_old = weights(share, new, old)
    assert (w_new, w_old) == expected
    assert new * w_new / (new * w_new + old * w_old) == pytest.approx(share / 100)
