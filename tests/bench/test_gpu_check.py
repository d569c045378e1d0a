"""bench/gpu_check.py: the NVML and nvidia-smi back ends compared series by series.

Here the NVML side is the pynvml fake and the nvidia-smi side the rig's stand-in, both
describing the same two H100s; on a GPU machine the script reads the real ones.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from reliability.collect.gpu_nvml import NvmlGpuCollector
from reliability.collect.gpu_smi import SmiGpuCollector
from reliability.testing import nvidia_smi
from reliability.testing.fake_pynvml import FakePynvml
from reliability.testing.rigstate import RigState

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
NODE = "gpu-1"


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


check = load_check()


@dataclass(frozen=True)
class Finished:
    exit_status: int
    stdout: str
    stderr: str


class StandInSmi:
    """The node's nvidia-smi is the rig's stand-in; it has no readable kernel log."""

    def __init__(self, rig: RigState) -> None:
        self.rig = rig

    def run(self, command: str, *, timeout: float) -> Finished:
        if command.startswith("nvidia-smi "):
            out, code = nvidia_smi.render(self.rig.read(NODE), shlex.split(command)[1:])
            return Finished(code, out, "")
        return Finished(0, "==reliability== rc 127\n", "")


@pytest.fixture
def both(tmp_path):
    """(rig, fake pynvml): the same two idle H100s, as each back end sees them."""
    rig = RigState.create(tmp_path)
    rig.add_node(NODE, gpus=2)
    fake = FakePynvml(gpus=2)
    for slot, gpu in enumerate(fake.gpus):
        gpu.uuid = rig.gpu(NODE, slot)["uuid"]
        gpu.pci_bus_id = rig.bus_id(NODE, slot)
        gpu.unsupported = {"nvmlDeviceGetRetiredPagesPendingStatus"}  # an H100 retires rows
    return rig, fake


def read(rig: RigState, fake: FakePynvml):
    nvml = NvmlGpuCollector(node=NODE, expected_gpus=2, nvml=fake)
    smi = SmiGpuCollector({NODE: (StandInSmi(rig), 2)}, timeout=5.0)
    try:
        return check.compare(nvml.collect(NODE), smi.collect(NODE))
    finally:
        nvml.close()


def verdicts(rows, metric: str) -> dict[str, str]:
    return {r.labels: r.verdict for r in rows if r.metric == metric}


def test_the_same_gpus_agree_on_every_shared_series(both):
    rows = read(*both)

    assert check.failed(rows) == []
    assert verdicts(rows, "gpu_info") == {"0": "ok", "1": "ok"}
    judged = {r.metric for r in rows if r.verdict == "ok"}
    assert {
        "gpu_memory_total_bytes",
        "gpu_temperature_celsius",
        "gpu_slowdown_temperature_celsius",
        "gpu_power_draw_watts",
        "gpu_power_limit_watts",
        "gpu_ecc_errors_total",
        "node_gpus_visible",
    } <= judged
    assert verdicts(rows, "gpu_clock_event_active")["0,gpu_idle"] == "shown"
    assert "gpu_xid_errors_total" not in {r.metric for r in rows}


def test_values_apart_beyond_their_tolerance_are_mismatches(both):
    rig, fake = both
    rig.set_gpu(NODE, 1, {"temperature.gpu": 60, "power.draw": 80.0, "memory.total": 81000})
    fake.gpus[0].name = "NVIDIA H100 PCIe"

    rows = read(rig, fake)

    assert {(r.metric, r.labels) for r in check.failed(rows)} == {
        ("gpu_temperature_celsius", "1"),
        ("gpu_memory_total_bytes", "1"),
        ("gpu_info", "0"),
    }
    assert verdicts(rows, "gpu_power_draw_watts")["1"] == "ok"  # 80 W against 69.85 W
    table = check.table(rows)
    assert "MISMATCH" in table and "NVIDIA H100 PCIe" in table


def test_a_gpu_only_one_back_end_sees_fails_the_check(both):
    rig, fake = both
    rig.set_gpu_status(NODE, 1, "missing")

    failed = {(r.metric, r.labels, r.verdict) for r in check.failed(read(rig, fake))}

    assert ("gpu_info", "1", "only-nvml") in failed
    assert ("node_gpus_visible", "", "MISMATCH") in failed


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no nvidia-smi (and no NVML library here)
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert "no GPU to check on this machine: nvidia-smi is not on the PATH" in done.stdout
