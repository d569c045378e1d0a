"""What the rig's nginx and HAProxy balancers both promise, each test run on both: a stop
leaves no process of theirs behind, whatever it catches them doing."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import pytest
from rig_balancer_ops import alive, processes_naming

from reliability.testing.balancer import RigBalancer
from reliability.testing.fixtures import RIG_BALANCERS
from reliability.testing.fleet import Fleet
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.services import service_missing

pytestmark = pytest.mark.rig

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hello"}]}


def test_stop_leaves_no_balancer_process_even_with_a_stream_in_flight(
    rig_balancer: RigBalancer,
) -> None:
    lb = rig_balancer
    assert lb.fleet.engine is not None
    server = lb.fleet.engine.server("gpu-1", "vllm")
    assert server is not None
    server.set_mode("stall", path="/v1/chat/completions", interval_s=0.1)
    lb.set_members([f"{lb.fleet.node('gpu-1').address}:8000"])
    body = CHAT | {"stream": True}

    with httpx.stream("POST", lb.url + "v1/chat/completions", json=body, timeout=10) as r:
        lines = r.iter_lines()  # kept: a dropped iterator would close the stream
        next(lines)
        lb.set_members([f"{lb.fleet.node('gpu-3').address}:8000"])
        master = lb.pid
        workers = lb.worker_pids()
        assert len(workers) == 2  # the new generation and the one holding the stream
        lb.stop()
        lb.stop()

    assert master is not None
    assert [pid for pid in [master, *workers] if alive(pid)] == []
    assert processes_naming(lb.config_file) == []
    assert lb.pid is None and lb.worker_pids() == []
    with pytest.raises(OSError), socket.create_connection((lb.address, lb.port), 1):
        pass


@pytest.mark.parametrize("kind", sorted(RIG_BALANCERS, reverse=True))  # nginx first
def test_stop_after_the_fleet_removed_its_files(
    kind: str, rig_fleet_factory: Callable[..., Fleet]
) -> None:
    balancer_class = RIG_BALANCERS[kind]
    reason = balancer_class.missing_requirement()
    if reason:
        service_missing(reason)
    fleet = rig_fleet_factory(["lb-1"])
    lb = balancer_class(fleet, "lb-1", members=["127.0.0.1:9"], port=8081).start()
    pids = [lb.pid, *lb.worker_pids()]
    config = lb.config_file

    fleet.stop()
    lb.stop()
    lb.stop()

    assert not config.exists()
    assert [pid for pid in pids if pid is not None and alive(pid)] == []
    assert processes_naming(config) == []
