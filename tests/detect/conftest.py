"""A simulated fleet whose samples look like what the collectors publish into the snapshot,
and an evaluator driven by a hand-moved clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from reliability import catalog
from reliability.collect.base import Sample
from reliability.config import Config
from reliability.config.rules import Rules
from reliability.detect.builtin import ratio_windows
from reliability.detect.evaluator import Evaluator, Transition
from reliability.durations import format_duration

START = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
WINDOWS = [format_duration(w) for w in ratio_windows(Rules())]


@dataclass
class Node:
    name: str
    gpus: int = 8
    up: bool = True  # answers over SSH
    gpu_source_up: bool = True  # nvidia-smi answers
    utilization: dict[str, float] = field(default_factory=dict)
    temperature: dict[str, float] = field(default_factory=dict)
    slowdown: float = 90.0
    lost: set[str] = field(default_factory=set)
    missing: int = 0  # GPUs the driver does not list at all
    xids: dict[tuple[str, int], int] = field(default_factory=dict)  # (gpu, code) -> count
    disk: dict[str, tuple[float, float]] = field(default_factory=lambda: {"/": (200e9, 400e9)})
    # The liveness probe: signal (ssh, serving) -> (answers, since); empty: not probed.
    ports: dict[str, tuple[bool, float]] = field(default_factory=dict)
    collected_at: float = START  # the last successful SSH collection


class Fleet:
    """Nodes and endpoints; `samples()` is one cycle as the snapshot would hold it."""

    def __init__(self, nodes: dict[str, int], endpoints: list[str]) -> None:
        self.nodes = {name: Node(name, gpus) for name, gpus in nodes.items()}
        self.endpoints = dict.fromkeys(endpoints, 0.0)  # endpoint -> error ratio
        self.overload = dict.fromkeys(endpoints, 0.0)  # endpoint -> busy ratio

    def samples(self) -> list[Sample]:
        out: list[Sample] = []
        for node in self.nodes.values():
            out += self._node(node)
            out += self._gpus(node)
        for name in self.endpoints:
            errors, busy = self.endpoints[name], self.overload[name]
            out.append(Sample(catalog.TARGET_UP, ("api", name), 0.0 if errors else 1.0))
            for window in WINDOWS:  # what the collector publishes for the built-in rules
                out.append(Sample(catalog.API_ERROR_RATIO, (name, window), errors))
                out.append(Sample(catalog.API_OVERLOAD_RATIO, (name, window), busy))
        return out

    @staticmethod
    def _node(node: Node) -> list[Sample]:
        out = [
            Sample(catalog.TARGET_UP, ("node", node.name), 1.0 if node.up else 0.0),
            Sample(catalog.NODE_UP, (node.name,), 1.0 if node.up else 0.0),
            Sample(catalog.TARGET_LAST_SUCCESS, ("node", node.name), node.collected_at),
        ]
        if node.ports:
            out.append(Sample(catalog.TARGET_UP, ("liveness", node.name), 1.0))
        for signal, (up, since) in node.ports.items():
            out.append(Sample(catalog.NODE_LIVENESS_UP, (node.name, signal), float(up)))
            out.append(Sample(catalog.NODE_LIVENESS_SINCE, (node.name, signal), since))
        if node.up:
            for path, (free, size) in node.disk.items():
                out.append(Sample(catalog.NODE_PATH_FREE, (node.name, path), free))
                out.append(Sample(catalog.NODE_PATH_SIZE, (node.name, path), size))
        return out

    @staticmethod
    def _gpus(node: Node) -> list[Sample]:
        answering = node.up and node.gpu_source_up
        out = [Sample(catalog.TARGET_UP, ("gpu", node.name), 1.0 if answering else 0.0)]
        if not answering:
            return out
        listed = [str(i) for i in range(node.gpus - node.missing)]
        for gpu in listed:
            labels = (node.name, gpu)
            out.append(Sample(catalog.GPU_LOST, labels, 1.0 if gpu in node.lost else 0.0))
            if gpu in node.lost:
                continue
            util, temp = node.utilization.get(gpu, 0.3), node.temperature.get(gpu, 60.0)
            out.append(Sample(catalog.GPU_UTILIZATION, labels, util))
            out.append(Sample(catalog.GPU_TEMPERATURE, labels, temp))
            out.append(Sample(catalog.GPU_SLOWDOWN_TEMPERATURE, labels, node.slowdown))
        lost = len(node.lost) + node.missing
        out.append(Sample(catalog.NODE_GPUS_EXPECTED, (node.name,), float(node.gpus)))
        out.append(Sample(catalog.NODE_GPUS_VISIBLE, (node.name,), float(node.gpus - lost)))
        out.append(Sample(catalog.NODE_GPUS_LOST, (node.name,), float(lost)))
        for (gpu, code), count in node.xids.items():
            action = catalog.xid_info(code).action.value
            labels = (node.name, gpu, str(code), action)
            out.append(Sample(catalog.GPU_XID_ERRORS, labels, float(count)))
        return out


def fleet_config(**overrides: Any) -> Config:
    """Two serving nodes in pools blue and green, a standby, a hosted API and one local
    endpoint per serving node."""
    data: dict[str, Any] = {
        "nodes": [
            {"name": "gpu-1", "address": "10.0.0.1", "pool": "blue", "gpus": 8},
            {"name": "gpu-2", "address": "10.0.0.2", "pool": "green", "gpus": 8},
            {"name": "gpu-3", "address": "10.0.0.3", "role": "standby", "gpus": 8},
        ],
        "services": [{"name": "chat", "pools": ["blue", "green"], "active_pool": "blue"}],
        "endpoints": [
            {
                "name": "hosted-api",
                "url": "https://api.example.com/v1",
                "role": "hosted",
                "service": "chat",
                "model": "m",
            },
            {"name": "blue-1", "url": "http://10.0.0.1:8000", "service": "chat", "model": "m"},
            {"name": "green-1", "url": "http://10.0.0.2:8000", "service": "chat", "model": "m"},
        ],
    }
    data.update(overrides)
    return Config.model_validate(data)


class Clock:
    """Runs an evaluator over the fleet, one cycle per `step` seconds of simulated time."""

    def __init__(self, evaluator: Evaluator, fleet: Fleet, step: float = 5.0) -> None:
        self.evaluator, self.fleet, self.step = evaluator, fleet, step
        self.now = START

    def cycle(self) -> list[Transition]:
        out = self.evaluator.evaluate(self.fleet.samples(), self.now)
        self.now += self.step
        return out

    def run(self, seconds: float) -> list[Transition]:
        """Every transition over the next `seconds` (cycles at now, now+step, ...)."""
        out: list[Transition] = []
        end = self.now + seconds
        while self.now < end:
            out += self.cycle()
        return out


@pytest.fixture
def fleet() -> Fleet:
    return Fleet({"gpu-1": 8, "gpu-2": 8, "gpu-3": 8}, ["hosted-api", "blue-1", "green-1"])


@pytest.fixture
def clock_for(fleet: Fleet) -> Callable[..., Clock]:
    """clock_for(**config overrides) -> a Clock with a fresh evaluator over the `fleet`
    fixture (or over `on=` another fleet)."""

    def make(on: Fleet | None = None, **overrides: Any) -> Clock:
        return Clock(Evaluator(fleet_config(**overrides)), on or fleet)

    return make


@pytest.fixture
def make_fleet() -> type[Fleet]:
    return Fleet
